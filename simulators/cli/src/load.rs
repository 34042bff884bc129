//! One load run: subscribers connect, the publisher sends Pay-easy events at the
//! profile's rate for the run's duration, then the run waits for every expected
//! notification (bounded), reads the dead-letter topic back and builds the report.
//! `run` and `demo-load` both come here; only the target differs.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mpn_engine::domain::check_record;
use mpn_sim::profile::{expected_events, rate_at};
use mpn_sim::publish::{Publisher, is_queue_full};
use mpn_sim::traffic::Generator;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Headers;
use rdkafka::producer::DeliveryFuture;
use rdkafka::{Message as _, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot, watch};

use crate::progress::Progress;
use crate::report::{
    Checks, DeadLetters, Delivered, Published, Report, ReportSettings, SCHEMA, Written,
};
use crate::settings::{LoadOptions, Target};
use crate::stats::Stats;
use crate::subscribers::{self, Behaviour, Shared};

/// What the publisher knows once the broker has acknowledged its records.
#[derive(Debug, Default)]
struct Sent {
    records: u64,
    valid: u64,
    invalid: u64,
    errors: u64,
    last_error: Option<String>,
    /// Distinct notification ids expected, per canonical institution code.
    expected: HashMap<String, HashSet<String>>,
    /// (partition, offset) of every record of this run: its dead letters carry them.
    sources: HashSet<(i32, i64)>,
    last_ack: Option<Instant>,
}

impl Sent {
    fn expected_for(&self, institutions: &[String]) -> usize {
        institutions
            .iter()
            .filter_map(|i| self.expected.get(i))
            .map(HashSet::len)
            .sum()
    }

    fn expected_ids<'a>(&'a self, institutions: &'a [String]) -> impl Iterator<Item = &'a str> {
        institutions
            .iter()
            .filter_map(|i| self.expected.get(i))
            .flat_map(|ids| ids.iter().map(String::as_str))
    }
}

/// What a record should become, by the engine's own validation.
enum Meant {
    Notification { institution: String, id: String },
    DeadLetter,
}

