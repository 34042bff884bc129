//! Rebalances move only what they must (item 8 of the "never lose a payment"
//! review).

use std::time::Duration;

use mpn_engine::Engine;

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
    metrics();
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

/// A partition that leaves this replica and comes back is consumed again from its
/// committed offset. What was offered before and never acknowledged is offered again
/// (here to the subscriber that reconnected after the move), and its offset waits for
/// the new delivery. Before the fix the sessions dropped the records as duplicates
/// and finalised them: the commit moved past notifications nobody had acknowledged
/// (after a crash no one would ever get them), and the reconnected subscriber never
/// received them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_assigned_back_offers_again_what_was_not_acknowledged() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let codes: Vec<String> = one_per_partition();
    let h = Harness::new(
        PARTITIONS as i32,
        vec![credential(&codes[0], "billing", &codes)],
    );
    let engine = h.start().await;
    engine.open_ingest();
    let l = login(&codes[0], "billing");
    settled(&h, &[&engine], &codes).await;
    let mut s = subscribe(&engine, &l, &[]).await;
    let records: Vec<Rec> = codes.iter().map(|c| Rec::proto(&payment(c, 1))).collect();
    h.publish_all(&records).await;
    // Received, never acknowledged.
    let got = serial_ones(&mut s, PARTITIONS).await;
    assert_eq!(got.len(), PARTITIONS);

    // Another member of the group takes some partitions, then leaves.
    let mut cfg = h.config.kafka.consumer();
    cfg.set("partition.assignment.strategy", "cooperative-sticky");
    let guest: BaseConsumer = cfg.create().unwrap();
    guest.subscribe(&[&h.config.kafka.input_topic]).unwrap();
    let (guest, taken) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let _ = guest.poll(Duration::from_millis(50));
            let taken: Vec<i32> = guest
                .assignment()
                .unwrap()
                .elements()
                .iter()
                .map(|e| e.partition())
                .collect();
            if !taken.is_empty() {
                return (guest, taken);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guest got nothing"
            );
        }
    })
    .await
    .unwrap();
    // The subscriber was live on what moved: cut off, it reconnects.
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(_)) = s.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the subscriber live on {taken:?} is cut off");
    let mut again = subscribe(&engine, &l, &[]).await;
    tokio::task::spawn_blocking(move || {
        guest.unsubscribe();
        drop(guest);
    })
    .await
    .unwrap();

    let back = serial_ones(&mut again, taken.len()).await;
    let mut institutions: Vec<String> = back.iter().map(|n| n.institution_code.clone()).collect();
    institutions.sort();
    let mut expected: Vec<String> = taken.iter().map(|&p| codes[p as usize].clone()).collect();
    expected.sort();
    assert_eq!(
        institutions, expected,
        "what moved and came back is offered again"
    );
    for &p in &taken {
        let offset = back
            .iter()
            .find(|n| n.institution_code == codes[p as usize])
            .map(|n| n.source_offset)
            .unwrap();
        assert!(
            engine.tracker().position(p).is_some_and(|c| c <= offset),
            "partition {p}: nothing is committed past the unacknowledged {offset}"
        );
    }
    drop((s, again));
    engine.shutdown().await;
}

/// The next `n` notifications of serial 1 (those of the settling rounds are skipped).
async fn serial_ones(
    s: &mut mpn_sim::subscriber::Subscriber,
    n: usize,
) -> Vec<mpn_proto::mpn::notify::v1::Notification> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} in 30 s", got.len()))
            .expect("the stream stays open")
            .expect("not ended");
        if serial(&m) == 1 {
            got.push(m);
        }
    }
    got
}
