//! The JSON form of `mpn.v1.PaymentEvent` (records whose `content-type` header is
//! `application/json`), in one place for both directions.
//!
//! Field names are the proto field names. Enums are written as their lower-case short
//! names (`"payment"`, `"counter"`, `"online"`); the full proto names
//! (`"EVENT_KIND_PAYMENT"`) and numbers are accepted too. Unknown fields are rejected,
//! so a typo never silently drops a value. Type errors name the field.

use serde_json::{Map, Value};

use crate::mpn::v1 as pb;

/// A JSON record that cannot be read: the field (or `payload`) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for JsonError {}

impl JsonError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

pub fn decode(payload: &[u8]) -> Result<pb::PaymentEvent, JsonError> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| JsonError::new("payload", format!("is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(JsonError::new("payload", "must be a JSON object"));
    };
    let mut e = pb::PaymentEvent::default();
    for (key, v) in &obj {
        let f = key.as_str();
        match f {
            "transaction_key" => e.transaction_key = string(f, v)?,
            "kind" => e.kind = enumeration(f, v, pb::EventKind::from_str_name, "EVENT_KIND_")?,
            "institution_code" => e.institution_code = string(f, v)?,
            "customer_number" => e.customer_number = string(f, v)?,
            "confirmation_number" => e.confirmation_number = string(f, v)?,
            "payment_class" => e.payment_class = string(f, v)?,
            "amount" => e.amount = unsigned(f, v)?,
            "bank_code" => e.bank_code = string(f, v)?,
            "branch_code" => e.branch_code = string(f, v)?,
            "channel" => e.channel = enumeration(f, v, pb::Channel::from_str_name, "CHANNEL_")?,
            "collection_method" => {
                e.collection_method = enumeration(
                    f,
                    v,
                    pb::CollectionMethod::from_str_name,
                    "COLLECTION_METHOD_",
                )?
            }
            "paid_at" => e.paid_at = string(f, v)?,
            "fee_name" => e.fee_name = string(f, v)?,
            "payer_kana" => e.payer_kana = string(f, v)?,
            "original_transaction_key" => e.original_transaction_key = string(f, v)?,
            "counters" => e.counters = counters(v)?,
            "published_at_us" => e.published_at_us = signed(f, v)?,
            other => {
                return Err(JsonError::new(other, "is not a field of PaymentEvent"));
            }
        }
    }
    Ok(e)
}

fn type_error(field: &str, expected: &str, v: &Value) -> JsonError {
    let got = match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    JsonError::new(field, format!("expected {expected}, got {got}: {v}"))
}

fn string(field: &str, v: &Value) -> Result<String, JsonError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        _ => Err(type_error(field, "a string", v)),
    }
}

fn unsigned(field: &str, v: &Value) -> Result<u64, JsonError> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| type_error(field, "a non-negative whole number", v)),
        Value::Null => Ok(0),
        _ => Err(type_error(field, "a non-negative whole number", v)),
    }
}

fn signed(field: &str, v: &Value) -> Result<i64, JsonError> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| type_error(field, "a whole number", v)),
        Value::Null => Ok(0),
        _ => Err(type_error(field, "a whole number", v)),
    }
}

/// A proto enum from its lower-case short name, its full proto name or its number.
fn enumeration<E: Into<i32>>(
    field: &str,
    v: &Value,
    from_name: fn(&str) -> Option<E>,
    prefix: &str,
) -> Result<i32, JsonError> {
    match v {
        Value::String(s) => {
            let upper = s.to_ascii_uppercase();
            from_name(&upper)
                .or_else(|| from_name(&format!("{prefix}{upper}")))
                .map(Into::into)
                .ok_or_else(|| JsonError::new(field, format!("unknown value {s:?}")))
        }
        Value::Number(n) => n
            .as_i64()
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| type_error(field, "a name or a small whole number", v)),
        Value::Null => Ok(0),
        _ => Err(type_error(field, "a name such as \"payment\"", v)),
    }
}

fn counters(v: &Value) -> Result<Option<pb::DailyCounters>, JsonError> {
    let obj: &Map<String, Value> = match v {
        Value::Null => return Ok(None),
        Value::Object(o) => o,
        _ => return Err(type_error("counters", "an object", v)),
    };
    let mut c = pb::DailyCounters::default();
    for (key, v) in obj {
        let f = format!("counters.{key}");
        match key.as_str() {
            "counter_date" => c.counter_date = string(&f, v)?,
            "inquiry_count" => c.inquiry_count = unsigned(&f, v)?,
            "clearing_count" => c.clearing_count = unsigned(&f, v)?,
            "clearing_amount" => c.clearing_amount = unsigned(&f, v)?,
            "cancel_count" => c.cancel_count = unsigned(&f, v)?,
            "cancel_amount" => c.cancel_amount = unsigned(&f, v)?,
            _ => return Err(JsonError::new(f, "is not a field of DailyCounters")),
        }
    }
    Ok(Some(c))
}

/// Encodes a wire event as JSON in the documented form (used by the simulator, the
/// demo and tests to publish JSON records).
pub fn encode(e: &pb::PaymentEvent) -> Vec<u8> {
    fn short(name: &str, prefix: &str) -> String {
        name.strip_prefix(prefix)
            .unwrap_or(name)
            .to_ascii_lowercase()
    }
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_owned(), v);
    };
    put("transaction_key", e.transaction_key.clone().into());
    let kind = pb::EventKind::try_from(e.kind).map(|k| short(k.as_str_name(), "EVENT_KIND_"));
    put(
        "kind",
        kind.map(Value::from).unwrap_or_else(|_| e.kind.into()),
    );
    put("institution_code", e.institution_code.clone().into());
    for (k, v) in [
        ("customer_number", &e.customer_number),
        ("confirmation_number", &e.confirmation_number),
        ("payment_class", &e.payment_class),
        ("bank_code", &e.bank_code),
        ("branch_code", &e.branch_code),
        ("paid_at", &e.paid_at),
        ("fee_name", &e.fee_name),
        ("payer_kana", &e.payer_kana),
        ("original_transaction_key", &e.original_transaction_key),
    ] {
        if !v.is_empty() {
            put(k, v.clone().into());
        }
    }
    if e.amount != 0 {
        put("amount", e.amount.into());
    }
    if e.channel != 0 {
        let c = pb::Channel::try_from(e.channel).map(|c| short(c.as_str_name(), "CHANNEL_"));
        put(
            "channel",
            c.map(Value::from).unwrap_or_else(|_| e.channel.into()),
        );
    }
    if e.collection_method != 0 {
        let c = pb::CollectionMethod::try_from(e.collection_method)
            .map(|c| short(c.as_str_name(), "COLLECTION_METHOD_"));
        put(
            "collection_method",
            c.map(Value::from)
                .unwrap_or_else(|_| e.collection_method.into()),
        );
    }
    if let Some(c) = &e.counters {
        put(
            "counters",
            serde_json::json!({
                "counter_date": c.counter_date,
                "inquiry_count": c.inquiry_count,
                "clearing_count": c.clearing_count,
                "clearing_amount": c.clearing_amount,
                "cancel_count": c.cancel_count,
                "cancel_amount": c.cancel_amount,
            }),
        );
    }
    if e.published_at_us != 0 {
        put("published_at_us", e.published_at_us.into());
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}
