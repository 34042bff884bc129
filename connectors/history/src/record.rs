//! What a history row holds: built from a notification (personal fields sealed), read
//! back, and opened for the console.

use mpn_proto::mpn::notify::v1 as pb;
use mpn_proto::mpn::v1 as wire;
use serde::Serialize;

use crate::crypto::{CryptoError, Keyring};

/// One row as the store keeps it (personal fields sealed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    /// Processing date of the transaction key (YYYYMMDD): the partition key.
    pub day: i32,
    pub notification_id: String,
    /// Order of first writing (the live view follows it); 0 before it is written.
    pub row_no: i64,
    pub institution: String,
    pub kind: String,
    pub status: String,
    /// The notification that set the status (a cancellation, a confirmed notice), or,
    /// on a cancellation, the notification it cancels.
    pub linked_id: String,
    pub transaction_key: String,
    pub original_transaction_key: String,
    pub amount: i64,
    pub channel: String,
    pub collection_method: String,
    pub bank_code: String,
    pub branch_code: String,
    pub payment_class: String,
    pub fee_name: String,
    pub paid_at: String,
    pub paid_at_us: i64,
    pub counters: Counters,
    pub key_id: String,
    pub customer_number: Vec<u8>,
    pub confirmation_number: Vec<u8>,
    pub payer_kana: Vec<u8>,
    pub customer_index: Vec<u8>,
    pub source_partition: i32,
    pub source_offset: i64,
    pub published_at_us: i64,
    pub written_at_us: i64,
}

/// MPN's daily counters (kind `daily_counters` only; zero otherwise).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub counter_date: i32,
    pub inquiry_count: i64,
    pub clearing_count: i64,
    pub clearing_amount: i64,
    pub cancel_count: i64,
    pub cancel_amount: i64,
}

/// Status a row starts with; lifecycle links change it (see `store`).
pub const PAID: &str = "paid";
pub const CANCELLED: &str = "cancelled";
pub const OPEN: &str = "open";
pub const CLOSED: &str = "closed";
pub const RECORDED: &str = "recorded";

/// The kinds a row can have (the notification kinds).
pub const KINDS: [&str; 6] = [
    "payment",
    "cancellation",
    "preliminary",
    "confirmed",
    "preliminary_cancel",
    "daily_counters",
];
pub const CHANNELS: [&str; 4] = ["counter", "atm", "internet_banking", "telephone_banking"];
pub const STATUSES: [&str; 5] = [PAID, CANCELLED, OPEN, CLOSED, RECORDED];

fn channel_name(v: i32) -> String {
    match wire::Channel::try_from(v).unwrap_or_default() {
        wire::Channel::Counter => "counter",
        wire::Channel::Atm => "atm",
        wire::Channel::InternetBanking => "internet_banking",
        wire::Channel::TelephoneBanking => "telephone_banking",
        wire::Channel::Unspecified => "",
    }
    .into()
}

fn method_name(v: i32) -> String {
    match wire::CollectionMethod::try_from(v).unwrap_or_default() {
        wire::CollectionMethod::Online => "online",
        wire::CollectionMethod::InfoLink => "info_link",
        wire::CollectionMethod::Batch => "batch",
        wire::CollectionMethod::Unspecified => "",
    }
    .into()
}

