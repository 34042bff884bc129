//! The engine's configuration: one struct per component, layered as embedded defaults
//! → TOML file → `MPN_*` environment variables, and validated once at load with errors
//! that name the key. Every key is documented in `docs/mpn-notify.example.toml`.
//!
//! Environment overrides use `__` between levels, e.g.
//! `MPN_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or `MPN_GRPC__ACK_WINDOW=256`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use mpn_config::{ConfigError, in_range, millis_in};

pub use crate::auth::CredentialConfig;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: mpn_kafka::Config,
    pub ingest: IngestConfig,
    pub cursors: CursorConfig,
    pub sessions: SessionConfig,
    pub grpc: mpn_grpc::Config,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
    pub admin: AdminConfig,
    /// CAFIS-style telegram links to institutions' hosts.
    pub cafis: crate::cafis::Config,
    /// Login protection, the audit topic and the reloadable credentials file.
    pub auth: crate::auth::AuthConfig,
    /// Subscriber credentials: who may log in and which institutions each may see.
    pub credentials: Vec<CredentialConfig>,
    /// The payment history (`docs/history.md`): off while `database_url` is empty.
    pub history: mpn_history::Config,
    /// The staff console on the history (`docs/console.md`), served by the binary.
    pub console: ConsoleConfig,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleConfig {
    /// Serve the console when the history is on.
    pub enabled: bool,
    /// The console's own HTTP listener.
    pub listen: String,
    /// A session unused this long is logged out (`idle_timeout_ms`).
    #[serde(rename = "idle_timeout_ms", with = "mpn_config::millis")]
    pub idle_timeout: Duration,
    /// Mark the session cookie `Secure` (browsers send it over HTTPS only, and to
    /// `localhost` over HTTP). Turn off only behind a proxy that cannot do TLS.
    pub secure_cookies: bool,
    /// Staff sessions at once on this replica (past it the oldest is logged out).
    pub max_sessions: usize,
    /// Take the client's address (for the per-address login lockout) from the last
    /// `X-Forwarded-For` entry, the one the proxy in front appended. Only behind a
    /// proxy that always sets it: otherwise every client shares the proxy's address
    /// (and its lockout), or a client could name any address.
    pub trust_forwarded_for: bool,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:8090".into(),
            idle_timeout: Duration::from_secs(15 * 60),
            secure_cookies: true,
            max_sessions: 10_000,
            trust_forwarded_for: false,
        }
    }
}

impl ConsoleConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// How often finalised offsets are committed (`commit_interval_ms`).
    #[serde(rename = "commit_interval_ms", with = "mpn_config::millis")]
    pub commit_interval: Duration,
    /// Records consumed but not yet finalised, over all partitions, before the
    /// consumer waits. Bounds the engine's memory.
    pub max_in_flight: usize,
    /// Wait this long after start-up before consuming, so subscribers can reconnect
    /// first (`startup_grace_ms`).
    #[serde(rename = "startup_grace_ms", with = "mpn_config::millis")]
    pub startup_grace: Duration,
    /// On shutdown, how long to wait for in-flight notifications to be acknowledged
    /// after consumption stops; what is still unacknowledged then is handed back
    /// (`drain_timeout_ms`).
    #[serde(rename = "drain_timeout_ms", with = "mpn_config::millis")]
    pub drain_timeout: Duration,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            commit_interval: Duration::from_millis(100),
            max_in_flight: 100_000,
            startup_grace: Duration::ZERO,
            drain_timeout: Duration::from_millis(5_000),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CursorConfig {
    /// How often changed durable-subscriber cursors are written (`flush_interval_ms`).
    #[serde(rename = "flush_interval_ms", with = "mpn_config::millis")]
    pub flush_interval: Duration,
    /// How often every known cursor is written again as a snapshot that start-up
    /// reads from, so start-up time does not grow with the topic's history
    /// (`snapshot_interval_ms`).
    #[serde(rename = "snapshot_interval_ms", with = "mpn_config::millis")]
    pub snapshot_interval: Duration,
    /// Durable subscriber ids one credential may keep; a new id past it is refused
    /// with RESOURCE_EXHAUSTED.
    pub max_ids_per_credential: usize,
    /// A durable subscriber id not used for this long (no cursor write, no
    /// subscription on this replica) is removed with tombstones (hours; 0 = never).
    pub expire_after_hours: u64,
}

