//! The telegram model: plain values, one struct per telegram body.
//!
//! Fields are ordinary Rust types (strings, integers, enums) so the engine's connector
//! fills them without a layer of wrappers; [`crate::encode`] checks every field against
//! docs/cafis-telegram.md and names the one that breaks a rule. What [`crate::decode`]
//! returns is always in canonical form (text trimmed of padding, kana half-width), so
//! decoding, re-encoding and decoding again gives the same value.

use chrono::NaiveDateTime;

/// One telegram: the common header and the body its type calls for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telegram {
    pub header: Header,
    pub body: Body,
}

/// The header fields a sender chooses. The total length, telegram type and response
/// code are not here: they follow from the [`Body`], so they can never disagree with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1..=99,999,999. A notice's sequence identifies it on its institution's link and
    /// never changes on a resend; a response carries the sequence of the telegram it
    /// answers. Echo requests count on their own.
    pub sequence: u32,
    /// `true` when a notice is sent again because no answer came for it; a response
    /// copies the flag of the notice it answers.
    pub resend: bool,
    /// The shared-use centre that owns the link, 10 digits. Responses copy it.
    pub centre_id: String,
    /// When the telegram was made, Japan time (JST), whole seconds: sub-seconds are
    /// dropped on the wire.
    pub sent_at: NaiveDateTime,
}

/// The body of a telegram; its variant decides the telegram type and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Type `PN`: a payment, from the centre to the host. (Boxed, like the notices
    /// below, so that a `Telegram` stays small when it waits in queues.)
    PaymentNotice(Box<Notice>),
    /// Type `CN`: a cancellation of an earlier payment, from the centre to the host.
    CancellationNotice(Box<Cancellation>),
    /// Type `AK`: the host has stored the notice; the centre may forget it.
    Ack(Ack),
    /// Type `NK`: the host refuses the notice; [`NackReason::is_permanent`] says whether
    /// to send it again later or to dead-letter it.
    Nack(Nack),
    /// Type `ER`: are you there? Either side may send it.
    EchoRequest,
    /// Type `EA`: yes. Answers an echo request, with its sequence.
    EchoResponse,
}

/// The six telegram types and their two-letter codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TelegramType {
    PaymentNotice,
    CancellationNotice,
    Ack,
    Nack,
    EchoRequest,
    EchoResponse,
}

impl TelegramType {
    pub const ALL: [TelegramType; 6] = [
        TelegramType::PaymentNotice,
        TelegramType::CancellationNotice,
        TelegramType::Ack,
        TelegramType::Nack,
        TelegramType::EchoRequest,
        TelegramType::EchoResponse,
    ];

    /// The code in the header's `telegram_type` field.
    pub fn code(self) -> &'static str {
        match self {
            TelegramType::PaymentNotice => "PN",
            TelegramType::CancellationNotice => "CN",
            TelegramType::Ack => "AK",
            TelegramType::Nack => "NK",
            TelegramType::EchoRequest => "ER",
            TelegramType::EchoResponse => "EA",
        }
    }

    pub fn from_code(code: &[u8]) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.code().as_bytes() == code)
    }

    /// The exact size of a telegram of this type, length field included: every type
    /// has one fixed size.
    pub fn wire_len(self) -> usize {
        match self {
            TelegramType::PaymentNotice => 300,
            TelegramType::CancellationNotice => 320,
            TelegramType::Ack => 80,
            TelegramType::Nack => 120,
            TelegramType::EchoRequest | TelegramType::EchoResponse => crate::HEADER_LEN,
        }
    }
}

/// A payment notice body (also the first part of a cancellation notice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// 収納機関番号, 8 digits (the canonical MPN form; a 5-digit code is sent padded
    /// with `000`, as the engine stores it).
    pub institution_code: String,
    /// The MPN transaction key, 26 digits: centre code (10) + processing date (8) +
    /// serial (8). Together with the sequence it identifies the notice.
    pub transaction_key: String,
    pub kind: NoticeKind,
    /// お客様番号: 1-20 ASCII letters or digits, sent as given (case kept: it is an
    /// identifier shared with the billing system).
    pub customer_number: String,
    /// 確認番号: 0-6 digits; empty when the institution uses none.
    pub confirmation_number: String,
    /// 納付区分: 0-16 ASCII letters or digits; empty for private billers.
    pub payment_class: String,
    /// 収納金額 in yen, 1..=99,999,999,999.
    pub amount: u64,
    /// Zengin bank code, 4 digits; empty (with `branch_code`) when the payment did not
    /// come through a bank (convenience-store notices).
    pub bank_code: String,
    /// Zengin branch code, 3 digits; empty exactly when `bank_code` is.
    pub branch_code: String,
    pub channel: Channel,
    pub collection_method: CollectionMethod,
    /// When the payer paid, Japan time (JST), whole seconds.
    pub paid_at: NaiveDateTime,
    /// Fee or bill name, any text Shift_JIS can hold in 80 bytes (40 kanji).
    pub fee_name: String,
    /// Payer name. Encoding converts it to half-width kana by the Zengin rules and
    /// truncates it to 48 bytes (see [`crate::kana::to_field`]); decoding returns the
    /// half-width form.
    pub payer_kana: String,
}

