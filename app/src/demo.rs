//! `mpn-notify demo`: the whole main job in one process, on a machine with no broker.
//!
//! An in-process Kafka-protocol broker ([`MockBroker`]), the engine, the traffic
//! generator publishing realistic Pay-easy events for a few dozen institutions
//! (invalid records, cancellations and resends included) and one gRPC billing
//! subscriber that prints every notification. At the end it prints counts that were
//! *measured*: records the broker acknowledged, distinct notification ids the
//! subscriber received, records read back from the dead-letter topic, and expected
//! notification ids that never arrived.
//!
//! It also keeps the payment history in an embedded SQLite store (a temporary file,
//! fresh keys) and serves the staff console on `--console` (default
//! `127.0.0.1:8090`), printing its address and a staff login for the first
//! institution.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use mpn_kafka::MockBroker;
use mpn_proto::mpn::notify::v1 as notify;
use mpn_proto::mpn::v1 as pb;
use mpn_sim::publish::Publisher;
use mpn_sim::subscriber::{Login, Subscriber};
use mpn_sim::traffic::{Generator, TrafficConfig};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use tokio::task::JoinSet;

use mpn_engine::config::{Config, CredentialConfig};
use mpn_engine::domain::check_record;
use mpn_engine::engine::{Engine, IngestStart};

/// Demo settings (the `demo` subcommand's flags).
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long to publish; `None` = until the `stop` future completes.
    pub duration: Option<Duration>,
    pub institutions: usize,
    /// Events published per second.
    pub rate: u32,
    pub seed: u64,
    /// Do not print one line per notification.
    pub quiet: bool,
    /// The staff console's address (`127.0.0.1:0` picks a free port).
    pub console: std::net::SocketAddr,
}

impl Default for DemoOptions {
    fn default() -> Self {
        Self {
            duration: Some(Duration::from_secs(10)),
            institutions: 36,
            rate: 100,
            seed: 1,
            quiet: false,
            console: std::net::SocketAddr::from(([127, 0, 0, 1], 8090)),
        }
    }
}

/// What the demo measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoSummary {
    /// Records the broker acknowledged.
    pub produced: usize,
    /// Distinct notification ids the subscriber received.
    pub delivered: usize,
    /// Records read back from the dead-letter topic.
    pub dead_lettered: usize,
    /// Expected notification ids the subscriber never received.
    pub lost: usize,
    /// Records the engine's own decoder rejects (what the DLQ should hold).
    pub expected_dead_letters: usize,
    /// Dead letters by `mpn-error-field`.
    pub dead_letter_fields: BTreeMap<String, usize>,
    /// Distinct notification ids in the payment history at the end.
    pub history_rows: usize,
}

impl DemoSummary {
    /// Everything expected arrived and every invalid record is in the DLQ.
    pub fn is_complete(&self) -> bool {
        self.lost == 0
            && self.dead_lettered == self.expected_dead_letters
            && self.history_rows == self.delivered
    }
}

impl fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "demo: produced {} events, delivered {} notifications, dead-lettered {}, lost {}, history rows {}",
            self.produced, self.delivered, self.dead_lettered, self.lost, self.history_rows
        )
    }
}

#[derive(Debug, Default)]
struct Received {
    ids: HashSet<String>,
    messages: usize,
}

