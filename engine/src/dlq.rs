//! The dead-letter writer. Records that cannot be decoded or validated, and events
//! that make a session panic past its restart budget, are produced to the
//! dead-letter topic with headers naming the error and the source position. The
//! record's offset is finalised only after the broker confirms the dead letter, so a
//! crash in between redelivers the record instead of losing it.

use std::time::Duration;

use mpn_kafka::headers;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

use crate::runtime::Shutdown;

use crate::offsets::Hold;

/// One record for the dead-letter topic.
#[derive(Debug)]
pub(crate) struct DeadLetter {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub content_type: Option<Vec<u8>>,
    /// `decode`, `validation`, `session_panic`, `cafis_nack` or `cafis_encode`.
    pub kind: &'static str,
    pub field: String,
    pub message: String,
    pub partition: i32,
    pub offset: i64,
    /// Finished once the dead letter is written; handed back if it cannot be.
    pub hold: Finish,
}

/// What a dead letter finishes: a record's offset hold (ingest, sessions) or a
/// delivery token (a CAFIS link's notification refused by its host).
pub(crate) enum Finish {
    Hold(Hold),
    Delivery(Box<dyn mpn_delivery::DeliveryToken>),
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finish::Hold(h) => h.fmt(f),
            Finish::Delivery(_) => f.write_str("Delivery"),
        }
    }
}

impl From<Hold> for Finish {
    fn from(h: Hold) -> Self {
        Finish::Hold(h)
    }
}

impl Finish {
    fn complete(self) {
        match self {
            Finish::Hold(h) => h.complete(),
            Finish::Delivery(t) => t.release(mpn_delivery::Release::Acked),
        }
    }

    fn hand_back(self) {
        match self {
            Finish::Hold(h) => h.hand_back(),
            Finish::Delivery(t) => t.release(mpn_delivery::Release::Shutdown),
        }
    }
}

/// Hands dead letters to the writer task. Cheap to clone; never blocks.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetters {
    tx: mpsc::UnboundedSender<DeadLetter>,
}

impl DeadLetters {
    pub(crate) fn send(&self, letter: DeadLetter) {
        if let Err(mpsc::error::SendError(letter)) = self.tx.send(letter) {
            // The writer is gone (shutdown): the record is redelivered after restart.
            letter.hold.hand_back();
        }
    }
}

/// Starts the writer; it runs until `shutdown`, then hands back what is unwritten.
/// The writer and each write are tasks of `shutdown`.
pub(crate) fn start(
    producer: FutureProducer,
    source_topic: String,
    dlq_topic: String,
    shutdown: Shutdown,
) -> (DeadLetters, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<DeadLetter>();
    let task = shutdown.clone().spawn(async move {
        loop {
            let letter = tokio::select! {
                biased;
                _ = shutdown.triggered() => break,
                l = rx.recv() => match l { Some(l) => l, None => break },
            };
            let job = write(
                producer.clone(),
                source_topic.clone(),
                dlq_topic.clone(),
                letter,
                shutdown.clone(),
            );
            shutdown.spawn(job);
        }
        rx.close();
        while let Ok(letter) = rx.try_recv() {
            letter.hold.hand_back();
        }
    });
    (DeadLetters { tx }, task)
}

async fn write(
    producer: FutureProducer,
    source_topic: String,
    dlq_topic: String,
    letter: DeadLetter,
    shutdown: Shutdown,
) {
    let partition = letter.partition.to_string();
    let offset = letter.offset.to_string();
    let mut hdrs = OwnedHeaders::new()
        .insert(Header {
            key: headers::ERROR_KIND,
            value: Some(letter.kind),
        })
        .insert(Header {
            key: headers::ERROR_FIELD,
            value: Some(&letter.field),
        })
        .insert(Header {
            key: headers::ERROR_MESSAGE,
            value: Some(&letter.message),
        })
        .insert(Header {
            key: headers::SOURCE_TOPIC,
            value: Some(&source_topic),
        })
        .insert(Header {
            key: headers::SOURCE_PARTITION,
            value: Some(&partition),
        })
        .insert(Header {
            key: headers::SOURCE_OFFSET,
            value: Some(&offset),
        });
    if let Some(ct) = &letter.content_type {
        hdrs = hdrs.insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(ct),
        });
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut record = FutureRecord::to(&dlq_topic)
            .payload(&letter.payload)
            .headers(hdrs.clone());
        if let Some(k) = &letter.key {
            record = record.key(k);
        }
        let sent = tokio::select! {
            r = producer.send(record, Duration::from_secs(30)) => r,
            _ = shutdown.triggered() => {
                letter.hold.hand_back();
                return;
            }
        };
        match sent {
            Ok(_) => {
                metrics::counter!(crate::telemetry::metric::DLQ_RECORDS_TOTAL, "kind" => letter.kind).increment(1);
                tracing::warn!(
                    kind = letter.kind,
                    field = %letter.field,
                    rule = %mpn_domain::loggable_rule(&letter.message),
                    partition = letter.partition,
                    offset = letter.offset,
                    "record dead-lettered"
                );
                letter.hold.complete();
                return;
            }
            Err((e, _)) => {
                tracing::error!(error = %e, topic = %dlq_topic, "dead-letter write failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
