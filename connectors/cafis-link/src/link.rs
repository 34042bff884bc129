//! One CAFIS link: attach as the institution's internal durable subscriber, connect
//! to the host, send one notice at a time and wait for its answer (stop-and-wait:
//! per-institution order holds even when a notice is refused and retried, and
//! institutions are independent links, so throughput scales with institutions),
//! keep the connection checked with echo telegrams, reconnect with back-off and
//! jitter, resend the unanswered notice flagged as a resend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mpn_delivery::{Outbound, Release, SubscriberQueue};
use rand::Rng as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use mpn_domain::InstitutionCode;

use super::config::Config;
use super::machine::{Action, Dead, Link};
use super::wire;
use super::{Gate, LinkBackend};

/// What every link of a replica shares.
pub(super) struct Shared {
    pub config: Arc<Config>,
    pub backend: Arc<dyn LinkBackend>,
    pub runtime: tokio::runtime::Handle,
    /// The engine's stop signal (each link gets a child) and its task tracker.
    pub shutdown: CancellationToken,
    pub tasks: TaskTracker,
    pub partitions: usize,
    /// The engine is shutting down (not a link moving to another replica): no
    /// other replica can own a link before this one's partitions are revoked, so
    /// its marks may be set exactly (see [`Marks::settle`]).
    pub shutting_down: std::sync::atomic::AtomicBool,
}

/// Links attach as the engine's internal subscriber `LINK_SUBSCRIBER` of this
/// service (the engine keeps its cursors and marks under `<institution>/~cafis/link`).
pub const LINK_SERVICE: &str = "cafis";
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
    institution: String,
    store: Arc<dyn LinkBackend>,
    /// The marks as this attachment found them.
    before: Vec<Option<i64>>,
    /// Reserved by this attachment (written before sending past it).
    reserved: Vec<Option<i64>>,
    /// The highest offset this attachment wrote, per partition.
    sent: Vec<Option<i64>>,
}

