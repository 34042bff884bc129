//! The engine's side of one attached subscription: which partitions it is served
//! live on, its cursor, and the delivery tokens that connect acknowledgements to
//! offset holds and cursors.
//!
//! A subscription is served, per input partition, either **live** (sessions offer it
//! notifications of events from `live_from` on) or by its **catch-up reader**, which
//! reads Kafka from the subscription's position (see `catchup.rs`). A durable
//! subscription starts every partition in catch-up; the reader hands each partition
//! over to the live path through the ingest loop once it has read past what ingest
//! has consumed, so nothing is skipped or delivered out of order. When ingest is
//! already past the reader (the usual case under steady traffic), the partition goes
//! live from ingest's position at once and the live path *parks* its notifications
//! there until the reader has queued everything below; the reader then moves the
//! parked ones to the queue, in order, and the partition is plainly live. When a durable
//! subscription's queue is full, the partition falls back to catch-up from the first
//! notification that did not fit. An ephemeral subscription is live everywhere from
//! the moment it attaches and is disconnected when it cannot keep up.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use mpn_delivery::{
    DeliveryToken, EndReason, Outbound, Refused, Release, SharedNotification, SubscriberQueue,
};
use tokio::sync::{mpsc, oneshot};

use crate::cursors::{CursorStore, SubscriberKey};
use crate::domain::InstitutionCode;
use crate::offsets::{Hold, OffsetTracker};

/// A reader's request to switch a partition of a subscription to the live path.
#[derive(Debug)]
pub struct GoLive {
    pub sub: Arc<SubState>,
    pub partition: i32,
    /// Everything below this offset was read (and queued where relevant).
    pub position: i64,
    pub reply: oneshot::Sender<LiveFrom>,
}

/// Ingest's answer to [`GoLive`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveFrom {
    /// Live from the reader's position.
    Now,
    /// Live from this later offset, which ingest has reached: the reader queues the
    /// records below it, then the notifications the live path parked meanwhile.
    After(i64),
    /// This replica does not consume the partition: the reader keeps tailing it.
    NotHere,
}

/// Hands a partition of a subscription to the live path. If ingest has not consumed
/// past the reader's position, every later event reaches the sessions after the
/// switch and every earlier one was queued by the reader: live from the reader's
/// position. Otherwise live from ingest's position, with the live notifications
/// parked until the reader has queued the records in between. Decided here, in the
/// loop that consumes, so it is ordered with consumption. After a re-assignment,
/// ingest consumes again from the committed offset (the sessions offer those records
/// again to whoever is live on them), and this subscription's reader has queued them
/// already, so its live path only starts at the highest offset ever consumed
/// ([`OffsetTracker::live_edge`]). A partition this replica does not consume stays
/// with the reader.
pub(crate) fn grant(tracker: &OffsetTracker, req: GoLive) {
    let answer = match tracker.live_edge(req.partition) {
        Some(next) if next <= req.position => {
            req.sub.go_live(req.partition, req.position);
            LiveFrom::Now
        }
        Some(next) => {
            req.sub.go_live_parked(req.partition, next);
            LiveFrom::After(next)
        }
        None => LiveFrom::NotHere,
    };
    let _ = req.reply.send(answer);
}

/// Commands to a subscription's catch-up reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaderCommand {
    /// Serve `partition` from Kafka again, from `from` on.
    CatchUp { partition: i32, from: i64 },
}

/// Cursor bookkeeping of one partition.
#[derive(Debug, Default, Clone)]
struct PartitionCursor {
    /// Offsets queued to the subscriber and not yet acknowledged, with how many
    /// tokens hold each (a live token and a reader's token may briefly share one).
    in_flight: BTreeMap<i64, u32>,
    /// Everything below this was queued, acknowledged, or was not for this
    /// subscriber: the position to resume from when nothing is in flight.
    settled: i64,
    /// Set while the reader serves the partition again after it fell back from live:
    /// how far the reader has read. A late acknowledgement of a live notification
    /// moves `settled` past records the reader has still to queue, so the cursor
    /// stays at or below this until the partition is live again.
    reading: Option<i64>,
}

impl PartitionCursor {
    fn cursor(&self) -> i64 {
        let own = self
            .first_in_flight()
            .map_or(self.settled, |f| f.min(self.settled));
        self.reading.map_or(own, |r| r.min(own))
    }

    fn first_in_flight(&self) -> Option<i64> {
        self.in_flight.first_key_value().map(|(&o, _)| o)
    }

    fn hold(&mut self, offset: i64) {
        *self.in_flight.entry(offset).or_default() += 1;
    }

