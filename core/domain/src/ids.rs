//! Typed identifiers and values. Each is built only through a constructor that checks
//! its rule, so a value of one of these types is valid by construction.

use std::fmt;

use chrono::NaiveDate;

/// 収納機関番号, canonical 8-character form. Payers see 5 digits; inside MPN the code is
/// 8. The mapping is not public, so 5-digit input is padded with `000` (documented in
/// docs/input-events.md).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstitutionCode([u8; 8]);

impl InstitutionCode {
    pub const RULE: &'static str = "must be 8 digits, or 5 digits (padded with 000)";

    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        if !b.iter().all(u8::is_ascii_digit) {
            return Err(format!("{} (got {s:?})", Self::RULE));
        }
        let mut code = [b'0'; 8];
        match b.len() {
            8 => code.copy_from_slice(b),
            5 => code[..5].copy_from_slice(b),
            _ => return Err(format!("{} (got {} characters)", Self::RULE, b.len())),
        }
        Ok(Self(code))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for InstitutionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for InstitutionCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InstitutionCode({})", self.as_str())
    }
}

/// The MPN transaction key: originating centre code (10 digits) + originating
/// processing date YYYYMMDD (8) + originating serial number (8 digits). The natural
/// idempotency key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionKey([u8; 26]);

impl TransactionKey {
    pub const RULE: &'static str =
        "must be 26 digits: centre code (10) + processing date YYYYMMDD (8) + serial (8)";

    pub fn parse(s: &str) -> Result<Self, String> {
        let b = s.as_bytes();
        if b.len() != 26 || !b.iter().all(u8::is_ascii_digit) {
            return Err(format!("{} (got {s:?})", Self::RULE));
        }
        let date = &s[10..18];
        if NaiveDate::parse_from_str(date, "%Y%m%d").is_err() {
            return Err(format!(
                "processing date {date:?} (characters 11-18) is not a calendar date"
            ));
        }
        let mut key = [0; 26];
        key.copy_from_slice(b);
        Ok(Self(key))
    }

    pub fn from_parts(centre: &str, date: NaiveDate, serial: u32) -> Result<Self, String> {
        Self::parse(&format!(
            "{centre:0>10}{}{serial:08}",
            date.format("%Y%m%d")
        ))
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn centre_code(&self) -> &str {
        &self.as_str()[..10]
    }

    pub fn processing_date(&self) -> &str {
        &self.as_str()[10..18]
    }

    pub fn serial(&self) -> &str {
        &self.as_str()[18..]
    }
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionKey({})", self.as_str())
    }
}

/// A notification's stable id: `<transaction key>:<kind>`, e.g.
/// `12345678902026053100000042:payment`. The same event always yields the same id,
/// on every redelivery and on every replica, so receivers can deduplicate.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotificationId(String);

impl NotificationId {
    /// `<key>:<kind>`; `NotificationId::derive` (with the event kinds) is the way in.
    pub(crate) fn from_parts(key: &TransactionKey, kind: &str) -> Self {
        Self(format!("{key}:{kind}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotificationId({})", self.0)
    }
}

/// お客様番号: 1 to 20 ASCII letters or digits (the length is set per institution).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CustomerNumber(String);

impl CustomerNumber {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_alphanumeric()) {
            return Err(format!("must be 1-20 ASCII letters or digits (got {s:?})"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 収納金額 in whole yen: 1 to 99,999,999,999 (11 digits); never zero or negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(u64);

impl Amount {
    pub const MAX: u64 = 99_999_999_999;

    pub fn new(yen: u64) -> Result<Self, String> {
        if yen == 0 || yen > Self::MAX {
            return Err(format!("must be 1 to {} yen (got {yen})", Self::MAX));
        }
        Ok(Self(yen))
    }

    pub fn yen(self) -> u64 {
        self.0
    }
}

/// Checks that `s` is exactly `len` ASCII digits.
pub(crate) fn digits(s: &str, len: usize) -> Result<(), String> {
    if s.len() == len && s.bytes().all(|c| c.is_ascii_digit()) {
        Ok(())
    } else {
        Err(format!("must be {len} digits (got {s:?})"))
    }
}

/// The input-topic partition whose owner runs `code`'s internal subscribers (its
/// CAFIS link, its history writer): FNV-1a of the code. Independent of where the
/// institution's events are: they are served from any partition, live where this
/// replica consumes, from Kafka elsewhere.
pub fn owner_partition(code: &InstitutionCode, partitions: usize) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in code.as_str().bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % partitions.max(1) as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_partition_is_stable_and_in_range() {
        let code = InstitutionCode::parse("12345").unwrap();
        let p = owner_partition(&code, 8);
        assert!((0..8).contains(&p));
        assert_eq!(p, owner_partition(&code, 8));
        assert_eq!(owner_partition(&code, 1), 0);
    }

    #[test]
    fn institution_code_pads_five_digits() {
        assert_eq!(
            InstitutionCode::parse("00200").unwrap().as_str(),
            "00200000"
        );
        assert_eq!(
            InstitutionCode::parse("12345678").unwrap().as_str(),
            "12345678"
        );
    }

    #[test]
    fn institution_code_rejects_other_lengths_and_letters() {
        for bad in [
            "",
            "0020",
            "002000",
            "1234567",
            "123456789",
            "0020A",
            "１２３４５",
        ] {
            let err = InstitutionCode::parse(bad).unwrap_err();
            assert!(err.contains("must be 8 digits"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn transaction_key_checks_length_digits_and_date() {
        let k = TransactionKey::parse("12345678902026053100000042").unwrap();
        assert_eq!(k.centre_code(), "1234567890");
        assert_eq!(k.processing_date(), "20260531");
        assert_eq!(k.serial(), "00000042");
        assert!(TransactionKey::parse("1234567890202605310000004").is_err());
        assert!(TransactionKey::parse("123456789020260531000000x2").is_err());
        let err = TransactionKey::parse("12345678902026023000000042").unwrap_err();
        assert!(err.contains("not a calendar date"), "{err}");
    }

    #[test]
    fn notification_id_is_key_and_kind() {
        let k = TransactionKey::parse("12345678902026053100000042").unwrap();
        let id = NotificationId::derive(&k, crate::EventKind::Payment);
        assert_eq!(id.as_str(), "12345678902026053100000042:payment");
        assert_eq!(id, NotificationId::derive(&k, crate::EventKind::Payment));
        assert_ne!(
            id,
            NotificationId::derive(&k, crate::EventKind::Cancellation)
        );
    }

    #[test]
    fn amount_bounds() {
        assert!(Amount::new(0).is_err());
        assert_eq!(Amount::new(1).unwrap().yen(), 1);
        assert_eq!(Amount::new(Amount::MAX).unwrap().yen(), Amount::MAX);
        assert!(Amount::new(Amount::MAX + 1).is_err());
    }

    #[test]
    fn customer_number_rules() {
        assert!(CustomerNumber::parse("A1234567890123456789").is_ok());
        assert!(CustomerNumber::parse("").is_err());
        assert!(CustomerNumber::parse("A12345678901234567890").is_err());
        assert!(CustomerNumber::parse("12-34").is_err());
    }
}
