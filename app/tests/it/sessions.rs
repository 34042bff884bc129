//! Session supervision: a panicking session restarts with back-off and keeps
//! delivering while every other institution flows on; an event that keeps making it
//! panic is dead-lettered once the restart budget is spent.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use mpn_engine::domain::Event;
use mpn_kafka::headers;
use mpn_proto::mpn::v1 as pb;
use prost::Message as _;

use crate::support::*;

fn restarts_of(code: &str) -> u64 {
    counter_with("mpn_session_restarts_total", "institution", code)
}

fn is(event: &Event, code: &str, serial: u32) -> bool {
    event.institution.as_str() == code && event.transaction_key.serial() == format!("{serial:08}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_session_restarts_and_others_keep_flowing() {
    metrics();
    let codes: Vec<String> = (100..150).map(inst).collect();
    let x = codes[0].clone();
    let panicked = Arc::new(AtomicBool::new(false));
    let (hook_code, flag) = (x.clone(), panicked.clone());
    mpn_engine::test_hooks::panic_if(move |e| {
        is(e, &hook_code, 10) && !flag.swap(true, Ordering::SeqCst)
    });

    let mut h = Harness::new(4, vec![credential(&x, "vendor", &codes)]);
    // Long enough that everything published after the panic can be seen to flow
    // past the restarting session.
    h.config.sessions.backoff_initial = Duration::from_millis(4_000);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&x, "vendor"), &[]).await;
    engine.open_ingest();
    let rounds = |r: std::ops::Range<u32>| -> Vec<Rec> {
        r.flat_map(|round| codes.iter().map(move |c| Rec::proto(&payment(c, round))))
            .collect()
    };
    h.publish_all(&rounds(0..11)).await;
    let flag = panicked.clone();
    eventually(
        "the session panics on X#10",
        Duration::from_secs(30),
        || {
            let f = flag.clone();
            async move { f.load(Ordering::SeqCst) }
        },
    )
    .await;
    h.publish_all(&rounds(11..20)).await;
    let got = receive(&mut s, 1_000, Duration::from_secs(60)).await;
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;

    let x_serials: Vec<u32> = got
        .iter()
        .filter(|n| n.institution_code == x)
        .map(serial)
        .collect();
    assert_eq!(
        x_serials,
        (0..20).collect::<Vec<_>>(),
        "X delivers everything, in order, once"
    );
    let retried_at = got
        .iter()
        .position(|m| m.institution_code == x && serial(m) == 10)
        .unwrap();
    // Everything the 49 others received after the panic arrived before X's retry.
    for m in got
        .iter()
        .filter(|m| m.institution_code != x && serial(m) >= 11)
    {
        let at = got
            .iter()
            .position(|n| n.notification_id == m.notification_id)
            .unwrap();
        assert!(
            at < retried_at,
            "{} waited for the restarting session",
            m.notification_id
        );
    }
    assert_eq!(restarts_of(&x), 1);
    assert_eq!(restarts_of(&codes[1]), 0);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_keeps_panicking_is_dead_lettered_after_the_budget() {
    metrics();
    let (y, z) = (inst(200), inst(201));
    let hook_code = y.clone();
    mpn_engine::test_hooks::panic_if(move |e| is(e, &hook_code, 5));

    let mut h = Harness::new(1, vec![credential(&y, "vendor", &[y.clone(), z.clone()])]);
    h.config.sessions.restart_budget = 2;
    h.config.sessions.backoff_initial = Duration::from_millis(20);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&y, "vendor"), &[]).await;
    engine.open_ingest();
    let mut records = Vec::new();
    for n in 0..10 {
        records.push(Rec::proto(&payment(&y, n)));
        records.push(Rec::proto(&payment(&z, n)));
    }
    h.publish_all(&records).await;
    let got = receive(&mut s, 19, Duration::from_secs(30)).await;
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;
    let ys: Vec<u32> = got
        .iter()
        .filter(|n| n.institution_code == y)
        .map(serial)
        .collect();
    assert_eq!(ys, vec![0, 1, 2, 3, 4, 6, 7, 8, 9]);
    assert_eq!(got.iter().filter(|n| n.institution_code == z).count(), 10);

    let letters = h.dead_letters(1).await;
    let l = &letters[0];
    assert_eq!(l.header(headers::ERROR_KIND), "session_panic");
    assert_eq!(
        l.header(headers::SOURCE_OFFSET),
        "10",
        "y#5 is the 11th record"
    );
    assert!(
        l.header(headers::ERROR_MESSAGE).contains("injected panic"),
        "{:?}",
        l.headers
    );
    let event = pb::PaymentEvent::decode(l.payload.as_slice()).unwrap();
    assert_eq!(event.transaction_key, payment(&y, 5).transaction_key);
    assert_eq!(restarts_of(&y), 3, "budget 2: the third panic dead-letters");

    let tracker = engine.tracker().clone();
    eventually("every offset finalised", Duration::from_secs(10), || {
        let t = tracker.clone();
        async move { t.position(0) == Some(20) }
    })
    .await;
    engine.shutdown().await;
}

