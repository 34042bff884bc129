//! One CAFIS link: attach as the institution's internal durable subscriber, connect
//! to the host, send one notice at a time and wait for its answer (stop-and-wait:
//! per-institution order holds even when a notice is refused and retried, and
//! institutions are independent links, so throughput scales with institutions),
//! keep the connection checked with echo telegrams, reconnect with back-off and
//! jitter, resend the unanswered notice flagged as a resend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpn_delivery::{InternalBackend as _, Outbound, Release, SubscriberQueue};
use prost::Message as _;
use rand::Rng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, sleep_until, timeout};

use super::Gate;
use super::config::Config;
use super::wire::{self, Reply};
use crate::cursors::{CursorStore, SubscriberKey};
use crate::dlq::{DeadLetter, DeadLetters, Finish};
use crate::domain::InstitutionCode;
use crate::hub::Hub;

/// What every link of a replica shares.
pub(super) struct Shared {
    pub config: Arc<Config>,
    pub hub: Arc<Hub>,
    pub dead_letters: DeadLetters,
    pub runtime: tokio::runtime::Handle,
    pub partitions: usize,
    /// The engine is shutting down (not a link moving to another replica): no
    /// other replica can own a link before this one's partitions are revoked, so
    /// its marks may be set exactly (see [`Marks::settle`]).
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// Links attach as the engine's internal subscriber of this service; the hub keeps
/// their cursors under the login `~cafis` ([`LINK_LOGIN`]), which no configured login
/// id may be.
pub const LINK_SERVICE: &str = "cafis";
pub const LINK_LOGIN: &str = "~cafis";
pub const LINK_SUBSCRIBER: &str = "link";

/// How far ahead a link reserves its "may have sent" mark: one durable write per
/// this many notices (a crash can flag up to this many first sends as resends).
const MARK_STRIDE: i64 = 64;

/// What the link may have written to its host, per input partition, kept in the
/// cursor topic: the resend flag is set on a notice read back from Kafka only if it
/// lies below the mark a previous attachment (or replica) left, so a notice first
/// sent after a restart is not flagged as a resend. The mark is reserved ahead in
/// strides before a notice past it is written, and set exactly on a clean stop.
struct Marks {
    key: SubscriberKey,
    store: Arc<CursorStore>,
    /// The marks as this attachment found them.
    before: Vec<Option<i64>>,
    /// Reserved by this attachment (written before sending past it).
    reserved: Vec<Option<i64>>,
    /// The highest offset this attachment wrote, per partition.
    sent: Vec<Option<i64>>,
}

impl Marks {
    async fn load(hub: &Hub, inst: &str, partitions: usize) -> Self {
        let key = SubscriberKey::new(inst, LINK_LOGIN, LINK_SUBSCRIBER)
            .expect("the link's subscriber id is valid");
        let store = hub.cursor_store().clone();
        // The previous owner's last reservation may be on another replica's side
        // of the topic: read it up to date first.
        if let Err(e) = store.sync().await {
            tracing::warn!(institution = %inst, error = %e, "cannot read the CAFIS link's sent marks up to date; replayed notices may lack the resend flag");
        }
        let before = (0..partitions as i32)
            .map(|p| store.sent_mark(&key, p))
            .collect();
        Self {
            key,
            store,
            before,
            reserved: vec![None; partitions],
            sent: vec![None; partitions],
        }
    }

    /// Whether a notice read back from Kafka may have reached the host before: below
    /// the mark an earlier attachment left, or sent by this attachment already (its
    /// partition fell back to catch-up and the reader delivers it again).
    fn maybe_sent(&self, partition: i32, offset: i64) -> bool {
        let p = partition as usize;
        self.before
            .get(p)
            .copied()
            .flatten()
            .is_some_and(|m| offset < m)
            || self
                .sent
                .get(p)
                .copied()
                .flatten()
                .is_some_and(|s| offset <= s)
    }

    /// Makes sure the mark covers `offset` before it is written to the host.
    async fn reserve(&mut self, partition: i32, offset: i64) -> Result<(), String> {
        let p = partition as usize;
        if p >= self.reserved.len() || self.reserved[p].is_some_and(|m| offset < m) {
            return Ok(());
        }
        let mark = (offset + MARK_STRIDE).max(self.before[p].unwrap_or(0));
        self.store
            .persist_sent_mark(&self.key, partition, mark)
            .await
            .map_err(|e| format!("cannot record what the link sends: {e:#}"))?;
        self.reserved[p] = Some(mark);
        Ok(())
    }

