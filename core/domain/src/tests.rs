//! Validation and decoder tests: one case per field rule, round trips through both
//! encodings, and arbitrary input never panics.

use mpn_proto::mpn::v1 as pb;
use proptest::prelude::*;
use prost::Message;

use super::event::Body;
use super::{ContentType, Event, EventKind, RejectionKind, decode_record};

fn valid() -> pb::PaymentEvent {
    pb::PaymentEvent {
        transaction_key: "00000001012026053100000042".into(),
        kind: pb::EventKind::Payment as i32,
        institution_code: "00200".into(),
        customer_number: "1234567890".into(),
        confirmation_number: "123456".into(),
        payment_class: "01".into(),
        amount: 39_500,
        bank_code: "0001".into(),
        branch_code: "123".into(),
        channel: pb::Channel::Atm as i32,
        collection_method: pb::CollectionMethod::Online as i32,
        paid_at: "2026-05-31T10:15:00+09:00".into(),
        fee_name: "自動車税".into(),
        payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
        ..Default::default()
    }
}

fn rejected(e: pb::PaymentEvent) -> (RejectionKind, String, String) {
    let r = Event::validate(&e).expect_err("should be rejected");
    (r.kind, r.field, r.message)
}

#[test]
fn a_valid_payment_passes_and_is_canonical() {
    let e = Event::validate(&valid()).unwrap();
    assert_eq!(e.institution.as_str(), "00200000");
    assert_eq!(
        e.notification_id().as_str(),
        "00000001012026053100000042:payment"
    );
    let Body::Payment(p) = &e.body else {
        panic!("payment body")
    };
    assert_eq!(p.amount.yen(), 39_500);
}

/// Every rule: (what to break, the field named, a word the message must contain).
#[test]
fn every_field_rule_names_its_field() {
    type Breaker = fn(&mut pb::PaymentEvent);
    let cases: Vec<(Breaker, &str, &str)> = vec![
        (|e| e.transaction_key.clear(), "transaction_key", "required"),
        (
            |e| e.transaction_key = "123".into(),
            "transaction_key",
            "26 digits",
        ),
        (
            |e| e.transaction_key = "00000001012026023100000042".into(),
            "transaction_key",
            "calendar date",
        ),
        (|e| e.kind = 0, "kind", "must be one of"),
        (|e| e.kind = 99, "kind", "must be one of"),
        (
            |e| e.institution_code.clear(),
            "institution_code",
            "required",
        ),
        (
            |e| e.institution_code = "0020".into(),
            "institution_code",
            "8 digits",
        ),
        (
            |e| e.institution_code = "0020000A".into(),
            "institution_code",
            "8 digits",
        ),
        (|e| e.published_at_us = -1, "published_at_us", "negative"),
        (|e| e.customer_number.clear(), "customer_number", "required"),
        (
            |e| e.customer_number = "x".repeat(21),
            "customer_number",
            "1-20",
        ),
        (
            |e| e.customer_number = "12 34".into(),
            "customer_number",
            "1-20",
        ),
        (
            |e| e.confirmation_number = "1234567".into(),
            "confirmation_number",
            "6 digits",
        ),
        (
            |e| e.confirmation_number = "12a".into(),
            "confirmation_number",
            "6 digits",
        ),
        (|e| e.payment_class = "x".repeat(17), "payment_class", "16"),
        (|e| e.amount = 0, "amount", "1 to"),
        (|e| e.amount = 100_000_000_000, "amount", "1 to"),
        (|e| e.bank_code = "01".into(), "bank_code", "4 digits"),
        (|e| e.bank_code.clear(), "bank_code", "4 digits"),
        (|e| e.branch_code = "1234".into(), "branch_code", "3 digits"),
        (|e| e.channel = 0, "channel", "must be one of"),
        (|e| e.channel = 42, "channel", "must be one of"),
        (
            |e| e.collection_method = 0,
            "collection_method",
            "must be one of",
        ),
        (|e| e.paid_at.clear(), "paid_at", "required"),
        (
            |e| e.paid_at = "2026-05-31 10:15".into(),
            "paid_at",
            "RFC 3339",
        ),
        (|e| e.fee_name = "x".repeat(41), "fee_name", "40"),
        (|e| e.fee_name = "a\nb".into(), "fee_name", "control"),
        (|e| e.payer_kana = "ｱ".repeat(49), "payer_kana", "48"),
        (|e| e.payer_kana = "山田".into(), "payer_kana", "katakana"),
        (
            |e| e.original_transaction_key = "00000001012026053100000041".into(),
            "original_transaction_key",
            "only allowed",
        ),
        (
            |e| e.counters = Some(pb::DailyCounters::default()),
            "counters",
            "only allowed",
        ),
        (
            |e| {
                e.kind = pb::EventKind::Cancellation as i32;
                e.channel = pb::Channel::Counter as i32;
            },
            "original_transaction_key",
            "required",
        ),
        (
            |e| {
                e.kind = pb::EventKind::Cancellation as i32;
                e.original_transaction_key = "00000001012026053100000041".into();
            },
            "channel",
            "A301",
        ),
        (
            |e| {
                e.kind = pb::EventKind::PreliminaryCancel as i32;
                e.original_transaction_key = "bad".into();
            },
            "original_transaction_key",
            "26 digits",
        ),
        (
            |e| {
                e.kind = pb::EventKind::DailyCounters as i32;
            },
            "counters",
            "required",
        ),
        (
            |e| {
                e.kind = pb::EventKind::DailyCounters as i32;
                e.counters = Some(pb::DailyCounters {
                    counter_date: "20261340".into(),
                    ..Default::default()
                });
            },
            "counters.counter_date",
            "A601",
        ),
        (
            |e| {
                e.kind = pb::EventKind::Preliminary as i32;
                e.bank_code.clear();
            },
            "bank_code",
            "required when branch_code",
        ),
    ];
    for (i, (breaker, field, word)) in cases.into_iter().enumerate() {
        let mut e = valid();
        breaker(&mut e);
        let (kind, f, message) = rejected(e);
        assert_eq!(kind, RejectionKind::Validation, "case {i}");
        assert_eq!(f, field, "case {i}: {message}");
        assert!(
            message.contains(word),
            "case {i} ({field}): {message:?} lacks {word:?}"
        );
    }
}

