//! Crash recovery of the real binary: SIGKILL with unacknowledged notifications, then
//! a restart. The engine serves again quickly and redelivers exactly what was not
//! acknowledged, with the same ids.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::binary::{serve_command, temp_dir, write_config};
use crate::support::*;

/// Starts `mpn-notify serve` and returns it with its gRPC address once it listens.
/// The engine's log goes to `MPN_TEST_LOG` when set (a failing test's post-mortem).
pub(crate) async fn serve(config: &std::path::Path) -> (Child, String) {
    serve_logged(config, std::env::var_os("MPN_TEST_LOG").map(Into::into)).await
}

/// [`serve`], appending the engine's log to `log`.
pub(crate) async fn serve_logged(
    config: &std::path::Path,
    log: Option<std::path::PathBuf>,
) -> (Child, String) {
    let mut child = serve_command(config).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut file = log.and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        use std::io::Write;
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
            if let Some(rest) = line.split("grpc_addr=").nth(1) {
                return rest.split_whitespace().next().unwrap().to_owned();
            }
        }
        panic!("the engine exited before listening");
    })
    .await
    .expect("the engine logs its gRPC address");
    tokio::spawn(async move {
        use std::io::Write;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(f) = file.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    (child, addr)
}

pub(crate) async fn wait_serving(addr: &str) {
    let mut health = HealthClient::new(channel(addr).await);
    loop {
        let r = health
            .check(HealthCheckRequest {
                service: "mpn.notify.v1.Notify".into(),
            })
            .await;
        if r.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn committed(h: &Harness) -> Option<i64> {
    let c: BaseConsumer = h.config.kafka.consumer().create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&h.config.kafka.input_topic, 0);
    let got = c.committed_offsets(tpl, Duration::from_secs(5)).ok()?;
    match got.elements().first()?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_the_engine_serves_again_and_redelivers_only_the_unacknowledged() {
    let code = inst(61);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("sigkill");
    let config = write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [ingest]\nstartup_grace_ms = 1000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            h.config.kafka.bootstrap_servers, cred.institution, cred.secret_hash
        ),
    );

    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let mut s = mpn_sim::subscriber::Subscriber::connect(&addr, &login(&code, "billing"), &[], "t")
        .await
        .unwrap();
    h.publish_all(
        &(0..100)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let first = receive_unacked(&mut s, 100, Duration::from_secs(30)).await;
    s.ack(first[59].seq).await.unwrap();
    eventually(
        "the acknowledged prefix is committed",
        Duration::from_secs(20),
        || {
            let c = committed(&h);
            async move { c == Some(60) }
        },
    )
    .await;

    engine.start_kill().unwrap();
    engine.wait().await.unwrap();
    drop(s);

    let restarted = Instant::now();
    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let serving_after = restarted.elapsed();
    let mut s = mpn_sim::subscriber::Subscriber::connect(&addr, &login(&code, "billing"), &[], "t")
        .await
        .unwrap();
    let again = receive(&mut s, 40, Duration::from_secs(30)).await;
    let redelivered_after = restarted.elapsed();
    let unacked: Vec<&str> = first[60..]
        .iter()
        .map(|n| n.notification_id.as_str())
        .collect();
    let ids: Vec<&str> = again.iter().map(|n| n.notification_id.as_str()).collect();
    assert_eq!(
        ids, unacked,
        "exactly the unacknowledged, same ids, in order"
    );
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    eprintln!(
        "recovery (mock broker): serving {} ms after restart, first redelivery batch complete {} ms after restart",
        serving_after.as_millis(),
        redelivered_after.as_millis()
    );
    engine.start_kill().unwrap();
    let _ = engine.wait().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// A new durable `subscriber_id` whose engine is SIGKILLed right after `Subscribed`
/// resumes, after the restart, from the position it was given: the records published
/// meanwhile reach it. Cursor flushes are made rare, so only the first-position write
/// before `Subscribed` can carry it. Before the fix the restarted engine took the id
/// for a new one and started it from a later "now": 0 of the 5 records arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_durable_subscriber_killed_right_after_subscribing_keeps_its_first_position() {
    use mpn_proto::mpn::notify::v1::StartFrom;
    use mpn_sim::subscriber::Subscriber;
    let code = inst(62);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("sigkill-new-id");
    let config = write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [ingest]\nstartup_grace_ms = 200\n[cursors]\nflush_interval_ms = 60000\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            h.config.kafka.bootstrap_servers, cred.institution, cred.secret_hash
        ),
    );
    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let s = Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "erp-new",
        StartFrom::Cursor,
    )
    .await
    .unwrap();
    engine.start_kill().unwrap();
    engine.wait().await.unwrap();
    drop(s);
    h.publish_all(
        &(0..5)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;

    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let mut s = Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "erp-new",
        StartFrom::Cursor,
    )
    .await
    .unwrap();
    let got = receive(&mut s, 5, Duration::from_secs(30)).await;
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>(),
        "every record published after the first subscription"
    );
    engine.start_kill().unwrap();
    let _ = engine.wait().await;
    std::fs::remove_dir_all(dir).unwrap();
}

