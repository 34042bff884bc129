//! Peer benchmark: NATS JetStream doing mpn-notify's end-to-end job.
//!
//! The engine's system bench (`benches/benches/system.rs`, parts `e2e` and `live`)
//! pre-loads payment events for 1000 institutions into a broker and measures how fast
//! the engine delivers them to 100 subscribers (10 institutions each) that acknowledge
//! what they receive, then measures publish → receipt latency at a steady rate. This
//! program does the same job with JetStream as the broker *and* the fan-out, so the two
//! figures can be read side by side:
//!
//! - the same events: protobuf `PaymentEvent`s with the engine bench's field values
//!   (≈ 130 bytes), round-robin over institutions `10000000`..`10000999`, each
//!   published to `mpn.payments.<institution_code>` in one stream (memory storage,
//!   as the engine bench's Tansu; `MPN_JETSTREAM_STORAGE=file` for file storage);
//! - the same fan-out: subscriber `s` is granted institutions `s*10 .. s*10+10` and is
//!   one durable push consumer with explicit acks, each message acked individually
//!   (on nats-server < 2.10, which has no `filter_subjects`, ten single-filter
//!   consumers per subscriber, see [`Topology`]);
//! - the same modes: `drain` (N pre-loaded events, time until all are received and
//!   acked, like `e2e`) and `live` (R events/s for S seconds, latency from the
//!   `published_at_us` carried in the payload, like `live`).
//!
//! The server, this client and its 100 subscriber connections share the machine, as
//! the engine and its subscribers do in the engine bench.
//!
//! Usage: `jetstream-peer [--url nats://127.0.0.1:4222] [--modes drain,live]`, with
//! `MPN_BENCH_EVENTS` (drain, default 1,000,000), `MPN_BENCH_RATE` (live, default
//! 2000/s), `MPN_BENCH_SECONDS` (live, default 30) and `MPN_BENCH_MAX_ACK_PENDING`
//! (per subscriber, default 1000).

use std::collections::VecDeque;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PushConsumer, push};
use async_nats::jetstream::{self, Context, stream};
use async_nats::{Client, ConnectOptions};
use futures_util::StreamExt;
use prost::Message as _;

type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;

const STREAM: &str = "MPN_BENCH";
const INSTITUTIONS: usize = 1_000;
const SUBSCRIBERS: usize = 100;
/// Institutions granted to each subscriber.
const GRANTS: usize = INSTITUTIONS / SUBSCRIBERS;
/// Publish acks awaited in a pipeline this deep.
const PUBLISH_WINDOW: usize = 5_000;
/// How long `drain` waits for delivery before reporting what arrived.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `live` waits for stragglers after the last publish.
const LIVE_GRACE: Duration = Duration::from_secs(30);
/// How long to wait for the server to record every ack after the last receipt.
const ACK_CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

/// The payment event, field for field the values the engine bench publishes.
/// Field numbers follow `proto/mpn/v1/payment_event.proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct PaymentEvent {
    #[prost(string, tag = "1")]
    transaction_key: String,
    #[prost(int32, tag = "2")]
    kind: i32,
    #[prost(string, tag = "3")]
    institution_code: String,
    #[prost(string, tag = "4")]
    customer_number: String,
    #[prost(uint64, tag = "7")]
    amount: u64,
    #[prost(string, tag = "8")]
    bank_code: String,
    #[prost(string, tag = "9")]
    branch_code: String,
    #[prost(int32, tag = "10")]
    channel: i32,
    #[prost(int32, tag = "11")]
    collection_method: i32,
    #[prost(string, tag = "12")]
    paid_at: String,
    #[prost(int64, tag = "17")]
    published_at_us: i64,
}

fn code(institution: usize) -> String {
    format!("{:08}", 10_000_000 + institution)
}