    fn wrote(&mut self, partition: i32, offset: i64) {
        if let Some(s) = self.sent.get_mut(partition as usize) {
            *s = Some(s.map_or(offset, |o| o.max(offset)));
        }
    }

    /// A clean stop of the engine: the marks say exactly what was written (never
    /// less than what an earlier attachment may have written). Only then: when the
    /// link moves, the next owner may already have reserved a higher mark, which a
    /// lower one written now would undo.
    async fn settle(&self) {
        for (p, sent) in self.sent.iter().enumerate() {
            let Some(sent) = sent else { continue };
            let exact = (sent + 1).max(self.before[p].unwrap_or(0));
            if self.reserved[p] != Some(exact)
                && let Err(e) = self
                    .store
                    .persist_sent_mark(&self.key, p as i32, exact)
                    .await
            {
                tracing::warn!(error = %e, "cannot write the CAFIS link's sent mark; notices may be flagged as resends after the restart");
            }
        }
    }
}

/// The notice on the wire, waiting for its answer.
struct Pending {
    item: Outbound,
    bytes: Vec<u8>,
    sequence: u32,
    sent_at: Option<Instant>,
    first_sent: Option<Instant>,
    /// Set after a transient refusal: send again at this time.
    retry_at: Option<tokio::time::Instant>,
    sends: u32,
}

enum Ended {
    /// Stop asked (link moved or engine shutting down).
    Stopped,
    /// The subscription was ended by the engine (kicked): attach again.
    Kicked,
    /// The connection failed or the peer is dead: reconnect.
    Connection(String),
}

pub(super) async fn run(
    shared: Arc<Shared>,
    code: InstitutionCode,
    host: String,
    gate: Arc<Gate>,
    mut stop: watch::Receiver<bool>,
) {
    let inst = code.to_string();
    let mut pending: Option<Pending> = None;
    let mut failures = 0u32;
    'attach: while !*stop.borrow() {
        // Attach as the institution's durable subscriber (may ask Kafka for positions).
        let (queue, mut rx) = SubscriberQueue::channel(shared.config.queue_capacity);
        let (hub, q, i) = (shared.hub.clone(), queue.clone(), inst.clone());
        let attached = tokio::task::spawn_blocking(move || {
            hub.attach_internal(LINK_SERVICE, &i, LINK_SUBSCRIBER, q)
        })
        .await;
        let _attachment = match attached {
            Ok(Ok(a)) => a,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!(),
                };
                tracing::warn!(institution = %inst, reason = %why, "CAFIS link cannot attach; retrying");
                if wait_or_stop(&mut stop, backoff(&shared.config, &mut failures)).await {
                    break;
                }
                continue;
            }
        };
        let mut marks = Marks::load(&shared.hub, &inst, shared.partitions).await;
        loop {
            let stream = match connect(&shared.config, &host).await {
                Ok(s) => s,
                Err(e) => {
                    metrics::counter!(crate::telemetry::metric::CAFIS_CONNECT_FAILURES_TOTAL, "institution" => inst.clone()).increment(1);
                    tracing::warn!(institution = %inst, %host, error = %e, "CAFIS host unreachable");
                    let delay = backoff(&shared.config, &mut failures);
                    tokio::select! {
                        _ = sleep(delay) => continue,
                        _ = crate::engine::stopped(&mut stop) => {
                            release_queued(&mut rx);
                            break 'attach;
                        }
                        _ = queue.kicked() => {
                            // The next attachment reads it again: a stale copy resent
                            // first would be a duplicate, and its answer would move
                            // the ended attachment's cursor.
                            if let Some(p) = pending.take() {
                                p.item.token.release(Release::SubscriberGone);
                            }
                            release_queued(&mut rx);
                            continue 'attach;
                        }
                    }
                }
            };
            metrics::counter!(crate::telemetry::metric::CAFIS_CONNECTS_TOTAL, "institution" => inst.clone())
                .increment(1);
            gate.up.store(true, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::metric::CAFIS_LINK_UP, "institution" => inst.clone())
                .set(1.0);
            tracing::info!(institution = %inst, %host, "CAFIS link connected");
            let ended = serve(
                &shared,
                &inst,
                stream,
                &gate,
                &mut stop,
                &queue,
                &mut rx,
                &mut pending,
                &mut failures,
                &mut marks,
            )
            .await;
            gate.up.store(false, std::sync::atomic::Ordering::Relaxed);
            metrics::gauge!(crate::telemetry::metric::CAFIS_LINK_UP, "institution" => inst.clone())
                .set(0.0);
            match ended {
                Ended::Stopped => {
                    release_queued(&mut rx);
                    if shared
                        .shutting_down
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        marks.settle().await;
                    }
                    break 'attach;
                }
                Ended::Kicked => {
                    release_queued(&mut rx);
                    continue 'attach;
                }
                Ended::Connection(why) => {
                    metrics::counter!(crate::telemetry::metric::CAFIS_RECONNECTS_TOTAL, "institution" => inst.clone())
                        .increment(1);
                    tracing::warn!(institution = %inst, %host, reason = %why, "CAFIS link lost; reconnecting");
                    let delay = backoff(&shared.config, &mut failures);
                    if wait_or_stop(&mut stop, delay).await {
                        release_queued(&mut rx);
                        break 'attach;
                    }
                }
            }
        }
    }
    // Whatever is unanswered stays below the cursor: the next owner (or this one after
    // a restart) resends it from there.
    if let Some(p) = pending.take() {
        p.item.token.release(Release::SubscriberGone);
    }
    tracing::info!(institution = %inst, "CAFIS link stopped");
}

