//! [`encode`] and [`decode`]: telegram values to bytes and back, field by field in the
//! order of docs/cafis-telegram.md. Both walk the same sequence of fields, so the
//! offsets in the specification are checked by the golden tests through
//! [`field_layout`].

use chrono::{Datelike, NaiveDate, NaiveDateTime};
use encoding_rs::{EncoderResult, SHIFT_JIS};
use thiserror::Error;

use crate::kana::{self, KanaError};
use crate::telegram::{
    Ack, Body, Cancellation, Channel, CollectionMethod, Header, Nack, NackReason, Notice,
    NoticeKind, Telegram, TelegramType, is_reason_code,
};
use crate::{HEADER_LEN, MAX_SEQUENCE};

/// The largest amount a notice carries: 11 digits, as MPN allows.
pub const MAX_AMOUNT: u64 = 99_999_999_999;

const RESPONSE_CODE_OFFSET: usize = 39;

/// A value that breaks a field rule; nothing was encoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EncodeError {
    #[error("{field}: {rule} (got {value:?})")]
    Field {
        field: &'static str,
        value: String,
        rule: String,
    },
    /// A `C` text field holds a character without a JIS X 0201 form.
    #[error(transparent)]
    Kana(#[from] KanaError),
}

/// Bytes that are not a valid telegram. The receiver answers a readable notice with a
/// `P001` nack and drops the link on anything it cannot frame.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("telegram of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    Truncated { len: usize },
    /// `value` shows the field's bytes, non-ASCII bytes escaped as `\xNN`.
    #[error("{field} (offset {offset}, {len} bytes): {rule}; got \"{value}\"")]
    Field {
        field: &'static str,
        offset: usize,
        len: usize,
        value: String,
        rule: String,
    },
}

impl DecodeError {
    /// The name of the offending field, as in the specification (`None` when the
    /// telegram is shorter than a header).
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DecodeError::Truncated { .. } => None,
            DecodeError::Field { field, .. } => Some(field),
        }
    }
}

/// Encodes a whole frame: the 4-digit length prefix is the header's first field, so
/// the result goes onto the socket as is.
pub fn encode(t: &Telegram) -> Result<Vec<u8>, EncodeError> {
    let mut w = Writer::new(t.telegram_type(), false);
    w.telegram(t)?;
    Ok(w.buf)
}

/// One field of an encoded telegram: where it is and what it is called.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpan {
    pub field: &'static str,
    pub offset: usize,
    pub len: usize,
}

/// The fields of `t` with their offsets, in wire order (for the golden tests, which
/// check the specification's tables against the codec).
#[doc(hidden)]
pub fn field_layout(t: &Telegram) -> Result<Vec<FieldSpan>, EncodeError> {
    let mut w = Writer::new(t.telegram_type(), true);
    w.telegram(t)?;
    Ok(w.spans)
}

