//! The gRPC subscription connector: serves `mpn.notify.v1.Notify` to billing systems.
//!
//! - [`config`]: listen address, queue capacity, ack window, heart-beat interval.
//! - [`server`]: the tonic service. It authenticates each call, attaches a bounded
//!   `SubscriberQueue` to the engine through the `Backend` trait of the delivery
//!   contract (`mpn-delivery`), and starts one `pump` task per subscription that
//!   enforces the ack window, sends heart-beats while idle and releases each
//!   notification's `DeliveryToken` when it is acknowledged.
//! - `status`: the contract's refusals and end reasons as gRPC statuses, and a
//!   `SubscribeRequest` as an attach request; the only place the two meet.
//!
//! The connector knows nothing of Kafka or actors: the engine implements `Backend`
//! and pushes `Outbound` notifications into the queues it was given. Tests use a
//! fake backend.

pub mod config;
pub mod metrics;
mod pump;
pub mod server;
mod status;
pub mod tls;

pub use config::{ClientAuth, Config, TlsConfig};
pub use pump::report_gauges;
pub use server::{ServeError, serve};

/// What the health service reports (the engine's readiness): `ready` for the
/// overall service `""`, `subscriptions` for `mpn.notify.v1.Notify`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Serving {
    pub ready: bool,
    pub subscriptions: bool,
}

/// Metadata keys that carry the credential on every call.
pub mod metadata {
    pub const INSTITUTION: &str = "mpn-institution";
    pub const LOGIN_ID: &str = "mpn-login-id";
    pub const SECRET: &str = "mpn-secret";
}
