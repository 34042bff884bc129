//! An institution's CAFIS-style receiving host (docs/cafis-telegram.md §9), for tests
//! and load runs of the engine's CAFIS connector.
//!
//! [`CafisHost::start`] listens on a loopback port. Every telegram is checked with the
//! `mpn-cafis` codec; echoes are answered, notices acknowledged, and the faults a real
//! host shows (slowness, transient and permanent nacks, dropped connections, silence)
//! can be switched on at start ([`CafisHostConfig::behaviour`]) or at run time
//! ([`CafisHost::update`]). Everything received is recorded, so a test can assert what
//! the connector did: the acknowledged notices in order, the duplicates, and the
//! protocol [`Violation`]s (malformed telegrams, overlapping connections, a sequence
//! reused for another transaction).
//!
//! Overlap rule: a connection becomes *active* when it carries its first notice. A
//! notice arriving while another active connection of this host is still open is an
//! overlap. Echo-only connections never count, nor does a new connection opened after
//! the old one closed. Because the host may read a connection's first notice before it
//! has read the end of the connection the centre closed just before, an overlap is
//! recorded only if the other connection is still open [`OVERLAP_GRACE`] later.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use mpn_cafis::{Body, Deframer, NackReason, Telegram, TelegramType, decode, encode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long another active connection must stay open after a notice arrived on a
/// new one before the host records an overlap.
pub const OVERLAP_GRACE: Duration = Duration::from_millis(200);

/// How the host answers. Every field can be changed while the host runs.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Delay before each answer is written. Answers stay in order, so an echo
    /// request that arrives behind delayed notices is answered late too: a slow host
    /// is slow at everything.
    pub ack_delay: Duration,
    /// Nack `T001` (host busy) every Nth notice received (counting every notice,
    /// resends included, from the host's start).
    pub transient_nack_every: Option<u64>,
    /// Nack `T001` the next K notices received, then answer normally again.
    pub transient_nack_next: u64,
    /// Nack permanently (with `permanent_reason`) every Nth notice received.
    pub permanent_nack_every: Option<u64>,
    /// Nack permanently every notice with one of these transaction keys.
    pub permanent_nack_keys: HashSet<String>,
    /// The reason of permanent nacks; `P003` (unknown customer) when `None`.
    pub permanent_reason: Option<NackReason>,
    /// After this many more notices, close the connection that carries the last one
    /// without answering it (so the centre must resend it). One-shot: it clears
    /// itself when it fires.
    pub drop_after_notices: Option<u64>,
    /// Read and record everything, answer nothing (not even echoes); answers already
    /// queued are not written either.
    pub silent: bool,
}

/// Settings of one host.
#[derive(Debug, Clone)]
pub struct CafisHostConfig {
    /// Where to listen; `127.0.0.1:0` picks a free loopback port.
    pub bind: SocketAddr,
    /// The institution this host serves: notices for another institution code are
    /// nacked `P002`. `None` accepts any.
    pub institution_code: Option<String>,
    pub behaviour: Behaviour,
}

impl Default for CafisHostConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            institution_code: None,
            behaviour: Behaviour::default(),
        }
    }
}

/// A notice as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// Connections are numbered from 1 in the order they were accepted.
    pub connection: u64,
    pub sequence: u32,
    pub transaction_key: String,
    pub resend: bool,
    pub arrived_at: Instant,
    /// `true` when this (sequence, transaction key) had arrived before.
    pub duplicate: bool,
    pub telegram: Telegram,
}

/// A notice the host acknowledged (the ack was written to the socket).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub connection: u64,
    pub sequence: u32,
    pub transaction_key: String,
}