impl Default for CursorConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_millis(200),
            snapshot_interval: Duration::from_millis(30_000),
            max_ids_per_credential: 256,
            expire_after_hours: 24 * 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// Threads (actix arbiters) the institution sessions run on; 0 = one per core.
    pub threads: usize,
    /// Restarts a session may make within `restart_window_ms` before an event that
    /// makes it panic is dead-lettered instead of retried.
    pub restart_budget: u32,
    #[serde(rename = "restart_window_ms", with = "mpn_config::millis")]
    pub restart_window: Duration,
    /// Back-off before the first retry after a panic; doubles per restart
    /// (`backoff_initial_ms`, `backoff_max_ms`).
    #[serde(rename = "backoff_initial_ms", with = "mpn_config::millis")]
    pub backoff_initial: Duration,
    #[serde(rename = "backoff_max_ms", with = "mpn_config::millis")]
    pub backoff_max: Duration,
    /// Notification ids remembered per institution to drop duplicate records.
    pub dedupe_window: usize,
    /// A session that got no event for this long is stopped (its memory, mostly the
    /// dedupe window, freed); the institution's next event starts a new one. 0 = never
    /// (`idle_evict_after_ms`).
    #[serde(rename = "idle_evict_after_ms", with = "mpn_config::millis")]
    pub idle_evict_after: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            threads: 0,
            restart_budget: 3,
            restart_window: Duration::from_millis(60_000),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(5_000),
            dedupe_window: 4_096,
            idle_evict_after: Duration::from_millis(3_600_000),
        }
    }
}

impl SessionConfig {
    pub fn backoff(&self, restart: u32) -> Duration {
        let factor = 1u32 << restart.saturating_sub(1).min(20);
        self.backoff_initial
            .saturating_mul(factor)
            .min(self.backoff_max)
    }

    pub fn thread_count(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            self.threads
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// The metrics/admin listener (`/metrics`, `/healthz`, `/readyz`, the admin API);
    /// empty = none. Loopback by default: exposing it beyond this host (e.g.
    /// `0.0.0.0:9464` for a scraper or a kubelet probe) is a deliberate setting.
    pub listen: String,
    /// Whether metric labels may name tenants (institution codes, subscriber names).
    /// Off: only aggregates and opaque stream numbers (`s<id>`).
    pub tenant_labels: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            tenant_labels: false,
        }
    }
}

/// How logs are written (to stderr).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// `human` (one readable line per event) or `json` (one JSON object per line,
    /// every field its own key, for a log pipeline).
    pub format: LogFormat,
    /// The filter (`info`, `mpn_engine=debug,info`, ...); `RUST_LOG` overrides it.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// The operator's admin API on the metrics/admin listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// File holding the operator's bearer token (trimmed); empty = the admin API is
    /// off (its paths answer 404; `/metrics`, `/healthz` and `/readyz` stay).
    pub token_file: String,
}

impl MetricsConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

