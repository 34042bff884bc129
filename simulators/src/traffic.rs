//! A seeded generator of Pay-easy payment events.
//!
//! Assumptions (see docs/simulator.md): institution shares follow a Zipf-like law
//! (rank r gets weight 1/r); each institution has fixed customer- and confirmation-
//! number lengths; amounts are log-uniform between ¥100 and ¥2,000,000 with a thin
//! tail up to ¥50,000,000; most payments come from ATMs and internet banking. Of
//! the records: about 3% resend confirmations of an earlier payment, 2% counter
//! cancellations of an earlier counter payment, 4% convenience-store preliminary /
//! confirmed pairs, and `invalid_ratio` invalid records of varied kinds.

use std::collections::VecDeque;

use chrono::{DateTime, FixedOffset, NaiveDate, Utc};
use mpn_proto::mpn::v1 as pb;
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Generator settings.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    pub institutions: usize,
    pub seed: u64,
    /// Share of records that are deliberately invalid (0.0-1.0).
    pub invalid_ratio: f64,
    /// Share of valid records encoded as JSON instead of protobuf.
    pub json_ratio: f64,
    /// Processing date written into transaction keys.
    pub processing_date: NaiveDate,
    /// Serial numbers of transaction keys start after this one (and wrap after
    /// 99,999,999). Runs against the same engine need disjoint ranges: the engine
    /// drops a key it has already notified, as MPN requires.
    pub serial_start: u32,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            institutions: 36,
            seed: 1,
            invalid_ratio: 0.03,
            json_ratio: 0.3,
            processing_date: NaiveDate::from_ymd_opt(2026, 5, 31).unwrap_or_default(),
            serial_start: 0,
        }
    }
}

/// One Kafka record ready to publish.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub payload: Vec<u8>,
    /// `content-type` header value; `None` = protobuf without a header.
    pub content_type: Option<&'static str>,
    /// What the generator meant: `None` for a valid record, or the kind of fault.
    pub fault: Option<&'static str>,
    /// The event (before any deliberate corruption).
    pub event: pb::PaymentEvent,
}

/// A collecting institution as the generator sees it.
#[derive(Debug, Clone)]
pub struct Institution {
    /// Canonical 8-character code.
    pub code: String,
    /// Publish the 5-digit form (padding is the engine's job).
    pub five_digit_input: bool,
    pub customer_len: usize,
    pub confirmation_len: usize,
    pub government: bool,
    pub fee_name: &'static str,
    weight: f64,
}

const FEES: [(&str, bool); 8] = [
    ("自動車税", true),
    ("固定資産税", true),
    ("国民健康保険料", true),
    ("住民税", true),
    ("水道料金", false),
    ("電気料金", false),
    ("通信料金", false),
    ("保険料", false),
];
const FAMILY: [&str; 10] = [
    "ﾔﾏﾀﾞ",
    "ｻﾄｳ",
    "ｽｽﾞｷ",
    "ﾀｶﾊｼ",
    "ﾀﾅｶ",
    "ﾜﾀﾅﾍﾞ",
    "ｲﾄｳ",
    "ﾅｶﾑﾗ",
    "ｺﾊﾞﾔｼ",
    "ｶﾄｳ",
];
const GIVEN: [&str; 8] = ["ﾀﾛｳ", "ﾊﾅｺ", "ｼﾞﾛｳ", "ﾕｳｺ", "ｹﾝ", "ﾐﾎ", "ｼｮｳﾀ", "ｱﾔ"];
const BANKS: [&str; 6] = ["0001", "0005", "0009", "0010", "0017", "9900"];
const CENTRES: [&str; 3] = ["0000000101", "0000000202", "0000000303"];

/// The generator. The same config (seed included) always yields the same stream.
#[derive(Debug)]
pub struct Generator {
    config: TrafficConfig,
    rng: StdRng,
    institutions: Vec<Institution>,
    total_weight: f64,
    serial: u32,
    /// Recent valid payments, for resends and cancellations.
    recent: VecDeque<pb::PaymentEvent>,
}