/// Something the centre did that breaks the specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Bytes that could not be framed or decoded; `error` names the field.
    Malformed { connection: u64, error: String },
    /// A notice on `connection` while `other`, also active, was still open.
    Overlap { connection: u64, other: u64 },
    /// `sequence` arrived with `key` after it had carried `first_key`.
    SequenceConflict {
        sequence: u32,
        first_key: String,
        key: String,
    },
    /// A telegram type the centre never sends to a host (ack, nack, echo response).
    Unexpected {
        connection: u64,
        telegram_type: TelegramType,
    },
    /// The connection closed in the middle of a telegram.
    Truncated { connection: u64, bytes: usize },
}

/// Counters of the connections seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionStats {
    pub accepted: u64,
    pub open: u64,
}

#[derive(Debug, Default)]
struct State {
    behaviour: Behaviour,
    institution_code: Option<String>,
    received: Vec<Received>,
    acknowledged: Vec<Acknowledged>,
    acked_pairs: HashSet<(u32, String)>,
    /// Notices the host decided to acknowledge (a duplicate of one is acked again).
    stored: HashSet<(u32, String)>,
    /// What the host booked, by (transaction key, kind) as §7 says: a notice whose
    /// identity is booked is a duplicate whatever its sequence.
    booked: HashMap<(String, &'static str), Body>,
    /// Booked identities in booking order.
    bookings: Vec<(String, &'static str)>,
    seen_pairs: HashSet<(u32, String)>,
    key_of_sequence: HashMap<u32, String>,
    /// The highest notice sequence of the current cycle (§7: sequences wrap).
    highest_sequence: u32,
    /// Permanent nacks already given, so a resend gets the same answer.
    refused: HashMap<(u32, String), NackReason>,
    duplicates: usize,
    notices: u64,
    violations: Vec<Violation>,
    overlaps_seen: HashSet<(u64, u64)>,
    open: HashSet<u64>,
    active: HashSet<u64>,
    accepted: u64,
}

/// What the host does with one notice.
enum Decision {
    Answer(Box<Telegram>),
    Drop,
    Nothing,
}

/// A running host. Dropping it stops the host and closes its connections.
#[derive(Debug)]
pub struct CafisHost {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    /// Bumped to close every connection; dropping the sender stops everything.
    kick: watch::Sender<u64>,
}

impl CafisHost {
    /// Binds `config.bind` and starts accepting connections.
    pub async fn start(config: CafisHostConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind(config.bind).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            behaviour: config.behaviour,
            institution_code: config.institution_code,
            ..State::default()
        }));
        let (kick, kicked) = watch::channel(0);
        tokio::spawn(accept_loop(listener, state.clone(), kicked));
        Ok(Self { addr, state, kick })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes the behaviour while the host runs; takes effect from the next
    /// telegram (and, for `silent`, for answers already queued).
    pub fn update(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.lock().behaviour);
    }

    pub fn behaviour(&self) -> Behaviour {
        self.lock().behaviour.clone()
    }

    /// Closes every open connection now (the host keeps listening).
    pub fn drop_connections(&self) {
        self.kick.send_modify(|n| *n += 1);
    }

    /// Every notice received, in arrival order, resends and duplicates included.
    pub fn received(&self) -> Vec<Received> {
        self.lock().received.clone()
    }

    /// Distinct notices in the order of their first acknowledgement.
    pub fn acknowledged(&self) -> Vec<Acknowledged> {
        self.lock().acknowledged.clone()
    }

    /// What the host booked, once per (transaction key, kind), in booking order.
    pub fn bookings(&self) -> Vec<(String, &'static str)> {
        self.lock().bookings.clone()
    }

    /// Notices that arrived with a (sequence, transaction key) already received.
    pub fn duplicate_count(&self) -> usize {
        self.lock().duplicates
    }

    /// Extra copies per (sequence, transaction key), for the pairs that had any.
    pub fn duplicates(&self) -> HashMap<(u32, String), usize> {
        let mut copies = HashMap::new();
        for r in self.lock().received.iter().filter(|r| r.duplicate) {
            *copies
                .entry((r.sequence, r.transaction_key.clone()))
                .or_default() += 1;
        }
        copies
    }

    pub fn violations(&self) -> Vec<Violation> {
        self.lock().violations.clone()
    }

    pub fn connections(&self) -> ConnectionStats {
        let s = self.lock();
        ConnectionStats {
            accepted: s.accepted,
            open: s.open.len() as u64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the records half-written in a way
        // that matters to a test; keep serving them.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    kicked: watch::Receiver<u64>,
) {
    let mut stop = kicked.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let id = {
                    let mut s = lock(&state);
                    s.accepted += 1;
                    let id = s.accepted;
                    s.open.insert(id);
                    id
                };
                tokio::spawn(serve(id, stream, state.clone(), kicked.clone()));
            }
            changed = stop.changed() => if changed.is_err() { return },
        }
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One connection: reads, decides, and writes answers when they are due, in order.
async fn serve(
    id: u64,
    mut stream: TcpStream,
    state: Arc<Mutex<State>>,
    mut kicked: watch::Receiver<u64>,
) {
    kicked.mark_unchanged();
    let _ = stream.set_nodelay(true);
    let mut deframer = Deframer::new();
    let mut pending: VecDeque<(tokio::time::Instant, Telegram)> = VecDeque::new();
    let mut chunk = [0u8; 4096];
    'conn: loop {
        let due = pending.front().map(|(at, _)| *at);
        tokio::select! {
            read = stream.read(&mut chunk) => {
                let n = match read {
                    Ok(0) | Err(_) => {
                        if deframer.buffered() > 0 {
                            lock(&state).violations.push(Violation::Truncated {
                                connection: id,
                                bytes: deframer.buffered(),
                            });
                        }
                        break 'conn;
                    }
                    Ok(n) => n,
                };
                deframer.push(&chunk[..n]);
                loop {
                    let frame = match deframer.next_frame() {
                        Ok(Some(frame)) => frame,
                        Ok(None) => break,
                        Err(e) => {
                            malformed(&state, id, e.to_string());
                            break 'conn;
                        }
                    };
                    let delay = lock(&state).behaviour.ack_delay;
                    match handle(id, &frame, &state, &kicked) {
                        Decision::Answer(t) => {
                            pending.push_back((tokio::time::Instant::now() + delay, *t));
                        }
                        Decision::Drop => break 'conn,
                        Decision::Nothing => {}
                    }
                }
            }
            _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {
                let Some((_, answer)) = pending.pop_front() else { continue };
                if lock(&state).behaviour.silent {
                    continue;
                }
                // Answers are built from decoded telegrams, so they always encode.
                let bytes = encode(&answer).expect("host answers encode");
                if stream.write_all(&bytes).await.is_err() {
                    break 'conn;
                }
                if let Body::Ack(ack) = &answer.body {
                    let mut s = lock(&state);
                    let pair = (answer.header.sequence, ack.transaction_key.clone());
                    if s.acked_pairs.insert(pair) {
                        s.acknowledged.push(Acknowledged {
                            connection: id,
                            sequence: answer.header.sequence,
                            transaction_key: ack.transaction_key.clone(),
                        });
                    }
                }
            }
            // Kicked by drop_connections, or the host was dropped.
            _ = kicked.changed() => break 'conn,
        }
    }
    let mut s = lock(&state);
    s.open.remove(&id);
    s.active.remove(&id);
}

