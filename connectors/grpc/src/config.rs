//! Configuration of the gRPC connector (`[grpc]` in the engine's config file).

use std::net::SocketAddr;
use std::time::Duration;

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
    /// Heart-beat interval while a subscription is idle, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// How long a new stream may take to send its `subscribe` message, in milliseconds.
    pub subscribe_timeout_ms: u64,
    /// A subscriber that leaves a notification unacknowledged this long (ms) is
    /// disconnected with DEADLINE_EXCEEDED, releasing what it holds.
    pub ack_timeout_ms: u64,
    /// Open subscriptions (streams) one credential may hold at a time; more are
    /// refused with RESOURCE_EXHAUSTED.
    pub max_streams_per_credential: usize,
    /// Logins (Argon2 verifications) admitted at a time; more are refused at once
    /// with RESOURCE_EXHAUSTED. At most one verification per core runs at a time.
    pub max_pending_logins: usize,
    /// HTTP/2 ping (and TCP keepalive) interval per connection, in milliseconds.
    pub keepalive_interval_ms: u64,
    /// A connection whose ping is not answered within this (ms) is closed.
    pub keepalive_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 50051)),
            queue_capacity: 8192,
            ack_window: 1024,
            heartbeat_interval_ms: 5_000,
            subscribe_timeout_ms: 10_000,
            ack_timeout_ms: 30_000,
            max_streams_per_credential: 64,
            max_pending_logins: 64,
            keepalive_interval_ms: 10_000,
            keepalive_timeout_ms: 20_000,
        }
    }
}

impl Config {
    /// Checks every value; the error names the key (relative to `[grpc]`).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(1..=1_000_000).contains(&self.queue_capacity) {
            return Err(("queue_capacity", "must be between 1 and 1000000".into()));
        }
        if !(1..=65_536).contains(&self.ack_window) {
            return Err(("ack_window", "must be between 1 and 65536".into()));
        }
        if !(10..=600_000).contains(&self.heartbeat_interval_ms) {
            return Err((
                "heartbeat_interval_ms",
                "must be between 10 and 600000".into(),
            ));
        }
        if !(10..=600_000).contains(&self.subscribe_timeout_ms) {
            return Err((
                "subscribe_timeout_ms",
                "must be between 10 and 600000".into(),
            ));
        }
        if !(10..=3_600_000).contains(&self.ack_timeout_ms) {
            return Err(("ack_timeout_ms", "must be between 10 and 3600000".into()));
        }
        if !(1..=100_000).contains(&self.max_streams_per_credential) {
            return Err((
                "max_streams_per_credential",
                "must be between 1 and 100000".into(),
            ));
        }
        if !(1..=100_000).contains(&self.max_pending_logins) {
            return Err(("max_pending_logins", "must be between 1 and 100000".into()));
        }
        if !(100..=3_600_000).contains(&self.keepalive_interval_ms) {
            return Err((
                "keepalive_interval_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        if !(100..=3_600_000).contains(&self.keepalive_timeout_ms) {
            return Err((
                "keepalive_timeout_ms",
                "must be between 100 and 3600000".into(),
            ));
        }
        Ok(())
    }

    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.ack_timeout_ms)
    }

    pub fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.keepalive_interval_ms)
    }

    pub fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.keepalive_timeout_ms)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn subscribe_timeout(&self) -> Duration {
        Duration::from_millis(self.subscribe_timeout_ms)
    }
}
