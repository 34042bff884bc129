//! Scale benchmarks: how delivery rate, latency and memory move with the number of
//! subscribers and institutions, and how fast a durable subscriber catches up.
//! Prints markdown tables and one `CURVE ...` line per point (collected, and
//! plotted, by `scripts/bench`). Select parts with `MPN_BENCH=subscribers,
//! institutions,catchup` (default: all).
//!
//! - subscribers: one institution, 1..10,000 concurrent gRPC subscribers to it. The
//!   engine runs in this process, fed from memory (no broker on the data path); the
//!   subscribers run in a second process (this binary again, `MPN_BENCH_CHILD`), so
//!   this process's RSS is the engine's. Reports delivery rate, publish → receipt
//!   latency, RSS per idle subscriber stream and a burst of one event to all of them.
//! - institutions: 10, 1,000 and 100,000 institutions over 4 subscribers, same set-up.
//! - catchup: a durable subscriber reconnects after 1,000,000 events (mock cluster, or
//!   Tansu with `MPN_BENCH_CATCHUP_BROKER=tansu`): its catch-up rate and the time
//!   until an event published at reconnect arrives.

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mpn_benches::*;
use mpn_engine::Engine;
use mpn_kafka::MockBroker;
use mpn_proto::mpn::notify::v1 as notify;
use mpn_sim::subscriber::{Login, Subscriber};

/// The allocator the `mpn-notify` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// What one run of the client process saw.
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    /// Publish → receipt, ms: p50, p99, p99.9, max.
    latency: [f64; 4],
}

/// The subscribers of one run, in a child process: `(institution, login)` each.
struct Clients {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Clients {
    /// Starts the client process and waits until every subscriber is attached.
    fn start(addr: &str, logins: &[(String, String, u64)]) -> Self {
        let list = logins
            .iter()
            .map(|(i, l, want)| format!("{i} {l} {want}"))
            .collect::<Vec<_>>()
            .join("\n");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("MPN_BENCH_CHILD", "1")
            .env("MPN_CHILD_ADDR", addr)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(list.as_bytes()).unwrap();
        drop(stdin);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = lines.next().expect("the client process answers").unwrap();
        assert_eq!(ready, "ready", "client process: {ready}");
        Self { child, lines }
    }

    /// Waits until every subscriber has received what it wants.
    fn finish(mut self) -> Seen {
        let line = self
            .lines
            .next()
            .expect("the client process reports")
            .unwrap();
        let _ = self.child.wait();
        let f: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect();
        Seen {
            received: f[0] as u64,
            latency: [f[1], f[2], f[3], f[4]],
        }
    }
}

/// The client process: attaches the subscribers read from stdin (`institution login
/// notifications`), says `ready`, then receives until each has its notifications and
/// prints
/// `done <received> <p50> <p99> <p99.9> <max>` (latency in ms).
async fn child() {
    let addr = std::env::var("MPN_CHILD_ADDR").unwrap();
    let logins: Vec<(String, String, u64)> = std::io::stdin()
        .lines()
        .map(|l| {
            let l = l.unwrap();
            let mut f = l.split(' ');
            let (i, login, want) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
            (i.to_owned(), login.to_owned(), want.parse().unwrap())
        })
        .collect();
    // Many streams share one HTTP/2 connection, as a gateway's clients would.
    let per_connection = 50;
    let mut channels = Vec::new();
    for _ in 0..logins.len().div_ceil(per_connection) {
        channels.push(
            tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        );
    }
    let received = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let attach = Arc::new(tokio::sync::Semaphore::new(32));
    let mut attached = Vec::new();
    for (n, (institution, login_id, want)) in logins.into_iter().enumerate() {
        let channel = channels[n / per_connection].clone();
        let permit = attach.clone().acquire_owned().await.unwrap();
        attached.push(tokio::spawn(async move {
            let login = Login {
                institution,
                login_id,
                secret: SECRET.into(),
            };
            let request = notify::SubscribeRequest {
                subscriber_name: format!("scale-{n}"),
                ..Default::default()
            };
            let sub = Subscriber::open_on(channel, Some(&login), request)
                .await
                .unwrap();
            drop(permit);
            (sub, want)
        }));
    }
    let mut subs = Vec::new();
    for a in attached {
        subs.push(a.await.unwrap());
    }
    println!("ready");
    let mut tasks = Vec::new();
    for (mut sub, want) in subs {
        let (received, latencies) = (received.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = 0u64;
            let mut mine = Vec::with_capacity(want as usize);
            while got < want {
                let Ok(Some(m)) = sub.next().await else { break };
                mine.push((now_us() - m.published_at_us) as f64 / 1e3);
                got += 1;
                if got.is_multiple_of(64) || got == want {
                    let _ = sub.ack(m.seq).await;
                }
            }
            received.fetch_add(got, Ordering::Relaxed);
            latencies.lock().unwrap().extend(mine);
            sub
        }));
    }
    let mut subs = Vec::new();
    for t in tasks {
        subs.push(t.await.unwrap());
    }
    let l = percentiles(std::mem::take(&mut *latencies.lock().unwrap()));
    println!(
        "done {} {} {} {} {}",
        received.load(Ordering::Relaxed),
        l[0],
        l[1],
        l[2],
        l[3]
    );
    drop(subs);
}

