//! What the operator's admin API shows, and its one write action. The HTTP side
//! (routes, the bearer token) is the binary's (`app/src/admin.rs`); here are the
//! views, read from the engine's own structures:
//!
//! - [`Admin::sessions`]: each live institution session, its state and backlog;
//! - [`Admin::subscribers`]: each attached subscription with its cursors and lag;
//! - [`Admin::links`]: each configured CAFIS link and whether this replica holds it;
//! - [`Admin::dead_letters`]: the newest records of the dead-letter topic;
//! - [`Admin::reinject`]: a dead-lettered record (optionally replaced by a corrected
//!   event) produced to the input topic again, on its key's partition.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::offsets::OffsetTracker;
use crate::session::SessionDirectory;
use crate::subscriptions::Hub;

/// The admin views of one engine; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub(crate) sessions: SessionDirectory,
    pub(crate) hub: Arc<Hub>,
    pub(crate) tracker: OffsetTracker,
    pub(crate) links: Arc<crate::cafis::Links>,
    pub(crate) kafka: mpn_kafka::Config,
    pub(crate) partitions: usize,
    pub(crate) producer: FutureProducer,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    pub institution: String,
    /// `running`, or `stopped` (its actor died; the next event starts a new one).
    pub state: &'static str,
    pub started_at: String,
    pub events_routed: u64,
    /// Routed but not yet processed (the session's backlog).
    pub events_pending: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriberInfo {
    /// This process's number of the subscription (the `s<id>` of metric labels).
    pub id: u64,
    pub name: String,
    /// `<institution>/<login id>/<subscriber id>` of a durable subscription.
    pub durable_id: Option<String>,
    pub institutions: Vec<String>,
    pub remote_addr: Option<String>,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Per partition: the next offset the subscription needs (its cursor), where known.
    pub cursors: Vec<Option<i64>>,
    /// Records behind what ingest consumed, summed over partitions (durable only).
    pub lag: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterInfo {
    pub partition: i32,
    pub offset: i64,
    /// When the dead letter was written (RFC 3339).
    pub written_at: Option<String>,
    pub key: Option<String>,
    pub kind: String,
    pub field: String,
    pub message: String,
    pub source_topic: String,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    pub content_type: Option<String>,
    pub payload_bytes: usize,
}

/// Who asked for an admin action (for its audit record).
#[derive(Debug, Clone, Copy)]
pub struct Operator<'a> {
    /// What the operator is called in the audit record (the admin API: `operator`).
    pub login: &'a str,
    pub peer: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Reinjected {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Why a re-inject was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReinjectError {
    #[error("no dead letter at partition {partition} offset {offset} of {topic}")]
    NotFound {
        topic: String,
        partition: i32,
        offset: i64,
    },
    #[error("the corrected event is invalid: {field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    NeedsCorrection(String),
    #[error("Kafka: {0}")]
    Kafka(String),
}

const READ_TIMEOUT: Duration = Duration::from_secs(10);

impl Admin {
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut out: Vec<SessionInfo> = self
            .sessions
            .iter()
            .map(|e| {
                let v = e.value();
                let sent = v.sent.load(Ordering::Relaxed);
                let done = v.processed.load(Ordering::Acquire);
                SessionInfo {
                    institution: e.key().to_string(),
                    state: if v.addr.connected() {
                        "running"
                    } else {
                        "stopped"
                    },
                    started_at: chrono::DateTime::<chrono::Utc>::from(v.started).to_rfc3339(),
                    events_routed: sent,
                    events_pending: sent.saturating_sub(done),
                }
            })
            .collect();
        out.sort_by(|a, b| a.institution.cmp(&b.institution));
        out
    }

    pub fn subscribers(&self) -> Vec<SubscriberInfo> {
        let lags: HashMap<u64, i64> =
            crate::subscriptions::lag_by_subscriber(&self.hub, |p| self.tracker.consumed_next(p))
                .into_iter()
                .map(|(s, lag)| (s.id, lag))
                .collect();
        let mut out: Vec<SubscriberInfo> = self
            .hub
            .all()
            .into_iter()
            .map(|s| {
                let mut institutions: Vec<String> =
                    s.institutions.iter().map(ToString::to_string).collect();
                institutions.sort();
                let durable_id = s.key.as_ref().map(ToString::to_string);
                SubscriberInfo {
                    id: s.id,
                    name: s.name.clone(),
                    lag: lags.get(&s.id).copied(),
                    durable_id,
                    institutions,
                    remote_addr: s.remote_addr.clone(),
                    queue_depth: s.queue.depth(),
                    queue_capacity: s.queue.capacity(),
                    cursors: (0..self.partitions as i32).map(|p| s.cursor(p)).collect(),
                }
            })
            .collect();
        out.sort_by_key(|s| s.id);
        out
    }

    pub fn links(&self) -> Vec<crate::cafis::LinkStatus> {
        self.links.status()
    }

    /// The newest `limit` dead letters (over all partitions of the dead-letter
    /// topic), newest first.
    pub async fn dead_letters(&self, limit: usize) -> Result<DeadLetters, String> {
        let kafka = self.kafka.clone();
        tokio::task::spawn_blocking(move || read_dead_letters(&kafka, limit))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Produces the dead letter at (`partition`, `offset`) to the input topic again,
    /// on the partition its key belongs on; with `corrected`, that event (JSON,
    /// checked first) replaces the payload.
    pub async fn reinject(
        &self,
        partition: i32,
        offset: i64,
        corrected: Option<serde_json::Value>,
        operator: Operator<'_>,
    ) -> Result<Reinjected, ReinjectError> {
        let corrected_given = corrected.is_some();
        let kafka = self.kafka.clone();
        let letter = tokio::task::spawn_blocking(move || read_one(&kafka, partition, offset))
            .await
            .map_err(|e| ReinjectError::Kafka(e.to_string()))??;
        let mut key = letter.key.clone();
        let (payload, content_type) = match corrected {
            Some(event) => {
                let bytes =
                    serde_json::to_vec(&event).map_err(|e| ReinjectError::Kafka(e.to_string()))?;
                let checked = mpn_domain::check_record(Some(b"application/json"), None, &bytes)
                    .map_err(|r| ReinjectError::Invalid {
                        field: r.field,
                        message: r.message,
                    })?;
                // The key follows the corrected event's institution (a record dead-
                // lettered for a key that named another institution is mended this
                // way); the original key is kept when it names the same one.
                let institution = checked.institution;
                let same = key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| mpn_domain::InstitutionCode::parse(k).ok())
                    == Some(institution);
                if !same {
                    // As the event writes it (producers key with the same form, so
                    // the record lands on the partition of the institution's others).
                    let written = event["institution_code"]
                        .as_str()
                        .map_or_else(|| institution.to_string(), str::to_owned);
                    key = Some(written.into_bytes());
                }
                (bytes, Some("application/json".to_owned()))
            }
            // A CAFIS dead letter holds the notification the host refused, not an
            // input event: only a corrected event can go back in.
            None if letter.kind.starts_with("cafis_") => {
                return Err(ReinjectError::NeedsCorrection(format!(
                    "a {} dead letter holds a notification, not an input event; send the input event as `event`",
                    letter.kind
                )));
            }
            None => (letter.payload, letter.content_type),
        };
        let topic = self.kafka.input_topic.clone();
        let target = match &key {
            Some(k) => mpn_kafka::partition::partition_for_key(k, self.partitions),
            None => letter.source_partition.unwrap_or(0),
        };
        let from = format!("{}/{partition}/{offset}", self.kafka.dlq_topic());
        let mut headers = OwnedHeaders::new().insert(Header {
            key: mpn_kafka::headers::REINJECTED_FROM,
            value: Some(&from),
        });
        if let Some(ct) = &content_type {
            headers = headers.insert(Header {
                key: mpn_kafka::headers::CONTENT_TYPE,
                value: Some(ct),
            });
        }
        let mut record = FutureRecord::to(&topic)
            .payload(&payload)
            .partition(target)
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(k);
        }
        let delivered = self
            .producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| ReinjectError::Kafka(e.to_string()))?;
        let done = Reinjected {
            topic,
            partition: delivered.partition,
            offset: delivered.offset,
        };
        let institution = key
            .as_deref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .map(|k| {
                mpn_domain::InstitutionCode::parse(&k)
                    .map(|c| c.to_string())
                    .unwrap_or(k)
            })
            .unwrap_or_default();
        self.hub.audit().record(
            crate::audit::AuditRecord::new(
                crate::audit::AuditEvent::DeadLetterReinjected,
                &institution,
                operator.login,
                operator.peer,
            )
            .reason(&format!(
                "{from} -> {}/{}/{}{}",
                done.topic,
                done.partition,
                done.offset,
                if corrected_given { " (corrected)" } else { "" }
            )),
        );
        Ok(done)
    }
}

