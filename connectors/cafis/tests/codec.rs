//! Field rules at encode and decode: every error names the field and the value.

mod common;

use common::{at, notice, payment};
use mpn_cafis::{
    Body, DecodeError, EncodeError, KanaError, NackReason, Notice, Telegram, TelegramType, decode,
    encode,
};

fn encode_err(f: impl FnOnce(&mut Notice)) -> EncodeError {
    let mut n = notice();
    f(&mut n);
    encode(&payment(1, n)).unwrap_err()
}

fn field_of(e: &EncodeError) -> &'static str {
    match e {
        EncodeError::Field { field, .. } => field,
        EncodeError::Kana(KanaError::Unrepresentable { field, .. }) => field,
        EncodeError::Kana(KanaError::InvalidByte { field, .. }) => field,
    }
}

#[test]
fn encode_errors_name_the_field_and_value() {
    let cases: Vec<(&str, EncodeError)> = vec![
        ("amount", encode_err(|n| n.amount = 0)),
        ("amount", encode_err(|n| n.amount = 100_000_000_000)),
        (
            "institution_code",
            encode_err(|n| n.institution_code = "12345".into()),
        ),
        (
            "transaction_key",
            encode_err(|n| n.transaction_key = "1234".into()),
        ),
        (
            "customer_number",
            encode_err(|n| n.customer_number = String::new()),
        ),
        (
            "customer_number",
            encode_err(|n| n.customer_number = "A-1".into()),
        ),
        (
            "customer_number",
            encode_err(|n| n.customer_number = "1".repeat(21)),
        ),
        (
            "confirmation_number",
            encode_err(|n| n.confirmation_number = "12345A".into()),
        ),
        (
            "payment_class",
            encode_err(|n| n.payment_class = "X".repeat(17)),
        ),
        ("branch_code", encode_err(|n| n.branch_code = String::new())),
        ("bank_code", encode_err(|n| n.bank_code = "01".into())),
        ("fee_name", encode_err(|n| n.fee_name = "料金😀".into())),
        ("fee_name", encode_err(|n| n.fee_name = "料".repeat(41))),
        ("fee_name", encode_err(|n| n.fee_name = "a\tb".into())),
        ("payer_kana", encode_err(|n| n.payer_kana = "山田".into())),
    ];
    for (field, err) in cases {
        assert_eq!(field_of(&err), field, "{err}");
        assert!(err.to_string().starts_with(field), "{err}");
    }
    let err = encode_err(|n| n.amount = 0);
    assert_eq!(
        err.to_string(),
        "amount: must be 1..=99999999999 yen (got \"0\")"
    );
    let err = encode_err(|n| n.fee_name = "料金😀".into());
    assert!(
        err.to_string()
            .contains("'😀' (U+1F600) has no Shift_JIS form"),
        "{err}"
    );
}

#[test]
fn header_rules() {
    let mut t = payment(0, notice());
    assert!(matches!(
        encode(&t),
        Err(EncodeError::Field {
            field: "sequence",
            ..
        })
    ));
    t.header.sequence = 100_000_000;
    assert!(matches!(
        encode(&t),
        Err(EncodeError::Field {
            field: "sequence",
            ..
        })
    ));
    t.header.sequence = 99_999_999;
    t.header.centre_id = "123".into();
    assert!(matches!(
        encode(&t),
        Err(EncodeError::Field {
            field: "centre_id",
            ..
        })
    ));
}

#[test]
fn sub_seconds_are_dropped_and_kana_converted_on_encode() {
    let mut n = notice();
    n.payer_kana = "やまだ　たろう".into();
    let mut t = payment(5, n);
    t.header.sent_at = at(1, 2, 3) + chrono::Duration::milliseconds(456);
    let back = decode(&encode(&t).unwrap()).unwrap();
    assert_eq!(back.header.sent_at, at(1, 2, 3));
    assert_eq!(back.notice().unwrap().payer_kana, "ﾔﾏﾀﾞ ﾀﾛｳ");
}

