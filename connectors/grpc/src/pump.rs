//! One open subscription's task: moves notifications from its queue to the stream
//! within the ack window, sends heart-beats while idle, applies the client's
//! acknowledgements (releasing each notification's token) and ends on a kick, the
//! shutdown, an ack timeout or a stalled stream, handing back what it holds.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use mpn_delivery::queue::Ended;
use mpn_delivery::{Attachment, DeliveryToken, Outbound, Release};
use mpn_proto::frame::Frame;
use mpn_proto::mpn::notify::v1 as pb;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::{Config, status};

/// One open subscription: moves notifications from its queue to the stream within
/// the ack window and applies the client's acknowledgements.
pub(crate) struct Subscription {
    pub(crate) config: Config,
    pub(crate) inbound: Streaming<pb::ClientMessage>,
    pub(crate) out: mpsc::Sender<Result<Frame, Box<Status>>>,
    pub(crate) queue_rx: mpsc::Receiver<Outbound>,
    pub(crate) ended: Ended,
    pub(crate) shutdown: CancellationToken,
    /// Sent, unacknowledged notifications by seq, with when they were sent and
    /// when their event was published (µs since the epoch).
    pub(crate) in_flight: BTreeMap<u64, (Instant, i64, Box<dyn DeliveryToken>)>,
    pub(crate) last_seq: u64,
    pub(crate) login_id: String,
}

enum End {
    Status(Status),
    ClientGone,
}

/// Open subscriptions of this process (`mpn_grpc_subscribers`).
static OPEN: AtomicI64 = AtomicI64::new(0);

/// What [`report_gauges`] reads of each open subscription: its institutions and the
/// publish time of its oldest unacknowledged notification (0: none).
#[derive(Debug)]
struct StreamStat {
    institutions: Vec<String>,
    oldest_unacked_us: AtomicI64,
}

static STREAMS: LazyLock<Mutex<HashMap<u64, Arc<StreamStat>>>> = LazyLock::new(Mutex::default);
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

fn streams() -> std::sync::MutexGuard<'static, HashMap<u64, Arc<StreamStat>>> {
    STREAMS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sets `mpn_grpc_subscribers` (at once when a stream opens or closes).
fn report_open() {
    metrics::gauge!(crate::metrics::GRPC_SUBSCRIBERS).set(OPEN.load(Ordering::Relaxed) as f64);
}

/// Sets `mpn_grpc_subscribers` and `mpn_delivery_age_seconds` again; the engine's
/// ticker calls it every second (gauges not set for a while are dropped by the
/// exporter, see the engine's `telemetry`).
pub fn report_gauges() {
    report_open();
    let now = now_us();
    let tenants = mpn_delivery::labels::tenant_labels();
    let mut largest = 0i64;
    let mut by_institution: HashMap<String, i64> = HashMap::new();
    for s in streams().values() {
        let oldest = s.oldest_unacked_us.load(Ordering::Relaxed);
        let age = if oldest > 0 { (now - oldest).max(0) } else { 0 };
        largest = largest.max(age);
        if tenants {
            for i in &s.institutions {
                let e = by_institution.entry(i.clone()).or_default();
                *e = (*e).max(age);
            }
        }
    }
    if tenants {
        for (institution, age) in by_institution {
            metrics::gauge!(crate::metrics::DELIVERY_AGE_SECONDS, "institution" => institution)
                .set(age as f64 / 1e6);
        }
    } else {
        metrics::gauge!(crate::metrics::DELIVERY_AGE_SECONDS).set(largest as f64 / 1e6);
    }
}

/// Seconds from `published_us` to `now_us` (0 for an event without a publish time).
fn since(published_us: i64, now_us: i64) -> f64 {
    if published_us <= 0 {
        0.0
    } else {
        (now_us - published_us).max(0) as f64 / 1e6
    }
}

