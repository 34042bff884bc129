//! mpn-engine: the engine library of a Pay-easy (MPN) shared-use centre. Payment events come
//! in from Kafka; one supervised actor per collecting institution turns each into a
//! notification for that institution's subscribers.
//!
//! - [`domain`]: the `mpn-domain` crate (typed ids, validated events, decoders), re-exported.
//! - [`config`]: the layered, validated configuration.
//! - [`auth`]: subscriber credentials (Argon2 hashes).
//! - [`offsets`]: per-partition low-watermark tracking and delivery holds.
//! - [`ingest`]: the Kafka consumer loop and the committer.
//! - [`dlq`]: the dead-letter writer.
//! - [`session`]: institution session actors and the router.
//! - [`hub`]: subscriber registry, tenancy checks and durable start positions (the
//!   gRPC connector's backend).
//! - [`subscription`]: one attached subscription: live or catching up, per partition;
//!   its cursor and delivery tokens.
//! - [`catchup`]: a durable subscription's Kafka reader and the hand-over to live.
//! - [`cursors`]: durable cursors in a compacted Kafka topic.
//! - [`cafis`]: CAFIS-style telegram links to institutions' hosts, one owner replica
//!   per link through partition ownership.
//! - [`engine`]: start-up and graceful shutdown of all of the above.
//! - [`telemetry`]: logging and the Prometheus exporter.

pub mod auth;
pub use mpn_cafis_link as cafis;
pub mod catchup;
pub mod config;
pub mod cursors;
pub mod dlq;
pub use mpn_domain as domain;
pub mod engine;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod links;
pub mod offsets;
pub mod runtime;
pub mod session;
pub mod subscription;
pub mod telemetry;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use config::Config;
pub use engine::{Engine, EngineBuilder, IngestStart, MemorySource, Stopped};
pub use error::Error;
