//! Simulators of both sides of the engine.
//!
//! - [`traffic`]: the MPN side: a seeded generator of realistic Pay-easy events
//!   (skewed institution shares, per-institution number lengths, long-tailed amounts,
//!   half-width kana names, cancellations, resends, preliminary/confirmed pairs and a
//!   share of invalid records), encoded as protobuf or JSON records.
//! - [`profile`]: rate profiles of a load run (constant, ramp, a compressed day) as a
//!   pure function of the run's progress.
//! - [`publish`]: writes generated records to a Kafka topic.
//! - [`subscriber`]: the institution side: a billing-system gRPC client.
//! - [`check`]: what a subscriber checks about its deliveries (order per partition and
//!   institution, duplicates, gaps against the expected ids).
//! - [`cafis_host`]: the institution side: a CAFIS-style receiving host (TCP server
//!   speaking docs/cafis-telegram.md) with switchable faults and a record of what the
//!   centre sent.

pub mod cafis_host;
pub mod check;
pub mod profile;
pub mod publish;
pub mod subscriber;
pub mod traffic;