impl Marks {
    async fn load(store: &Arc<dyn LinkBackend>, inst: &str, partitions: usize) -> Self {
        let store = store.clone();
        // The previous owner's last reservation may be on another replica's side
        // of the topic: read it up to date first.
        if let Err(e) = store.sync_marks().await {
            tracing::warn!(institution = %inst, error = %e, "cannot read the CAFIS link's sent marks up to date; replayed notices may lack the resend flag");
        }
        let before = (0..partitions as i32)
            .map(|p| store.sent_mark(inst, p))
            .collect();
        Self {
            institution: inst.to_owned(),
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
            .persist_sent_mark(&self.institution, partition, mark)
            .await
            .map_err(|e| format!("cannot record what the link sends: {e}"))?;
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
                    .persist_sent_mark(&self.institution, p as i32, exact)
                    .await
            {
                tracing::warn!(error = %e, "cannot write the CAFIS link's sent mark; notices may be flagged as resends after the restart");
            }
        }
    }
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
    stop: CancellationToken,
) {
    let inst = code.to_string();
    let labels = mpn_delivery::labels::institution(&inst);
    // The protocol state; its pending notice survives reconnects (not attachments).
    let mut link = Link::new(&inst, shared.partitions, &shared.config, now());
    'attach: while !stop.is_cancelled() {
        // Attach as the institution's durable subscriber (may ask Kafka for positions).
        let (queue, mut rx) = SubscriberQueue::channel(shared.config.queue_capacity);
        let attached = mpn_delivery::attach_internal_blocking(
            shared.backend.clone(),
            LINK_SERVICE,
            inst.clone(),
            LINK_SUBSCRIBER,
            queue.clone(),
        )
        .await;
        let _attachment = match attached {
            Ok(a) => a,
            Err(why) => {
                tracing::warn!(institution = %inst, reason = %why, "CAFIS link cannot attach; retrying");
                if wait_or_stop(&stop, backoff(&shared.config, &mut link.failures)).await {
                    break;
                }
                continue;
            }
        };
        let mut marks = Marks::load(&shared.backend, &inst, shared.partitions).await;
        loop {
            let stream = match connect(&shared.config, &host).await {
                Ok(s) => s,
                Err(e) => {
                    metrics::counter!(crate::metrics::CAFIS_CONNECT_FAILURES_TOTAL, &labels)
                        .increment(1);
                    tracing::warn!(institution = %inst, %host, error = %e, "CAFIS host unreachable");
                    let delay = backoff(&shared.config, &mut link.failures);
                    tokio::select! {
                        _ = sleep(delay) => continue,
                        _ = stop.cancelled() => {
                            release_queued(&mut rx);
                            break 'attach;
                        }
                        _ = queue.kicked() => {
                            // The next attachment reads it again: a stale copy resent
                            // first would be a duplicate, and its answer would move
                            // the ended attachment's cursor.
                            if let Some(item) = link.take_pending() {
                                item.token.release(Release::SubscriberGone);
                            }
                            release_queued(&mut rx);
                            continue 'attach;
                        }
                    }
                }
            };
            metrics::counter!(crate::metrics::CAFIS_CONNECTS_TOTAL, &labels).increment(1);
            gate.up.store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(institution = %inst, %host, "CAFIS link connected");
            let ended = serve(
                &shared, &inst, stream, &gate, &stop, &queue, &mut rx, &mut link, &mut marks,
            )
            .await;
            // What the host answered is finished even if the connection died after.
            settle(&shared, &mut link);
            gate.up.store(false, std::sync::atomic::Ordering::Relaxed);
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
                    metrics::counter!(crate::metrics::CAFIS_RECONNECTS_TOTAL, &labels).increment(1);
                    tracing::warn!(institution = %inst, %host, reason = %why, "CAFIS link lost; reconnecting");
                    let delay = backoff(&shared.config, &mut link.failures);
                    if wait_or_stop(&stop, delay).await {
                        release_queued(&mut rx);
                        break 'attach;
                    }
                }
            }
        }
    }
    // Whatever is unanswered stays below the cursor: the next owner (or this one after
    // a restart) resends it from there.
    settle(&shared, &mut link);
    if let Some(item) = link.take_pending() {
        item.token.release(Release::SubscriberGone);
    }
    tracing::info!(institution = %inst, "CAFIS link stopped");
}

/// Carries out the releases and dead letters the protocol has decided and the
/// connection did not get to.
fn settle(shared: &Shared, link: &mut Link) {
    for action in link.take_settled() {
        finish(shared, action);
    }
}

/// Carries out a release or a dead letter: the protocol's decisions that need no
/// connection (the others are the driver's, in `serve`).
fn finish(shared: &Shared, action: Action) {
    match action {
        Action::Release(token, how) => token.release(how),
        Action::DeadLetter {
            item,
            kind,
            field,
            message,
        } => dead_letter(shared, item, kind, &field, message),
        Action::Send(_) | Action::EchoRequest(_) | Action::EchoResponse(_) => {}
    }
}

/// The protocol's clock: tokio's (its paused test clock included), as a std instant.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
async fn wait_or_stop(stop: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = sleep(delay) => false,
        _ = stop.cancelled() => true,
    }
}

/// Exponential back-off with up to 50 % jitter.
fn backoff(config: &Config, failures: &mut u32) -> Duration {
    let base = (config.backoff_initial.as_millis() as u64)
        .saturating_mul(1u64 << (*failures).min(20))
        .min(config.backoff_max.as_millis() as u64);
    *failures = failures.saturating_add(1);
    let jitter = rand::rng().random_range(0..=base / 2);
    Duration::from_millis(base + jitter)
}