/// Runs the load against `target`, writes report.json and report.svg into
/// `opts.out`, and returns the report. Publishing ends after `opts.duration` or when
/// `stop` completes, whichever is first; the drain and the report follow either way.
pub async fn run(
    command: &str,
    target: &Target,
    opts: &LoadOptions,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<(Report, Written)> {
    let kafka = mpn_kafka::Config {
        bootstrap_servers: target.bootstrap.clone(),
        input_topic: target.topic.clone(),
        ..mpn_kafka::Config::default()
    };
    kafka
        .validate()
        .map_err(|e| anyhow::anyhow!("--{}: {}", e.key.replace('_', "-"), e.message))?;
    let publisher = Publisher::new(&kafka, &target.topic).context("creating the producer")?;

    // Subscribers first: a new durable subscriber starts from "now".
    let run_tag = chrono::Utc::now().timestamp();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut states: Vec<Shared> = Vec::new();
    let mut readies = Vec::new();
    let mut gos = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..opts.subscribers {
        let login = target.logins[i % target.logins.len()].clone();
        let state = Shared::default();
        {
            let mut s = subscribers::lock(&state);
            s.id = format!("mpn-sim-{run_tag}-{i}");
            s.login = format!("{}/{}", login.institution, login.login_id);
        }
        let behaviour = Behaviour {
            ack_delay: opts.ack_delay,
            stall: opts.stall(i),
            reconnect_every: opts.reconnects(i).then_some(opts.reconnect_every),
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (go_tx, go_rx) = oneshot::channel();
        tasks.spawn(subscribers::run(
            target.against.clone(),
            login,
            behaviour,
            state.clone(),
            ready_tx,
            go_rx,
            stop_rx.clone(),
        ));
        states.push(state);
        readies.push(ready_rx);
        gos.push(go_tx);
    }
    for (i, ready) in readies.into_iter().enumerate() {
        let answer = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .with_context(|| format!("subscriber {i} did not connect within 30 s"))?
            .with_context(|| format!("subscriber {i} ended before connecting"))?;
        if let Err(status) = answer {
            let _ = stop_tx.send(true);
            bail!(
                "subscriber {i} could not subscribe at {}: {status}",
                target.against
            );
        }
    }

    let dlq_marks = dead_letter_marks(&kafka).await;
    let started_at = chrono::Utc::now();
    let stats = Arc::new(Stats::new(Instant::now()));
    for go in gos {
        let _ = go.send(stats.clone());
    }
    let progress = Progress::start(
        opts.progress,
        expected_events(opts.profile, opts.rate, opts.duration.as_secs_f64()) as u64,
        stats.clone(),
    );

    // Publish at the profile's rate; a collector awaits the broker's acknowledgements.
    let (acks_tx, mut acks_rx) = mpsc::unbounded_channel::<(Meant, DeliveryFuture)>();
    let collector = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut sent = Sent::default();
            while let Some((meant, delivery)) = acks_rx.recv().await {
                match delivery.await {
                    Ok(Ok(d)) => {
                        stats.published(Instant::now());
                        sent.records += 1;
                        sent.sources.insert((d.partition, d.offset));
                        match meant {
                            Meant::Notification { institution, id } => {
                                sent.valid += 1;
                                sent.expected.entry(institution).or_default().insert(id);
                            }
                            Meant::DeadLetter => sent.invalid += 1,
                        }
                    }
                    Ok(Err((e, _))) => {
                        sent.errors += 1;
                        sent.last_error = Some(e.to_string());
                    }
                    Err(_) => {
                        sent.errors += 1;
                        sent.last_error = Some("the producer went away".into());
                    }
                }
            }
            sent.last_ack = Some(Instant::now());
            sent
        })
    };
    let mut generator = Generator::new(opts.traffic());
    let mut refused = 0u64;
    let mut last_refusal = None;
    {
        let start = stats.start();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut owed = 0.0f64;
        let mut last = start;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            if now.duration_since(start) >= opts.duration {
                break;
            }
            // Rate at the middle of the step, times the step.
            let mid = (last + (now - last) / 2).duration_since(start);
            let share = rate_at(
                opts.profile,
                mid.as_secs_f64() / opts.duration.as_secs_f64(),
            );
            owed += opts.rate * share * (now - last).as_secs_f64();
            last = now;
            while owed >= 1.0 {
                owed -= 1.0;
                let record = generator.next_record();
                let meant = match check_record(
                    record.content_type.map(str::as_bytes),
                    Some(record.key.as_bytes()),
                    &record.payload,
                ) {
                    Ok(event) => Meant::Notification {
                        institution: event.institution.to_string(),
                        id: event.notification_id().into_string(),
                    },
                    Err(_) => Meant::DeadLetter,
                };
                let delivery = loop {
                    match publisher.enqueue(&record) {
                        Ok(d) => break Some(d),
                        Err(e) if is_queue_full(&e) => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err(e) => {
                            refused += 1;
                            last_refusal = Some(e.to_string());
                            break None;
                        }
                    }
                };
                if let Some(d) = delivery {
                    let _ = acks_tx.send((meant, d));
                }
            }
        }
    }
    drop(acks_tx);
    let mut sent = collector.await.context("the acknowledgement collector")?;
    sent.errors += refused;
    if sent.last_error.is_none() {
        sent.last_error = last_refusal;
    }
    if let Some(e) = &sent.last_error {
        tracing::warn!(errors = sent.errors, last = %e, "records the broker refused");
    }
    progress.published_done(sent.records);

    // Drain: every subscriber should receive every expected notification of its
    // institutions; whatever is still missing at the deadline is a gap.
    let drain_deadline = Instant::now() + opts.drain_timeout;
    loop {
        let missing: usize = states.iter().map(|s| missing(s, &sent)).sum();
        progress.draining(missing);
        if missing == 0 || Instant::now() >= drain_deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(true);
    let end = Instant::now();
    let stop_deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(_)) = tokio::time::timeout_at(stop_deadline, tasks.join_next()).await {}
    tasks.abort_all();
    progress.finish();

    let dead_letters = read_dead_letters(&kafka, dlq_marks, &sent.sources, sent.invalid).await;

    let subscribers: Vec<_> = states
        .iter()
        .map(|s| {
            let s = subscribers::lock(s);
            let mut r = s.report();
            let gaps = s.checker.gaps(sent.expected_ids(&s.institutions));
            r.gaps = gaps.len() as u64;
            r.gap_examples = gaps.into_iter().take(20).map(str::to_owned).collect();
            r
        })
        .collect();
    let timeline = stats.timeline();
    let secs = |until: Option<Instant>| {
        until.map_or(0.0, |u| {
            u.saturating_duration_since(stats.start()).as_secs_f64()
        })
    };
    let per_sec = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    let published_window = secs(sent.last_ack);
    let delivered_window = secs(stats.last_delivery());
    let notifications = subscribers.iter().map(|s| s.notifications).sum();
    let gaps = subscribers.iter().map(|s| s.gaps).sum();
    let order_violations = subscribers.iter().map(|s| s.order_violations).sum();
    let checks = Checks {
        duplicates: subscribers.iter().map(|s| s.duplicates).sum(),
        gaps,
        order_violations,
        passed: gaps == 0 && order_violations == 0,
    };
    let report = Report {
        schema: SCHEMA.into(),
        command: command.into(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        settings: ReportSettings {
            bootstrap: target.bootstrap.clone(),
            topic: target.topic.clone(),
            against: target.against.clone(),
            institutions: opts.institutions,
            seed: opts.seed,
            serial_start: opts.serial_start,
            invalid_ratio: opts.invalid_ratio,
            rate: opts.rate,
            duration_secs: opts.duration.as_secs_f64(),
            profile: opts.profile.to_string(),
            subscribers: opts.subscribers,
            ack_delay_ms: opts.ack_delay.as_millis() as u64,
            stall_one_ms: opts.stall_one.as_millis() as u64,
            reconnect_every_secs: opts.reconnect_every.as_secs(),
            drain_timeout_secs: opts.drain_timeout.as_secs(),
        },
        elapsed_secs: end.duration_since(stats.start()).as_secs_f64(),
        published: Published {
            records: sent.records,
            valid: sent.valid,
            invalid: sent.invalid,
            errors: sent.errors,
            expected_notifications: sent.expected.values().map(|v| v.len() as u64).sum(),
            window_secs: published_window,
            per_sec: per_sec(sent.records, published_window),
            peak_per_sec: timeline.iter().map(|s| s.published).max().unwrap_or(0),
        },
        delivered: Delivered {
            notifications,
            distinct: subscribers.iter().map(|s| s.distinct).sum(),
            window_secs: delivered_window,
            per_sec: per_sec(notifications, delivered_window),
            peak_per_sec: timeline.iter().map(|s| s.delivered).max().unwrap_or(0),
        },
        latency_us: stats.latency(),
        checks,
        dead_letters,
        subscribers,
        timeline,
    };
    let written = report.write(&opts.out)?;
    Ok((report, written))
}

