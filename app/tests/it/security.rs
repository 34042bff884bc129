//! Security of the subscription API (issue 12): what a refused client is told, login
//! protection and its audit trail, credential reload, TLS and mutual TLS.

use mpn_proto::mpn::notify::v1 as notify;
use mpn_sim::subscriber::Subscriber;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use tonic::Code;

use crate::support::*;

/// A Kafka failure while attaching reaches the client as a generic UNAVAILABLE:
/// the broker's error text (topic names, broker addresses, librdkafka's wording)
/// stays in the engine's log. Before the fix the status read "Kafka: Meta data
/// fetch error: TopicAuthorizationFailed (Broker: Topic authorization failed)".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_errors_are_not_returned_to_clients() {
    let a = inst(1);
    let h = Harness::new(1, vec![credential(&a, "billing", &[])]);
    let engine = h.start().await;
    h.broker()
        .request_errors(
            RDKafkaApiKey::ListOffsets,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED; 4],
        )
        .unwrap();
    let err = Subscriber::durable(
        &engine.grpc_addr().to_string(),
        &login(&a, "billing"),
        &[],
        "erp",
        notify::StartFrom::Earliest,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "temporarily unavailable; retry");
    engine.shutdown().await;
}
