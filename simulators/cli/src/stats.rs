//! Throughput and latency as a run measures them: one HDR histogram of end-to-end
//! latency over the whole run, and per second of the run the records the broker
//! accepted, the notifications received and the latency p50 / p99 of that second.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies above this (one hour, in µs) are recorded as this.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Percentiles of end-to-end latency, in microseconds (all 0 when `count` is 0).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// First deliveries measured.
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    /// Seconds since publishing started (this entry covers [second, second + 1)).
    pub second: u64,
    /// Records the broker acknowledged in this second.
    pub published: u64,
    /// Notifications received by all subscribers, duplicates included.
    pub delivered: u64,
    /// First deliveries (per subscriber) among them: the ones with a latency.
    pub first_deliveries: u64,
    /// Latency of this second's first deliveries; `null` when there were none.
    pub latency_p50_us: Option<u64>,
    pub latency_p99_us: Option<u64>,
}

#[derive(Debug)]
struct Open {
    published: u64,
    delivered: u64,
    hist: Histogram<u32>,
}

#[derive(Debug)]
struct Inner {
    latency: Histogram<u64>,
    /// Seconds still receiving samples; closed into `done` once two seconds old.
    open: BTreeMap<u64, Open>,
    done: BTreeMap<u64, Second>,
    last_delivery: Option<Instant>,
}

/// Shared by the publisher and every subscriber of a run.
#[derive(Debug)]
pub struct Stats {
    start: Instant,
    inner: Mutex<Inner>,
    /// Counters for the progress display (read without the lock).
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub first_deliveries: AtomicU64,
}

fn latency_histogram<T: hdrhistogram::Counter>(sigfigs: u8) -> Histogram<T> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, sigfigs).expect("valid histogram bounds")
}

impl Stats {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            inner: Mutex::new(Inner {
                latency: latency_histogram(3),
                open: BTreeMap::new(),
                done: BTreeMap::new(),
                last_delivery: None,
            }),
            published: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            first_deliveries: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    fn second(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_secs()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker acknowledged a record at `at`.
    pub fn published(&self, at: Instant) {
        self.published.fetch_add(1, Ordering::Relaxed);
        let s = self.second(at);
        let mut inner = self.lock();
        match inner.done.get_mut(&s) {
            Some(late) => late.published += 1,
            None => inner.open_second(s).published += 1,
        }
    }

    /// A subscriber received a notification at `at`; `latency_us` is set for a first
    /// delivery whose event carried a publish time.
    pub fn delivered(&self, at: Instant, latency_us: Option<i64>) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let s = self.second(at);
        // A negative latency means the publisher's and the subscriber's clocks
        // disagree (another machine); it is recorded as 0.
        let latency_us = latency_us.map(|l| l.clamp(0, MAX_LATENCY_US as i64) as u64);
        let mut inner = self.lock();
        inner.last_delivery = Some(inner.last_delivery.map_or(at, |l| l.max(at)));
        if let Some(l) = latency_us {
            self.first_deliveries.fetch_add(1, Ordering::Relaxed);
            inner.latency.saturating_record(l);
        }
        if let Some(late) = inner.done.get_mut(&s) {
            // A sample for a second already closed (its holder waited over a second
            // for the lock): it counts, but that second's percentiles stay as they were.
            late.delivered += 1;
            late.first_deliveries += u64::from(latency_us.is_some());
        } else {
            let open = inner.open_second(s);
            open.delivered += 1;
            if let Some(l) = latency_us {
                open.hist.saturating_record(l);
            }
        }
        inner.close_before(s.saturating_sub(1));
    }

    /// The latency over the run so far.
    pub fn latency(&self) -> Latency {
        Latency::of(&self.lock().latency)
    }

    /// When the last notification arrived.
    pub fn last_delivery(&self) -> Option<Instant> {
        self.lock().last_delivery
    }

    /// Every second from 0 to the last one with data (empty seconds included).
    pub fn timeline(&self) -> Vec<Second> {
        let mut inner = self.lock();
        inner.close_before(u64::MAX);
        let last = inner.done.keys().next_back().copied();
        let Some(last) = last else {
            return Vec::new();
        };
        (0..=last)
            .map(|s| {
                inner.done.get(&s).cloned().unwrap_or(Second {
                    second: s,
                    ..Second::default()
                })
            })
            .collect()
    }
}

impl Inner {
    fn open_second(&mut self, s: u64) -> &mut Open {
        self.open.entry(s).or_insert_with(|| Open {
            published: 0,
            delivered: 0,
            hist: latency_histogram(2),
        })
    }

    /// Closes every open second before `s`.
    fn close_before(&mut self, s: u64) {
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() >= s {
                break;
            }
            let (second, open) = entry.remove_entry();
            let has = !open.hist.is_empty();
            self.done.insert(
                second,
                Second {
                    second,
                    published: open.published,
                    delivered: open.delivered,
                    first_deliveries: open.hist.len(),
                    latency_p50_us: has.then(|| open.hist.value_at_quantile(0.5)),
                    latency_p99_us: has.then(|| open.hist.value_at_quantile(0.99)),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn percentiles_and_timeline() {
        let t0 = Instant::now();
        let stats = Stats::new(t0);
        for i in 1..=1_000 {
            stats.published(t0 + Duration::from_millis(i));
        }
        // Second 0: 100 deliveries at 1..=100 ms; second 2: one at 5 ms and a duplicate.
        for ms in 1..=100 {
            stats.delivered(t0 + Duration::from_millis(500), Some(ms * 1_000));
        }
        stats.delivered(t0 + Duration::from_millis(2_100), Some(5_000));
        stats.delivered(t0 + Duration::from_millis(2_200), None);
        let l = stats.latency();
        assert_eq!(l.count, 101);
        assert!((49_000..=51_000).contains(&l.p50), "{l:?}");
        assert!((98_000..=100_100).contains(&l.p99), "{l:?}");
        assert!((99_000..=100_100).contains(&l.max), "{l:?}");
        let t = stats.timeline();
        assert_eq!(t.len(), 3);
        assert_eq!(t[0].published, 999);
        assert_eq!(t[1].published, 1);
        assert_eq!(t[0].delivered, 100);
        assert_eq!(t[0].first_deliveries, 100);
        assert_eq!(
            t[1],
            Second {
                second: 1,
                published: 1,
                ..Second::default()
            }
        );
        assert_eq!(t[2].delivered, 2);
        assert_eq!(t[2].first_deliveries, 1);
        assert!(
            t[2].latency_p50_us
                .is_some_and(|v| (4_900..=5_100).contains(&v))
        );
        assert_eq!(stats.published.load(Ordering::Relaxed), 1_000);
        assert_eq!(stats.delivered.load(Ordering::Relaxed), 102);
        assert_eq!(stats.first_deliveries.load(Ordering::Relaxed), 101);
    }

    #[test]
    fn negative_latency_counts_as_zero_and_empty_run_is_empty() {
        let t0 = Instant::now();
        let stats = Stats::new(t0);
        assert!(stats.timeline().is_empty());
        assert_eq!(stats.latency(), Latency::default());
        stats.delivered(t0, Some(-5));
        assert_eq!(stats.latency().max, 0);
    }
}
