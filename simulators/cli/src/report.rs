//! The report of a load run: `report.json` (schema [`SCHEMA`], documented field by
//! field in docs/simulator.md), the summary printed at the end, and where the files go.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::stats::{Latency, Second};

/// The `schema` value of this report layout. A new field keeps the version; renaming
/// or removing one, or changing its meaning, bumps it.
pub const SCHEMA: &str = "mpn-sim.report/v1";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub schema: String,
    /// `run` or `demo-load`.
    pub command: String,
    /// When publishing started (RFC 3339, UTC).
    pub started_at: String,
    pub settings: ReportSettings,
    /// From the start of publishing to the end of the drain.
    pub elapsed_secs: f64,
    pub published: Published,
    pub delivered: Delivered,
    /// End-to-end latency of first deliveries: receipt − `published_at_us`.
    pub latency_us: Latency,
    pub checks: Checks,
    pub dead_letters: DeadLetters,
    pub subscribers: Vec<SubscriberReport>,
    pub timeline: Vec<Second>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportSettings {
    pub bootstrap: String,
    pub topic: String,
    pub against: String,
    pub institutions: usize,
    pub seed: u64,
    pub serial_start: u32,
    pub invalid_ratio: f64,
    pub rate: f64,
    pub duration_secs: f64,
    pub profile: String,
    pub subscribers: usize,
    pub ack_delay_ms: u64,
    pub stall_one_ms: u64,
    pub reconnect_every_secs: u64,
    pub drain_timeout_secs: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Published {
    /// Records the broker acknowledged.
    pub records: u64,
    /// Of them, records the engine's validation accepts.
    pub valid: u64,
    /// Of them, records it rejects (they belong in the dead-letter topic).
    pub invalid: u64,
    /// Records the broker refused.
    pub errors: u64,
    /// Distinct notification ids the valid records should produce.
    pub expected_notifications: u64,
    /// From the first record queued to the last one acknowledged.
    pub window_secs: f64,
    /// `records / window_secs`.
    pub per_sec: f64,
    /// Highest records in one second of the timeline.
    pub peak_per_sec: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    /// Notifications received by all subscribers, duplicates included.
    pub notifications: u64,
    /// Distinct notification ids received, summed over subscribers.
    pub distinct: u64,
    /// From the start of publishing to the last notification received.
    pub window_secs: f64,
    /// `notifications / window_secs`.
    pub per_sec: f64,
    /// Highest notifications in one second of the timeline.
    pub peak_per_sec: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checks {
    /// Notifications received again by the same subscriber (allowed: at-least-once).
    pub duplicates: u64,
    /// Expected notifications a subscriber never received, summed over subscribers.
    pub gaps: u64,
    /// First deliveries below an input offset already delivered for the same
    /// partition and institution, summed over subscribers.
    pub order_violations: u64,
    /// No gaps and no order violations.
    pub passed: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeadLetters {
    pub topic: String,
    /// Invalid records published (what the topic should receive).
    pub expected: u64,
    /// Dead letters read back whose source is a record of this run.
    pub found: u64,
    /// `found` by the `mpn-error-field` header.
    pub by_field: BTreeMap<String, u64>,
    /// Why the topic could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SubscriberReport {
    /// The durable subscriber id.
    pub id: String,
    pub login: String,
    /// Institutions its credential grants (it subscribed to all of them).
    pub institutions: usize,
    pub notifications: u64,
    pub distinct: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub order_violations: u64,
    /// Disconnects it made on purpose (`--reconnect-every-secs`).
    pub reconnects: u64,
    /// Streams that ended with an error (it reconnected after each).
    pub stream_errors: u64,
    pub last_error: Option<String>,
    /// Whether it was the one that stalled (`--stall-one-ms`).
    pub stalled: bool,
    /// Up to 20 missing notification ids.
    pub gap_examples: Vec<String>,
    /// Up to 20 order violations, as "id: partition p offset o after a".
    pub order_violation_examples: Vec<String>,
}

/// Where a run's files are written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub json: PathBuf,
    pub svg: PathBuf,
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1_000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.settings;
        writeln!(
            f,
            "mpn-sim {}: {} s at {} events/s ({}), {} institutions, {} subscribers, seed {}, serial start {}",
            self.command,
            s.duration_secs,
            s.rate,
            s.profile,
            s.institutions,
            s.subscribers,
            s.seed,
            s.serial_start
        )?;
        let p = &self.published;
        writeln!(
            f,
            "published     {} records ({} valid, {} invalid, {} refused) in {:.1} s = {:.1}/s (peak {}/s)",
            p.records, p.valid, p.invalid, p.errors, p.window_secs, p.per_sec, p.peak_per_sec
        )?;
        let d = &self.delivered;
        writeln!(
            f,
            "delivered     {} notifications ({} distinct) in {:.1} s = {:.1}/s (peak {}/s)",
            d.notifications, d.distinct, d.window_secs, d.per_sec, d.peak_per_sec
        )?;
        let l = &self.latency_us;
        if l.count == 0 {
            writeln!(f, "latency       none measured")?;
        } else {
            writeln!(
                f,
                "latency       p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} first deliveries)",
                ms(l.p50),
                ms(l.p90),
                ms(l.p99),
                ms(l.p999),
                ms(l.max),
                l.count
            )?;
        }
        let c = &self.checks;
        writeln!(
            f,
            "checks        duplicates {}, gaps {}, order violations {} → {}",
            c.duplicates,
            c.gaps,
            c.order_violations,
            if c.passed { "passed" } else { "FAILED" }
        )?;
        let q = &self.dead_letters;
        let fields = q
            .by_field
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ");
        write!(
            f,
            "dead letters  {} of {} expected in {}",
            q.found, q.expected, q.topic
        )?;
        if !fields.is_empty() {
            write!(f, " ({fields})")?;
        }
        if let Some(e) = &q.error {
            write!(f, " — not read: {e}")?;
        }
        for sub in self
            .subscribers
            .iter()
            .filter(|s| s.gaps > 0 || s.order_violations > 0)
        {
            write!(
                f,
                "\n  subscriber {}: {} gaps (e.g. {}), {} order violations {}",
                sub.id,
                sub.gaps,
                sub.gap_examples.first().map_or("-", String::as_str),
                sub.order_violations,
                sub.order_violation_examples
                    .first()
                    .map_or("", String::as_str),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Report {
        Report {
            schema: SCHEMA.into(),
            command: "demo-load".into(),
            started_at: "2026-05-31T05:15:00Z".into(),
            settings: ReportSettings {
                bootstrap: "127.0.0.1:9092".into(),
                topic: "mpn.payment-events".into(),
                against: "127.0.0.1:50051".into(),
                institutions: 36,
                seed: 1,
                serial_start: 4_200_000,
                invalid_ratio: 0.03,
                rate: 100.0,
                duration_secs: 3.0,
                profile: "constant".into(),
                subscribers: 2,
                ack_delay_ms: 0,
                stall_one_ms: 0,
                reconnect_every_secs: 0,
                drain_timeout_secs: 30,
            },
            elapsed_secs: 3.4,
            published: Published {
                records: 300,
                valid: 291,
                invalid: 9,
                errors: 0,
                expected_notifications: 285,
                window_secs: 3.0,
                per_sec: 100.0,
                peak_per_sec: 101,
            },
            delivered: Delivered {
                notifications: 570,
                distinct: 570,
                window_secs: 3.01,
                per_sec: 189.4,
                peak_per_sec: 202,
            },
            latency_us: Latency {
                count: 570,
                p50: 1_900,
                p90: 2_500,
                p99: 4_000,
                p999: 6_000,
                max: 6_100,
                mean: 2_000.5,
            },
            checks: Checks {
                duplicates: 0,
                gaps: 0,
                order_violations: 0,
                passed: true,
            },
            dead_letters: DeadLetters {
                topic: "mpn.payment-events.dlq".into(),
                expected: 9,
                found: 9,
                by_field: BTreeMap::from([("amount".into(), 4), ("kind".into(), 5)]),
                error: None,
            },
            subscribers: vec![SubscriberReport {
                id: "mpn-sim-1-0".into(),
                login: "sim-billing-0".into(),
                institutions: 36,
                notifications: 285,
                distinct: 285,
                last_error: Some("stream ended".into()),
                stalled: true,
                gap_examples: vec!["k:payment".into()],
                order_violation_examples: vec!["x".into()],
                ..SubscriberReport::default()
            }],
            timeline: (0..3)
                .map(|s| Second {
                    second: s,
                    published: 100,
                    delivered: 190,
                    first_deliveries: 190,
                    latency_p50_us: Some(1_800 + s * 100),
                    latency_p99_us: if s == 1 { None } else { Some(4_000) },
                })
                .collect(),
        }
    }

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort_unstable();
        k
    }

    /// Every field is written, `null`s included (a reader can rely on the layout),
    /// and the JSON reads back to the same report.
    #[test]
    fn report_json_has_every_field() {
        let r = sample();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            keys(&v),
            [
                "checks",
                "command",
                "dead_letters",
                "delivered",
                "elapsed_secs",
                "latency_us",
                "published",
                "schema",
                "settings",
                "started_at",
                "subscribers",
                "timeline"
            ]
        );
        assert_eq!(v["schema"], "mpn-sim.report/v1");
        assert_eq!(
            keys(&v["settings"]),
            [
                "ack_delay_ms",
                "against",
                "bootstrap",
                "drain_timeout_secs",
                "duration_secs",
                "institutions",
                "invalid_ratio",
                "profile",
                "rate",
                "reconnect_every_secs",
                "seed",
                "serial_start",
                "stall_one_ms",
                "subscribers",
                "topic"
            ]
        );
        assert_eq!(
            keys(&v["published"]),
            [
                "errors",
                "expected_notifications",
                "invalid",
                "peak_per_sec",
                "per_sec",
                "records",
                "valid",
                "window_secs"
            ]
        );
        assert_eq!(
            keys(&v["delivered"]),
            [
                "distinct",
                "notifications",
                "peak_per_sec",
                "per_sec",
                "window_secs"
            ]
        );
        assert_eq!(
            keys(&v["latency_us"]),
            ["count", "max", "mean", "p50", "p90", "p99", "p999"]
        );
        assert_eq!(
            keys(&v["checks"]),
            ["duplicates", "gaps", "order_violations", "passed"]
        );
        assert_eq!(
            keys(&v["dead_letters"]),
            ["by_field", "error", "expected", "found", "topic"]
        );
        assert!(v["dead_letters"]["error"].is_null());
        assert_eq!(
            keys(&v["subscribers"][0]),
            [
                "distinct",
                "duplicates",
                "gap_examples",
                "gaps",
                "id",
                "institutions",
                "last_error",
                "login",
                "notifications",
                "order_violation_examples",
                "order_violations",
                "reconnects",
                "stalled",
                "stream_errors"
            ]
        );
        assert_eq!(
            keys(&v["timeline"][1]),
            [
                "delivered",
                "first_deliveries",
                "latency_p50_us",
                "latency_p99_us",
                "published",
                "second"
            ]
        );
        assert!(v["timeline"][1]["latency_p99_us"].is_null());
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn summary_names_every_measure() {
        let text = sample().to_string();
        for needle in [
            "published     300 records",
            "= 100.0/s",
            "delivered     570 notifications",
            "p50 1.9 ms",
            "p99.9 6.0 ms",
            "max 6.1 ms",
            "duplicates 0, gaps 0, order violations 0 → passed",
            "dead letters  9 of 9 expected in mpn.payment-events.dlq (amount=4, kind=5)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }

    #[test]
    fn write_creates_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("nested/out");
        let w = sample().write(&out).unwrap();
        let json: Report =
            serde_json::from_str(&std::fs::read_to_string(&w.json).unwrap()).unwrap();
        assert_eq!(json, sample());
        assert!(std::fs::read_to_string(&w.svg).unwrap().contains("<svg"));
    }
}
