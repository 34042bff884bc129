//! The `mpn-notify` application: the binary's commands and the embedded demo. The
//! only crate that puts the engine, its connectors and the simulator together in one
//! process; the engine library itself never depends on the simulator.
//!
//! - [`demo`]: the self-contained demo behind `mpn-notify demo`.
//! - [`admin`]: the metrics/admin listener (`/metrics`, `/healthz`, `/readyz`, the
//!   operator's admin API).
//! - [`serve`]: `mpn-notify serve`: the listener first, then the engine, retried with
//!   back-off while Kafka cannot be reached.

pub mod admin;
pub mod console;
pub mod demo;
pub mod serve;
