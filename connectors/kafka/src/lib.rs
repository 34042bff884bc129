//! Kafka plumbing shared by the engine, the simulator and the tests.
//!
//! - [`config`]: the `[kafka]` section (bootstrap servers, topics, group, fetch
//!   settings, extra librdkafka properties) and the client configurations built
//!   from it. Consumers never auto-commit and never auto-store offsets.
//! - [`admin`]: topic checks and creation on a real broker.
//! - `mock` (feature `mock`): `MockBroker`, the in-process Kafka-protocol broker
//!   (librdkafka's mock cluster) used by the embedded demo, the benches and most
//!   tests; the engine library does not need it.
//! - [`partition`]: the murmur2 key → partition rule producers must follow.
//! - [`headers`]: names of the record headers the engine reads and writes.

pub mod admin;
pub mod config;
#[cfg(feature = "mock")]
pub mod mock;
pub mod partition;

pub use config::Config;
#[cfg(feature = "mock")]
pub use mock::MockBroker;

/// Record header names.
pub mod headers {
    /// Chooses the decoder of an input record (`application/json` or
    /// `application/x-protobuf`; absent = protobuf).
    pub const CONTENT_TYPE: &str = "content-type";
    /// Dead-letter headers: what was wrong and where the record came from.
    pub const ERROR_KIND: &str = "mpn-error-kind";
    pub const ERROR_FIELD: &str = "mpn-error-field";
    pub const ERROR_MESSAGE: &str = "mpn-error-message";
    pub const SOURCE_TOPIC: &str = "mpn-source-topic";
    pub const SOURCE_PARTITION: &str = "mpn-source-partition";
    pub const SOURCE_OFFSET: &str = "mpn-source-offset";
    /// On a record an operator re-injected through the admin API: the dead letter it
    /// came from (`<dlq topic>/<partition>/<offset>`). Such a record is delivered
    /// again even if its notification id was seen before.
    pub const REINJECTED_FROM: &str = "mpn-reinjected-from";
}
