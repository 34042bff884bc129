//! mpn-delivery: the contract between the engine and every transport that delivers
//! notifications (the gRPC connector, the CAFIS-style links, in-process subscribers).
//!
//! - [`notification`]: an [`Outbound`] notification and its [`DeliveryToken`], released
//!   exactly once with a [`Release`] saying how it ended.
//! - [`queue`]: the bounded [`SubscriberQueue`] the engine offers notifications into,
//!   and [`EndReason`], why the engine ended a subscription.
//! - [`labels`]: whether metric labels may name tenants (`metrics.tenant_labels`).
//! - [`attach`]: who subscribes ([`Credentials`], [`Principal`]), what they ask for
//!   ([`AttachRequest`]), and the [`Backend`] / [`InternalBackend`] traits the engine
//!   implements.
//!
//! Nothing here names a transport: a connector maps [`EndReason`] and [`BackendError`]
//! to its own wire (gRPC statuses, telegram codes, log lines).

pub mod attach;
pub mod labels;
pub mod notification;
pub mod queue;

pub use attach::{
    AttachRequest, Attachment, Backend, BackendError, Caller, Credentials, InternalBackend,
    Principal, StartFrom, attach_internal_blocking, display_name,
};
pub use notification::{
    DeliveryToken, Outbound, Release, SharedNotification, once_per_run, release_all,
};
pub use queue::{EndReason, Refused, SubscriberQueue};
