//! What every reader of the input topic checks on a record besides its contents
//! (those are `mpn_domain::check_record`): ingest and the catch-up readers alike.

use crate::domain::Rejection;

/// A keyed record must be on the partition Kafka's murmur2 partitioner gives its key
/// (the Java client's and kafka-python's default): per-institution order rests on
/// one key, one partition. A record elsewhere (another partitioner, an explicit
/// partition) would be delivered out of order with the institution's others, so it
/// is dead-lettered instead, by ingest and catch-up readers alike.
pub(crate) fn check_partition(
    key: Option<&[u8]>,
    partition: i32,
    partitions: usize,
) -> Result<(), Rejection> {
    let Some(key) = key else { return Ok(()) };
    let expected = mpn_kafka::partition::partition_for_key(key, partitions);
    if expected == partition {
        return Ok(());
    }
    metrics::counter!(crate::telemetry::metric::INGEST_WRONG_PARTITION_TOTAL).increment(1);
    Err(Rejection::invalid(
        "partition",
        format!(
            "key {:?} belongs on partition {expected} of {partitions} (murmur2, the Java \
             client's and kafka-python's partitioner) but the record is on partition \
             {partition}: its order with the institution's other records cannot be kept",
            String::from_utf8_lossy(key)
        ),
    ))
}

/// Whether an operator re-injected the record through the admin API
/// (`mpn-reinjected-from`): every reader offers it even if its id was seen before.
pub(crate) fn reinjected(m: &impl rdkafka::Message) -> bool {
    use rdkafka::message::Headers as _;
    m.headers().is_some_and(|h| {
        h.iter()
            .any(|h| h.key == mpn_kafka::headers::REINJECTED_FROM)
    })
}