#[test]
fn nack_reasons_sort_into_transient_and_permanent() {
    use NackReason::*;
    for r in [HostBusy, HostNotOpen, HostTemporaryError] {
        assert!(!r.is_permanent(), "{r:?}");
        assert!(r.code().starts_with('T'));
    }
    for r in [
        FormatError,
        UnknownInstitution,
        UnknownCustomer,
        AmountMismatch,
        UnknownOriginalTransaction,
        SequenceConflict,
        IdentityConflict,
    ] {
        assert!(r.is_permanent(), "{r:?}");
        assert!(r.code().starts_with('P'));
    }
    assert_eq!(NackReason::from_code("T001"), Some(HostBusy));
    assert_eq!(NackReason::from_code("T777"), Some(Other("T777".into())));
    assert!(!Other("T777".into()).is_permanent());
    assert!(Other("P777".into()).is_permanent());
    assert_eq!(NackReason::from_code("0000"), None);
    assert_eq!(NackReason::from_code("X001"), None);
    // Each code has one form: a listed code cannot hide in Other.
    let t = payment(1, notice());
    let nack = t.nack(Other("T001".into()), "", at(0, 0, 0)).unwrap();
    assert!(matches!(
        encode(&nack),
        Err(EncodeError::Field {
            field: "response_code",
            ..
        })
    ));
    let nack = t.nack(Other("T1".into()), "", at(0, 0, 0)).unwrap();
    assert!(matches!(
        encode(&nack),
        Err(EncodeError::Field {
            field: "response_code",
            ..
        })
    ));
    let nack = t.nack(Other("T777".into()), "", at(0, 0, 0)).unwrap();
    assert_eq!(decode(&encode(&nack).unwrap()).unwrap(), nack);
}

#[test]
fn answers_echo_sequence_key_resend_and_centre() {
    let mut t = payment(42, notice());
    t.header.resend = true;
    let ack = t.ack(at(11, 0, 0)).unwrap();
    assert_eq!(ack.telegram_type(), TelegramType::Ack);
    assert_eq!(ack.sequence(), 42);
    assert!(ack.is_resend());
    assert_eq!(ack.header.centre_id, t.header.centre_id);
    assert_eq!(ack.transaction_key(), t.transaction_key());
    assert_eq!(ack.header.sent_at, at(11, 0, 0));
    let nack = t.nack(NackReason::HostBusy, "BUSY", at(11, 0, 0)).unwrap();
    assert_eq!(nack.transaction_key(), t.transaction_key());
    assert!(t.echo_response(at(0, 0, 0)).is_none());
    assert!(ack.ack(at(0, 0, 0)).is_none());
    let echo = Telegram {
        header: t.header.clone(),
        body: Body::EchoRequest,
    };
    let resp = echo.echo_response(at(11, 0, 1)).unwrap();
    assert_eq!(
        (resp.sequence(), resp.telegram_type()),
        (42, TelegramType::EchoResponse)
    );
}

fn good() -> Vec<u8> {
    encode(&payment(42, notice())).unwrap()
}

fn decode_err(offset: usize, bytes: &[u8]) -> DecodeError {
    let mut b = good();
    b[offset..offset + bytes.len()].copy_from_slice(bytes);
    decode(&b).unwrap_err()
}