impl Generator {
    pub fn new(config: TrafficConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let institutions: Vec<Institution> = (0..config.institutions.max(1))
            .map(|i| {
                let (fee_name, government) = FEES[i % FEES.len()];
                // Codes spread like real ones: 5 significant digits, "000" suffix.
                let five = 10_000 + (i as u32 * 7_919) % 89_999;
                Institution {
                    code: format!("{five:05}000"),
                    five_digit_input: i % 3 == 0,
                    customer_len: rng.random_range(8..=20),
                    confirmation_len: [0, 4, 6][i % 3],
                    government,
                    fee_name,
                    weight: 1.0 / (i as f64 + 1.0),
                }
            })
            .collect();
        let total_weight = institutions.iter().map(|i| i.weight).sum();
        let serial = config.serial_start % MAX_SERIAL;
        Self {
            config,
            rng,
            institutions,
            total_weight,
            serial,
            recent: VecDeque::new(),
        }
    }

    pub fn institutions(&self) -> &[Institution] {
        &self.institutions
    }

    /// The share of the traffic that goes to `institution` (0 to 1).
    pub fn share(&self, institution: &Institution) -> f64 {
        institution.weight / self.total_weight
    }

    fn pick_institution(&mut self) -> Institution {
        let mut x = self.rng.random::<f64>() * self.total_weight;
        for inst in &self.institutions {
            if x < inst.weight {
                return inst.clone();
            }
            x -= inst.weight;
        }
        self.institutions[self.institutions.len() - 1].clone()
    }

