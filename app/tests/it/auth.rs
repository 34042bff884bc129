//! Credentials and tenancy: the right status codes, and nothing of another tenant
//! ever arrives.

use std::time::Duration;

use mpn_proto::mpn::notify::v1 as notify;
use mpn_sim::subscriber::{Login, Subscriber, authenticate};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_unknown_login_and_ungranted_institution_are_refused() {
    let (a, b) = (inst(1), inst(2));
    let h = Harness::new(
        2,
        vec![
            credential(&a, "billing-a", &[]),
            credential(&b, "billing-b", &[]),
        ],
    );
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();

    let granted = authenticate(&addr, &login(&a, "billing-a")).await.unwrap();
    assert_eq!(granted, vec![a.clone()]);

    let wrong = Login {
        secret: "guess".into(),
        ..login(&a, "billing-a")
    };
    assert_eq!(
        authenticate(&addr, &wrong).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let err = Subscriber::connect(&addr, &wrong, &[], "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    let unknown = login(&a, "nobody");
    assert_eq!(
        authenticate(&addr, &unknown).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    // A valid login of B presented under A's institution is not A's credential.
    let crossed = login(&a, "billing-b");
    assert_eq!(
        authenticate(&addr, &crossed).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let err = Subscriber::connect(
        &addr,
        &login(&a, "billing-a"),
        std::slice::from_ref(&b),
        "x",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains(&b), "{}", err.message());
    let err = Subscriber::connect(&addr, &login(&a, "billing-a"), &["12".into()], "x")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // No metadata at all.
    let mut client = notify::notify_client::NotifyClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let err = client
        .authenticate(notify::AuthenticateRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_acknowledges_only_its_own_notifications() {
    let (a, b) = (inst(1), inst(2));
    let h = Harness::new(
        2,
        vec![
            credential(&a, "billing-a", &[]),
            credential(&b, "billing-b", &[]),
        ],
    );
    let engine = h.start().await;
    let mut sa = subscribe(&engine, &login(&a, "billing-a"), &[]).await;
    let mut sb = subscribe(&engine, &login(&b, "billing-b"), &[]).await;
    engine.open_ingest();
    let mut records = Vec::new();
    for n in 0..50 {
        records.push(Rec::proto(&payment(&a, n)));
        records.push(Rec::proto(&payment(&b, n)));
    }
    h.publish_all(&records).await;
    let got_a = receive(&mut sa, 50, Duration::from_secs(30)).await;
    let got_b = receive(&mut sb, 50, Duration::from_secs(30)).await;
    assert!(got_a.iter().all(|n| n.institution_code == a));
    assert!(got_b.iter().all(|n| n.institution_code == b));
    assert_nothing_more(&mut sa, Duration::from_millis(300)).await;

    // Acknowledging beyond what was sent (e.g. guessing another stream's seq) is an
    // error that closes the stream, not a way to touch another tenant's offsets.
    sa.ack(51).await.unwrap();
    let err = closing_status(&mut sa).await;
    assert_eq!(err.code(), Code::InvalidArgument);

    // A first message that is not `subscribe` is refused.
    let addr = engine.grpc_addr().to_string();
    let mut client = notify::notify_client::NotifyClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(notify::ClientMessage {
        message: Some(notify::client_message::Message::Ack(notify::Ack {
            up_to_seq: 1,
            seqs: vec![],
        })),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    for (k, v) in [
        ("mpn-institution", a.as_str()),
        ("mpn-login-id", "billing-a"),
        ("mpn-secret", SECRET),
    ] {
        req.metadata_mut().insert(k, v.parse().unwrap());
    }
    let err = client.subscribe(req).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let h = Harness::new(1, vec![]);
    let engine = h.start().await;
    let mut client = ServerReflectionClient::new(channel(&engine.grpc_addr().to_string()).await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("unexpected reflection answer {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"mpn.notify.v1.Notify".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
    engine.shutdown().await;
}

/// A flood of wrong logins against a real-cost Argon2 hash is bounded: at most
/// `grpc.max_pending_logins` are admitted at a time and the rest are refused at once
/// with RESOURCE_EXHAUSTED (one verification per core runs at a time), while a
/// durable subscriber of another credential catches up on 2,000 records meanwhile.
/// Before the fix every one of the 1,000 calls queued an Argon2 verification (19 MiB
/// each) on tokio's shared blocking pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_logins_is_bounded_and_catch_up_goes_on() {
    use mpn_engine::auth::hash_secret;
    let (a, b) = (inst(3), inst(4));
    let mut real_cost = credential(&a, "billing-a", &[]);
    real_cost.secret_hash = hash_secret(SECRET).unwrap();
    let mut h = Harness::new(1, vec![real_cost, credential(&b, "billing-b", &[])]);
    // This test measures the Argon2 bound, not the lockout (security.rs): every
    // wrong login is verified.
    h.config.auth.max_failures = 1_000_000;
    h.config.auth.max_failures_per_peer = 1_000_000;
    let engine = h.start().await;
    engine.open_ingest();
    h.publish_all(
        &(0..2_000)
            .map(|n| Rec::proto(&payment(&b, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let addr = engine.grpc_addr().to_string();
    let wrong = Login {
        secret: "guess".into(),
        ..login(&a, "billing-a")
    };
    // 1,000 concurrent calls over 10 connections (a storm of 1,000 fresh TCP
    // connections from one test process measures the loopback, not the engine).
    let mut flood = Vec::new();
    for _ in 0..10 {
        let client = notify::notify_client::NotifyClient::new(channel(&addr).await);
        for _ in 0..100 {
            let (mut client, wrong) = (client.clone(), wrong.clone());
            flood.push(tokio::spawn(async move {
                let mut req = tonic::Request::new(notify::AuthenticateRequest {});
                let md = req.metadata_mut();
                md.insert("mpn-institution", wrong.institution.parse().unwrap());
                md.insert("mpn-login-id", wrong.login_id.parse().unwrap());
                md.insert("mpn-secret", wrong.secret.parse().unwrap());
                client.authenticate(req).await.unwrap_err()
            }));
        }
    }
    // A client refused for the flood retries, as the status tells it to.
    let mut s = loop {
        match Subscriber::durable(
            &addr,
            &login(&b, "billing-b"),
            &[],
            "erp",
            notify::StartFrom::Earliest,
        )
        .await
        {
            Ok(s) => break s,
            Err(e) if e.code() == Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("a valid login is refused: {e:?}"),
        }
    };
    let got = receive(&mut s, 2_000, Duration::from_secs(120)).await;
    assert_eq!(serial(&got[1_999]), 1_999);
    let mut by_code = std::collections::BTreeMap::new();
    for call in flood {
        let status = call.await.unwrap();
        if status.code() == Code::ResourceExhausted {
            assert!(
                status.message().contains("max_pending_logins"),
                "{status:?}"
            );
        }
        let e = by_code
            .entry(format!("{:?}", status.code()))
            .or_insert((0, status.message().to_owned()));
        e.0 += 1;
    }
    let count = |code: &str| by_code.get(code).map_or(0, |e| e.0);
    let refused = count("ResourceExhausted");
    assert!(
        refused > 0,
        "some of the 1,000 logins are refused at once: {by_code:?}"
    );
    assert_eq!(
        refused + count("Unauthenticated"),
        1_000,
        "every other wrong login is UNAUTHENTICATED: {by_code:?}"
    );
    eprintln!("wrong logins refused at once: {refused} of 1000");
    engine.shutdown().await;
}

/// An unknown login and a wrong secret are indistinguishable to the caller: the same
/// status and the same message, on both calls that authenticate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_login_and_wrong_secret_give_identical_answers() {
    let a = inst(5);
    let h = Harness::new(1, vec![credential(&a, "billing", &[])]);
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    let wrong = Login {
        secret: "guess".into(),
        ..login(&a, "billing")
    };
    let unknown = login(&a, "nobody");
    let (w, u) = (
        authenticate(&addr, &wrong).await.unwrap_err(),
        authenticate(&addr, &unknown).await.unwrap_err(),
    );
    assert_eq!((w.code(), w.message()), (u.code(), u.message()));
    assert_eq!(w.code(), Code::Unauthenticated);
    let (w, u) = (
        Subscriber::connect(&addr, &wrong, &[], "x")
            .await
            .unwrap_err(),
        Subscriber::connect(&addr, &unknown, &[], "x")
            .await
            .unwrap_err(),
    );
    assert_eq!((w.code(), w.message()), (u.code(), u.message()));
    engine.shutdown().await;
}

/// The same `subscriber_id` under two credentials is two subscribers: neither's
/// cursor, institution set or connection touches the other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_subscriber_id_under_two_credentials_shares_nothing() {
    let (a, b) = (inst(6), inst(7));
    let h = Harness::new(
        1,
        vec![
            credential(&a, "billing", &[]),
            credential(&b, "billing", &[]),
        ],
    );
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let durable = |l: Login| {
        let addr = addr.clone();
        async move {
            Subscriber::durable(&addr, &l, &[], "erp", notify::StartFrom::Cursor)
                .await
                .unwrap()
        }
    };
    let mut on_a = durable(login(&a, "billing")).await;
    h.publish_all(&[Rec::proto(&payment(&a, 1)), Rec::proto(&payment(&b, 1))])
        .await;
    let got = receive(&mut on_a, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].institution_code, a);
    // B's "erp" is new: it starts from now, not from A's cursor, and does not
    // replace A's connection.
    let mut on_b = durable(login(&b, "billing")).await;
    h.publish_all(&[Rec::proto(&payment(&b, 2)), Rec::proto(&payment(&a, 2))])
        .await;
    let got_b = receive(&mut on_b, 1, Duration::from_secs(20)).await;
    assert_eq!(
        (got_b[0].institution_code.clone(), serial(&got_b[0])),
        (b.clone(), 2)
    );
    let got_a = receive(&mut on_a, 1, Duration::from_secs(20)).await;
    assert_eq!(
        (got_a[0].institution_code.clone(), serial(&got_a[0])),
        (a, 2)
    );
    assert_nothing_more(&mut on_b, Duration::from_millis(300)).await;
    engine.shutdown().await;
}

/// An unknown `start_from` is refused where the engine checks the start: after the
/// tenancy checks (an ungranted institution is PERMISSION_DENIED whatever else is
/// wrong), and for an ephemeral request with the rule it breaks first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_start_from_is_refused_after_the_tenancy_checks() {
    let (a, b) = (inst(1), inst(2));
    let h = Harness::new(2, vec![credential(&a, "billing-a", &[])]);
    let engine = h.start().await;
    let addr = engine.grpc_addr().to_string();
    let request = |institutions: Vec<String>, subscriber_id: &str| notify::SubscribeRequest {
        institutions,
        subscriber_name: "x".into(),
        subscriber_id: subscriber_id.into(),
        start_from: 99,
        start_time_ms: 0,
    };
    let me = login(&a, "billing-a");

    let err = Subscriber::open(&addr, &me, request(vec![b.clone()], "d1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    let err = Subscriber::open(&addr, &me, request(vec![], ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("needs a subscriber_id"),
        "{}",
        err.message()
    );

    let err = Subscriber::open(&addr, &me, request(vec![], "d1"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(err.message(), "start_from: unknown value 99");
    engine.shutdown().await;
}
