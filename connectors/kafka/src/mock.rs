//! [`MockBroker`]: librdkafka's in-process mock cluster, reachable over loopback TCP
//! by any Kafka client. Used by the embedded demo and most integration tests.

use rdkafka::ClientConfig;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{BaseProducer, Producer};

/// An in-process Kafka-protocol broker. Dropping it stops the broker.
pub struct MockBroker {
    /// The client that owns the mock cluster (librdkafka ties its life to a client).
    owner: BaseProducer,
    bootstrap: String,
}

impl std::fmt::Debug for MockBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBroker")
            .field("bootstrap", &self.bootstrap)
            .finish()
    }
}

impl MockBroker {
    /// Starts a mock cluster of `brokers` brokers.
    pub fn start(brokers: u32) -> KafkaResult<Self> {
        let owner: BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", brokers.to_string())
            .set("log_level", "3")
            .create()?;
        let bootstrap = owner
            .client()
            .mock_cluster()
            .map(|m| m.bootstrap_servers())
            .ok_or(rdkafka::error::KafkaError::ClientCreation(
                "librdkafka created no mock cluster".into(),
            ))?;
        disable_initial_rebalance_delay(&owner);
        Ok(Self { owner, bootstrap })
    }

    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (the mock cluster has no admin API for this).
    pub fn create_topic(&self, name: &str, partitions: i32) -> KafkaResult<()> {
        self.with_cluster(|c| c.create_topic(name, partitions, 1))
    }

    /// Creates the topics an engine configured with `kafka` uses: the input topic with
    /// `partitions` partitions, the dead-letter, cursor and (default-named) audit
    /// topics with one each (the mock cluster cannot create them through the admin
    /// API, as the engine would).
    pub fn create_engine_topics(&self, kafka: &crate::Config, partitions: i32) -> KafkaResult<()> {
        self.create_topic(&kafka.input_topic, partitions)?;
        self.create_topic(&kafka.dlq_topic(), 1)?;
        self.create_topic(&kafka.cursor_topic(), 1)?;
        self.create_topic(&format!("{}.audit", kafka.input_topic), 1)
    }

    /// Takes a broker down (its connections are closed) until [`MockBroker::broker_up`].
    pub fn broker_down(&self, broker_id: i32) -> KafkaResult<()> {
        self.with_cluster(|c| c.broker_down(broker_id))
    }

    pub fn broker_up(&self, broker_id: i32) -> KafkaResult<()> {
        self.with_cluster(|c| c.broker_up(broker_id))
    }

    /// The next requests of kind `api` fail with `errors`, one error per request, in
    /// order (fault injection: a broker refusing, e.g., ListOffsets).
    pub fn request_errors(
        &self,
        api: rdkafka::types::RDKafkaApiKey,
        errors: &[rdkafka::types::RDKafkaRespErr],
    ) -> KafkaResult<()> {
        self.with_cluster(|c| {
            c.request_errors(api, errors);
            Ok(())
        })
    }

    fn with_cluster(
        &self,
        f: impl FnOnce(
            &rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
        ) -> KafkaResult<()>,
    ) -> KafkaResult<()> {
        let cluster = self.owner.client().mock_cluster().ok_or(
            rdkafka::error::KafkaError::ClientCreation("mock cluster is gone".into()),
        )?;
        f(&cluster)
    }
}

/// The mock cluster waits 3 s before the first rebalance of a new group, like a real
/// broker's `group.initial.rebalance.delay.ms`. Nothing in a single-process broker
/// benefits from that wait, so it is turned off.
#[allow(unsafe_code)]
fn disable_initial_rebalance_delay(owner: &BaseProducer) {
    // SAFETY: `native_ptr` is a live client handle for the duration of this call, the
    // returned mock cluster pointer is owned by that client, and the setter only posts
    // a configuration change to the mock cluster's own thread.
    unsafe {
        let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(owner.client().native_ptr());
        if !cluster.is_null() {
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(cluster, 0);
        }
    }
}
