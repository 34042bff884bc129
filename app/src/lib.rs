//! The `mpn-notify` application: the binary's commands and the embedded demo. The
//! only crate that puts the engine, its connectors and the simulator together in one
//! process; the engine library itself never depends on the simulator.
//!
//! - [`demo`]: the self-contained demo behind `mpn-notify demo`.

pub mod demo;
