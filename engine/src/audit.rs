//! The audit trail: every failed login, lockout, successful authentication and
//! subscription, and every credential removed by a reload, as one JSON record in the
//! audit topic (`auth.audit_topic`, `<input_topic>.audit` by default). Who, from
//! where, which institutions, when; never a secret.
//!
//! Records go through a bounded channel to one writer task: a login never waits for
//! Kafka. When the channel is full the record is dropped, counted
//! (`mpn_audit_records_dropped_total`) and warned about.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::runtime::Shutdown;

/// Records waiting for the writer before new ones are dropped.
pub const CAPACITY: usize = 4_096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditEvent {
    LoginFailed,
    LockedOut,
    Authenticated,
    Subscribed,
    CredentialRemoved,
    /// An operator re-injected a dead letter through the admin API.
    DeadLetterReinjected,
}

/// One audit record (the JSON value of a record in the audit topic).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub event: AuditEvent,
    /// RFC 3339, UTC, milliseconds.
    pub at: String,
    /// The institution the caller named (or its credential's), canonical when valid;
    /// client-chosen values are bounded and escaped.
    pub institution: String,
    pub login_id: String,
    pub peer: Option<String>,
    /// Granted (authenticated), subscribed (subscribed) or revoked
    /// (credential_removed) institutions.
    pub institutions: Vec<String>,
    pub subscriber_id: String,
    /// Why: `bad_credentials`, `bad_certificate`, `locked_out` (login_failed);
    /// `login` / `peer` (locked_out: the scope); `certificate` / `secret`
    /// (authenticated: how); `removed` / `certificate_removed` / `grants_revoked`
    /// (credential_removed); where from and where to (dead_letter_reinjected).
    pub reason: String,
}

impl AuditRecord {
    pub fn new(event: AuditEvent, institution: &str, login_id: &str, peer: Option<IpAddr>) -> Self {
        Self {
            event,
            at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            institution: mpn_delivery::display_name(institution),
            login_id: mpn_delivery::display_name(login_id),
            peer: peer.map(|p| p.to_string()),
            institutions: Vec::new(),
            subscriber_id: String::new(),
            reason: String::new(),
        }
    }

    pub fn reason(mut self, reason: &str) -> Self {
        self.reason = reason.to_owned();
        self
    }

    pub fn institutions(mut self, institutions: &[String]) -> Self {
        self.institutions = institutions.to_vec();
        self
    }

    pub fn subscriber_id(mut self, id: &str) -> Self {
        self.subscriber_id = mpn_delivery::display_name(id);
        self
    }
}

/// Hands records to the writer. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub struct Audit {
    tx: Option<mpsc::Sender<AuditRecord>>,
    /// Unix seconds of the last "dropped" warning (one per second at most).
    warned: Arc<AtomicI64>,
    /// Records dropped at the channel (also in `mpn_audit_records_dropped_total`).
    dropped: Arc<AtomicU64>,
}

impl Audit {
    /// An audit trail that keeps nothing (an engine part built without a writer).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            warned: Arc::default(),
            dropped: Arc::default(),
        }
    }

    /// An audit trail into a channel of `capacity`; the receiver is the writer's.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Self {
                tx: Some(tx),
                warned: Arc::default(),
                dropped: Arc::default(),
            },
            rx,
        )
    }

    /// Records this trail dropped because its channel was full or closed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queues `record` for the audit topic, or drops it (counted, warned) when the
    /// writer is behind.
    pub fn record(&self, record: AuditRecord) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(record) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(crate::telemetry::metric::AUDIT_RECORDS_DROPPED_TOTAL).increment(1);
            let now = chrono::Utc::now().timestamp();
            if self.warned.swap(now, Ordering::Relaxed) != now {
                let why = match e {
                    mpsc::error::TrySendError::Full(_) => "the audit writer is behind",
                    mpsc::error::TrySendError::Closed(_) => "the audit writer has stopped",
                };
                tracing::warn!("audit record dropped: {why}");
            }
        }
    }
}

