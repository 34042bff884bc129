//! Topic checks and creation on a real broker (Kafka, Tansu). Brokers such as Tansu
//! do not auto-create topics, so the engine makes its own when configured to.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use crate::Config;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach Kafka at {bootstrap}: {source}")]
    Unreachable {
        bootstrap: String,
        source: KafkaError,
    },
    #[error(
        "topic `{topic}` does not exist (set kafka.create_missing_topics = true, or create it)"
    )]
    Missing { topic: String },
    #[error("cannot create topic `{topic}`: {reason}")]
    Create { topic: String, reason: String },
}

/// Partition count of `topic`, or `None` if the broker does not know it.
pub fn partition_count(
    config: &Config,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, AdminError> {
    let unreachable = |source| AdminError::Unreachable {
        bootstrap: config.bootstrap_servers.clone(),
        source,
    };
    let consumer: BaseConsumer = config.consumer().create().map_err(unreachable)?;
    let md = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(unreachable)?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len())
        .filter(|&n| n > 0))
}

/// Makes sure the input, dead-letter and cursor topics exist, creating the missing
/// ones if the configuration allows it (the cursor topic compacted, one partition).
pub async fn ensure_topics(config: &Config, timeout: Duration) -> Result<(), AdminError> {
    let wanted = [
        (config.input_topic.clone(), config.topic_partitions, false),
        (config.dlq_topic(), config.topic_partitions, false),
        (config.cursor_topic(), 1, true),
    ];
    for (topic, partitions, compacted) in wanted {
        ensure_topic(config, &topic, partitions, compacted, timeout).await?;
    }
    Ok(())
}

/// Makes sure `topic` exists, creating it if missing and the configuration allows it.
pub async fn ensure_topic(
    config: &Config,
    topic: &str,
    partitions: i32,
    compacted: bool,
    timeout: Duration,
) -> Result<(), AdminError> {
    if partition_count(config, topic, timeout)?.is_some() {
        return Ok(());
    }
    if !config.create_missing_topics {
        return Err(AdminError::Missing {
            topic: topic.to_owned(),
        });
    }
    create_topic(config, topic, partitions, compacted, timeout).await
}

/// Creates a topic (compacted if asked); one that already exists is fine.
pub async fn create_topic(
    config: &Config,
    topic: &str,
    partitions: i32,
    compacted: bool,
    timeout: Duration,
) -> Result<(), AdminError> {
    let admin: AdminClient<DefaultClientContext> =
        config
            .producer()
            .create()
            .map_err(|source| AdminError::Unreachable {
                bootstrap: config.bootstrap_servers.clone(),
                source,
            })?;
    let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    if compacted {
        new = new.set("cleanup.policy", "compact");
    }
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .map_err(|e| AdminError::Create {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    tracing::info!(topic, partitions, compacted, "created topic");
    Ok(())
}
