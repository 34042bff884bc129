//! An engine stopped with unacknowledged notifications and started again on the same
//! broker delivers them again, with the same ids; acknowledged ones are not repeated.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_notifications_are_delivered_again_after_restart() {
    let code = inst(7);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let records: Vec<Rec> = (0..200).map(|n| Rec::proto(&payment(&code, n))).collect();

    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(&records).await;
    // Receive all 200 but acknowledge only the first 100.
    let mut first_run = Vec::new();
    while first_run.len() < 200 {
        let n = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        first_run.push(n);
    }
    s.ack(first_run[99].seq).await.unwrap();
    let tracker = engine.tracker().clone();
    eventually(
        "acks reach the offset tracker",
        Duration::from_secs(10),
        || {
            let t = tracker.clone();
            async move { t.position(0) == Some(100) }
        },
    )
    .await;
    engine.shutdown().await;
    drop(s);

    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let second_run = receive(&mut s, 100, Duration::from_secs(30)).await;
    let unacked: Vec<String> = first_run[100..]
        .iter()
        .map(|n| n.notification_id.clone())
        .collect();
    let again: Vec<String> = second_run
        .iter()
        .map(|n| n.notification_id.clone())
        .collect();
    assert_eq!(
        again, unacked,
        "exactly the unacknowledged ones, same ids, same order"
    );
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    engine.shutdown().await;
}

/// G8 past the drain deadline: what the sessions had not processed when the drain
/// handed its work back stays uncommitted even if a session processes it while the
/// streams close, and is delivered after the restart. Here the session is held until
/// every stream has closed and the committer is about to make its final commit, then
/// let go. Before the fix the session offered its backlog to nobody (the streams were
/// gone), finalised it, and the final commit moved past it: after the restart none
/// of the five came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_left_at_the_drain_deadline_is_delivered_after_restart() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let code = inst(8);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let paused = Arc::new(AtomicBool::new(true));
    let hook_code = code.clone();
    mpn_engine::test_hooks::pause_if(paused.clone(), move |e| e.institution.as_str() == hook_code);
    let engine = h.start().await;
    let s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(
        &(0..5)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let tracker = engine.tracker().clone();
    eventually("all five consumed", Duration::from_secs(20), || {
        let t = tracker.clone();
        async move { t.consumed_next(0) == Some(5) }
    })
    .await;
    let (hub, t, let_go) = (engine.hub().clone(), tracker.clone(), paused.clone());
    let hook_ran = Arc::new(AtomicBool::new(false));
    let ran = hook_ran.clone();
    mpn_engine::test_hooks::before_final_commit(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let wait = |done: &dyn Fn() -> bool| {
            while !done() {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            true
        };
        // Every stream has closed; then the session processes its backlog.
        if !wait(&|| hub.all().is_empty()) {
            return;
        }
        let_go.store(false, Ordering::Release);
        if wait(&|| t.unoffered(0) == Some(5)) {
            ran.store(true, Ordering::Release);
        }
    });
    engine.shutdown().await;
    assert!(
        hook_ran.load(Ordering::Acquire),
        "the streams closed and the session processed its backlog before the final commit"
    );
    drop(s);

    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let again = receive(&mut s, 5, Duration::from_secs(30)).await;
    assert_eq!(
        again.iter().map(serial).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>()
    );
    engine.shutdown().await;
}

/// Every task the engine spawned ends within the shutdown: stream tasks of attached
/// subscribers (one with unacknowledged notifications), a durable subscriber's
/// catch-up reader, dead-letter writes, the tickers and the cursor reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_subscribers_attached_leaves_no_task_running() {
    let code = inst(8);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let mut records: Vec<Rec> = (0..50).map(|n| Rec::proto(&payment(&code, n))).collect();
    records.push(Rec::raw(&code, b"not an event", None));

    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    let mut live = subscribe(&engine, &login(&code, "billing"), &[]).await;
    let mut durable = mpn_sim::subscriber::Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "keeper",
        mpn_proto::mpn::notify::v1::StartFrom::Earliest,
    )
    .await
    .unwrap();
    engine.open_ingest();
    h.publish_all(&records).await;
    // The durable one acknowledges everything, the live one the first 10 only.
    receive(&mut durable, 50, Duration::from_secs(30)).await;
    let mut got = Vec::new();
    while got.len() < 50 {
        let n = tokio::time::timeout(Duration::from_secs(30), live.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(n);
    }
    live.ack(got[9].seq).await.unwrap();

    let stopped = engine.shutdown().await;
    assert_eq!(stopped.tasks_left, 0, "{stopped:?}");
    assert!(!stopped.drained, "40 notifications were never acknowledged");
}