/// A session that got no event for `sessions.idle_evict_after_ms` is stopped and its
/// memory freed; the institution's next event starts a new one and is delivered, in
/// order with the rest. A session still retrying an event after a panic is not idle,
/// however long ago its last event came: stopping it would let a successor deliver
/// later events before the ones queued behind the retry (found by review). Before
/// the fix sessions were never stopped: one per institution ever seen, each with its
/// dedupe window, for the life of the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_stopped_and_the_next_event_starts_a_new_one() {
    metrics();
    let (quiet, busy) = (inst(130), inst(131));
    let mut h = Harness::new(
        2,
        vec![credential(
            &quiet,
            "billing",
            &[quiet.clone(), busy.clone()],
        )],
    );
    h.config.sessions.backoff_initial = Duration::from_millis(50);
    h.config.sessions.backoff_max = Duration::from_millis(50);
    // Restarts fall out of the window before the budget is spent: retried for ever.
    h.config.sessions.restart_window = Duration::from_millis(20);
    h.config.sessions.idle_evict_after = Duration::from_millis(300);
    let failing = Arc::new(AtomicBool::new(true));
    let tries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (hook_code, hook_failing, hook_tries) = (quiet.clone(), failing.clone(), tries.clone());
    mpn_engine::test_hooks::panic_if(move |e| {
        let hit = is(e, &hook_code, 1) && hook_failing.load(Ordering::SeqCst);
        if hit {
            hook_tries.fetch_add(1, Ordering::SeqCst);
        }
        hit
    });
    let engine = h.start().await;
    engine.open_ingest();
    let mut s = subscribe(&engine, &login(&quiet, "billing"), &[]).await;
    let evicted = || counter_with("mpn_sessions_evicted_total", "institution", &quiet);
    h.publish_all(&[
        Rec::proto(&payment(&quiet, 1)),
        Rec::proto(&payment(&quiet, 2)),
    ])
    .await;
    // Retried well past the idle limit, while the busy institution flows.
    let mut n = 0;
    while tries.load(Ordering::SeqCst) < 12 {
        h.publish_all(&[Rec::proto(&payment(&busy, n))]).await;
        n += 1;
        assert!(n < 400, "the panicking event is not retried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(evicted(), 0, "a session retrying an event is not idle");
    failing.store(false, Ordering::SeqCst);
    let mine = |got: Vec<mpn_proto::mpn::notify::v1::Notification>| -> Vec<u32> {
        got.iter()
            .filter(|m| m.institution_code == quiet)
            .map(serial)
            .collect()
    };
    let (got, _) = receive_distinct(&mut s, 2 + n as usize, Duration::from_secs(20)).await;
    assert_eq!(mine(got), vec![1, 2]);
    // Now idle: stopped (the busy institution's session may or may not be, between
    // two of its events).
    let from = n;
    while evicted() == 0 {
        h.publish_all(&[Rec::proto(&payment(&busy, n))]).await;
        n += 1;
        assert!(n < 800, "the quiet session was never stopped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.publish_all(&[
        Rec::proto(&payment(&quiet, 3)),
        Rec::proto(&payment(&quiet, 4)),
    ])
    .await;
    let (got, _) = receive_distinct(&mut s, (n - from) as usize + 2, Duration::from_secs(20)).await;
    assert_eq!(
        mine(got),
        vec![3, 4],
        "a new session serves the next events, in order"
    );
    drop(s);
    engine.shutdown().await;
}