/// Starts the writer of `topic`: records are produced as they come (key = the
/// institution), delivery failures logged. On shutdown, what is queued is written
/// and awaited (bounded).
pub fn start(
    producer: FutureProducer,
    topic: String,
    shutdown: Shutdown,
) -> (Audit, tokio::task::JoinHandle<()>) {
    let (audit, mut rx) = Audit::channel(CAPACITY);
    let stop = shutdown.clone();
    let task = shutdown.spawn(async move {
        let mut pending = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            tokio::select! {
                r = rx.recv(), if !stopping => match r {
                    Some(r) => pending.push(write(&producer, &topic, r)),
                    None => stopping = true,
                },
                Some(()) = pending.next(), if !pending.is_empty() => {}
                _ = stop.triggered(), if !stopping => {
                    stopping = true;
                    rx.close();
                    while let Ok(r) = rx.try_recv() {
                        pending.push(write(&producer, &topic, r));
                    }
                }
                else => break,
            }
            if stopping && pending.is_empty() {
                break;
            }
        }
    });
    (audit, task)
}

fn write(
    producer: &FutureProducer,
    topic: &str,
    record: AuditRecord,
) -> impl std::future::Future<Output = ()> + use<> {
    let payload = serde_json::to_vec(&record).unwrap_or_default();
    let sent = producer
        .send_result(
            FutureRecord::to(topic)
                .key(record.institution.as_bytes())
                .payload(&payload),
        )
        .map_err(|(e, _)| e.to_string());
    async move {
        let outcome = match sent {
            Ok(delivery) => tokio::time::timeout(Duration::from_secs(10), delivery)
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|r| r.map_err(|_| "cancelled".to_string()))
                .and_then(|r| r.map(|_| ()).map_err(|(e, _)| e.to_string())),
            Err(e) => Err(e),
        };
        if let Err(error) = outcome {
            metrics::counter!(crate::telemetry::metric::AUDIT_RECORDS_DROPPED_TOTAL).increment(1);
            tracing::warn!(%error, event = ?record.event, "audit record not written");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_json_with_every_field_and_client_names_escaped() {
        let r = AuditRecord::new(
            AuditEvent::LoginFailed,
            "00200",
            "evil\nline",
            Some(IpAddr::from([192, 0, 2, 7])),
        )
        .reason("bad_credentials");
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["event"], "login_failed");
        assert_eq!(v["login_id"], "evil\\nline");
        assert_eq!(v["peer"], "192.0.2.7");
        assert_eq!(v["reason"], "bad_credentials");
        for k in ["at", "institution", "institutions", "subscriber_id"] {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert!(chrono::DateTime::parse_from_rfc3339(v["at"].as_str().unwrap()).is_ok());
    }

    /// Ten records into a channel of two: the call never blocks, the first two are
    /// kept in order, the eight others are dropped and counted. (Before, this test
    /// asserted nothing: it passed whatever the channel held or counted.)
    #[tokio::test]
    async fn a_full_channel_drops_instead_of_blocking() {
        let (audit, mut rx) = Audit::channel(2);
        for n in 0..10 {
            audit.record(AuditRecord::new(
                AuditEvent::Authenticated,
                "00200",
                &format!("login-{n}"),
                None,
            ));
        }
        assert_eq!(audit.dropped(), 8);
        let kept: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.login_id)
            .collect();
        assert_eq!(kept, vec!["login-0", "login-1"]);
        // Room again: the next record is kept, nothing more dropped.
        audit.record(AuditRecord::new(AuditEvent::Subscribed, "00200", "x", None));
        assert_eq!(rx.try_recv().unwrap().event, AuditEvent::Subscribed);
        assert_eq!(audit.dropped(), 8);
        drop(rx);
        audit.record(AuditRecord::new(AuditEvent::Subscribed, "00200", "y", None));
        assert_eq!(audit.dropped(), 9, "a closed writer drops too");
    }
}