/// One measured point: an engine fed from memory, the given subscribers in the
/// client process, `events` events spread round-robin over `institutions`.
struct Point {
    /// `(institution, login, notifications it receives)` per subscriber.
    logins: Vec<(String, String, u64)>,
    institutions: Vec<String>,
    events: usize,
}

struct Measured {
    seen: Seen,
    took: Duration,
    /// RSS growth per attached idle subscriber, bytes.
    rss_per_subscriber: f64,
}

async fn run(point: Point, credentials: Vec<mpn_engine::config::CredentialConfig>) -> Measured {
    let broker = MockBroker::start(1).unwrap();
    let mut config = base_config(broker.bootstrap_servers());
    broker.create_engine_topics(&config.kafka, 1).unwrap();
    config.credentials = credentials;
    config.grpc.max_streams_per_credential = 20_000;
    config.grpc.max_pending_logins = 20_000;
    config.ingest.max_in_flight = config.grpc.queue_capacity / 2;
    config.sessions.threads = 2;
    let mut engine = Engine::builder(config.clone())
        .memory_source()
        .start()
        .await
        .unwrap();
    let mut source = engine.take_memory_source().unwrap();
    let addr = engine.grpc_addr().to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib();
    let clients = tokio::task::spawn_blocking({
        let (addr, logins) = (addr.clone(), point.logins.clone());
        move || Clients::start(&addr, &logins)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let attached = rss_kib();
    let rss_per_subscriber =
        (attached.saturating_sub(before) * 1024) as f64 / point.logins.len() as f64;
    let start = Instant::now();
    let codes = point.institutions;
    for i in 0..point.events {
        let e = event(&codes[i % codes.len()], i as u64);
        let e = mpn_engine::domain::Event::validate(&e).unwrap();
        source.send(e, 0, i as i64).await;
    }
    let seen = tokio::task::spawn_blocking(move || clients.finish())
        .await
        .unwrap();
    let took = start.elapsed();
    drop(source);
    engine.shutdown().await;
    Measured {
        seen,
        took,
        rss_per_subscriber,
    }
}

async fn subscribers() {
    let sizes = env_list("MPN_BENCH_SUBSCRIBERS", "1,10,100,1000,10000");
    let deliveries = env_usize("MPN_BENCH_DELIVERIES", 400_000);
    let one = code(0);
    let credentials = vec![credential(&one, "billing", vec![])];
    let logins = |n: usize, want: u64| vec![(one.clone(), "billing".to_owned(), want); n];
    let largest = sizes.iter().copied().max().unwrap_or(1);

    println!(
        "\n### Scale: subscribers of one institution (engine fed from memory, clients in a second process)\n"
    );
    // A burst of one event to every subscriber of the largest set, attached idle
    // first: RSS per idle stream and the burst's latency.
    let burst = run(
        Point {
            logins: logins(largest, 1),
            institutions: vec![one.clone()],
            events: 1,
        },
        credentials.clone(),
    )
    .await;
    println!(
        "Idle streams: {largest} subscribers add **{:.1} KiB** RSS each to the engine process (target ≤ 16 KiB).\n",
        burst.rss_per_subscriber / 1024.0
    );
    println!(
        "Burst: one event to all {largest}: delivered {} in {:.1} ms, p50 {:.1} ms, **p99 {:.1} ms** (target ≤ 100 ms), max {:.1} ms.\n",
        burst.seen.received,
        burst.took.as_secs_f64() * 1e3,
        burst.seen.latency[0],
        burst.seen.latency[1],
        burst.seen.latency[3]
    );
    println!(
        "BURST subscribers={largest} rss_kib_per_subscriber={:.2} p99_ms={:.2}",
        burst.rss_per_subscriber / 1024.0,
        burst.seen.latency[1]
    );
    println!("\n| subscribers | events | notifications | time | notifications/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let events = (deliveries / n).max(1);
        let m = run(
            Point {
                logins: logins(n, events as u64),
                institutions: vec![one.clone()],
                events,
            },
            credentials.clone(),
        )
        .await;
        let rate = m.seen.received as f64 / m.took.as_secs_f64();
        println!(
            "| {n} | {events} | {} | {:.2} s | {rate:.0} | {:.1} ms | {:.1} ms |",
            m.seen.received,
            m.took.as_secs_f64(),
            m.seen.latency[0],
            m.seen.latency[1],
        );
        eprintln!(
            "CURVE subscribers x={n} rate={rate:.0} p99_ms={:.3}",
            m.seen.latency[1]
        );
    }
}

async fn institutions() {
    let sizes = env_list("MPN_BENCH_INSTITUTIONS", "10,1000,100000");
    let events = env_usize("MPN_BENCH_DELIVERIES", 400_000);
    let subscribers = 4;
    println!(
        "\n### Scale: institutions over {subscribers} subscribers (engine fed from memory, clients in a second process)\n"
    );
    println!("| institutions | events | notifications | time | notifications/s | p50 | p99 |");
    println!("|---|---|---|---|---|---|---|");
    for &k in &sizes {
        let codes: Vec<String> = (0..k).map(code).collect();
        // Subscriber s is granted every `subscribers`-th institution from s.
        let grants: Vec<Vec<String>> = (0..subscribers)
            .map(|s| codes.iter().skip(s).step_by(subscribers).cloned().collect())
            .collect();
        let credentials = grants
            .iter()
            .enumerate()
            .map(|(s, g)| credential(&g[0], &format!("sub-{s}"), g.clone()))
            .collect();
        // Event i goes to institution i % k, granted to subscriber (i % k) % 4.
        let logins = grants
            .iter()
            .enumerate()
            .map(|(s, g)| {
                let want = (0..events).filter(|i| (i % k) % subscribers == s).count();
                (g[0].clone(), format!("sub-{s}"), want as u64)
            })
            .collect();
        let m = run(
            Point {
                logins,
                institutions: codes,
                events,
            },
            credentials,
        )
        .await;
        let rate = m.seen.received as f64 / m.took.as_secs_f64();
        println!(
            "| {k} | {events} | {} | {:.2} s | {rate:.0} | {:.1} ms | {:.1} ms |",
            m.seen.received,
            m.took.as_secs_f64(),
            m.seen.latency[0],
            m.seen.latency[1]
        );
        eprintln!(
            "CURVE institutions x={k} rate={rate:.0} p99_ms={:.3}",
            m.seen.latency[1]
        );
    }
}

/// A durable subscriber reconnects after `MPN_BENCH_CATCHUP` events (1,000,000) were
/// written while it was away.
async fn catchup() {
    let total = env_usize("MPN_BENCH_CATCHUP", 1_000_000);
    let institutions = 1_000;
    // The mock cluster keeps 5 MB per partition: 64 partitions hold the backlog.
    let partitions: i32 = 64;
    // The mock cluster answers a fetch as Kafka does, from the record batch holding
    // the offset asked for. Tansu (`MPN_BENCH_CATCHUP_BROKER=tansu`) answers from the
    // next batch boundary, which the reader works around by assigning again from
    // earlier, a few times per partition: a cost of the test broker, not of reading.
    let on_tansu = std::env::var("MPN_BENCH_CATCHUP_BROKER").is_ok_and(|b| b == "tansu");
    let (_tansu, _mock, mut config) = if on_tansu {
        let tansu = Tansu::start();
        let config = base_config(&tansu.1);
        (Some(tansu), None, config)
    } else {
        let mock = MockBroker::start(1).unwrap();
        let config = base_config(mock.bootstrap_servers());
        (None, Some(mock), config)
    };
    config.kafka.topic_partitions = partitions;
    config.ingest.max_in_flight = 200_000;
    match &_mock {
        Some(mock) => mock
            .create_engine_topics(&config.kafka, partitions)
            .unwrap(),
        None => mpn_kafka::admin::ensure_topics(&config.kafka, Duration::from_secs(30))
            .await
            .unwrap(),
    }
    let codes: Vec<String> = (0..institutions).map(code).collect();
    config.credentials = vec![credential(&codes[0], "billing", codes.clone())];
    let engine = Engine::start(config.clone(), mpn_engine::IngestStart::Manual)
        .await
        .unwrap();
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let login = Login {
        institution: codes[0].clone(),
        login_id: "billing".into(),
        secret: SECRET.into(),
    };
    // Attached once, so its cursor exists; then away while the events arrive.
    let first = Subscriber::durable(&addr, &login, &[], "catchup", notify::StartFrom::Now)
        .await
        .unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let producer: rdkafka::producer::FutureProducer = config
        .kafka
        .producer()
        .set("linger.ms", "20")
        .create()
        .unwrap();
    publish(
        &producer,
        &config.kafka.input_topic,
        (0..total).map(|i| event(&codes[i % institutions], i as u64)),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while (0..partitions)
        .filter_map(|p| engine.tracker().consumed_next(p))
        .sum::<i64>()
        < total as i64
        || engine.tracker().in_flight() > 0
    {
        assert!(
            Instant::now() < deadline,
            "the engine did not consume the backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Reconnect; an event published now arrives once the backlog is through.
    let start = Instant::now();
    let mut sub = Subscriber::durable(&addr, &login, &[], "catchup", notify::StartFrom::Cursor)
        .await
        .unwrap();
    publish(
        &producer,
        &config.kafka.input_topic,
        std::iter::once(event(&codes[0], total as u64)),
    )
    .await;
    let mut got = 0usize;
    let mut caught_up = None;
    let mut first = Duration::ZERO;
    while got <= total {
        let m = tokio::time::timeout(Duration::from_secs(120), sub.next())
            .await
            .expect("catch-up stalled")
            .unwrap()
            .unwrap();
        got += 1;
        if got == 1 {
            first = start.elapsed();
        }
        if got == total {
            caught_up = Some(start.elapsed());
        }
        if got.is_multiple_of(64) || got > total {
            sub.ack(m.seq).await.unwrap();
        }
    }
    let live = start.elapsed();
    let caught_up = caught_up.unwrap_or(live);
    engine.shutdown().await;
    let rate = total as f64 / caught_up.as_secs_f64();
    println!(
        "\n### Catch-up on {}: a durable subscriber reconnects after {total} events\n",
        if on_tansu {
            "Tansu"
        } else {
            "the mock cluster"
        }
    );
    println!(
        "| backlog | caught up in | notifications/s | event published at reconnect arrived after |"
    );
    println!("|---|---|---|---|");
    println!(
        "| {total} | {:.2} s | **{rate:.0}** (target ≥ 200000) | {:.2} s |",
        caught_up.as_secs_f64(),
        live.as_secs_f64()
    );
    println!(
        "\nThe first notification arrived {:.0} ms after the reconnect.",
        first.as_secs_f64() * 1e3
    );
    println!("CATCHUP rate={rate:.0}");
}

fn main() {
    if std::env::var_os("MPN_BENCH_CHILD").is_some() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(child());
        return;
    }
    let parts: Vec<String> = std::env::var("MPN_BENCH")
        .unwrap_or_else(|_| "subscribers,institutions,catchup".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    mpn_engine::telemetry::init_logging(
        mpn_engine::config::LogFormat::Human,
        &std::env::var("MPN_BENCH_LOG").unwrap_or_else(|_| "error".into()),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for p in &parts {
            match p.as_str() {
                "subscribers" => subscribers().await,
                "institutions" => institutions().await,
                "catchup" => catchup().await,
                other => eprintln!("unknown part {other:?} (subscribers, institutions, catchup)"),
            }
        }
    });
}
