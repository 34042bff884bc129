//! Per-partition offset tracking: the engine commits, for each partition, the lowest
//! offset that is not yet finalised, so a crash at any moment redelivers everything
//! that was not finished and nothing is lost.
//!
//! Every consumed record gets a [`Hold`]. The hold is forked for every party that must
//! finish with the record (each subscriber it is queued to, the dead-letter producer)
//! and each fork is *explicitly* completed. When every fork has completed, the offset
//! is finalised. A fork that is dropped without completing (a bug, or a shutdown that
//! hands work back) *abandons* the offset: it is never finalised in this process, the
//! commit point stops below it, and the record is redelivered after a restart. The
//! failure mode of a mistake is therefore a duplicate, never a loss.
//!
//! The hold [`OffsetTracker::register`] returns is the *base* hold, which the
//! consumer of the routed record (the institution's session, or the dead-letter
//! writer) finishes once it has offered the record to everyone it offers it to. Until
//! then the record is *unoffered*: [`OffsetTracker::unoffered`] is how far a
//! subscriber's cursor may go on a live partition.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// What the tracker knows about one partition.
#[derive(Debug, Default)]
struct PartitionState {
    /// Bumped when the partition is (re)assigned, so late completions from an earlier
    /// assignment are ignored.
    generation: u64,
    /// Offsets consumed but not finalised.
    pending: BTreeSet<i64>,
    /// Offsets consumed whose base hold is not finished yet (not yet offered).
    unoffered: BTreeSet<i64>,
    /// One past the highest offset consumed.
    next: Option<i64>,
    /// One past the highest offset consumed in any assignment of this process: a
    /// partition assigned again is consumed again from its committed offset; the
    /// sessions offer those records again to whoever is live on them (ephemeral
    /// subscribers), while durable subscriptions go live only past this.
    high: Option<i64>,
    /// The last position handed to the committer.
    committed: Option<i64>,
    /// Where consumption of this assignment starts (its committed offset, or the log
    /// start), known before anything is consumed: a quiet partition can go live.
    assigned_at: Option<i64>,
}

