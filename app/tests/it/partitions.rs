//! The input topic's partition count is fixed for a deployment (item 5 of the
//! "never lose a payment" review): cursors, CAFIS sequence numbers and CAFIS link
//! owners are all computed from it.

use mpn_engine::cursors::CursorStore;
use mpn_engine::{Engine, IngestStart};

use crate::support::*;

/// The first start records the count in the cursor topic, a snapshot carries the
/// record on, and a start on another count (the topic grew between two runs) is
/// refused with an error that names the topic, both counts and the procedure. Before
/// the fix the engine started on the grown topic: the new partitions had no cursors
/// and the CAFIS sequences of every notice after the restart changed meaning (a host
/// that remembered the old ones answered `P006`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_on_another_partition_count_is_refused_with_the_procedure() {
    let h = Harness::new(4, vec![]);
    let engine = h.start().await;
    engine.shutdown().await;
    let topic = h.config.kafka.input_topic.clone();
    let (stop_rx, _stop) = stop_on_drop();
    let store = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert_eq!(
        store.pinned_partitions(&topic),
        Some(4),
        "pinned at first start"
    );
    store.snapshot(&h.config.kafka).await.unwrap();
    let after = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert!(after.loaded_from() > 0, "read from the snapshot on");
    assert_eq!(
        after.pinned_partitions(&topic),
        Some(4),
        "the snapshot keeps it"
    );

    // The same start on the same count is fine.
    h.start().await.shutdown().await;

    // As the cursor topic reads after a deployment ran the topic on 2 partitions and
    // the topic grew to 4 (neither test broker can grow a topic).
    after.pin_partitions(&topic, 2).await.unwrap();
    let err = Engine::start(h.config.clone(), IngestStart::Manual)
        .await
        .expect_err("a grown topic is refused");
    let mpn_engine::Error::PartitionsChanged(changed) = &err else {
        panic!("not a PartitionsChanged: {err:#}")
    };
    assert_eq!((changed.pinned, changed.now), (2, 4));
    let message = err.to_string();
    for part in [
        topic.as_str(),
        "has 4 partitions",
        "runs on 2",
        &h.config.kafka.cursor_topic(),
        "The partition count is fixed",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
}