fn malformed(state: &Mutex<State>, connection: u64, error: String) {
    lock(state)
        .violations
        .push(Violation::Malformed { connection, error });
}

/// Japan time now, for the answers' `sent_at`.
fn now_jst() -> NaiveDateTime {
    (chrono::Utc::now() + chrono::Duration::hours(9)).naive_utc()
}

fn handle(
    id: u64,
    frame: &[u8],
    state: &Arc<Mutex<State>>,
    stopped: &watch::Receiver<u64>,
) -> Decision {
    let telegram = match decode(frame) {
        Ok(t) => t,
        Err(e) => {
            malformed(state, id, e.to_string());
            return format_error(frame, &e);
        }
    };
    let silent = lock(state).behaviour.silent;
    match telegram.body {
        Body::EchoRequest if silent => Decision::Nothing,
        Body::EchoRequest => telegram
            .echo_response(now_jst())
            .map_or(Decision::Nothing, |t| Decision::Answer(Box::new(t))),
        Body::PaymentNotice(_) | Body::CancellationNotice(_) => {
            notice(id, telegram, state, stopped)
        }
        Body::Ack(_) | Body::Nack(_) | Body::EchoResponse => {
            lock(state).violations.push(Violation::Unexpected {
                connection: id,
                telegram_type: telegram.telegram_type(),
            });
            Decision::Nothing
        }
    }
}

