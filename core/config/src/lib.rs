//! mpn-config: what every configuration section shares, so each section (the engine's
//! and each connector's `config.rs`) validates the same way and fails the same way.
//!
//! - [`ConfigError`]: the one error shape, `key: message`, where the key is the full
//!   path in the file (`grpc.ack_window`, `cafis.links[2].host`).
//! - [`in_range`], [`millis_in`]: the range rules most keys follow.
//! - [`millis`]: a `Duration` field written as integer milliseconds (`*_ms` keys), so
//!   code works with typed durations and files keep their plain numbers.

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

/// A configuration value that breaks a rule: which key, and what the rule is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error inside `section`: `ack_window` in `grpc` is `grpc.ack_window`.
    pub fn within(mut self, section: &str) -> Self {
        self.key = format!("{section}.{}", self.key);
        self
    }
}

/// `value` of `key` must lie in `range` ("must be between lo and hi").
pub fn in_range<T: PartialOrd + Display>(
    key: &str,
    value: T,
    range: RangeInclusive<T>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

/// A duration of `key` between `lo` and `hi` milliseconds.
pub fn millis_in(key: &str, value: Duration, lo: u64, hi: u64) -> Result<(), ConfigError> {
    in_range(key, value.as_millis(), u128::from(lo)..=u128::from(hi))
}

/// `#[serde(with = "mpn_config::millis")]` on a `Duration`: written and read as
/// integer milliseconds.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Section {
        #[serde(rename = "timeout_ms", with = "millis")]
        timeout: Duration,
    }

    #[test]
    fn a_duration_is_written_and_read_as_milliseconds() {
        let s: Section = toml::from_str("timeout_ms = 1500").unwrap();
        assert_eq!(s.timeout, Duration::from_millis(1_500));
        assert_eq!(toml::to_string(&s).unwrap().trim(), "timeout_ms = 1500");
        let e = toml::from_str::<Section>("timeout_ms = -1").unwrap_err();
        assert!(e.to_string().contains("timeout_ms"), "{e}");
        assert!(toml::from_str::<Section>("timeout_ms = \"1s\"").is_err());
    }

    #[test]
    fn errors_name_the_whole_key() {
        let e = in_range("ack_window", 0u32, 1..=65_536).unwrap_err();
        assert_eq!(e.to_string(), "ack_window: must be between 1 and 65536");
        assert_eq!(e.within("grpc").key, "grpc.ack_window");
        assert!(millis_in("t", Duration::from_millis(10), 10, 20).is_ok());
        assert_eq!(
            millis_in("t", Duration::from_millis(9), 10, 20)
                .unwrap_err()
                .message,
            "must be between 10 and 20"
        );
    }
}
