//! System benchmarks: whole-engine figures, each next to a baseline measured in the
//! same run. Prints markdown tables (collected into docs/performance.md by
//! `scripts/bench`). Select parts with `MPN_BENCH=memory,e2e,live` (default: all).
//!
//! - memory: RSS with 100,000 idle institution sessions, bytes per session;
//! - e2e: Tansu (memory engine) pre-loaded with events; (a) a bare rdkafka consumer
//!   reads them all, (b) a minimal pipeline of the engine's own parts (consumer →
//!   prost decode → tonic streams with acks) and (c) the engine deliver them to the
//!   same 100 gRPC subscribers; same consumer settings; rates and ratios;
//! - live: publish → receipt latency at a steady rate, the engine vs a bare
//!   producer → consumer pair, on the mock cluster with the shipped defaults;
//! - pipeline: an in-memory source (no broker on the data path) → institution
//!   sessions → gRPC subscribers over loopback with acks on, vs the same
//!   notifications pushed through a bare tonic stream to the same clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpn_benches::*;
use mpn_engine::{Engine, IngestStart};
use mpn_kafka::MockBroker;
use mpn_proto::mpn::notify::v1 as notify;
use mpn_proto::mpn::v1 as pb;
use mpn_sim::subscriber::{Login, Subscriber};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The allocator the `mpn-notify` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// RSS with many idle sessions: first one institution gets `n` events (baseline),
/// then `n` institutions get one event each; the difference is the sessions.
async fn memory() {
    let n = env_usize("MPN_BENCH_SESSIONS", 100_000);
    let broker = MockBroker::start(1).unwrap();
    let mut config = base_config(broker.bootstrap_servers());
    config.kafka.topic_partitions = 4;
    broker.create_engine_topics(&config.kafka, 4).unwrap();
    let engine = Engine::start(config.clone(), IngestStart::Manual)
        .await
        .unwrap();
    engine.open_ingest();
    let producer: FutureProducer = config.kafka.producer().create().unwrap();
    let wait_consumed = |total: i64| {
        let tracker = engine.tracker().clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let consumed: i64 = (0..4).filter_map(|p| tracker.consumed_next(p)).sum();
                if consumed >= total && tracker.in_flight() == 0 {
                    return;
                }
                assert!(Instant::now() < deadline, "consumed {consumed} of {total}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let one = code(0);
    publish(
        &producer,
        &config.kafka.input_topic,
        (0..n as u64).map(|s| event(&one, s)),
    )
    .await;
    wait_consumed(n as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = rss_kib();
    publish(
        &producer,
        &config.kafka.input_topic,
        (0..n).map(|i| event(&code(i + 1), i as u64)),
    )
    .await;
    wait_consumed(2 * n as i64).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let with_sessions = rss_kib();
    let per = (with_sessions.saturating_sub(base) * 1024) as f64 / n as f64;
    println!("\n### Memory: idle institution sessions (mock cluster)\n");
    println!("| sessions | RSS, 1 session | RSS, {n} sessions | bytes per idle session | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| {n} | {:.0} MiB | {:.0} MiB | {per:.0} | ≤ 2048 B per session, ≤ 512 MiB in all |",
        base as f64 / 1024.0,
        with_sessions as f64 / 1024.0
    );
    engine.shutdown().await;
}

/// Bare consumer vs engine on one pre-loaded Tansu topic.
async fn e2e() {
    let total = env_usize("MPN_BENCH_EVENTS", 1_000_000);
    let institutions = 1_000;
    let subscribers = 100;
    let tansu = Tansu::start();
    let mut config = base_config(&tansu.1);
    config.kafka.topic_partitions = 8;
    config.ingest.max_in_flight = 200_000;
    mpn_kafka::admin::ensure_topics(&config.kafka, Duration::from_secs(30))
        .await
        .unwrap();
    let producer: FutureProducer = config
        .kafka
        .producer()
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let started = Instant::now();
    publish(
        &producer,
        &config.kafka.input_topic,
        (0..total).map(|i| event(&code(i % institutions), i as u64)),
    )
    .await;
    let preload = started.elapsed();

    // (a) a bare consumer with the engine's consumer settings.
    let bare = {
        let mut c = config.kafka.consumer();
        c.set("group.id", "bench-bare")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = c.create().unwrap();
        consumer.subscribe(&[&config.kafka.input_topic]).unwrap();
        let start = Instant::now();
        let mut n = 0usize;
        while n < total {
            consumer.recv().await.unwrap();
            n += 1;
        }
        start.elapsed()
    };

    // The same 100 subscribers (10 institutions each) for (b) and (c), acks on.
    let codes: Vec<String> = (0..institutions).map(code).collect();
    config.credentials = (0..subscribers)
        .map(|s| {
            let grants: Vec<String> = codes.iter().skip(s * 10).take(10).cloned().collect();
            credential(&grants[0].clone(), &format!("sub-{s}"), grants)
        })
        .collect();
    let want = (total / institutions * 10) as u64;

    // (b) the limit of the parts: consumer → prost decode → tonic streams.
    let (minimal_n, minimal_time) = {
        let grants = config
            .credentials
            .iter()
            .map(|c| (c.login_id.clone(), c.grants.clone()))
            .collect();
        let routes = Arc::new(dashmap::DashMap::new());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(notify::notify_server::NotifyServer::new(Minimal {
                    grants: Arc::new(grants),
                    routes: routes.clone(),
                }))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let (tasks, received) = subscribe_all(&addr, &config, want).await;
        let mut c = config.kafka.consumer();
        c.set("group.id", "bench-minimal")
            .set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer = c.create().unwrap();
        consumer.subscribe(&[&config.kafka.input_topic]).unwrap();
        let start = Instant::now();
        for _ in 0..total {
            let m = consumer.recv().await.unwrap();
            let e = pb::PaymentEvent::decode(m.payload().unwrap_or_default()).unwrap();
            let n = minimal_notification(e, m.partition(), m.offset());
            let route = routes.get(&n.institution_code).map(|r| r.value().clone());
            if let Some(route) = route {
                let _ = route.send(n).await;
            }
        }
        for t in tasks {
            t.await.unwrap();
        }
        let took = start.elapsed();
        server.abort();
        (received.load(Ordering::Relaxed), took)
    };

    // (c) the engine.
    let engine = Engine::start(config.clone(), IngestStart::Manual)
        .await
        .unwrap();
    let addr = engine.grpc_addr().to_string();
    let (tasks, received) = subscribe_all(&addr, &config, want).await;
    let start = Instant::now();
    engine.open_ingest();
    for t in tasks {
        t.await.unwrap();
    }
    let engine_time = start.elapsed();
    let delivered = received.load(Ordering::Relaxed);
    engine.shutdown().await;
    let rate = |n: f64, d: Duration| n / d.as_secs_f64();
    let (a, b, c) = (
        rate(total as f64, bare),
        rate(minimal_n as f64, minimal_time),
        rate(delivered as f64, engine_time),
    );
    println!(
        "\n### End to end on Tansu (memory engine), {total} events, {institutions} institutions, {subscribers} subscribers\n"
    );
    println!(
        "Pre-load: {:.1} s ({:.0} events/s). Same consumer settings for all (`fetch.wait.max.ms` = {}); \
         (b) and (c) serve the same clients (10 institutions each, cumulative ack every 64).\n",
        preload.as_secs_f64(),
        rate(total as f64, preload),
        config.kafka.fetch_wait_max_ms
    );
    println!("| reader | records | time | records/s |");
    println!("|---|---|---|---|");
    println!(
        "| (a) bare rdkafka consumer | {total} | {:.2} s | {a:.0} |",
        bare.as_secs_f64()
    );
    println!(
        "| (b) minimal pipeline of the same parts: consumer → prost decode → tonic streams, acks read | {minimal_n} | {:.2} s | {b:.0} |",
        minimal_time.as_secs_f64()
    );
    println!(
        "| (c) engine → {subscribers} gRPC subscribers, acks on | {delivered} | {:.2} s | {c:.0} |",
        engine_time.as_secs_f64()
    );
    println!(
        "\nratio (c)/(b) = **{:.2}** (target ≥ 0.8), ratio (c)/(a) = **{:.2}** (target ≥ 0.4)",
        c / b,
        c / a
    );
    println!("\nE2E engine_rate={c:.0} minimal_rate={b:.0} bare_rate={a:.0}");
}

/// Connects the bench's subscribers (one per credential, every granted institution)
/// and counts what they receive; each task ends after `want` notifications.
async fn subscribe_all(
    addr: &str,
    config: &mpn_engine::config::Config,
    want: u64,
) -> (Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in &config.credentials {
        let login = Login {
            institution: c.institution.clone(),
            login_id: c.login_id.clone(),
            secret: SECRET.into(),
        };
        let mut sub = Subscriber::connect(addr, &login, &[], &c.login_id)
            .await
            .unwrap();
        let received = received.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            while got < want {
                let Ok(Some(m)) = sub.next().await else { break };
                got += 1;
                received.fetch_add(1, Ordering::Relaxed);
                if got.is_multiple_of(64) || got == want {
                    let _ = sub.ack(m.seq).await;
                }
            }
        }));
    }
    (tasks, received)
}

