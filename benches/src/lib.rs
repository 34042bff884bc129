//! Benchmarks of mpn-notify. `cargo bench -p mpn-benches` runs the criterion
//! micro-benches in `benches/micro.rs` and the system benches in `benches/system.rs`
//! and `benches/scale.rs`; this library holds their shared inputs and helpers.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::future::join_all;
use mpn_engine::config::{Config, CredentialConfig};
use mpn_proto::mpn::v1 as pb;
use mpn_sim::traffic::{Generator, TrafficConfig};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// A fixed, realistic set of valid events (seeded, so every run measures the same).
pub fn sample_events(n: usize) -> Vec<pb::PaymentEvent> {
    let mut g = Generator::new(TrafficConfig {
        invalid_ratio: 0.0,
        ..TrafficConfig::default()
    });
    (0..n).map(|_| g.next_record().event).collect()
}

pub const SECRET: &str = "bench-secret";

pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A comma-separated list of numbers from the environment, or `default`.
pub fn env_list(name: &str, default: &str) -> Vec<usize> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
        })
        .collect()
}

pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

pub fn code(i: usize) -> String {
    format!("{:08}", 10_000_000 + i)
}

pub fn event(code: &str, serial: u64) -> pb::PaymentEvent {
    pb::PaymentEvent {
        transaction_key: format!("{:0>10}20260531{:08}", &code[..5], serial % 100_000_000),
        kind: pb::EventKind::Payment as i32,
        institution_code: code.into(),
        customer_number: format!("{serial:010}"),
        amount: 1_000 + serial % 10_000,
        bank_code: "0001".into(),
        branch_code: "123".into(),
        channel: pb::Channel::Atm as i32,
        collection_method: pb::CollectionMethod::Online as i32,
        paid_at: "2026-05-31T10:15:00+09:00".into(),
        published_at_us: chrono::Utc::now().timestamp_micros(),
        ..Default::default()
    }
}

pub fn credential(institution: &str, login: &str, grants: Vec<String>) -> CredentialConfig {
    CredentialConfig {
        institution: institution.into(),
        login_id: login.into(),
        secret_hash: mpn_engine::auth::hash_secret_with_cost(SECRET, mpn_engine::auth::Cost::Test)
            .unwrap(),
        grants,
        certificate_names: vec![],
    }
}

pub fn base_config(bootstrap: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.into();
    c.grpc.listen = "127.0.0.1:0".parse().unwrap();
    c.metrics.listen = String::new();
    c
}

pub async fn publish(
    producer: &FutureProducer,
    topic: &str,
    events: impl Iterator<Item = pb::PaymentEvent>,
) {
    let mut batch = Vec::new();
    for e in events {
        batch.push(e);
        if batch.len() == 5_000 {
            send_batch(producer, topic, &batch).await;
            batch.clear();
        }
    }
    send_batch(producer, topic, &batch).await;
}

pub async fn send_batch(producer: &FutureProducer, topic: &str, batch: &[pb::PaymentEvent]) {
    let payloads: Vec<(String, Vec<u8>)> = batch
        .iter()
        .map(|e| (e.institution_code.clone(), e.encode_to_vec()))
        .collect();
    let sends = payloads.iter().map(|(k, p)| {
        producer.send(
            FutureRecord::to(topic).key(k).payload(p),
            Duration::from_secs(60),
        )
    });
    for r in join_all(sends).await {
        r.map_err(|(e, _)| e).expect("published");
    }
}

pub fn tansu_binary() -> String {
    std::env::var("MPN_TANSU").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        let cached = format!("{home}/.cache/mpn-notify/tools/bin/tansu");
        if std::path::Path::new(&cached).exists() {
            cached
        } else {
            "tansu".into()
        }
    })
}

/// A Tansu broker (memory storage engine) on a port the OS picked; killed on drop.
#[derive(Debug)]
pub struct Tansu(Child, pub String);

impl Tansu {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .current_dir(std::env::temp_dir())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Tansu (set MPN_TANSU; scripts/test installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Tansu did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Tansu(child, format!("127.0.0.1:{port}"))
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn percentiles(mut v: Vec<f64>) -> [f64; 4] {
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
