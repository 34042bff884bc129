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
