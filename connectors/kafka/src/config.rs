//! The `[kafka]` configuration section and the librdkafka client settings built from it.

use std::collections::BTreeMap;

use mpn_config::ConfigError;
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// The topic the MPN gateway writes payment events to (key = institution code).
    pub input_topic: String,
    /// Where undecodable or invalid records go. Empty = `<input_topic>.dlq`.
    pub dlq_topic: String,
    /// Compacted topic holding durable subscriber cursors. Empty =
    /// `<input_topic>.cursors`.
    pub cursor_topic: String,
    /// Consumer group of the engine replicas.
    pub group_id: String,
    /// How long the broker may hold a fetch waiting for data, in milliseconds. Low
    /// values keep latency low; both test brokers hold a fetch for the full wait.
    pub fetch_wait_max_ms: u32,
    /// The same for durable subscribers' catch-up readers, which mostly poll
    /// partitions they have read to the end: a longer wait keeps their idle polling
    /// off the broker, so a subscriber in catch-up does not slow the broker down for
    /// everyone (on brokers that hold a fetch for the full wait it is also the latency
    /// of a notification served by catch-up).
    pub catchup_fetch_wait_max_ms: u32,
    /// What a catch-up reader (one per durable subscription) may prefetch, in KiB
    /// (librdkafka `queued.max.messages.kbytes`; its default is 64 MiB).
    pub catchup_prefetch_kbytes: u32,
    /// Consumer group session timeout, in milliseconds.
    pub session_timeout_ms: u32,
    /// Create the input and dead-letter topics at start-up if they are missing.
    pub create_missing_topics: bool,
    /// Partitions of topics the engine creates.
    pub topic_partitions: i32,
    /// Dead-letter keyed input records that are not on murmur2(key) mod n (the Java
    /// client's and kafka-python's partitioner): another partition breaks their
    /// institution's order. Turn off only when every upstream producer uses another
    /// partitioner that is consistent too (librdkafka's CRC32 `consistent_random`).
    pub check_key_partition: bool,
    /// Extra librdkafka properties for every client (e.g. `security.protocol`).
    pub properties: BTreeMap<String, String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            input_topic: "mpn.payment-events".into(),
            dlq_topic: String::new(),
            cursor_topic: String::new(),
            group_id: "mpn-notify".into(),
            fetch_wait_max_ms: 10,
            catchup_fetch_wait_max_ms: 100,
            catchup_prefetch_kbytes: 1024,
            session_timeout_ms: 10_000,
            create_missing_topics: true,
            topic_partitions: 12,
            check_key_partition: true,
            properties: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Checks every value; the error names the key (relative to `[kafka]`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(ConfigError::new("bootstrap_servers", "must not be empty"));
        }
        if !valid_topic(&self.input_topic) {
            return Err(ConfigError::new(
                "input_topic",
                "must be 1-249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if !self.dlq_topic.is_empty() && !valid_topic(&self.dlq_topic) {
            return Err(ConfigError::new(
                "dlq_topic",
                "must be 1-249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if self.dlq_topic() == self.input_topic {
            return Err(ConfigError::new(
                "dlq_topic",
                "must differ from input_topic",
            ));
        }
        if !self.cursor_topic.is_empty() && !valid_topic(&self.cursor_topic) {
            return Err(ConfigError::new(
                "cursor_topic",
                "must be 1-249 characters of [a-zA-Z0-9._-]",
            ));
        }
        if self.cursor_topic() == self.input_topic || self.cursor_topic() == self.dlq_topic() {
            return Err(ConfigError::new(
                "cursor_topic",
                "must differ from input_topic and dlq_topic",
            ));
        }
        if self.group_id.is_empty() {
            return Err(ConfigError::new("group_id", "must not be empty"));
        }
        if !(1..=10_000).contains(&self.fetch_wait_max_ms) {
            return Err(ConfigError::new(
                "fetch_wait_max_ms",
                "must be between 1 and 10000",
            ));
        }
        if !(1..=10_000).contains(&self.catchup_fetch_wait_max_ms) {
            return Err(ConfigError::new(
                "catchup_fetch_wait_max_ms",
                "must be between 1 and 10000",
            ));
        }
        if !(64..=2_097_151).contains(&self.catchup_prefetch_kbytes) {
            return Err(ConfigError::new(
                "catchup_prefetch_kbytes",
                "must be between 64 and 2097151",
            ));
        }
        if !(1_000..=300_000).contains(&self.session_timeout_ms) {
            return Err(ConfigError::new(
                "session_timeout_ms",
                "must be between 1000 and 300000",
            ));
        }
        if !(1..=10_000).contains(&self.topic_partitions) {
            return Err(ConfigError::new(
                "topic_partitions",
                "must be between 1 and 10000",
            ));
        }
        for key in self.properties.keys() {
            if matches!(
                key.as_str(),
                "enable.auto.commit"
                    | "enable.auto.offset.store"
                    | "group.id"
                    | "bootstrap.servers"
            ) {
                return Err(ConfigError::new(
                    "properties",
                    format!("`{key}` is set by the engine and may not be overridden"),
                ));
            }
        }
        Ok(())
    }

    /// The same settings with every secret in `properties` (SASL and TLS passwords,
    /// client secrets, inline private keys) replaced by `***`, for showing.
    pub fn redacted(&self) -> Self {
        let mut shown = self.clone();
        for (key, value) in shown.properties.iter_mut() {
            if is_secret(key) {
                *value = "***".into();
            }
        }
        shown
    }

    pub fn dlq_topic(&self) -> String {
        if self.dlq_topic.is_empty() {
            format!("{}.dlq", self.input_topic)
        } else {
            self.dlq_topic.clone()
        }
    }

    pub fn cursor_topic(&self) -> String {
        if self.cursor_topic.is_empty() {
            format!("{}.cursors", self.input_topic)
        } else {
            self.cursor_topic.clone()
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The engine's consumer: manual offset store and commit only.
    pub fn consumer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string())
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            // Heart-beats well inside the session timeout (librdkafka's default of 3 s
            // would let a short timeout evict a healthy member).
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(100).to_string(),
            )
            // Also the rebalance timeout: how long a rebalance waits for members that
            // do not rejoin. librdkafka's 5 minutes would let a dead replica hold its
            // partitions that long on a broker that waits it out.
            .set(
                "max.poll.interval.ms",
                (self.session_timeout_ms * 2).max(10_000).to_string(),
            )
            .set("enable.partition.eof", "false");
        c
    }

    /// A producer that waits for every in-sync replica and partitions by murmur2 of
    /// the key, as the Java client and kafka-python do (librdkafka's default is
    /// CRC32): records of one institution then land on one partition whichever client
    /// wrote them, which per-institution order needs.
    pub fn producer(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("acks", "all")
            .set("linger.ms", "1")
            .set("partitioner", "murmur2_random");
        c
    }
}

/// librdkafka properties whose values are secrets: `sasl.password`,
/// `ssl.key.password`, `ssl.keystore.password`, `sasl.oauthbearer.client.secret`,
/// `sasl.oauthbearer.config`, inline keys such as `ssl.key.pem`.
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.contains("password")
        || key.contains("secret")
        || key.ends_with("key.pem")
        || key == "sasl.oauthbearer.config"
}

