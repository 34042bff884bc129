//! Durable subscriber cursors, kept in a compacted Kafka topic so that Kafka stays the
//! only stateful dependency and any replica can resume any subscriber.
//!
//! Record key: `<credential institution>/<login id>/<subscriber id>/<partition>`;
//! value: JSON `{"offset": N, "updated_at_ms": T}` where `N` is the input-topic offset
//! to resume that partition from (everything below it was acknowledged or was not for
//! this subscriber). At start-up the engine reads the topic — up to a marker
//! record it writes itself, so correctness never depends on the broker's high
//! watermark — starting at the last snapshot (see [`CursorStore::snapshot`]) rather
//! than at offset 0, so restarts stay fast on brokers that never compact (Tansu), and
//! then keeps tailing it, so cursors written by other replicas are
//! known too. Cursor writes are batched every `cursors.flush_interval_ms`; a stale
//! cursor only ever causes redelivery, never a gap, because a cursor only moves past
//! a notification once it is acknowledged.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::Error;
use crate::runtime::Shutdown;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// A durable subscriber's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubscriberKey(String);

/// The login under which the engine's own subscribers of `service` (CAFIS links) keep
/// their cursors: `~` is not allowed in configured login ids, so it never collides
/// with a real subscriber, and ids under it never expire.
pub fn internal_login(service: &str) -> String {
    format!("~{service}")
}

impl SubscriberKey {
    pub const RULE: &'static str = "subscriber_id must be 1-64 characters of [A-Za-z0-9._-]";

