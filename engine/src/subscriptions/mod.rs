//! Subscriptions: who is attached to which institution, what each subscription is
//! owed per partition, and how a durable one moves between its own Kafka reader and
//! the live path without a gap or a reordering.
//!
//! - [`registry`]: the hub. Attaching (authentication, the tenancy check, the
//!   per-credential limits, durable start positions), the per-institution registry
//!   the sessions offer notifications from, and detaching.
//! - [`state`]: one attached subscription: live or catching up per partition, its
//!   cursor and delivery tokens, parking, the fall-back to catch-up, and the
//!   hand-over decision the ingest loop takes (`grant`). Unit-tested without a broker.
//! - `catchup`: a durable subscription's Kafka reader and its side of the hand-over.

pub(crate) mod catchup;
pub mod registry;
pub mod state;

pub use registry::{DurableSupport, Hub, Limits, group_start, lag_by_subscriber};
pub(crate) use state::grant;
pub use state::{GoLive, Handover, LiveFrom, ReaderCommand, SubBase, SubState};
