//! mpn-engine: the engine library of a Pay-easy (MPN) shared-use centre. Payment events come
//! in from Kafka; one supervised actor per collecting institution turns each into a
//! notification for that institution's subscribers.
//!
//! Public (the composition root and what the integration suite inspects):
//! - [`engine`]: [`Engine`] and its builder: start-up and graceful shutdown.
//! - [`config`]: the layered, validated configuration; [`error`]: the one error type.
//! - [`runtime`]: the shutdown signal and the tracker of every task.
//! - [`auth`]: subscriber credentials (Argon2 hashes, certificate names), login
//!   protection; [`audit`]: the audit trail in Kafka.
//! - [`subscriptions`]: the registry (the hub: tenancy checks, durable start
//!   positions; the engine's side of the delivery contract), each subscription's
//!   state per partition, its catch-up reader and the hand-over to live.
//! - [`offsets`]: per-partition low-watermark tracking and delivery holds.
//! - [`cursors`]: durable cursors in a compacted Kafka topic.
//! - [`health`]: the readiness checks behind `/readyz` and the gRPC health service.
//! - [`admin`]: what the operator's admin API shows (sessions, subscribers, links,
//!   dead letters) and its one write action, re-injecting a dead letter.
//! - [`telemetry`]: logging and the Prometheus exporter.
//! - [`domain`], [`cafis`]: the `mpn-domain` and `mpn-cafis-link` crates, re-exported.
//!
//! Internal: `ingest` (the consumer loop and the committer), `session` (institution
//! session actors and the router), `dlq` (the dead-letter writer), `links` (the CAFIS
//! links' backend), `records` (the partition check of every record read).

pub mod admin;
pub mod audit;
pub mod auth;
pub use mpn_cafis_link as cafis;
pub mod config;
pub mod cursors;
pub(crate) mod dlq;
pub use mpn_delivery as delivery;
pub use mpn_domain as domain;
pub use mpn_history as history;
pub mod engine;
pub mod error;
pub mod health;
pub(crate) mod ingest;
pub(crate) mod links;
pub mod offsets;
pub(crate) mod records;
pub mod runtime;
pub mod security;
pub(crate) mod session;
pub mod subscriptions;
pub mod telemetry;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use config::Config;
pub use engine::{Engine, EngineBuilder, IngestStart, MemorySource, Stopped};
pub use error::Error;
