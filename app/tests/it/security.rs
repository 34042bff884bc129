//! Security of the subscription API (issue 12): what a refused client is told, login
//! protection and its audit trail, credential reload, TLS and mutual TLS.

use std::time::Duration;

use mpn_proto::mpn::notify::v1 as notify;
use mpn_sim::subscriber::{Login, Subscriber, authenticate};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tonic::Code;

use crate::support::*;

/// A Kafka failure while attaching reaches the client as a generic UNAVAILABLE:
/// the broker's error text (topic names, broker addresses, librdkafka's wording)
/// stays in the engine's log. Before the fix the status read "Kafka: Meta data
/// fetch error: TopicAuthorizationFailed (Broker: Topic authorization failed)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_errors_are_not_returned_to_clients() {
    let a = inst(1);
    let h = Harness::new(1, vec![credential(&a, "billing", &[])]);
    let engine = h.start().await;
    h.broker()
        .request_errors(
            RDKafkaApiKey::ListOffsets,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
        )
        .unwrap();
    let err = Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(&a, "billing"),
        &[],
        "erp",
        notify::StartFrom::Earliest,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "temporarily unavailable; retry");
    engine.shutdown().await;
}

fn wrong(l: &Login) -> Login {
    Login {
        secret: "a-wrong-guess-3d1f".into(),
        ..l.clone()
    }
}

/// The records of the audit topic, read from the start until `done` holds (or
/// panics after 30 s, showing what arrived).
async fn audit_records(
    h: &Harness,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let mut c = h.config.kafka.clone();
    c.group_id = format!("audit-reader-{}", std::process::id());
    let consumer: StreamConsumer = c.consumer().create().unwrap();
    consumer
        .subscribe(&[&h.config.auth.audit_topic(&h.config.kafka.input_topic)])
        .unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !done(&out) {
        let Ok(m) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            panic!("the audit topic holds only {out:#?}");
        };
        let m = m.unwrap();
        let payload = m.payload().unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(payload).contains(SECRET)
                && !String::from_utf8_lossy(payload).contains("a-wrong-guess"),
            "a secret in an audit record"
        );
        out.push(serde_json::from_slice(payload).expect("an audit record is JSON"));
    }
    out
}

fn count(records: &[serde_json::Value], event: &str, reason: &str) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == event && (reason.is_empty() || r["reason"] == reason))
        .count()
}

/// After `auth.max_failures` wrong secrets within the window the login is locked
/// out: the next call is refused with RESOURCE_EXHAUSTED (with a retry delay) even
/// with the right secret, an unknown login is locked out the same way (a lockout
/// says nothing about whether a login exists), and another login from the same
/// address is not affected. Failures, lockouts and subscriptions are in the audit
/// topic, without a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_n_plus_first_login_is_locked_out_even_with_the_right_secret_and_audited() {
    use tonic_types::StatusExt;
    metrics();
    let (a, b) = (inst(1), inst(2));
    let mut h = Harness::new(
        1,
        vec![
            credential(&a, "billing-a", &[]),
            credential(&b, "billing-b", &[]),
        ],
    );
    h.config.auth.max_failures = 3;
    h.config.auth.max_failures_per_peer = 1_000;
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    let me = login(&a, "billing-a");

    for _ in 0..3 {
        let e = authenticate(&addr, &wrong(&me)).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
    }
    let locked = authenticate(&addr, &me).await.unwrap_err();
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    assert!(
        locked.message().contains("locked until"),
        "{}",
        locked.message()
    );
    let retry = locked.get_details_retry_info().expect("a retry delay");
    assert!(retry.retry_delay.unwrap() > Duration::from_secs(800));
    let err = Subscriber::connect(&addr, &me, &[], "x").await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // Unknown logins are counted and locked out alike.
    let nobody = login(&a, "nobody");
    for _ in 0..3 {
        assert_eq!(
            authenticate(&addr, &nobody).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let e = authenticate(&addr, &nobody).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message().split(';').next()),
        (locked.code(), locked.message().split(';').next())
    );

    // Another credential, same address: served.
    let mut s = subscribe(&engine, &login(&b, "billing-b"), &[]).await;
    engine.open_ingest();
    h.publish_all(&[Rec::proto(&payment(&b, 1))]).await;
    receive(&mut s, 1, Duration::from_secs(20)).await;

    assert!(counter_with("mpn_auth_failures_total", "reason", "locked_out") >= 3);
    assert_eq!(counter_with("mpn_auth_lockouts_total", "scope", "login"), 2);

    let records = audit_records(&h, |r| {
        count(r, "subscribed", "") >= 1 && count(r, "locked_out", "login") >= 2
    })
    .await;
    assert!(
        count(&records, "login_failed", "bad_credentials") >= 6,
        "{records:#?}"
    );
    assert!(
        count(&records, "login_failed", "locked_out") >= 3,
        "{records:#?}"
    );
    let lock = records
        .iter()
        .find(|r| r["event"] == "locked_out" && r["login_id"] == "billing-a")
        .expect("billing-a's lockout is audited");
    assert_eq!(lock["institution"], a.as_str());
    assert_eq!(lock["peer"], "127.0.0.1");
    let sub = records.iter().find(|r| r["event"] == "subscribed").unwrap();
    assert_eq!(sub["login_id"], "billing-b");
    assert_eq!(sub["institutions"], serde_json::json!([b]));
    assert_eq!(sub["peer"], "127.0.0.1");
    assert!(chrono::DateTime::parse_from_rfc3339(sub["at"].as_str().unwrap()).is_ok());
    assert!(count(&records, "authenticated", "secret") >= 1);
    engine.shutdown().await;
}

