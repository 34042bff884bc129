//! Test harness: a mock broker, an engine on 127.0.0.1:0, credentials, event builders
//! and polling helpers (eventual assertions poll with a deadline, never sleep blind).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use mpn_engine::auth::{Cost, hash_secret_with_cost};
use mpn_engine::config::CredentialConfig;
use mpn_engine::{Config, Engine, IngestStart};
use mpn_kafka::MockBroker;
use mpn_proto::mpn::notify::v1 as notify;
use mpn_proto::mpn::v1 as pb;
use mpn_sim::subscriber::{Login, Subscriber};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

pub(crate) const SECRET: &str = "correct horse";

/// A broker with the input and dead-letter topics, and a config pointing at it.
pub(crate) struct Harness {
    /// The in-process broker, if this harness runs on one (kept alive for the test).
    _broker: Option<MockBroker>,
    pub config: Config,
    producer: FutureProducer,
}

impl Harness {
    pub(crate) fn new(partitions: i32, credentials: Vec<CredentialConfig>) -> Self {
        let broker = MockBroker::start(1).expect("mock broker");
        let mut config = Config::default();
        config.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
        broker
            .create_engine_topics(&config.kafka, partitions)
            .unwrap();
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.grpc.heartbeat_interval = Duration::from_millis(200);
        config.metrics.listen = String::new();
        // The metric assertions name institutions and subscribers.
        config.metrics.tenant_labels = true;
        config.sessions.threads = 2;
        // The mock broker lets a departed member's partitions go only after its
        // session timeout; keep restarts in tests quick.
        config.kafka.session_timeout_ms = 2_000;
        // Tests that stop with unacknowledged notifications need not wait long.
        config.ingest.drain_timeout = Duration::from_millis(500);
        config.credentials = credentials;
        let producer = config.kafka.producer().create().unwrap();
        Self {
            _broker: Some(broker),
            config,
            producer,
        }
    }

    /// A harness on an external broker (Tansu): topics are created through the
    /// admin API, as the engine would.
    pub(crate) async fn external(
        bootstrap: &str,
        partitions: i32,
        credentials: Vec<CredentialConfig>,
    ) -> Self {
        let mut config = Config::default();
        config.kafka.bootstrap_servers = bootstrap.to_owned();
        config.kafka.topic_partitions = partitions;
        config.grpc.listen = "127.0.0.1:0".parse().unwrap();
        config.grpc.heartbeat_interval = Duration::from_millis(200);
        config.metrics.listen = String::new();
        config.metrics.tenant_labels = true;
        config.sessions.threads = 2;
        config.kafka.session_timeout_ms = 3_000;
        config.ingest.drain_timeout = Duration::from_millis(500);
        config.credentials = credentials;
        mpn_kafka::admin::ensure_topics(&config.kafka, Duration::from_secs(20))
            .await
            .expect("topics");
        let producer = config.kafka.producer().create().unwrap();
        Self {
            _broker: None,
            config,
            producer,
        }
    }

    /// The in-process broker (for fault injection); panics on an external one.
    pub(crate) fn broker(&self) -> &MockBroker {
        self._broker.as_ref().expect("a harness on the mock broker")
    }

    pub(crate) async fn start(&self) -> Engine {
        mpn_engine::telemetry::init_logging(mpn_engine::config::LogFormat::Human, "warn");
        Engine::start(self.config.clone(), IngestStart::Manual)
            .await
            .expect("engine starts")
    }

    /// Publishes records in order (each awaited, so per-key order is the input order).
    pub(crate) async fn publish_all(&self, records: &[Rec]) {
        let topic = self.config.kafka.input_topic.clone();
        let mut pending = Vec::new();
        for r in records {
            let mut rec = FutureRecord::to(&topic).key(&r.key).payload(&r.payload);
            if let Some(ct) = r.content_type {
                rec = rec.headers(OwnedHeaders::new().insert(Header {
                    key: "content-type",
                    value: Some(ct),
                }));
            }
            pending.push(
                self.producer
                    .send_result(rec)
                    .map_err(|(e, _)| e)
                    .expect("queue record"),
            );
        }
        for p in pending {
            p.await.expect("delivery future").expect("broker ack");
        }
    }