/// Queued notifications of an ended attachment: the cursor stays below them, so the
/// next attachment reads them again from Kafka.
fn release_queued(rx: &mut mpsc::Receiver<Outbound>) {
    rx.close();
    while let Ok(item) = rx.try_recv() {
        item.token.release(Release::SubscriberGone);
    }
}

/// True if stopped while waiting.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = sleep(delay) => false,
        _ = crate::engine::stopped(stop) => true,
    }
}

/// Exponential back-off with up to 50 % jitter.
fn backoff(config: &Config, failures: &mut u32) -> Duration {
    let base = config
        .backoff_initial_ms
        .saturating_mul(1u64 << (*failures).min(20))
        .min(config.backoff_max_ms);
    *failures = failures.saturating_add(1);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

async fn connect(config: &Config, host: &str) -> std::io::Result<TcpStream> {
    let s = timeout(
        Config::ms(config.connect_timeout_ms),
        TcpStream::connect(host),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes `bytes` if the gate is open. `Ok(false)`: the gate is closed.
async fn write(
    gate: &Gate,
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<bool, String> {
    let Some(_permit) = gate.permit() else {
        return Ok(false);
    };
    match timeout(limit, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err("write timed out (host not reading)".into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    inst: &str,
    mut stream: TcpStream,
    gate: &Gate,
    stop: &mut watch::Receiver<bool>,
    queue: &SubscriberQueue,
    rx: &mut mpsc::Receiver<Outbound>,
    pending: &mut Option<Pending>,
    failures: &mut u32,
    marks: &mut Marks,
) -> Ended {
    let config = &shared.config;
    let ack_timeout = Config::ms(config.ack_timeout_ms);
    let echo_interval = Config::ms(config.echo_interval_ms);
    let echo_timeout = Config::ms(config.echo_timeout_ms);
    let mut reader = wire::Reader::default();
    let mut buf = vec![0u8; 8192];
    let mut last_heard = tokio::time::Instant::now();
    let mut echo_sent: Option<(u32, tokio::time::Instant)> = None;
    let mut echo_seq = 0u32;
    // The notice that was on the wire when the last connection ended goes first.
    if let Some(p) = pending.as_mut() {
        p.sent_at = None;
        p.retry_at = None;
    }
    loop {
        // Send (or resend) the pending notice when due.
        if let Some(p) = pending.as_mut()
            && p.sent_at.is_none()
            && p.retry_at.is_none_or(|t| t <= tokio::time::Instant::now())
        {
            if p.sends > 0 {
                if let Ok(Some(b)) = wire::notice(
                    &p.item.notification,
                    shared.partitions,
                    &config.centre_id,
                    true,
                ) {
                    p.bytes = b;
                }
                metrics::counter!(crate::telemetry::metric::CAFIS_RESENDS_TOTAL, "institution" => inst.to_owned())
                    .increment(1);
            }
            let (partition, offset) = (
                p.item.notification.source_partition,
                p.item.notification.source_offset,
            );
            if let Err(e) = marks.reserve(partition, offset).await {
                return Ended::Connection(e);
            }
            match write(gate, &mut stream, &p.bytes, ack_timeout).await {
                Ok(true) => {
                    marks.wrote(partition, offset);
                    let now = Instant::now();
                    p.sent_at = Some(now);
                    p.first_sent.get_or_insert(now);
                    p.retry_at = None;
                    p.sends += 1;
                    metrics::counter!(crate::telemetry::metric::CAFIS_TELEGRAMS_SENT_TOTAL, "institution" => inst.to_owned()).increment(1);
                }
                Ok(false) => {}
                Err(e) => return Ended::Connection(e),
            }
        }
        let ack_deadline = pending
            .as_ref()
            .and_then(|p| p.sent_at)
            .map(|t| tokio::time::Instant::from_std(t + ack_timeout));
        let retry_at = pending.as_ref().and_then(|p| p.retry_at);
        let echo_deadline = match echo_sent {
            Some((_, at)) => at + echo_timeout,
            None => last_heard + echo_interval,
        };
        let can_take = pending.is_none() && gate.is_open();
        tokio::select! {
            biased;
            _ = crate::engine::stopped(stop) => return Ended::Stopped,
            reason = queue.kicked() => {
                tracing::info!(institution = %inst, %reason, "CAFIS link subscription ended by the engine");
                if let Some(p) = pending.take() {
                    p.item.token.release(Release::SubscriberGone);
                }
                return Ended::Kicked;
            }
            _ = gate.changed() => {}
            n = stream.read(&mut buf) => {
                let n = match n {
                    Ok(0) => return Ended::Connection("host closed the connection".into()),
                    Ok(n) => n,
                    Err(e) => return Ended::Connection(format!("read failed: {e}")),
                };
                reader.push(&buf[..n]);
                while let Some(reply) = reader.next_reply() {
                    let reply = match reply {
                        Ok(r) => r,
                        Err(e) => return Ended::Connection(format!("undecodable telegram from host: {e}")),
                    };
                    // Only a whole telegram shows the host alive: one trickling
                    // bytes that never make a telegram is still found dead by the echo.
                    last_heard = tokio::time::Instant::now();
                    match reply {
                        Reply::EchoResponse { sequence } => {
                            if echo_sent.is_some_and(|(s, _)| s == sequence) {
                                echo_sent = None;
                                *failures = 0;
                            }
                        }
                        Reply::EchoRequest(request) => {
                            let bytes = wire::echo_response(&request);
                            // Answering an echo is not a notification: no gate. A host
                            // that does not read its answers cannot hold the link.
                            match timeout(ack_timeout, stream.write_all(&bytes)).await {
                                Ok(Ok(())) => {}
                                Ok(Err(e)) => return Ended::Connection(format!("write failed: {e}")),
                                Err(_) => return Ended::Connection("echo response write timed out (host not reading)".into()),
                            }
                        }
                        Reply::Ack { sequence, transaction_key } => {
                            let Some(p) = pending.take_if(|p| p.sequence == sequence && p.item.notification.transaction_key == transaction_key) else {
                                metrics::counter!(crate::telemetry::metric::CAFIS_STRAY_REPLIES_TOTAL, "institution" => inst.to_owned()).increment(1);
                                continue;
                            };
                            // The host answers: the next reconnect starts its back-off afresh.
                            *failures = 0;
                            if let Some(t) = p.first_sent {
                                metrics::histogram!(crate::telemetry::metric::CAFIS_ACK_SECONDS, "institution" => inst.to_owned()).record(t.elapsed().as_secs_f64());
                            }
                            metrics::counter!(crate::telemetry::metric::CAFIS_ACKS_TOTAL, "institution" => inst.to_owned()).increment(1);
                            p.item.token.release(Release::Acked);
                        }
                        Reply::Nack { sequence, transaction_key, code, permanent, text } => {
                            let matches = pending.as_ref().is_some_and(|p| p.sequence == sequence && p.item.notification.transaction_key == transaction_key);
                            if !matches {
                                metrics::counter!(crate::telemetry::metric::CAFIS_STRAY_REPLIES_TOTAL, "institution" => inst.to_owned()).increment(1);
                                continue;
                            }
                            metrics::counter!(crate::telemetry::metric::CAFIS_NACKS_TOTAL, "institution" => inst.to_owned(), "reason" => code.clone(), "permanent" => permanent.to_string()).increment(1);
                            if permanent {
                                let p = pending.take().expect("matched");
                                dead_letter(shared, p.item, "cafis_nack", &code, format!("host refused the notice permanently: {code} {text}"));
                            } else if let Some(p) = pending.as_mut() {
                                tracing::info!(institution = %inst, %code, "CAFIS host refused a notice for now; retrying");
                                p.sent_at = None;
                                p.retry_at = Some(tokio::time::Instant::now() + Config::ms(config.retry_delay_ms));
                            }
                        }
                        Reply::Unexpected(what) => {
                            return Ended::Connection(format!("unexpected telegram from host: {what}"));
                        }
                    }
                }
            }
            item = rx.recv(), if can_take => {
                let Some(item) = item else { return Ended::Kicked };
                let sequence = wire::sequence_of(&item.notification, shared.partitions);
                // Flagged when it may have reached the host before: MPN's resend
                // confirmation of a payment, or a notice read back from Kafka below
                // what an earlier attachment may have written (`Marks`).
                let n = &item.notification;
                let resend = n.resent_by_mpn
                    || (item.token.replayed() && marks.maybe_sent(n.source_partition, n.source_offset));
                match wire::notice(&item.notification, shared.partitions, &config.centre_id, resend) {
                    // Daily counters have no telegram.
                    Ok(None) => item.token.release(Release::Acked),
                    Ok(Some(bytes)) => {
                        *pending = Some(Pending { item, bytes, sequence, sent_at: None, first_sent: None, retry_at: None, sends: 0 });
                    }
                    Err(e) => {
                        // Nothing the host could be sent: dead-letter with the field.
                        let (field, message) = (e.field.clone(), e.to_string());
                        dead_letter(shared, item, "cafis_encode", &field, message);
                    }
                }
            }
            _ = sleep_until(retry_at.unwrap_or_else(far)), if retry_at.is_some() => {}
            _ = sleep_until(ack_deadline.unwrap_or_else(far)), if ack_deadline.is_some() => {
                return Ended::Connection(format!("no answer to a notice within {} ms", config.ack_timeout_ms));
            }
            _ = sleep_until(echo_deadline) => {
                if echo_sent.is_some() {
                    return Ended::Connection(format!("no answer to an echo within {} ms (dead peer)", config.echo_timeout_ms));
                }
                echo_seq = echo_seq % mpn_cafis::MAX_SEQUENCE + 1;
                let bytes = wire::echo_request(&config.centre_id, echo_seq);
                if let Err(e) = timeout(ack_timeout, stream.write_all(&bytes)).await.map_err(|_| "write timed out".to_string()).and_then(|r| r.map_err(|e| e.to_string())) {
                    return Ended::Connection(format!("echo write failed: {e}"));
                }
                echo_sent = Some((echo_seq, tokio::time::Instant::now()));
            }
        }
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400)
}

fn dead_letter(shared: &Shared, item: Outbound, kind: &'static str, field: &str, message: String) {
    let n = &item.notification;
    tracing::warn!(institution = %n.institution_code, transaction_key = %n.transaction_key, %field, %message, "CAFIS notice dead-lettered");
    shared.dead_letters.send(DeadLetter {
        key: Some(n.institution_code.as_bytes().to_vec()),
        payload: n.encode_to_vec(),
        content_type: Some(wire::NOTIFICATION_CONTENT_TYPE.as_bytes().to_vec()),
        kind,
        field: field.to_owned(),
        message,
        partition: n.source_partition,
        offset: n.source_offset,
        hold: Finish::Delivery(item.token),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_with_bounded_jitter() {
        let config = Config {
            backoff_initial_ms: 100,
            backoff_max_ms: 1_000,
            ..Config::default()
        };
        let mut failures = 0;
        let delays: Vec<u64> = (0..8)
            .map(|_| backoff(&config, &mut failures).as_millis() as u64)
            .collect();
        for (n, (d, base)) in delays
            .iter()
            .zip([100, 200, 400, 800, 1_000, 1_000, 1_000, 1_000])
            .enumerate()
        {
            assert!(
                (base..=base + base / 2).contains(d),
                "attempt {n}: {d} ms not in {base}..={}",
                base + base / 2
            );
        }
        assert_eq!(failures, 8);
    }
}
