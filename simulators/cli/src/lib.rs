//! `mpn-sim`: the load simulator of mpn-notify (docs/simulator.md).
//!
//! It plays both sides of the engine at once: the MPN side publishes seeded Pay-easy
//! traffic into Kafka at a rate profile, and the institution side runs durable gRPC
//! billing subscribers that check what they receive. At the end it reports
//! throughput, end-to-end latency, duplicates, gaps, order violations and dead
//! letters, as text, `report.json` and `report.svg`.
//!
//! - [`settings`]: flags, the TOML settings file, defaults and checks.
//! - [`load`]: one run: subscribers, publisher, drain, dead letters, the report.
//! - [`subscribers`]: the simulated billing systems (slow acks, a stall, reconnects).
//! - [`stats`]: the latency histogram and the per-second timeline.
//! - [`report`]: the report's schema, its summary text and its files.
//! - [`chart`]: draws `report.svg`.
//! - [`progress`]: progress bars while running.
//! - [`demo`]: `demo-load`: an in-process broker and engine to run against.
//!
//! This crate is apart from `mpn-sim` because it starts the engine in-process, and the
//! engine depends on `mpn-sim`.

pub mod chart;
pub mod demo;
pub mod load;
pub mod progress;
pub mod report;
pub mod settings;
pub mod stats;
pub mod subscribers;