#[test]
fn kinds_with_their_own_shapes_validate() {
    let mut cancel = valid();
    cancel.kind = pb::EventKind::Cancellation as i32;
    cancel.channel = pb::Channel::Counter as i32;
    cancel.original_transaction_key = "00000001012026053100000041".into();
    let e = Event::validate(&cancel).unwrap();
    assert_eq!(
        e.notification_id().as_str(),
        "00000001012026053100000042:cancellation"
    );

    let mut store = valid();
    store.kind = pb::EventKind::Preliminary as i32;
    store.bank_code.clear();
    store.branch_code.clear();
    Event::validate(&store).unwrap();

    let counters = pb::PaymentEvent {
        transaction_key: "00000001012026053100000099".into(),
        kind: pb::EventKind::DailyCounters as i32,
        institution_code: "00200000".into(),
        counters: Some(pb::DailyCounters {
            counter_date: "20260531".into(),
            clearing_count: 3,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert!(matches!(
        Event::validate(&counters).unwrap().body,
        Body::Counters(_)
    ));
}

#[test]
fn a_resend_is_notified_as_its_payment() {
    let mut resend = valid();
    resend.kind = pb::EventKind::ResendConfirmation as i32;
    let r = Event::validate(&resend).unwrap();
    let p = Event::validate(&valid()).unwrap();
    assert_eq!(r.notification_id(), p.notification_id());
    assert_eq!(r.to_notification(0, 0).kind, pb::EventKind::Payment as i32);
    assert_eq!(r.kind, EventKind::ResendConfirmation);
}

#[test]
fn json_reads_names_numbers_and_rejects_unknowns() {
    let ok = br#"{"transaction_key":"00000001012026053100000042","kind":"payment","institution_code":"00200",
        "customer_number":"1234567890","amount":39500,"bank_code":"0001","branch_code":"123",
        "channel":"CHANNEL_ATM","collection_method":1,"paid_at":"2026-05-31T10:15:00+09:00"}"#;
    let e = decode_record(ContentType::Json, ok).unwrap();
    assert_eq!(e.institution.as_str(), "00200000");

    let cases: [(&[u8], &str, &str); 7] = [
        (b"not json", "payload", "not valid JSON"),
        (b"[1,2]", "payload", "JSON object"),
        (br#"{"amount":"100"}"#, "amount", "got a string"),
        (br#"{"amount":-5}"#, "amount", "non-negative"),
        (br#"{"kind":"refund"}"#, "kind", "unknown value"),
        (br#"{"amonut":5}"#, "amonut", "not a field"),
        (br#"{"counters":{"x":1}}"#, "counters.x", "not a field"),
    ];
    for (input, field, word) in cases {
        let r = decode_record(ContentType::Json, input).unwrap_err();
        assert_eq!(r.kind, RejectionKind::Decode);
        assert_eq!(r.field, field, "{}", String::from_utf8_lossy(input));
        assert!(r.message.contains(word), "{}: {}", field, r.message);
    }
}

#[test]
fn protobuf_rejects_empty_and_truncated_payloads() {
    let r = decode_record(ContentType::Protobuf, b"").unwrap_err();
    assert_eq!(
        (r.kind, r.field.as_str()),
        (RejectionKind::Decode, "payload")
    );
    let bytes = valid().encode_to_vec();
    let r = decode_record(ContentType::Protobuf, &bytes[..12]).unwrap_err();
    assert_eq!(
        (r.kind, r.field.as_str()),
        (RejectionKind::Decode, "payload")
    );
}

#[test]
fn content_type_header() {
    assert_eq!(
        ContentType::from_header(None).unwrap(),
        ContentType::Protobuf
    );
    assert_eq!(
        ContentType::from_header(Some(b"application/json; charset=utf-8")).unwrap(),
        ContentType::Json
    );
    assert_eq!(
        ContentType::from_header(Some(b"application/x-protobuf")).unwrap(),
        ContentType::Protobuf
    );
    let r = ContentType::from_header(Some(b"text/csv")).unwrap_err();
    assert_eq!(r.field, "header content-type");
}

fn digits(n: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = String> {
    proptest::collection::vec(proptest::char::range('0', '9'), n)
        .prop_map(|v| v.into_iter().collect())
}

prop_compose! {
    fn arb_valid()(
        centre in digits(10..=10),
        day in 1u32..=28,
        serial in digits(8..=8),
        kind in prop_oneof![Just(pb::EventKind::Payment), Just(pb::EventKind::ResendConfirmation), Just(pb::EventKind::Confirmed)],
        five in any::<bool>(),
        inst in digits(5..=5),
        customer in "[A-Z0-9]{1,20}",
        confirmation in digits(0..=6),
        class in "[A-Z0-9]{0,16}",
        amount in 1u64..=99_999_999_999,
        bank in digits(4..=4),
        branch in digits(3..=3),
        channel in 1i32..=4,
        method in 1i32..=3,
        fee in "[^\\p{Cc}]{0,40}",
        kana in "[ｱ-ﾝﾞﾟ A-Z0-9]{0,48}",
        published in 0i64..=i64::MAX,
    ) -> pb::PaymentEvent {
        pb::PaymentEvent {
            transaction_key: format!("{centre}202605{day:02}{serial}"),
            kind: kind as i32,
            institution_code: if five { inst } else { format!("{inst}000") },
            customer_number: customer,
            confirmation_number: confirmation,
            payment_class: class,
            amount,
            bank_code: bank,
            branch_code: branch,
            channel,
            collection_method: method,
            paid_at: format!("2026-05-{day:02}T10:15:00+09:00"),
            fee_name: fee,
            payer_kana: kana,
            published_at_us: published,
            ..Default::default()
        }
    }
}

proptest! {
    #[test]
    fn valid_events_round_trip_through_both_encodings(e in arb_valid()) {
        let event = Event::validate(&e).map_err(|r| TestCaseError::fail(r.to_string()))?;
        let from_proto = decode_record(ContentType::Protobuf, &e.encode_to_vec()).unwrap();
        let from_json = decode_record(ContentType::Json, &mpn_proto::json::encode(&e)).unwrap();
        prop_assert_eq!(&from_proto, &event);
        prop_assert_eq!(&from_json, &event);
        // And back: the canonical wire form validates to the same event.
        prop_assert_eq!(Event::validate(&event.to_wire()).unwrap(), event);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_record(ContentType::Protobuf, &bytes);
        let _ = decode_record(ContentType::Json, &bytes);
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        fields in proptest::collection::btree_map(
            prop_oneof![Just("amount".to_string()), Just("kind".to_string()), Just("channel".to_string()),
                        Just("transaction_key".to_string()), Just("counters".to_string()), "[a-z_]{1,12}"],
            prop_oneof![any::<i64>().prop_map(serde_json::Value::from), ".*".prop_map(serde_json::Value::from),
                        any::<bool>().prop_map(serde_json::Value::from), Just(serde_json::Value::Null),
                        any::<f64>().prop_map(serde_json::Value::from)],
            0..8)
    ) {
        let v = serde_json::Value::Object(fields.into_iter().collect());
        let _ = decode_record(ContentType::Json, &serde_json::to_vec(&v).unwrap());
    }

    #[test]
    fn mutating_one_field_of_a_valid_event_never_panics(e in arb_valid(), amount in any::<u64>(), inst in ".{0,10}", key in ".{0,30}") {
        let mut e = e;
        e.amount = amount;
        e.institution_code = inst;
        e.transaction_key = key;
        let _ = Event::validate(&e);
    }
}
