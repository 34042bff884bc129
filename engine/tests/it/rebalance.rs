//! Rebalances move only what they must (item 8 of the "never lose a payment"
//! review).

use std::time::Duration;

use mpn_notify::Engine;

use crate::support::*;

const PARTITIONS: usize = 6;

/// One institution per partition of six.
fn one_per_partition() -> Vec<String> {
    (0..PARTITIONS as i32)
        .map(|p| {
            (0..)
                .map(inst)
                .find(|c| mpn_kafka::partition::partition_for_key(c.as_bytes(), PARTITIONS) == p)
                .unwrap()
        })
        .collect()
}

/// Which partitions each engine consumes, once every partition is consumed by
/// exactly one of them (a record published on each partition per round).
async fn settled(h: &Harness, engines: &[&Engine], codes: &[String]) -> Vec<Vec<i32>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut serial = 1_000;
    loop {
        let owned: Vec<Vec<i32>> = engines
            .iter()
            .map(|e| {
                (0..PARTITIONS as i32)
                    .filter(|&p| e.tracker().consumed_next(p).is_some())
                    .collect()
            })
            .collect();
        let each_once =
            (0..PARTITIONS as i32).all(|p| owned.iter().filter(|o| o.contains(&p)).count() == 1);
        if each_once && owned.iter().all(|o| !o.is_empty()) {
            return owned;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the group never settled: {owned:?}"
        );
        let round: Vec<Rec> = codes
            .iter()
            .map(|c| Rec::proto(&payment(c, serial)))
            .collect();
        h.publish_all(&round).await;
        serial += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas share six partitions; a third joins. Only the partitions it takes
/// are revoked: the others are consumed on, and their subscriptions (durable ones
/// stay live, ephemeral ones stay connected) see no rebalance at all. Before the fix
/// (the eager protocol) the third replica's arrival revoked all six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_replica_revokes_only_the_partitions_it_takes() {
    let codes = one_per_partition();
    let h = Harness::new(PARTITIONS as i32, vec![]);
    let first = h.start().await;
    first.open_ingest();
    let second = h.start().await;
    second.open_ingest();
    let before = settled(&h, &[&first, &second], &codes).await;
    let revoked_before = counter("mpn_ingest_partitions_revoked_total");

    let third = h.start().await;
    third.open_ingest();
    let after = settled(&h, &[&first, &second, &third], &codes).await;
    let moved: usize = after[2].len();
    let revoked = counter("mpn_ingest_partitions_revoked_total") - revoked_before;
    assert_eq!(
        revoked, moved as u64,
        "revoked {revoked} partitions for the {moved} that moved ({before:?} -> {after:?})"
    );
    for (kept, was) in after[..2].iter().zip(&before) {
        assert!(
            kept.iter().all(|p| was.contains(p)),
            "nothing moves between the first two: {before:?} -> {after:?}"
        );
    }
    third.shutdown().await;
    second.shutdown().await;
    first.shutdown().await;
}
