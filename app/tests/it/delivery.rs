//! Delivery mechanics of the gRPC connector: the ack window, a too-slow subscriber
//! being cut off without touching others, heart-beats, and the shutdown status.

use std::time::Duration;

use tonic::Code;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_the_ack_window_is_in_flight() {
    let code = inst(41);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.ack_window = 5;
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    assert_eq!(s.subscribed.ack_window, 5);
    engine.open_ingest();
    h.publish_all(
        &(0..20)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;

    let mut first = Vec::new();
    for _ in 0..5 {
        first.push(
            tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    assert!(s.heartbeats > 0, "an idle stream carries heart-beats");
    s.ack(first[4].seq).await.unwrap();
    let rest = receive(&mut s, 15, Duration::from_secs(10)).await;
    let serials: Vec<u32> = first.iter().chain(&rest).map(serial).collect();
    assert_eq!(serials, (0..20).collect::<Vec<_>>());
    engine.shutdown().await;
}

/// Ingest takes records in batches (what the consumer already holds, without a
/// wake-up each), and a batch never takes the engine past `ingest.max_in_flight`:
/// with nothing acknowledged, exactly that many records are consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_batches_stay_within_the_in_flight_cap() {
    let code = inst(43);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.ingest.max_in_flight = 8;
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(
        &(0..100)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    // Received, not acknowledged: every one of them holds its record in flight.
    let first = receive_unacked(&mut s, 8, Duration::from_secs(10)).await;
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    assert_eq!(engine.tracker().in_flight(), 8);
    assert_eq!(
        engine.tracker().consumed_next(0),
        Some(8),
        "nothing past the cap"
    );
    s.ack(first[7].seq).await.unwrap();
    let mut serials: Vec<u32> = first.iter().map(serial).collect();
    let rest = receive(&mut s, 92, Duration::from_secs(20)).await;
    serials.extend(rest.iter().map(serial));
    assert_eq!(serials, (0..100).collect::<Vec<_>>());
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_off_and_the_others_are_not_held_up() {
    let code = inst(42);
    let mut h = Harness::new(
        1,
        vec![
            credential(&code, "fast", &[]),
            credential(&code, "stalled", &[]),
        ],
    );
    h.config.grpc.ack_window = 1;
    h.config.grpc.queue_capacity = 10;
    let engine = h.start().await;
    let mut fast = subscribe(&engine, &login(&code, "fast"), &[]).await;
    let mut stalled = subscribe(&engine, &login(&code, "stalled"), &[]).await;
    engine.open_ingest();
    // Paced, as live traffic is: the fast subscriber keeps up with a window of 1,
    // the stalled one fills its window and its queue of 10.
    // The first record proves the consumer is live, so no start-up burst follows.
    h.publish_all(&[Rec::proto(&payment(&code, 0))]).await;
    let mut got = receive(&mut fast, 1, Duration::from_secs(20)).await;
    let publisher = async {
        for n in 1..50 {
            h.publish_all(&[Rec::proto(&payment(&code, n))]).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let (_, rest) = tokio::join!(publisher, receive(&mut fast, 49, Duration::from_secs(20)));
    got.extend(rest);
    assert_eq!(
        got.iter().map(serial).collect::<Vec<_>>(),
        (0..50).collect::<Vec<_>>()
    );
    // The stalled one saw its window's worth, then the too-slow status.
    let first = stalled.next().await.unwrap().unwrap();
    assert_eq!(serial(&first), 0);
    let status = loop {
        match stalled.next().await {
            Err(status) => break status,
            Ok(Some(_)) => {}
            Ok(None) => panic!("stream ended without a status"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // Nothing stays held for the cut-off subscriber.
    let tracker = engine.tracker().clone();
    eventually("all offsets finalised", Duration::from_secs(10), || {
        let t = tracker.clone();
        async move { t.in_flight() == 0 && t.position(0) == Some(50) }
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_streams_with_unavailable() {
    let code = inst(43);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let shutdown = tokio::spawn(engine.shutdown());
    let status = tokio::time::timeout(Duration::from_secs(10), closing_status(&mut s))
        .await
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    shutdown.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_yields_no_second_notification_and_a_cancellation_its_own() {
    use mpn_proto::mpn::v1 as pb;
    let code = inst(44);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let paid = payment(&code, 1);
    let mut resend = paid.clone();
    resend.kind = pb::EventKind::ResendConfirmation as i32;
    let mut cancel = payment(&code, 2);
    cancel.kind = pb::EventKind::Cancellation as i32;
    cancel.channel = pb::Channel::Counter as i32;
    cancel.original_transaction_key = paid.transaction_key.clone();
    // A resend for a payment never seen is the payment (an upsert).
    let mut lone_resend = payment(&code, 3);
    lone_resend.kind = pb::EventKind::ResendConfirmation as i32;
    let records = [
        Rec::proto(&paid),
        Rec::json(&resend),
        Rec::proto(&paid),
        Rec::proto(&cancel),
        Rec::proto(&lone_resend),
    ];
    h.publish_all(&records).await;

    let got = receive(&mut s, 3, Duration::from_secs(20)).await;
    assert_nothing_more(&mut s, Duration::from_millis(500)).await;
    let ids: Vec<&str> = got.iter().map(|n| n.notification_id.as_str()).collect();
    let payment_id = format!("{}:payment", paid.transaction_key);
    let cancel_id = format!("{}:cancellation", cancel.transaction_key);
    let lone_id = format!("{}:payment", lone_resend.transaction_key);
    assert_eq!(
        ids,
        vec![payment_id.as_str(), cancel_id.as_str(), lone_id.as_str()]
    );
    assert_eq!(got[1].kind, pb::EventKind::Cancellation as i32);
    assert_eq!(got[1].original_transaction_key, paid.transaction_key);
    assert_eq!(got[2].kind, pb::EventKind::Payment as i32);
    let tracker = engine.tracker().clone();
    eventually("duplicates finalised too", Duration::from_secs(10), || {
        let t = tracker.clone();
        async move { t.position(0) == Some(5) }
    })
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_acknowledging_is_disconnected_after_the_ack_timeout() {
    let code = inst(45);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.ack_timeout = Duration::from_millis(300);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(&[Rec::proto(&payment(&code, 1))]).await;
    let n = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(serial(&n), 1);
    let status = tokio::time::timeout(Duration::from_secs(10), closing_status(&mut s))
        .await
        .unwrap();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let tracker = engine.tracker().clone();
    eventually(
        "the stalled subscriber holds nothing",
        Duration::from_secs(10),
        || {
            let t = tracker.clone();
            async move { t.in_flight() == 0 }
        },
    )
    .await;
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_waits_for_acknowledgements_so_a_clean_restart_redelivers_nothing() {
    let code = inst(46);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.ingest.drain_timeout = Duration::from_millis(10_000);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(
        &(0..50)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), s.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap(),
        );
    }
    // Shutdown starts with 50 unacknowledged; the subscriber acknowledges during the drain.
    let shutdown = tokio::spawn(engine.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !shutdown.is_finished(),
        "the drain waits for the acknowledgements"
    );
    s.ack(got[49].seq).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), closing_status(&mut s))
        .await
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .unwrap()
        .unwrap();

    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    h.publish_all(&[Rec::proto(&payment(&code, 50))]).await;
    let next = receive(&mut s, 1, Duration::from_secs(10)).await;
    assert_eq!(
        serial(&next[0]),
        50,
        "nothing acknowledged before the restart comes again"
    );
    engine.shutdown().await;
}

/// A client that stops reading its stream (a tiny HTTP/2 window it never opens
/// again, and no polling) must not freeze its subscription: the ack timeout still
/// cuts it off and releases what it holds, and shutdown still ends within its drain
/// deadline. Before the fix the stream task sat in a send that flow control never
/// let through: the holds stayed (in flight > 0 forever) and shutdown waited on
/// the connection without end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_shutdown_still_ends() {
    let code = inst(47);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.ack_timeout = Duration::from_millis(1_000);
    let engine = h.start().await;
    let frozen = frozen_subscriber(&engine, &code).await;
    engine.open_ingest();
    h.publish_all(
        &(0..500)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    // From here on the client never reads again.
    let tracker = engine.tracker().clone();
    eventually(
        "the frozen subscriber is cut off and holds nothing",
        Duration::from_secs(20),
        || {
            let t = tracker.clone();
            async move { t.position(0) == Some(500) }
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(15), engine.shutdown())
        .await
        .expect("shutdown ends although a client stopped reading");
    drop(frozen);
}

/// The same while idle: a client that stops reading before anything is in flight
/// fills its window with heart-beats, and the notifications that then arrive wait in
/// its queue holding their offsets, with no ack deadline running. The stream is cut
/// off when it has taken nothing for the ack timeout. Before the fix (found by
/// review) it was never cut off and the holds stayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_that_stops_reading_is_cut_off_too() {
    let code = inst(48);
    let mut h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    h.config.grpc.ack_timeout = Duration::from_millis(1_000);
    h.config.grpc.heartbeat_interval = Duration::from_millis(10);
    let engine = h.start().await;
    let frozen = frozen_subscriber(&engine, &code).await;
    // Nothing is read from here on. Heart-beats every 10 ms fill the 1 KiB window
    // (about 35 of them) well within this pause; nothing tells from outside when.
    tokio::time::sleep(Duration::from_secs(2)).await;
    engine.open_ingest();
    h.publish_all(
        &(0..50)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    // From here on the client never reads again.
    let tracker = engine.tracker().clone();
    eventually(
        "the idle frozen subscriber is cut off and holds nothing",
        Duration::from_secs(20),
        || {
            let t = tracker.clone();
            async move { t.position(0) == Some(50) }
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(15), engine.shutdown())
        .await
        .expect("shutdown ends although a client stopped reading");
    drop(frozen);
}

/// A subscriber whose HTTP/2 windows are 1 KiB and never opened again: once it has
/// its `subscribed`, nothing it is sent is read. Dropping the returned pair closes it.
async fn frozen_subscriber(
    engine: &mpn_engine::Engine,
    code: &str,
) -> (
    tonic::Streaming<mpn_proto::mpn::notify::v1::ServerMessage>,
    tokio::sync::mpsc::Sender<mpn_proto::mpn::notify::v1::ClientMessage>,
) {
    use mpn_proto::mpn::notify::v1 as pb;
    use pb::notify_client::NotifyClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", engine.grpc_addr()))
        .unwrap()
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .unwrap();
    let mut client = NotifyClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ClientMessage {
        message: Some(pb::client_message::Message::Subscribe(
            pb::SubscribeRequest {
                subscriber_name: "frozen".into(),
                ..Default::default()
            },
        )),
    })
    .await
    .unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let md = req.metadata_mut();
    md.insert("mpn-institution", code.parse().unwrap());
    md.insert("mpn-login-id", "billing".parse().unwrap());
    md.insert("mpn-secret", SECRET.parse().unwrap());
    let mut inbound = client.subscribe(req).await.unwrap().into_inner();
    let first = inbound.message().await.unwrap().and_then(|m| m.message);
    assert!(
        matches!(first, Some(pb::server_message::Message::Subscribed(_))),
        "{first:?}"
    );
    (inbound, tx)
}