fn subject(institution: usize) -> String {
    format!("mpn.payments.{}", code(institution))
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Event `serial` of the round-robin sequence, stamped now, encoded.
fn event(serial: usize) -> (String, bytes::Bytes) {
    let institution = serial % INSTITUTIONS;
    let code = code(institution);
    let serial = serial as u64;
    let e = PaymentEvent {
        transaction_key: format!("{:0>10}20260531{:08}", &code[..5], serial % 100_000_000),
        kind: 1,
        customer_number: format!("{serial:010}"),
        amount: 1_000 + serial % 10_000,
        bank_code: "0001".into(),
        branch_code: "123".into(),
        channel: 1,
        collection_method: 1,
        paid_at: "2026-05-31T10:15:00+09:00".into(),
        published_at_us: now_us(),
        institution_code: code,
    };
    (subject(institution), e.encode_to_vec().into())
}

/// How many of the first `total` round-robin events subscriber `s` is granted.
fn expected(total: usize, s: usize) -> usize {
    (s * GRANTS..(s + 1) * GRANTS)
        .map(|i| total / INSTITUTIONS + usize::from(i < total % INSTITUTIONS))
        .sum()
}

/// How a subscriber's ten institutions map onto JetStream consumers.
#[derive(Clone, Copy, PartialEq)]
enum Topology {
    /// nats-server ≥ 2.10: one consumer per subscriber, `filter_subjects` = its ten
    /// subjects.
    MultiFilter,
    /// nats-server < 2.10 ignores `filter_subjects` (the consumer would get every
    /// message), so each subscriber has one single-filter consumer per institution,
    /// with its ack window split evenly; the subscriber reads them all on one
    /// connection.
    PerInstitution,
}

impl Topology {
    fn for_server(version: &str) -> Self {
        let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        match (parts.next(), parts.next()) {
            (Some(major), Some(minor)) if (major, minor) >= (2, 10) => Self::MultiFilter,
            _ => Self::PerInstitution,
        }
    }

    fn consumers_per_subscriber(self) -> usize {
        match self {
            Self::MultiFilter => 1,
            Self::PerInstitution => GRANTS,
        }
    }

    fn describe(self, window: i64) -> String {
        match self {
            Self::MultiFilter => format!(
                "{SUBSCRIBERS} durable consumers ({GRANTS} institutions each, filter_subjects), \
                 max_ack_pending {window}"
            ),
            Self::PerInstitution => format!(
                "{} durable consumers ({GRANTS} per subscriber, one institution each: server \
                 has no filter_subjects), max_ack_pending {} each = {window} per subscriber",
                SUBSCRIBERS * GRANTS,
                window / GRANTS as i64
            ),
        }
    }
}

/// The deliver subject of subscriber `s`'s consumer `j` (0 for [`Topology::MultiFilter`]).
fn deliver_subject(s: usize, j: usize) -> String {
    format!("bench.deliver.sub-{s}.{j}")
}

/// Creates subscriber `s`'s durable push consumer(s); returns their names.
async fn create_consumers(
    js: &Context,
    s: usize,
    topology: Topology,
    window: i64,
) -> Result<Vec<String>> {
    let subjects: Vec<String> = (s * GRANTS..(s + 1) * GRANTS).map(subject).collect();
    let base = push::Config {
        ack_policy: AckPolicy::Explicit,
        deliver_policy: DeliverPolicy::All,
        ..Default::default()
    };
    let configs: Vec<push::Config> = match topology {
        Topology::MultiFilter => vec![push::Config {
            durable_name: Some(format!("sub-{s}")),
            deliver_subject: deliver_subject(s, 0),
            filter_subjects: subjects.clone(),
            max_ack_pending: window,
            ..base
        }],
        Topology::PerInstitution => subjects
            .iter()
            .enumerate()
            .map(|(j, subject)| push::Config {
                durable_name: Some(format!("sub-{s}-{j}")),
                deliver_subject: deliver_subject(s, j),
                filter_subject: subject.clone(),
                max_ack_pending: window / GRANTS as i64,
                ..base.clone()
            })
            .collect(),
    };
    let mut names = Vec::with_capacity(configs.len());
    for config in configs {
        let consumer: PushConsumer = js.create_consumer_on_stream(config, STREAM).await?;
        let info = consumer.cached_info();
        // A server that does not know a field drops it silently; never measure a
        // consumer that would deliver more than its subscriber is granted.
        if topology == Topology::MultiFilter && info.config.filter_subjects != subjects {
            return Err(format!("server ignored filter_subjects on consumer {}", info.name).into());
        }
        names.push(info.name.clone());
    }
    Ok(names)
}

/// What one subscriber saw.
struct Received {
    count: usize,
    /// Publish → receipt latencies in ms (filled in `live` only).
    latencies_ms: Vec<f64>,
}

/// One subscriber: reads its deliver subjects (`sub`, already subscribed), decodes
/// each event and acks it individually, until it has `expect` messages or `deadline`
/// passes.
async fn receive(
    client: Client,
    mut sub: impl futures_util::Stream<Item = async_nats::Message> + Unpin,
    expect: usize,
    deadline: tokio::time::Instant,
    measure_latency: bool,
    progress: Arc<AtomicUsize>,
) -> Result<Received> {
    let js = jetstream::new(client.clone());
    let mut received = Received {
        count: 0,
        latencies_ms: Vec::with_capacity(if measure_latency { expect } else { 0 }),
    };
    while received.count < expect {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, sub.next()).await else {
            break;
        };
        let event = PaymentEvent::decode(message.payload.clone())?;
        if measure_latency {
            received
                .latencies_ms
                .push((now_us() - event.published_at_us) as f64 / 1000.0);
        }
        jetstream::Message {
            message,
            context: js.clone(),
        }
        .ack()
        .await?;
        received.count += 1;
        progress.fetch_add(1, Ordering::Relaxed);
    }
    client.flush().await?; // the last acks are on the wire when the clock stops
    Ok(received)
}

