//! Sample telegrams shared by the integration tests.
#![allow(dead_code)]

use chrono::{NaiveDate, NaiveDateTime};
use mpn_cafis::{Body, Channel, CollectionMethod, Header, Notice, NoticeKind, Telegram};

pub(crate) fn at(h: u32, m: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 5, 31)
        .unwrap()
        .and_hms_opt(h, m, s)
        .unwrap()
}

pub(crate) fn notice() -> Notice {
    Notice {
        institution_code: "12345000".into(),
        transaction_key: "12345678902026053100000042".into(),
        kind: NoticeKind::Confirmed,
        customer_number: "A1234567890".into(),
        confirmation_number: "123456".into(),
        payment_class: String::new(),
        amount: 12_345,
        bank_code: "0001".into(),
        branch_code: "001".into(),
        channel: Channel::Atm,
        collection_method: CollectionMethod::Online,
        paid_at: at(10, 14, 58),
        fee_name: "水道料金".into(),
        payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
    }
}

pub(crate) fn payment(sequence: u32, notice: Notice) -> Telegram {
    Telegram {
        header: Header {
            sequence,
            resend: false,
            centre_id: "1234567890".into(),
            sent_at: at(10, 15, 2),
        },
        body: Body::PaymentNotice(Box::new(notice)),
    }
}