    /// One token of `offset` is done. `true` if it held the offset.
    fn unhold(&mut self, offset: i64) -> bool {
        match self.in_flight.get_mut(&offset) {
            Some(n) if *n > 1 => {
                *n -= 1;
                true
            }
            Some(_) => {
                self.in_flight.remove(&offset);
                true
            }
            None => false,
        }
    }
}

struct Inner {
    /// Per partition: `Some(offset)` = live for events at or after `offset`.
    live_from: Vec<Option<i64>>,
    /// Per partition: `Some` while a handover is pending, with the live notifications
    /// parked until the reader has queued everything below `live_from`.
    parked: Vec<Option<Vec<Outbound>>>,
    /// The reader has ended: nothing is parked any more.
    ended: bool,
    /// Detached from the registry: sessions offer it nothing more, so its live
    /// cursors may no longer follow what ingest offers (see [`SubState::cursor`]).
    detached: bool,
    cursors: Vec<PartitionCursor>,
}

/// What the catch-up reader finds when it finishes a pending handover.
impl Inner {
    /// Whether the live path delivers the event at (`partition`, `offset`).
    fn live_at(&self, partition: i32, offset: i64) -> bool {
        self.live_from
            .get(partition as usize)
            .copied()
            .flatten()
            .is_some_and(|from| offset >= from)
    }
}

#[derive(Debug)]
pub enum Handover {
    /// These parked notifications go to the queue next (the handover stays pending
    /// until a call returns `Live`).
    Parked(Vec<Outbound>),
    /// Nothing is parked: the partition is live.
    Live,
    /// The handover was called off (too much parked); the reader serves the
    /// partition again.
    CalledOff,
}

/// What every subscription has.
#[derive(Debug)]
pub struct SubBase {
    pub id: u64,
    pub name: String,
    pub queue: SubscriberQueue,
    pub institutions: HashSet<InstitutionCode>,
    pub remote_addr: Option<String>,
}

