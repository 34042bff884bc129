//! [`Event`]: a payment event that passed every field rule, built only by
//! [`Event::validate`] from the wire type (both decoders produce the wire type first,
//! so JSON and protobuf records obey exactly the same rules).

use chrono::{DateTime, FixedOffset, NaiveDate};
use mpn_proto::mpn::notify::v1 as notify;
use mpn_proto::mpn::v1 as pb;

use super::Rejection;
use super::ids::{Amount, CustomerNumber, InstitutionCode, NotificationId, TransactionKey, digits};

impl NotificationId {
    /// The id of `kind`'s notification of the event with `key` (declared here, with
    /// the kinds, so `ids` needs nothing of `event`).
    pub fn derive(key: &TransactionKey, kind: EventKind) -> Self {
        Self::from_parts(key, kind.as_str())
    }
}

/// The MPN message kinds an engine sees (see domain/MPN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Payment,
    Cancellation,
    ResendConfirmation,
    Preliminary,
    Confirmed,
    PreliminaryCancel,
    DailyCounters,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::Payment,
        EventKind::Cancellation,
        EventKind::ResendConfirmation,
        EventKind::Preliminary,
        EventKind::Confirmed,
        EventKind::PreliminaryCancel,
        EventKind::DailyCounters,
    ];

    /// The lower-case name used in JSON records and notification ids.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Payment => "payment",
            EventKind::Cancellation => "cancellation",
            EventKind::ResendConfirmation => "resend_confirmation",
            EventKind::Preliminary => "preliminary",
            EventKind::Confirmed => "confirmed",
            EventKind::PreliminaryCancel => "preliminary_cancel",
            EventKind::DailyCounters => "daily_counters",
        }
    }

    pub fn from_wire(v: i32) -> Option<Self> {
        Some(match pb::EventKind::try_from(v).ok()? {
            pb::EventKind::Unspecified => return None,
            pb::EventKind::Payment => EventKind::Payment,
            pb::EventKind::Cancellation => EventKind::Cancellation,
            pb::EventKind::ResendConfirmation => EventKind::ResendConfirmation,
            pb::EventKind::Preliminary => EventKind::Preliminary,
            pb::EventKind::Confirmed => EventKind::Confirmed,
            pb::EventKind::PreliminaryCancel => EventKind::PreliminaryCancel,
            pb::EventKind::DailyCounters => EventKind::DailyCounters,
        })
    }

    pub fn to_wire(self) -> pb::EventKind {
        match self {
            EventKind::Payment => pb::EventKind::Payment,
            EventKind::Cancellation => pb::EventKind::Cancellation,
            EventKind::ResendConfirmation => pb::EventKind::ResendConfirmation,
            EventKind::Preliminary => pb::EventKind::Preliminary,
            EventKind::Confirmed => pb::EventKind::Confirmed,
            EventKind::PreliminaryCancel => pb::EventKind::PreliminaryCancel,
            EventKind::DailyCounters => pb::EventKind::DailyCounters,
        }
    }

    /// The kind a subscriber is notified of. A resend confirmation (再送確認) is an
    /// upsert of the payment it confirms: it shares the payment's notification id, so
    /// it never yields a second, different notification.
    pub fn notified_as(self) -> Self {
        match self {
            EventKind::ResendConfirmation => EventKind::Payment,
            k => k,
        }
    }

    fn is_cancel(self) -> bool {
        matches!(self, EventKind::Cancellation | EventKind::PreliminaryCancel)
    }

    /// Kinds that come from a bank (as opposed to convenience-store notices) carry
    /// Zengin bank and branch codes.
    fn needs_bank(self) -> bool {
        matches!(
            self,
            EventKind::Payment | EventKind::Cancellation | EventKind::ResendConfirmation
        )
    }
}

/// Payment details; present on every kind except daily counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub customer_number: CustomerNumber,
    pub confirmation_number: Option<String>,
    pub payment_class: Option<String>,
    pub amount: Amount,
    pub bank_code: Option<String>,
    pub branch_code: Option<String>,
    pub channel: pb::Channel,
    pub collection_method: pb::CollectionMethod,
    pub paid_at: DateTime<FixedOffset>,
    pub fee_name: Option<String>,
    pub payer_kana: Option<String>,
    pub original_transaction_key: Option<TransactionKey>,
}

/// Body of an event: the payment details, or the daily reconciliation counters.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Payment(Box<Payment>),
    Counters(pb::DailyCounters),
}

/// A validated payment event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub transaction_key: TransactionKey,
    pub kind: EventKind,
    pub institution: InstitutionCode,
    pub body: Body,
    pub published_at_us: i64,
}

/// Field-size limits, shared with the docs and the simulator.
pub mod limits {
    pub const CONFIRMATION_NUMBER: usize = 6;
    pub const PAYMENT_CLASS: usize = 16;
    pub const FEE_NAME: usize = 40;
    pub const PAYER_KANA: usize = 48;
}

