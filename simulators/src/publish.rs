//! Writes generated records to Kafka.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use crate::traffic::Record;

/// A producer bound to one topic.
#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    pub fn new(kafka: &mpn_kafka::Config, topic: &str) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka.producer().create()?,
            topic: topic.to_owned(),
        })
    }

    fn record<'a>(&'a self, r: &'a Record) -> FutureRecord<'a, String, Vec<u8>> {
        let mut record = FutureRecord::to(&self.topic)
            .key(&r.key)
            .payload(&r.payload);
        if let Some(ct) = r.content_type {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: mpn_kafka::headers::CONTENT_TYPE,
                value: Some(ct),
            }));
        }
        record
    }

    /// Publishes one record and waits for the broker; returns (partition, offset).
    pub async fn send(&self, r: &Record) -> Result<(i32, i64), KafkaError> {
        self.producer
            .send(self.record(r), Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
    }

    /// Queues one record without waiting; records queued one after another keep their
    /// order per partition. Fails at once when the producer's queue is full
    /// ([`is_queue_full`]): wait a little and queue it again.
    pub fn enqueue(&self, r: &Record) -> Result<DeliveryFuture, KafkaError> {
        self.producer
            .send_result(self.record(r))
            .map_err(|(e, _)| e)
    }
}

/// Whether a [`Publisher::enqueue`] error means "the local queue is full, retry".
pub fn is_queue_full(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull)
    )
}
