//! The simulated billing systems of a load run: durable gRPC subscribers that check
//! what they receive (order, duplicates, gaps) and misbehave on request (slow acks, a
//! stall, periodic reconnects).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpn_proto::mpn::notify::v1 as notify;
use mpn_sim::check::{Delivery, DeliveryChecker};
use mpn_sim::subscriber::{Login, Subscriber};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::report::SubscriberReport;
use crate::stats::Stats;

/// How one subscriber behaves.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub ack_delay: Duration,
    /// (after the start of publishing, for how long) it stops reading and acking.
    pub stall: Option<(Duration, Duration)>,
    /// Disconnects this long after each connect, then resumes from its cursor.
    pub reconnect_every: Option<Duration>,
}

/// What a subscriber has seen so far (shared with the run, which polls it for gaps).
#[derive(Debug, Default)]
pub struct State {
    pub id: String,
    pub login: String,
    /// Canonical codes of the institutions it subscribed to (all its login grants).
    pub institutions: Vec<String>,
    pub checker: DeliveryChecker,
    pub reconnects: u64,
    pub stream_errors: u64,
    pub last_error: Option<String>,
    pub stalled: bool,
}

impl State {
    pub fn report(&self) -> SubscriberReport {
        SubscriberReport {
            id: self.id.clone(),
            login: self.login.clone(),
            institutions: self.institutions.len(),
            notifications: self.checker.deliveries(),
            distinct: self.checker.distinct(),
            duplicates: self.checker.duplicates(),
            gaps: 0,
            order_violations: self.checker.order_violations(),
            reconnects: self.reconnects,
            stream_errors: self.stream_errors,
            last_error: self.last_error.clone(),
            stalled: self.stalled,
            gap_examples: Vec::new(),
            order_violation_examples: self
                .checker
                .order_violation_examples()
                .iter()
                .map(|v| {
                    format!(
                        "{}: partition {} offset {} after {}",
                        v.notification_id, v.partition, v.offset, v.after_offset
                    )
                })
                .collect(),
        }
    }
}

pub type Shared = Arc<Mutex<State>>;

pub fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// One subscriber's task. It connects and reports on `ready` (the granted
/// institutions, or the refusal), waits for `go` (the run's statistics, whose start is
/// the start of publishing), then reads until `stop`.
pub async fn run(
    addr: String,
    login: Login,
    behaviour: Behaviour,
    state: Shared,
    ready: oneshot::Sender<Result<Vec<String>, String>>,
    go: oneshot::Receiver<Arc<Stats>>,
    mut stop: watch::Receiver<bool>,
) {
    let id = lock(&state).id.clone();
    let connect = || {
        Subscriber::durable(
            &addr,
            &login,
            &[],
            &id,
            notify::StartFrom::Cursor, // a new id starts from now
        )
    };
    let mut sub = match connect().await {
        Ok(s) => s,
        Err(status) => {
            let _ = ready.send(Err(status.to_string()));
            return;
        }
    };
    lock(&state).institutions = sub.subscribed.institutions.clone();
    let _ = ready.send(Ok(sub.subscribed.institutions.clone()));
    let Ok(stats) = go.await else { return };
    let start = Instant::from_std(stats.start());
    let mut stall = behaviour
        .stall
        .map(|(after, length)| (start + after, length));
    let mut backoff = Duration::from_millis(100);
    loop {
        let end = serve(&mut sub, &behaviour, &state, &stats, &mut stall, &mut stop).await;
        match end {
            End::Stop => return,
            End::Planned => lock(&state).reconnects += 1,
            End::Failed(e) => {
                let mut s = lock(&state);
                s.stream_errors += 1;
                s.last_error = Some(e);
            }
        }
        // Close this stream before opening the next, as a restarted client would; then
        // reconnect (resuming from the cursor), with back-off while it fails.
        drop(sub);
        loop {
            if *stop.borrow() {
                return;
            }
            match connect().await {
                Ok(s) => {
                    sub = s;
                    backoff = Duration::from_millis(100);
                    break;
                }
                Err(status) => {
                    {
                        let mut s = lock(&state);
                        s.stream_errors += 1;
                        s.last_error = Some(format!("reconnect: {status}"));
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

enum End {
    Stop,
    Planned,
    Failed(String),
}

/// Serves one connection until it ends.
async fn serve(
    sub: &mut Subscriber,
    behaviour: &Behaviour,
    state: &Shared,
    stats: &Stats,
    stall: &mut Option<(Instant, Duration)>,
    stop: &mut watch::Receiver<bool>,
) -> End {
    let reconnect_at = behaviour.reconnect_every.map(|d| Instant::now() + d);
    // (due, seq) of acknowledgements held back by `ack_delay`.
    let mut pending: VecDeque<(Instant, u64)> = VecDeque::new();
    let far = || Instant::now() + Duration::from_secs(86_400);
    loop {
        let ack_due = pending.front().map(|p| p.0);
        // Branches only pick the event; the awaits happen below, outside the select.
        let event = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => Event::Stop,
            _ = tokio::time::sleep_until(reconnect_at.unwrap_or_else(far)), if reconnect_at.is_some() => {
                Event::Reconnect
            }
            _ = tokio::time::sleep_until(stall.map_or_else(far, |s| s.0)), if stall.is_some() => {
                Event::Stall(stall.take().map_or(Duration::ZERO, |s| s.1))
            }
            _ = tokio::time::sleep_until(ack_due.unwrap_or_else(far)), if ack_due.is_some() => {
                Event::AckDue
            }
            next = sub.next() => Event::Next(Box::new(next)),
        };
        match event {
            Event::Stop => return End::Stop,
            Event::Reconnect => return End::Planned,
            Event::Stall(length) => {
                lock(state).stalled = true;
                // Neither reads nor acks: the engine must not let this slow anyone else.
                tokio::select! {
                    _ = tokio::time::sleep(length) => {}
                    _ = stop.wait_for(|s| *s) => return End::Stop,
                }
            }
            Event::AckDue => {
                let now = Instant::now();
                let mut up_to = 0;
                while pending.front().is_some_and(|p| p.0 <= now) {
                    up_to = pending.pop_front().map_or(up_to, |p| p.1);
                }
                if let Err(e) = sub.ack(up_to).await {
                    return End::Failed(e.to_string());
                }
            }
            Event::Next(next) => match *next {
                Ok(Some(n)) => {
                    let received = std::time::Instant::now();
                    let now_us = chrono::Utc::now().timestamp_micros();
                    let outcome = lock(state).checker.observe(Delivery {
                        notification_id: &n.notification_id,
                        institution: &n.institution_code,
                        source_partition: n.source_partition,
                        source_offset: n.source_offset,
                    });
                    let latency = (outcome.is_first() && n.published_at_us > 0)
                        .then(|| now_us - n.published_at_us);
                    stats.delivered(received, latency);
                    if behaviour.ack_delay.is_zero() {
                        if let Err(e) = sub.ack(n.seq).await {
                            return End::Failed(e.to_string());
                        }
                    } else {
                        pending
                            .push_back((Instant::from_std(received) + behaviour.ack_delay, n.seq));
                    }
                }
                Ok(None) => return End::Failed("the server ended the stream".into()),
                Err(status) => return End::Failed(status.to_string()),
            },
        }
    }
}

enum Event {
    Stop,
    Reconnect,
    Stall(Duration),
    AckDue,
    Next(Box<Result<Option<notify::Notification>, tonic::Status>>),
}