/// The notification the minimal pipeline sends: the event's fields moved over, as
/// the engine's sessions build it (without validation or canonical codes).
fn minimal_notification(e: pb::PaymentEvent, partition: i32, offset: i64) -> notify::Notification {
    notify::Notification {
        seq: 0,
        notification_id: format!("{}:PAYMENT", e.transaction_key),
        institution_code: e.institution_code,
        kind: e.kind,
        transaction_key: e.transaction_key,
        customer_number: e.customer_number,
        amount: e.amount,
        bank_code: e.bank_code,
        branch_code: e.branch_code,
        channel: e.channel,
        collection_method: e.collection_method,
        paid_at: e.paid_at,
        published_at_us: e.published_at_us,
        source_partition: partition,
        source_offset: offset,
        ..Default::default()
    }
}

/// The minimal pipeline's gRPC side: each subscriber's stream is fed through a
/// bounded channel by the consumer loop (institution → stream), numbered as it
/// goes out; its acknowledgements are read and dropped.
struct Minimal {
    /// Login id → granted institutions.
    grants: Arc<std::collections::HashMap<String, Vec<String>>>,
    routes: Arc<dashmap::DashMap<String, tokio::sync::mpsc::Sender<notify::Notification>>>,
}

#[tonic::async_trait]
impl notify::notify_server::Notify for Minimal {
    async fn authenticate(
        &self,
        _: tonic::Request<notify::AuthenticateRequest>,
    ) -> Result<tonic::Response<notify::AuthenticateResponse>, tonic::Status> {
        Ok(tonic::Response::new(notify::AuthenticateResponse::default()))
    }