/// Decodes one whole frame (length prefix included), checking every field.
pub fn decode(frame: &[u8]) -> Result<Telegram, DecodeError> {
    if frame.len() < HEADER_LEN {
        return Err(DecodeError::Truncated { len: frame.len() });
    }
    let mut r = Reader { buf: frame, pos: 0 };
    let declared = r.number("total_length", 4)?;
    let ty = r.one_of(
        "telegram_type",
        2,
        "must be PN, CN, AK, NK, ER or EA",
        TelegramType::from_code,
    )?;
    if declared != frame.len() as u64 || ty.wire_len() != frame.len() {
        return Err(r.error_at(
            "total_length",
            0,
            4,
            format!(
                "a {} telegram is {} bytes, the frame has {}",
                ty.code(),
                ty.wire_len(),
                frame.len()
            ),
        ));
    }
    let sequence = r.number("sequence", 8)?;
    if sequence == 0 {
        return Err(r.error_back("sequence", 8, "must be 00000001..99999999".into()));
    }
    let resend = r.one_of("resend", 1, "must be 0 or 1", |b| match b {
        b"0" => Some(false),
        b"1" => Some(true),
        _ => None,
    })?;
    let centre_id = r.digits("centre_id", 10, false)?;
    let sent_at = r.datetime("sent_at")?;
    let code = r.take(4);
    if ty != TelegramType::Nack && code != b"0000" {
        return Err(r.error_back("response_code", 4, "must be 0000 except on a nack".into()));
    }
    r.reserved("reserved", 5)?;
    let header = Header {
        sequence: sequence as u32,
        resend,
        centre_id,
        sent_at,
    };
    let body = match ty {
        TelegramType::PaymentNotice => {
            let notice = r.notice()?;
            r.reserved("reserved_trailer", 13)?;
            Body::PaymentNotice(Box::new(notice))
        }
        TelegramType::CancellationNotice => {
            let notice = r.notice()?;
            let original_transaction_key = r.digits("original_transaction_key", 26, false)?;
            r.reserved("reserved_trailer", 7)?;
            Body::CancellationNotice(Box::new(Cancellation {
                notice,
                original_transaction_key,
            }))
        }
        TelegramType::Ack => {
            let transaction_key = r.digits("transaction_key", 26, false)?;
            r.reserved("reserved_trailer", 6)?;
            Body::Ack(Ack { transaction_key })
        }
        TelegramType::Nack => {
            let reason = std::str::from_utf8(code)
                .ok()
                .and_then(NackReason::from_code)
                .ok_or_else(|| {
                    r.error_at(
                        "response_code",
                        RESPONSE_CODE_OFFSET,
                        4,
                        "a nack's reason must be T or P followed by three digits".into(),
                    )
                })?;
            let transaction_key = r.digits("transaction_key", 26, true)?;
            let detail = r.kana("detail", 40)?;
            r.reserved("reserved_trailer", 6)?;
            Body::Nack(Nack {
                transaction_key,
                reason,
                detail,
            })
        }
        TelegramType::EchoRequest => Body::EchoRequest,
        TelegramType::EchoResponse => Body::EchoResponse,
    };
    debug_assert_eq!(r.pos, frame.len());
    Ok(Telegram { header, body })
}

struct Writer {
    buf: Vec<u8>,
    spans: Vec<FieldSpan>,
    trace: bool,
}

impl Writer {
    fn new(ty: TelegramType, trace: bool) -> Self {
        Self {
            buf: Vec::with_capacity(ty.wire_len()),
            spans: Vec::new(),
            trace,
        }
    }

    fn telegram(&mut self, t: &Telegram) -> Result<(), EncodeError> {
        let ty = t.telegram_type();
        let h = &t.header;
        self.put("total_length", format!("{:04}", ty.wire_len()).as_bytes());
        self.put("telegram_type", ty.code().as_bytes());
        if !(1..=MAX_SEQUENCE).contains(&h.sequence) {
            return Err(invalid("sequence", h.sequence, "must be 1..=99999999"));
        }
        self.put("sequence", format!("{:08}", h.sequence).as_bytes());
        self.put("resend", if h.resend { b"1" } else { b"0" });
        self.digits("centre_id", &h.centre_id, 10, false)?;
        self.datetime("sent_at", h.sent_at)?;
        let code = match &t.body {
            Body::Nack(n) => reason_code(&n.reason)?,
            _ => "0000",
        };
        self.put("response_code", code.as_bytes());
        self.spaces("reserved", 5);
        debug_assert_eq!(self.buf.len(), HEADER_LEN);
        match &t.body {
            Body::PaymentNotice(n) => {
                self.notice(n)?;
                self.spaces("reserved_trailer", 13);
            }
            Body::CancellationNotice(c) => {
                self.notice(&c.notice)?;
                self.digits(
                    "original_transaction_key",
                    &c.original_transaction_key,
                    26,
                    false,
                )?;
                self.spaces("reserved_trailer", 7);
            }
            Body::Ack(a) => {
                self.digits("transaction_key", &a.transaction_key, 26, false)?;
                self.spaces("reserved_trailer", 6);
            }
            Body::Nack(n) => {
                self.digits("transaction_key", &n.transaction_key, 26, true)?;
                self.kana("detail", &n.detail, 40)?;
                self.spaces("reserved_trailer", 6);
            }
            Body::EchoRequest | Body::EchoResponse => {}
        }
        debug_assert_eq!(self.buf.len(), ty.wire_len());
        Ok(())
    }