/// Failures from one address add up over logins: past `auth.max_failures_per_peer`
/// the address is locked out, a valid login from it too; the lockout ends after
/// `auth.lockout_ms` and the valid login is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_is_locked_out_across_logins_and_the_lockout_expires() {
    metrics();
    let a = inst(3);
    let mut h = Harness::new(1, vec![credential(&a, "billing", &[])]);
    h.config.auth.max_failures = 100;
    h.config.auth.max_failures_per_peer = 4;
    h.config.auth.lockout = Duration::from_millis(1_500);
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    for n in 0..4 {
        let guess = login(&a, &format!("guess-{n}"));
        assert_eq!(
            authenticate(&addr, &guess).await.unwrap_err().code(),
            Code::Unauthenticated
        );
    }
    let me = login(&a, "billing");
    let e = authenticate(&addr, &me).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("from this address"), "{}", e.message());
    assert_eq!(counter_with("mpn_auth_lockouts_total", "scope", "peer"), 1);
    let started = std::time::Instant::now();
    eventually("the peer lockout ends", Duration::from_secs(10), || {
        let (addr, me) = (addr.clone(), me.clone());
        async move { authenticate(&addr, &me).await.is_ok() }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1_000),
        "it lasted its time"
    );
    engine.shutdown().await;
}

fn credentials_toml(creds: &[mpn_engine::config::CredentialConfig]) -> String {
    let mut out = String::new();
    for c in creds {
        out.push_str(&format!(
            "[[credentials]]\ninstitution = \"{}\"\nlogin_id = \"{}\"\nsecret_hash = \"{}\"\ngrants = {:?}\n",
            c.institution, c.login_id, c.secret_hash, c.grants
        ));
    }
    out
}

/// `auth.credentials_file` is read again by `Engine::reload` (SIGHUP): a bad file is
/// refused with the entry named and the old table kept; then a removed credential's
/// live stream ends with UNAUTHENTICATED, a credential whose grants shrank loses its
/// stream with PERMISSION_DENIED naming the lost institution, and a credential of
/// the main configuration streams on. Each ending is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_streams_of_removed_and_narrowed_credentials() {
    let (a, b, c, d) = (inst(1), inst(2), inst(3), inst(4));
    let dir = std::env::temp_dir().join(format!("mpn-creds-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credentials.toml");
    let vendor = credential(&b, "vendor", &[b.clone(), c.clone()]);
    let leaving = credential(&d, "leaving", &[]);
    std::fs::write(&file, credentials_toml(&[vendor.clone(), leaving.clone()])).unwrap();
    let mut h = Harness::new(2, vec![credential(&a, "billing-a", &[])]);
    h.config.auth.credentials_file = file.display().to_string();
    let engine = h.start().await;
    let mut sa = subscribe(&engine, &login(&a, "billing-a"), &[]).await;
    let mut sv = subscribe(&engine, &login(&b, "vendor"), &[]).await;
    let mut sl = subscribe(&engine, &login(&d, "leaving"), &[]).await;
    engine.open_ingest();

    let mut bad = credentials_toml(std::slice::from_ref(&vendor));
    bad.push_str(
        "[[credentials]]\ninstitution = \"00200\"\nlogin_id = \"no spaces\"\nsecret_hash = \"x\"\n",
    );
    std::fs::write(&file, bad).unwrap();
    let refused = engine.reload();
    let e = refused.credentials_error.expect("a bad file is refused");
    assert!(e.contains("credentials[1].login_id"), "{e}");
    assert_eq!(refused.subscriptions_ended, 0);
    authenticate(&engine.grpc_addr().to_string(), &login(&d, "leaving"))
        .await
        .expect("the old table stays in force");

    let narrowed = credential(&b, "vendor", std::slice::from_ref(&b));
    std::fs::write(&file, credentials_toml(&[narrowed])).unwrap();
    let done = engine.reload();
    assert_eq!(
        (done.credentials_error, done.subscriptions_ended),
        (None, 2)
    );
    let removed = closing_status(&mut sl).await;
    assert_eq!(removed.code(), Code::Unauthenticated, "{removed:?}");
    let revoked = closing_status(&mut sv).await;
    assert_eq!(revoked.code(), Code::PermissionDenied, "{revoked:?}");
    assert!(revoked.message().contains(&c), "{}", revoked.message());
    assert_eq!(
        authenticate(&engine.grpc_addr().to_string(), &login(&d, "leaving"))
            .await
            .unwrap_err()
            .code(),
        Code::Unauthenticated
    );

    h.publish_all(&[Rec::proto(&payment(&a, 1))]).await;
    let got = receive(&mut sa, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].institution_code, a);

    let records = audit_records(&h, |r| count(r, "credential_removed", "") >= 2).await;
    let gone = records
        .iter()
        .find(|r| r["event"] == "credential_removed" && r["reason"] == "removed")
        .unwrap();
    assert_eq!(gone["login_id"], "leaving");
    let narrowed = records
        .iter()
        .find(|r| r["event"] == "credential_removed" && r["reason"] == "grants_revoked")
        .unwrap();
    assert_eq!(narrowed["institutions"], serde_json::json!([c]));
    engine.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
