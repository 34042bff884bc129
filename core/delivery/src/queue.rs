//! The bounded queue between the engine and one subscription, and why the engine
//! ends a subscription.

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

use crate::Outbound;

/// Why the engine ended a subscription. Each transport says it in its own terms (the
/// gRPC connector as a status code and message); the variants say what happened, not
/// what a wire should carry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndReason {
    /// A partition the subscription was live on moved to another engine replica; an
    /// ephemeral subscription has no cursor to be served from, so it reconnects.
    #[error("partitions moved between engine replicas")]
    PartitionsMoved,
    /// A newer connection attached with the same durable subscriber id.
    #[error("replaced by a newer connection of the same subscriber id")]
    Replaced,
    /// The queue was full and the subscription has no cursor to fall back on.
    #[error("subscriber too slow: its queue is full")]
    TooSlow,
    /// The subscription's reader cannot read the input topic.
    #[error("cannot read the input topic for this subscription")]
    SourceUnavailable,
    /// The subscription's position fell out of the input topic's retention while it
    /// was being read; the text is the broker's.
    #[error("the position is older than the input topic's retention ({0})")]
    PositionExpired(String),
    /// The subscription's credential was removed (credentials reload).
    #[error("the credential was removed")]
    CredentialRemoved,
    /// The credential no longer grants these institutions (credentials reload).
    #[error("the credential no longer grants institutions {0:?}")]
    GrantsRevoked(Vec<String>),
}

/// Set by the engine to end a subscription (the first reason wins).
#[derive(Debug, Default)]
struct Kick {
    reason: Mutex<Option<EndReason>>,
    notify: Notify,
}

/// Why [`SubscriberQueue::offer`] gave a notification back.
#[derive(Debug)]
pub enum Refused {
    /// The queue is full: the subscriber is not keeping up.
    Full(Outbound),
    /// The subscription has ended.
    Closed(Outbound),
}

impl Refused {
    pub fn into_inner(self) -> Outbound {
        match self {
            Refused::Full(o) | Refused::Closed(o) => o,
        }
    }
}

/// The bounded queue the engine pushes a subscriber's notifications into. `offer`
/// never blocks, so a session is never held up by a subscriber; what happens to a
/// subscriber that does not keep up is the engine's decision (serve it from Kafka, or
/// [`SubscriberQueue::kick`] it).
#[derive(Debug, Clone)]
pub struct SubscriberQueue {
    tx: mpsc::Sender<Outbound>,
    kick: Arc<Kick>,
}

impl SubscriberQueue {
    /// A queue and its receiving end; the transport keeps the receiver (and, before
    /// handing the queue to the engine, [`SubscriberQueue::ended`]).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx,
                kick: Arc::default(),
            },
            rx,
        )
    }

    /// Queues a notification, or gives it back when the queue is full or closed.
    pub fn offer(&self, item: Outbound) -> Result<(), Refused> {
        match self.tx.try_send(item) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(item)) => Err(Refused::Full(item)),
            Err(mpsc::error::TrySendError::Closed(item)) => Err(Refused::Closed(item)),
        }
    }

    /// Queues a notification, waiting for room (for catch-up readers, which serve one
    /// subscriber only); gives it back if the subscription has ended.
    pub async fn send(&self, item: Outbound) -> Result<(), Outbound> {
        self.tx.send(item).await.map_err(|e| e.0)
    }

    /// Completes when the subscription has ended.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// How many notifications the queue holds when full.
    /// Notifications waiting in the queue now.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn capacity(&self) -> usize {
        self.tx.max_capacity()
    }

    /// Ends the subscription with `reason` (the first kick wins).
    pub fn kick(&self, reason: EndReason) {
        let mut slot = self.kick.reason.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
            // Every waiter wakes; one that registers later finds the reason set.
            self.kick.notify.notify_waiters();
        }
    }

    /// Completes with the reason the engine ended the subscription.
    pub async fn kicked(&self) -> EndReason {
        self.ended().wait().await
    }

    /// A handle that completes when the engine ends this subscription, for the
    /// transport's side of the queue.
    pub fn ended(&self) -> Ended {
        Ended(self.kick.clone())
    }
}

/// Completes, through [`Ended::wait`], when the engine ends a subscription.
#[derive(Debug, Clone)]
pub struct Ended(Arc<Kick>);

impl Ended {
    /// Waits for the kick and returns its reason. Cancel-safe: a reason set while no
    /// one was waiting is returned by the next call.
    pub async fn wait(&self) -> EndReason {
        loop {
            let notified = self.0.notify.notified();
            if let Some(r) = self
                .0
                .reason
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return r;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DeliveryToken, Release};
    use mpn_proto::mpn::notify::v1 as pb;

    struct Token;
    impl DeliveryToken for Token {
        fn release(self: Box<Self>, _: Release) {}
    }

    fn item(id: &str) -> Outbound {
        Outbound::new(
            pb::Notification {
                notification_id: id.into(),
                ..Default::default()
            },
            Box::new(Token),
        )
    }

    #[test]
    fn offer_gives_the_notification_back_when_full_or_closed() {
        let (q, mut rx) = SubscriberQueue::channel(1);
        assert!(q.offer(item("a")).is_ok());
        match q.offer(item("b")) {
            Err(Refused::Full(o)) => assert_eq!(o.notification.notification_id, "b"),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap().notification.notification_id, "a");
        drop(rx);
        assert!(q.is_closed());
        match q.offer(item("c")) {
            Err(Refused::Closed(o)) => assert_eq!(o.notification.notification_id, "c"),
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_first_kick_wins_and_is_seen_by_a_later_waiter() {
        let (q, _rx) = SubscriberQueue::channel(1);
        let ended = q.ended();
        q.kick(EndReason::TooSlow);
        q.kick(EndReason::Replaced);
        // Nobody was waiting when it was kicked: the reason is still there.
        assert_eq!(ended.wait().await, EndReason::TooSlow);
        assert_eq!(q.kicked().await, EndReason::TooSlow);
    }

    #[tokio::test]
    async fn every_waiter_wakes_when_kicked() {
        let (q, _rx) = SubscriberQueue::channel(1);
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let ended = q.ended();
                tokio::spawn(async move { ended.wait().await })
            })
            .collect();
        tokio::task::yield_now().await;
        q.kick(EndReason::PartitionsMoved);
        for w in waiters {
            let got = tokio::time::timeout(std::time::Duration::from_secs(5), w).await;
            assert_eq!(got.expect("woken").unwrap(), EndReason::PartitionsMoved);
        }
    }
}