    fn next_key(&mut self) -> String {
        self.serial = self.serial % MAX_SERIAL + 1;
        let centre = CENTRES[self.rng.random_range(0..CENTRES.len())];
        format!(
            "{centre}{}{:08}",
            self.config.processing_date.format("%Y%m%d"),
            self.serial
        )
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.rng.random_range(0..10u8)))
            .collect()
    }

    fn amount(&mut self) -> u64 {
        if self.rng.random_bool(0.01) {
            return self.rng.random_range(2_000_000..=50_000_000);
        }
        let log = self.rng.random_range(2.0f64..6.3);
        10f64.powf(log).round() as u64
    }

    fn paid_at(now: DateTime<Utc>) -> String {
        let jst = FixedOffset::east_opt(9 * 3600).expect("+09:00 is a valid offset");
        now.with_timezone(&jst)
            .format("%Y-%m-%dT%H:%M:%S%:z")
            .to_string()
    }

    fn payment(
        &mut self,
        inst: &Institution,
        kind: pb::EventKind,
        now: DateTime<Utc>,
    ) -> pb::PaymentEvent {
        let channel = match self.rng.random_range(0..100) {
            0..=14 => pb::Channel::Counter,
            15..=54 => pb::Channel::Atm,
            55..=94 => pb::Channel::InternetBanking,
            _ => pb::Channel::TelephoneBanking,
        };
        let store = matches!(kind, pb::EventKind::Preliminary | pb::EventKind::Confirmed);
        let (bank, branch) = if store {
            (String::new(), String::new())
        } else {
            (
                BANKS[self.rng.random_range(0..BANKS.len())].to_owned(),
                self.digits(3),
            )
        };
        let payer = format!(
            "{} {}",
            FAMILY[self.rng.random_range(0..FAMILY.len())],
            GIVEN[self.rng.random_range(0..GIVEN.len())]
        );
        pb::PaymentEvent {
            transaction_key: self.next_key(),
            kind: kind as i32,
            institution_code: if inst.five_digit_input {
                inst.code[..5].to_owned()
            } else {
                inst.code.clone()
            },
            customer_number: self.digits(inst.customer_len),
            confirmation_number: self.digits(inst.confirmation_len),
            payment_class: if inst.government {
                format!("{:02}", self.rng.random_range(1..20))
            } else {
                String::new()
            },
            amount: self.amount(),
            bank_code: bank,
            branch_code: branch,
            channel: if store {
                pb::Channel::Counter as i32
            } else {
                channel as i32
            },
            collection_method: if store {
                pb::CollectionMethod::Batch as i32
            } else if self.rng.random_bool(0.8) {
                pb::CollectionMethod::Online as i32
            } else {
                pb::CollectionMethod::InfoLink as i32
            },
            paid_at: Self::paid_at(now),
            fee_name: inst.fee_name.to_owned(),
            payer_kana: payer,
            original_transaction_key: String::new(),
            counters: None,
            published_at_us: 0,
        }
    }

    fn remember(&mut self, e: &pb::PaymentEvent) {
        self.recent.push_back(e.clone());
        if self.recent.len() > 256 {
            self.recent.pop_front();
        }
    }

    /// The next valid event (and, for a preliminary notice, its confirmed twin later).
    fn valid_event(&mut self, now: DateTime<Utc>) -> pb::PaymentEvent {
        let roll = self.rng.random_range(0..100);
        if roll < 3 {
            // 再送確認: the bank asks again about a payment it already sent.
            let payments: Vec<usize> = (0..self.recent.len())
                .filter(|&i| self.recent[i].kind == pb::EventKind::Payment as i32)
                .collect();
            if !payments.is_empty() {
                let i = payments[self.rng.random_range(0..payments.len())];
                let mut e = self.recent[i].clone();
                e.kind = pb::EventKind::ResendConfirmation as i32;
                return e;
            }
        }
        if roll < 5 {
            let counter_payment = self.recent.iter().rposition(|e| {
                e.channel == pb::Channel::Counter as i32 && e.kind == pb::EventKind::Payment as i32
            });
            if let Some(orig) = counter_payment.and_then(|i| self.recent.remove(i)) {
                let mut e = orig.clone();
                e.kind = pb::EventKind::Cancellation as i32;
                e.transaction_key = self.next_key();
                e.original_transaction_key = orig.transaction_key.clone();
                return e;
            }
        }
        let inst = self.pick_institution();
        let kind = if roll < 9 {
            if self.rng.random_bool(0.5) {
                pb::EventKind::Preliminary
            } else {
                pb::EventKind::Confirmed
            }
        } else {
            pb::EventKind::Payment
        };
        let e = self.payment(&inst, kind, now);
        self.remember(&e);
        e
    }

    /// The next record, stamped with the wall clock (`paid_at`, `published_at_us`).
    pub fn next_record(&mut self) -> Record {
        self.next_record_at(Utc::now())
    }

    /// The next record, as if generated at `now`. The clock is the only input besides
    /// the config: with a fixed clock, the same config yields byte-identical records.
    pub fn next_record_at(&mut self, now: DateTime<Utc>) -> Record {
        let mut event = self.valid_event(now);
        event.published_at_us = now.timestamp_micros();
        let key = event.institution_code.clone();
        if self
            .rng
            .random_bool(self.config.invalid_ratio.clamp(0.0, 1.0))
        {
            return self.corrupt(event, key);
        }
        if self.rng.random_bool(self.config.json_ratio.clamp(0.0, 1.0)) {
            Record {
                key,
                payload: mpn_proto::json::encode(&event),
                content_type: Some("application/json"),
                fault: None,
                event,
            }
        } else {
            Record {
                key,
                payload: event.encode_to_vec(),
                content_type: None,
                fault: None,
                event,
            }
        }
    }

    /// Breaks a valid event in one of the ways real gateways do.
    fn corrupt(&mut self, event: pb::PaymentEvent, key: String) -> Record {
        let fault = FAULTS[self.rng.random_range(0..FAULTS.len())];
        let mut e = event.clone();
        let json = |e: &pb::PaymentEvent| mpn_proto::json::encode(e);
        let (payload, content_type) = match fault {
            "amount" => {
                e.amount = 0;
                (e.encode_to_vec(), None)
            }
            "kind" => {
                let mut v: serde_json::Value =
                    serde_json::from_slice(&json(&e)).unwrap_or_default();
                v["kind"] = "refund".into();
                (
                    serde_json::to_vec(&v).unwrap_or_default(),
                    Some("application/json"),
                )
            }
            "institution_code" => {
                e.institution_code = e.institution_code[..4].to_owned();
                (e.encode_to_vec(), None)
            }
            "truncated" => {
                let bytes = e.encode_to_vec();
                (bytes[..bytes.len().min(10)].to_vec(), None)
            }
            "not_json" => (
                b"{\"transaction_key\": \"0000000101".to_vec(),
                Some("application/json"),
            ),
            _ => {
                // A cancellation from an ATM (MPN response A301).
                e.kind = pb::EventKind::Cancellation as i32;
                e.channel = pb::Channel::Atm as i32;
                e.original_transaction_key = e.transaction_key.clone();
                e.transaction_key = self.next_key();
                (e.encode_to_vec(), None)
            }
        };
        Record {
            key,
            payload,
            content_type,
            fault: Some(fault),
            event,
        }
    }
}