/// Expected notifications `state` has not received yet (a lower bound while its
/// count of distinct ids is short; exact once it is not).
fn missing(state: &Shared, sent: &Sent) -> usize {
    let s = subscribers::lock(state);
    let expected = sent.expected_for(&s.institutions);
    let distinct = s.checker.distinct() as usize;
    if distinct < expected {
        expected - distinct
    } else {
        s.checker.gap_count(sent.expected_ids(&s.institutions))
    }
}

/// Where the dead-letter topic ends before the run (high watermark per partition), so
/// the report reads only what came after. `None` (topic missing or unreadable) means
/// reading every partition from its start. A watermark that reads low (Tansu's can)
/// only costs a few more records read: dead letters are matched by their source.
async fn dead_letter_marks(kafka: &mpn_kafka::Config) -> Option<Vec<i64>> {
    let reader = dead_letter_reader(kafka);
    let topic = kafka.dlq_topic();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = reader.consumer().create().ok()?;
        let timeout = Duration::from_secs(10);
        let partitions = partitions(&consumer, &topic, timeout).ok()?;
        (0..partitions as i32)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .ok()
                    .map(|w| w.1)
            })
            .collect()
    })
    .await
    .ok()
    .flatten()
}

fn partitions<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let n = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    if n == 0 {
        bail!("topic {topic} not found");
    }
    Ok(n)
}