    fn notice(&mut self, n: &Notice) -> Result<(), EncodeError> {
        self.digits("institution_code", &n.institution_code, 8, false)?;
        self.digits("transaction_key", &n.transaction_key, 26, false)?;
        self.put("kind", &[n.kind.code()]);
        self.ident(IDENTS[0], &n.customer_number)?;
        self.ident(IDENTS[1], &n.confirmation_number)?;
        self.ident(IDENTS[2], &n.payment_class)?;
        if !(1..=MAX_AMOUNT).contains(&n.amount) {
            return Err(invalid("amount", n.amount, "must be 1..=99999999999 yen"));
        }
        self.put("amount", format!("{:011}", n.amount).as_bytes());
        if n.bank_code.is_empty() != n.branch_code.is_empty() {
            return Err(invalid(
                "branch_code",
                &n.branch_code,
                "bank_code and branch_code are both set or both empty",
            ));
        }
        self.digits("bank_code", &n.bank_code, 4, true)?;
        self.digits("branch_code", &n.branch_code, 3, true)?;
        self.put("channel", &[n.channel.code()]);
        self.put("collection_method", &[n.collection_method.code()]);
        self.datetime("paid_at", n.paid_at)?;
        self.shift_jis("fee_name", &n.fee_name, 80)?;
        self.kana("payer_kana", &n.payer_kana, 48)?;
        Ok(())
    }

    fn put(&mut self, field: &'static str, bytes: &[u8]) {
        if self.trace {
            self.spans.push(FieldSpan {
                field,
                offset: self.buf.len(),
                len: bytes.len(),
            });
        }
        self.buf.extend_from_slice(bytes);
    }

    fn spaces(&mut self, field: &'static str, width: usize) {
        self.put(field, &SPACES[..width]);
    }

    /// `N` field holding a code with leading zeros: exactly `width` digits, or (when
    /// `optional`) empty, sent as spaces.
    fn digits(
        &mut self,
        field: &'static str,
        value: &str,
        width: usize,
        optional: bool,
    ) -> Result<(), EncodeError> {
        if optional && value.is_empty() {
            self.spaces(field, width);
            return Ok(());
        }
        if value.len() != width || !value.bytes().all(|b| b.is_ascii_digit()) {
            let rule = if optional {
                format!("must be {width} digits or empty")
            } else {
                format!("must be {width} digits")
            };
            return Err(invalid(field, value, rule));
        }
        self.put(field, value.as_bytes());
        Ok(())
    }

    /// `C` identifier field: ASCII sent as given, left-aligned, space-padded.
    fn ident(&mut self, id: Ident, value: &str) -> Result<(), EncodeError> {
        if !id.is_valid(value.as_bytes()) {
            return Err(invalid(id.field, value, id.rule));
        }
        let mut bytes = value.as_bytes().to_vec();
        bytes.resize(id.width, b' ');
        self.put(id.field, &bytes);
        Ok(())
    }

    fn datetime(&mut self, field: &'static str, t: NaiveDateTime) -> Result<(), EncodeError> {
        if !(0..=9999).contains(&t.year()) {
            return Err(invalid(field, t, "year must be 0000..=9999"));
        }
        let text = t.format("%Y%m%d%H%M%S").to_string();
        self.put(field, text.as_bytes());
        Ok(())
    }

    fn kana(&mut self, field: &'static str, value: &str, width: usize) -> Result<(), EncodeError> {
        let bytes = kana::to_field(field, value, width)?;
        self.put(field, &bytes);
        Ok(())
    }

    /// `X` field: Shift_JIS, left-aligned, space-padded; too long is an error (never
    /// truncated: cutting kanji text silently is worse than refusing it).
    fn shift_jis(
        &mut self,
        field: &'static str,
        value: &str,
        width: usize,
    ) -> Result<(), EncodeError> {
        if let Some(c) = value.chars().find(|c| c.is_control()) {
            return Err(invalid(
                field,
                value,
                format!("control character {c:?} is not allowed"),
            ));
        }
        let too_long = |needs: String| {
            invalid(
                field,
                value,
                format!("must fit in {width} bytes of Shift_JIS (needs {needs})"),
            )
        };
        // Every character takes at least one byte; this also bounds the buffer below.
        let chars = value.chars().count();
        if chars > width {
            return Err(too_long(format!("{chars} or more")));
        }
        let mut encoder = SHIFT_JIS.new_encoder();
        // encoding_rs reports OutputFull whenever less than a worst-case character's
        // room is left, even if the rest would fit: give it the worst case, then check
        // the width ourselves.
        let room = encoder
            .max_buffer_length_from_utf8_without_replacement(value.len())
            .unwrap_or(0)
            .max(width);
        let mut bytes = vec![0; room];
        let (result, _, written) =
            encoder.encode_from_utf8_without_replacement(value, &mut bytes, true);
        if let EncoderResult::Unmappable(c) = result {
            return Err(invalid(
                field,
                value,
                format!(
                    "character {c:?} (U+{:04X}) has no Shift_JIS form",
                    u32::from(c)
                ),
            ));
        }
        if written > width {
            return Err(too_long(written.to_string()));
        }
        bytes.truncate(width);
        bytes[written..].fill(b' ');
        self.put(field, &bytes);
        Ok(())
    }
}