/// The highest serial number of a transaction key (8 digits).
pub const MAX_SERIAL: u32 = 99_999_999;

/// The kinds of invalid record the generator makes.
pub const FAULTS: [&str; 6] = [
    "amount",
    "kind",
    "institution_code",
    "truncated",
    "not_json",
    "a301",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream() {
        let a: Vec<_> = {
            let mut g = Generator::new(TrafficConfig::default());
            (0..200)
                .map(|_| g.next_record().event.transaction_key)
                .collect()
        };
        let mut g = Generator::new(TrafficConfig::default());
        let b: Vec<_> = (0..200)
            .map(|_| g.next_record().event.transaction_key)
            .collect();
        assert_eq!(a, b);
    }

    #[test]
    fn same_seed_and_clock_same_bytes() {
        let now = DateTime::from_timestamp(1_780_000_000, 0).unwrap();
        let run = |seed| {
            let mut g = Generator::new(TrafficConfig {
                seed,
                invalid_ratio: 0.1,
                ..Default::default()
            });
            (0..500)
                .map(|_| {
                    let r = g.next_record_at(now);
                    (r.key, r.payload, r.content_type, r.fault)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn serials_start_where_told_and_wrap_at_eight_digits() {
        let serial = |r: &Record| r.event.transaction_key[18..].parse::<u32>().unwrap();
        let keys = |start| {
            let mut g = Generator::new(TrafficConfig {
                serial_start: start,
                invalid_ratio: 0.0,
                ..Default::default()
            });
            (0..3).map(|_| g.next_record()).collect::<Vec<_>>()
        };
        let first = keys(0);
        assert_eq!(serial(&first[0]), 1);
        let r = keys(5_000_000);
        assert!(
            r.iter()
                .all(|r| serial(r) > 5_000_000 && serial(r) <= 5_000_003)
        );
        let r = keys(MAX_SERIAL - 1);
        assert!(r.iter().all(|r| r.event.transaction_key.len() == 26));
        assert!(r.iter().any(|r| serial(r) < 3), "wrapped to 1");
    }

    #[test]
    fn shares_are_skewed_and_faults_near_their_ratio() {
        let mut g = Generator::new(TrafficConfig {
            institutions: 20,
            invalid_ratio: 0.1,
            ..Default::default()
        });
        let mut first = 0;
        let mut last = 0;
        let mut faults = 0;
        let n = 20_000;
        let top = g.institutions()[0].code.clone();
        let bottom = g.institutions()[19].code.clone();
        for _ in 0..n {
            let r = g.next_record();
            faults += usize::from(r.fault.is_some());
            let code = if r.event.institution_code.len() == 5 {
                format!("{}000", r.event.institution_code)
            } else {
                r.event.institution_code.clone()
            };
            first += usize::from(code == top);
            last += usize::from(code == bottom);
        }
        assert!(
            first > 5 * last,
            "rank 1 ({first}) should dwarf rank 20 ({last})"
        );
        let ratio = faults as f64 / n as f64;
        assert!((0.08..0.12).contains(&ratio), "fault ratio {ratio}");
    }
}