fn valid_topic(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 249
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacted_masks_secrets_and_keeps_the_rest() {
        let mut c = Config::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.username", "centre"),
            ("sasl.password", "p1"),
            ("ssl.key.password", "p2"),
            ("sasl.oauthbearer.client.secret", "p3"),
            ("ssl.key.pem", "-----BEGIN PRIVATE KEY-----"),
        ] {
            c.properties.insert(k.into(), v.into());
        }
        let shown = c.redacted();
        assert_eq!(shown.properties["security.protocol"], "SASL_SSL");
        assert_eq!(shown.properties["sasl.username"], "centre");
        for k in [
            "sasl.password",
            "ssl.key.password",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
        ] {
            assert_eq!(shown.properties[k], "***", "{k}");
        }
        assert_eq!(
            c.properties["sasl.password"], "p1",
            "the original is untouched"
        );
    }

    use super::*;

    #[test]
    fn defaults_are_valid_and_dlq_follows_input() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.dlq_topic(), "mpn.payment-events.dlq");
    }

    #[test]
    fn errors_name_the_key() {
        let c = Config {
            input_topic: "bad topic".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "input_topic");
        let mut c = Config::default();
        c.properties
            .insert("enable.auto.commit".into(), "true".into());
        assert_eq!(c.validate().unwrap_err().key, "properties");
        let c = Config {
            dlq_topic: "mpn.payment-events".into(),
            ..Config::default()
        };
        assert_eq!(c.validate().unwrap_err().key, "dlq_topic");
    }

    #[test]
    fn consumer_never_auto_commits() {
        let c = Config::default().consumer();
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }
}

#[cfg(test)]
mod security_tests {
    use super::*;
    use rdkafka::producer::BaseProducer;

    /// librdkafka is built with TLS and SASL/SCRAM: a client configured for
    /// SASL_SSL with SCRAM-SHA-512 is created (a build without the `ssl` feature
    /// refuses it: "Unsupported value \"SASL_SSL\" for configuration property
    /// \"security.protocol\": OpenSSL not available at build time").
    #[test]
    fn sasl_ssl_with_scram_is_accepted() {
        let mut c = Config::default();
        for (k, v) in [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "centre"),
            ("sasl.password", "a-password"),
            ("ssl.endpoint.identification.algorithm", "https"),
        ] {
            c.properties.insert(k.into(), v.into());
        }
        c.validate().unwrap();
        let producer: Result<BaseProducer, _> = c.producer().create();
        assert!(producer.is_ok(), "{:?}", producer.err());
        let consumer: Result<rdkafka::consumer::BaseConsumer, _> = c.consumer().create();
        assert!(consumer.is_ok(), "{:?}", consumer.err());
    }
}
