//! The catch-up reader of a durable subscription: serves partitions that are not (or
//! no longer) live from Kafka, by the subscription's own positions, then hands each
//! partition to the live path.
//!
//! Per partition the reader reads from its position, queues the notifications of the
//! subscription's institutions (waiting for room in the queue: it serves only this
//! subscriber) and, whenever it has caught up with what is there, asks the ingest loop
//! to go live from its position. Ingest grants that only when it has not yet consumed
//! past the reader (so every later event reaches the sessions after the switch, and
//! every earlier one was queued by the reader); otherwise the reader reads on. A
//! partition this replica does not consume is simply tailed by the reader.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use mpn_grpc::Outbound;
use mpn_kafka::headers;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::ingest::check_record;
use crate::subscription::{ReaderCommand, SubState};

/// A reader's request to switch a partition of a subscription to the live path.
#[derive(Debug)]
pub struct GoLive {
    pub sub: Arc<SubState>,
    pub partition: i32,
    /// Everything below this offset was read (and queued where relevant).
    pub position: i64,
    /// `true` if the partition is now live.
    pub reply: oneshot::Sender<bool>,
}

/// Remembers recently queued notification ids so a resend read in the same catch-up
/// pass is not queued twice.
struct Recent {
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Recent {
    fn new() -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() >= 4096
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Runs until the subscription ends. `start[p]` is where partition `p` is read from.
pub async fn run(
    sub: Arc<SubState>,
    kafka: mpn_kafka::Config,
    start: Vec<i64>,
    mut commands: mpsc::UnboundedReceiver<ReaderCommand>,
    go_live: mpsc::Sender<GoLive>,
) {
    let topic = kafka.input_topic.clone();
    let mut cfg = kafka.consumer();
    cfg.set("group.id", format!("{}-catchup", kafka.group_id));
    // Reading below the topic's retention must be an error, never a silent jump.
    cfg.set("auto.offset.reset", "error");
    cfg.set(
        "fetch.wait.max.ms",
        kafka.catchup_fetch_wait_max_ms.to_string(),
    );
    let consumer: BaseConsumer = match cfg.create() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot create a catch-up reader");
            sub.queue.kick(tonic::Status::unavailable(
                "cannot read Kafka for this subscription; reconnect",
            ));
            return;
        }
    };
    let consumer = Arc::new(consumer);
    // Partitions being read, with the next offset to read.
    let mut reading: BTreeMap<i32, i64> = start
        .iter()
        .enumerate()
        .map(|(p, &o)| (p as i32, o))
        .collect();
    let mut recent = Recent::new();
    let mut assigned = false;
    loop {
        while let Ok(cmd) = commands.try_recv() {
            let ReaderCommand::CatchUp { partition, from } = cmd;
            let pos = reading.entry(partition).or_insert(from);
            *pos = (*pos).min(from);
            assigned = false;
        }
        if sub.queue.is_closed() {
            break;
        }
        if reading.is_empty() {
            tokio::select! {
                c = commands.recv() => match c {
                    Some(ReaderCommand::CatchUp { partition, from }) => {
                        reading.insert(partition, from);
                        assigned = false;
                    }
                    None => break,
                },
                _ = sub.queue.closed() => break,
            }
            continue;
        }
        if !assigned {
            let mut tpl = TopicPartitionList::new();
            for (&p, &o) in &reading {
                let _ = tpl.add_partition_offset(&topic, p, Offset::Offset(o));
            }
            if let Err(e) = consumer.assign(&tpl) {
                tracing::error!(error = %e, "catch-up reader cannot assign partitions");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assigned = true;
        }
        // Read a batch on a blocking thread (librdkafka polls block).
        let c = consumer.clone();
        let batch = match tokio::task::spawn_blocking(move || {
            poll_batch(&c, 512, Duration::from_millis(50))
        })
        .await
        {
            Ok(Ok(batch)) => batch,
            Ok(Err(e)) => {
                tracing::warn!(subscriber = %sub.name, error = %e, "catch-up position is out of the topic's retention");
                sub.queue.kick(tonic::Status::out_of_range(format!(
                    "the subscription's position is older than the input topic's retention ({e}); \
                     resubscribe with START_FROM_EARLIEST or START_FROM_TIME"
                )));
                return;
            }
            Err(_) => Vec::new(),
        };
        let idle = batch.is_empty();
        for rec in batch {
            let Some(pos) = reading.get_mut(&rec.partition) else {
                continue;
            };
            if rec.offset < *pos {
                continue;
            }
            *pos = rec.offset + 1;
            if let Ok(event) = check_record(
                rec.content_type.as_deref(),
                rec.key.as_deref(),
                &rec.payload,
            ) && sub.wants(&event.institution)
                && recent.insert(event.notification_id().as_str())
            {
                let item = Outbound {
                    notification: Arc::new(event.to_notification(rec.partition, rec.offset)),
                    token: sub.token(rec.partition, rec.offset, None),
                };
                if sub.queue.send(item).await.is_err() {
                    return;
                }
                metrics::counter!("mpn_catchup_notifications_total").increment(1);
            }
            sub.scanned(rec.partition, rec.offset + 1);
        }
        if idle {
            // Caught up with what is there: try to hand partitions to the live path.
            let mut live = Vec::new();
            for (&p, &pos) in &reading {
                let (tx, rx) = oneshot::channel();
                let req = GoLive {
                    sub: sub.clone(),
                    partition: p,
                    position: pos,
                    reply: tx,
                };
                if go_live.send(req).await.is_err() {
                    return;
                }
                if rx.await.unwrap_or(false) {
                    live.push(p);
                }
            }
            if !live.is_empty() {
                for p in &live {
                    reading.remove(p);
                }
                tracing::debug!(subscriber = %sub.name, partitions = ?live, "caught up; live");
                assigned = false;
                if reading.is_empty() {
                    let _ = consumer.assign(&TopicPartitionList::new());
                }
            }
        }
    }
}

struct Rec {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    content_type: Option<Vec<u8>>,
}

/// Polls up to `max` records; an offset-out-of-range error is returned, others are
/// logged (librdkafka retries them).
fn poll_batch(consumer: &BaseConsumer, max: usize, wait: Duration) -> Result<Vec<Rec>, KafkaError> {
    let mut out = Vec::new();
    let mut timeout = wait;
    while out.len() < max {
        match consumer.poll(timeout) {
            Some(Ok(m)) => {
                let content_type = m
                    .headers()
                    .and_then(|h| {
                        h.iter()
                            .find(|h| h.key.eq_ignore_ascii_case(headers::CONTENT_TYPE))
                    })
                    .and_then(|h| h.value.map(<[u8]>::to_vec));
                out.push(Rec {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    content_type,
                });
                timeout = Duration::ZERO;
            }
            Some(Err(e)) => {
                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::OffsetOutOfRange)
                    || e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset)
                {
                    return Err(e);
                }
                tracing::warn!(error = %e, "catch-up read error");
                break;
            }
            None => break,
        }
    }
    Ok(out)
}
