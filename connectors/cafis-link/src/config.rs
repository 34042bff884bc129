//! Configuration of the CAFIS-style telegram links (`[cafis]` and `[[cafis.links]]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use mpn_domain::InstitutionCode;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Our centre id, written into every telegram header (up to 10 digits).
    pub centre_id: String,
    /// How long a TCP connect to a host may take (ms).
    pub connect_timeout_ms: u64,
    /// How long a host may take to answer a notice (ms); past it the link is treated
    /// as dead: it reconnects and resends the notice flagged as a resend.
    pub ack_timeout_ms: u64,
    /// Idle time after which an echo request is sent (ms).
    pub echo_interval_ms: u64,
    /// How long an echo request may stay unanswered before the peer is declared dead
    /// and the link reconnects (ms).
    pub echo_timeout_ms: u64,
    /// Reconnect back-off: first delay, doubling up to the maximum, each with up to
    /// 50 % random jitter so links to one host do not reconnect in step (ms).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// Delay before a notice refused with a transient reason is sent again (ms).
    pub retry_delay_ms: u64,
    /// Notifications queued per link before the link falls back to reading Kafka
    /// from its cursor (bounds memory while a host is slow or down).
    pub queue_capacity: usize,
    /// One entry per institution that receives telegrams.
    pub links: Vec<LinkConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            centre_id: "1".into(),
            connect_timeout_ms: 3_000,
            ack_timeout_ms: 5_000,
            echo_interval_ms: 5_000,
            echo_timeout_ms: 3_000,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            retry_delay_ms: 500,
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
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// Checks every value; the error names the key (without the `cafis.` prefix).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((k.to_owned(), m.to_owned()));
        if self.centre_id.is_empty()
            || self.centre_id.len() > 10
            || !self.centre_id.bytes().all(|b| b.is_ascii_digit())
        {
            return err("centre_id", "must be 1-10 digits");
        }
        for (key, v, lo, hi) in [
            ("connect_timeout_ms", self.connect_timeout_ms, 10, 600_000),
            ("ack_timeout_ms", self.ack_timeout_ms, 10, 600_000),
            ("echo_interval_ms", self.echo_interval_ms, 10, 600_000),
            ("echo_timeout_ms", self.echo_timeout_ms, 10, 600_000),
            ("backoff_initial_ms", self.backoff_initial_ms, 1, 600_000),
            ("backoff_max_ms", self.backoff_max_ms, 1, 3_600_000),
            ("retry_delay_ms", self.retry_delay_ms, 1, 600_000),
        ] {
            if !(lo..=hi).contains(&v) {
                return err(key, &format!("must be between {lo} and {hi}"));
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            return err("backoff_max_ms", "must be at least backoff_initial_ms");
        }
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return err("queue_capacity", "must be between 1 and 1000000");
        }
        let mut seen = std::collections::HashSet::new();
        for (n, l) in self.links.iter().enumerate() {
            let code = InstitutionCode::parse(&l.institution)
                .map_err(|m| (format!("links[{n}].institution"), m.to_string()))?;
            if !seen.insert(code) {
                return Err((
                    format!("links[{n}].institution"),
                    format!("institution {code} has two links"),
                ));
            }
            if l.host
                .rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                return Err((
                    format!("links[{n}].host"),
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
        let (key, message) = c.validate().unwrap_err();
        assert_eq!(key, "links[1].institution");
        assert!(message.contains("two links"), "{message}");
        c.links[1] = link("00300", "no-port");
        assert_eq!(c.validate().unwrap_err().0, "links[1].host");
        c.links[1] = link("12", "h:1");
        assert_eq!(c.validate().unwrap_err().0, "links[1].institution");
        c.links.truncate(1);
        c.centre_id = "12345678901".into();
        assert_eq!(c.validate().unwrap_err().0, "centre_id");
        c.centre_id = "1".into();
        c.backoff_max_ms = 1;
        assert_eq!(c.validate().unwrap_err().0, "backoff_max_ms");
    }
}
