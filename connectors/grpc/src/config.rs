//! Configuration of the gRPC connector (`[grpc]` in the engine's config file).

use std::net::SocketAddr;
use std::time::Duration;

use mpn_config::{ConfigError, in_range, millis_in};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the subscription service listens on.
    pub listen: SocketAddr,
    /// Notifications queued per subscriber. A durable subscriber whose queue is full
    /// is served from Kafka by its cursor until it catches up; an ephemeral one is
    /// disconnected with RESOURCE_EXHAUSTED. Either way it holds up no one else.
    pub queue_capacity: usize,
    /// Unacknowledged notifications in flight per subscriber.
    pub ack_window: u32,
    /// Heart-beat interval while a subscription is idle (`heartbeat_interval_ms`).
    #[serde(rename = "heartbeat_interval_ms", with = "mpn_config::millis")]
    pub heartbeat_interval: Duration,
    /// How long a new stream may take to send its `subscribe` message
    /// (`subscribe_timeout_ms`).
    #[serde(rename = "subscribe_timeout_ms", with = "mpn_config::millis")]
    pub subscribe_timeout: Duration,
    /// A subscriber that leaves a notification unacknowledged this long is
    /// disconnected with DEADLINE_EXCEEDED, releasing what it holds (`ack_timeout_ms`).
    #[serde(rename = "ack_timeout_ms", with = "mpn_config::millis")]
    pub ack_timeout: Duration,
    /// Open subscriptions (streams) one credential may hold at a time; more are
    /// refused with RESOURCE_EXHAUSTED.
    pub max_streams_per_credential: usize,
    /// Logins (Argon2 verifications) admitted at a time; more are refused at once
    /// with RESOURCE_EXHAUSTED. At most one verification per core runs at a time.
    pub max_pending_logins: usize,
    /// HTTP/2 ping (and TCP keepalive) interval per connection
    /// (`keepalive_interval_ms`).
    #[serde(rename = "keepalive_interval_ms", with = "mpn_config::millis")]
    pub keepalive_interval: Duration,
    /// A connection whose ping is not answered within this is closed
    /// (`keepalive_timeout_ms`).
    #[serde(rename = "keepalive_timeout_ms", with = "mpn_config::millis")]
    pub keepalive_timeout: Duration,
    /// TLS and mutual TLS (`[grpc.tls]`); no `cert_file` = plaintext.
    pub tls: TlsConfig,
}

/// Whether clients must present a certificate signed by `client_ca_file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Not asked for.
    #[default]
    None,
    /// Asked for; a client without one logs in with a secret; a certificate that
    /// does not verify is refused at the handshake.
    Optional,
    /// A client without a valid certificate (none, another CA, expired) is refused at
    /// the handshake.
    Required,
}

/// `[grpc.tls]`: the server certificate and, for mutual TLS, the client CA. The
/// files are read again when they change (checked every `reload_interval_ms`) and on
/// reload (SIGHUP); new connections get the new files, open ones keep theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server; empty = plaintext.
    pub cert_file: String,
    /// PEM private key of the server (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA bundle client certificates must chain to (mutual TLS).
    pub client_ca_file: String,
    pub client_auth: ClientAuth,
    #[serde(rename = "reload_interval_ms", with = "mpn_config::millis")]
    pub reload_interval: Duration,
    /// TLS handshakes in progress at a time; a connection past it is closed at once
    /// (counted in `mpn_tls_handshake_failures_total{reason="too_many_pending"}`).
    pub max_pending_handshakes: usize,
    /// TLS handshakes in progress at a time from one peer address (an IPv6 address
    /// counts by its /64); a connection past it is closed at once (counted in
    /// `mpn_tls_handshake_failures_total{reason="too_many_pending_from_peer"}`), so
    /// one peer cannot take every place of `max_pending_handshakes`.
    pub max_pending_handshakes_per_peer: usize,
    /// How long a new connection may stay silent before its first byte (the
    /// ClientHello); past it the connection is closed (`reason="timeout"`). The
    /// whole handshake is bounded to 10 s.
    #[serde(rename = "client_hello_timeout_ms", with = "mpn_config::millis")]
    pub client_hello_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert_file: String::new(),
            key_file: String::new(),
            client_ca_file: String::new(),
            client_auth: ClientAuth::None,
            reload_interval: Duration::from_millis(10_000),
            max_pending_handshakes: 256,
            max_pending_handshakes_per_peer: 16,
            client_hello_timeout: Duration::from_millis(2_000),
        }
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        !self.cert_file.is_empty()
    }

    /// Checks every value; the error names the key (relative to `[grpc.tls]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        millis_in("reload_interval_ms", self.reload_interval, 100, 86_400_000)?;
        mpn_config::in_range(
            "max_pending_handshakes",
            self.max_pending_handshakes,
            1..=65_536,
        )?;
        mpn_config::in_range(
            "max_pending_handshakes_per_peer",
            self.max_pending_handshakes_per_peer,
            1..=65_536,
        )?;
        millis_in(
            "client_hello_timeout_ms",
            self.client_hello_timeout,
            50,
            10_000,
        )?;
        if self.enabled() && self.key_file.is_empty() {
            return Err(ConfigError::new("key_file", "is required with cert_file"));
        }
        if !self.enabled() && !self.key_file.is_empty() {
            return Err(ConfigError::new("cert_file", "is required with key_file"));
        }
        if self.client_auth != ClientAuth::None {
            if !self.enabled() {
                return Err(ConfigError::new(
                    "client_auth",
                    "needs TLS: set cert_file and key_file",
                ));
            }
            if self.client_ca_file.is_empty() {
                return Err(ConfigError::new(
                    "client_ca_file",
                    "is required when client_auth is optional or required",
                ));
            }
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            queue_capacity: 8192,
            ack_window: 1024,
            heartbeat_interval: ms(5_000),
            subscribe_timeout: ms(10_000),
            ack_timeout: ms(30_000),
            max_streams_per_credential: 64,
            max_pending_logins: 64,
            keepalive_interval: ms(10_000),
            keepalive_timeout: ms(20_000),
            tls: TlsConfig::default(),
        }
    }
}

impl Config {
    /// Checks every value; the error names the key (relative to `[grpc]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        in_range("queue_capacity", self.queue_capacity, 1..=1_000_000)?;
        in_range("ack_window", self.ack_window, 1..=65_536)?;
        millis_in(
            "heartbeat_interval_ms",
            self.heartbeat_interval,
            10,
            600_000,
        )?;
        millis_in("subscribe_timeout_ms", self.subscribe_timeout, 10, 600_000)?;
        millis_in("ack_timeout_ms", self.ack_timeout, 10, 3_600_000)?;
        in_range(
            "max_streams_per_credential",
            self.max_streams_per_credential,
            1..=100_000,
        )?;
        in_range("max_pending_logins", self.max_pending_logins, 1..=100_000)?;
        millis_in(
            "keepalive_interval_ms",
            self.keepalive_interval,
            100,
            3_600_000,
        )?;
        millis_in(
            "keepalive_timeout_ms",
            self.keepalive_timeout,
            100,
            3_600_000,
        )?;
        self.tls.validate().map_err(|e| e.within("tls"))?;
        Ok(())
    }
}
