//! Durable subscribers: resume from the cursor after a disconnect and after an engine
//! restart, fall back to catch-up when slow, start from earliest, and get
//! OUT_OF_RANGE when their cursor has left the topic's retention.

use std::collections::HashSet;
use std::time::Duration;

use mpn_proto::mpn::notify::v1 as pb;
use mpn_sim::subscriber::Subscriber;
use tonic::Code;

use crate::support::*;

async fn durable(
    engine: &mpn_engine::Engine,
    code: &str,
    id: &str,
    start: pb::StartFrom,
) -> Subscriber {
    Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(code, "billing"),
        &[],
        id,
        start,
    )
    .await
    .expect("durable subscribe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscriber_resumes_after_a_disconnect_without_gap_or_repeat() {
    let code = inst(71);
    let h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    // Never seen before: starts from now.
    let mut s = durable(&engine, &code, "erp-1", pb::StartFrom::Cursor).await;
    h.publish_all(
        &(0..50)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let first = receive_unacked(&mut s, 50, Duration::from_secs(20)).await;
    assert_eq!(
        first.iter().map(serial).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    s.ack(first[29].seq).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(s);
    // Published while it is away.
    h.publish_all(
        &(50..100)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;

    let mut s = durable(&engine, &code, "erp-1", pb::StartFrom::Cursor).await;
    let resumed = receive(&mut s, 70, Duration::from_secs(30)).await;
    assert_eq!(
        resumed.iter().map(serial).collect::<Vec<_>>(),
        (30..100).collect::<Vec<_>>()
    );
    assert_eq!(
        resumed[0].notification_id, first[30].notification_id,
        "same ids on redelivery"
    );
    // And it is live again.
    h.publish_all(
        &(100..110)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let live = receive(&mut s, 10, Duration::from_secs(20)).await;
    assert_eq!(
        live.iter().map(serial).collect::<Vec<_>>(),
        (100..110).collect::<Vec<_>>()
    );
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;
    engine.shutdown().await;
}

/// Under steady traffic ingest is always a little ahead of a catch-up reader. The
/// handover parks live notifications at ingest's position while the reader queues
/// the records below it, so a resuming subscriber goes live while traffic keeps
/// flowing (instead of being served from Kafka for as long as it flows), with no
/// gap, repeat or reordering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resuming_subscriber_goes_live_while_traffic_keeps_flowing() {
    metrics();
    let code = inst(74);
    let h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    drop(durable(&engine, &code, "erp", pb::StartFrom::Now).await);
    let backlog: Vec<Rec> = (0..100).map(|n| Rec::proto(&payment(&code, n))).collect();
    h.publish_all(&backlog).await;
    // Ingest is past the backlog before the subscriber resumes (on a loaded machine
    // it may lag, and the subscription would go live below the backlog instead).
    eventually(
        "ingest consumed the backlog",
        Duration::from_secs(30),
        || async { counter("mpn_ingest_records_total") >= 100 },
    )
    .await;
    let total = 700;

    let mut s = durable(&engine, &code, "erp", pb::StartFrom::Cursor).await;
    let publish = async {
        // About 200 events a second for 3 s while the subscriber resumes.
        for n in 100..total {
            h.publish_all(&[Rec::proto(&payment(&code, n))]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let read = async {
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while order.len() < total as usize {
            let m = tokio::time::timeout_at(deadline, s.next())
                .await
                .expect("in time")
                .unwrap()
                .unwrap();
            s.ack(m.seq).await.unwrap();
            assert!(seen.insert(m.notification_id.clone()), "no repeat");
            order.push(serial(&m));
        }
        order
    };
    let ((), order) = tokio::join!(publish, read);
    assert_eq!(order, (0..total).collect::<Vec<_>>());
    let from_kafka = counter("mpn_catchup_notifications_total");
    eprintln!("{from_kafka} of {total} notifications came from the catch-up reader");
    assert!(
        (100..400).contains(&from_kafka),
        "the backlog is read from Kafka, then the subscription goes live: {from_kafka} of {total} from the reader"
    );
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;
    engine.shutdown().await;
}

/// Each institution's session runs on its own, so a subscriber of two institutions
/// may receive (and acknowledge) offset 2 before offset 1 has been offered. Its
/// cursor must not pass offset 1 then: a subscriber that leaves at that moment
/// resumes below it and still gets offset 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_ahead_of_an_unoffered_offset_does_not_move_the_cursor_past_it() {
    let (slow, fast) = (inst(75), inst(76));
    let grants = vec![slow.clone(), fast.clone()];
    let mut h = Harness::new(1, vec![credential(&slow, "billing", &grants)]);
    // The slow institution's session panics once on its event and retries it after
    // this back-off: its offset 1 is offered well after the fast one's offset 2.
    h.config.sessions.backoff_initial = Duration::from_millis(1_500);
    h.config.sessions.backoff_max = Duration::from_millis(1_500);
    let (hook_code, once) = (slow.clone(), std::sync::atomic::AtomicBool::new(false));
    mpn_engine::test_hooks::panic_if(move |e| {
        e.institution.as_str() == hook_code && !once.swap(true, std::sync::atomic::Ordering::SeqCst)
    });
    let engine = h.start().await;
    engine.open_ingest();
    drop(durable(&engine, &slow, "erp", pb::StartFrom::Now).await);
    let mut s = durable(&engine, &slow, "erp", pb::StartFrom::Cursor).await;
    // Offset 0, then time for the reader to hand the partition to the live path.
    h.publish_all(&[Rec::proto(&payment(&fast, 0))]).await;
    receive(&mut s, 1, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    h.publish_all(&[
        Rec::proto(&payment(&slow, 1)),
        Rec::proto(&payment(&fast, 2)),
    ])
    .await;
    let first = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(
        first[0].institution_code, fast,
        "offset 2 overtakes offset 1"
    );
    assert_eq!(first[0].source_offset, 2);
    // Acknowledged (receive acks); give the acknowledgement time to land, then leave
    // before offset 1 is offered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s);

    let mut s = durable(&engine, &slow, "erp", pb::StartFrom::Cursor).await;
    let (got, _) = receive_distinct(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(
        got[0].source_offset, 1,
        "offset 1 comes back first (it was lost before)"
    );
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cursor_survives_an_engine_restart() {
    let code = inst(72);
    let h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "erp-1", pb::StartFrom::Cursor).await;
    h.publish_all(
        &(0..40)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let got = receive(&mut s, 20, Duration::from_secs(20)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.shutdown().await;
    drop(s);

    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "erp-1", pb::StartFrom::Cursor).await;
    h.publish_all(
        &(40..45)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let (got, repeats) = receive_distinct(&mut s, 25, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (20..45).collect::<Vec<_>>()
    );
    assert_eq!(repeats, 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_durable_subscriber_is_served_from_kafka_and_misses_nothing() {
    let code = inst(73);
    let mut h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    h.config.grpc.queue_capacity = 8;
    h.config.grpc.ack_window = 4;
    let engine = h.start().await;
    engine.open_ingest();
    let mut slow = durable(&engine, &code, "slow", pb::StartFrom::Now).await;
    let mut fast = durable(&engine, &code, "fast", pb::StartFrom::Now).await;
    let records: Vec<Rec> = (0..300).map(|n| Rec::proto(&payment(&code, n))).collect();
    h.publish_all(&records).await;
    // A burst of 300 against a queue of 8: both fall back to catch-up as needed.
    let (fast_got, _) = receive_distinct(&mut fast, 300, Duration::from_secs(30)).await;
    assert_eq!(
        fast_got.iter().map(serial).collect::<Vec<_>>(),
        (0..300).collect::<Vec<_>>()
    );
    // The slow one, reading with pauses, still gets everything in order.
    let mut seen = HashSet::new();
    let mut order = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while order.len() < 300 {
        let m = tokio::time::timeout_at(deadline, slow.next())
            .await
            .expect("in time")
            .unwrap()
            .unwrap();
        if order.len() % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        slow.ack(m.seq).await.unwrap();
        if seen.insert(m.notification_id.clone()) {
            order.push(serial(&m));
        }
    }
    assert_eq!(order, (0..300).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_earliest_replays_what_the_topic_holds() {
    let code = inst(74);
    let h = Harness::new(3, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    h.publish_all(
        &(0..30)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let tracker = engine.tracker().clone();
    eventually("everything consumed", Duration::from_secs(20), || {
        let t = tracker.clone();
        async move { t.in_flight() == 0 && (0..3).filter_map(|p| t.position(p)).sum::<i64>() == 30 }
    })
    .await;
    let mut s = durable(&engine, &code, "replay", pb::StartFrom::Earliest).await;
    let got = receive(&mut s, 30, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    h.publish_all(&[Rec::proto(&payment(&code, 30))]).await;
    let live = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&live[0]), 30);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_older_than_retention_is_out_of_range_with_the_earliest_position() {
    use tonic_types::StatusExt;
    let code = inst(75);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "old", pb::StartFrom::Cursor).await;
    h.publish_all(
        &(0..5)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    receive(&mut s, 5, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    engine.shutdown().await;
    drop(s);

    // While the engine is down, the mock broker's retention (5 MiB per partition)
    // drops the oldest records.
    let filler = vec![b'x'; 64 * 1024];
    let junk: Vec<Rec> = (0..120).map(|_| Rec::raw(&code, &filler, None)).collect();
    h.publish_all(&junk).await;

    let engine = h.start().await;
    let err = Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(&code, "billing"),
        &[],
        "old",
        pb::StartFrom::Cursor,
    )
    .await
    .expect_err("an expired cursor is refused");
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let info = err.get_details_error_info().expect("ErrorInfo details");
    assert_eq!(info.reason, "CURSOR_OUT_OF_RANGE");
    let earliest: i64 = info.metadata["partition-0"].parse().unwrap();
    assert!(
        earliest > 5,
        "the earliest available offset moved past the cursor: {earliest}"
    );
    engine.shutdown().await;
}

/// Start-up reads the cursor topic from the last snapshot, not from offset 0, and
/// still sees every cursor's latest value (written before or after the snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_reads_cursors_from_the_last_snapshot() {
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    let h = Harness::new(2, vec![]);
    let (stop_rx, _stop) = stop_on_drop();
    let a = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert_eq!(a.loaded_from(), 0, "no snapshot yet");
    let key = SubscriberKey::new("00200000", "login", "sub").unwrap();
    let other = SubscriberKey::new("00300000", "login", "sub").unwrap();
    for offset in 1..=50 {
        a.advance(&key, 0, offset);
        a.flush().await.unwrap();
    }
    a.set(&other, 1, 7);
    a.flush().await.unwrap();
    assert_eq!(a.snapshot(&h.config.kafka).await.unwrap(), 2);
    a.advance(&key, 0, 100);
    a.flush().await.unwrap();

    let b = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert!(
        b.loaded_from() > 50,
        "start-up skipped the history before the snapshot (read from {})",
        b.loaded_from()
    );
    assert_eq!(b.get(&key, 2), vec![Some(100), None]);
    assert_eq!(b.get(&other, 2), vec![None, Some(7)]);
}

/// A new `subscriber_id`'s first position ("now") is written to the cursor topic
/// before `Subscribed` is sent, and another replica reads the cursor topic up to date
/// before it takes an id for a new one. Cursor flushes are made rare here, so only
/// that first write can carry the position. Before the fix the second replica
/// started the id from its own, later "now": the five records published in between
/// were never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscribers_first_position_holds_on_another_replica_at_once() {
    let code = inst(77);
    let mut h = Harness::new(2, vec![credential(&code, "billing", &[])]);
    h.config.cursors.flush_interval = Duration::from_millis(60_000);
    let a = h.start().await;
    a.open_ingest();
    let b = h.start().await;
    b.open_ingest();
    let s = durable(&a, &code, "erp-new", pb::StartFrom::Cursor).await;
    drop(s);
    h.publish_all(
        &(0..5)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut s = durable(&b, &code, "erp-new", pb::StartFrom::Cursor).await;
    let got = receive(&mut s, 5, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>()
    );
    drop(s);
    b.shutdown().await;
    a.shutdown().await;
}

/// A live partition's cursor moves on with what ingest has offered, even when none
/// of it is for the subscriber: other institutions' records (here 120 × 64 KiB,
/// which the mock broker's 5 MiB retention per partition cannot all keep) push the
/// subscriber's last acknowledged position out of the topic, and it still resumes,
/// without a gap and without `OUT_OF_RANGE`. Before the fix the cursor stayed at the
/// last acknowledgement (5) and the reconnect was refused with `OUT_OF_RANGE`
/// although nothing had been missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_cursor_moves_past_other_institutions_records_and_survives_retention() {
    metrics();
    let code = inst(78);
    let other = inst(79);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "quiet", pb::StartFrom::Cursor).await;
    // Live first: a subscription still read from Kafka when the other records pour
    // in can fall out of the mock broker's tiny retention before it reads them.
    let mut n = 0;
    while counter("mpn_grpc_notifications_sent_total") <= counter("mpn_catchup_notifications_total")
        || n < 5
    {
        h.publish_all(&[Rec::proto(&payment(&code, n))]).await;
        receive(&mut s, 1, Duration::from_secs(20)).await;
        n += 1;
        assert!(n < 200, "the subscription never went live");
    }
    let filler = vec![b'x'; 64 * 1024];
    let junk: Vec<Rec> = (0..120).map(|_| Rec::raw(&other, &filler, None)).collect();
    h.publish_all(&junk).await;
    // Observed from outside, as another replica would: the stored cursor moves past
    // the other institution's records although none was for this subscriber.
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    let (stop_rx, _stop) = stop_on_drop();
    let reader = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let key = SubscriberKey::new(&code, "billing", "quiet").unwrap();
    eventually(
        "the cursor moved past the other institution's records",
        Duration::from_secs(30),
        || {
            let c = reader.get(&key, 1)[0];
            async move { c >= Some(i64::from(n) + 120) }
        },
    )
    .await;
    engine.shutdown().await;
    drop(s);

    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "quiet", pb::StartFrom::Cursor).await;
    h.publish_all(&[Rec::proto(&payment(&code, n))]).await;
    let got = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), n);
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;
    engine.shutdown().await;
}

/// Cursors are per partition, not per institution, so a durable subscriber that
/// comes back asking for another institution set (a wider subscribe, a grant added)
/// would skip the new institutions' records below its cursor. The set is stored with
/// the cursors, and a changed set is refused with `FAILED_PRECONDITION` unless the
/// subscriber chooses its start explicitly. Before the fix the wider subscription
/// was accepted and the other institution's earlier records silently skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_institution_set_needs_an_explicit_start() {
    let a = inst(80);
    let b = inst(81);
    let h = Harness::new(1, vec![credential(&a, "billing", &[a.clone(), b.clone()])]);
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let open = |institutions: Vec<String>, start: pb::StartFrom| {
        let addr = addr.clone();
        let l = login(&a, "billing");
        async move { Subscriber::durable(&addr, &l, &institutions, "erp", start).await }
    };
    let mut s = open(vec![a.clone()], pb::StartFrom::Cursor).await.unwrap();
    h.publish_all(&[Rec::proto(&payment(&b, 0)), Rec::proto(&payment(&a, 1))])
        .await;
    let got = receive(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 1);
    // Another worker with the same id and the same set replaces the first.
    let second = open(vec![a.clone()], pb::StartFrom::Cursor).await.unwrap();
    let status = closing_status(&mut s).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    drop(second);

    let err = open(vec![a.clone(), b.clone()], pb::StartFrom::Cursor)
        .await
        .expect_err("a wider set from the same cursor is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains(&format!("[{a}]")) && err.message().contains("start_from"),
        "{}",
        err.message()
    );
    let err = open(vec![b.clone()], pb::StartFrom::Cursor)
        .await
        .expect_err("another set from the same cursor is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // An explicit start accepts the new set, and it is kept from then on.
    let mut s = open(vec![a.clone(), b.clone()], pb::StartFrom::Earliest)
        .await
        .unwrap();
    let got = receive(&mut s, 2, Duration::from_secs(20)).await;
    assert_eq!(
        got.iter()
            .map(|n| (n.institution_code.clone(), serial(n)))
            .collect::<Vec<_>>(),
        vec![(b.clone(), 0), (a.clone(), 1)]
    );
    drop(s);
    let mut s = open(vec![b.clone(), a.clone()], pb::StartFrom::Cursor)
        .await
        .expect("the same set, in any order, resumes");
    h.publish_all(&[Rec::proto(&payment(&b, 2))]).await;
    // The last acknowledgement may not have reached the engine before the stream
    // closed: a redelivery of what came before is allowed, a gap is not.
    loop {
        let n = receive(&mut s, 1, Duration::from_secs(20)).await.remove(0);
        let seen = (n.institution_code.clone(), serial(&n));
        if seen == (b.clone(), 2) {
            break;
        }
        assert!(
            seen == (a.clone(), 1) || seen == (b.clone(), 0),
            "unexpected {seen:?}"
        );
    }
    drop(s);
    // A narrower set resumes (below the cursor everything of it was delivered);
    // widening again needs an explicit start.
    let narrower = open(vec![a.clone()], pb::StartFrom::Cursor)
        .await
        .expect("a subset of the stored set resumes");
    drop(narrower);
    let err = open(vec![a.clone(), b.clone()], pb::StartFrom::Cursor)
        .await
        .expect_err("widening again is refused");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    engine.shutdown().await;
}

/// The live cursor follows what ingest has offered only while the subscription is in
/// the registry: once detached, sessions no longer offer it anything, and a cursor
/// saved then (its reader, the shutdown save) must not pass records it never got.
/// Before the fix a detached subscription's cursor kept following ingest (here to
/// 20 although it was offered nothing past 10), and a reconnect from that cursor
/// skipped the records in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_subscriptions_cursor_stops_following_ingest() {
    use mpn_delivery::SubscriberQueue;
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    use mpn_engine::offsets::OffsetTracker;
    use mpn_engine::subscriptions::{SubBase, SubState};
    let h = Harness::new(1, vec![]);
    let (stop_rx, _stop) = stop_on_drop();
    let store = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let tracker = OffsetTracker::new();
    let (queue, _rx) = SubscriberQueue::channel(16);
    let (reader, _commands) = tokio::sync::mpsc::unbounded_channel();
    let key = SubscriberKey::new("00200000", "billing", "erp").unwrap();
    let sub = SubState::durable(
        SubBase {
            id: 1,
            name: "erp".into(),
            queue,
            institutions: Default::default(),
            remote_addr: None,
        },
        key,
        &[0],
        reader,
        store,
        tracker.clone(),
    );
    sub.go_live(0, 0);
    for o in 0..10 {
        tracker.register(0, o).complete();
    }
    assert_eq!(
        sub.cursor(0),
        Some(10),
        "a live cursor follows what was offered"
    );
    sub.detach();
    for o in 10..20 {
        tracker.register(0, o).complete();
    }
    let after = sub.cursor(0).unwrap();
    assert!(
        after <= 10,
        "nothing past the detach was offered to it, yet the cursor is at {after}"
    );
}

/// A durable subscriber that overflows its queue falls back to catch-up and, once it
/// has read and acknowledged everything, resumes after a restart exactly where it
/// left off: the notification that did not fit leaves no hold on the cursor behind.
/// Before the fix (found by review) the refused token was released before the
/// partition fell back, its hold on the cursor stayed, and the restart replayed from
/// the overflow on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflow_leaves_no_hold_on_the_cursor() {
    metrics();
    let code = inst(82);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.queue_capacity = 8;
    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "slow", pb::StartFrom::Cursor).await;
    // Live first: records flow until the subscription is served by the live path.
    let mut n = 0;
    while counter("mpn_grpc_notifications_sent_total") <= counter("mpn_catchup_notifications_total")
        || n < 5
    {
        h.publish_all(&[Rec::proto(&payment(&code, n))]).await;
        receive(&mut s, 1, Duration::from_secs(20)).await;
        n += 1;
        assert!(n < 200, "the subscription never went live");
    }
    // Then not read while 1,000 arrive: the HTTP/2 window fills, then the queue.
    h.publish_all(
        &(n..n + 1_000)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let tracker = engine.tracker().clone();
    eventually("every record offered", Duration::from_secs(30), || {
        let t = tracker.clone();
        async move { t.unoffered(0) == Some(i64::from(n) + 1_000) }
    })
    .await;
    let (got, _) = receive_distinct(&mut s, 1_000, Duration::from_secs(60)).await;
    assert_eq!(serial(&got[999]), n + 999);
    assert!(
        counter("mpn_subscriber_catchups_total") >= 1,
        "the queue overflowed and the partition fell back to catch-up"
    );
    h.publish_all(&[Rec::proto(&payment(&code, 5_000))]).await;
    let (got, _) = receive_distinct(&mut s, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 5_000);
    engine.shutdown().await;
    drop(s);

    let engine = h.start().await;
    engine.open_ingest();
    let mut s = durable(&engine, &code, "slow", pb::StartFrom::Cursor).await;
    h.publish_all(&[Rec::proto(&payment(&code, 5_001))]).await;
    // The last acknowledgement may not have reached the engine before it shut down,
    // so 5000 may come once more; nothing older may (the pin replayed from serial 13).
    let mut got = receive(&mut s, 1, Duration::from_secs(20)).await;
    if serial(&got[0]) == 5_000 {
        got = receive(&mut s, 1, Duration::from_secs(20)).await;
    }
    assert_eq!(
        serial(&got[0]),
        5_001,
        "resumed where it left off, no replay"
    );
    engine.shutdown().await;
}

/// A newer connection of a durable id that chooses its position explicitly (here a
/// rewind to the earliest record) while the older connection is still open is not
/// undone by the older one: that one stops writing cursors before the new position
/// is stored, so a reconnect after the newer one resumes from the rewind. Before the
/// fix (found by review) the older connection's final save moved the stored cursor
/// back past the rewind, and the next reconnect skipped what the rewind asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_does_not_undo_an_explicit_start() {
    let code = inst(83);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let mut first = durable(&engine, &code, "erp", pb::StartFrom::Cursor).await;
    h.publish_all(
        &(0..10)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    receive(&mut first, 10, Duration::from_secs(20)).await;
    // Rewind while the first connection is still open; it is replaced.
    let second = durable(&engine, &code, "erp", pb::StartFrom::Earliest).await;
    let status = closing_status(&mut first).await;
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    drop(first);
    drop(second);
    let mut third = durable(&engine, &code, "erp", pb::StartFrom::Cursor).await;
    let got = receive(&mut third, 1, Duration::from_secs(20)).await;
    assert_eq!(serial(&got[0]), 0, "resumes from the rewind");
    engine.shutdown().await;
}

/// When a second replica joins and takes one of the partitions, a durable subscriber
/// connected to the first replica is not cut off: its partitions go back to catch-up
/// at the revocation (from what it may have missed) and the one that moved is then
/// tailed from Kafka, so it keeps receiving both institutions, in order, without a
/// reconnect. Before the fix it was closed with UNAVAILABLE ("partitions moved").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_subscriber_stays_connected_when_a_partition_moves() {
    // Two institutions on different partitions of two.
    let codes: Vec<String> = (84..120).map(inst).collect();
    let a = codes
        .iter()
        .find(|c| mpn_kafka::partition::partition_for_key(c.as_bytes(), 2) == 0)
        .unwrap()
        .clone();
    let b = codes
        .iter()
        .find(|c| mpn_kafka::partition::partition_for_key(c.as_bytes(), 2) == 1)
        .unwrap()
        .clone();
    let h = Harness::new(2, vec![credential(&a, "billing", &[a.clone(), b.clone()])]);
    let first = h.start().await;
    first.open_ingest();
    let mut s = durable(&first, &a, "erp", pb::StartFrom::Cursor).await;
    let batch = |r: std::ops::Range<u32>| -> Vec<Rec> {
        r.flat_map(|n| [Rec::proto(&payment(&a, n)), Rec::proto(&payment(&b, n))])
            .collect()
    };
    h.publish_all(&batch(0..10)).await;
    // First arrivals, whatever is delivered again on the way.
    let mut seen = HashSet::new();
    let mut all = Vec::new();
    let mut take = async |s: &mut Subscriber, want: usize| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut new = 0;
        while new < want {
            let m = tokio::time::timeout_at(deadline, s.next())
                .await
                .expect("in time")
                .expect("the stream stays open")
                .expect("not ended");
            s.ack(m.seq).await.unwrap();
            if seen.insert(m.notification_id.clone()) {
                all.push((m.institution_code.clone(), serial(&m)));
                new += 1;
            }
        }
    };
    take(&mut s, 20).await;

    let second = h.start().await;
    second.open_ingest();
    let t2 = second.tracker().clone();
    let mut n = 10;
    // Traffic until the second replica consumes a partition of its own.
    while (0..2).all(|p| t2.consumed_next(p).is_none()) {
        h.publish_all(&batch(n..n + 1)).await;
        n += 1;
        assert!(n < 400, "the second replica never got a partition");
        take(&mut s, 2).await;
    }
    h.publish_all(&batch(n..n + 10)).await;
    take(&mut s, 20).await;
    for code in [&a, &b] {
        let serials: Vec<u32> = all
            .iter()
            .filter(|(c, _)| c == code)
            .map(|&(_, n)| n)
            .collect();
        assert_eq!(
            serials,
            (0..n + 10).collect::<Vec<_>>(),
            "{code}: every record, in order of first arrival"
        );
    }
    drop(s);
    second.shutdown().await;
    first.shutdown().await;
}
