//! Ingest: the Kafka consumer loop and the offset committer.
//!
//! The consumer belongs to the engine's group with auto-commit and auto offset store
//! off. Every record is registered with the [`OffsetTracker`] before anything else
//! happens to it, then decoded and validated: invalid records go to the dead-letter
//! writer, valid ones to their institution's session. The committer commits, every
//! `commit_interval_ms`, each partition's lowest unfinished offset. On revocation the
//! finalised positions of the revoked partitions are committed and their tracking is
//! dropped, so the next owner resumes exactly there.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use mpn_kafka::headers;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol,
    StreamConsumer,
};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::runtime::Shutdown;

use crate::dlq::{DeadLetter, DeadLetters};
use crate::domain::{Event, Rejection, check_record};
use crate::offsets::{Hold, OffsetTracker};
use crate::records::check_partition;
use crate::session::{Ingested, Router};
use crate::subscriptions::Hub;
use crate::subscriptions::{GoLive, grant};

/// Consumer callbacks: commit and forget revoked partitions; close the live
/// subscriptions of partitions that really moved to another replica.
#[derive(Debug, Clone)]
pub(crate) struct IngestContext {
    pub tracker: OffsetTracker,
    pub topic: String,
    pub hub: Arc<Hub>,
    /// Partitions revoked and not (yet) assigned again, under the eager protocol
    /// (which revokes everything, so what was lost is only known at assignment). The
    /// engine asks for the cooperative one, which revokes only what moves.
    pub revoked: Arc<std::sync::Mutex<Vec<i32>>>,
    /// CAFIS links follow the ownership of their partition.
    pub links: Arc<crate::cafis::Links>,
    /// So do the history writers.
    pub history: Option<Arc<mpn_history::Writers>>,
    /// Partition -> the committed offset it was assigned at, until its first record
    /// shows the broker answered from there (see [`FirstFetch`]).
    pub first_fetch: Arc<std::sync::Mutex<FirstFetch>>,
    /// Whether any partition awaits its first-record check: read for every record
    /// without taking the lock (almost always false).
    pub first_fetch_armed: Arc<std::sync::atomic::AtomicBool>,
    /// The partition count this deployment runs on (pinned in the cursor topic).
    pub partitions: usize,
    /// Set to the first partition met at or past `partitions` (the topic grew).
    pub grown: Arc<watch::Sender<Option<i32>>>,
    /// `group_joined` is set at the first assignment.
    pub readiness: crate::health::Readiness,
}

/// A Kafka broker answers a fetch at offset `P` with the record batch that holds
/// `P`; Tansu 0.6 (memory storage) answers with the next batch, so a consumer that
/// starts at a committed offset inside a producer's batch would skip the rest of it
/// and commit past it. The first record of each assigned partition is checked: past
/// the committed offset, ingest seeks further back (doubling, down to the log start)
/// and skips what lies below the committed offset, until the broker's answer starts
/// at or before it.
#[derive(Debug, Default)]
pub(crate) struct FirstFetch {
    /// Partition -> (committed offset, how far back the current seek went, whether
    /// a record from before the committed offset came back since).
    expect: HashMap<i32, (i64, i64, bool)>,
}

impl ClientContext for IngestContext {}