/// Reads `<topic>.dlq` from `marks` and counts the dead letters whose source is one of
/// `sources`; stops once `expected` were found (after a short wait for extra ones) or
/// after 15 s.
async fn read_dead_letters(
    kafka: &mpn_kafka::Config,
    marks: Option<Vec<i64>>,
    sources: &HashSet<(i32, i64)>,
    expected: u64,
) -> DeadLetters {
    let topic = kafka.dlq_topic();
    let mut out = DeadLetters {
        topic: topic.clone(),
        expected,
        ..DeadLetters::default()
    };
    if let Err(e) = read_into(&mut out, kafka, marks, sources).await {
        out.error = Some(format!("{e:#}"));
    }
    out
}

/// The Kafka settings of this run's dead-letter reader (a group of its own).
fn dead_letter_reader(kafka: &mpn_kafka::Config) -> mpn_kafka::Config {
    mpn_kafka::Config {
        group_id: format!("mpn-sim-dlq-reader-{}", std::process::id()),
        ..kafka.clone()
    }
}

async fn read_into(
    out: &mut DeadLetters,
    kafka: &mpn_kafka::Config,
    marks: Option<Vec<i64>>,
    sources: &HashSet<(i32, i64)>,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = dead_letter_reader(kafka).consumer().create()?;
    let topic = out.topic.clone();
    // Metadata blocks: keep it off the runtime's workers.
    let consumer = tokio::task::spawn_blocking(move || -> anyhow::Result<StreamConsumer> {
        let n = partitions(&consumer, &topic, Duration::from_secs(10))?;
        let mut start = TopicPartitionList::new();
        for p in 0..n {
            let offset = marks
                .as_ref()
                .and_then(|m| m.get(p))
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            start.add_partition_offset(&topic, p as i32, offset)?;
        }
        consumer.assign(&start)?;
        Ok(consumer)
    })
    .await??;
    let source_topic = kafka.input_topic.as_str();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let settle_for = if out.expected == 0 {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(500)
    };
    let mut settle = (out.expected == 0).then(|| tokio::time::Instant::now() + settle_for);
    let mut by_field: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        let until = settle.map_or(deadline, |s| s.min(deadline));
        let m = match tokio::time::timeout_at(until, consumer.recv()).await {
            Err(_) => break,
            Ok(m) => m?,
        };
        let header = |name: &str| -> Option<String> {
            m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        use mpn_kafka::headers::{ERROR_FIELD, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC};
        let ours = header(SOURCE_TOPIC).as_deref() == Some(source_topic)
            && header(SOURCE_PARTITION)
                .and_then(|p| p.parse::<i32>().ok())
                .zip(header(SOURCE_OFFSET).and_then(|o| o.parse::<i64>().ok()))
                .is_some_and(|source| sources.contains(&source));
        if !ours {
            continue;
        }
        out.found += 1;
        *by_field
            .entry(header(ERROR_FIELD).unwrap_or_default())
            .or_insert(0) += 1;
        if out.found >= out.expected && settle.is_none() {
            settle = Some(tokio::time::Instant::now() + settle_for);
        }
    }
    out.by_field = by_field;
    Ok(())
}
