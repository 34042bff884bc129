//! mpn-domain, the domain model: typed identifiers, validated payment events and the two record
//! decoders. Pure functions on bytes and values, no I/O, so every rule is unit- and
//! property-tested without a broker.
//!
//! - [`ids`]: `InstitutionCode`, `TransactionKey`, `NotificationId` and the other
//!   value types; each validates on construction and prints in one canonical form.
//! - [`event`]: [`Event`], a payment event that passed every field rule, and the
//!   conversion from and to the wire types.
//! - [`decode`]: protobuf or JSON, chosen by the record's `content-type` header, and
//!   [`check_record`], the whole check of one record's header, key and payload.

pub mod decode;
pub mod event;
pub mod ids;

pub use decode::{ContentType, check_record, decode_record};
pub use event::{Event, EventKind};
pub use ids::{InstitutionCode, NotificationId, TransactionKey, owner_partition};

use std::fmt;

/// Why a record was refused. Every rejection names the field it concerns (or the
/// record part, such as `payload` or `header content-type`) and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: field `{field}`: {message}")]
pub struct Rejection {
    pub kind: RejectionKind,
    pub field: String,
    pub message: String,
}

/// The families of rejection, written to the dead-letter header `mpn-error-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    /// The bytes could not be read as the announced encoding.
    Decode,
    /// The record was read but a field breaks a rule.
    Validation,
}

impl RejectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectionKind::Decode => "decode",
            RejectionKind::Validation => "validation",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejection {
    pub fn decode(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Decode,
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind: RejectionKind::Validation,
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests;

/// A rejection message fit for a log line: every quoted value in it (`"…"` or `'…'`,
/// how the messages show what they got) is masked, so customer numbers, names and
/// other field values never reach the logs; the rule and the field stay readable.
/// The dead-letter header keeps the whole message for the operator who fixes the
/// record.
pub fn loggable_rule(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => {
                out.push('…');
                out.push(c);
                open = None;
            }
            Some(_) => {}
            None if c == '"' || c == '\'' => {
                out.push(c);
                open = Some(c);
            }
            None => out.push(c),
        }
    }
    if open.is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod loggable_rule_tests {
    use super::loggable_rule;

    #[test]
    fn quoted_values_are_masked_and_the_rule_kept() {
        assert_eq!(
            loggable_rule(r#"must be up to 6 digits (got "SECRET9")"#),
            r#"must be up to 6 digits (got "…")"#
        );
        assert_eq!(
            loggable_rule("must be katakana (found 'ｱ') and 'x"),
            "must be katakana (found '…') and '…"
        );
        assert_eq!(loggable_rule("is required"), "is required");
    }
}