/// The durable variant: a durable subscriber acknowledges 60 of 100, its cursor
/// reaches the cursor topic, the engine is SIGKILLed; after the restart the same id
/// resumes with exactly the 40 unacknowledged, same ids, in order, and nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_a_durable_subscriber_resumes_with_exactly_the_unacknowledged() {
    use mpn_engine::cursors::{CursorStore, SubscriberKey};
    use mpn_proto::mpn::notify::v1::StartFrom;
    use mpn_sim::subscriber::Subscriber;
    let code = inst(63);
    let h = Harness::new(1, vec![]);
    let cred = credential(&code, "billing", &[]);
    let dir = temp_dir("sigkill-durable");
    let config = write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 2000\n\
             [ingest]\nstartup_grace_ms = 200\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
             [[credentials]]\ninstitution = \"{}\"\nlogin_id = \"billing\"\nsecret_hash = \"{}\"\n",
            h.config.kafka.bootstrap_servers, cred.institution, cred.secret_hash
        ),
    );
    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let l = login(&code, "billing");
    let mut s = Subscriber::durable(&addr, &l, &[], "erp", StartFrom::Cursor)
        .await
        .unwrap();
    h.publish_all(
        &(0..100)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let first = receive_unacked(&mut s, 100, Duration::from_secs(30)).await;
    s.ack(first[59].seq).await.unwrap();
    // Observed from outside, as another replica would: the cursor is in the topic.
    let (stop_rx, _stop) = stop_on_drop();
    let reader = CursorStore::load(&h.config.kafka, &stop_rx).await.unwrap();
    let key = SubscriberKey::new(&code, "billing", "erp").unwrap();
    eventually(
        "the cursor reached the topic",
        Duration::from_secs(20),
        || {
            let c = reader.get(&key, 1);
            async move { c == vec![Some(60)] }
        },
    )
    .await;

    engine.start_kill().unwrap();
    engine.wait().await.unwrap();
    drop(s);

    let (mut engine, addr) = serve(&config).await;
    wait_serving(&addr).await;
    let mut s = Subscriber::durable(&addr, &l, &[], "erp", StartFrom::Cursor)
        .await
        .unwrap();
    let again = receive(&mut s, 40, Duration::from_secs(30)).await;
    let unacked: Vec<&str> = first[60..]
        .iter()
        .map(|n| n.notification_id.as_str())
        .collect();
    let ids: Vec<&str> = again.iter().map(|n| n.notification_id.as_str()).collect();
    assert_eq!(
        ids, unacked,
        "exactly the unacknowledged, same ids, in order"
    );
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    engine.start_kill().unwrap();
    let _ = engine.wait().await;
    std::fs::remove_dir_all(dir).unwrap();
}