impl Config {
    /// Loads defaults, then `path` (if given; it must exist), then `MPN_*` variables.
    pub fn load(path: Option<&Path>) -> crate::error::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            let text = std::fs::read_to_string(path).map_err(|error| crate::Error::ReadConfig {
                path: path.display().to_string(),
                error,
            })?;
            figment = figment.merge(Toml::string(&text));
        }
        // Only `MPN_<SECTION>__<KEY>` variables are configuration; other MPN_* names
        // (tooling, tests) are left alone.
        figment = figment.merge(
            Env::prefixed("MPN_")
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        );
        let config: Config = figment.extract().map_err(|e| crate::Error::ParseConfig {
            file: path
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "environment".into()),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The configuration for showing (`mpn-notify check-config`): Kafka secrets and
    /// the history database's password masked. Credentials carry only Argon2 hashes,
    /// never secrets.
    pub fn redacted(&self) -> Self {
        Self {
            kafka: self.kafka.redacted(),
            history: mpn_history::Config {
                database_url: mpn_history::config::mask_url(&self.history.database_url),
                ..self.history.clone()
            },
            ..self.clone()
        }
    }

    /// Checks every value and cross-field rule; the error names the whole key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate().map_err(|e| e.within("kafka"))?;
        self.grpc.validate().map_err(|e| e.within("grpc"))?;
        self.cafis.validate().map_err(|e| e.within("cafis"))?;
        self.history.validate().map_err(|e| e.within("history"))?;
        let con = &self.console;
        if con.listen_addr().is_none() {
            return Err(ConfigError::new(
                "console.listen",
                format!(
                    "must be host:port with an IP address (got {:?})",
                    con.listen
                ),
            ));
        }
        millis_in(
            "console.idle_timeout_ms",
            con.idle_timeout,
            1_000,
            86_400_000,
        )?;
        in_range("console.max_sessions", con.max_sessions, 1..=1_000_000)?;
        let i = &self.ingest;
        millis_in("ingest.commit_interval_ms", i.commit_interval, 1, 60_000)?;
        in_range("ingest.max_in_flight", i.max_in_flight, 1..=10_000_000)?;
        if i.startup_grace > Duration::from_millis(600_000) {
            return Err(ConfigError::new(
                "ingest.startup_grace_ms",
                "must be at most 600000",
            ));
        }
        if i.drain_timeout > Duration::from_millis(600_000) {
            return Err(ConfigError::new(
                "ingest.drain_timeout_ms",
                "must be at most 600000",
            ));
        }
        let c = &self.cursors;
        millis_in("cursors.flush_interval_ms", c.flush_interval, 10, 60_000)?;
        millis_in(
            "cursors.snapshot_interval_ms",
            c.snapshot_interval,
            1_000,
            3_600_000,
        )?;
        in_range(
            "cursors.max_ids_per_credential",
            c.max_ids_per_credential,
            1..=1_000_000,
        )?;
        if c.expire_after_hours > 24 * 3650 {
            return Err(ConfigError::new(
                "cursors.expire_after_hours",
                "must be at most 87600 (ten years)",
            ));
        }
        let s = &self.sessions;
        if s.threads > 1024 {
            return Err(ConfigError::new("sessions.threads", "must be at most 1024"));
        }
        if s.restart_window.is_zero() {
            return Err(ConfigError::new(
                "sessions.restart_window_ms",
                "must be at least 1",
            ));
        }
        if s.backoff_initial.is_zero() || s.backoff_initial > s.backoff_max {
            return Err(ConfigError::new(
                "sessions.backoff_initial_ms",
                "must be at least 1 and at most sessions.backoff_max_ms",
            ));
        }
        in_range("sessions.dedupe_window", s.dedupe_window, 1..=10_000_000)?;
        if !self.metrics.listen.is_empty() && self.metrics.listen_addr().is_none() {
            return Err(ConfigError::new(
                "metrics.listen",
                format!(
                    "{:?} is not a socket address such as 0.0.0.0:9464",
                    self.metrics.listen
                ),
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.logging.level).is_err() {
            return Err(ConfigError::new(
                "logging.level",
                format!(
                    "{:?} is not a log filter such as \"info\" or \"mpn_engine=debug,info\"",
                    self.logging.level
                ),
            ));
        }
        if !self.admin.token_file.is_empty() && self.metrics.listen.is_empty() {
            return Err(ConfigError::new(
                "admin.token_file",
                "the admin API is served on metrics.listen, which is empty",
            ));
        }
        self.auth.validate().map_err(|e| e.within("auth"))?;
        crate::auth::validate_credentials(&self.credentials)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(unsafe_code)]
    mod unsafe_env {
        pub(super) fn set(k: &str, v: &str) {
            // SAFETY: only the test that owns this variable touches it.
            unsafe { std::env::set_var(k, v) }
        }
        pub(super) fn remove(k: &str) {
            // SAFETY: as above.
            unsafe { std::env::remove_var(k) }
        }
    }

    fn hash() -> String {
        crate::auth::hash_secret_with_cost("s3cret", crate::auth::Cost::Test).unwrap()
    }

    fn cred() -> CredentialConfig {
        CredentialConfig {
            institution: "00200".into(),
            login_id: "billing".into(),
            secret_hash: hash(),
            grants: vec![],
            certificate_names: vec![],
        }
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    /// The exporter's labels name institutions and subscribers: by default it is
    /// reachable from this host only; exposing it is a decision (`metrics.listen`).
    #[test]
    fn the_metrics_listener_is_loopback_by_default() {
        let addr = MetricsConfig::default()
            .listen_addr()
            .expect("a default address");
        assert!(addr.ip().is_loopback(), "{addr}");
    }

    #[test]
    fn errors_name_the_key() {
        let mut c = Config::default();
        c.grpc.ack_window = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("grpc.ack_window")
        );
        let mut c = Config::default();
        c.sessions.backoff_initial = Duration::from_millis(10_000);
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("sessions.backoff_initial_ms")
        );
        let mut c = Config::default();
        c.metrics.listen = "nowhere".into();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("metrics.listen")
        );
    }

    #[test]
    fn credential_rules() {
        let mut c = Config {
            credentials: vec![cred()],
            ..Config::default()
        };
        c.validate().unwrap();
        c.credentials[0].secret_hash = "plain-text-secret".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("credentials[0].secret_hash"), "{e}");
        c.credentials[0] = cred();
        c.credentials[0].grants = vec!["1234".into()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("credentials[0].grants[0]")
        );
        c.credentials = vec![cred(), cred()];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("credentials[1].login_id")
        );
    }

    /// `check-config` shows the history's database URL without its password.
    #[test]
    fn the_history_database_password_is_masked_for_showing() {
        let mut c = Config::default();
        c.history.database_url = "postgres://mpn:s3cret-pw@db:5432/history".into();
        let shown = toml::to_string(&c.redacted()).unwrap();
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert!(
            shown.contains("postgres://mpn:***@db:5432/history"),
            "{shown}"
        );
    }

    /// The documented example holds every key with its default value, and loads.
    #[test]
    fn example_file_documents_every_key_with_its_default() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/mpn-notify.example.toml");
        let loaded = Config::load(Some(&path)).unwrap();
        let example: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let defaults: toml::Table = toml::Table::try_from(Config::default()).unwrap();
        for (section, value) in &defaults {
            let toml::Value::Table(keys) = value else {
                continue;
            };
            let documented = example[section]
                .as_table()
                .unwrap_or_else(|| panic!("[{section}] missing"));
            for (key, default) in keys {
                assert_eq!(
                    documented.get(key),
                    Some(default),
                    "{section}.{key} in the example"
                );
            }
            assert_eq!(
                documented.len(),
                keys.len(),
                "[{section}] has keys the engine does not know"
            );
        }
        assert!(
            loaded.credentials.is_empty(),
            "the example ships no working credential"
        );
    }

    /// The example's commented-out credential, put back unchanged, is refused: its
    /// hash is of the well-known secret "change-me".
    #[test]
    fn the_example_credential_is_refused_when_put_back_unchanged() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../docs/mpn-notify.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let block = text
            .split_once("# [[credentials]]")
            .expect("the example keeps a commented credential")
            .1;
        let uncommented: String = std::iter::once("[[credentials]]")
            .chain(
                block
                    .lines()
                    .filter_map(|l| l.strip_prefix("# "))
                    .filter(|l| !l.starts_with('#')),
            )
            .collect::<Vec<_>>()
            .join("\n");
        let mut c: Config = toml::from_str(&uncommented).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("credentials[0].secret_hash") && e.contains("change-me"),
            "{e}"
        );
        // The same entry with a hash of its own is fine.
        c.credentials[0].secret_hash =
            crate::auth::hash_secret_with_cost("mine", crate::auth::Cost::Test).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn file_then_environment() {
        let dir = std::env::temp_dir().join(format!("mpn-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "[kafka]\ninput_topic = \"in\"\n[grpc]\nack_window = 7\n",
        )
        .unwrap();
        let c = Config::load(Some(&path)).unwrap();
        assert_eq!(c.kafka.input_topic, "in");
        assert_eq!(c.grpc.ack_window, 7);
        unsafe_env::set("MPN_GRPC__HEARTBEAT_INTERVAL_MS", "250");
        let c = Config::load(Some(&path)).unwrap();
        unsafe_env::remove("MPN_GRPC__HEARTBEAT_INTERVAL_MS");
        assert_eq!(
            c.grpc.heartbeat_interval,
            Duration::from_millis(250),
            "the environment overrides the file"
        );
        assert_eq!(c.grpc.ack_window, 7);
        std::fs::write(&path, "[grpc]\nack_windw = 7\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("ack_windw"), "{e}");
        std::fs::write(&path, "[grpc]\nack_window = 0\n").unwrap();
        let e = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(e.contains("grpc.ack_window"), "{e}");
        let e = Config::load(Some(&dir.join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.toml"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
