//! Record decoders. The `content-type` record header chooses the encoding:
//!
//! | header value                                         | decoder  |
//! |------------------------------------------------------|----------|
//! | absent, `application/x-protobuf`, `application/protobuf` | protobuf `mpn.v1.PaymentEvent` |
//! | `application/json` (parameters such as `; charset=utf-8` ignored) | JSON object with the same field names |
//! | anything else                                        | rejected (`header content-type`) |
//!
//! JSON enums are written as their lower-case names (`"payment"`, `"counter"`,
//! `"online"`); the proto names (`"EVENT_KIND_PAYMENT"`) and numbers are accepted too.
//! Unknown JSON fields are rejected, so a typo never silently drops a value.

use mpn_proto::mpn::v1 as pb;
use prost::Message;

use super::{Event, InstitutionCode, Rejection};

/// The encoding of a record, chosen by its `content-type` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    Protobuf,
    Json,
}

impl ContentType {
    pub const HEADER: &'static str = "content-type";
    pub const JSON: &'static str = "application/json";
    pub const PROTOBUF: &'static str = "application/x-protobuf";

    /// Reads the header value (`None` when the record has no such header).
    pub fn from_header(value: Option<&[u8]>) -> Result<Self, Rejection> {
        let Some(raw) = value else {
            return Ok(Self::Protobuf);
        };
        let text = std::str::from_utf8(raw)
            .map_err(|_| Rejection::decode("header content-type", "is not UTF-8"))?;
        let media = text
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match media.as_str() {
            "application/json" => Ok(Self::Json),
            "application/x-protobuf" | "application/protobuf" | "" => Ok(Self::Protobuf),
            _ => Err(Rejection::decode(
                "header content-type",
                format!(
                    "unsupported value {text:?}: use application/json or application/x-protobuf"
                ),
            )),
        }
    }

    pub fn header_value(self) -> &'static str {
        match self {
            Self::Protobuf => Self::PROTOBUF,
            Self::Json => Self::JSON,
        }
    }
}

/// Decodes and validates one record.
pub fn decode_record(content_type: ContentType, payload: &[u8]) -> Result<Event, Rejection> {
    let wire = match content_type {
        ContentType::Protobuf => decode_protobuf(payload)?,
        ContentType::Json => decode_json(payload)?,
    };
    Event::validate(&wire)
}

pub fn decode_protobuf(payload: &[u8]) -> Result<pb::PaymentEvent, Rejection> {
    if payload.is_empty() {
        return Err(Rejection::decode("payload", "is empty"));
    }
    pb::PaymentEvent::decode(payload).map_err(|e| {
        Rejection::decode(
            "payload",
            format!("is not a valid protobuf mpn.v1.PaymentEvent: {e}"),
        )
    })
}

pub fn decode_json(payload: &[u8]) -> Result<pb::PaymentEvent, Rejection> {
    mpn_proto::json::decode(payload).map_err(|e| Rejection::decode(e.field, e.message))
}

/// Decodes and validates one record from its parts, or says why it cannot be used.
/// The record key, when present, must name the same institution as the event: the
/// key decides the partition, and so the order.
pub fn check_record(
    content_type: Option<&[u8]>,
    key: Option<&[u8]>,
    payload: &[u8],
) -> Result<Event, Rejection> {
    let ct = ContentType::from_header(content_type)?;
    let event = decode_record(ct, payload)?;
    if let Some(key) = key {
        let matches = std::str::from_utf8(key)
            .ok()
            .and_then(|k| InstitutionCode::parse(k).ok())
            .is_some_and(|k| k == event.institution);
        if !matches {
            return Err(Rejection::invalid(
                "key",
                format!(
                    "must equal institution_code {} (got {:?})",
                    event.institution,
                    String::from_utf8_lossy(key)
                ),
            ));
        }
    }
    Ok(event)
}