/// A cancellation notice: the cancelled payment's details under the cancellation's
/// own transaction key, plus the key of the payment it cancels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cancellation {
    pub notice: Notice,
    /// The transaction key of the payment being cancelled, 26 digits.
    pub original_transaction_key: String,
}

/// A positive answer to a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The transaction key of the notice answered, 26 digits.
    pub transaction_key: String,
}

/// A negative answer to a notice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The transaction key of the notice answered, 26 digits, or empty when the host
    /// could not read it (a format error in that field).
    pub transaction_key: String,
    pub reason: NackReason,
    /// Free text for the operator (e.g. the field in error), a `C` field of 40 bytes:
    /// converted and truncated like `payer_kana`.
    pub detail: String,
}

/// Preliminary (速報) or confirmed (確報). Bank payments are final, so they are sent
/// as confirmed; convenience-store scans are preliminary until settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeKind {
    Preliminary,
    Confirmed,
}

/// Where the payer paid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Counter,
    Atm,
    InternetBanking,
    TelephoneBanking,
}

/// How the payment was collected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CollectionMethod {
    Online,
    InfoLink,
    Batch,
}

macro_rules! one_byte_codes {
    ($ty:ident { $($variant:ident = $code:literal),* $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),*];

            /// The one-byte code on the wire.
            pub fn code(self) -> u8 {
                match self { $($ty::$variant => $code),* }
            }

            pub fn from_code(code: u8) -> Option<Self> {
                match code { $($code => Some($ty::$variant),)* _ => None }
            }
        }
    };
}

one_byte_codes!(NoticeKind { Preliminary = b'1', Confirmed = b'2' });
one_byte_codes!(Channel { Counter = b'1', Atm = b'2', InternetBanking = b'3', TelephoneBanking = b'4' });
one_byte_codes!(CollectionMethod { Online = b'1', InfoLink = b'2', Batch = b'3' });

/// Why a host refused a notice: the header's `response_code` of a nack.
///
/// Codes starting with `T` are transient (the same notice may succeed later: keep it
/// and resend with back-off); codes starting with `P` are permanent (resending cannot
/// help: dead-letter the notice with the reason). The first letter carries the class
/// so that a sender can sort a code this version does not list.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NackReason {
    /// `T001` host busy.
    HostBusy,
    /// `T002` host not open (outside its service hours, maintenance).
    HostNotOpen,
    /// `T003` temporary failure inside the host (e.g. its database is down).
    HostTemporaryError,
    /// `P001` format error: the telegram breaks this specification.
    FormatError,
    /// `P002` the institution code is not served on this link.
    UnknownInstitution,
    /// `P003` the customer number is unknown to the institution.
    UnknownCustomer,
    /// `P004` the amount does not match the bill.
    AmountMismatch,
    /// `P005` a cancellation's original transaction is unknown.
    UnknownOriginalTransaction,
    /// `P006` the sequence was already used by a different transaction key.
    SequenceConflict,
    /// `P007` a notice of this transaction key and kind was booked with another body
    /// (§7): not a duplicate, and not to be booked over the first.
    IdentityConflict,
    /// Any other code of the form `T999`/`P999` (letter and three digits) that is not
    /// listed above; encoding rejects a listed code here, so each code has one form.
    Other(String),
}

impl NackReason {
    pub const LISTED: [NackReason; 10] = [
        NackReason::HostBusy,
        NackReason::HostNotOpen,
        NackReason::HostTemporaryError,
        NackReason::FormatError,
        NackReason::UnknownInstitution,
        NackReason::UnknownCustomer,
        NackReason::AmountMismatch,
        NackReason::UnknownOriginalTransaction,
        NackReason::SequenceConflict,
        NackReason::IdentityConflict,
    ];