impl ConsumerContext for IngestContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            commit_positions(consumer, &self.topic, &self.tracker, CommitMode::Sync);
            let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            // While the tracker still knows what was offered: durable subscriptions
            // go back to catch-up instead of being cut off.
            self.hub.partitions_revoking(&partitions);
            for &p in &partitions {
                self.tracker.revoke(p);
            }
            {
                let mut first = self.first_fetch.lock().unwrap_or_else(|p| p.into_inner());
                for p in &partitions {
                    first.expect.remove(p);
                }
            }
            tracing::info!(?partitions, "partitions revoked");
            metrics::counter!(crate::telemetry::metric::INGEST_PARTITIONS_REVOKED_TOTAL)
                .increment(partitions.len() as u64);
            // Before returning: the group cannot hand these partitions (and the links
            // they own) to another replica until this callback is done.
            self.links.partitions_revoked(&partitions);
            if let Some(h) = &self.history {
                h.partitions_revoked(&partitions);
            }
            if matches!(
                consumer.rebalance_protocol(),
                RebalanceProtocol::Cooperative
            ) {
                // Only partitions that move are revoked: they are lost now.
                self.hub.partitions_revoked(&partitions);
            } else {
                // Eager: everything is revoked; what moved is known at assignment.
                self.revoked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(partitions);
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.readiness.set(crate::health::Check::GroupJoined, true);
            // With the cooperative protocol `tpl` holds only the partitions added
            // now; the links and the moved-away check need the whole assignment.
            let added: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            let assigned: Option<Vec<i32>> = consumer
                .assignment()
                .ok()
                .map(|all| all.elements().iter().map(|e| e.partition()).collect());
            // Where consumption of each added partition starts: checked against the
            // first record (see `FirstFetch`).
            if let Ok(committed) =
                consumer.committed_offsets((*tpl).clone(), Duration::from_secs(5))
            {
                let mut first = self.first_fetch.lock().unwrap_or_else(|p| p.into_inner());
                for e in committed.elements() {
                    if let Offset::Offset(o) = e.offset() {
                        first.expect.insert(e.partition(), (o, 0, false));
                    }
                }
                self.first_fetch_armed.store(
                    !first.expect.is_empty(),
                    std::sync::atomic::Ordering::Release,
                );
                drop(first);
                // Where ingest starts on each: a durable subscription caught up on a
                // quiet partition goes live from there without waiting for a record.
                // Without a committed offset ingest starts at the log start
                // (`auto.offset.reset = earliest`), at or below any position a reader
                // can be at: 0 is as good a bound, and asks the broker nothing.
                for e in committed.elements() {
                    let start = match e.offset() {
                        Offset::Offset(o) => o,
                        _ => 0,
                    };
                    self.tracker.assigned(e.partition(), start);
                }
            }
            // The topic grew: refused before anything of those partitions is read.
            for &p in &added {
                if p as usize >= self.partitions {
                    refuse_grown_partition(consumer, &self.topic, p, &self.grown);
                }
            }
            let whole = assigned.as_deref().unwrap_or(&added);
            let lost: Vec<i32> =
                std::mem::take(&mut *self.revoked.lock().unwrap_or_else(|p| p.into_inner()))
                    .into_iter()
                    .filter(|p| !whole.contains(p))
                    .collect();
            tracing::info!(partitions = ?assigned, ?added, ?lost, "partitions assigned");
            match &assigned {
                Some(all) => {
                    self.links.partitions_assigned(all);
                    if let Some(h) = &self.history {
                        h.partitions_assigned(all);
                    }
                }
                // Links of partitions still held must not stop on a failed lookup.
                None => {
                    tracing::warn!("cannot read the consumer's assignment; CAFIS links unchanged")
                }
            }
            if !lost.is_empty() {
                self.hub.partitions_revoked(&lost);
            }
        }
    }
}

pub(crate) type EngineConsumer = StreamConsumer<IngestContext>;

/// Commits every partition position that moved. Returns how many were committed.
pub(crate) fn commit_positions<C: Consumer<IngestContext>>(
    consumer: &C,
    topic: &str,
    tracker: &OffsetTracker,
    mode: CommitMode,
) -> usize {
    let positions = tracker.take_commit_positions();
    if positions.is_empty() {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    for (p, o) in &positions {
        if let Err(e) = tpl.add_partition_offset(topic, *p, Offset::Offset(*o)) {
            tracing::error!(error = %e, "cannot build commit list");
            return 0;
        }
    }
    match consumer.commit(&tpl, mode) {
        Ok(()) => {
            metrics::counter!(crate::telemetry::metric::OFFSETS_COMMITS_TOTAL).increment(1);
            for (p, o) in &positions {
                metrics::gauge!(crate::telemetry::metric::OFFSETS_COMMITTED, "partition" => p.to_string())
                    .set(*o as f64);
            }
            positions.len()
        }
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; the next commit will carry it");
            tracker.retry_commit(&positions);
            0
        }
    }
}

/// `partitions`: the partition count to check keys against, `None` to not check.
fn read_record(m: &BorrowedMessage<'_>, partitions: Option<usize>) -> Result<Event, Rejection> {
    let event = check_record(
        header(m, headers::CONTENT_TYPE),
        m.key(),
        m.payload().unwrap_or_default(),
    )?;
    if let Some(n) = partitions {
        check_partition(m.key(), m.partition(), n)?;
    }
    Ok(event)
}

fn header<'a>(m: &'a BorrowedMessage<'_>, name: &str) -> Option<&'a [u8]> {
    m.headers()?
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| h.value)
}

fn dead_letter(m: &BorrowedMessage<'_>, rejection: Rejection, hold: Hold) -> DeadLetter {
    DeadLetter {
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().unwrap_or_default().to_vec(),
        content_type: header(m, headers::CONTENT_TYPE).map(<[u8]>::to_vec),
        kind: rejection.kind.as_str(),
        field: rejection.field,
        message: rejection.message,
        partition: m.partition(),
        offset: m.offset(),
        hold: hold.into(),
    }
}

/// What the consumer loop needs to know of the input topic and its limits.
#[derive(Debug)]
pub(crate) struct Shape {
    /// Records consumed and not finalised, at most.
    pub max_in_flight: usize,
    /// The input topic's partition count (the key → partition rule).
    pub partitions: usize,
    /// Whether keyed records are checked against the murmur2 rule.
    pub check_partitions: bool,
}