async fn connect(config: &Config, host: &str) -> std::io::Result<TcpStream> {
    let s = timeout(config.connect_timeout, TcpStream::connect(host))
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

/// Writes bytes that are not a notification (echoes), bounded by `limit`.
async fn write_ungated(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), String> {
    match timeout(limit, stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("write timed out (host not reading)".into()),
    }
}

/// One connection: carries out what the protocol ([`Link`]) asks for, and feeds it
/// the host's replies, the subscription's notifications and the time.
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: &Shared,
    inst: &str,
    mut stream: TcpStream,
    gate: &Gate,
    stop: &CancellationToken,
    queue: &SubscriberQueue,
    rx: &mut mpsc::Receiver<Outbound>,
    link: &mut Link,
    marks: &mut Marks,
) -> Ended {
    let ack_timeout = shared.config.ack_timeout;
    let mut reader = wire::Reader::default();
    let mut buf = vec![0u8; 8192];
    link.connected(now());
    loop {
        // Registered before the gate is read (by a write's permit or `can_take`): an
        // opening in between still wakes the loop.
        let gate_changed = gate.notified();
        tokio::pin!(gate_changed);
        gate_changed.as_mut().enable();
        while let Some(action) = link.next_action(now()) {
            match action {
                Action::Send(notice) => {
                    if let Err(e) = marks.reserve(notice.partition, notice.offset).await {
                        return Ended::Connection(e);
                    }
                    match write(gate, &mut stream, &notice.bytes, ack_timeout).await {
                        Ok(true) => {
                            marks.wrote(notice.partition, notice.offset);
                            link.written(now());
                        }
                        // The gate is closed: wait for it to change (or for the stop).
                        Ok(false) => {
                            link.not_written();
                            break;
                        }
                        Err(e) => return Ended::Connection(e),
                    }
                }
                Action::EchoRequest(bytes) => {
                    if let Err(e) = write_ungated(&mut stream, &bytes, ack_timeout).await {
                        return Ended::Connection(format!("echo write failed: {e}"));
                    }
                }
                // Answering an echo is not a notification: no gate. A host that does
                // not read its answers cannot hold the link.
                Action::EchoResponse(bytes) => {
                    if let Err(e) = write_ungated(&mut stream, &bytes, ack_timeout).await {
                        return Ended::Connection(format!("echo response write failed: {e}"));
                    }
                }
                settled @ (Action::Release(..) | Action::DeadLetter { .. }) => {
                    finish(shared, settled)
                }
            }
        }
        let can_take = link.can_take() && gate.is_open();
        let deadline = tokio::time::Instant::from_std(link.deadline());
        tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Stopped,
            reason = queue.kicked() => {
                tracing::info!(institution = %inst, %reason, "CAFIS link subscription ended by the engine");
                if let Some(item) = link.take_pending() {
                    item.token.release(Release::SubscriberGone);
                }
                return Ended::Kicked;
            }
            _ = &mut gate_changed => {}
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
                    if let Err(Dead(why)) = link.on_reply(reply, now()) {
                        return Ended::Connection(why);
                    }
                }
            }
            item = rx.recv(), if can_take => {
                let Some(item) = item else { return Ended::Kicked };
                // Flagged when it may have reached the host before: MPN's resend
                // confirmation of a payment, or a notice read back from Kafka below
                // what an earlier attachment may have written (`Marks`).
                let n = &item.notification;
                let resend = n.resent_by_mpn
                    || (item.token.replayed() && marks.maybe_sent(n.source_partition, n.source_offset));
                link.offer(item, resend);
            }
            _ = sleep_until(deadline) => {
                if let Err(Dead(why)) = link.on_timer(now()) {
                    return Ended::Connection(why);
                }
            }
        }
    }
}

fn dead_letter(shared: &Shared, item: Outbound, kind: &'static str, field: &str, message: String) {
    let n = &item.notification;
    tracing::warn!(institution = %n.institution_code, transaction_key = %n.transaction_key, %field, rule = %mpn_domain::loggable_rule(&message), "CAFIS notice dead-lettered");
    shared.backend.dead_letter(item, kind, field, message);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_with_bounded_jitter() {
        let config = Config {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1_000),
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