struct Letter {
    kind: String,
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    content_type: Option<String>,
    source_partition: Option<i32>,
}

fn reader(kafka: &mpn_kafka::Config) -> Result<BaseConsumer, String> {
    let mut c = kafka.clone();
    // Assigned, never subscribed: no group is joined and nothing is committed.
    c.group_id = format!("{}-admin-reader", kafka.group_id);
    c.consumer()
        .set("enable.auto.commit", "false")
        .create()
        .map_err(|e| e.to_string())
}

fn header(m: &impl Message, name: &str) -> Option<String> {
    m.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn info(m: &impl Message) -> DeadLetterInfo {
    use mpn_kafka::headers as h;
    DeadLetterInfo {
        partition: m.partition(),
        offset: m.offset(),
        written_at: m
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis)
            .map(|t| t.to_rfc3339()),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        kind: header(m, h::ERROR_KIND).unwrap_or_default(),
        field: header(m, h::ERROR_FIELD).unwrap_or_default(),
        message: header(m, h::ERROR_MESSAGE).unwrap_or_default(),
        source_topic: header(m, h::SOURCE_TOPIC).unwrap_or_default(),
        source_partition: header(m, h::SOURCE_PARTITION).and_then(|v| v.parse().ok()),
        source_offset: header(m, h::SOURCE_OFFSET).and_then(|v| v.parse().ok()),
        content_type: header(m, h::CONTENT_TYPE),
        payload_bytes: m.payload().map_or(0, <[u8]>::len),
    }
}

