//! Institution sessions: one actix actor per institution, created on its first event
//! and found through the [`Router`]'s DashMap.
//!
//! A session deduplicates by notification id (bounded window), builds the
//! notification once and offers it to every subscriber queue attached to its
//! institution. Offering never blocks, so one slow subscriber cannot hold up the
//! institution, its partition or anyone else.
//!
//! Supervision: actix's `Supervisor` does not survive a panic inside a handler, so
//! the session catches panics at the handler boundary itself. A panic *restarts* the
//! session (its state is rebuilt from scratch), then the same event is retried after
//! an exponential back-off, during which the session's mailbox waits (other sessions
//! run on). More than `restart_budget` restarts within `restart_window_ms` and the
//! offending event is dead-lettered instead, and the session carries on with the next
//! one. Nothing is lost on the way: the event keeps its offset hold throughout.

use std::collections::{HashMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use actix::dev::SendError;
use actix::prelude::*;
use actix::{ArbiterHandle, fut};
use dashmap::DashMap;
use prost::Message as _;

use crate::config::SessionConfig;
use crate::dlq::{DeadLetter, DeadLetters};
use crate::domain::{ContentType, Event, InstitutionCode, NotificationId};
use crate::offsets::Hold;
use crate::subscriptions::Hub;

/// A validated event on its way to its institution's session.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Ingested {
    pub event: Event,
    pub partition: i32,
    pub offset: i64,
    pub hold: Hold,
    /// Re-injected by an operator (`mpn-reinjected-from`): offered even if its id
    /// is in the dedupe window, since the operator asked for it to be delivered.
    pub reinjected: bool,
}

/// Remembers the last `capacity` notification ids, with the record each came in.
#[derive(Debug)]
struct Dedupe {
    /// id -> the record it first came in: (partition, offset, generation).
    seen: HashMap<NotificationId, (i32, i64, u64), foldhash::fast::RandomState>,
    order: VecDeque<NotificationId>,
    capacity: usize,
}