#[test]
fn decode_errors_name_the_field_offset_and_bytes() {
    assert_eq!(
        decode(b"0300PN").unwrap_err(),
        DecodeError::Truncated { len: 6 }
    );
    let cases = [
        (0, &b"0299"[..], "total_length"),
        (4, b"ZZ", "telegram_type"),
        (4, b"AK", "total_length"), // an ack is 80 bytes, not 300
        (6, b"00000000", "sequence"),
        (6, b"0000004X", "sequence"),
        (14, b"2", "resend"),
        (15, b"12345 7890", "centre_id"),
        (25, b"20260231", "sent_at"), // 31 February
        (33, b"25", "sent_at"),
        (39, b"P001", "response_code"),
        (43, b"x", "reserved"),
        (48, b"1234500A", "institution_code"),
        (82, b"3", "kind"),
        (83, b" A", "customer_number"),
        (83, b"                    ", "customer_number"),
        (103, b"12 456", "confirmation_number"),
        (109, b"a-", "payment_class"),
        (125, b"00000000000", "amount"),
        (136, b"    ", "branch_code"),
        (140, b"   ", "branch_code"),
        (143, b"5", "channel"),
        (144, b"0", "collection_method"),
        (238, b"\x81", "fee_name"), // lead byte without its trail byte
        (159, b"\x09", "fee_name"),
        (159, b"\xf0\x40", "fee_name"), // user-defined character (found by cargo fuzz)
        (239, b"\xa7", "payer_kana"),
        (239, b"a", "payer_kana"),
        (299, b"x", "reserved_trailer"),
    ];
    for (offset, bytes, field) in cases {
        let err = decode_err(offset, bytes);
        assert_eq!(err.field(), Some(field), "{offset}: {err}");
    }
    let err = decode_err(143, b"5");
    assert_eq!(
        err.to_string(),
        "channel (offset 143, 1 bytes): must be 1, 2, 3 or 4; got \"5\""
    );
    let err = decode_err(239, b"\xa7");
    assert!(err.to_string().contains("0xA7"), "{err}");
}

#[test]
fn optional_fields_are_spaces() {
    let mut n = notice();
    n.bank_code.clear();
    n.branch_code.clear();
    n.confirmation_number.clear();
    n.fee_name.clear();
    n.payer_kana.clear();
    let t = payment(1, n);
    let bytes = encode(&t).unwrap();
    assert!(bytes[136..143].iter().all(|&b| b == b' '));
    assert_eq!(decode(&bytes).unwrap(), t);
}

#[test]
fn every_type_encodes_to_its_fixed_length() {
    let t = payment(1, notice());
    let at = at(0, 0, 0);
    let echo = Telegram {
        header: t.header.clone(),
        body: Body::EchoRequest,
    };
    for t in [
        t.clone(),
        t.ack(at).unwrap(),
        t.nack(NackReason::FormatError, "AMOUNT", at).unwrap(),
        echo.clone(),
        echo.echo_response(at).unwrap(),
    ] {
        let bytes = encode(&t).unwrap();
        assert_eq!(bytes.len(), t.telegram_type().wire_len());
        assert_eq!(&bytes[..4], format!("{:04}", bytes.len()).as_bytes());
        assert_eq!(decode(&bytes).unwrap(), t);
    }
}

#[test]
fn nack_without_a_readable_key_sends_spaces() {
    // Found by proptest: the 26 spaces of an unknown key once overran the padding.
    let t = payment(9, notice());
    let mut nack = t
        .nack(NackReason::FormatError, "TRANSACTION KEY", at(0, 0, 0))
        .unwrap();
    if let Body::Nack(n) = &mut nack.body {
        n.transaction_key.clear();
    }
    let bytes = encode(&nack).unwrap();
    assert_eq!(&bytes[48..74], &[b' '; 26]);
    let back = decode(&bytes).unwrap();
    assert_eq!(back.transaction_key(), None);
    assert_eq!(back, nack);
}

#[test]
fn x_field_filled_to_the_last_byte() {
    // Found by cargo fuzz: 79 bytes of kanji and ASCII plus one single-byte character
    // were refused as too long, because encoding_rs wants room for a double-byte
    // character before it writes the last byte.
    let mut n = notice();
    n.fee_name = format!("{}{}ﾀ", "料".repeat(30), "A".repeat(19));
    let t = payment(1, n);
    let bytes = encode(&t).unwrap();
    assert_eq!(bytes[238], 0xC0);
    assert_eq!(decode(&bytes).unwrap(), t);
    let mut n = notice();
    n.fee_name = format!("{}{}料", "料".repeat(30), "A".repeat(19));
    let err = encode(&payment(1, n)).unwrap_err();
    assert_eq!(field_of(&err), "fee_name");
    assert!(err.to_string().contains("needs 81"), "{err}");
}