impl PartitionState {
    /// The offset to commit: everything below it is finalised.
    fn position(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

#[derive(Debug, Default)]
struct Inner {
    partitions: HashMap<i32, PartitionState>,
    in_flight: usize,
    /// Set when a drain hands its unfinished work back (see [`OffsetTracker::seal`]).
    sealed: bool,
}

/// The shared tracker. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct OffsetTracker {
    inner: Arc<Mutex<Inner>>,
    released: Arc<Notify>,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent (every update
        // is a single insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking `offset` of `partition` and returns its hold.
    pub fn register(&self, partition: i32, offset: i64) -> Hold {
        let mut inner = self.lock();
        let p = inner.partitions.entry(partition).or_default();
        let mut generation = p.generation;
        if p.pending.insert(offset) {
            p.unoffered.insert(offset);
            p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
            inner.in_flight += 1;
        } else {
            // Consumed again while its first copy is pending (a consumer reset within
            // one assignment): this copy's hold belongs to no assignment, so it
            // neither finalises the offset nor marks it offered; the first copy's do.
            generation = NO_GENERATION;
        }
        drop(inner);
        Hold {
            shared: Arc::new(HoldShared {
                tracker: self.clone(),
                partition,
                offset,
                generation,
                state: AtomicU8::new(HOLD_OK),
            }),
            completed: false,
            base: true,
        }
    }

    fn offered(&self, partition: i32, offset: i64, generation: u64) {
        let mut inner = self.lock();
        if let Some(p) = inner.partitions.get_mut(&partition)
            && p.generation == generation
        {
            p.unoffered.remove(&offset);
        }
    }

    /// The lowest offset of `partition` not yet offered to the subscribers (one past
    /// the last consumed when all were): no notification of a lower offset can still
    /// reach a live subscription.
    pub fn unoffered(&self, partition: i32) -> Option<i64> {
        self.lock()
            .partitions
            .get(&partition)
            .and_then(|p| p.unoffered.first().copied().or(p.next))
    }

    fn finalise(&self, partition: i32, offset: i64, generation: u64) {
        let mut inner = self.lock();
        if inner.sealed {
            return;
        }
        let Some(p) = inner.partitions.get_mut(&partition) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        if p.pending.remove(&offset) {
            inner.in_flight -= 1;
            drop(inner);
            self.released.notify_waiters();
        }
    }

    /// Ends finalisation in this process: what is unfinished now stays unfinished
    /// (uncommitted, redelivered after the restart), whatever completes later. Called
    /// when a drain's deadline has passed: sessions may still be working through their
    /// mailboxes against subscribers that have been detached, and those records must
    /// not be committed as if they had been delivered.
    pub fn seal(&self) {
        self.lock().sealed = true;
    }

    /// Records consumed but not yet finalised, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Waits until fewer than `limit` records are in flight.
    pub async fn wait_below(&self, limit: usize) {
        loop {
            let notified = self.released.notified();
            if self.in_flight() < limit {
                return;
            }
            notified.await;
        }
    }

    /// Positions that moved since the last call: `(partition, offset to commit)`.
    pub fn take_commit_positions(&self) -> Vec<(i32, i64)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        for (&partition, p) in inner.partitions.iter_mut() {
            if let Some(pos) = p.position()
                && p.committed.is_none_or(|c| pos > c)
            {
                p.committed = Some(pos);
                out.push((partition, pos));
            }
        }
        out.sort_unstable();
        out
    }

    /// Marks positions whose commit failed as uncommitted, so they are sent again.
    pub fn retry_commit(&self, positions: &[(i32, i64)]) {
        let mut inner = self.lock();
        for (partition, pos) in positions {
            if let Some(p) = inner.partitions.get_mut(partition)
                && p.committed == Some(*pos)
            {
                p.committed = None;
            }
        }
    }

    /// One past the highest offset of `partition` consumed in the current assignment.
    pub fn consumed_next(&self, partition: i32) -> Option<i64> {
        self.lock().partitions.get(&partition).and_then(|p| p.next)
    }

    /// Where the live path starts delivering new records of `partition`: one past
    /// the highest offset consumed in the current assignment, or in an earlier one if
    /// that was higher (what lies below was already offered once, and the sessions
    /// drop it as duplicates when it is consumed again). `None` when the partition
    /// is not consumed here.
    pub fn live_edge(&self, partition: i32) -> Option<i64> {
        self.lock()
            .partitions
            .get(&partition)
            .and_then(|p| p.next.or(p.assigned_at).map(|n| n.max(p.high.unwrap_or(n))))
    }

    /// `partition` was assigned and ingest consumes it from `start`: until its first
    /// record, the live path starts there ([`Self::live_edge`]).
    pub fn assigned(&self, partition: i32, start: i64) {
        let mut inner = self.lock();
        let p = inner.partitions.entry(partition).or_default();
        if p.next.is_none() {
            p.assigned_at = Some(start);
        }
    }

    /// Per partition consumed here: the next offset ingest will consume (one past
    /// the highest consumed, or where the assignment starts before its first
    /// record). What consumer lag is measured from.
    pub fn consumption_positions(&self) -> Vec<(i32, i64)> {
        self.lock()
            .partitions
            .iter()
            .filter_map(|(&p, s)| s.next.or(s.assigned_at).map(|n| (p, n)))
            .collect()
    }

    /// The last position handed to the committer, per partition this replica holds.
    pub fn committed_positions(&self) -> Vec<(i32, i64)> {
        self.lock()
            .partitions
            .iter()
            .filter_map(|(&p, s)| s.committed.map(|c| (p, c)))
            .collect()
    }

    /// The current commit position of a partition (for tests and the admin view).
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.lock()
            .partitions
            .get(&partition)
            .and_then(PartitionState::position)
    }

    /// Forgets a partition that was revoked: its pending records belong to whoever
    /// gets it next (they resume from the committed offset), and late completions of
    /// this assignment are ignored.
    pub fn revoke(&self, partition: i32) {
        let mut inner = self.lock();
        if let Some(p) = inner.partitions.get_mut(&partition) {
            let dropped = p.pending.len();
            let generation = p.generation + 1;
            *p = PartitionState {
                generation,
                high: p.high.max(p.next),
                ..Default::default()
            };
            inner.in_flight -= dropped;
            drop(inner);
            self.released.notify_waiters();
        }
    }
}

