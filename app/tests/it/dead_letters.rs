//! Invalid records go to the dead-letter topic with the right reasons, and the valid
//! records around them are still delivered.

use std::time::Duration;

use mpn_kafka::headers;
use mpn_proto::mpn::v1 as pb;
use prost::Message as _;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_records_are_dead_lettered_with_reasons_and_the_stream_moves_on() {
    let code = inst(1);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();

    let mut bad_amount = payment(&code, 2);
    bad_amount.amount = 0;
    let mut unknown_kind: serde_json::Value =
        serde_json::from_slice(&mpn_proto::json::encode(&payment(&code, 3))).unwrap();
    unknown_kind["kind"] = "refund".into();
    let mut four_digit = payment(&code, 4);
    four_digit.institution_code = code[..4].to_owned();
    let truncated = payment(&code, 5).encode_to_vec();
    let mut atm_cancel = payment(&code, 7);
    atm_cancel.kind = pb::EventKind::Cancellation as i32;
    atm_cancel.original_transaction_key = payment(&code, 1).transaction_key;

    let records = vec![
        Rec::proto(&payment(&code, 1)),
        Rec::proto(&bad_amount),
        Rec::raw(
            &code,
            &serde_json::to_vec(&unknown_kind).unwrap(),
            Some("application/json"),
        ),
        Rec::raw(&code, &four_digit.encode_to_vec(), None),
        Rec::raw(&code, &truncated[..12], None),
        Rec::raw(&code, b"this is not json", Some("application/json")),
        Rec::proto(&atm_cancel),
        Rec::raw(&code, &payment(&code, 8).encode_to_vec(), Some("text/csv")),
        Rec::raw(&inst(2), &payment(&code, 9).encode_to_vec(), None),
        Rec::json(&payment(&code, 10)),
    ];
    h.publish_all(&records).await;

    let got = receive(&mut s, 2, Duration::from_secs(30)).await;
    assert_eq!(got.iter().map(serial).collect::<Vec<_>>(), vec![1, 10]);

    let letters = h.dead_letters(8).await;
    let mut reasons: Vec<(String, String, String)> = letters
        .iter()
        .map(|l| {
            (
                l.header(headers::SOURCE_OFFSET).to_owned(),
                l.header(headers::ERROR_KIND).to_owned(),
                l.header(headers::ERROR_FIELD).to_owned(),
            )
        })
        .collect();
    reasons.sort_by_key(|r| r.0.parse::<i64>().unwrap());
    let expect = |o: &str, k: &str, f: &str| (o.to_owned(), k.to_owned(), f.to_owned());
    assert_eq!(
        reasons,
        vec![
            expect("1", "validation", "amount"),
            expect("2", "decode", "kind"),
            expect("3", "validation", "institution_code"),
            expect("4", "decode", "payload"),
            expect("5", "decode", "payload"),
            expect("6", "validation", "channel"),
            expect("7", "decode", "header content-type"),
            expect("8", "validation", "key"),
        ]
    );
    for l in &letters {
        assert_eq!(l.header(headers::SOURCE_TOPIC), h.config.kafka.input_topic);
        assert_eq!(l.header(headers::SOURCE_PARTITION), "0");
        assert!(!l.header(headers::ERROR_MESSAGE).is_empty());
    }
    let a301 = letters
        .iter()
        .find(|l| l.header(headers::SOURCE_OFFSET) == "6")
        .unwrap();
    assert!(a301.header(headers::ERROR_MESSAGE).contains("A301"));
    let truncated_letter = letters
        .iter()
        .find(|l| l.header(headers::SOURCE_OFFSET) == "4")
        .unwrap();
    assert_eq!(
        truncated_letter.payload,
        truncated[..12],
        "the original bytes are kept"
    );

    // Every offset is finalised: the commit point passes the last record.
    let tracker = engine.tracker().clone();
    eventually("offsets finalised", Duration::from_secs(10), || {
        let t = tracker.clone();
        async move { t.position(0) == Some(10) && t.in_flight() == 0 }
    })
    .await;
    engine.shutdown().await;
}

/// A record on another partition than murmur2(key) mod n (a producer with another
/// partitioner, or an explicit partition) would break its institution's order, so
/// it is dead-lettered with the rule named, and the records around it still flow.
/// Before the fix it was delivered as if nothing were wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_on_the_wrong_partition_for_its_key_is_dead_lettered() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let code = inst(2);
    let h = Harness::new(4, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    let mut s = subscribe(&engine, &login(&code, "billing"), &[]).await;
    engine.open_ingest();
    let right = mpn_kafka::partition::partition_for_key(code.as_bytes(), 4);
    let wrong = (right + 1) % 4;
    h.publish_all(&[Rec::proto(&payment(&code, 1))]).await;
    let producer: FutureProducer = h.config.kafka.producer().create().unwrap();
    let payload = payment(&code, 2).encode_to_vec();
    producer
        .send(
            FutureRecord::to(&h.config.kafka.input_topic)
                .partition(wrong)
                .key(&code)
                .payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .expect("broker ack");
    h.publish_all(&[Rec::proto(&payment(&code, 3))]).await;
    let got = receive(&mut s, 2, Duration::from_secs(20)).await;
    assert_eq!(got.iter().map(serial).collect::<Vec<_>>(), vec![1, 3]);
    let dl = h.dead_letters(1).await;
    assert_eq!(dl[0].header(headers::ERROR_FIELD), "partition");
    assert!(
        dl[0]
            .header(headers::ERROR_MESSAGE)
            .contains(&format!("belongs on partition {right} of 4")),
        "{:?}",
        dl[0].headers
    );
    assert_eq!(
        dl[0].header(headers::SOURCE_PARTITION),
        wrong.to_string(),
        "the source partition is named"
    );
    assert_nothing_more(&mut s, Duration::from_millis(300)).await;
    engine.shutdown().await;
}