fn print_notification(n: &notify::Notification) {
    let kind = pb::EventKind::try_from(n.kind)
        .map(|k| {
            k.as_str_name()
                .trim_start_matches("EVENT_KIND_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| n.kind.to_string());
    let time = chrono::Local::now().format("%H:%M:%S%.3f");
    let amount = group_thousands(n.amount);
    let extra = if n.original_transaction_key.is_empty() {
        String::new()
    } else {
        format!(" cancels {}", n.original_transaction_key)
    };
    println!(
        "{time} {kind:<18} inst {} ¥{amount:>12} cust {:<20} key {} {}{extra}",
        n.institution_code, n.customer_number, n.transaction_key, n.payer_kana
    );
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Runs the demo until `duration` has passed or `stop` completes, then drains and
/// returns the measured summary.
pub async fn run(
    opts: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<DemoSummary> {
    let broker = MockBroker::start(1).context("starting the in-process broker")?;
    let mut config = Config::default();
    config.kafka.bootstrap_servers = broker.bootstrap_servers().to_owned();
    config.kafka.group_id = "mpn-notify-demo".into();
    broker.create_engine_topics(&config.kafka, 6)?;
    config.grpc.listen = "127.0.0.1:0".parse()?;
    config.metrics.listen = String::new();
    // The history in an embedded store, with keys made for this run.
    let store_dir = std::env::temp_dir().join(format!("mpn-notify-demo-{}", std::process::id()));
    std::fs::create_dir_all(&store_dir).context("creating the demo's history directory")?;
    let _remove_store = RemoveOnDrop(store_dir.clone());
    {
        use base64::Engine as _;
        let b64 = |b: [u8; 32]| base64::engine::general_purpose::STANDARD.encode(b);
        std::fs::write(
            store_dir.join("keys"),
            format!("demo {}\n", b64(rand::random())),
        )?;
        std::fs::write(store_dir.join("index-key"), b64(rand::random()))?;
    }
    config.history.database_url = format!(
        "sqlite://{}?mode=rwc",
        store_dir.join("history.db").display()
    );
    config.history.encryption_keys_file = Some(store_dir.join("keys"));
    config.history.index_key_file = Some(store_dir.join("index-key"));
    config.console.listen = opts.console.to_string();
    // Plain HTTP on loopback: browsers accept Secure cookies from localhost only
    // by name, and the demo may be opened as 127.0.0.1.
    config.console.secure_cookies = !opts.console.ip().is_loopback();

    let mut generator = Generator::new(TrafficConfig {
        institutions: opts.institutions,
        seed: opts.seed,
        ..TrafficConfig::default()
    });
    let codes: Vec<String> = generator
        .institutions()
        .iter()
        .map(|i| i.code.clone())
        .collect();
    let secret: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..24)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect()
    };
    config.credentials.push(CredentialConfig {
        institution: codes[0].clone(),
        login_id: "demo-billing".into(),
        secret_hash: mpn_engine::auth::hash_secret(&secret).map_err(anyhow::Error::msg)?,
        grants: codes.clone(),
        certificate_names: vec![],
    });

    let staff_password: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..12)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect()
    };
    config.credentials.push(CredentialConfig {
        institution: codes[0].clone(),
        login_id: "demo-staff".into(),
        secret_hash: mpn_engine::auth::hash_secret(&staff_password).map_err(anyhow::Error::msg)?,
        grants: vec![],
        certificate_names: vec![],
    });

    let engine = Engine::start(config.clone(), IngestStart::Manual).await?;
    let console_stop = tokio_util::sync::CancellationToken::new();
    let console = crate::console::start(&config.console, &engine, console_stop.clone())
        .await
        .context("the staff console (choose another address with --console, e.g. 127.0.0.1:0)")?;
    if let Some((addr, _)) = &console {
        println!(
            "demo: staff console http://{addr}/ — institution {}, login id demo-staff, password {staff_password}",
            codes[0]
        );
    }
    let login = Login {
        institution: codes[0].clone(),
        login_id: "demo-billing".into(),
        secret,
    };
    let mut subscriber =
        Subscriber::connect(&engine.grpc_addr().to_string(), &login, &[], "demo-printer")
            .await
            .context("demo subscriber")?;
    println!(
        "demo: broker {}, engine gRPC {}, subscriber attached to {} institutions; publishing {} events/s",
        broker.bootstrap_servers(),
        engine.grpc_addr(),
        subscriber.subscribed.institutions.len(),
        opts.rate
    );

    let received = Arc::new(Mutex::new(Received::default()));
    let reader = {
        let received = received.clone();
        let quiet = opts.quiet;
        tokio::spawn(async move {
            while let Ok(Some(n)) = subscriber.next().await {
                if !quiet {
                    print_notification(&n);
                }
                {
                    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
                    r.ids.insert(n.notification_id.clone());
                    r.messages += 1;
                }
                if subscriber.ack(n.seq).await.is_err() {
                    break;
                }
            }
        })
    };
    engine.open_ingest();

    // Publish at the requested rate.
    let publisher = Publisher::new(&config.kafka, &config.kafka.input_topic)?;
    let mut expected: HashSet<String> = HashSet::new();
    let mut expected_dead_letters = 0usize;
    let mut sends = JoinSet::new();
    let mut tick =
        tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate.max(1))));
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => break,
            _ = tick.tick() => {}
        }
        let record = generator.next_record();
        match check_record(
            record.content_type.map(str::as_bytes),
            Some(record.key.as_bytes()),
            &record.payload,
        ) {
            Ok(event) => {
                expected.insert(event.notification_id().into_string());
            }
            Err(_) => expected_dead_letters += 1,
        }
        let p = publisher.clone();
        sends.spawn(async move { p.send(&record).await });
    }
    let mut produced = 0;
    while let Some(r) = sends.join_next().await {
        match r {
            Ok(Ok(_)) => produced += 1,
            Ok(Err(e)) => bail!("publishing failed: {e}"),
            Err(e) => bail!("publisher task failed: {e}"),
        }
    }

    // Drain: wait until every expected notification arrived (bounded).
    let drain_deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let missing = {
            let r = received.lock().unwrap_or_else(|p| p.into_inner());
            expected.iter().filter(|id| !r.ids.contains(*id)).count()
        };
        if missing == 0 || tokio::time::Instant::now() > drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (dead_lettered, dead_letter_fields) = count_dead_letters(
        &config.kafka,
        expected_dead_letters,
        Duration::from_secs(15),
    )
    .await?;

    let (delivered, lost) = {
        let r = received.lock().unwrap_or_else(|p| p.into_inner());
        let delivered_expected = expected.iter().filter(|id| r.ids.contains(*id)).count();
        (r.ids.len(), expected.len() - delivered_expected)
    };
    // The history has a row per notification id (bounded wait for its writers).
    let mut history_rows = 0;
    if let Some(history) = engine.history() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            history_rows = match history.get() {
                Ok(h) => h
                    .store()
                    .counts()
                    .await
                    .map(|(_, d)| d as usize)
                    .unwrap_or(0),
                Err(_) => 0,
            };
            if history_rows >= expected.len() || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    console_stop.cancel();
    if let Some((_, task)) = console {
        let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    }
    engine.shutdown().await;
    let _ = reader.await;
    drop(broker);
    Ok(DemoSummary {
        produced,
        delivered,
        dead_lettered,
        lost,
        expected_dead_letters,
        dead_letter_fields,
        history_rows,
    })
}

/// Removes the demo's history directory when the demo ends.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Reads the dead-letter topic from the start until `expected` records were seen or
/// `timeout` passed; returns the count and the count per error field.
async fn count_dead_letters(
    kafka: &mpn_kafka::Config,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<(usize, BTreeMap<String, usize>)> {
    let mut reader_config = kafka.clone();
    reader_config.group_id = format!("mpn-demo-dlq-reader-{}", std::process::id());
    let consumer: StreamConsumer = reader_config.consumer().create()?;
    consumer.subscribe(&[&kafka.dlq_topic()])?;
    let mut count = 0;
    let mut fields = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + timeout;
    // After reaching the expected count, keep reading briefly so extra letters show.
    let mut settle: Option<tokio::time::Instant> = None;
    loop {
        let until = settle.unwrap_or(deadline).min(deadline);
        let m = match tokio::time::timeout_at(until, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m?,
        };
        count += 1;
        let field = m
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == mpn_kafka::headers::ERROR_FIELD)
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        *fields.entry(field).or_insert(0) += 1;
        if count >= expected && settle.is_none() {
            settle = Some(tokio::time::Instant::now() + Duration::from_millis(500));
        }
    }
    Ok((count, fields))
}
