//! Configuration of the payment history (`[history]`).

use std::path::PathBuf;
use std::time::Duration;

use mpn_config::{ConfigError, in_range, millis_in};
use serde::{Deserialize, Serialize};

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the history is kept: `postgres://user@host:5432/db` in production,
    /// `sqlite://path?mode=rwc` for a single process; empty (the default) keeps no
    /// history and serves no console. Never logged (it may hold a password).
    pub database_url: String,
    /// The encryption keys of personal fields: one `<key id> <base64 of 32 bytes>`
    /// per line. The first line encrypts new rows; the others stay to read rows
    /// written under them (key rotation).
    pub encryption_keys_file: Option<PathBuf>,
    /// The key of the customer-number blind index (base64 of 32 bytes). Changing it
    /// makes earlier rows unsearchable by customer number.
    pub index_key_file: Option<PathBuf>,
    /// Days a row is kept at least; whole months are dropped once their last day is
    /// older (default 400: more than a year).
    pub retention_days: u32,
    /// How often expired months are dropped (`sweep_interval_ms`).
    #[serde(rename = "sweep_interval_ms", with = "mpn_config::millis")]
    pub sweep_interval: Duration,
    /// Notifications queued per institution before its writer falls back to reading
    /// Kafka from its cursor.
    pub queue_capacity: usize,
    /// Most notifications written in one transaction.
    pub batch_max: usize,
    /// Database connections of this replica.
    pub max_connections: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: String::new(),
            encryption_keys_file: None,
            index_key_file: None,
            retention_days: 400,
            sweep_interval: Duration::from_secs(3_600),
            queue_capacity: 1_024,
            batch_max: 256,
            max_connections: 8,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &mask_url(&self.database_url))
            .field("encryption_keys_file", &self.encryption_keys_file)
            .field("index_key_file", &self.index_key_file)
            .field("retention_days", &self.retention_days)
            .finish_non_exhaustive()
    }
}

/// `database_url` with any password replaced by `***` (for `check-config` and logs):
/// the one in the user info and a `password=` query parameter.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        None => tail.to_owned(),
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
    };
    format!("{scheme}://{authority}{tail}")
}

impl Config {
    pub fn enabled(&self) -> bool {
        !self.database_url.is_empty()
    }

    /// Checks every value; the error names the key (without the `history.` prefix).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        let url = &self.database_url;
        if !(url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.starts_with("sqlite:"))
        {
            return Err(ConfigError::new(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            ));
        }
        if self.encryption_keys_file.is_none() {
            return Err(ConfigError::new(
                "encryption_keys_file",
                "is required when database_url is set (personal fields are stored encrypted)",
            ));
        }
        if self.index_key_file.is_none() {
            return Err(ConfigError::new(
                "index_key_file",
                "is required when database_url is set (the customer-number search index)",
            ));
        }
        in_range("retention_days", self.retention_days, 31..=36_500)?;
        millis_in("sweep_interval_ms", self.sweep_interval, 1_000, 86_400_000)?;
        in_range("queue_capacity", self.queue_capacity, 1..=1_000_000)?;
        in_range("batch_max", self.batch_max, 1..=10_000)?;
        in_range("max_connections", self.max_connections, 1..=1_000)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_the_url_is_masked() {
        assert_eq!(
            mask_url("postgres://mpn:s3cret@db:5432/history"),
            "postgres://mpn:***@db:5432/history"
        );
        assert_eq!(mask_url("postgres://mpn@db/h"), "postgres://mpn@db/h");
        assert_eq!(
            mask_url("postgres://mpn@db/h?sslmode=require&password=s3cret"),
            "postgres://mpn@db/h?sslmode=require&password=***"
        );
        assert_eq!(
            mask_url("postgres://u:p@db?password=x"),
            "postgres://u:***@db?password=***"
        );
        assert_eq!(mask_url("sqlite://h.db"), "sqlite://h.db");
        let c = Config {
            database_url: "postgres://a:pw@h/d".into(),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("pw"));
    }

    #[test]
    fn keys_are_required_and_values_named() {
        let mut c = Config {
            database_url: "postgres://h/d".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "encryption_keys_file");
        c.encryption_keys_file = Some("k".into());
        assert_eq!(c.validate().unwrap_err().key, "index_key_file");
        c.index_key_file = Some("i".into());
        c.validate().unwrap();
        c.retention_days = 5;
        assert_eq!(c.validate().unwrap_err().key, "retention_days");
        c.retention_days = 400;
        c.database_url = "mysql://h".into();
        assert_eq!(c.validate().unwrap_err().key, "database_url");
        assert!(Config::default().validate().is_ok());
    }
}
