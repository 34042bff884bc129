//! A notification on its way to one subscriber, and the engine's claim on it.

use std::fmt;
use std::sync::Arc;

use mpn_proto::mpn::notify::v1 as pb;

/// Why a delivery token is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The subscriber acknowledged the notification.
    Acked,
    /// The subscriber went away (disconnected, too slow, protocol error) before
    /// acknowledging it.
    SubscriberGone,
    /// The server is shutting down: the notification is handed back, not finished.
    Shutdown,
}

/// The engine's claim on a queued notification; released exactly once.
pub trait DeliveryToken: Send + 'static {
    fn release(self: Box<Self>, how: Release);

    /// True when the notification is read again from Kafka (a catch-up after a
    /// reconnect, a take-over or an overflow) rather than arriving live: it may have
    /// been delivered before.
    fn replayed(&self) -> bool {
        false
    }
}

/// A notification queued for one subscriber. `notification.seq` is set on sending.
pub struct Outbound {
    pub notification: Arc<pb::Notification>,
    pub token: Box<dyn DeliveryToken>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("notification_id", &self.notification.notification_id)
            .finish_non_exhaustive()
    }
}