/// The generation of a hold that must not finalise anything (see `register`).
const NO_GENERATION: u64 = u64::MAX;

const HOLD_OK: u8 = 0;
/// Handed back on purpose (shutdown): not finalised, redelivered after restart.
const HOLD_HANDED_BACK: u8 = 1;
/// Dropped without completion: not finalised; logged, because it is a bug.
const HOLD_LEAKED: u8 = 2;

#[derive(Debug)]
struct HoldShared {
    tracker: OffsetTracker,
    partition: i32,
    offset: i64,
    generation: u64,
    state: AtomicU8,
}

impl Drop for HoldShared {
    fn drop(&mut self) {
        match self.state.load(Ordering::Acquire) {
            HOLD_OK => self
                .tracker
                .finalise(self.partition, self.offset, self.generation),
            HOLD_HANDED_BACK => {}
            _ => {
                metrics::counter!(crate::telemetry::metric::OFFSET_HOLDS_LEAKED_TOTAL).increment(1);
                tracing::error!(
                    partition = self.partition,
                    offset = self.offset,
                    "a delivery hold was dropped without completion; the offset stays uncommitted and will be redelivered after restart"
                );
            }
        }
    }
}

/// One party's claim on a consumed record. Complete it with [`Hold::complete`] when
/// that party is done; the offset is finalised once every fork is complete.
#[derive(Debug)]
#[must_use = "a hold must be completed or handed back, or its offset is never committed"]
pub struct Hold {
    shared: Arc<HoldShared>,
    completed: bool,
    /// The hold `register` returned (see the module docs); forks are not.
    base: bool,
}

impl Hold {
    /// The assignment of its partition the record was consumed in (bumped at every
    /// revocation): the same offset in another generation was consumed again.
    pub fn generation(&self) -> u64 {
        self.shared.generation
    }

    /// A copy of a record consumed again while its first copy is pending (see
    /// [`OffsetTracker::register`]): dropped, never offered.
    pub fn is_copy(&self) -> bool {
        self.shared.generation == NO_GENERATION
    }

    /// Another claim on the same record, for one more party.
    pub fn fork(&self) -> Hold {
        Hold {
            shared: self.shared.clone(),
            completed: false,
            base: false,
        }
    }

    /// This party is done with the record.
    pub fn complete(mut self) {
        self.completed = true;
    }

