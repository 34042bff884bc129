//! Writes generated records to Kafka.

use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

    /// Publishes one record and waits for the broker; returns (partition, offset).
    pub async fn send(&self, r: &Record) -> Result<(i32, i64), KafkaError> {
        let mut record = FutureRecord::to(&self.topic)
            .key(&r.key)
            .payload(&r.payload);
        if let Some(ct) = r.content_type {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: mpn_kafka::headers::CONTENT_TYPE,
                value: Some(ct),
            }));
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|d| (d.partition, d.offset))
            .map_err(|(e, _)| e)
    }
}