/// Publishes round-robin events, keeping at most [`PUBLISH_WINDOW`] publish acks
/// outstanding (the oldest is awaited before the next publish).
struct Publisher {
    js: Context,
    pending: VecDeque<jetstream::context::PublishAckFuture>,
}

impl Publisher {
    async fn publish(&mut self, serial: usize) -> Result<()> {
        if self.pending.len() >= PUBLISH_WINDOW
            && let Some(ack) = self.pending.pop_front()
        {
            ack.await?;
        }
        let (subject, payload) = event(serial);
        self.pending
            .push_back(self.js.publish(subject, payload).await?);
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        while let Some(ack) = self.pending.pop_front() {
            ack.await?;
        }
        Ok(())
    }
}

/// Prints how many of `total` messages have arrived, every 10 s, until aborted.
async fn show_progress(mode: &'static str, progress: Arc<AtomicUsize>, total: usize) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(10)).await;
        eprintln!(
            "jetstream-peer: {mode}: {} of {total} received after {:.0} s",
            progress.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
    }
}

/// Connects, failing fast and clearly when the server is unreachable.
async fn connect(url: &str, name: &str) -> Result<Client> {
    ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}").into())
}

/// The stream's storage: `MPN_JETSTREAM_STORAGE=file|memory`, memory by default, as
/// the engine bench's Tansu runs on its memory storage engine.
fn storage() -> stream::StorageType {
    match std::env::var("MPN_JETSTREAM_STORAGE").as_deref() {
        Ok("file") => stream::StorageType::File,
        _ => stream::StorageType::Memory,
    }
}