/// A `C` identifier field: an ASCII value sent verbatim (identifiers are never
/// converted: changing their case would change whose bill it is).
#[derive(Clone, Copy)]
struct Ident {
    field: &'static str,
    width: usize,
    min: usize,
    allowed: fn(&u8) -> bool,
    rule: &'static str,
}

impl Ident {
    fn is_valid(&self, v: &[u8]) -> bool {
        (self.min..=self.width).contains(&v.len()) && v.iter().all(self.allowed)
    }
}

const IDENTS: [Ident; 3] = [
    Ident {
        field: "customer_number",
        width: 20,
        min: 1,
        allowed: u8::is_ascii_alphanumeric,
        rule: "must be 1-20 ASCII letters or digits",
    },
    Ident {
        field: "confirmation_number",
        width: 6,
        min: 0,
        allowed: u8::is_ascii_digit,
        rule: "must be 0-6 digits",
    },
    Ident {
        field: "payment_class",
        width: 16,
        min: 0,
        allowed: u8::is_ascii_alphanumeric,
        rule: "must be 0-16 ASCII letters or digits",
    },
];

/// Enough for the widest space-padded field (the 26-byte transaction key of a nack).
const SPACES: [u8; 32] = [b' '; 32];

fn invalid(field: &'static str, value: impl ToString, rule: impl Into<String>) -> EncodeError {
    EncodeError::Field {
        field,
        value: value.to_string(),
        rule: rule.into(),
    }
}

