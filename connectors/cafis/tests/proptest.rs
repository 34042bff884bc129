//! Property tests: every valid telegram survives encode → decode unchanged, framing
//! survives any chunking, and no byte string makes the decoder, the deframer or the
//! kana converter panic.

use chrono::{NaiveDate, NaiveDateTime};
use mpn_cafis::kana::{from_field, to_field};
use mpn_cafis::{
    Ack, Body, Cancellation, Channel, CollectionMethod, Deframer, Header, MAX_AMOUNT, Nack,
    NackReason, Notice, NoticeKind, Telegram, decode, encode,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::FileFailurePersistence;

fn datetime() -> impl Strategy<Value = NaiveDateTime> {
    (
        0i32..=9999,
        1u32..=12,
        1u32..=31,
        0u32..24,
        0u32..60,
        0u32..60,
    )
        .prop_filter_map("calendar date", |(y, mo, d, h, mi, s)| {
            NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_opt(h, mi, s)
        })
}

/// Characters of a decoded `C` field.
fn c_text(max: usize) -> impl Strategy<Value = String> {
    let mut chars: Vec<char> = " (),-./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ｢｣ｦ"
        .chars()
        .collect();
    chars.extend((0xFF71..=0xFF9F).filter_map(char::from_u32)); // ｱ..ﾝ ﾞ ﾟ
    proptest::collection::vec(select(chars), 0..=max)
        .prop_map(|v| v.into_iter().collect::<String>().trim_end().to_owned())
}

/// Text that Shift_JIS holds and gives back unchanged, up to the 80 bytes of
/// `fee_name` (so values that fill the field to the last byte come up often).
fn x_text() -> impl Strategy<Value = String> {
    let mut chars: Vec<char> = (0x20u8..0x7F).map(char::from).collect();
    chars.extend((0xFF61..=0xFF9F).filter_map(char::from_u32));
    chars.extend("水道料金税市県民国保険　５Ａあいうアイウ〒①Ⅱ髙﨑".chars());
    proptest::collection::vec(select(chars), 0..=80).prop_map(|v| {
        let mut s: String = v.into_iter().collect();
        while encoding_rs::SHIFT_JIS.encode(&s).0.len() > 80 {
            s.pop();
        }
        s.trim_end_matches(' ').to_owned()
    })
}

fn header() -> impl Strategy<Value = Header> {
    (1u32..=99_999_999, any::<bool>(), "[0-9]{10}", datetime()).prop_map(
        |(sequence, resend, centre_id, sent_at)| Header {
            sequence,
            resend,
            centre_id,
            sent_at,
        },
    )
}

fn notice() -> impl Strategy<Value = Notice> {
    (
        ("[0-9]{8}", "[0-9]{26}", select(NoticeKind::ALL.to_vec())),
        ("[A-Za-z0-9]{1,20}", "[0-9]{0,6}", "[A-Za-z0-9]{0,16}"),
        (
            1..=MAX_AMOUNT,
            proptest::option::of(("[0-9]{4}", "[0-9]{3}")),
        ),
        (
            select(Channel::ALL.to_vec()),
            select(CollectionMethod::ALL.to_vec()),
            datetime(),
        ),
        (x_text(), c_text(48)),
    )
        .prop_map(
            |(
                (institution_code, transaction_key, kind),
                (customer_number, confirmation_number, payment_class),
                (amount, bank),
                (channel, collection_method, paid_at),
                (fee_name, payer_kana),
            )| {
                let (bank_code, branch_code) = bank.unwrap_or_default();
                Notice {
                    institution_code,
                    transaction_key,
                    kind,
                    customer_number,
                    confirmation_number,
                    payment_class,
                    amount,
                    bank_code,
                    branch_code,
                    channel,
                    collection_method,
                    paid_at,
                    fee_name,
                    payer_kana,
                }
            },
        )
}

fn reason() -> impl Strategy<Value = NackReason> {
    prop_oneof![
        select(NackReason::LISTED.to_vec()),
        "[TP][0-9]{3}".prop_filter_map("unlisted", |c| {
            let r = NackReason::from_code(&c)?;
            matches!(r, NackReason::Other(_)).then_some(r)
        }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        notice().prop_map(|n| Body::PaymentNotice(Box::new(n))),
        (notice(), "[0-9]{26}").prop_map(|(notice, original_transaction_key)| {
            Body::CancellationNotice(Box::new(Cancellation {
                notice,
                original_transaction_key,
            }))
        }),
        "[0-9]{26}".prop_map(|transaction_key| Body::Ack(Ack { transaction_key })),
        ("([0-9]{26})?", reason(), c_text(40)).prop_map(|(transaction_key, reason, detail)| {
            Body::Nack(Nack {
                transaction_key,
                reason,
                detail,
            })
        }),
        Just(Body::EchoRequest),
        Just(Body::EchoResponse),
    ]
}

fn telegram() -> impl Strategy<Value = Telegram> {
    (header(), body()).prop_map(|(header, body)| Telegram { header, body })
}

/// Decoding must never panic; whatever decodes must re-encode to a telegram that
/// decodes to the same value.
fn decode_is_stable(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(t) = decode(bytes) {
        let again = encode(&t).map_err(|e| TestCaseError::fail(format!("{e}: {t:?}")))?;
        prop_assert_eq!(decode(&again), Ok(t));
    }
    Ok(())
}

proptest! {
    // Failing cases are kept in proptest-regressions/ (committed) and replayed first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/proptest-regressions/proptest.txt"
        )))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn encode_then_decode_gives_the_value_back(t in telegram()) {
        let bytes = encode(&t).unwrap();
        prop_assert_eq!(bytes.len(), t.telegram_type().wire_len());
        prop_assert_eq!(decode(&bytes), Ok(t));
    }

    #[test]
    fn frames_survive_any_chunking(
        ts in proptest::collection::vec(telegram(), 1..5),
        cuts in proptest::collection::vec(1usize..200, 1..20),
    ) {
        let stream: Vec<u8> = ts.iter().flat_map(|t| encode(t).unwrap()).collect();
        let mut d = Deframer::new();
        let mut got = Vec::new();
        let mut rest = &stream[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*cut).min(rest.len()));
            d.push(chunk);
            rest = tail;
            while let Some(frame) = d.next_frame().unwrap() {
                got.push(decode(&frame).unwrap());
            }
        }
        prop_assert_eq!(got, ts);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        decode_is_stable(&bytes)?;
        let mut d = Deframer::new();
        for chunk in bytes.chunks(7) {
            d.push(chunk);
            while let Ok(Some(frame)) = d.next_frame() {
                decode_is_stable(&frame)?;
            }
        }
    }

    #[test]
    fn mutated_telegrams_never_panic(
        t in telegram(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = encode(&t).unwrap();
        for (i, b) in edits {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        decode_is_stable(&bytes)?;
    }

    #[test]
    fn kana_conversion_never_panics_and_is_idempotent(s in "\\PC{0,60}", width in 0usize..60) {
        if let Ok(bytes) = to_field("f", &s, width) {
            prop_assert_eq!(bytes.len(), width);
            let text = from_field("f", &bytes).unwrap();
            prop_assert_eq!(to_field("f", &text, width).unwrap(), bytes);
        }
    }
}