/// The newest dead letters; `complete` is false when the read ran out of time
/// before every partition's end (the list may then miss some).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetterInfo>,
    pub complete: bool,
}

fn read_dead_letters(kafka: &mpn_kafka::Config, limit: usize) -> Result<DeadLetters, String> {
    let topic = kafka.dlq_topic();
    let consumer = reader(kafka)?;
    let md = consumer
        .fetch_metadata(Some(&topic), READ_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let partitions: Vec<i32> = md
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut tpl = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for &p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(&topic, p, READ_TIMEOUT)
            .map_err(|e| e.to_string())?;
        if high > low {
            let from = (high - limit as i64).max(low);
            tpl.add_partition_offset(&topic, p, Offset::Offset(from))
                .map_err(|e| e.to_string())?;
            ends.insert(p, high);
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(DeadLetters {
            dead_letters: out,
            complete: true,
        });
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    while !ends.is_empty() && std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| e.to_string())?;
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() < end)
        {
            out.push(info(&m));
        }
        if ends
            .get(&m.partition())
            .is_some_and(|&end| m.offset() + 1 >= end)
        {
            ends.remove(&m.partition());
        }
    }
    out.sort_by(|a, b| {
        b.written_at
            .cmp(&a.written_at)
            .then(b.offset.cmp(&a.offset))
    });
    out.truncate(limit);
    Ok(DeadLetters {
        complete: ends.is_empty(),
        dead_letters: out,
    })
}

fn read_one(
    kafka: &mpn_kafka::Config,
    partition: i32,
    offset: i64,
) -> Result<Letter, ReinjectError> {
    let topic = kafka.dlq_topic();
    let not_found = || ReinjectError::NotFound {
        topic: topic.clone(),
        partition,
        offset,
    };
    let consumer = reader(kafka).map_err(ReinjectError::Kafka)?;
    let (low, high) = consumer
        .fetch_watermarks(&topic, partition, READ_TIMEOUT)
        .map_err(|e| match e.rdkafka_error_code() {
            Some(rdkafka::types::RDKafkaErrorCode::UnknownPartition) => not_found(),
            _ => ReinjectError::Kafka(e.to_string()),
        })?;
    if offset < low || offset >= high {
        return Err(not_found());
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))
        .map_err(|e| ReinjectError::Kafka(e.to_string()))?;
    consumer
        .assign(&tpl)
        .map_err(|e| ReinjectError::Kafka(e.to_string()))?;
    let deadline = std::time::Instant::now() + READ_TIMEOUT;
    while std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.map_err(|e| ReinjectError::Kafka(e.to_string()))?;
        if m.offset() < offset {
            continue;
        }
        if m.offset() > offset {
            // Nothing at that offset (a transaction marker, or compacted away).
            return Err(not_found());
        }
        return Ok(Letter {
            kind: header(&m, mpn_kafka::headers::ERROR_KIND).unwrap_or_default(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().unwrap_or_default().to_vec(),
            content_type: header(&m, mpn_kafka::headers::CONTENT_TYPE),
            source_partition: header(&m, mpn_kafka::headers::SOURCE_PARTITION)
                .and_then(|v| v.parse().ok()),
        });
    }
    Err(ReinjectError::Kafka(format!(
        "reading {topic} partition {partition} offset {offset} took over {} s",
        READ_TIMEOUT.as_secs()
    )))
}