    /// Gives the record back without finishing it (graceful shutdown): its offset is
    /// not committed by this process, so it is delivered again after a restart.
    pub fn hand_back(mut self) {
        let _ = self.shared.state.compare_exchange(
            HOLD_OK,
            HOLD_HANDED_BACK,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.completed = true;
    }

    pub fn partition(&self) -> i32 {
        self.shared.partition
    }

    pub fn offset(&self) -> i64 {
        self.shared.offset
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        // A base hold dropped unfinished (its session had gone) was never offered.
        if self.base && self.completed {
            let s = &self.shared;
            s.tracker.offered(s.partition, s.offset, s.generation);
        }
        if !self.completed {
            self.shared.state.store(HOLD_LEAKED, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_lowest_unfinished_offset() {
        let t = OffsetTracker::new();
        let a = t.register(0, 10);
        let b = t.register(0, 11);
        let c = t.register(0, 12);
        assert_eq!(t.position(0), Some(10));
        b.complete();
        assert_eq!(
            t.position(0),
            Some(10),
            "an earlier offset is still pending"
        );
        a.complete();
        assert_eq!(t.position(0), Some(12));
        c.complete();
        assert_eq!(t.position(0), Some(13));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn a_record_is_offered_once_its_base_hold_is_done_whatever_its_forks() {
        let t = OffsetTracker::new();
        let a = t.register(1, 5);
        let b = t.register(1, 6);
        let delivery = b.fork();
        assert_eq!(t.unoffered(1), Some(5));
        b.complete();
        assert_eq!(t.unoffered(1), Some(5), "offset 5 is not offered yet");
        a.complete();
        assert_eq!(
            t.unoffered(1),
            Some(7),
            "6 is offered; its delivery may wait"
        );
        assert_eq!(t.position(1), Some(6), "but not finalised");
        delivery.complete();
        assert_eq!(t.position(1), Some(7));
    }

    #[test]
    fn the_live_edge_survives_a_revocation() {
        let t = OffsetTracker::new();
        for o in 0..10 {
            t.register(2, o).complete();
        }
        assert_eq!(t.live_edge(2), Some(10));
        t.revoke(2);
        assert_eq!(t.live_edge(2), None, "not consumed until assigned again");
        t.register(2, 4).complete();
        assert_eq!(t.consumed_next(2), Some(5));
        assert_eq!(t.live_edge(2), Some(10), "4..10 were already offered once");
    }

    #[test]
    fn every_fork_must_complete() {
        let t = OffsetTracker::new();
        let h = t.register(3, 0);
        let f1 = h.fork();
        let f2 = h.fork();
        h.complete();
        f1.complete();
        assert_eq!(t.position(3), Some(0));
        f2.complete();
        assert_eq!(t.position(3), Some(1));
    }

    #[test]
    fn leaked_or_handed_back_holds_are_never_finalised() {
        let t = OffsetTracker::new();
        let leaked = t.register(0, 0);
        let back = t.register(1, 0);
        drop(leaked);
        back.hand_back();
        assert_eq!(t.position(0), Some(0));
        assert_eq!(t.position(1), Some(0));
        assert_eq!(t.in_flight(), 2);
    }

    #[test]
    fn a_handed_back_fork_stops_the_others_from_finalising() {
        let t = OffsetTracker::new();
        let h = t.register(0, 5);
        let f = h.fork();
        f.hand_back();
        h.complete();
        assert_eq!(t.position(0), Some(5));
    }

    #[test]
    fn commit_positions_are_reported_once_per_move() {
        let t = OffsetTracker::new();
        t.register(0, 0).complete();
        t.register(1, 7).complete();
        assert_eq!(t.take_commit_positions(), vec![(0, 1), (1, 8)]);
        assert!(t.take_commit_positions().is_empty());
        t.register(0, 1).complete();
        assert_eq!(t.take_commit_positions(), vec![(0, 2)]);
    }

    #[test]
    fn revoked_partition_ignores_late_completions() {
        let t = OffsetTracker::new();
        let h = t.register(0, 4);
        t.revoke(0);
        assert_eq!(t.in_flight(), 0);
        let fresh = t.register(0, 4);
        h.complete();
        assert_eq!(
            t.position(0),
            Some(4),
            "the old assignment's completion is ignored"
        );
        fresh.complete();
        assert_eq!(t.position(0), Some(5));
    }

    #[test]
    fn nothing_is_finalised_after_the_seal() {
        let t = OffsetTracker::new();
        t.register(0, 0).complete();
        let late = t.register(0, 1);
        t.register(0, 2).complete();
        t.seal();
        late.complete();
        t.register(0, 3).complete();
        assert_eq!(
            t.position(0),
            Some(1),
            "completions after the seal are not finalised"
        );
    }

    /// An offset consumed again while its first copy is still pending (a consumer
    /// reset within one assignment) gets a hold that finalises nothing: the session
    /// drops the copy as a duplicate at once, while the first copy's delivery may
    /// still be unacknowledged. Found by review: before, completing the copy
    /// finalised the offset and the commit passed the unacknowledged record.
    #[test]
    fn a_copy_of_a_pending_offset_does_not_finalise_it() {
        let t = OffsetTracker::new();
        let first = t.register(0, 5);
        // Offered, and out to a subscriber that has not acknowledged it.
        let delivery = first.fork();
        first.complete();
        let copy = t.register(0, 5);
        copy.complete();
        assert_eq!(t.position(0), Some(5), "still pending for its first copy");
        assert_eq!(t.unoffered(0), Some(6), "and not unoffered again");
        delivery.complete();
        assert_eq!(t.position(0), Some(6));
    }

    #[tokio::test]
    async fn wait_below_wakes_on_release() {
        let t = OffsetTracker::new();
        let h = t.register(0, 0);
        let t2 = t.clone();
        let waiter = tokio::spawn(async move { t2.wait_below(1).await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        h.complete();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