    /// The four-character response code.
    pub fn code(&self) -> &str {
        match self {
            NackReason::HostBusy => "T001",
            NackReason::HostNotOpen => "T002",
            NackReason::HostTemporaryError => "T003",
            NackReason::FormatError => "P001",
            NackReason::UnknownInstitution => "P002",
            NackReason::UnknownCustomer => "P003",
            NackReason::AmountMismatch => "P004",
            NackReason::UnknownOriginalTransaction => "P005",
            NackReason::SequenceConflict => "P006",
            NackReason::IdentityConflict => "P007",
            NackReason::Other(code) => code,
        }
    }

    /// The reason for a received code: a listed variant, [`NackReason::Other`] for a
    /// well-formed unlisted code, `None` when the code is not `T`/`P` + three digits.
    pub fn from_code(code: &str) -> Option<Self> {
        if let Some(listed) = Self::LISTED.into_iter().find(|r| r.code() == code) {
            return Some(listed);
        }
        is_reason_code(code).then(|| NackReason::Other(code.to_owned()))
    }

    /// `true`: resending will not help, dead-letter the notice. `false`: keep it and
    /// resend later. An unlisted code is permanent unless it starts with `T`.
    pub fn is_permanent(&self) -> bool {
        !self.code().starts_with('T')
    }
}

pub(crate) fn is_reason_code(code: &str) -> bool {
    let b = code.as_bytes();
    b.len() == 4 && matches!(b[0], b'T' | b'P') && b[1..].iter().all(u8::is_ascii_digit)
}

impl Telegram {
    pub fn telegram_type(&self) -> TelegramType {
        match self.body {
            Body::PaymentNotice(_) => TelegramType::PaymentNotice,
            Body::CancellationNotice(_) => TelegramType::CancellationNotice,
            Body::Ack(_) => TelegramType::Ack,
            Body::Nack(_) => TelegramType::Nack,
            Body::EchoRequest => TelegramType::EchoRequest,
            Body::EchoResponse => TelegramType::EchoResponse,
        }
    }

    pub fn sequence(&self) -> u32 {
        self.header.sequence
    }

    pub fn is_resend(&self) -> bool {
        self.header.resend
    }

    /// The notice's own transaction key, or the key an ack/nack answers (`None` for
    /// echoes and for a nack that could not read the key).
    pub fn transaction_key(&self) -> Option<&str> {
        let key = match &self.body {
            Body::PaymentNotice(n) => &n.transaction_key,
            Body::CancellationNotice(c) => &c.notice.transaction_key,
            Body::Ack(a) => &a.transaction_key,
            Body::Nack(n) => &n.transaction_key,
            Body::EchoRequest | Body::EchoResponse => return None,
        };
        (!key.is_empty()).then_some(key.as_str())
    }

    /// The notice inside a payment or cancellation notice.
    pub fn notice(&self) -> Option<&Notice> {
        match &self.body {
            Body::PaymentNotice(n) => Some(n),
            Body::CancellationNotice(c) => Some(&c.notice),
            _ => None,
        }
    }

    /// The ack for this notice (`None` if it is not a notice). It echoes the sequence,
    /// transaction key, resend flag and centre id, as the specification requires.
    pub fn ack(&self, sent_at: NaiveDateTime) -> Option<Telegram> {
        let key = self.notice()?.transaction_key.clone();
        Some(self.answer(
            Body::Ack(Ack {
                transaction_key: key,
            }),
            sent_at,
        ))
    }

    /// The nack for this notice (`None` if it is not a notice).
    pub fn nack(
        &self,
        reason: NackReason,
        detail: &str,
        sent_at: NaiveDateTime,
    ) -> Option<Telegram> {
        let key = self.notice()?.transaction_key.clone();
        Some(self.answer(
            Body::Nack(Nack {
                transaction_key: key,
                reason,
                detail: detail.to_owned(),
            }),
            sent_at,
        ))
    }

    /// The echo response for this echo request (`None` for any other type).
    pub fn echo_response(&self, sent_at: NaiveDateTime) -> Option<Telegram> {
        matches!(self.body, Body::EchoRequest).then(|| self.answer(Body::EchoResponse, sent_at))
    }

    fn answer(&self, body: Body, sent_at: NaiveDateTime) -> Telegram {
        Telegram {
            header: Header {
                sent_at,
                ..self.header.clone()
            },
            body,
        }
    }
}