impl Dedupe {
    fn new(capacity: usize) -> Self {
        Self {
            seen: HashMap::default(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// True if `id` is to be offered: new, or the very record it first came in
    /// consumed again in a later assignment of its partition (a partition assigned
    /// back to this replica is consumed again from its committed offset, and what was
    /// offered before may never have been acknowledged: offered again, its offset
    /// waits for the new delivery instead of being committed past it). False for
    /// another record with the same id (MPN's resend confirmation of a payment), and
    /// for the same record within one assignment. A `reinjected` record (an
    /// operator's re-inject) is always offered, and from then on is the record its id
    /// stands for.
    fn insert(
        &mut self,
        id: &NotificationId,
        partition: i32,
        offset: i64,
        generation: u64,
        reinjected: bool,
    ) -> bool {
        if let Some(first) = self.seen.get_mut(id) {
            if reinjected {
                *first = (partition, offset, generation);
                return true;
            }
            let again = (first.0, first.1) == (partition, offset) && first.2 != generation;
            if again {
                first.2 = generation;
            }
            return again;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen
            .insert(id.clone(), (partition, offset, generation));
        self.order.push_back(id.clone());
        true
    }
}

/// Everything a restart throws away.
#[derive(Debug)]
struct State {
    dedupe: Dedupe,
}

pub(crate) struct Session {
    code: InstitutionCode,
    hub: Arc<Hub>,
    dead_letters: DeadLetters,
    config: Arc<SessionConfig>,
    state: State,
    restarts: VecDeque<Instant>,
    /// Events done with (offered, or dead-lettered): the router evicts a session only
    /// once it has done with everything it was sent.
    processed: Arc<AtomicU64>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

impl Actor for Session {
    type Context = Context<Self>;
}

impl Session {
    fn new(
        code: InstitutionCode,
        hub: Arc<Hub>,
        dead_letters: DeadLetters,
        config: Arc<SessionConfig>,
        processed: Arc<AtomicU64>,
    ) -> Self {
        let state = State {
            dedupe: Dedupe::new(config.dedupe_window),
        };
        Self {
            code,
            hub,
            dead_letters,
            config,
            state,
            restarts: VecDeque::new(),
            processed,
        }
    }

    /// The session's work for one event. Runs inside `catch_unwind`.
    fn process(&mut self, msg: &Ingested) {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::before_process(&msg.event);

        let id = msg.event.notification_id();
        if msg.hold.is_copy() {
            metrics::counter!(crate::telemetry::metric::SESSION_DUPLICATES_DROPPED_TOTAL)
                .increment(1);
            return;
        }
        if !self.state.dedupe.insert(
            &id,
            msg.partition,
            msg.offset,
            msg.hold.generation(),
            msg.reinjected,
        ) {
            metrics::counter!(crate::telemetry::metric::SESSION_DUPLICATES_DROPPED_TOTAL)
                .increment(1);
            return;
        }
        let Some(subscribers) = self.hub.subscribers(&self.code) else {
            return;
        };
        // Built once, for the first subscriber served live, and shared by all.
        let mut notification = None;
        let mut id = Some(id);
        for s in subscribers.iter() {
            // Partitions a subscription is catching up on are served by its reader.
            s.offer_event(
                msg.partition,
                msg.offset,
                &msg.hold,
                &mut notification,
                || {
                    let id = id.take().unwrap_or_else(|| msg.event.notification_id());
                    msg.event
                        .to_notification_with(id, msg.partition, msg.offset)
                        .into()
                },
            );
        }
    }

    fn run(&mut self, msg: Ingested, ctx: &mut Context<Self>) {
        let outcome = catch_unwind(AssertUnwindSafe(|| self.process(&msg)));
        let Err(panic) = outcome else {
            msg.hold.complete();
            self.processed.fetch_add(1, Ordering::Release);
            return;
        };
        let reason = panic_message(&panic);
        // Restart: rebuild the state from scratch; the actor and its mailbox survive.
        self.state = State {
            dedupe: Dedupe::new(self.config.dedupe_window),
        };
        let now = Instant::now();
        let window = self.config.restart_window;
        self.restarts.retain(|t| now.duration_since(*t) < window);
        self.restarts.push_back(now);
        let restarts = self.restarts.len() as u32;
        metrics::counter!(
            crate::telemetry::metric::SESSION_RESTARTS_TOTAL,
            &mpn_delivery::labels::institution(&self.code.to_string())
        )
        .increment(1);

        if restarts > self.config.restart_budget {
            tracing::error!(
                institution = %self.code,
                transaction_key = %msg.event.transaction_key,
                partition = msg.partition,
                offset = msg.offset,
                %reason,
                "session over its restart budget; dead-lettering the event"
            );
            metrics::counter!(crate::telemetry::metric::SESSION_POISON_EVENTS_TOTAL).increment(1);
            self.dead_letters.send(DeadLetter {
                key: Some(self.code.as_str().as_bytes().to_vec()),
                payload: msg.event.to_wire().encode_to_vec(),
                content_type: Some(ContentType::PROTOBUF.as_bytes().to_vec()),
                kind: "session_panic",
                field: "session".into(),
                message: format!(
                    "institution session panicked {restarts} times within {}ms: {reason}",
                    self.config.restart_window.as_millis()
                ),
                partition: msg.partition,
                offset: msg.offset,
                hold: msg.hold.into(),
            });
            self.processed.fetch_add(1, Ordering::Release);
            return;
        }
        let delay = self.config.backoff(restarts);
        tracing::warn!(
            institution = %self.code,
            restart = restarts,
            backoff_ms = delay.as_millis() as u64,
            %reason,
            "session panicked; restarting and retrying the event"
        );
        // `wait` pauses this actor's mailbox until the retry has run.
        ctx.wait(
            fut::wrap_future(tokio::time::sleep(delay))
                .map(move |_, act: &mut Self, ctx| act.run(msg, ctx)),
        );
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Stops an idle session (see [`Router::evict_idle`]); sent after every event routed
/// to it, so it stops only once those are processed.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Retire;

impl Handler<Retire> for Session {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Ingested> for Session {
    type Result = ();

    fn handle(&mut self, msg: Ingested, ctx: &mut Context<Self>) {
        self.run(msg, ctx);
    }
}

#[derive(Debug)]
struct Routed {
    at: Instant,
    sent: Arc<AtomicU64>,
    processed: Arc<AtomicU64>,
}

/// What the admin API shows of a session; the router keeps one per live session.
#[derive(Debug, Clone)]
pub(crate) struct SessionView {
    pub(crate) addr: Addr<Session>,
    pub(crate) started: std::time::SystemTime,
    /// Events routed to it, and how many it has done with.
    pub(crate) sent: Arc<AtomicU64>,
    pub(crate) processed: Arc<AtomicU64>,
}

/// The live sessions by institution, shared by the router and the admin API.
pub(crate) type SessionDirectory = Arc<DashMap<InstitutionCode, SessionView>>;

/// Finds or creates the session of an institution. Sessions are spread round-robin
/// over the arbiter threads.
pub(crate) struct Router {
    sessions: DashMap<InstitutionCode, Addr<Session>, foldhash::fast::RandomState>,
    directory: SessionDirectory,
    /// What each session was sent: when last, how many, and how many it has done.
    last_routed: HashMap<InstitutionCode, Routed, foldhash::fast::RandomState>,
    arbiters: Vec<ArbiterHandle>,
    next: usize,
    hub: Arc<Hub>,
    dead_letters: DeadLetters,
    config: Arc<SessionConfig>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Router {
    pub(crate) fn new(
        arbiters: Vec<ArbiterHandle>,
        hub: Arc<Hub>,
        dead_letters: DeadLetters,
        config: SessionConfig,
        directory: SessionDirectory,
    ) -> Self {
        Self {
            sessions: DashMap::default(),
            directory,
            last_routed: HashMap::default(),
            arbiters,
            next: 0,
            hub,
            dead_letters,
            config: Arc::new(config),
        }
    }

    /// Sends an event to its institution's session, starting the session if needed.
    pub(crate) fn route(&mut self, msg: Ingested) {
        let code = msg.event.institution;
        let existing = self.sessions.get(&code).map(|a| a.clone());
        let addr = match existing {
            Some(a) if a.connected() => a,
            existing => {
                if existing.is_some() {
                    // Only a panic that escaped the handler boundary can stop a
                    // session; recreate it rather than drop its events.
                    metrics::counter!(crate::telemetry::metric::SESSION_RESPAWNS_TOTAL)
                        .increment(1);
                    tracing::error!(institution = %code, "session had stopped; starting a new one");
                }
                self.spawn(code)
            }
        };
        self.sent_to(code);
        // A session that stopped between the check above and now gives the message
        // back: it goes to a new session instead of being dropped with its hold (a
        // dropped base hold is never marked offered, which would pin every durable
        // cursor of the partition until a restart).
        match addr.try_send(msg) {
            Ok(()) => {}
            // The mailbox's soft limit: sessions are never refused events.
            Err(SendError::Full(msg)) => addr.do_send(msg),
            Err(SendError::Closed(msg)) => {
                metrics::counter!(crate::telemetry::metric::SESSION_RESPAWNS_TOTAL).increment(1);
                tracing::error!(institution = %code, "session stopped while an event was routed to it; starting a new one");
                let addr = self.spawn(code);
                self.sent_to(code);
                addr.do_send(msg);
            }
        }
    }

    fn sent_to(&mut self, code: InstitutionCode) {
        if let Some(r) = self.last_routed.get_mut(&code) {
            r.at = Instant::now();
            r.sent.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn spawn(&mut self, code: InstitutionCode) -> Addr<Session> {
        let arbiter = &self.arbiters[self.next % self.arbiters.len()];
        self.next = self.next.wrapping_add(1);
        let (hub, dl, config) = (
            self.hub.clone(),
            self.dead_letters.clone(),
            self.config.clone(),
        );
        let processed = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(AtomicU64::new(0));
        self.last_routed.insert(
            code,
            Routed {
                at: Instant::now(),
                sent: sent.clone(),
                processed: processed.clone(),
            },
        );
        let view_processed = processed.clone();
        let addr = Session::start_in_arbiter(arbiter, move |_| {
            Session::new(code, hub, dl, config, processed)
        });
        self.sessions.insert(code, addr.clone());
        self.directory.insert(
            code,
            SessionView {
                addr: addr.clone(),
                started: std::time::SystemTime::now(),
                sent,
                processed: view_processed,
            },
        );
        metrics::gauge!(crate::telemetry::metric::SESSIONS).set(self.sessions.len() as f64);
        addr
    }

    pub(crate) fn len(&self) -> usize {
        self.sessions.len()
    }

    /// How often [`Self::evict_idle`] is due (it also reports `mpn_sessions`).
    pub(crate) fn sweep_interval(&self) -> std::time::Duration {
        let idle = self.config.idle_evict_after.as_millis() as u64;
        let every = if idle == 0 {
            1_000
        } else {
            (idle / 4).clamp(50, 1_000)
        };
        std::time::Duration::from_millis(every)
    }

    /// Stops the sessions that got no event for `sessions.idle_evict_after_ms` and
    /// have done with every event they were sent (a session retrying an event after a
    /// panic is not idle, however long ago its last event came). Each is told to
    /// retire and forgotten here at once, so the institution's next event starts a new
    /// session, which therefore never runs beside its predecessor. What it forgets is its
    /// dedupe window (an MPN resend confirmation arriving later is notified again, with
    /// the same id). Returns how many were stopped.
    pub(crate) fn evict_idle(&mut self) -> usize {
        metrics::gauge!(crate::telemetry::metric::SESSIONS).set(self.sessions.len() as f64);
        let idle = self.config.idle_evict_after;
        if idle.is_zero() {
            return 0;
        }
        let now = Instant::now();
        let gone: Vec<InstitutionCode> = self
            .last_routed
            .iter()
            .filter(|&(c, r)| {
                let done = now.duration_since(r.at) >= idle
                    && r.processed.load(Ordering::Acquire) == r.sent.load(Ordering::Relaxed);
                // A session whose actor died (a panic outside its handler) is gone
                // already; the next event starts a new one anyway.
                let dead = self.sessions.get(c).is_none_or(|a| !a.connected());
                done || dead
            })
            .map(|(&c, _)| c)
            .collect();
        for code in &gone {
            self.last_routed.remove(code);
            self.directory.remove(code);
            if let Some((_, addr)) = self.sessions.remove(code) {
                addr.do_send(Retire);
            }
            metrics::counter!(
                crate::telemetry::metric::SESSIONS_EVICTED_TOTAL,
                &mpn_delivery::labels::institution(&code.to_string())
            )
            .increment(1);
        }
        if !gone.is_empty() {
            metrics::gauge!(crate::telemetry::metric::SESSIONS).set(self.sessions.len() as f64);
            tracing::debug!(sessions = gone.len(), "idle sessions stopped");
        }
        gone.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_window_is_bounded() {
        let key = |n: u32| {
            crate::domain::TransactionKey::from_parts(
                "1",
                chrono::NaiveDate::from_ymd_opt(2026, 5, 1).unwrap(),
                n,
            )
            .unwrap()
        };
        let id = |n| NotificationId::derive(&key(n), crate::domain::EventKind::Payment);
        let mut d = Dedupe::new(2);
        assert!(d.insert(&id(9), 0, 1, 0, false));
        assert!(
            !d.insert(&id(9), 0, 2, 0, false),
            "another record with the id is dropped"
        );
        assert!(d.insert(&id(9), 0, 3, 0, true), "a re-injected one is not");
        assert!(
            !d.insert(&id(9), 0, 3, 0, false),
            "and it is the record the id stands for now"
        );
        let mut d = Dedupe::new(2);
        assert!(d.insert(&id(1), 0, 10, 0, false));
        assert!(
            !d.insert(&id(1), 0, 11, 0, false),
            "another record with the id"
        );
        assert!(
            !d.insert(&id(1), 0, 10, 0, false),
            "the same record in one assignment"
        );
        assert!(
            d.insert(&id(1), 0, 10, 1, false),
            "the same record consumed again after a re-assignment"
        );
        assert!(
            !d.insert(&id(1), 0, 10, 1, false),
            "and only once per assignment"
        );
        assert!(d.insert(&id(2), 0, 12, 1, false));
        assert!(d.insert(&id(3), 0, 13, 1, false));
        assert_eq!(d.seen.len(), 2);
        assert!(
            d.insert(&id(1), 0, 11, 1, false),
            "evicted ids are forgotten"
        );
    }
}