impl Subscription {
    pub(crate) async fn run(mut self, attachment: Attachment) {
        OPEN.fetch_add(1, Ordering::Relaxed);
        let stream = NEXT_STREAM.fetch_add(1, Ordering::Relaxed);
        let stat = Arc::new(StreamStat {
            institutions: attachment.institutions.clone(),
            oldest_unacked_us: AtomicI64::new(0),
        });
        streams().insert(stream, stat.clone());
        report_open();
        let end = self.pump(&stat).await;
        // Detach first so the engine stops offering, then settle everything we hold.
        drop(attachment);
        let shutting_down = self.shutdown.is_cancelled();
        let how = if shutting_down {
            Release::Shutdown
        } else {
            Release::SubscriberGone
        };
        let mut handed_back = 0u64;
        for (_, (_, _, token)) in std::mem::take(&mut self.in_flight) {
            token.release(how);
            handed_back += 1;
        }
        self.queue_rx.close();
        while let Ok(item) = self.queue_rx.try_recv() {
            item.token.release(how);
            handed_back += 1;
        }
        metrics::counter!(crate::metrics::GRPC_REDELIVERIES_TOTAL).increment(handed_back);
        streams().remove(&stream);
        OPEN.fetch_sub(1, Ordering::Relaxed);
        report_open();
        match end {
            End::Status(status) => {
                tracing::info!(login_id = %self.login_id, code = ?status.code(), message = status.message(), "subscription closed");
                // A client that stopped reading may never take it: bounded.
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(1),
                    self.out.send(Err(Box::new(status))),
                )
                .await;
            }
            End::ClientGone => tracing::info!(login_id = %self.login_id, "subscriber disconnected"),
        }
    }

    /// Every await here is one branch of the `select!`: a client whose HTTP/2 window
    /// stays shut (it stopped reading) cannot keep the task from seeing a kick,
    /// shutdown or its ack deadline. Each wake-up takes as many queued notifications
    /// as the ack window allows and hands the stream as many frames as it has room
    /// for; what the stream cannot take yet waits in `outgoing`, and nothing more is
    /// taken from the queue meanwhile.
    async fn pump(&mut self, stat: &StreamStat) -> End {
        enum Step {
            Shutdown,
            Kicked(mpn_delivery::EndReason),
            Client(Result<Option<pb::ClientMessage>, Status>),
            Queued(usize),
            Sent,
            StreamGone,
            Idle,
            AckOverdue,
            StreamStalled,
        }
        let window = self.config.ack_window as usize;
        // Handles looked up once: the per-notification path only records.
        let sent_latency =
            metrics::histogram!(crate::metrics::DELIVERY_LATENCY_SECONDS, "stage" => "send");
        let ack_latency =
            metrics::histogram!(crate::metrics::DELIVERY_LATENCY_SECONDS, "stage" => "ack");
        let sent_total = metrics::counter!(crate::metrics::GRPC_NOTIFICATIONS_SENT_TOTAL);
        let heartbeat = self.config.heartbeat_interval;
        let mut idle_until = Instant::now() + heartbeat;
        let mut outgoing: VecDeque<Frame> = VecDeque::new();
        let mut taken: Vec<Outbound> = Vec::new();
        // When the oldest frame in `outgoing` started waiting for room: a stream that
        // takes nothing (not even a heart-beat) for the ack timeout is cut off too,
        // even with nothing in flight (its queued notifications hold offsets).
        let mut waiting_since = Instant::now();
        loop {
            // No more than the stream's channel takes now (at least one, which then
            // waits for room): a notification's ack clock starts when it is handed
            // over, not while it waits behind others.
            let room = window
                .saturating_sub(self.in_flight.len())
                .min(self.out.capacity().max(1));
            let can_take = outgoing.is_empty() && room > 0;
            // The oldest unacknowledged notification sets the ack deadline.
            let ack_deadline = self
                .in_flight
                .values()
                .next()
                .map(|(sent, ..)| *sent + self.config.ack_timeout);
            let step = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => Step::Shutdown,
                reason = self.ended.wait() => Step::Kicked(reason),
                msg = self.inbound.message() => Step::Client(msg),
                _ = sleep_until(ack_deadline.unwrap_or(idle_until)), if ack_deadline.is_some() => Step::AckOverdue,
                _ = sleep_until(waiting_since + self.config.ack_timeout), if !outgoing.is_empty() => Step::StreamStalled,
                permit = self.out.reserve(), if !outgoing.is_empty() => match (permit, outgoing.pop_front()) {
                    (Ok(permit), Some(frame)) => {
                        permit.send(Ok(frame));
                        Step::Sent
                    }
                    _ => Step::StreamGone,
                },
                n = self.queue_rx.recv_many(&mut taken, room), if can_take => Step::Queued(n),
                _ = sleep_until(idle_until), if outgoing.is_empty() => Step::Idle,
            };
            match step {
                Step::Shutdown => {
                    return End::Status(Status::unavailable(
                        "server shutting down; reconnect to resume",
                    ));
                }
                Step::Kicked(reason) => return End::Status(status::ended(&reason)),
                Step::Client(Ok(Some(m))) => match self.on_client_message(m, &ack_latency) {
                    Ok(()) => {
                        stat.oldest_unacked_us
                            .store(self.oldest_published(), Ordering::Relaxed);
                        continue;
                    }
                    Err(status) => return End::Status(status),
                },
                Step::Client(Ok(None) | Err(_)) | Step::StreamGone => return End::ClientGone,
                Step::AckOverdue => {
                    metrics::counter!(crate::metrics::GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL)
                        .increment(1);
                    return End::Status(Status::deadline_exceeded(format!(
                        "no acknowledgement for {} ms; reconnect to resume",
                        self.config.ack_timeout.as_millis()
                    )));
                }
                Step::StreamStalled => {
                    metrics::counter!(crate::metrics::GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL)
                        .increment(1);
                    return End::Status(Status::deadline_exceeded(format!(
                        "the stream took nothing for {} ms (not reading); reconnect to resume",
                        self.config.ack_timeout.as_millis()
                    )));
                }
                Step::Sent => {
                    idle_until = Instant::now() + heartbeat;
                    waiting_since = Instant::now();
                }
                Step::Queued(0) => {
                    return End::Status(Status::unavailable("engine detached this subscription"));
                }
                Step::Queued(n) => {
                    // One clock read and one metric update per batch.
                    let (sent_at, now) = (Instant::now(), now_us());
                    for item in taken.drain(..) {
                        self.last_seq += 1;
                        let published = item.notification.published_at_us;
                        outgoing.push_back(Frame::Notification {
                            seq: self.last_seq,
                            body: item.notification.body(),
                        });
                        self.in_flight
                            .insert(self.last_seq, (sent_at, published, item.token));
                        sent_latency.record(since(published, now));
                    }
                    sent_total.increment(n as u64);
                    stat.oldest_unacked_us
                        .store(self.oldest_published(), Ordering::Relaxed);
                    waiting_since = sent_at;
                }
                Step::Idle => {
                    outgoing.push_back(Frame::Message(Box::new(pb::ServerMessage {
                        message: Some(pb::server_message::Message::Heartbeat(pb::Heartbeat {
                            server_time_us: now_us(),
                        })),
                    })));
                    waiting_since = Instant::now();
                }
            }
            // Hand over what the stream has room for now, without another wake-up.
            let mut handed = false;
            while !outgoing.is_empty() {
                match self.out.try_reserve() {
                    Ok(permit) => {
                        if let Some(frame) = outgoing.pop_front() {
                            permit.send(Ok(frame));
                        }
                        handed = true;
                    }
                    Err(mpsc::error::TrySendError::Full(())) => break,
                    Err(mpsc::error::TrySendError::Closed(())) => return End::ClientGone,
                }
            }
            if handed {
                let now = Instant::now();
                idle_until = now + heartbeat;
                waiting_since = now;
            }
        }
    }

    /// Publish time of the earliest-sent unacknowledged notification (0: none).
    fn oldest_published(&self) -> i64 {
        self.in_flight
            .values()
            .next()
            .map_or(0, |(_, published, _)| *published)
    }

    fn on_client_message(
        &mut self,
        m: pb::ClientMessage,
        latency: &metrics::Histogram,
    ) -> Result<(), Status> {
        match m.message {
            Some(pb::client_message::Message::Ack(ack)) => self.on_ack(ack, latency),
            Some(pb::client_message::Message::Subscribe(_)) => Err(Status::invalid_argument(
                "`subscribe` may be sent only once, as the first message",
            )),
            None => Err(Status::invalid_argument("empty client message")),
        }
    }

    fn on_ack(&mut self, ack: pb::Ack, latency: &metrics::Histogram) -> Result<(), Status> {
        let beyond = |s: u64| s > self.last_seq;
        if beyond(ack.up_to_seq) || ack.seqs.iter().any(|&s| s == 0 || beyond(s)) {
            return Err(Status::invalid_argument(format!(
                "ack refers to a seq that was never sent (sent 1..={})",
                self.last_seq
            )));
        }
        let now = now_us();
        let mut tokens = Vec::new();
        if ack.up_to_seq > 0 {
            let rest = self.in_flight.split_off(&(ack.up_to_seq + 1));
            for (_, (_, published, token)) in std::mem::replace(&mut self.in_flight, rest) {
                latency.record(since(published, now));
                tokens.push(token);
            }
        }
        for s in ack.seqs {
            if let Some((_, published, token)) = self.in_flight.remove(&s) {
                latency.record(since(published, now));
                tokens.push(token);
            }
        }
        let acked = tokens.len() as u64;
        // One run: work the tokens share (cursor saves) is done once.
        mpn_delivery::release_all(tokens, Release::Acked);
        metrics::counter!(crate::metrics::GRPC_ACKS_TOTAL).increment(acked);
        Ok(())
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or_default()
}