    type SubscribeStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<notify::ServerMessage, tonic::Status>> + Send>,
    >;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<notify::ClientMessage>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        use futures::StreamExt as _;
        let login = request
            .metadata()
            .get("mpn-login-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        for i in self.grants.get(&login).into_iter().flatten() {
            self.routes.insert(i.clone(), tx.clone());
        }
        let first = notify::ServerMessage {
            message: Some(notify::server_message::Message::Subscribed(
                notify::Subscribed::default(),
            )),
        };
        let mut seq = 0;
        let notifications = tokio_stream::wrappers::ReceiverStream::new(rx).map(
            move |mut n: notify::Notification| {
                seq += 1;
                n.seq = seq;
                notify::ServerMessage {
                    message: Some(notify::server_message::Message::Notification(n)),
                }
            },
        );
        let stream = futures::stream::iter(std::iter::once(first))
            .chain(notifications)
            .map(Ok);
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Latency at a steady rate: engine vs a bare producer → consumer pair.
/// Latency at each rate of `MPN_BENCH_RATES` (2,000 and 20,000 events/s).
async fn live() {
    for rate in env_list("MPN_BENCH_RATES", "2000,20000") {
        live_at(rate).await;
    }
}

async fn live_at(rate: usize) {
    let seconds = env_usize("MPN_BENCH_SECONDS", 30);
    let broker = MockBroker::start(1).unwrap();
    let mut config = base_config(broker.bootstrap_servers());
    broker.create_engine_topics(&config.kafka, 8).unwrap();
    broker.create_topic("bench.bare", 8).unwrap();
    let inst = code(1);
    config.credentials = vec![credential(&inst, "billing", vec![])];
    let engine = Engine::start(config.clone(), IngestStart::Manual)
        .await
        .unwrap();
    engine.open_ingest();
    let login = Login {
        institution: inst.clone(),
        login_id: "billing".into(),
        secret: SECRET.into(),
    };
    let mut sub = Subscriber::connect(&engine.grpc_addr().to_string(), &login, &[], "bench")
        .await
        .unwrap();
    let mut bare_cfg = config.kafka.consumer();
    bare_cfg
        .set("group.id", "bench-live-bare")
        .set("auto.offset.reset", "latest");
    let bare: StreamConsumer = bare_cfg.create().unwrap();
    bare.subscribe(&["bench.bare"]).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await; // let both consumers get partitions
    let total = rate * seconds;
    let engine_lat = tokio::spawn(async move {
        let mut v = Vec::with_capacity(total);
        while v.len() < total {
            let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await
            else {
                break;
            };
            v.push((chrono::Utc::now().timestamp_micros() - m.published_at_us) as f64 / 1000.0);
            let _ = sub.ack(m.seq).await;
        }
        v
    });
    let bare_lat = tokio::spawn(async move {
        let mut v = Vec::with_capacity(total);
        while v.len() < total {
            let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(30), bare.recv()).await else {
                break;
            };
            let e = pb::PaymentEvent::decode(m.payload().unwrap_or_default()).unwrap();
            v.push((chrono::Utc::now().timestamp_micros() - e.published_at_us) as f64 / 1000.0);
        }
        v
    });
    let producer: FutureProducer = config
        .kafka
        .producer()
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let mut interval = tokio::time::interval(tick);
    let mut serial = 0u64;
    let mut pending = Vec::new();
    for _ in 0..(seconds * 100) {
        interval.tick().await;
        for _ in 0..per_tick {
            serial += 1;
            for topic in [config.kafka.input_topic.as_str(), "bench.bare"] {
                let e = event(&inst, serial);
                let p = producer.clone();
                let topic = topic.to_owned();
                pending.push(tokio::spawn(async move {
                    let payload = e.encode_to_vec();
                    p.send(
                        FutureRecord::to(&topic)
                            .key(&e.institution_code)
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
                }));
            }
        }
        if pending.len() > 10_000 {
            for p in pending.drain(..) {
                p.await.unwrap().unwrap();
            }
        }
    }
    for p in pending {
        p.await.unwrap().unwrap();
    }
    let (e, b) = (engine_lat.await.unwrap(), bare_lat.await.unwrap());
    let (ne, nb) = (e.len(), b.len());
    let (pe, pb_) = (percentiles(e), percentiles(b));
    println!(
        "\n### Live latency on the mock cluster, shipped defaults, {rate} events/s for {seconds} s\n"
    );
    println!("| path | received | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| bare producer → consumer | {nb} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        pb_[0], pb_[1], pb_[2], pb_[3]
    );
    println!(
        "| producer → engine → gRPC subscriber | {ne} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        pe[0], pe[1], pe[2], pe[3]
    );
    let target = if rate <= 2_000 { 1 } else { 2 };
    println!(
        "\nengine adds {:.2} ms at p50 and {:.2} ms at p99 (target: ≤ {target} ms added at p99)",
        pe[0] - pb_[0],
        pe[1] - pb_[1]
    );
    println!(
        "\nLIVE rate={rate} added_p99_ms={:.3} engine_p99_ms={:.3}",
        pe[1] - pb_[1],
        pe[1]
    );
    engine.shutdown().await;
}

/// A bare tonic implementation of `mpn.notify.v1.Notify`: every subscriber gets the
/// same pre-built notifications, no sessions, no queues, acks ignored.
struct Bare(Arc<Vec<notify::ServerMessage>>);

#[tonic::async_trait]
impl notify::notify_server::Notify for Bare {
    async fn authenticate(
        &self,
        _: tonic::Request<notify::AuthenticateRequest>,
    ) -> Result<tonic::Response<notify::AuthenticateResponse>, tonic::Status> {
        Ok(tonic::Response::new(notify::AuthenticateResponse::default()))
    }