/// A telegram that frames but does not decode: nack `P001` when its header says it is
/// a notice and its sequence can be read (§8), otherwise close the connection.
fn format_error(frame: &[u8], e: &mpn_cafis::DecodeError) -> Decision {
    let is_notice = matches!(frame.get(4..6), Some(b"PN" | b"CN"));
    let sequence = frame
        .get(6..14)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| (1..=mpn_cafis::MAX_SEQUENCE).contains(s));
    let (true, Some(sequence)) = (is_notice, sequence) else {
        return Decision::Drop;
    };
    let key = frame
        .get(56..82)
        .filter(|k| k.iter().all(u8::is_ascii_digit))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let centre_id = frame
        .get(15..25)
        .filter(|k| k.iter().all(u8::is_ascii_digit))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_else(|| "0".repeat(10));
    let detail = format!(
        "FORMAT {}",
        e.field()
            .unwrap_or("TELEGRAM")
            .replace('_', " ")
            .to_uppercase()
    );
    Decision::Answer(Box::new(Telegram {
        header: mpn_cafis::Header {
            sequence,
            resend: frame.get(14) == Some(&b'1'),
            centre_id,
            sent_at: now_jst(),
        },
        body: Body::Nack(mpn_cafis::Nack {
            transaction_key: key,
            reason: NackReason::FormatError,
            detail,
        }),
    }))
}

/// The kind part of a notice's identity (§7): confirmed or preliminary, payment or
/// cancellation.
fn booking_kind(t: &Telegram) -> &'static str {
    let cancels = matches!(t.body, mpn_cafis::Body::CancellationNotice(_));
    match (t.notice().map(|n| n.kind), cancels) {
        (Some(mpn_cafis::NoticeKind::Preliminary), false) => "preliminary",
        (Some(mpn_cafis::NoticeKind::Preliminary), true) => "preliminary-cancel",
        (_, true) => "cancellation",
        _ => "confirmed",
    }
}