/// Deletes (if present) and recreates the bench stream.
async fn recreate_stream(js: &Context) -> Result<()> {
    if js.get_stream(STREAM).await.is_ok() {
        js.delete_stream(STREAM).await?;
    }
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec!["mpn.payments.>".into()],
        storage: storage(),
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Shared settings and the admin connection.
struct Bench {
    url: String,
    client: Client,
    js: Context,
    topology: Topology,
    window: i64,
}

/// A consumer group attached and ready: subscriber connections and consumer names.
struct Attached {
    clients: Vec<Client>,
    consumers: Vec<String>,
    took: Duration,
}

impl Bench {
    /// Opens the subscriber connections and creates every consumer (not timed as
    /// delivery: a push consumer delivers nothing until its subscriber subscribes).
    async fn attach(&self) -> Result<Attached> {
        let started = Instant::now();
        let mut clients = Vec::with_capacity(SUBSCRIBERS);
        let mut creating = tokio::task::JoinSet::new();
        for s in 0..SUBSCRIBERS {
            clients.push(connect(&self.url, &format!("jetstream-peer-sub-{s}")).await?);
            let (js, topology, window) = (self.js.clone(), self.topology, self.window);
            creating.spawn(async move { create_consumers(&js, s, topology, window).await });
        }
        let mut consumers = Vec::new();
        while let Some(names) = creating.join_next().await {
            consumers.extend(names??);
        }
        Ok(Attached {
            clients,
            consumers,
            took: started.elapsed(),
        })
    }

    /// Subscribes every subscriber to its deliver subjects (which starts delivery) and
    /// spawns its receive loop, expecting its share of `total` events.
    async fn start_subscribers(
        &self,
        attached: &Attached,
        total: usize,
        deadline: tokio::time::Instant,
        measure_latency: bool,
        progress: &Arc<AtomicUsize>,
    ) -> Result<tokio::task::JoinSet<Result<Received>>> {
        let mut subscribers = tokio::task::JoinSet::new();
        for (s, client) in attached.clients.iter().enumerate() {
            // One subscription per deliver subject: nats-server 2.9 does not count a
            // wildcard subscription as interest in a push consumer's deliver subject.
            let mut subs = Vec::new();
            for j in 0..self.topology.consumers_per_subscriber() {
                subs.push(client.subscribe(deliver_subject(s, j)).await?);
            }
            let sub = futures_util::stream::select_all(subs);
            subscribers.spawn(receive(
                client.clone(),
                sub,
                expected(total, s),
                deadline,
                measure_latency,
                progress.clone(),
            ));
        }
        Ok(subscribers)
    }

    /// Waits until the server has recorded every ack; returns how long that took, or
    /// the number of acks still pending at the timeout.
    async fn confirm_acks(&self, consumers: &[String]) -> Result<Result<Duration, u64>> {
        let started = Instant::now();
        let stream = self.js.get_stream(STREAM).await?;
        loop {
            let mut outstanding = 0u64;
            for name in consumers {
                let info = stream.consumer_info(name).await?;
                outstanding += info.num_ack_pending as u64 + info.num_pending;
            }
            if outstanding == 0 {
                return Ok(Ok(started.elapsed()));
            }
            if started.elapsed() > ACK_CONFIRM_TIMEOUT {
                return Ok(Err(outstanding));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Pre-loads `total` events, then times delivery to the 100 subscribers.
    async fn drain(&self, total: usize, report: &mut Report) -> Result<()> {
        recreate_stream(&self.js).await?;
        let mut publisher = Publisher {
            js: self.js.clone(),
            pending: VecDeque::with_capacity(PUBLISH_WINDOW),
        };
        let started = Instant::now();
        for serial in 0..total {
            publisher.publish(serial).await?;
        }
        publisher.finish().await?;
        let preload = started.elapsed();
        let stored = self
            .js
            .get_stream(STREAM)
            .await?
            .info()
            .await?
            .state
            .clone();
        report.notes.push(format!(
            "drain: pre-loaded {total} events in {:.1} s ({:.0}/s, publish acks pipelined \
             {PUBLISH_WINDOW} deep); stream holds {} messages, {:.1} MB",
            preload.as_secs_f64(),
            total as f64 / preload.as_secs_f64(),
            stored.messages,
            stored.bytes as f64 / 1e6
        ));

        let attached = self.attach().await?;
        report.notes.push(format!(
            "drain: {} consumers created in {:.1} s (not in the delivery time)",
            attached.consumers.len(),
            attached.took.as_secs_f64()
        ));
        let progress = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        let mut subscribers = self
            .start_subscribers(&attached, total, deadline, false, &progress)
            .await?;
        let ticker = tokio::spawn(show_progress("drain", progress.clone(), total));
        let mut received = 0;
        while let Some(r) = subscribers.join_next().await {
            received += r??.count;
        }
        let took = started.elapsed();
        ticker.abort();
        match self.confirm_acks(&attached.consumers).await? {
            Ok(after) => report.notes.push(format!(
                "drain: server had recorded every ack {:.0} ms after the last receipt",
                after.as_secs_f64() * 1000.0
            )),
            Err(left) => report.notes.push(format!(
                "drain: server still had {left} messages unacked or undelivered after {} s",
                ACK_CONFIRM_TIMEOUT.as_secs()
            )),
        }
        let rate = total as f64 / took.as_secs_f64();
        if received < total {
            report.incomplete = true;
            report.notes.push(format!(
                "drain: INCOMPLETE, {received} of {total} received within {} s",
                DRAIN_TIMEOUT.as_secs()
            ));
        }
        report.rows.push(format!(
            "| drain {total} pre-loaded | {received} | {:.1} s | {:.0} | – | – | – | – |",
            took.as_secs_f64(),
            received as f64 / took.as_secs_f64()
        ));
        report
            .machine
            .push(format!("JETSTREAM drain rate={rate:.1}"));
        Ok(())
    }

    /// Publishes `rate` events/s for `seconds` s to attached consumers and measures
    /// publish → receipt latency.
    async fn live(&self, rate: usize, seconds: usize, report: &mut Report) -> Result<()> {
        recreate_stream(&self.js).await?;
        let attached = self.attach().await?;
        let total = rate * seconds;
        let progress = Arc::new(AtomicUsize::new(0));
        let far = tokio::time::Instant::now() + Duration::from_secs(seconds as u64) + LIVE_GRACE;
        let mut subscribers = self
            .start_subscribers(&attached, total, far, true, &progress)
            .await?;
        let ticker = tokio::spawn(show_progress("live", progress.clone(), total));
        // Let the SUBs reach the server before the first publish.
        for client in &attached.clients {
            client.flush().await?;
        }

        // Same pacing as the engine bench: a tick every 10 ms, rate/100 events a tick.
        let mut publisher = Publisher {
            js: self.js.clone(),
            pending: VecDeque::with_capacity(PUBLISH_WINDOW),
        };
        let per_tick = (rate / 100).max(1);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let started = Instant::now();
        let mut serial = 0;
        while serial < total {
            tick.tick().await;
            for _ in 0..per_tick.min(total - serial) {
                publisher.publish(serial).await?;
                serial += 1;
            }
        }
        publisher.finish().await?;
        let published_in = started.elapsed();

        let mut latencies = Vec::with_capacity(total);
        while let Some(r) = subscribers.join_next().await {
            latencies.extend(r??.latencies_ms);
        }
        ticker.abort();
        let received = latencies.len();
        if received < total {
            report.incomplete = true;
            report.notes.push(format!(
                "live: INCOMPLETE, {received} of {total} received within {} s of the last publish",
                LIVE_GRACE.as_secs()
            ));
        }
        let [p50, p99, p999, max] = percentiles(latencies);
        report.rows.push(format!(
            "| live {rate}/s for {seconds} s | {received} | {:.1} s | {:.0} | {p50:.2} ms | \
             {p99:.2} ms | {p999:.2} ms | {max:.2} ms |",
            published_in.as_secs_f64(),
            received as f64 / published_in.as_secs_f64()
        ));
        report
            .machine
            .push(format!("JETSTREAM live p50_ms={p50:.3} p99_ms={p99:.3}"));
        Ok(())
    }
}

/// p50, p99, p99.9 and max, picked the way the engine bench picks them.
fn percentiles(mut v: Vec<f64>) -> [f64; 4] {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| {
        v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    [
        at(0.5),
        at(0.99),
        at(0.999),
        v.last().copied().unwrap_or(0.0),
    ]
}

#[derive(Default)]
struct Report {
    rows: Vec<String>,
    notes: Vec<String>,
    machine: Vec<String>,
    incomplete: bool,
}

fn env_usize(name: &str, default: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .map_err(|_| format!("{name}={v:?} is not a whole number").into()),
        Err(_) => Ok(default),
    }
}

struct Args {
    url: String,
    modes: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        url: "nats://127.0.0.1:4222".into(),
        modes: vec!["drain".into(), "live".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => args.url = value,
            "--modes" => args.modes = value.split(',').map(str::to_owned).collect(),
            _ => {
                return Err(format!(
                    "unknown argument {flag}; usage: jetstream-peer [--url URL] [--modes drain,live]"
                )
                .into());
            }
        }
    }
    if let Some(m) = args
        .modes
        .iter()
        .find(|m| !matches!(m.as_str(), "drain" | "live"))
    {
        return Err(format!("unknown mode {m:?} (drain, live)").into());
    }
    Ok(args)
}

async fn run() -> Result<bool> {
    let args = parse_args()?;
    let events = env_usize("MPN_BENCH_EVENTS", 1_000_000)?;
    let rate = env_usize("MPN_BENCH_RATE", 2_000)?;
    let seconds = env_usize("MPN_BENCH_SECONDS", 30)?;
    let window = env_usize("MPN_BENCH_MAX_ACK_PENDING", 1_000)? as i64;

    let client = connect(&args.url, "jetstream-peer").await?;
    let info = client.server_info();
    if !info.jetstream {
        return Err(format!("{} has JetStream disabled (start it with -js)", args.url).into());
    }
    let js = jetstream::new(client.clone());
    // The account-info request answers with an error (or nobody answers) when
    // JetStream is not enabled for this account.
    let account = client
        .request("$JS.API.INFO", bytes::Bytes::new())
        .await
        .map_err(|e| format!("JetStream is not usable on {}: {e}", args.url))?;
    if account.payload.windows(8).any(|w| w == b"\"error\":") {
        return Err(format!(
            "JetStream is not usable on {}: {}",
            args.url,
            String::from_utf8_lossy(&account.payload)
        )
        .into());
    }
    let topology = Topology::for_server(&info.version);
    let bench = Bench {
        url: args.url,
        client,
        js,
        topology,
        window,
    };

    let mut report = Report::default();
    let mut outcome = Ok(());
    for mode in &args.modes {
        eprintln!("jetstream-peer: running {mode}");
        outcome = match mode.as_str() {
            "drain" => bench.drain(events, &mut report).await,
            _ => bench.live(rate, seconds, &mut report).await,
        };
        if outcome.is_err() {
            break;
        }
    }
    // Clean up whatever happened; the consumers go with the stream.
    if bench.js.get_stream(STREAM).await.is_ok() {
        bench.js.delete_stream(STREAM).await?;
    }
    bench.client.flush().await?;
    outcome?;

    println!("### Peer: NATS JetStream (durable push consumers, explicit acks)\n");
    println!(
        "nats-server {}, stream {} storage, 1 replica, {}; each message acked individually; \
         server and client share the machine\n",
        info.version,
        if storage() == stream::StorageType::File { "file" } else { "memory" },
        topology.describe(window)
    );
    println!("| mode | messages | time | messages/s | p50 | p99 | p99.9 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for row in &report.rows {
        println!("{row}");
    }
    println!();
    for note in &report.notes {
        println!("- {note}");
    }
    println!();
    for line in &report.machine {
        println!("{line}");
    }
    Ok(!report.incomplete)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(e) => {
            eprintln!("jetstream-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