    /// Reads the dead-letter topic until `n` records arrived (or panics after 30 s).
    pub(crate) async fn dead_letters(&self, n: usize) -> Vec<DeadLetterSeen> {
        let mut c = self.config.kafka.clone();
        c.group_id = format!("dlq-reader-{}", rand_suffix());
        let consumer: StreamConsumer = c.consumer().create().unwrap();
        consumer
            .subscribe(&[&self.config.kafka.dlq_topic()])
            .unwrap();
        let mut out = Vec::new();
        while out.len() < n {
            let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("only {} of {n} dead letters arrived: {out:?}", out.len())
                })
                .unwrap();
            let headers: HashMap<String, String> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| {
                            (
                                h.key.to_owned(),
                                String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push(DeadLetterSeen {
                headers,
                payload: m.payload().unwrap_or_default().to_vec(),
            });
        }
        out
    }
}

#[derive(Debug, Clone)]
pub(crate) struct DeadLetterSeen {
    pub headers: HashMap<String, String>,
    pub payload: Vec<u8>,
}

impl DeadLetterSeen {
    pub(crate) fn header(&self, k: &str) -> &str {
        self.headers.get(k).map(String::as_str).unwrap_or("")
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A record to publish.
#[derive(Debug, Clone)]
pub(crate) struct Rec {
    pub key: String,
    pub payload: Vec<u8>,
    pub content_type: Option<&'static str>,
}

impl Rec {
    pub(crate) fn proto(e: &pb::PaymentEvent) -> Self {
        Self {
            key: e.institution_code.clone(),
            payload: e.encode_to_vec(),
            content_type: None,
        }
    }

    pub(crate) fn json(e: &pb::PaymentEvent) -> Self {
        Self {
            key: e.institution_code.clone(),
            payload: mpn_proto::json::encode(e),
            content_type: Some("application/json"),
        }
    }

    pub(crate) fn raw(key: &str, payload: &[u8], content_type: Option<&'static str>) -> Self {
        Self {
            key: key.into(),
            payload: payload.to_vec(),
            content_type,
        }
    }
}

/// Institution code number `i` (8 digits).
pub(crate) fn inst(i: usize) -> String {
    format!("{:05}000", 20_000 + i)
}

/// A valid payment for institution `code` with serial `serial`.
pub(crate) fn payment(code: &str, serial: u32) -> pb::PaymentEvent {
    pb::PaymentEvent {
        transaction_key: format!("{code:0>10}20260531{serial:08}"),
        kind: pb::EventKind::Payment as i32,
        institution_code: code.into(),
        customer_number: format!("{serial:010}"),
        confirmation_number: "1234".into(),
        amount: 1_000 + u64::from(serial),
        bank_code: "0001".into(),
        branch_code: "123".into(),
        channel: pb::Channel::Atm as i32,
        collection_method: pb::CollectionMethod::Online as i32,
        paid_at: "2026-05-31T10:15:00+09:00".into(),
        fee_name: "水道料金".into(),
        payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
        ..Default::default()
    }
}

pub(crate) fn credential(institution: &str, login: &str, grants: &[String]) -> CredentialConfig {
    CredentialConfig {
        institution: institution.into(),
        login_id: login.into(),
        secret_hash: hash_secret_with_cost(SECRET, Cost::Test).unwrap(),
        grants: grants.to_vec(),
        certificate_names: vec![],
    }
}

pub(crate) fn login(institution: &str, login_id: &str) -> Login {
    Login {
        institution: institution.into(),
        login_id: login_id.into(),
        secret: SECRET.into(),
    }
}

pub(crate) async fn subscribe(engine: &Engine, l: &Login, institutions: &[String]) -> Subscriber {
    Subscriber::connect(
        &engine.grpc_addr().to_string(),
        l,
        institutions,
        &l.login_id,
    )
    .await
    .expect("subscribe")
}

/// Receives `n` notifications, acknowledging each; panics after `timeout`.
pub(crate) async fn receive(
    s: &mut Subscriber,
    n: usize,
    timeout: Duration,
) -> Vec<notify::Notification> {
    receive_then(s, n, timeout, true).await
}

/// Receives `n` notifications without acknowledging any (each holds its record in
/// flight); panics after `timeout`.
pub(crate) async fn receive_unacked(
    s: &mut Subscriber,
    n: usize,
    timeout: Duration,
) -> Vec<notify::Notification> {
    receive_then(s, n, timeout, false).await
}

async fn receive_then(
    s: &mut Subscriber,
    n: usize,
    timeout: Duration,
    ack: bool,
) -> Vec<notify::Notification> {
    let mut got = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + timeout;
    while got.len() < n {
        let next = tokio::time::timeout_at(deadline, s.next()).await;
        let Ok(next) = next else {
            panic!(
                "received only {} of {n} notifications in {timeout:?}",
                got.len()
            );
        };
        let notification = next.expect("stream ok").expect("stream open");
        if ack {
            s.ack(notification.seq).await.expect("ack");
        }
        got.push(notification);
    }
    got
}

/// Asserts that nothing more arrives within `quiet` (heart-beats aside).
pub(crate) async fn assert_nothing_more(s: &mut Subscriber, quiet: Duration) {
    if let Ok(Ok(Some(n))) = tokio::time::timeout(quiet, s.next()).await {
        panic!("unexpected notification {}", n.notification_id);
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub(crate) async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serial number (last 8 digits of the transaction key) of a notification.
pub(crate) fn serial(n: &notify::Notification) -> u32 {
    n.transaction_key[18..].parse().unwrap()
}

/// The status that ends a stream; a notification or a clean end instead is a failure.
pub(crate) async fn closing_status(s: &mut Subscriber) -> tonic::Status {
    match s.next().await {
        Err(status) => status,
        Ok(Some(n)) => panic!("unexpected notification {}", n.notification_id),
        Ok(None) => panic!("stream ended without a status"),
    }
}

/// A plaintext gRPC channel to `addr` (host:port).
pub(crate) async fn channel(addr: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Receives until `n` distinct notifications arrived (acknowledging each); returns
/// them in first-arrival order and the number of repeats.
pub(crate) async fn receive_distinct(
    s: &mut Subscriber,
    n: usize,
    timeout: Duration,
) -> (Vec<notify::Notification>, usize) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut repeats = 0;
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        let next = tokio::time::timeout_at(deadline, s.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} distinct notifications", out.len()));
        let m = next.expect("stream ok").expect("stream open");
        s.ack(m.seq).await.unwrap();
        if seen.insert(m.notification_id.clone()) {
            out.push(m);
        } else {
            repeats += 1;
        }
    }
    (out, repeats)
}

/// One debugging recorder per test process (metrics has one global recorder; nextest
/// runs every test in its own process).
pub(crate) fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("no other recorder in the test process");
        snapshotter
    })
}

