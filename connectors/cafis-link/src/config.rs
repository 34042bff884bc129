//! Configuration of the CAFIS-style telegram links (`[cafis]` and `[[cafis.links]]`).

use std::time::Duration;

use mpn_config::{ConfigError, in_range, millis_in};
use serde::{Deserialize, Serialize};

use mpn_domain::InstitutionCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our centre id, written into every telegram header (up to 10 digits).
    pub centre_id: String,
    /// How long a TCP connect to a host may take (`connect_timeout_ms`).
    #[serde(rename = "connect_timeout_ms", with = "mpn_config::millis")]
    pub connect_timeout: Duration,
    /// How long a host may take to answer a notice; past it the link is treated as
    /// dead: it reconnects and resends the notice flagged as a resend
    /// (`ack_timeout_ms`).
    #[serde(rename = "ack_timeout_ms", with = "mpn_config::millis")]
    pub ack_timeout: Duration,
    /// Idle time after which an echo request is sent (`echo_interval_ms`).
    #[serde(rename = "echo_interval_ms", with = "mpn_config::millis")]
    pub echo_interval: Duration,
    /// How long an echo request may stay unanswered before the peer is declared dead
    /// and the link reconnects (`echo_timeout_ms`).
    #[serde(rename = "echo_timeout_ms", with = "mpn_config::millis")]
    pub echo_timeout: Duration,
    /// Reconnect back-off: first delay, doubling up to the maximum, each with up to
    /// 50 % random jitter so links to one host do not reconnect in step
    /// (`backoff_initial_ms`, `backoff_max_ms`).
    #[serde(rename = "backoff_initial_ms", with = "mpn_config::millis")]
    pub backoff_initial: Duration,
    #[serde(rename = "backoff_max_ms", with = "mpn_config::millis")]
    pub backoff_max: Duration,
    /// Delay before a notice refused with a transient reason is sent again
    /// (`retry_delay_ms`).
    #[serde(rename = "retry_delay_ms", with = "mpn_config::millis")]
    pub retry_delay: Duration,
    /// Notifications queued per link before the link falls back to reading Kafka
    /// from its cursor (bounds memory while a host is slow or down).
    pub queue_capacity: usize,
    /// One entry per institution that receives telegrams.
    pub links: Vec<LinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            centre_id: "1".into(),
            connect_timeout: ms(3_000),
            ack_timeout: ms(5_000),
            echo_interval: ms(5_000),
            echo_timeout: ms(3_000),
            backoff_initial: ms(100),
            backoff_max: ms(10_000),
            retry_delay: ms(500),
            queue_capacity: 1_024,
            links: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkConfig {
    /// The institution whose notifications go over this link (5 or 8 digits).
    pub institution: String,
    /// The institution's receiving host, `host:port`.
    pub host: String,
}

impl Config {
    /// Checks every value; the error names the key (without the `cafis.` prefix).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.centre_id.is_empty()
            || self.centre_id.len() > 10
            || !self.centre_id.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(ConfigError::new("centre_id", "must be 1-10 digits"));
        }
        millis_in("connect_timeout_ms", self.connect_timeout, 10, 600_000)?;
        millis_in("ack_timeout_ms", self.ack_timeout, 10, 600_000)?;
        millis_in("echo_interval_ms", self.echo_interval, 10, 600_000)?;
        millis_in("echo_timeout_ms", self.echo_timeout, 10, 600_000)?;
        millis_in("backoff_initial_ms", self.backoff_initial, 1, 600_000)?;
        millis_in("backoff_max_ms", self.backoff_max, 1, 3_600_000)?;
        millis_in("retry_delay_ms", self.retry_delay, 1, 600_000)?;
        if self.backoff_max < self.backoff_initial {
            return Err(ConfigError::new(
                "backoff_max_ms",
                "must be at least backoff_initial_ms",
            ));
        }
        in_range("queue_capacity", self.queue_capacity, 1..=1_000_000)?;
        let mut seen = std::collections::HashSet::new();
        for (n, l) in self.links.iter().enumerate() {
            let key = |f: &str| format!("links[{n}].{f}");
            let code = InstitutionCode::parse(&l.institution)
                .map_err(|m| ConfigError::new(key("institution"), m.to_string()))?;
            if !seen.insert(code) {
                return Err(ConfigError::new(
                    key("institution"),
                    format!("institution {code} has two links"),
                ));
            }
            if l.host
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err(ConfigError::new(
                    key("host"),
                    format!("must be host:port (got {:?})", l.host),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(institution: &str, host: &str) -> LinkConfig {
        LinkConfig {
            institution: institution.into(),
            host: host.into(),
        }
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config {
            links: vec![link("00200", "10.0.0.1:7000")],
            ..Config::default()
        };
        assert_eq!(c.validate(), Ok(()));
        c.links.push(link("00200000", "10.0.0.2:7000"));
        let ConfigError { key, message } = c.validate().unwrap_err();
        assert_eq!(key, "links[1].institution");
        assert!(message.contains("two links"), "{message}");
        c.links[1] = link("00300", "no-port");
        assert_eq!(c.validate().unwrap_err().key, "links[1].host");
        c.links[1] = link("12", "h:1");
        assert_eq!(c.validate().unwrap_err().key, "links[1].institution");
        c.links.truncate(1);
        c.centre_id = "12345678901".into();
        assert_eq!(c.validate().unwrap_err().key, "centre_id");
        c.centre_id = "1".into();
        c.backoff_max = Duration::from_millis(1);
        assert_eq!(c.validate().unwrap_err().key, "backoff_max_ms");
    }
}
