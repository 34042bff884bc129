//! Progress bars while a run goes: records published (against the profile's expected
//! total) and notifications delivered, each with its rate over the last second, and
//! the latency so far. Drawn on
//! standard error, and only when it is a terminal.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use crate::stats::Stats;

/// Per-second rates over the last second, from (time, published, delivered) samples.
#[derive(Debug, Default)]
struct Rates(VecDeque<(Instant, u64, u64)>);

impl Rates {
    fn push(&mut self, at: Instant, published: u64, delivered: u64) -> (String, String) {
        self.0.push_back((at, published, delivered));
        while self
            .0
            .front()
            .is_some_and(|f| at.duration_since(f.0) > Duration::from_secs(1))
        {
            self.0.pop_front();
        }
        let (t0, p0, d0) = self
            .0
            .front()
            .copied()
            .unwrap_or((at, published, delivered));
        let secs = at.duration_since(t0).as_secs_f64();
        let rate = |now: u64, then: u64| {
            if secs > 0.0 {
                format!("{:.0}/s", (now - then) as f64 / secs)
            } else {
                "-/s".to_owned()
            }
        };
        (rate(published, p0), rate(delivered, d0))
    }
}

#[derive(Debug)]
pub struct Progress {
    published: ProgressBar,
    delivered: ProgressBar,
    ticker: Option<JoinHandle<()>>,
}

impl Progress {
    /// Starts the bars (hidden when `show` is false or standard error is no terminal).
    pub fn start(show: bool, expected: u64, stats: Arc<Stats>) -> Self {
        let target = if show && std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let published = multi.add(ProgressBar::new(expected.max(1)));
        published.set_style(
            ProgressStyle::with_template(
                "published {bar:30} {pos:>8}/{len:<8} {prefix:>8}  {elapsed_precise} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let delivered = multi.add(ProgressBar::new_spinner());
        delivered.set_style(
            ProgressStyle::with_template(
                "delivered {spinner} {pos:>8} notifications {prefix:>8}  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        let ticker = {
            let (published, delivered) = (published.clone(), delivered.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let mut rates = Rates::default();
                loop {
                    tick.tick().await;
                    let p = stats.published.load(Ordering::Relaxed);
                    let d = stats.delivered.load(Ordering::Relaxed);
                    let (p_rate, d_rate) = rates.push(Instant::now(), p, d);
                    published.set_prefix(p_rate);
                    delivered.set_prefix(d_rate);
                    if p > published.length().unwrap_or(0) {
                        published.set_length(p);
                    }
                    published.set_position(p);
                    delivered.set_position(d);
                    let l = stats.latency();
                    if l.count > 0 {
                        delivered.set_message(format!(
                            "p50 {:.1} ms  p99 {:.1} ms",
                            l.p50 as f64 / 1e3,
                            l.p99 as f64 / 1e3
                        ));
                    }
                }
            })
        };
        Self {
            published,
            delivered,
            ticker: Some(ticker),
        }
    }

    /// Publishing ended with `records` acknowledged.
    pub fn published_done(&self, records: u64) {
        self.published.set_length(records.max(1));
        self.published.set_position(records);
        self.published.set_message("done");
    }

    /// Waiting for `missing` notifications.
    pub fn draining(&self, missing: usize) {
        self.published.set_message(format!(
            "done; waiting for {missing} expected notifications"
        ));
    }

    pub fn finish(mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
        self.published.finish();
        self.delivered.finish();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.ticker.take() {
            t.abort();
        }
    }
}