/// One attached subscription. Shared by the hub's registry, the sessions, its
/// catch-up reader and its delivery tokens.
pub struct SubState {
    pub id: u64,
    pub name: String,
    pub queue: SubscriberQueue,
    pub institutions: HashSet<InstitutionCode>,
    /// Where the subscriber connects from, if known.
    pub remote_addr: Option<String>,
    /// Durable identity; `None` for an ephemeral subscription.
    pub key: Option<SubscriberKey>,
    inner: Mutex<Inner>,
    reader: Option<mpsc::UnboundedSender<ReaderCommand>>,
    cursors: Option<Arc<CursorStore>>,
    /// Ingest's offsets, for durable subscriptions (see [`SubState::cursor`]).
    tracker: Option<OffsetTracker>,
    /// A newer connection of the same identity chose a new position: this one
    /// writes no cursor any more.
    superseded: std::sync::atomic::AtomicBool,
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
            remote_addr: base.remote_addr,
            key: None,
            inner: Mutex::new(Inner {
                live_from: vec![Some(i64::MIN); partitions],
                parked: (0..partitions).map(|_| None).collect(),
                ended: false,
                detached: false,
                cursors: vec![PartitionCursor::default(); partitions],
            }),
            reader: None,
            cursors: None,
            tracker: None,
            superseded: Default::default(),
        }
    }

    /// A durable subscription starting, per partition, at `start` (in catch-up).
    pub fn durable(
        base: SubBase,
        key: SubscriberKey,
        start: &[i64],
        reader: mpsc::UnboundedSender<ReaderCommand>,
        cursors: Arc<CursorStore>,
        tracker: OffsetTracker,
    ) -> Self {
        Self::durable_with(base, key, start, reader, Some(cursors), tracker)
    }

    /// As [`SubState::durable`]; without a store (the unit tests) no cursor is
    /// written, and every decision is the same.
    fn durable_with(
        base: SubBase,
        key: SubscriberKey,
        start: &[i64],
        reader: mpsc::UnboundedSender<ReaderCommand>,
        cursors: Option<Arc<CursorStore>>,
        tracker: OffsetTracker,
    ) -> Self {
        Self {
            id: base.id,
            name: base.name,
            queue: base.queue,
            institutions: base.institutions,
            remote_addr: base.remote_addr,
            key: Some(key),
            inner: Mutex::new(Inner {
                live_from: vec![None; start.len()],
                parked: start.iter().map(|_| None).collect(),
                ended: false,
                detached: false,
                cursors: start
                    .iter()
                    .map(|&s| PartitionCursor {
                        in_flight: BTreeMap::new(),
                        settled: s,
                        reading: None,
                    })
                    .collect(),
            }),
            reader: Some(reader),
            cursors,
            tracker: Some(tracker),
            superseded: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn wants(&self, institution: &InstitutionCode) -> bool {
        self.institutions.contains(institution)
    }

    /// Whether the live path delivers the event at (`partition`, `offset`). The
    /// session asks [`SubState::offer_event`], which decides it under the same lock.
    #[cfg(test)]
    pub fn is_live(&self, partition: i32, offset: i64) -> bool {
        self.lock().live_at(partition, offset)
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
        let mut inner = self.lock();
        let p = partition as usize;
        if p < inner.live_from.len() {
            inner.live_from[p] = Some(from);
            inner.cursors[p].reading = None;
            let stale = inner.parked[p].take();
            drop(inner);
            release_stale(stale);
        }
    }

    /// Hands `partition` to the live path from `from` on, which ingest has reached
    /// and the reader has not: live notifications are parked until the reader has
    /// queued everything below `from` and calls [`SubState::take_parked`].
    pub fn go_live_parked(&self, partition: i32, from: i64) {
        let mut inner = self.lock();
        if inner.ended {
            return;
        }
        let p = partition as usize;
        if p < inner.live_from.len() {
            inner.live_from[p] = Some(from);
            let stale = inner.parked[p].replace(Vec::new());
            drop(inner);
            release_stale(stale);
        }
    }

    /// Offers a live notification of `partition` to the subscriber: parked while a
    /// handover is pending, else queued. A full queue (or too much parked) sends the
    /// partition back to catch-up from the first notification that did not go out.
    /// The session's path is [`SubState::offer_event`]; the tests offer with this.
    #[cfg(test)]
    pub fn offer_live(&self, partition: i32, item: Outbound) {
        let offset = item.notification.source_offset;
        let inner = self.lock();
        if !inner.live_at(partition, offset) || inner.ended {
            // Called off between the session's check and now: the reader serves it.
            drop(inner);
            item.token.release(Release::SubscriberGone);
            return;
        }
        self.place(inner, partition, offset, item);
    }

    /// The session's offer of the event at (`partition`, `offset`), as
    /// [`SubState::is_live`], [`SubState::token`] and [`SubState::offer_live`] in a
    /// row, under one lock: nothing when the partition is not served live from
    /// there, else a token holding the cursor and a fork of `hold`, with the
    /// notification (`shared`, built by `build` for the first subscriber that takes
    /// it).
    pub fn offer_event(
        self: &Arc<Self>,
        partition: i32,
        offset: i64,
        hold: &Hold,
        shared: &mut Option<Arc<SharedNotification>>,
        build: impl FnOnce() -> SharedNotification,
    ) {
        let mut inner = self.lock();
        if !inner.live_at(partition, offset) {
            return;
        }
        // Built before the cursor is held: a build that panics holds nothing.
        let notification = shared.get_or_insert_with(|| Arc::new(build())).clone();
        if let Some(c) = inner.cursors.get_mut(partition as usize) {
            c.hold(offset);
        }
        let item = Outbound {
            notification,
            token: Box::new(SubToken {
                sub: self.clone(),
                partition,
                offset,
                hold: Some(hold.fork()),
            }),
        };
        if inner.ended {
            drop(inner);
            item.token.release(Release::SubscriberGone);
            return;
        }
        self.place(inner, partition, offset, item);
    }

    /// Parks or queues a live notification (its partition is live from at or below
    /// it, checked under `inner`).
    fn place(&self, mut inner: MutexGuard<'_, Inner>, partition: i32, offset: i64, item: Outbound) {
        let p = partition as usize;
        let called_off = match inner.parked.get(p) {
            Some(Some(_)) => {
                // Parking across all partitions is bounded by the queue's capacity.
                let room =
                    self.queue.capacity() > inner.parked.iter().flatten().map(Vec::len).sum();
                if room {
                    if let Some(Some(parked)) = inner.parked.get_mut(p) {
                        parked.push(item);
                    }
                    return;
                }
                // The subscriber is not taking what is parked: serve it from Kafka.
                // Decided under the lock so that no later notification overtakes the
                // parked ones.
                let mut parked = self.fall_back(&mut inner, partition, offset);
                parked.push(item);
                parked
            }
            _ => {
                drop(inner);
                match self.queue.offer(item) {
                    Ok(()) => {}
                    Err(Refused::Full(item)) => {
                        // Fall back first: the release then sees the partition read
                        // again from below it and does not pin the cursor.
                        self.overflowed(partition, offset);
                        item.token.release(Release::SubscriberGone);
                    }
                    Err(Refused::Closed(item)) => item.token.release(Release::SubscriberGone),
                }
                return;
            }
        };
        drop(inner);
        for item in called_off {
            item.token.release(Release::SubscriberGone);
        }
    }

    /// The reader has queued everything below the partition's `live_from`: takes what
    /// the live path parked meanwhile. The handover completes (`Live`) on the call
    /// that finds nothing parked, so whatever is parked while the reader queues the
    /// previous batch still goes before any notification offered after it.
    pub fn take_parked(&self, partition: i32) -> Handover {
        let mut inner = self.lock();
        let live = inner
            .live_from
            .get(partition as usize)
            .copied()
            .flatten()
            .is_some();
        match inner.parked.get_mut(partition as usize) {
            Some(Some(parked)) if parked.is_empty() => {
                inner.parked[partition as usize] = None;
                inner.cursors[partition as usize].reading = None;
                Handover::Live
            }
            Some(Some(parked)) => Handover::Parked(std::mem::take(parked)),
            _ if live => Handover::Live,
            _ => Handover::CalledOff,
        }
    }

    /// The subscription is leaving the registry: from now on its live cursors only
    /// move with its own acknowledgements. Called before the registry drops it, so
    /// no cursor saved later can pass a record that a session no longer offers it.
    pub fn detach(&self) {
        self.lock().detached = true;
    }

    /// The reader has ended (the subscription is over): releases whatever is parked.
    pub fn end_handovers(&self) {
        let parked: Vec<Outbound> = {
            let mut inner = self.lock();
            inner.ended = true;
            inner
                .parked
                .iter_mut()
                .flat_map(|p| p.take())
                .flatten()
                .collect()
        };
        for item in parked {
            item.token.release(Release::SubscriberGone);
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
            c.hold(offset);
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
            if let Some(r) = c.reading.as_mut() {
                *r = (*r).max(offset);
            }
        }
        drop(inner);
        self.save_cursor(partition);
    }

    /// The notification of (`partition`, `offset`) was acknowledged. The cursor is
    /// saved once per partition for a run of acknowledgements released together
    /// (`mpn_delivery::release_all`).
    fn acked(self: &Arc<Self>, partition: i32, offset: i64) {
        let mut inner = self.lock();
        if let Some(c) = inner.cursors.get_mut(partition as usize) {
            c.unhold(offset);
            c.settled = c.settled.max(offset + 1);
        }
        drop(inner);
        mpn_delivery::once_per_run((Arc::as_ptr(self) as usize, partition.into()), || {
            let sub = self.clone();
            Box::new(move || sub.save_cursor(partition))
        });
    }

    /// A token of (`partition`, `offset`) was released without an acknowledgement.
    /// While the subscription goes on, the offset must not pin the cursor for ever:
    /// when the partition is being read again from at or below it (a fall-back, a
    /// called-off handover), the reader's position caps the cursor instead, so the
    /// token's hold on the cursor is dropped. Otherwise (the subscription is ending)
    /// it stays, and the cursor stays below it.
    fn gone(&self, partition: i32, offset: i64) {
        let mut inner = self.lock();
        if let Some(c) = inner.cursors.get_mut(partition as usize)
            && c.reading.is_some_and(|r| r <= offset)
            && c.unhold(offset)
        {
            metrics::counter!(crate::telemetry::metric::SUBSCRIBER_CURSOR_PINS_CLEARED_TOTAL)
                .increment(1);
        }
    }

    /// The position to resume `partition` from; `None` when it cannot be told.
    ///
    /// On a live partition, notifications reach the queue out of offset order: each
    /// institution's session runs on its own, so the subscriber may acknowledge
    /// offset 101 before the session of offset 100 has offered it. An acknowledgement
    /// says nothing of lower offsets not offered yet, so the cursor of a live
    /// partition never passes ingest's lowest unoffered offset. A live partition
    /// ingest does not track (revoked) keeps its stored cursor.
    ///
    /// Once a partition is plainly live (no handover pending), every record below
    /// ingest's lowest unoffered offset was offered to the subscription: if it was
    /// for this subscriber it is in flight until acknowledged, otherwise there is
    /// nothing to wait for. So the cursor follows the lowest unoffered offset, capped
    /// by the lowest in-flight one, and moves on even when none of the records are for
    /// this subscriber (a partition that carries none of its institutions, a quiet
    /// institution): it never freezes where the partition went live and then falls
    /// out of the topic's retention. This holds only while the subscription is in
    /// the registry (sessions take it from there when they process a record); once
    /// it is detached, records are no longer offered to it and the cursor moves only
    /// with its own acknowledgements.
    pub fn cursor(&self, partition: i32) -> Option<i64> {
        // Ingest's position first: a record below it has had its base hold finished,
        // and a session takes the delivery token (in flight, below) before that, so
        // whatever is read under the lock next already covers it. Read the other way
        // round, a record offered in between would be neither.
        let low = self.tracker.as_ref().and_then(|t| t.unoffered(partition));
        let inner = self.lock();
        let p = partition as usize;
        let c = inner.cursors.get(p)?;
        let own = c.cursor();
        let first_in_flight = c.first_in_flight();
        let live = inner.live_from.get(p).copied().flatten().is_some();
        let settled_live = live
            && !inner.detached
            && c.reading.is_none()
            && inner.parked.get(p).is_some_and(Option::is_none);
        drop(inner);
        match &self.tracker {
            Some(_) if settled_live => low.map(|low| first_in_flight.map_or(low, |f| f.min(low))),
            Some(_) if live => low.map(|low| own.min(low)),
            _ => Some(own),
        }
    }

    /// Where `partition` goes back to catch-up when the live notification of `offset`
    /// did not go out: lower offsets whose sessions have not offered them yet must be
    /// read too (see [`SubState::cursor`]).
    fn fall_back_point(&self, partition: i32, offset: i64) -> i64 {
        self.tracker
            .as_ref()
            .and_then(|t| t.unoffered(partition))
            .map_or(offset, |low| low.min(offset))
    }

    /// Saves every partition's cursor again. An acknowledgement saves its partition's
    /// cursor, but one capped then (an offset was not yet offered) only moves on when
    /// something calls this: the engine does every second and when the subscription
    /// ends.
    pub fn save_cursors(&self) {
        let partitions = self.lock().cursors.len();
        for p in 0..partitions as i32 {
            self.save_cursor(p);
        }
    }

    /// A newer connection of this identity is about to store a new position (an
    /// explicit `start_from`, a new institution set): this one must not advance the
    /// stored cursors past it with its own, older progress.
    pub fn supersede(&self, superseded: bool) {
        self.superseded
            .store(superseded, std::sync::atomic::Ordering::SeqCst);
    }

    fn save_cursor(&self, partition: i32) {
        if self.superseded.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let (Some(key), Some(store)) = (&self.key, &self.cursors) else {
            return;
        };
        match self.cursor(partition) {
            Some(pos) => store.advance(key, partition, pos),
            // Live where ingest has consumed nothing yet (or revoked): the stored
            // cursor stays, but the attached id is still in use.
            None => store.in_use(key, partition),
        }
    }

    /// Takes `partition` off the live path (under the subscription's lock, so no
    /// later notification is offered meanwhile): the reader serves it again from the
    /// lowest offset that may not have gone out, which also caps the cursor until the
    /// partition is live again. The command to the reader is sent under the lock too,
    /// so the reader sees it before it can ask to go live again. Returns what was
    /// parked, to release once the lock is dropped.
    fn fall_back(&self, inner: &mut Inner, partition: i32, offset: i64) -> Vec<Outbound> {
        let p = partition as usize;
        let parked = inner.parked[p].take().unwrap_or_default();
        let was_live = inner.live_from[p].take().is_some();
        let first = parked
            .first()
            .map_or(offset, |i| i.notification.source_offset.min(offset));
        let from = self.fall_back_point(partition, first);
        let c = &mut inner.cursors[p];
        c.reading = Some(c.reading.map_or(from, |r| r.min(from)));
        if let Some(reader) = &self.reader {
            // Every fall-back is reported: the reader keeps the lowest start.
            let _ = reader.send(ReaderCommand::CatchUp { partition, from });
        }
        if was_live {
            metrics::counter!(crate::telemetry::metric::SUBSCRIBER_CATCHUPS_TOTAL).increment(1);
            tracing::info!(subscriber = %self.name, partition, offset = from, "subscriber behind; serving it from Kafka");
        }
        parked
    }

    /// `partition` is being revoked from this replica (see
    /// the hub's `partitions_revoking`): a durable subscription served live
    /// on it is served by its reader again. Ephemeral ones are left to the caller.
    pub fn revoked(&self, partition: i32) {
        if self.reader.is_none() {
            return;
        }
        let mut inner = self.lock();
        let p = partition as usize;
        if inner.live_from.get(p).copied().flatten().is_none() {
            return;
        }
        // Everything below ingest's lowest unoffered offset is queued, in flight or
        // acknowledged (or not for this subscriber): read on from there, not from
        // the cursor, which would deliver all of that again. Without ingest's
        // position (nothing consumed in this assignment), from the cursor.
        let from = self
            .tracker
            .as_ref()
            .and_then(|t| t.unoffered(partition))
            .unwrap_or_else(|| inner.cursors[p].cursor());
        let parked = self.fall_back(&mut inner, partition, from);
        drop(inner);
        for item in parked {
            item.token.release(Release::SubscriberGone);
        }
    }

    /// The queue refused the notification of (`partition`, `offset`) because it is
    /// full. A durable subscription falls back to catch-up on that partition; an
    /// ephemeral one is disconnected.
    fn overflowed(&self, partition: i32, offset: i64) {
        if self.reader.is_none() {
            metrics::counter!(crate::telemetry::metric::GRPC_SUBSCRIBER_OVERFLOWS_TOTAL)
                .increment(1);
            self.queue.kick(EndReason::TooSlow);
            return;
        }
        let mut inner = self.lock();
        if partition as usize >= inner.live_from.len() {
            return;
        }
        let parked = self.fall_back(&mut inner, partition, offset);
        drop(inner);
        for item in parked {
            item.token.release(Release::SubscriberGone);
        }
    }
}

/// Releases a parked list found where none should be (a handover replaced before it
/// finished). Its notifications are read again by the reader, which serves the
/// partition from below them.
fn release_stale(stale: Option<Vec<Outbound>>) {
    let Some(stale) = stale else { return };
    if !stale.is_empty() {
        tracing::warn!(
            count = stale.len(),
            "parked notifications of a replaced handover released"
        );
    }
    for item in stale {
        item.token.release(Release::SubscriberGone);
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
                self.sub.gone(self.partition, self.offset);
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

/// The subscription's decisions without a broker: the cursor cap, parking and the
/// hand-over to live, the fall-back to catch-up, and what a released token does.
#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use mpn_proto::mpn::notify::v1 as pb;

    use super::*;

    /// Offsets the subscriber's queue received, in order.
    fn queued(rx: &mut mpsc::Receiver<Outbound>) -> Vec<i64> {
        let mut out = Vec::new();
        while let Ok(item) = rx.try_recv() {
            out.push(item.notification.source_offset);
            // Handed to the subscriber; the test acknowledges explicitly.
            std::mem::forget(item.token);
        }
        out
    }

    struct Sub {
        sub: Arc<SubState>,
        rx: mpsc::Receiver<Outbound>,
        reader: mpsc::UnboundedReceiver<ReaderCommand>,
        tracker: OffsetTracker,
    }

    /// A durable subscription of one partition starting at `start`, its queue
    /// holding `capacity`.
    fn durable(start: i64, capacity: usize) -> Sub {
        let (queue, rx) = SubscriberQueue::channel(capacity);
        let (tx, reader) = mpsc::unbounded_channel();
        let tracker = OffsetTracker::new();
        let base = SubBase {
            id: 1,
            name: "billing".into(),
            queue,
            institutions: HashSet::new(),
            remote_addr: None,
        };
        let key = SubscriberKey::new("20001", "billing", "b1").unwrap();
        let sub = Arc::new(SubState::durable_with(
            base,
            key,
            &[start],
            tx,
            None,
            tracker.clone(),
        ));
        Sub {
            sub,
            rx,
            reader,
            tracker,
        }
    }

    fn item(sub: &Arc<SubState>, offset: i64, hold: Option<Hold>) -> Outbound {
        Outbound::new(
            pb::Notification {
                notification_id: format!("n{offset}"),
                source_partition: 0,
                source_offset: offset,
                ..Default::default()
            },
            sub.token(0, offset, hold),
        )
    }

    /// A token that records how it was released.
    struct Probe(Arc<StdMutex<Vec<Release>>>);
    impl DeliveryToken for Probe {
        fn release(self: Box<Self>, how: Release) {
            self.0.lock().unwrap().push(how);
        }
    }

    #[test]
    fn the_cursor_waits_for_the_lowest_unacknowledged_offset() {
        let s = durable(10, 16);
        let tokens: Vec<_> = (10..13).map(|o| s.sub.token(0, o, None)).collect();
        let mut tokens = tokens.into_iter();
        let (t10, t11, t12) = (
            tokens.next().unwrap(),
            tokens.next().unwrap(),
            tokens.next().unwrap(),
        );
        s.sub.scanned(0, 13);
        assert_eq!(s.sub.cursor(0), Some(10), "nothing acknowledged yet");
        t11.release(Release::Acked);
        assert_eq!(s.sub.cursor(0), Some(10), "10 is still in flight");
        t10.release(Release::Acked);
        assert_eq!(s.sub.cursor(0), Some(12));
        // Gone without an acknowledgement while the subscription goes on: it stays
        // below the cursor (redelivered from there).
        t12.release(Release::SubscriberGone);
        assert_eq!(s.sub.cursor(0), Some(12));
    }

    #[test]
    fn a_live_cursor_never_passes_what_ingest_has_not_offered() {
        let s = durable(0, 16);
        let h20 = s.tracker.register(0, 20);
        let h21 = s.tracker.register(0, 21);
        s.sub.go_live(0, 20);
        // 21's session has offered it and the subscriber acknowledged it; 20's
        // session has not run yet.
        let t21 = s.sub.token(0, 21, Some(h21.fork()));
        h21.complete();
        t21.release(Release::Acked);
        assert_eq!(
            s.sub.cursor(0),
            Some(20),
            "capped by ingest's lowest unoffered"
        );
        h20.complete();
        assert_eq!(
            s.sub.cursor(0),
            Some(22),
            "everything offered and nothing in flight: the cursor follows ingest"
        );
    }

    /// The ingest loop's answer to a reader asking to go live.
    fn ask(s: &Sub, position: i64) -> LiveFrom {
        let (reply, mut answer) = oneshot::channel();
        grant(
            &s.tracker,
            GoLive {
                sub: s.sub.clone(),
                partition: 0,
                position,
                reply,
            },
        );
        answer.try_recv().expect("answered at once")
    }

    #[test]
    fn the_hand_over_to_live_is_decided_by_where_ingest_is() {
        let s = durable(0, 16);
        assert_eq!(ask(&s, 5), LiveFrom::NotHere, "not consumed here");
        assert!(!s.sub.live_on(0));
        for o in 0..10 {
            s.tracker.register(0, o).complete();
        }
        // Ingest has consumed up to 9: a reader at 12 is ahead, so live from 12.
        assert_eq!(ask(&s, 12), LiveFrom::Now);
        assert!(s.sub.is_live(0, 12) && !s.sub.is_live(0, 11));
        // A reader behind ingest goes live from ingest's edge, parking meanwhile.
        let s = durable(0, 16);
        for o in 0..10 {
            s.tracker.register(0, o).complete();
        }
        assert_eq!(ask(&s, 4), LiveFrom::After(10));
        assert!(s.sub.is_live(0, 10) && !s.sub.is_live(0, 9));
        assert!(
            matches!(s.sub.take_parked(0), Handover::Live),
            "nothing parked yet: the reader finishes the hand-over at once"
        );
    }

    #[test]
    fn parked_notifications_go_first_and_in_order_then_the_partition_is_live() {
        let mut s = durable(0, 16);
        s.sub.go_live_parked(0, 30);
        for o in [30, 31] {
            s.sub.offer_live(0, item(&s.sub, o, None));
        }
        assert!(
            queued(&mut s.rx).is_empty(),
            "parked until the reader catches up"
        );
        let Handover::Parked(parked) = s.sub.take_parked(0) else {
            panic!("expected the parked notifications")
        };
        let offsets: Vec<i64> = parked
            .iter()
            .map(|i| i.notification.source_offset)
            .collect();
        assert_eq!(offsets, [30, 31]);
        // Parked while the reader queued those: still before anything later.
        s.sub.offer_live(0, item(&s.sub, 32, None));
        let Handover::Parked(more) = s.sub.take_parked(0) else {
            panic!("expected the one parked meanwhile")
        };
        assert_eq!(more.len(), 1);
        assert!(matches!(s.sub.take_parked(0), Handover::Live));
        s.sub.offer_live(0, item(&s.sub, 33, None));
        assert_eq!(
            queued(&mut s.rx),
            [33],
            "plainly live: straight to the queue"
        );
        assert!(s.reader.try_recv().is_err(), "no fall-back");
        std::mem::forget(parked);
        std::mem::forget(more);
    }

    #[test]
    fn too_much_parked_calls_the_handover_off_and_the_reader_serves_it_again() {
        let mut s = durable(0, 2);
        s.sub.go_live_parked(0, 40);
        let released = Arc::new(StdMutex::new(Vec::new()));
        for o in 40..43 {
            s.sub.offer_live(
                0,
                Outbound::new(
                    pb::Notification {
                        source_offset: o,
                        ..Default::default()
                    },
                    Box::new(Probe(released.clone())),
                ),
            );
        }
        assert_eq!(
            s.reader.try_recv().unwrap(),
            ReaderCommand::CatchUp {
                partition: 0,
                from: 40
            },
            "read again from the first parked one"
        );
        assert_eq!(*released.lock().unwrap(), [Release::SubscriberGone; 3]);
        assert!(matches!(s.sub.take_parked(0), Handover::CalledOff));
        assert!(!s.sub.live_on(0));
        assert!(queued(&mut s.rx).is_empty());
    }

    #[test]
    fn a_full_queue_sends_a_durable_partition_back_to_catch_up_from_what_did_not_fit() {
        let mut s = durable(0, 1);
        s.sub.go_live(0, 50);
        s.sub.offer_live(0, item(&s.sub, 50, None));
        s.sub.offer_live(0, item(&s.sub, 51, None));
        assert_eq!(
            s.reader.try_recv().unwrap(),
            ReaderCommand::CatchUp {
                partition: 0,
                from: 51
            }
        );
        assert!(!s.sub.is_live(0, 52), "served by the reader now");
        // The cursor stays at or below what the reader has read.
        assert!(s.sub.cursor(0).unwrap() <= 50);
        assert_eq!(queued(&mut s.rx), [50]);
    }

    #[tokio::test]
    async fn a_full_queue_ends_an_ephemeral_subscription_as_too_slow() {
        let (queue, _rx) = SubscriberQueue::channel(1);
        let sub = Arc::new(SubState::ephemeral(
            SubBase {
                id: 2,
                name: "live".into(),
                queue: queue.clone(),
                institutions: HashSet::new(),
                remote_addr: None,
            },
            1,
        ));
        sub.offer_live(0, item(&sub, 1, None));
        sub.offer_live(0, item(&sub, 2, None));
        assert_eq!(queue.kicked().await, EndReason::TooSlow);
    }

    #[test]
    fn a_token_released_while_its_partition_is_read_again_no_longer_pins_the_cursor() {
        let mut s = durable(0, 1);
        s.sub.go_live(0, 60);
        let t60 = s.sub.token(0, 60, None);
        // The queue overflows at 61: the partition is read again from 61 on.
        s.sub.offer_live(0, item(&s.sub, 61, None));
        s.sub.offer_live(0, item(&s.sub, 62, None));
        assert!(s.reader.try_recv().is_ok());
        s.sub.scanned(0, 61);
        assert_eq!(s.sub.cursor(0), Some(60), "60 is in flight");
        t60.release(Release::Acked);
        assert_eq!(
            s.sub.cursor(0),
            Some(61),
            "then the reader's position caps it"
        );
        queued(&mut s.rx);
    }

    /// The session's one-lock offer does what the live check, the token and the
    /// offer did in a row: nothing below `live_from` (no token, no cursor hold),
    /// parked during a hand-over, queued when live, back to catch-up when full.
    #[test]
    fn the_sessions_offer_matches_the_three_step_offer() {
        let mut s = durable(0, 1);
        let tracker = s.tracker.clone();
        let offer = |sub: &Arc<SubState>, offset: i64| {
            let hold = tracker.register(0, offset);
            let mut shared = None;
            sub.offer_event(0, offset, &hold, &mut shared, || {
                pb::Notification {
                    source_offset: offset,
                    ..Default::default()
                }
                .into()
            });
            let built = shared.is_some();
            hold.complete();
            built
        };
        // Not live: nothing is built or held.
        assert!(!offer(&s.sub, 5));
        assert_eq!(s.sub.lock().cursors[0].first_in_flight(), None);
        // Live from 10, a hand-over pending: parked, the cursor held at 10.
        s.sub.go_live_parked(0, 10);
        assert!(offer(&s.sub, 10));
        assert_eq!(s.sub.lock().cursors[0].first_in_flight(), Some(10));
        assert!(queued(&mut s.rx).is_empty());
        let Handover::Parked(parked) = s.sub.take_parked(0) else {
            panic!("parked");
        };
        assert_eq!(parked.len(), 1);
        for p in parked {
            s.sub.queue.offer(p).unwrap();
        }
        assert!(matches!(s.sub.take_parked(0), Handover::Live));
        assert_eq!(queued(&mut s.rx), [10]);
        // Plainly live: queued; then the queue is full and 12 goes back to catch-up.
        assert!(offer(&s.sub, 11));
        assert!(offer(&s.sub, 12));
        assert_eq!(
            s.reader.try_recv().unwrap(),
            ReaderCommand::CatchUp {
                partition: 0,
                from: 12
            }
        );
        assert_eq!(queued(&mut s.rx), [11]);
    }

    /// An acknowledgement of many releases its tokens as one run: the cursor ends
    /// where releasing them one by one puts it, whatever their order in the run.
    #[test]
    fn a_run_of_acknowledgements_moves_the_cursor_as_one_by_one_does() {
        for order in [vec![10, 11, 12, 13], vec![13, 11, 10, 12]] {
            let one = durable(10, 16);
            let run = durable(10, 16);
            for s in [&one, &run] {
                s.sub.scanned(0, 14);
            }
            let tokens =
                |s: &Sub| -> Vec<_> { order.iter().map(|&o| s.sub.token(0, o, None)).collect() };
            for t in tokens(&one) {
                t.release(Release::Acked);
            }
            mpn_delivery::release_all(tokens(&run), Release::Acked);
            assert_eq!(one.sub.cursor(0), Some(14));
            assert_eq!(run.sub.cursor(0), one.sub.cursor(0), "order {order:?}");
            assert_eq!(run.sub.lock().cursors[0].first_in_flight(), None);
        }
        // A run that leaves 10 unacknowledged keeps the cursor there.
        let s = durable(10, 16);
        s.sub.scanned(0, 14);
        let t10 = s.sub.token(0, 10, None);
        let rest: Vec<_> = (11..14).map(|o| s.sub.token(0, o, None)).collect();
        mpn_delivery::release_all(rest, Release::Acked);
        assert_eq!(s.sub.cursor(0), Some(10));
        t10.release(Release::Acked);
        assert_eq!(s.sub.cursor(0), Some(14));
    }
}
