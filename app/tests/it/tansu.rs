//! End to end on a real Kafka-protocol broker over TCP (Tansu), with events published
//! by an independent client (Python kafka-python) in the documented JSON form as well
//! as by our own producer.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use mpn_proto::mpn::notify::v1 as pb;
use mpn_sim::subscriber::Subscriber;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::*;
use crate::tansu_support::{Storage, Tansu};

/// Publishes events as JSON with kafka-python; returns how many it says it published.
async fn publish_with_kafka_python(
    bootstrap: &str,
    topic: &str,
    events: &[mpn_proto::mpn::v1::PaymentEvent],
) -> usize {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let interpreter = std::env::var("MPN_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(interpreter)
        .arg(repo.join("connectors/kafka/python/publish.py"))
        .args(["--bootstrap", bootstrap, "--topic", topic])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut input = Vec::new();
    for e in events {
        let event: serde_json::Value = serde_json::from_slice(&mpn_proto::json::encode(e)).unwrap();
        let line = serde_json::json!({ "key": e.institution_code, "event": event });
        input.extend(serde_json::to_vec(&line).unwrap());
        input.push(b'\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "kafka-python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["published"].as_u64().unwrap() as usize
}

fn assert_per_institution_order(got: &[pb::Notification]) {
    let mut by: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for n in got {
        by.entry(&n.institution_code).or_default().push(serial(n));
    }
    for (code, serials) in by {
        let mut sorted = serials.clone();
        sorted.sort_unstable();
        assert_eq!(serials, sorted, "order of {code}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_json_and_our_protobuf_reach_a_durable_subscriber_across_a_restart() {
    let broker = Tansu::start(Storage::Memory);
    let codes: Vec<String> = (300..305).map(inst).collect();
    let h = Harness::external(
        &broker.bootstrap(),
        3,
        vec![credential(&codes[0], "billing", &codes)],
    )
    .await;
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let mut s = Subscriber::durable(
        &addr,
        &login(&codes[0], "billing"),
        &[],
        "erp",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();

    let json_events: Vec<_> = (0..20)
        .flat_map(|n| codes.iter().map(move |c| payment(c, n)))
        .collect();
    let published = publish_with_kafka_python(
        &h.config.kafka.bootstrap_servers,
        &h.config.kafka.input_topic,
        &json_events,
    )
    .await;
    assert_eq!(published, 100);
    h.publish_all(
        &(20..40)
            .flat_map(|n| codes.iter().map(move |c| Rec::proto(&payment(c, n))))
            .collect::<Vec<_>>(),
    )
    .await;
    let (got, _) = receive_distinct(&mut s, 200, Duration::from_secs(60)).await;
    assert_per_institution_order(&got);
    for c in &codes {
        let of_c: Vec<_> = got.iter().filter(|n| &n.institution_code == c).collect();
        assert_eq!(of_c.len(), 40);
        // Both clients partition by murmur2 of the key: one partition per institution.
        let partitions: std::collections::HashSet<i32> =
            of_c.iter().map(|n| n.source_partition).collect();
        assert_eq!(partitions.len(), 1, "{c} is on partitions {partitions:?}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.shutdown().await;
    drop(s);

    // Published while no engine runs; the restarted engine and the resumed
    // subscriber deliver exactly these.
    let later: Vec<_> = codes.iter().map(|c| payment(c, 40)).collect();
    publish_with_kafka_python(
        &h.config.kafka.bootstrap_servers,
        &h.config.kafka.input_topic,
        &later,
    )
    .await;
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let mut s = Subscriber::durable(
        &addr,
        &login(&codes[0], "billing"),
        &[],
        "erp",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();
    let (got, _) = receive_distinct(&mut s, 5, Duration::from_secs(60)).await;
    assert!(
        got.iter().all(|n| serial(n) == 40),
        "only what came after the acknowledged ones"
    );
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_keeps_offsets_and_cursors() {
    let dir = std::env::temp_dir().join(format!("mpn-tansu-sqlite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut broker = Tansu::start(Storage::Sqlite(dir.clone()));
    let code = inst(310);
    let h = Harness::external(
        &broker.bootstrap(),
        2,
        vec![credential(&code, "billing", &[])],
    )
    .await;
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let mut s = Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "erp",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();
    h.publish_all(
        &(0..50)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let got = receive(&mut s, 30, Duration::from_secs(60)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..30).collect::<Vec<_>>()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    engine.shutdown().await;
    drop(s);

    broker.kill();
    broker.restart();
    assert!(broker.sqlite_dir().is_some());

    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let mut s = Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "erp",
        pb::StartFrom::Cursor,
    )
    .await
    .unwrap();
    h.publish_all(
        &(50..60)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let (got, _) = receive_distinct(&mut s, 30, Duration::from_secs(60)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (30..60).collect::<Vec<_>>()
    );
    engine.shutdown().await;
    drop(broker);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_from_time_begins_at_the_first_record_after_that_time() {
    let broker = Tansu::start(Storage::Memory);
    let code = inst(320);
    let h = Harness::external(
        &broker.bootstrap(),
        2,
        vec![credential(&code, "billing", &[])],
    )
    .await;
    let engine = h.start().await;
    engine.open_ingest();
    h.publish_all(
        &(0..20)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let from = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(200)).await;
    h.publish_all(
        &(20..30)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let request = pb::SubscribeRequest {
        subscriber_id: "from-time".into(),
        start_from: pb::StartFrom::Time as i32,
        start_time_ms: from,
        ..Default::default()
    };
    let mut s = Subscriber::open(
        &engine.grpc_addr().to_string(),
        &login(&code, "billing"),
        request,
    )
    .await
    .unwrap();
    let (got, _) = receive_distinct(&mut s, 10, Duration::from_secs(60)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (20..30).collect::<Vec<_>>()
    );
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    engine.shutdown().await;
}

/// A durable subscriber that resumes from a cursor inside a producer's record batch
/// gets the rest of that batch. Tansu 0.6 (memory storage) answers a fetch at an
/// offset inside a batch with the *next* batch; the subscriber's catch-up reader
/// (ingest is already past the batches, so the reader serves them) sees the first
/// record come back past its position and assigns the partition again from further
/// back until the answer starts at or before it. Before the fix the subscriber
/// resumed at 10 and never received 6..9 — the loss measured under restarts with
/// kafka-python publishing (runs of a few consecutive offsets per partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_inside_a_record_batch_resumes_without_a_gap() {
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    let broker = Tansu::start(Storage::Memory);
    let code = inst(320);
    let h = Harness::external(
        &broker.bootstrap(),
        1,
        vec![credential(&code, "billing", &[])],
    )
    .await;
    let engine = h.start().await;
    engine.open_ingest();
    publish_in_two_batches(&h, &code).await;
    let addr = engine.grpc_addr().to_string();
    let l = login(&code, "billing");
    let mut s = Subscriber::durable(&addr, &l, &[], "erp", pb::StartFrom::Earliest)
        .await
        .unwrap();
    let first = receive(&mut s, 6, Duration::from_secs(30)).await;
    assert_eq!(
        first.iter().map(serial).collect::<Vec<_>>(),
        (0..6).collect::<Vec<_>>()
    );
    // Still connected while the last acknowledgement reaches the cursor topic.
    let (stop_rx, _stop) = stop_on_drop();
    let reader = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let key = SubscriberKey::new(&code, "billing", "erp").unwrap();
    eventually(
        "the cursor is inside the first batch",
        Duration::from_secs(20),
        || {
            let c = reader.get(&key, 1);
            async move { c == vec![Some(6)] }
        },
    )
    .await;
    drop(s);
    let mut s = Subscriber::durable(&addr, &l, &[], "erp", pb::StartFrom::Cursor)
        .await
        .unwrap();
    let rest = receive(&mut s, 14, Duration::from_secs(30)).await;
    assert_eq!(
        rest.iter().map(serial).collect::<Vec<_>>(),
        (6..20).collect::<Vec<_>>(),
        "the rest of the batch, then the next"
    );
    engine.shutdown().await;
}

/// Payments 0..20 of `code` as two producer batches of ten (the producer lingers).
async fn publish_in_two_batches(h: &Harness, code: &str) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let mut batching = h.config.kafka.producer();
    batching.set("linger.ms", "200");
    let producer: FutureProducer = batching.create().unwrap();
    for batch in [0..10u32, 10..20] {
        let payloads: Vec<Vec<u8>> = batch
            .map(|n| prost::Message::encode_to_vec(&payment(code, n)))
            .collect();
        let sends = payloads.iter().map(|p| {
            producer.send(
                FutureRecord::to(&h.config.kafka.input_topic)
                    .key(code)
                    .payload(p),
                Duration::from_secs(10),
            )
        });
        for r in futures::future::join_all(sends).await {
            r.expect("broker ack");
        }
    }
}

/// The same for ingest: an engine restarted on a committed offset inside a producer's
/// batch delivers the rest of that batch. Tansu answers the consumer's first fetch
/// with the next batch; ingest sees its first record past the committed offset and
/// seeks back. Before the fix the restarted engine delivered from 10 and committed
/// past 6..9, which nobody ever received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_committed_offset_inside_a_batch_redelivers_the_rest() {
    let broker = Tansu::start(Storage::Memory);
    let code = inst(321);
    let h = Harness::external(
        &broker.bootstrap(),
        1,
        vec![credential(&code, "billing", &[])],
    )
    .await;
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    publish_in_two_batches(&h, &code).await;
    let mut got = Vec::new();
    while got.len() < 20 {
        got.push(
            tokio::time::timeout(Duration::from_secs(30), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    // Acknowledged up to serial 5: the group commits 6, inside the first batch.
    s.ack(got[5].seq).await.unwrap();
    let tracker = engine.tracker().clone();
    eventually("6 is finalised", Duration::from_secs(20), || {
        let t = tracker.clone();
        async move { t.position(0) == Some(6) }
    })
    .await;
    engine.shutdown().await;
    drop(s);

    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let again = receive(&mut s, 14, Duration::from_secs(30)).await;
    assert_eq!(
        again.iter().map(serial).collect::<Vec<_>>(),
        (6..20).collect::<Vec<_>>(),
        "the unacknowledged rest of the first batch, then the second"
    );
    engine.shutdown().await;
}
