//! Golden vectors: one file per telegram type in tests/golden/, a commented field
//! table (offset, length, field, value, meaning) followed by a hex dump. The test
//! encodes the documented value and compares bytes *and* the field table (so the
//! offsets in the files, and in docs/cafis-telegram.md, are the codec's), then decodes
//! the bytes of the hex dump back to the value.
//!
//! After a deliberate format change: `MPN_CAFIS_BLESS=1 cargo test -p mpn-cafis --test
//! golden` rewrites the files; review the diff.

use std::fmt::Write as _;
use std::path::PathBuf;

use chrono::{NaiveDate, NaiveDateTime};
use mpn_cafis::codec::field_layout;
use mpn_cafis::{
    Ack, Body, Cancellation, Channel, CollectionMethod, Header, Nack, NackReason, Notice,
    NoticeKind, Telegram, decode, encode,
};

fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 5, 31)
        .unwrap()
        .and_hms_opt(h, m, s)
        .unwrap()
}

fn header(sequence: u32, resend: bool) -> Header {
    Header {
        sequence,
        resend,
        centre_id: "1234567890".into(),
        sent_at: at(10, 15, 2),
    }
}

const KEY_42: &str = "12345678902026053100000042";

fn notice(key: &str, channel: Channel) -> Notice {
    Notice {
        institution_code: "12345000".into(),
        transaction_key: key.into(),
        kind: NoticeKind::Confirmed,
        customer_number: "A1234567890".into(),
        confirmation_number: "123456".into(),
        payment_class: String::new(),
        amount: 12_345,
        bank_code: "0001".into(),
        branch_code: "001".into(),
        channel,
        collection_method: CollectionMethod::Online,
        paid_at: at(10, 14, 58),
        fee_name: "水道料金　５月分".into(),
        payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
    }
}

fn vectors() -> Vec<(&'static str, &'static str, Telegram)> {
    vec![
        (
            "payment_notice",
            "payment notice (PN): sequence 42, ¥12,345 paid at an ATM",
            Telegram {
                header: header(42, false),
                body: Body::PaymentNotice(Box::new(notice(KEY_42, Channel::Atm))),
            },
        ),
        (
            "cancellation_notice",
            "cancellation notice (CN): sequence 43 cancels transaction ...00000042",
            Telegram {
                header: header(43, false),
                body: Body::CancellationNotice(Box::new(Cancellation {
                    notice: notice("12345678902026053100000043", Channel::Counter),
                    original_transaction_key: KEY_42.into(),
                })),
            },
        ),
        (
            "ack",
            "acknowledgement (AK) of the payment notice with sequence 42",
            Telegram {
                header: header(42, false),
                body: Body::Ack(Ack {
                    transaction_key: KEY_42.into(),
                }),
            },
        ),
        (
            "nack",
            "negative acknowledgement (NK) of a resent notice (sequence 42): P003 unknown customer",
            Telegram {
                header: header(42, true),
                body: Body::Nack(Nack {
                    transaction_key: KEY_42.into(),
                    reason: NackReason::UnknownCustomer,
                    detail: "UNKNOWN CUSTOMER A1234567890".into(),
                }),
            },
        ),
        (
            "echo_request",
            "echo request (ER), sequence 7",
            Telegram {
                header: header(7, false),
                body: Body::EchoRequest,
            },
        ),
        (
            "echo_response",
            "echo response (EA) to echo request 7",
            Telegram {
                header: header(7, false),
                body: Body::EchoResponse,
            },
        ),
    ]
}