    pub fn new(institution: &str, login_id: &str, subscriber_id: &str) -> Result<Self, String> {
        if subscriber_id.is_empty()
            || subscriber_id.len() > 64
            || !subscriber_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!("{} (got {subscriber_id:?})", Self::RULE));
        }
        Ok(Self(format!("{institution}/{login_id}/{subscriber_id}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn record_key(&self, partition: i32) -> String {
        format!("{}/{partition}", self.0)
    }

    /// The record holding the institution set the cursors are for.
    fn set_key(&self) -> String {
        format!("{}/{SET_SUFFIX}", self.0)
    }

    /// The record of a CAFIS link's "may have sent" mark of `partition`.
    fn mark_key(&self, partition: i32) -> String {
        format!("{}/sent-{partition}", self.0)
    }

    /// `<institution>/<login id>/`: what every id of this key's credential starts with.
    pub fn credential_prefix(&self) -> &str {
        let end = self.0.rfind('/').map_or(0, |i| i + 1);
        &self.0[..end]
    }
}

/// The subscriber key of a record key (`<subscriber key>/<partition or suffix>`).
fn subscriber_of(record_key: &str) -> &str {
    record_key.rsplit_once('/').map_or(record_key, |(s, _)| s)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl SubscriberKey {}

impl std::fmt::Display for SubscriberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key of the read-barrier records (see [`CursorStore::sync`]); `marker/` keys are
/// never cursors.
const BARRIER_KEY: &str = "marker/barrier";

/// Record-key suffix of a subscriber's institution set (partition keys end in digits).
const SET_SUFFIX: &str = "institutions";

/// Key prefix of the partition-count pins (see [`CursorStore::pin_partitions`]),
/// followed by the input topic's name; never a subscriber's record.
const PIN_PREFIX: &str = "pin/partitions/";

#[derive(Debug, Default)]
struct Table {
    /// set record key -> the institution codes the subscriber's cursors are for,
    /// sorted and joined with `,`.
    sets: HashMap<String, String>,
    /// record key -> offset.
    known: HashMap<String, i64>,
    /// Written locally, not yet produced.
    dirty: HashMap<String, i64>,
    /// Records after the last snapshot: read at start-up plus written since.
    since_snapshot: usize,
    /// subscriber key -> when it was last used (a cursor written or saved, a
    /// subscription attached), Unix ms: ids unused for long expire.
    last_used: HashMap<String, i64>,
    /// subscriber key -> the latest use written to the topic (by any replica):
    /// an attached subscription whose cursors do not move writes them again every
    /// [`REFRESH_MS`], so other replicas see it used and never expire it.
    written: HashMap<String, i64>,
    /// input topic -> the partition count this deployment runs on.
    pins: HashMap<String, usize>,
}

/// How long a write that a subscriber or a link waits for may take.
const WRITE_LIMIT: Duration = Duration::from_secs(10);

/// How often an idle attached subscription's use is written (ms).
const REFRESH_MS: i64 = 10 * 60 * 1000;

impl Table {
    fn wrote(&mut self, record_key: &str, at_ms: i64) {
        let w = self
            .written
            .entry(subscriber_of(record_key).to_owned())
            .or_insert(at_ms);
        *w = (*w).max(at_ms);
        self.touch(record_key, at_ms);
    }

    fn touch(&mut self, record_key: &str, at_ms: i64) {
        let used = self
            .last_used
            .entry(subscriber_of(record_key).to_owned())
            .or_insert(at_ms);
        *used = (*used).max(at_ms);
    }

    /// An unchanged cursor of an id in use: written again once its last write is older
    /// than [`REFRESH_MS`], so other replicas see the id used and never expire it.
    fn refresh_if_due(&mut self, record_key: &str, known: i64, now: i64) {
        let written = self
            .written
            .get(subscriber_of(record_key))
            .copied()
            .unwrap_or(0);
        if now - written > REFRESH_MS && !self.dirty.contains_key(record_key) {
            self.dirty.insert(record_key.to_owned(), known);
        }
    }

    /// A tombstone: the record key is gone, and its id with it once nothing is left.
    fn remove(&mut self, record_key: &str) {
        self.known.remove(record_key);
        self.dirty.remove(record_key);
        self.sets.remove(record_key);
        let sub = subscriber_of(record_key);
        let prefix = format!("{sub}/");
        let left = self.known.keys().any(|k| k.starts_with(&prefix))
            || self.sets.keys().any(|k| k.starts_with(&prefix));
        if !left {
            self.last_used.remove(sub);
            self.written.remove(sub);
        }
    }
}

/// The cursor table of this replica.
pub struct CursorStore {
    table: Mutex<Table>,
    /// Read barriers waiting for the tail to pass their marker (see [`CursorStore::sync`]).
    barriers: Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>,
    producer: FutureProducer,
    topic: String,
    /// Where start-up began reading the topic (the last snapshot's start).
    loaded_from: i64,
}

impl std::fmt::Debug for CursorStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CursorStore")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SetValue {
    institutions: Vec<String>,
    #[serde(default)]
    updated_at_ms: i64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Pin {
    partitions: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Value {
    offset: i64,
    #[serde(default)]
    updated_at_ms: i64,
}

impl CursorStore {
    /// Reads the cursor topic completely, then keeps tailing it (a task of
    /// `shutdown`) until `shutdown` is triggered.
    pub async fn load(
        kafka: &mpn_kafka::Config,
        shutdown: &Shutdown,
    ) -> crate::error::Result<Arc<Self>> {
        let topic = kafka.cursor_topic();
        let producer: FutureProducer = kafka
            .producer()
            .create()
            .map_err(Error::kafka("creating the cursor producer"))?;
        let mut reader_cfg = kafka.consumer();
        reader_cfg.set("group.id", format!("{}-cursor-reader", kafka.group_id));
        let consumer: StreamConsumer = reader_cfg
            .create()
            .map_err(Error::kafka("creating the cursor reader"))?;
        // Start at the last complete snapshot (see `snapshot`), not at the beginning:
        // the load then costs the same however long the topic's history.
        let start = {
            let kafka = kafka.clone();
            tokio::task::spawn_blocking(move || snapshot_start(&kafka))
                .await
                .unwrap_or(0)
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start))
            .and_then(|()| consumer.assign(&tpl))
            .map_err(Error::kafka(format!("assigning the cursor topic {topic}")))?;

        // Everything before our own marker is the table as of now.
        let marker = format!(
            "marker/{}/{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        );
        producer
            .send(
                FutureRecord::<str, str>::to(&topic)
                    .partition(0)
                    .key(&marker)
                    .payload(""),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| {
                Error::kafka(format!("writing the cursor-topic marker to {topic}"))(e)
            })?;
        let store = Arc::new(Self {
            table: Mutex::default(),
            barriers: Mutex::default(),
            producer,
            topic: topic.clone(),
            loaded_from: start,
        });
        let loaded = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let m = consumer.recv().await?;
                if m.key() == Some(marker.as_bytes()) {
                    return Ok::<_, rdkafka::error::KafkaError>(());
                }
                store.apply(m.key(), m.payload());
                store.lock().since_snapshot += 1;
            }
        })
        .await
        .map_err(|_| {
            Error::CursorTopic(format!("reading the cursor topic {topic} took over 60 s"))
        })?;
        loaded.map_err(Error::kafka(format!("reading the cursor topic {topic}")))?;
        {
            let t = store.lock();
            tracing::info!(cursors = t.known.len(), records = t.since_snapshot, start, %topic, "cursors loaded");
        }

        let tail = store.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.triggered() => break,
                    m = consumer.recv() => match m {
                        Ok(m) => {
                            tail.passed_marker(m.key(), m.payload());
                            tail.apply(m.key(), m.payload());
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cursor topic read failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    },
                }
            }
        });
        Ok(store)
    }

    /// A read barrier: returns once this replica has read every cursor written to
    /// the topic before the call, by any replica. Writes a marker record and waits for
    /// the tail to read it back, as start-up does. Asked before treating a
    /// `subscriber_id` as never seen: a subscriber that just subscribed on another
    /// replica (whose first position that replica has written) must not be taken
    /// for a new one here and started from a later "now".
    pub async fn sync(&self) -> crate::error::Result<()> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        // One key for every barrier (compaction keeps one record of it); the
        // payload tells them apart.
        let marker = format!(
            "{}/{}/{}",
            std::process::id(),
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock_barriers().insert(marker.clone(), tx);
        let result = async {
            self.producer
                .send(
                    FutureRecord::<str, str>::to(&self.topic)
                        .partition(0)
                        .key(BARRIER_KEY)
                        .payload(&marker),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| {
                    Error::kafka(format!("writing a read barrier to {}", self.topic))(e)
                })?;
            tokio::time::timeout(Duration::from_secs(10), rx)
                .await
                .map_err(|_| {
                    Error::CursorTopic(format!(
                        "reading the cursor topic {} back took over 10 s",
                        self.topic
                    ))
                })?
                .map_err(|_| {
                    Error::CursorTopic(format!("the cursor topic reader of {} stopped", self.topic))
                })
        }
        .await;
        self.lock_barriers().remove(&marker);
        result
    }

    fn lock_barriers(&self) -> MutexGuard<'_, HashMap<String, tokio::sync::oneshot::Sender<()>>> {
        self.barriers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tail read a record: releases the barrier waiting for it, if any.
    fn passed_marker(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        if key != Some(BARRIER_KEY.as_bytes()) {
            return;
        }
        let Some(marker) = payload.and_then(|p| std::str::from_utf8(p).ok()) else {
            return;
        };
        if let Some(tx) = self.lock_barriers().remove(marker) {
            let _ = tx.send(());
        }
    }

    /// Sets a subscriber's cursors and writes them to the topic now, waiting for the
    /// broker: a first position (a new `subscriber_id`, or an explicit `start_from`)
    /// is durable before the subscriber is told it is subscribed, so a crash right
    /// after cannot make the id look new again and start it from a later "now".
    pub async fn persist(
        &self,
        key: &SubscriberKey,
        institutions: &[String],
        positions: &[i64],
    ) -> crate::error::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let mut records: Vec<(String, Vec<u8>)> = positions
            .iter()
            .enumerate()
            .map(|(p, &offset)| {
                let v = serde_json::to_vec(&Value {
                    offset,
                    updated_at_ms: now,
                })
                .unwrap_or_default();
                (key.record_key(p as i32), v)
            })
            .collect();
        let (set_key, set_value, joined) = Self::set_record(key, institutions, now);
        records.push((set_key.clone(), set_value));
        let sends = records.iter().map(|(k, v)| {
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key(k.as_bytes())
                .payload(v);
            self.producer.send(record, Duration::from_secs(10))
        });
        let results = tokio::time::timeout(WRITE_LIMIT, futures::future::join_all(sends))
            .await
            .map_err(|_| {
                Error::CursorTopic(format!(
                    "writing the first position to {}: no answer in {WRITE_LIMIT:?}",
                    self.topic
                ))
            })?;
        for r in results {
            r.map_err(|(e, _)| {
                Error::kafka(format!("writing the first position to {}", self.topic))(e)
            })?;
        }
        // The table takes the position only once the broker has it: a refused
        // subscribe leaves nothing behind for the flusher to write.
        for (p, &offset) in positions.iter().enumerate() {
            let k = key.record_key(p as i32);
            let mut t = self.lock();
            t.wrote(&k, now);
            t.known.insert(k.clone(), offset);
            t.dirty.remove(&k);
        }
        self.keep_set(set_key, joined, now);
        self.lock().since_snapshot += records.len();
        metrics::counter!(crate::telemetry::metric::CURSOR_WRITES_TOTAL)
            .increment(records.len() as u64);
        Ok(())
    }

    /// The partition count recorded for `topic` by the deployment's first start.
    pub fn pinned_partitions(&self, topic: &str) -> Option<usize> {
        self.lock().pins.get(topic).copied()
    }

    /// Records that this deployment runs `topic` with `partitions` partitions, waiting
    /// for the broker. Cursors, the CAFIS sequence numbers and the CAFIS link owners
    /// all depend on the count, so every later start checks it against this record
    /// (see `Engine::start`); snapshots carry it on.
    pub async fn pin_partitions(&self, topic: &str, partitions: usize) -> crate::error::Result<()> {
        let v = serde_json::to_vec(&Pin { partitions }).unwrap_or_default();
        let key = format!("{PIN_PREFIX}{topic}");
        let record = FutureRecord::to(&self.topic)
            .partition(0)
            .key(key.as_bytes())
            .payload(&v);
        self.producer
            .send(record, WRITE_LIMIT)
            .await
            .map_err(|(e, _)| {
                Error::kafka(format!("recording the partition count in {}", self.topic))(e)
            })?;
        self.lock().pins.insert(topic.to_owned(), partitions);
        Ok(())
    }

    /// The cursor-topic offset start-up read from (0 before the first snapshot).
    pub fn loaded_from(&self) -> i64 {
        self.loaded_from
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A record read from the topic. Cursors this replica has changed and not yet
    /// written are newer than anything read, so they win.
    fn apply(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(key) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        if key.starts_with("marker/") {
            return;
        }
        if let Some(topic) = key.strip_prefix(PIN_PREFIX) {
            if let Some(n) = payload.and_then(|p| serde_json::from_slice::<Pin>(p).ok()) {
                self.lock().pins.insert(topic.to_owned(), n.partitions);
            }
            return;
        }
        let Some(payload) = payload else {
            // A tombstone: the id expired (written by this or another replica).
            self.lock().remove(key);
            return;
        };
        let payload = Some(payload);
        if key.ends_with(SET_SUFFIX) {
            if let Some(v) = payload.and_then(|p| serde_json::from_slice::<SetValue>(p).ok()) {
                let mut t = self.lock();
                t.wrote(key, v.updated_at_ms);
                t.sets.insert(key.to_owned(), v.institutions.join(","));
            }
            return;
        }
        let Some(v) = payload.and_then(|p| serde_json::from_slice::<Value>(p).ok()) else {
            return;
        };
        let mut t = self.lock();
        t.wrote(key, v.updated_at_ms);
        if !t.dirty.contains_key(key) {
            t.known.insert(key.to_owned(), v.offset);
        }
    }

    /// How many durable subscriber ids the credential of `key` has.
    pub fn ids_of_credential(&self, key: &SubscriberKey) -> usize {
        let prefix = key.credential_prefix();
        self.lock()
            .last_used
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    /// When the id of `key` was last used, as this replica knows (Unix ms).
    pub fn last_used(&self, key: &SubscriberKey) -> Option<i64> {
        self.lock().last_used.get(key.as_str()).copied()
    }

    /// Every durable subscriber id known here.
    pub fn ids(&self) -> usize {
        self.lock().last_used.len()
    }

    /// Removes every id not used since `cutoff_ms` (Unix ms), writing tombstones for
    /// its records so other replicas and compaction drop them too. Returns how many
    /// ids expired.
    pub async fn expire(&self, cutoff_ms: i64) -> crate::error::Result<usize> {
        let (ids, keys): (Vec<String>, Vec<String>) = {
            let mut t = self.lock();
            // Internal subscribers (CAFIS links, `internal_login`) never expire:
            // their cursors and marks are the links' memory.
            let internal = |id: &str| id.split('/').nth(1).is_some_and(|l| l.starts_with('~'));
            let ids: Vec<String> = t
                .last_used
                .iter()
                .filter(|&(id, &at)| at < cutoff_ms && !internal(id))
                .map(|(k, _)| k.clone())
                .collect();
            let mut keys = Vec::new();
            for id in &ids {
                let prefix = format!("{id}/");
                keys.extend(t.known.keys().filter(|k| k.starts_with(&prefix)).cloned());
                keys.extend(t.sets.keys().filter(|k| k.starts_with(&prefix)).cloned());
            }
            for k in &keys {
                t.remove(k);
            }
            for id in &ids {
                t.last_used.remove(id);
            }
            (ids, keys)
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let sends = keys.iter().map(|k| {
            let record = FutureRecord::<[u8], [u8]>::to(&self.topic)
                .partition(0)
                .key(k.as_bytes());
            self.producer.send(record, Duration::from_secs(30))
        });
        for r in futures::future::join_all(sends).await {
            r.map_err(|(e, _)| {
                Error::kafka(format!("writing a cursor tombstone to {}", self.topic))(e)
            })?;
        }
        metrics::counter!(crate::telemetry::metric::CURSOR_IDS_EXPIRED_TOTAL)
            .increment(ids.len() as u64);
        tracing::info!(
            ids = ids.len(),
            records = keys.len(),
            "unused durable subscriber ids expired"
        );
        Ok(ids.len())
    }

    /// The set record of `key` and the set as the table keeps it; the table is
    /// changed by [`Self::keep_set`] once the broker has the record.
    fn set_record(
        key: &SubscriberKey,
        institutions: &[String],
        now: i64,
    ) -> (String, Vec<u8>, String) {
        let mut sorted = institutions.to_vec();
        sorted.sort();
        sorted.dedup();
        let joined = sorted.join(",");
        let v = serde_json::to_vec(&SetValue {
            institutions: sorted,
            updated_at_ms: now,
        })
        .unwrap_or_default();
        (key.set_key(), v, joined)
    }

    fn keep_set(&self, set_key: String, joined: String, now: i64) {
        let mut t = self.lock();
        t.wrote(&set_key, now);
        t.sets.insert(set_key, joined);
    }

    /// The institution set a subscriber's cursors were stored for (sorted codes
    /// joined with `,`); `None` for cursors stored before sets were kept.
    pub fn institutions(&self, key: &SubscriberKey) -> Option<String> {
        self.lock().sets.get(&key.set_key()).cloned()
    }

    /// Records the institution set of cursors stored without one (written before
    /// sets were kept), waiting for the broker.
    pub async fn persist_institutions(
        &self,
        key: &SubscriberKey,
        institutions: &[String],
    ) -> crate::error::Result<()> {
        let now = chrono::Utc::now().timestamp_millis();
        let (k, v, joined) = Self::set_record(key, institutions, now);
        self.write_now(&k, &v, "an institution set").await?;
        self.keep_set(k, joined, now);
        Ok(())
    }

    /// Writes one record and waits for the broker.
    /// Bounded: a broker that does not answer within [`WRITE_LIMIT`] is an error
    /// (librdkafka would wait up to its `message.timeout.ms`, five minutes).
    async fn write_now(&self, key: &str, value: &[u8], what: &str) -> crate::error::Result<()> {
        let send = self.producer.send(
            FutureRecord::to(&self.topic)
                .partition(0)
                .key(key.as_bytes())
                .payload(value),
            WRITE_LIMIT,
        );
        tokio::time::timeout(WRITE_LIMIT, send)
            .await
            .map_err(|_| {
                Error::CursorTopic(format!(
                    "writing {what} to {}: no answer in {WRITE_LIMIT:?}",
                    self.topic
                ))
            })?
            .map_err(|(e, _)| Error::kafka(format!("writing {what} to {}", self.topic))(e))?;
        Ok(())
    }

    /// A link's "may have sent" mark of `partition`: no notice at or past it was
    /// ever written to the host (see the CAFIS link's resend flag).
    pub fn sent_mark(&self, key: &SubscriberKey, partition: i32) -> Option<i64> {
        self.lock().known.get(&key.mark_key(partition)).copied()
    }

    /// Writes a link's "may have sent" mark and waits for the broker.
    pub async fn persist_sent_mark(
        &self,
        key: &SubscriberKey,
        partition: i32,
        offset: i64,
    ) -> crate::error::Result<()> {
        let k = key.mark_key(partition);
        let now = now_ms();
        let v = serde_json::to_vec(&Value {
            offset,
            updated_at_ms: now,
        })
        .unwrap_or_default();
        self.write_now(&k, &v, "a sent mark").await?;
        let mut t = self.lock();
        t.touch(&k, now);
        t.known.insert(k, offset);
        Ok(())
    }

    /// The stored cursor of each of `partitions` partitions.
    pub fn get(&self, key: &SubscriberKey, partitions: usize) -> Vec<Option<i64>> {
        let t = self.lock();
        (0..partitions as i32)
            .map(|p| t.known.get(&key.record_key(p)).copied())
            .collect()
    }

    /// Sets a cursor (a new start position chosen by the subscriber).
    pub fn set(&self, key: &SubscriberKey, partition: i32, offset: i64) {
        let k = key.record_key(partition);
        let mut t = self.lock();
        t.touch(&k, now_ms());
        t.known.insert(k.clone(), offset);
        t.dirty.insert(k, offset);
    }

    /// Moves a cursor forward (acknowledgements); never backwards. Counts as a use
    /// of the id either way (attached subscriptions save their cursors every second).
    pub fn advance(&self, key: &SubscriberKey, partition: i32, offset: i64) {
        let k = key.record_key(partition);
        let now = now_ms();
        let mut t = self.lock();
        t.touch(&k, now);
        if let Some(&known) = t.known.get(&k)
            && known >= offset
        {
            // Unchanged: written again now and then, so other replicas see the id
            // in use (an idle subscription attached here must not expire there).
            t.refresh_if_due(&k, known, now);
            return;
        }
        t.known.insert(k.clone(), offset);
        t.dirty.insert(k, offset);
    }

    /// A use of the id without a new position (an attached subscription whose
    /// partition has no cursor to move yet): keeps it from expiring, here and, through
    /// the periodic rewrite, on the other replicas.
    /// Never writes a value of its own, and never brings back an id whose records
    /// are gone (expired by another replica while attached: its next attach is a new
    /// id, as it would be anywhere).
    pub fn in_use(&self, key: &SubscriberKey, partition: i32) {
        let k = key.record_key(partition);
        let now = now_ms();
        let mut t = self.lock();
        let Some(&known) = t.known.get(&k) else {
            return;
        };
        t.touch(&k, now);
        t.refresh_if_due(&k, known, now);
    }

    /// Writes every changed cursor and waits for the broker.
    pub async fn flush(&self) -> crate::error::Result<usize> {
        let dirty = std::mem::take(&mut self.lock().dirty);
        if dirty.is_empty() {
            return Ok(0);
        }
        let now = chrono::Utc::now().timestamp_millis();
        let records: Vec<(String, i64, Vec<u8>)> = dirty
            .into_iter()
            .map(|(k, offset)| {
                let v = serde_json::to_vec(&Value {
                    offset,
                    updated_at_ms: now,
                })
                .unwrap_or_default();
                (k, offset, v)
            })
            .collect();
        let sends = records.iter().map(|(k, _, v)| {
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key(k.as_bytes())
                .payload(v);
            self.producer.send(record, Duration::from_secs(30))
        });
        let results = futures::future::join_all(sends).await;
        let mut failed = None;
        for ((k, offset, _), r) in records.iter().zip(results) {
            if let Err((e, _)) = r {
                // Put it back unless something newer is waiting.
                self.lock().dirty.entry(k.clone()).or_insert(*offset);
                failed = Some(e);
            }
        }
        if let Some(e) = failed {
            return Err(Error::kafka(format!("writing cursors to {}", self.topic))(
                e,
            ));
        }
        {
            let mut t = self.lock();
            for (k, _, _) in &records {
                t.wrote(k, now);
            }
        }
        self.lock().since_snapshot += records.len();
        metrics::counter!(crate::telemetry::metric::CURSOR_WRITES_TOTAL)
            .increment(records.len() as u64);
        Ok(records.len())
    }

    /// Writes every known cursor again, then records where that snapshot starts as
    /// the committed offset of the group `<group_id>.cursor-index`. Records before a
    /// snapshot are never needed again (each key's latest value is in or after it),
    /// so start-up reads from the last snapshot on, whatever compaction has or has
    /// not removed. A value a snapshot copies may be older than one another replica
    /// wrote just before it: that only moves a cursor back (redelivery, never a gap).
    pub async fn snapshot(&self, kafka: &mpn_kafka::Config) -> crate::error::Result<usize> {
        let now = chrono::Utc::now().timestamp_millis();
        let (known, payloads): (Vec<String>, Vec<Vec<u8>>) = {
            let t = self.lock();
            // A copy is not a use: each record keeps its id's last use, so ids
            // unused for long still expire however often snapshots are taken.
            let used = |k: &str| t.last_used.get(subscriber_of(k)).copied().unwrap_or(now);
            let offsets = t.known.iter().map(|(k, offset)| {
                let v = serde_json::to_vec(&Value {
                    offset: *offset,
                    updated_at_ms: used(k),
                });
                (k.clone(), v.unwrap_or_default())
            });
            let sets = t.sets.iter().map(|(k, set)| {
                let v = serde_json::to_vec(&SetValue {
                    institutions: set
                        .split(',')
                        .filter(|c| !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    updated_at_ms: used(k),
                });
                (k.clone(), v.unwrap_or_default())
            });
            let pins = t.pins.iter().map(|(topic, &partitions)| {
                let v = serde_json::to_vec(&Pin { partitions });
                (format!("{PIN_PREFIX}{topic}"), v.unwrap_or_default())
            });
            offsets.chain(sets).chain(pins).unzip()
        };
        if known.is_empty() {
            return Ok(0);
        }
        self.lock().since_snapshot = 0;
        let sends = known.iter().zip(&payloads).map(|(k, v)| {
            let record = FutureRecord::to(&self.topic)
                .partition(0)
                .key(k.as_bytes())
                .payload(v);
            self.producer.send(record, Duration::from_secs(30))
        });
        let mut start = i64::MAX;
        for r in futures::future::join_all(sends).await {
            let delivered = r.map_err(|(e, _)| {
                Error::kafka(format!("writing a cursor snapshot to {}", self.topic))(e)
            })?;
            start = start.min(delivered.offset);
        }
        let (kafka, topic) = (kafka.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let index: rdkafka::consumer::BaseConsumer = index_client(&kafka).create()?;
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(start))?;
            index.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        })
        .await
        .map_err(|e| Error::Runtime(format!("recording the snapshot start: {e}")))?
        .map_err(Error::kafka("recording where the cursor snapshot starts"))?;
        Ok(known.len())
    }

    /// True when the records since the last snapshot outnumber twice the table: the
    /// next start-up would read mostly superseded values, so a snapshot is due. This
    /// bounds a start-up's read to about three times the number of cursors (plus what
    /// other replicas wrote), however often the engine restarts.
    fn history_outgrew_table(&self) -> bool {
        let t = self.lock();
        t.since_snapshot > 2 * t.known.len().max(500)
    }

    /// Flushes every `interval` until `shutdown`, then once more; writes a snapshot
    /// every `snapshot_every` or sooner when `history_outgrew_table`.
    pub async fn run_flusher(
        self: Arc<Self>,
        kafka: mpn_kafka::Config,
        interval: Duration,
        snapshot_every: Duration,
        expire_after: Option<Duration>,
        shutdown: Shutdown,
    ) {
        let mut tick = tokio::time::interval(interval);
        let mut next_snapshot = tokio::time::Instant::now() + snapshot_every;
        loop {
            tokio::select! {
                _ = shutdown.triggered() => break,
                _ = tick.tick() => {
                    if let Err(e) = self.flush().await {
                        tracing::warn!(error = %e, "cursor flush failed; will retry");
                    }
                    if tokio::time::Instant::now() >= next_snapshot || self.history_outgrew_table() {
                        next_snapshot = tokio::time::Instant::now() + snapshot_every;
                        // Expired ids are left out of the snapshot that follows.
                        if let Some(age) = expire_after {
                            let cutoff = now_ms() - age.as_millis() as i64;
                            if let Err(e) = self.expire(cutoff).await {
                                tracing::warn!(error = %e, "cursor expiry failed; will retry");
                            }
                        }
                        if let Err(e) = self.snapshot(&kafka).await {
                            tracing::warn!(error = %e, "cursor snapshot failed; will retry");
                        }
                    }
                }
            }
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final cursor flush failed; subscribers will see redeliveries");
        }
    }
}

/// The consumer whose group's committed offset marks the last cursor snapshot.
fn index_client(kafka: &mpn_kafka::Config) -> rdkafka::ClientConfig {
    let mut c = kafka.consumer();
    c.set("group.id", format!("{}.cursor-index", kafka.group_id));
    c
}

/// Where the last complete snapshot starts (0 if there is none).
fn snapshot_start(kafka: &mpn_kafka::Config) -> i64 {
    use rdkafka::consumer::Consumer;
    let Ok(index) = index_client(kafka).create::<rdkafka::consumer::BaseConsumer>() else {
        return 0;
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&kafka.cursor_topic(), 0);
    match index.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(got) => match got.elements().first().map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        },
        Err(_) => 0,
    }
}