fn notice(
    id: u64,
    telegram: Telegram,
    state: &Arc<Mutex<State>>,
    stopped: &watch::Receiver<u64>,
) -> Decision {
    let mut s = lock(state);
    let sequence = telegram.sequence();
    let key = telegram.transaction_key().unwrap_or_default().to_owned();
    let pair = (sequence, key.clone());
    let identity = (key.clone(), booking_kind(&telegram));

    // Overlap: another active connection still open (confirmed after the grace).
    s.active.insert(id);
    for other in s.active.iter().copied().filter(|&c| c != id) {
        tokio::spawn(confirm_overlap(state.clone(), id, other, stopped.clone()));
    }

    let duplicate = !s.seen_pairs.insert(pair.clone());
    s.duplicates += usize::from(duplicate);
    s.notices += 1;
    let n = s.notices;
    s.received.push(Received {
        connection: id,
        sequence,
        transaction_key: key.clone(),
        resend: telegram.is_resend(),
        arrived_at: Instant::now(),
        duplicate,
        telegram: telegram.clone(),
    });

    if s.behaviour.silent {
        return Decision::Nothing;
    }
    if let Some(left) = s.behaviour.drop_after_notices {
        if left <= 1 {
            s.behaviour.drop_after_notices = None;
            return Decision::Drop;
        }
        s.behaviour.drop_after_notices = Some(left - 1);
    }

    let at = now_jst();
    let nack = |reason: NackReason, detail: &str| {
        telegram
            .nack(reason, detail, at)
            .map_or(Decision::Nothing, |t| Decision::Answer(Box::new(t)))
    };
    let institution = telegram.notice().map(|n| n.institution_code.clone());
    if let (Some(want), Some(got)) = (&s.institution_code, &institution)
        && want != got
    {
        return nack(
            NackReason::UnknownInstitution,
            &format!("INSTITUTION {got}"),
        );
    }
    // A sequence far below the highest seen starts a new cycle (§7): the numbers of
    // the previous one are forgotten, so a reused one is no conflict.
    if s.highest_sequence.saturating_sub(sequence) > mpn_cafis::MAX_SEQUENCE / 2 {
        s.key_of_sequence.clear();
        s.highest_sequence = sequence;
    }
    s.highest_sequence = s.highest_sequence.max(sequence);
    match s.key_of_sequence.get(&sequence) {
        Some(first) if *first != key => {
            let first_key = first.clone();
            s.violations.push(Violation::SequenceConflict {
                sequence,
                first_key,
                key,
            });
            return nack(NackReason::SequenceConflict, "SEQUENCE USED");
        }
        Some(_) => {}
        None => {
            s.key_of_sequence.insert(sequence, key.clone());
        }
    }
    if let Some(first) = s.booked.get(&identity)
        && Some(first) != Some(&telegram.body)
    {
        // Same identity, other content: not a duplicate (§7).
        return nack(NackReason::IdentityConflict, "BOOKED WITH OTHER CONTENT");
    }
    if s.stored.contains(&pair) || s.booked.contains_key(&identity) {
        // A duplicate of a stored notice is acknowledged again, never refused (§7).
        return telegram
            .ack(at)
            .map_or(Decision::Nothing, |t| Decision::Answer(Box::new(t)));
    }
    if let Some(reason) = s.refused.get(&pair) {
        return nack(reason.clone(), "REFUSED BEFORE");
    }
    let b = &s.behaviour;
    let permanent = b.permanent_nack_keys.contains(&key)
        || b.permanent_nack_every
            .is_some_and(|every| every > 0 && n.is_multiple_of(every));
    if permanent {
        let reason = b
            .permanent_reason
            .clone()
            .unwrap_or(NackReason::UnknownCustomer);
        s.refused.insert(pair, reason.clone());
        return nack(reason, "REFUSED");
    }
    let transient = b.transient_nack_next > 0
        || b.transient_nack_every
            .is_some_and(|every| every > 0 && n.is_multiple_of(every));
    if transient {
        s.behaviour.transient_nack_next = s.behaviour.transient_nack_next.saturating_sub(1);
        return nack(NackReason::HostBusy, "BUSY");
    }
    s.stored.insert(pair);
    if !s.booked.contains_key(&identity) {
        s.booked.insert(identity.clone(), telegram.body.clone());
        s.bookings.push(identity);
    }
    telegram
        .ack(at)
        .map_or(Decision::Nothing, |t| Decision::Answer(Box::new(t)))
}

async fn confirm_overlap(
    state: Arc<Mutex<State>>,
    connection: u64,
    other: u64,
    mut stopped: watch::Receiver<u64>,
) {
    tokio::select! {
        _ = tokio::time::sleep(OVERLAP_GRACE) => {}
        // The host is gone: nobody will read the record.
        _ = stopped.wait_for(|_| false) => return,
    }
    let mut s = lock(&state);
    if s.open.contains(&other) && s.overlaps_seen.insert((connection, other)) {
        s.violations.push(Violation::Overlap { connection, other });
    }
}