/// The consumer loop. Runs until `shutdown`.
pub(crate) async fn run(
    consumer: Arc<EngineConsumer>,
    mut router: Router,
    dead_letters: DeadLetters,
    tracker: OffsetTracker,
    Shape {
        max_in_flight,
        partitions,
        check_partitions,
    }: Shape,
    mut go_live: mpsc::Receiver<GoLive>,
    shutdown: Shutdown,
) {
    let mut sweep = tokio::time::interval(router.sweep_interval());
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.triggered() => break,
            Some(req) = go_live.recv() => {
                grant(&tracker, req);
                continue;
            }
            // Also while in-flight work is at its cap: the sessions gauge is reported
            // from here.
            _ = sweep.tick() => {
                router.evict_idle();
                continue;
            }
            _ = tracker.wait_below(max_in_flight) => {}
        }
        let m = tokio::select! {
            biased;
            _ = shutdown.triggered() => break,
            Some(req) = go_live.recv() => {
                grant(&tracker, req);
                continue;
            }
            _ = sweep.tick() => {
                router.evict_idle();
                continue;
            }
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                metrics::counter!(crate::telemetry::metric::INGEST_ERRORS_TOTAL).increment(1);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // A batch: this record and those the consumer already holds, without a
        // wake-up each (bounded, and within the in-flight cap); go-live requests,
        // the sweep and shutdown are looked at between batches.
        let mut ingest = |m: &BorrowedMessage<'_>| {
            u64::from(ingest_record(
                &consumer,
                &mut router,
                &dead_letters,
                &tracker,
                partitions,
                check_partitions,
                m,
            ))
        };
        let mut consumed = ingest(&m);
        drop(m);
        // Every record taken counts towards the batch, skipped ones too.
        let mut taken = 1;
        while taken < INGEST_BATCH && tracker.in_flight() < max_in_flight {
            match consumer.recv().now_or_never() {
                Some(Ok(m)) => {
                    taken += 1;
                    consumed += ingest(&m);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    metrics::counter!(crate::telemetry::metric::INGEST_ERRORS_TOTAL).increment(1);
                    break;
                }
                None => break,
            }
        }
        metrics::counter!(crate::telemetry::metric::INGEST_RECORDS_TOTAL).increment(consumed);
    }
    tracing::info!(sessions = router.len(), "ingest stopped");
}

/// Records taken from the consumer per turn of the ingest loop, at most.
const INGEST_BATCH: u64 = 256;

/// Registers one consumed record and routes it to its session (or dead-letters it);
/// `false` when it is skipped (see the checks).
fn ingest_record(
    consumer: &Arc<EngineConsumer>,
    router: &mut Router,
    dead_letters: &DeadLetters,
    tracker: &OffsetTracker,
    partitions: usize,
    check_partitions: bool,
    m: &BorrowedMessage<'_>,
) -> bool {
    let (partition, offset) = (m.partition(), m.offset());
    if partition as usize >= partitions {
        // The topic grew under us. Nothing of the partition is consumed or
        // committed: its records stay in the topic; the engine stops (see
        // `Engine::failed`).
        let context = consumer.context();
        refuse_grown_partition(consumer.as_ref(), &context.topic, partition, &context.grown);
        return false;
    }
    if consumer.context().grown.borrow().is_some() {
        // Producers use the new count now: records on the old partitions may be
        // on another partition than their key's under the count this engine runs
        // on. Nothing more is consumed; the engine drains and stops.
        return false;
    }
    if !first_fetch_ok(consumer, partition, offset) {
        return false;
    }
    let hold = tracker.register(partition, offset);
    match read_record(m, check_partitions.then_some(partitions)) {
        Ok(event) => router.route(Ingested {
            event,
            partition,
            offset,
            hold,
            reinjected: crate::records::reinjected(m),
        }),
        Err(rejection) => dead_letters.send(dead_letter(m, rejection, hold)),
    }
    true
}

fn refuse_grown_partition<C: Consumer<IngestContext>>(
    consumer: &C,
    topic: &str,
    partition: i32,
    grown: &watch::Sender<Option<i32>>,
) {
    // Nothing more is read at all: producers on the new count may put records on
    // partitions the pinned count calls wrong.
    let mut tpl = consumer.assignment().unwrap_or_default();
    if tpl.find_partition(topic, partition).is_none() {
        tpl.add_partition(topic, partition);
    }
    if let Err(e) = consumer.pause(&tpl) {
        tracing::warn!(partition, error = %e, "cannot pause the input topic's partitions");
    }
    grown.send_if_modified(|g| {
        if g.is_none() {
            tracing::error!(
                partition,
                "a record on a partition past the count this deployment runs on: the input topic grew; stopping"
            );
            metrics::counter!(crate::telemetry::metric::INGEST_GROWN_PARTITIONS_TOTAL).increment(1);
            *g = Some(partition);
            true
        } else {
            false
        }
    });
}

