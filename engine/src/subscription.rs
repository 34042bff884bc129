//! The engine's side of one attached subscription: which partitions it is served
//! live on, its cursor, and the delivery tokens that connect acknowledgements to
//! offset holds and cursors.
//!
//! A subscription is served, per input partition, either **live** (sessions offer it
//! notifications of events from `live_from` on) or by its **catch-up reader**, which
//! reads Kafka from the subscription's position (see `catchup.rs`). A durable
//! subscription starts every partition in catch-up; the reader hands each partition
//! over to the live path through the ingest loop once it has read past what ingest
//! has consumed, so nothing is skipped or delivered out of order. When a durable
//! subscription's queue is full, the partition falls back to catch-up from the first
//! notification that did not fit. An ephemeral subscription is live everywhere from
//! the moment it attaches and is disconnected when it cannot keep up.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use mpn_grpc::{DeliveryToken, Release, SubscriberQueue};
use tokio::sync::mpsc;

use crate::cursors::{CursorStore, SubscriberKey};
use crate::domain::InstitutionCode;
use crate::offsets::Hold;

/// Commands to a subscription's catch-up reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderCommand {
    /// Serve `partition` from Kafka again, from `from` on.
    CatchUp { partition: i32, from: i64 },
}

/// Cursor bookkeeping of one partition.
#[derive(Debug, Default, Clone)]
struct PartitionCursor {
    /// Offsets queued to the subscriber and not yet acknowledged.
    in_flight: BTreeSet<i64>,
    /// Everything below this was queued, acknowledged, or was not for this
    /// subscriber: the position to resume from when nothing is in flight.
    settled: i64,
}

impl PartitionCursor {
    fn cursor(&self) -> i64 {
        self.in_flight
            .first()
            .map_or(self.settled, |&f| f.min(self.settled))
    }
}

#[derive(Debug)]
struct Inner {
    /// Per partition: `Some(offset)` = live for events at or after `offset`.
    live_from: Vec<Option<i64>>,
    cursors: Vec<PartitionCursor>,
}

/// What every subscription has.
#[derive(Debug)]
pub struct SubBase {
    pub id: u64,
    pub name: String,
    pub queue: SubscriberQueue,
    pub institutions: HashSet<InstitutionCode>,
}

/// One attached subscription. Shared by the hub's registry, the sessions, its
/// catch-up reader and its delivery tokens.
pub struct SubState {
    pub id: u64,
    pub name: String,
    pub queue: SubscriberQueue,
    pub institutions: HashSet<InstitutionCode>,
    /// Durable identity; `None` for an ephemeral subscription.
    pub key: Option<SubscriberKey>,
    inner: Mutex<Inner>,
    reader: Option<mpsc::UnboundedSender<ReaderCommand>>,
    cursors: Option<Arc<CursorStore>>,
}