fn reason_code(reason: &NackReason) -> Result<&str, EncodeError> {
    if let NackReason::Other(code) = reason {
        if !is_reason_code(code) {
            return Err(invalid(
                "response_code",
                code,
                "must be T or P followed by three digits",
            ));
        }
        if NackReason::LISTED.iter().any(|r| r.code() == code) {
            return Err(invalid(
                "response_code",
                code,
                "is a listed reason: use its NackReason variant",
            ));
        }
    }
    Ok(reason.code())
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, width: usize) -> &'a [u8] {
        let s = &self.buf[self.pos..self.pos + width];
        self.pos += width;
        s
    }

    fn error_at(
        &self,
        field: &'static str,
        offset: usize,
        len: usize,
        rule: String,
    ) -> DecodeError {
        DecodeError::Field {
            field,
            offset,
            len,
            value: self.buf[offset..offset + len].escape_ascii().to_string(),
            rule,
        }
    }

    /// An error about the field just taken.
    fn error_back(&self, field: &'static str, len: usize, rule: String) -> DecodeError {
        self.error_at(field, self.pos - len, len, rule)
    }

    fn one_of<T>(
        &mut self,
        field: &'static str,
        width: usize,
        rule: &str,
        parse: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<T, DecodeError> {
        let bytes = self.take(width);
        parse(bytes).ok_or_else(|| self.error_back(field, width, rule.into()))
    }

    fn number(&mut self, field: &'static str, width: usize) -> Result<u64, DecodeError> {
        let bytes = self.take(width);
        if !bytes.iter().all(u8::is_ascii_digit) {
            return Err(self.error_back(field, width, format!("must be {width} digits")));
        }
        Ok(bytes.iter().fold(0, |n, b| n * 10 + u64::from(b - b'0')))
    }

    fn digits(
        &mut self,
        field: &'static str,
        width: usize,
        optional: bool,
    ) -> Result<String, DecodeError> {
        let bytes = self.take(width);
        if optional && bytes.iter().all(|&b| b == b' ') {
            return Ok(String::new());
        }
        if !bytes.iter().all(u8::is_ascii_digit) {
            let rule = if optional {
                format!("must be {width} digits or all spaces")
            } else {
                format!("must be {width} digits")
            };
            return Err(self.error_back(field, width, rule));
        }
        Ok(ascii(bytes))
    }

    fn ident(&mut self, id: Ident) -> Result<String, DecodeError> {
        let bytes = self.take(id.width);
        let value = trim_end(bytes);
        if !id.is_valid(value) {
            return Err(self.error_back(
                id.field,
                id.width,
                format!("{}, left-aligned and space-padded", id.rule),
            ));
        }
        Ok(ascii(value))
    }

    fn reserved(&mut self, field: &'static str, width: usize) -> Result<(), DecodeError> {
        if self.take(width).iter().all(|&b| b == b' ') {
            Ok(())
        } else {
            Err(self.error_back(field, width, "reserved: must be spaces".into()))
        }
    }

    fn datetime(&mut self, field: &'static str) -> Result<NaiveDateTime, DecodeError> {
        let bytes = self.take(14);
        let n = |i: usize, len: usize| -> Option<u32> {
            let part = &bytes[i..i + len];
            part.iter()
                .all(u8::is_ascii_digit)
                .then(|| part.iter().fold(0, |n, b| n * 10 + u32::from(b - b'0')))
        };
        let t = (|| {
            NaiveDate::from_ymd_opt(n(0, 4)? as i32, n(4, 2)?, n(6, 2)?)?.and_hms_opt(
                n(8, 2)?,
                n(10, 2)?,
                n(12, 2)?,
            )
        })();
        t.ok_or_else(|| {
            self.error_back(field, 14, "must be a valid date-time YYYYMMDDhhmmss".into())
        })
    }

    fn kana(&mut self, field: &'static str, width: usize) -> Result<String, DecodeError> {
        let start = self.pos;
        let bytes = self.take(width);
        kana::from_field(field, bytes)
            .map_err(|e| self.error_at(field, start, width, e.to_string()))
    }

    fn shift_jis(&mut self, field: &'static str, width: usize) -> Result<String, DecodeError> {
        let bytes = trim_end(self.take(width));
        let text = SHIFT_JIS
            .decode_without_bom_handling_and_without_replacement(bytes)
            .ok_or_else(|| self.error_back(field, width, "must be Shift_JIS text".into()))?;
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(self.error_back(
                field,
                width,
                format!("control character {c:?} is not allowed"),
            ));
        }
        // User-defined characters (外字, lead bytes 0xF0-0xF9) decode to the private
        // use area, which means nothing outside the sender's own system and which
        // Shift_JIS encoders refuse: accepting them would let a received value fail to
        // encode again.
        if let Some(c) = text.chars().find(|c| ('\u{E000}'..='\u{F8FF}').contains(c)) {
            return Err(self.error_back(
                field,
                width,
                format!(
                    "user-defined character U+{:04X} (外字) is not allowed",
                    u32::from(c)
                ),
            ));
        }
        Ok(text.into_owned())
    }

    fn notice(&mut self) -> Result<Notice, DecodeError> {
        let institution_code = self.digits("institution_code", 8, false)?;
        let transaction_key = self.digits("transaction_key", 26, false)?;
        let kind = self.one_of("kind", 1, "must be 1 (preliminary) or 2 (confirmed)", |b| {
            NoticeKind::from_code(b[0])
        })?;
        let customer_number = self.ident(IDENTS[0])?;
        let confirmation_number = self.ident(IDENTS[1])?;
        let payment_class = self.ident(IDENTS[2])?;
        let amount = self.number("amount", 11)?;
        if amount == 0 {
            return Err(self.error_back("amount", 11, "must not be zero".into()));
        }
        let bank_code = self.digits("bank_code", 4, true)?;
        let branch_code = self.digits("branch_code", 3, true)?;
        if bank_code.is_empty() != branch_code.is_empty() {
            return Err(self.error_back(
                "branch_code",
                3,
                "bank_code and branch_code are both set or both spaces".into(),
            ));
        }
        let channel = self.one_of("channel", 1, "must be 1, 2, 3 or 4", |b| {
            Channel::from_code(b[0])
        })?;
        let collection_method = self.one_of("collection_method", 1, "must be 1, 2 or 3", |b| {
            CollectionMethod::from_code(b[0])
        })?;
        let paid_at = self.datetime("paid_at")?;
        let fee_name = self.shift_jis("fee_name", 80)?;
        let payer_kana = self.kana("payer_kana", 48)?;
        Ok(Notice {
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
        })
    }
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
    &bytes[..end]
}

/// Bytes already checked to be ASCII.
fn ascii(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}