/// Type and meaning of each field, for the comment lines.
fn meaning(field: &str) -> (&'static str, &'static str) {
    match field {
        "total_length" => ("N", "bytes in the telegram, these 4 included"),
        "telegram_type" => ("C", "PN CN AK NK ER EA"),
        "sequence" => ("N", "link sequence (answers echo the request's)"),
        "resend" => ("C", "0 first send, 1 resend (answers copy it)"),
        "centre_id" => ("N", "shared-use centre owning the link"),
        "sent_at" => ("N", "YYYYMMDDhhmmss, JST"),
        "response_code" => ("C", "0000, or the nack reason"),
        "reserved" | "reserved_trailer" => ("C", "spaces"),
        "institution_code" => ("N", "収納機関番号, 8 digits"),
        "transaction_key" => ("N", "centre(10) date(8) serial(8)"),
        "kind" => ("C", "1 preliminary, 2 confirmed"),
        "customer_number" => ("C", "お客様番号, ASCII letters/digits"),
        "confirmation_number" => ("C", "確認番号, digits or spaces"),
        "payment_class" => ("C", "納付区分, spaces for private billers"),
        "amount" => ("N", "yen"),
        "bank_code" => ("N", "Zengin bank code or spaces"),
        "branch_code" => ("N", "Zengin branch code or spaces"),
        "channel" => ("C", "1 counter 2 ATM 3 internet 4 telephone"),
        "collection_method" => ("C", "1 online 2 info-link 3 batch"),
        "paid_at" => ("N", "YYYYMMDDhhmmss, JST"),
        "fee_name" => ("X", "Shift_JIS"),
        "payer_kana" => ("C", "half-width kana (Zengin rules)"),
        "original_transaction_key" => ("N", "the cancelled payment's key"),
        "detail" => ("C", "free text for the operator"),
        other => panic!("no meaning for {other}"),
    }
}

fn render(title: &str, t: &Telegram) -> String {
    let bytes = encode(t).unwrap();
    let mut out = String::new();
    writeln!(out, "# CAFIS-style {title}").unwrap();
    writeln!(
        out,
        "# {} bytes; layout in docs/cafis-telegram.md.",
        bytes.len()
    )
    .unwrap();
    writeln!(
        out,
        "# offset len T field                    value (+N sp = N padding spaces)  meaning"
    )
    .unwrap();
    for span in field_layout(t).unwrap() {
        let raw = &bytes[span.offset..span.offset + span.len];
        let (text, _) = encoding_rs::SHIFT_JIS.decode_without_bom_handling(raw);
        let shown = text.trim_end_matches(' ');
        let pad = text.len() - shown.len();
        let value = if pad == 0 {
            format!("\"{shown}\"")
        } else {
            format!("\"{shown}\"+{pad}sp")
        };
        let (ty, what) = meaning(span.field);
        writeln!(
            out,
            "# {:>6} {:>3} {ty} {:<24} {value:<32} {what}",
            span.offset, span.len, span.field,
        )
        .unwrap();
    }
    for (i, line) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let shown: String = line
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        writeln!(out, "{:04x}: {:<47}  |{shown}|", i * 16, hex.join(" ")).unwrap();
    }
    out
}

/// The bytes of a golden file: hex pairs between `NNNN:` and `|` on lines not
/// starting with `#`.
fn parse_hex(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (offset, rest) = line.split_once(':').expect("offset: hex |ascii|");
        assert_eq!(
            usize::from_str_radix(offset, 16).unwrap(),
            bytes.len(),
            "{line}"
        );
        let hex = rest.split('|').next().unwrap();
        bytes.extend(
            hex.split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap()),
        );
    }
    bytes
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"))
}

#[test]
fn golden_vectors_encode_and_decode() {
    let bless = std::env::var_os("MPN_CAFIS_BLESS").is_some();
    for (name, title, telegram) in vectors() {
        let path = golden_path(name);
        let want = render(title, &telegram);
        if bless {
            std::fs::write(&path, &want).unwrap();
        }
        let file =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(
            file, want,
            "{name}: encoding or field table differs from the golden file"
        );
        let bytes = parse_hex(&file);
        assert_eq!(bytes, encode(&telegram).unwrap(), "{name}: hex dump");
        assert_eq!(decode(&bytes).unwrap(), telegram, "{name}: decode");
    }
}

#[test]
fn every_telegram_type_has_a_golden_file() {
    let names: Vec<_> = vectors()
        .into_iter()
        .map(|(n, _, t)| (n, t.telegram_type()))
        .collect();
    for ty in mpn_cafis::TelegramType::ALL {
        assert!(names.iter().any(|(_, t)| *t == ty), "{ty:?}");
    }
}