impl std::fmt::Debug for SubState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubState")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl SubState {
    /// An ephemeral subscription: live on every partition from now on.
    pub fn ephemeral(base: SubBase, partitions: usize) -> Self {
        Self {
            id: base.id,
            name: base.name,
            queue: base.queue,
            institutions: base.institutions,
            key: None,
            inner: Mutex::new(Inner {
                live_from: vec![Some(i64::MIN); partitions],
                cursors: vec![PartitionCursor::default(); partitions],
            }),
            reader: None,
            cursors: None,
        }
    }

    /// A durable subscription starting, per partition, at `start` (in catch-up).
    pub fn durable(
        base: SubBase,
        key: SubscriberKey,
        start: &[i64],
        reader: mpsc::UnboundedSender<ReaderCommand>,
        cursors: Arc<CursorStore>,
    ) -> Self {
        Self {
            id: base.id,
            name: base.name,
            queue: base.queue,
            institutions: base.institutions,
            key: Some(key),
            inner: Mutex::new(Inner {
                live_from: vec![None; start.len()],
                cursors: start
                    .iter()
                    .map(|&s| PartitionCursor {
                        in_flight: BTreeSet::new(),
                        settled: s,
                    })
                    .collect(),
            }),
            reader: Some(reader),
            cursors: Some(cursors),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wants(&self, institution: &InstitutionCode) -> bool {
        self.institutions.contains(institution)
    }

    /// Whether the live path delivers the event at (`partition`, `offset`).
    pub fn is_live(&self, partition: i32, offset: i64) -> bool {
        self.lock()
            .live_from
            .get(partition as usize)
            .copied()
            .flatten()
            .is_some_and(|from| offset >= from)
    }

    /// Whether `partition` is served live at all.
    pub fn live_on(&self, partition: i32) -> bool {
        self.lock()
            .live_from
            .get(partition as usize)
            .copied()
            .flatten()
            .is_some()
    }

    /// Hands `partition` to the live path from `from` on (called by the ingest loop).
    pub fn go_live(&self, partition: i32, from: i64) {
        if let Some(slot) = self.lock().live_from.get_mut(partition as usize) {
            *slot = Some(from);
        }
    }

    /// A delivery token for the notification of (`partition`, `offset`); registers it
    /// as in flight for the cursor.
    pub fn token(
        self: &Arc<Self>,
        partition: i32,
        offset: i64,
        hold: Option<Hold>,
    ) -> Box<dyn DeliveryToken> {
        if let Some(c) = self.lock().cursors.get_mut(partition as usize) {
            c.in_flight.insert(offset);
        }
        Box::new(SubToken {
            sub: self.clone(),
            partition,
            offset,
            hold,
        })
    }

    /// Everything below `offset` in `partition` has been read by the catch-up reader
    /// and queued if it was for this subscriber.
    pub fn scanned(&self, partition: i32, offset: i64) {
        let mut inner = self.lock();
        if let Some(c) = inner.cursors.get_mut(partition as usize) {
            c.settled = c.settled.max(offset);
        }
        drop(inner);
        self.save_cursor(partition);
    }

    fn acked(&self, partition: i32, offset: i64) {
        let mut inner = self.lock();
        if let Some(c) = inner.cursors.get_mut(partition as usize) {
            c.in_flight.remove(&offset);
            c.settled = c.settled.max(offset + 1);
        }
        drop(inner);
        self.save_cursor(partition);
    }

    /// The position to resume `partition` from.
    pub fn cursor(&self, partition: i32) -> Option<i64> {
        self.lock()
            .cursors
            .get(partition as usize)
            .map(PartitionCursor::cursor)
    }

    fn save_cursor(&self, partition: i32) {
        if let (Some(key), Some(store), Some(pos)) =
            (&self.key, &self.cursors, self.cursor(partition))
        {
            store.advance(key, partition, pos);
        }
    }

    /// The queue refused the notification of (`partition`, `offset`) because it is
    /// full. A durable subscription falls back to catch-up on that partition from
    /// `offset`; an ephemeral one is disconnected.
    pub fn overflowed(&self, partition: i32, offset: i64) {
        match &self.reader {
            Some(reader) => {
                let was_live = {
                    let mut inner = self.lock();
                    inner
                        .live_from
                        .get_mut(partition as usize)
                        .map(|s| s.take().is_some())
                        .unwrap_or(false)
                };
                // Every overflow is reported: the reader keeps the lowest start.
                let _ = reader.send(ReaderCommand::CatchUp {
                    partition,
                    from: offset,
                });
                if was_live {
                    metrics::counter!("mpn_subscriber_catchups_total").increment(1);
                    tracing::info!(subscriber = %self.name, partition, offset, "subscriber behind; serving it from Kafka");
                }
            }
            None => {
                metrics::counter!("mpn_grpc_subscriber_overflows_total").increment(1);
                self.queue.kick(tonic::Status::resource_exhausted(
                    "subscriber too slow: its queue is full; reconnect (with a subscriber_id to resume where you left off)",
                ));
            }
        }
    }
}

/// Connects an acknowledgement to the offset hold (live deliveries) and the cursor.
struct SubToken {
    sub: Arc<SubState>,
    partition: i32,
    offset: i64,
    hold: Option<Hold>,
}

impl DeliveryToken for SubToken {
    fn release(self: Box<Self>, how: Release) {
        match how {
            Release::Acked => {
                self.sub.acked(self.partition, self.offset);
                if let Some(h) = self.hold {
                    h.complete();
                }
            }
            // A subscriber that went away holds no offset: a durable one resumes
            // from its cursor, which stays below this notification; an ephemeral one
            // receives only what arrives while it is connected.
            Release::SubscriberGone => {
                if let Some(h) = self.hold {
                    h.complete();
                }
            }
            Release::Shutdown => {
                if let Some(h) = self.hold {
                    h.hand_back();
                }
            }
        }
    }

    /// Live notifications carry an offset hold; those read back by a catch-up
    /// reader do not.
    fn replayed(&self) -> bool {
        self.hold.is_none()
    }
}
