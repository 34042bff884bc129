//! Bounded resources per tenant: a credential's open streams and durable ids are
//! limited, and unused ids expire (with tombstones every replica applies).

use std::time::Duration;

use mpn_proto::mpn::notify::v1 as pb;
use mpn_sim::subscriber::Subscriber;
use tonic::Code;

use crate::support::*;

/// Past `grpc.max_streams_per_credential` open subscriptions a credential's next
/// subscribe is refused with RESOURCE_EXHAUSTED naming the knob; closing one makes
/// room again. Before the fix there was no limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_has_at_most_its_open_streams() {
    let code = inst(90);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.max_streams_per_credential = 3;
    let engine = h.start().await;
    let l = login(&code, "billing");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(subscribe(&engine, &l, &[]).await);
    }
    let err = Subscriber::connect(&engine.grpc_addr().to_string(), &l, &[], "fourth")
        .await
        .expect_err("a fourth stream is refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("grpc.max_streams_per_credential"),
        "{}",
        err.message()
    );
    drop(open.pop());
    let addr = engine.grpc_addr().to_string();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let again = loop {
        match Subscriber::connect(&addr, &l, &[], "again").await {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a closed stream frees its slot"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    drop((open, again));
    engine.shutdown().await;
}

/// 300 random subscriber ids of one credential: the first
/// `cursors.max_ids_per_credential` (256 by default) are kept, the rest refused with
/// RESOURCE_EXHAUSTED, while ids it already has still resume. When the ids expire
/// (here by another replica's expiry, whose tombstones this replica applies), new
/// ids are accepted again and the cursor table shrinks. Before the fix every id was
/// accepted and kept for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_ids_are_limited_per_credential_and_expire() {
    use mpn_engine::cursors::CursorStore;
    let code = inst(91);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    let l = login(&code, "billing");
    let mut refused = 0;
    let mut kept = Vec::new();
    for n in 0..300u32 {
        let id = format!("erp-{:08x}", n.wrapping_mul(2_654_435_761));
        match Subscriber::durable(&addr, &l, &[], &id, pb::StartFrom::Cursor).await {
            Ok(s) => {
                drop(s);
                kept.push(id);
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(
                    e.message().contains("cursors.max_ids_per_credential"),
                    "{}",
                    e.message()
                );
                refused += 1;
            }
        }
    }
    assert_eq!(kept.len(), 256, "the default limit");
    assert_eq!(refused, 44);
    Subscriber::durable(&addr, &l, &[], &kept[0], pb::StartFrom::Cursor)
        .await
        .expect("an id it has resumes");

    // Another replica expires every id (as if unused past the age) with tombstones.
    let (stop_rx, _stop) = stop_on_drop();
    let other = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert!(
        other.ids() >= 256,
        "the other replica sees them: {}",
        other.ids()
    );
    let cutoff = chrono::Utc::now().timestamp_millis() + 60_000;
    let expired = other.expire(cutoff).await.unwrap();
    assert!(expired >= 256, "expired {expired}");
    // This replica may still be writing the last cursors of the streams just
    // dropped; a cursor written after its tombstone brings the id back, as any use
    // does, until the next expiry pass (periodic in the engine, repeated here).
    let other = &other;
    eventually(
        "this replica applied the tombstones and takes new ids again",
        Duration::from_secs(20),
        || {
            let (addr, l) = (addr.clone(), l.clone());
            async move {
                other.expire(cutoff).await.unwrap();
                Subscriber::durable(&addr, &l, &[], "erp-after", pb::StartFrom::Cursor)
                    .await
                    .is_ok()
            }
        },
    )
    .await;
    engine.shutdown().await;
    let (stop_rx, _stop) = stop_on_drop();
    let reloaded = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    assert!(
        reloaded.ids() <= 2,
        "a restart does not bring expired ids back: {} ids",
        reloaded.ids()
    );
}

/// A snapshot copies every cursor but is not a use of the ids: each record keeps its
/// id's last use, so an id unused since before a cutoff still expires however often
/// snapshots are taken (every 30 s by default). Before the fix (found by review) a
/// snapshot stamped every record with its own time, no id ever looked unused, and a
/// credential that had reached its id limit stayed locked out for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_not_a_use_of_an_id() {
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    let h = Harness::new(1, vec![]);
    let (stop_rx, _stop) = stop_on_drop();
    let a = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let key = SubscriberKey::new("00200000", "billing", "old").unwrap();
    a.advance(&key, 0, 5);
    a.flush().await.unwrap();
    // Distinct clock readings on either side of the cutoff.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let cutoff = chrono::Utc::now().timestamp_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.snapshot(&h.config.kafka).await.unwrap();

    let b = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let used = b.last_used(&key).expect("known after the snapshot");
    assert!(
        used < cutoff,
        "a snapshot must not count as a use, yet the id was last used at {used} >= {cutoff}"
    );
    assert_eq!(
        b.expire(cutoff).await.unwrap(),
        1,
        "unused since before the cutoff"
    );
    assert_eq!(b.ids(), 0);
}

/// A field of this test process's `/proc/self/status` (each test runs in its own
/// process), as its first number.
fn status(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("a {field} line"))
}

fn threads() -> usize {
    status("Threads:")
}

/// 150 durable subscribers of one credential, idle and live on every partition,
/// hold no Kafka client: the process's threads come back to near where they were
/// (the blocking pool's idle threads leave after 10 s), and every subscriber is
/// still served live. Before the fix each kept its catch-up reader's librdkafka
/// consumer (a handful of threads and its buffers each) for as long as it stayed
/// connected: about 5 threads per subscriber, measured 1,043 threads for 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_durable_subscribers_hold_no_kafka_client() {
    let code = inst(92);
    let mut h = Harness::new(4, vec![credential(&code, "billing", &[])]);
    h.config.grpc.max_streams_per_credential = 200;
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let l = login(&code, "billing");
    let before = threads();
    let rss_before = status("VmRSS:");
    let mut subs = Vec::new();
    for n in 0..150 {
        let id = format!("idle-{n}");
        subs.push(
            Subscriber::durable(&addr, &l, &[], &id, pb::StartFrom::Cursor)
                .await
                .expect("subscribe"),
        );
    }
    eventually(
        "idle durable subscribers to give their Kafka clients up",
        Duration::from_secs(60),
        || async { threads() < before + 40 },
    )
    .await;
    eprintln!(
        "150 idle durable subscribers: threads {before} -> {}, RSS {} -> {} MiB",
        threads(),
        rss_before / 1024,
        status("VmRSS:") / 1024
    );
    h.publish_all(&[Rec::proto(&payment(&code, 1))]).await;
    for s in &mut subs {
        let n = tokio::time::timeout(Duration::from_secs(20), s.next())
            .await
            .expect("served live")
            .unwrap()
            .unwrap();
        assert_eq!(serial(&n), 1);
    }
    drop(subs);
    engine.shutdown().await;
}