type Labels = Vec<(String, String)>;
type Totals = HashMap<(String, Labels), u64>;

/// Every counter's total since the recorder was installed, by name and labels. The
/// debugging recorder's snapshot drains what it returns (counters are swapped to 0),
/// so every read goes through here and adds up.
fn counter_totals() -> Vec<(String, Labels, u64)> {
    static TOTALS: std::sync::Mutex<Option<Totals>> = std::sync::Mutex::new(None);
    let mut totals = TOTALS.lock().unwrap_or_else(|p| p.into_inner());
    let totals = totals.get_or_insert_with(HashMap::new);
    for (k, .., v) in metrics().snapshot().into_vec() {
        if let DebugValue::Counter(c) = v {
            let labels = k
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            *totals
                .entry((k.key().name().to_owned(), labels))
                .or_default() += c;
        }
    }
    totals
        .iter()
        .map(|((name, labels), &v)| (name.clone(), labels.clone(), v))
        .collect()
}

/// The total of a counter over all its labels, since the test process started.
pub(crate) fn counter(name: &str) -> u64 {
    counter_totals()
        .into_iter()
        .filter(|(n, ..)| n == name)
        .map(|(.., v)| v)
        .sum()
}

/// The total of a counter over the series with label `key` = `value`.
pub(crate) fn counter_with(name: &str, key: &str, value: &str) -> u64 {
    counter_totals()
        .into_iter()
        .filter(|(n, labels, _)| n == name && labels.iter().any(|(k, v)| k == key && v == value))
        .map(|(.., v)| v)
        .sum()
}

/// A shutdown signal for parts started outside an engine (a cursor store); it is
/// triggered when the guard is dropped, at the end of the test.
pub(crate) fn stop_on_drop() -> (mpn_engine::runtime::Shutdown, tokio_util::sync::DropGuard) {
    let s = mpn_engine::runtime::Shutdown::new();
    let guard = s.token().drop_guard();
    (s, guard)
}