    type SubscribeStream = std::pin::Pin<
        Box<dyn futures::Stream<Item = Result<notify::ServerMessage, tonic::Status>> + Send>,
    >;

    async fn subscribe(
        &self,
        request: tonic::Request<tonic::Streaming<notify::ClientMessage>>,
    ) -> Result<tonic::Response<Self::SubscribeStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        tokio::spawn(async move { while let Ok(Some(_)) = inbound.message().await {} });
        let first = notify::ServerMessage {
            message: Some(notify::server_message::Message::Subscribed(
                notify::Subscribed::default(),
            )),
        };
        let all = self.0.clone();
        let stream = futures::stream::iter(
            std::iter::once(first)
                .chain((0..all.len()).map(move |i| all[i].clone()))
                .map(Ok),
        );
        Ok(tonic::Response::new(Box::pin(stream)))
    }
}

/// Sessions → gRPC with an in-memory source, against a bare tonic stream.
async fn pipeline() {
    let per_subscriber = env_usize("MPN_BENCH_PIPELINE", 200_000);
    let subscribers = 4;
    // A broker only for the engine's cursor store and dead-letter writer; nothing on
    // the measured path touches it (the sessions are fed from memory).
    let broker = MockBroker::start(1).unwrap();
    let mut config = base_config(broker.bootstrap_servers());
    broker.create_engine_topics(&config.kafka, 1).unwrap();
    let codes: Vec<String> = (0..subscribers).map(code).collect();
    config.credentials = codes
        .iter()
        .map(|c| credential(c, "billing", vec![]))
        .collect();
    // Flow control as ingest does it (`ingest.max_in_flight`), sized so the
    // subscriber queues (`grpc.queue_capacity`) never overflow.
    config.ingest.max_in_flight = config.grpc.queue_capacity / 2;
    config.sessions.threads = 2;
    let mut engine = Engine::builder(config.clone())
        .memory_source()
        .start()
        .await
        .unwrap();
    let mut source = engine
        .take_memory_source()
        .expect("built with a memory source");
    let addr = engine.grpc_addr().to_string();

    // The same notifications for both paths.
    let events: Vec<(mpn_engine::domain::Event, i64)> = (0..per_subscriber * subscribers)
        .map(|i| {
            let e = event(&codes[i % subscribers], i as u64);
            (mpn_engine::domain::Event::validate(&e).unwrap(), i as i64)
        })
        .collect();

    let receive_all = |addr: String| {
        let codes = codes.clone();
        async move {
            let mut tasks = Vec::new();
            for c in &codes {
                let login = Login {
                    institution: c.clone(),
                    login_id: "billing".into(),
                    secret: SECRET.into(),
                };
                let mut sub = Subscriber::connect(&addr, &login, &[], "bench")
                    .await
                    .unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut got = 0;
                    while got < per_subscriber {
                        let Ok(Some(m)) = sub.next().await else { break };
                        got += 1;
                        if got % 64 == 0 {
                            let _ = sub.ack(m.seq).await;
                        }
                    }
                    got
                }));
            }
            tasks
        }
    };

    // (a) bare tonic; left out with `MPN_BENCH_ENGINE_ONLY` (callgrind counts the
    // engine's instructions per notification on their own).
    let engine_only = std::env::var_os("MPN_BENCH_ENGINE_ONLY").is_some();
    let (bare_n, bare_t) = if engine_only {
        (0, Duration::from_secs(1))
    } else {
        let bare_msgs: Arc<Vec<notify::ServerMessage>> = Arc::new(
            events
                .iter()
                .filter(|(e, _)| e.institution.as_str() == codes[0])
                .map(|(e, o)| notify::ServerMessage {
                    message: Some(notify::server_message::Message::Notification(
                        e.to_notification(0, *o),
                    )),
                })
                .collect(),
        );
        let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let bare_addr = bare_listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(notify::notify_server::NotifyServer::new(Bare(bare_msgs)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                    bare_listener,
                )),
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = Instant::now();
        let tasks = receive_all(bare_addr).await;
        let mut bare_n = 0;
        for t in tasks {
            bare_n += t.await.unwrap();
        }
        let bare_t = start.elapsed();
        (bare_n, bare_t)
    };

    // (b) the engine's sessions and gRPC service, fed from memory; left out with
    // `MPN_BENCH_BARE_ONLY` (callgrind counts the bare half on its own).
    let (engine_n, engine_t) = if std::env::var_os("MPN_BENCH_BARE_ONLY").is_some() {
        (0, Duration::from_secs(1))
    } else {
        let tasks = receive_all(addr).await;
        let start = Instant::now();
        for (e, o) in events {
            source.send(e, 0, o).await;
        }
        let mut engine_n = 0;
        for t in tasks {
            engine_n += t.await.unwrap();
        }
        (engine_n, start.elapsed())
    };
    drop(source);
    engine.shutdown().await;
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64();
    let (a, b) = (rate(bare_n, bare_t), rate(engine_n, engine_t));
    println!(
        "\n### Pipeline capacity: in-memory source → sessions → {subscribers} gRPC subscribers (loopback, acks on)\n"
    );
    println!("| path | notifications | time | notifications/s |");
    println!("|---|---|---|---|");
    println!(
        "| (a) bare tonic stream, same messages, same clients | {bare_n} | {:.2} s | {a:.0} |",
        bare_t.as_secs_f64()
    );
    println!(
        "| (b) sessions → subscriber queues → gRPC service | {engine_n} | {:.2} s | {b:.0} |",
        engine_t.as_secs_f64()
    );
    println!("\nratio (b)/(a) = **{:.2}** (target ≥ 0.6)", b / a);
    println!("\nPIPELINE engine_rate={b:.0} bare_rate={a:.0} notifications={engine_n}");
}

fn main() {
    // `cargo bench` passes `--bench`; criterion-style filters are not used here.
    let parts: Vec<String> = std::env::var("MPN_BENCH")
        .unwrap_or_else(|_| "memory,pipeline,e2e,live".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    mpn_engine::telemetry::init_logging(mpn_engine::config::LogFormat::Human, "error");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for p in &parts {
            match p.as_str() {
                "memory" => memory().await,
                "e2e" => e2e().await,
                "live" => live().await,
                "pipeline" => pipeline().await,
                other => eprintln!("unknown part {other:?} (memory, e2e, live)"),
            }
        }
    });
}