/// The first-record check of [`FirstFetch`]: `false` when this record is to be
/// skipped (below the committed offset, or the partition was just sought back).
fn first_fetch_ok(consumer: &EngineConsumer, partition: i32, offset: i64) -> bool {
    use std::sync::atomic::Ordering;
    let context = consumer.context();
    if !context.first_fetch_armed.load(Ordering::Acquire) {
        return true;
    }
    let ok = check_first_fetch(consumer, partition, offset);
    let first = context
        .first_fetch
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    context
        .first_fetch_armed
        .store(!first.expect.is_empty(), Ordering::Release);
    ok
}

fn check_first_fetch(consumer: &EngineConsumer, partition: i32, offset: i64) -> bool {
    const MAX_REWIND: i64 = 1 << 16;
    let context = consumer.context();
    let mut first = context
        .first_fetch
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let Some(&(from, step, verified)) = first.expect.get(&partition) else {
        return true;
    };
    if offset < from {
        // Read back from an earlier start: finalised already, skip it. The broker
        // answers from where it was asked, so what follows is whole.
        first.expect.insert(partition, (from, step, true));
        return false;
    }
    if offset == from || verified {
        // (Past it after a verified start: a real gap, such as a transaction marker.)
        first.expect.remove(&partition);
        return true;
    }
    let low = consumer
        .fetch_watermarks(&context.topic, partition, Duration::from_secs(5))
        .map_or(from, |(low, _)| low);
    if from <= low || step >= MAX_REWIND {
        if from > low {
            metrics::counter!(crate::telemetry::metric::INGEST_FETCH_GAPS_TOTAL).increment(1);
            tracing::warn!(
                partition,
                asked = from,
                got = offset,
                "the broker answered a fetch with later records than asked and no earlier start helps; consuming on"
            );
        }
        first.expect.remove(&partition);
        return true;
    }
    let step = (step * 2).max(8);
    let back = (from - step).max(low);
    first.expect.insert(partition, (from, step, false));
    drop(first);
    metrics::counter!(crate::telemetry::metric::INGEST_FETCH_REWINDS_TOTAL).increment(1);
    tracing::info!(
        partition,
        asked = from,
        got = offset,
        seek = back,
        "consumption started past the committed offset; seeking back"
    );
    if let Err(e) = consumer.seek(
        &context.topic,
        partition,
        Offset::Offset(back),
        Duration::from_secs(5),
    ) {
        tracing::warn!(partition, error = %e, "cannot seek back; consuming on");
        context
            .first_fetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expect
            .remove(&partition);
        return true;
    }
    false
}

/// How often each replica reads the input topic's partition count.
const GROWTH_CHECK: Duration = Duration::from_secs(10);

/// Reads the input topic's partition count; past the count this deployment runs on,
/// the topic grew: nothing more is consumed and the engine stops.
fn check_partition_count(consumer: &EngineConsumer) {
    let context = consumer.context();
    if context.grown.borrow().is_some() {
        return;
    }
    let Ok(md) = consumer.fetch_metadata(Some(&context.topic), Duration::from_secs(5)) else {
        return;
    };
    let count = md
        .topics()
        .iter()
        .find(|t| t.name() == context.topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len());
    if count > context.partitions {
        refuse_grown_partition(
            consumer,
            &context.topic,
            context.partitions as i32,
            &context.grown,
        );
    }
}

/// Commits finalised positions every `interval` until `shutdown`, then once more.
pub(crate) async fn run_committer(
    consumer: Arc<EngineConsumer>,
    topic: String,
    tracker: OffsetTracker,
    interval: Duration,
    shutdown: Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Every replica watches the partition count itself: the group may give a new
    // partition to another member, while producers already use the new count.
    let mut watch = tokio::time::interval(GROWTH_CHECK);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.triggered() => break,
            _ = tick.tick() => {
                commit_positions(consumer.as_ref(), &topic, &tracker, CommitMode::Async);
                metrics::gauge!(crate::telemetry::metric::INGEST_IN_FLIGHT).set(tracker.in_flight() as f64);
            }
            _ = watch.tick() => {
                // Not awaited: a slow metadata answer must not hold commits up.
                let c = consumer.clone();
                drop(shutdown.spawn_blocking(move || check_partition_count(&c)));
            }
        }
    }
    let c = consumer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::final_commit();
        commit_positions(c.as_ref(), &topic, &tracker, CommitMode::Sync)
    })
    .await;
}