fn kind_name(v: i32) -> &'static str {
    match wire::EventKind::try_from(v).unwrap_or_default() {
        wire::EventKind::Payment | wire::EventKind::ResendConfirmation => "payment",
        wire::EventKind::Cancellation => "cancellation",
        wire::EventKind::Preliminary => "preliminary",
        wire::EventKind::Confirmed => "confirmed",
        wire::EventKind::PreliminaryCancel => "preliminary_cancel",
        wire::EventKind::DailyCounters => "daily_counters",
        wire::EventKind::Unspecified => "",
    }
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn yyyymmdd(s: &str) -> Option<i32> {
    (s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Why a notification cannot become a row (the engine validated it, so this is a bug
/// or a corrupt record; the writer dead-letters nothing and says so).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("notification {id}: {field} {message}")]
pub struct RowError {
    pub id: String,
    pub field: &'static str,
    pub message: String,
}

impl Row {
    /// The row of `n`, its personal fields sealed under the active key.
    pub fn seal(n: &pb::Notification, keys: &Keyring, now_us: i64) -> Result<Row, RowError> {
        let err = |field, message: &str| RowError {
            id: n.notification_id.clone(),
            field,
            message: message.into(),
        };
        let day = n
            .transaction_key
            .get(10..18)
            .and_then(yyyymmdd)
            .ok_or_else(|| err("transaction_key", "has no processing date"))?;
        let kind = kind_name(n.kind);
        if kind.is_empty() {
            return Err(err("kind", "is unspecified"));
        }
        let paid_at_us = if n.paid_at.is_empty() {
            0
        } else {
            chrono::DateTime::parse_from_rfc3339(&n.paid_at)
                .map_err(|_| err("paid_at", "is not RFC 3339"))?
                .timestamp_micros()
        };
        let counters = n
            .counters
            .as_ref()
            .map(|c| Counters {
                counter_date: yyyymmdd(&c.counter_date).unwrap_or(0),
                inquiry_count: int(c.inquiry_count),
                clearing_count: int(c.clearing_count),
                clearing_amount: int(c.clearing_amount),
                cancel_count: int(c.cancel_count),
                cancel_amount: int(c.cancel_amount),
            })
            .unwrap_or_default();
        let status = match kind {
            "payment" => PAID,
            "preliminary" => OPEN,
            _ => RECORDED,
        };
        let id = &n.notification_id;
        Ok(Row {
            day,
            notification_id: id.clone(),
            row_no: 0,
            institution: n.institution_code.clone(),
            kind: kind.into(),
            status: status.into(),
            linked_id: String::new(),
            transaction_key: n.transaction_key.clone(),
            original_transaction_key: n.original_transaction_key.clone(),
            amount: int(n.amount),
            channel: channel_name(n.channel),
            collection_method: method_name(n.collection_method),
            bank_code: n.bank_code.clone(),
            branch_code: n.branch_code.clone(),
            payment_class: n.payment_class.clone(),
            fee_name: n.fee_name.clone(),
            paid_at: n.paid_at.clone(),
            paid_at_us,
            counters,
            key_id: keys.active_key_id().into(),
            customer_number: keys.seal(id, "customer_number", &n.customer_number),
            confirmation_number: keys.seal(id, "confirmation_number", &n.confirmation_number),
            payer_kana: keys.seal(id, "payer_kana", &n.payer_kana),
            customer_index: if n.customer_number.is_empty() {
                Vec::new()
            } else {
                keys.blind(&n.institution_code, &n.customer_number)
            },
            source_partition: n.source_partition,
            source_offset: n.source_offset,
            published_at_us: n.published_at_us,
            written_at_us: now_us,
        })
    }

    /// The row with its personal fields opened.
    pub fn open(&self, keys: &Keyring) -> Result<Payment, CryptoError> {
        let (k, id) = (&self.key_id, &self.notification_id);
        Ok(Payment {
            notification_id: id.clone(),
            row_no: self.row_no,
            day: self.day,
            institution: self.institution.clone(),
            kind: self.kind.clone(),
            status: self.status.clone(),
            linked_id: self.linked_id.clone(),
            transaction_key: self.transaction_key.clone(),
            original_transaction_key: self.original_transaction_key.clone(),
            amount: self.amount,
            channel: self.channel.clone(),
            collection_method: self.collection_method.clone(),
            bank_code: self.bank_code.clone(),
            branch_code: self.branch_code.clone(),
            payment_class: self.payment_class.clone(),
            fee_name: self.fee_name.clone(),
            paid_at: self.paid_at.clone(),
            paid_at_us: self.paid_at_us,
            counters: (self.kind == "daily_counters").then_some(self.counters),
            customer_number: keys.open(k, id, "customer_number", &self.customer_number)?,
            confirmation_number: keys.open(
                k,
                id,
                "confirmation_number",
                &self.confirmation_number,
            )?,
            payer_kana: keys.open(k, id, "payer_kana", &self.payer_kana)?,
            key_id: k.clone(),
            source_partition: self.source_partition,
            source_offset: self.source_offset,
            written_at_us: self.written_at_us,
        })
    }
}

/// A history row as staff see it (personal fields opened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Payment {
    pub notification_id: String,
    pub row_no: i64,
    /// Processing date (YYYYMMDD) from the transaction key.
    pub day: i32,
    pub institution: String,
    pub kind: String,
    pub status: String,
    pub linked_id: String,
    pub transaction_key: String,
    pub original_transaction_key: String,
    pub amount: i64,
    pub channel: String,
    pub collection_method: String,
    pub bank_code: String,
    pub branch_code: String,
    pub payment_class: String,
    pub fee_name: String,
    pub paid_at: String,
    pub paid_at_us: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counters: Option<Counters>,
    pub customer_number: String,
    pub confirmation_number: String,
    pub payer_kana: String,
    pub key_id: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub written_at_us: i64,
}

/// A search of the history. `institutions` is the caller's grant (never empty); the
/// other filters are optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    pub institutions: Vec<String>,
    pub customer_number: Option<String>,
    /// Processing dates, inclusive (YYYYMMDD).
    pub day_from: Option<i32>,
    pub day_to: Option<i32>,
    pub amount_min: Option<i64>,
    pub amount_max: Option<i64>,
    pub kinds: Vec<String>,
    pub channel: Option<String>,
    pub status: Option<String>,
    /// Rows skipped and returned (newest first).
    pub offset: u64,
    pub limit: u64,
    /// Keyset paging: only rows ordered after this (payment time, row number), the
    /// last row of the previous page; exact where an offset would shift as rows
    /// arrive.
    pub before: Option<(i64, i64)>,
    /// Only rows written up to this row number (a download's snapshot).
    pub max_row_no: Option<i64>,
}

/// One processing date's totals from the history beside MPN's counters for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DayTotals {
    pub institution: String,
    pub day: i32,
    pub payment_count: i64,
    pub payment_amount: i64,
    pub cancel_count: i64,
    pub cancel_amount: i64,
    /// The last daily-counters notice for the date, if one arrived.
    pub counters: Option<Counters>,
}

impl DayTotals {
    /// The history and MPN's counters disagree (a missing or extra notification).
    pub fn mismatch(&self) -> bool {
        self.counters.is_some_and(|c| {
            c.clearing_count != self.payment_count
                || c.clearing_amount != self.payment_amount
                || c.cancel_count != self.cancel_count
                || c.cancel_amount != self.cancel_amount
        })
    }
}