fn optional(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn field<T>(name: &str, r: Result<T, String>) -> Result<T, Rejection> {
    r.map_err(|m| Rejection::invalid(name, m))
}

/// Katakana (full- or half-width), the long-vowel and voiced marks, ASCII upper-case
/// letters, digits, space and the few punctuation marks Zengin names allow.
fn is_kana_name_char(c: char) -> bool {
    matches!(c,
        '\u{30A1}'..='\u{30FC}' // full-width katakana, incl. ー
        | '\u{FF61}'..='\u{FF9F}' // half-width katakana and marks
        | 'A'..='Z' | '0'..='9' | ' ' | '\u{3000}' | '(' | ')' | '-' | '.' | '/' | ','
    )
}

impl Event {
    /// Checks every field rule of `domain/MPN.md` (documented in
    /// docs/input-events.md) and builds the typed event. The first broken rule is
    /// returned, naming its field.
    pub fn validate(e: &pb::PaymentEvent) -> Result<Self, Rejection> {
        if e.transaction_key.is_empty() {
            return Err(Rejection::invalid("transaction_key", "is required"));
        }
        let transaction_key = field("transaction_key", TransactionKey::parse(&e.transaction_key))?;
        let kind = EventKind::from_wire(e.kind).ok_or_else(|| {
            Rejection::invalid(
                "kind",
                format!(
                    "must be one of payment, cancellation, resend_confirmation, preliminary, \
                     confirmed, preliminary_cancel, daily_counters (got {})",
                    e.kind
                ),
            )
        })?;
        if e.institution_code.is_empty() {
            return Err(Rejection::invalid("institution_code", "is required"));
        }
        let institution = field(
            "institution_code",
            InstitutionCode::parse(&e.institution_code),
        )?;
        if e.published_at_us < 0 {
            return Err(Rejection::invalid(
                "published_at_us",
                "must not be negative",
            ));
        }

        let body = if kind == EventKind::DailyCounters {
            let c = e
                .counters
                .as_ref()
                .ok_or_else(|| Rejection::invalid("counters", "is required for daily_counters"))?;
            if NaiveDate::parse_from_str(&c.counter_date, "%Y%m%d").is_err() {
                return Err(Rejection::invalid(
                    "counters.counter_date",
                    format!(
                        "must be a calendar date YYYYMMDD (got {:?}) [A601]",
                        c.counter_date
                    ),
                ));
            }
            Body::Counters(c.clone())
        } else {
            if e.counters.is_some() {
                return Err(Rejection::invalid(
                    "counters",
                    "is only allowed for daily_counters",
                ));
            }
            Body::Payment(Box::new(Self::validate_payment(e, kind)?))
        };
        Ok(Self {
            transaction_key,
            kind,
            institution,
            body,
            published_at_us: e.published_at_us,
        })
    }

    fn validate_payment(e: &pb::PaymentEvent, kind: EventKind) -> Result<Payment, Rejection> {
        if e.customer_number.is_empty() {
            return Err(Rejection::invalid("customer_number", "is required"));
        }
        let customer_number = field("customer_number", CustomerNumber::parse(&e.customer_number))?;
        if !e.confirmation_number.is_empty() {
            let c = &e.confirmation_number;
            if c.len() > limits::CONFIRMATION_NUMBER || !c.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Rejection::invalid(
                    "confirmation_number",
                    format!("must be up to 6 digits (got {c:?})"),
                ));
            }
        }
        if !e.payment_class.is_empty() {
            let c = &e.payment_class;
            if c.len() > limits::PAYMENT_CLASS || !c.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(Rejection::invalid(
                    "payment_class",
                    format!("must be up to 16 ASCII letters or digits (got {c:?}) [9003]"),
                ));
            }
        }
        let amount = field("amount", Amount::new(e.amount))?;
        let (bank_code, branch_code) = if kind.needs_bank() || !e.bank_code.is_empty() {
            field("bank_code", digits(&e.bank_code, 4))?;
            field("branch_code", digits(&e.branch_code, 3))?;
            (Some(e.bank_code.clone()), Some(e.branch_code.clone()))
        } else {
            if !e.branch_code.is_empty() {
                return Err(Rejection::invalid(
                    "bank_code",
                    "is required when branch_code is set",
                ));
            }
            (None, None)
        };
        let channel = match pb::Channel::try_from(e.channel) {
            Ok(pb::Channel::Unspecified) | Err(_) => {
                return Err(Rejection::invalid(
                    "channel",
                    format!(
                        "must be one of counter, atm, internet_banking, telephone_banking (got {})",
                        e.channel
                    ),
                ));
            }
            Ok(c) => c,
        };
        if kind == EventKind::Cancellation && channel != pb::Channel::Counter {
            return Err(Rejection::invalid(
                "channel",
                "a cancellation must come from the counter channel [A301]",
            ));
        }
        let collection_method = match pb::CollectionMethod::try_from(e.collection_method) {
            Ok(pb::CollectionMethod::Unspecified) | Err(_) => {
                return Err(Rejection::invalid(
                    "collection_method",
                    format!(
                        "must be one of online, info_link, batch (got {})",
                        e.collection_method
                    ),
                ));
            }
            Ok(m) => m,
        };
        if e.paid_at.is_empty() {
            return Err(Rejection::invalid("paid_at", "is required"));
        }
        let paid_at = DateTime::parse_from_rfc3339(&e.paid_at).map_err(|err| {
            Rejection::invalid(
                "paid_at",
                format!("must be RFC 3339 with an offset, e.g. 2026-05-31T10:15:00+09:00 ({err}; got {:?})", e.paid_at),
            )
        })?;
        if e.fee_name.chars().count() > limits::FEE_NAME || e.fee_name.chars().any(char::is_control)
        {
            return Err(Rejection::invalid(
                "fee_name",
                "must be up to 40 characters without control characters",
            ));
        }
        if e.payer_kana.chars().count() > limits::PAYER_KANA {
            return Err(Rejection::invalid(
                "payer_kana",
                "must be up to 48 characters",
            ));
        }
        if let Some(c) = e.payer_kana.chars().find(|&c| !is_kana_name_char(c)) {
            return Err(Rejection::invalid(
                "payer_kana",
                format!("must be katakana, A-Z, 0-9, space or ()-./, (found {c:?})"),
            ));
        }
        let original_transaction_key = if kind.is_cancel() {
            if e.original_transaction_key.is_empty() {
                return Err(Rejection::invalid(
                    "original_transaction_key",
                    format!("is required for {}", kind.as_str()),
                ));
            }
            Some(field(
                "original_transaction_key",
                TransactionKey::parse(&e.original_transaction_key),
            )?)
        } else if !e.original_transaction_key.is_empty() {
            return Err(Rejection::invalid(
                "original_transaction_key",
                "is only allowed for cancellation and preliminary_cancel",
            ));
        } else {
            None
        };
        Ok(Payment {
            customer_number,
            confirmation_number: optional(&e.confirmation_number),
            payment_class: optional(&e.payment_class),
            amount,
            bank_code,
            branch_code,
            channel,
            collection_method,
            paid_at,
            fee_name: optional(&e.fee_name),
            payer_kana: optional(&e.payer_kana),
            original_transaction_key,
        })
    }

    /// The id of the notification this event produces (see [`EventKind::notified_as`]).
    pub fn notification_id(&self) -> NotificationId {
        NotificationId::derive(&self.transaction_key, self.kind.notified_as())
    }

    /// Back to the wire form (what the dead-letter topic receives when a valid event
    /// has to be dead-lettered later, e.g. after repeated session panics).
    pub fn to_wire(&self) -> pb::PaymentEvent {
        let mut e = pb::PaymentEvent {
            transaction_key: self.transaction_key.to_string(),
            kind: self.kind.to_wire() as i32,
            institution_code: self.institution.to_string(),
            published_at_us: self.published_at_us,
            ..Default::default()
        };
        match &self.body {
            Body::Counters(c) => e.counters = Some(c.clone()),
            Body::Payment(p) => {
                e.customer_number = p.customer_number.as_str().to_owned();
                e.confirmation_number = p.confirmation_number.clone().unwrap_or_default();
                e.payment_class = p.payment_class.clone().unwrap_or_default();
                e.amount = p.amount.yen();
                e.bank_code = p.bank_code.clone().unwrap_or_default();
                e.branch_code = p.branch_code.clone().unwrap_or_default();
                e.channel = p.channel as i32;
                e.collection_method = p.collection_method as i32;
                e.paid_at = p.paid_at.to_rfc3339();
                e.fee_name = p.fee_name.clone().unwrap_or_default();
                e.payer_kana = p.payer_kana.clone().unwrap_or_default();
                e.original_transaction_key = p
                    .original_transaction_key
                    .map(|k| k.to_string())
                    .unwrap_or_default();
            }
        }
        e
    }

    /// The notification subscribers receive (its `seq` is set per stream by the
    /// delivery connector).
    pub fn to_notification(&self, partition: i32, offset: i64) -> notify::Notification {
        self.to_notification_with(self.notification_id(), partition, offset)
    }

    /// [`Event::to_notification`] with the event's id already derived (a session
    /// derives it for its dedupe window first).
    pub fn to_notification_with(
        &self,
        id: NotificationId,
        partition: i32,
        offset: i64,
    ) -> notify::Notification {
        debug_assert_eq!(id, self.notification_id());
        let w = self.to_wire();
        notify::Notification {
            seq: 0,
            notification_id: id.into_string(),
            institution_code: w.institution_code,
            kind: self.kind.notified_as().to_wire() as i32,
            transaction_key: w.transaction_key,
            customer_number: w.customer_number,
            confirmation_number: w.confirmation_number,
            payment_class: w.payment_class,
            amount: w.amount,
            bank_code: w.bank_code,
            branch_code: w.branch_code,
            channel: w.channel,
            collection_method: w.collection_method,
            paid_at: w.paid_at,
            fee_name: w.fee_name,
            payer_kana: w.payer_kana,
            original_transaction_key: w.original_transaction_key,
            counters: w.counters,
            published_at_us: w.published_at_us,
            source_partition: partition,
            source_offset: offset,
            resent_by_mpn: self.kind == EventKind::ResendConfirmation,
        }
    }
}
