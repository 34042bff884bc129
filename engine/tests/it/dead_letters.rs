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
