//! The subscriber registry: which subscriptions are attached to which institution.
//! Implements the delivery contract's [`Backend`] (gRPC) and [`InternalBackend`] (the
//! engine's own subscribers): authentication, the tenancy check (a
//! subscriber is attached only to institutions its credential is granted) and the
//! start position of durable subscriptions all live here, so no connector can bypass
//! them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dashmap::DashMap;
use mpn_delivery::{
    AttachRequest, Attachment, Backend, BackendError, Caller, EndReason, InternalBackend,
    Principal, StartFrom, SubscriberQueue,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::catchup;
use super::state::{GoLive, SubBase, SubState};
use crate::audit::{Audit, AuditEvent, AuditRecord};
use crate::auth::{Authenticator, Locked, LoginGuard, Refusal};
use crate::cursors::{CursorStore, SubscriberKey};
use crate::domain::InstitutionCode;
use crate::offsets::OffsetTracker;
use crate::runtime::Shutdown;
use crate::telemetry::metric;

type Registry = DashMap<InstitutionCode, Arc<[Arc<SubState>]>, foldhash::fast::RandomState>;

/// What the hub needs to start durable subscriptions.
#[derive(Debug, Clone)]
pub struct DurableSupport {
    pub kafka: mpn_kafka::Config,
    pub partitions: usize,
    pub cursors: Arc<CursorStore>,
    pub go_live: mpsc::Sender<GoLive>,
    /// Ingest's offsets: bounds the cursors of live partitions.
    pub tracker: OffsetTracker,
    pub runtime: tokio::runtime::Handle,
    /// Where the catch-up readers are spawned (tracked until shutdown).
    pub shutdown: Shutdown,
    pub limits: Limits,
    /// Where an internal subscriber (a CAFIS link, a history writer) without a
    /// cursor starts, per partition: the group's
    /// committed offsets read when this replica started, before its ingest consumed
    /// anything (see [`group_start`]). Empty: read them at attach time.
    pub link_start: Vec<i64>,
}

/// What one credential may hold (internal subscribers, the CAFIS links, are exempt).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open subscriptions at a time (`grpc.max_streams_per_credential`).
    pub streams_per_credential: usize,
    /// Durable subscriber ids with stored cursors (`cursors.max_ids_per_credential`).
    pub ids_per_credential: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            streams_per_credential: 64,
            ids_per_credential: 256,
        }
    }
}

#[derive(Debug)]
pub struct Hub {
    /// The credential table; replaced whole on reload.
    auth: RwLock<Arc<Authenticator>>,
    /// Failure counts and lockouts (kept across reloads).
    guard: LoginGuard,
    audit: Audit,
    registry: Arc<Registry>,
    /// Attached durable subscriptions by identity (one connection per identity).
    durable: Arc<DashMap<SubscriberKey, Arc<SubState>>>,
    next_id: AtomicU64,
    support: DurableSupport,
    /// Open subscriptions per credential (`<institution>/<login id>`).
    streams: Arc<DashMap<String, usize>>,
    /// How each attached outside subscription logged in, by subscription id: what a
    /// credentials reload checks.
    credential_of: Arc<DashMap<u64, Login>>,
    /// Bumped by every [`Hub::replace_authenticator`] (under the table's write lock).
    generation: AtomicU64,
}

/// How a subscription logged in: its credential and, for a certificate login, the
/// certificate's names.
#[derive(Debug, Clone)]
struct Login {
    institution: String,
    login_id: String,
    certificate_names: Option<Vec<String>>,
}

/// Where a login stands with a credential table.
#[derive(Debug, PartialEq)]
enum Standing {
    Valid,
    /// The credential is gone (`removed`), or the certificate's names no longer
    /// identify it (`certificate_removed`).
    Removed(&'static str),
    /// These subscribed institutions are no longer granted (sorted).
    Revoked(Vec<String>),
}

/// Whether `login`, subscribed to `institutions`, may go on under `auth`.
fn standing<'a>(
    auth: &Authenticator,
    login: &Login,
    institutions: impl Iterator<Item = &'a InstitutionCode>,
) -> Standing {
    let Some(granted) = auth.granted(&login.institution, &login.login_id) else {
        return Standing::Removed("removed");
    };
    if let Some(names) = &login.certificate_names {
        let same = auth
            .by_certificate(names)
            .is_ok_and(|p| Authenticator::same_credential(&p, &login.institution, &login.login_id));
        if !same {
            return Standing::Removed("certificate_removed");
        }
    }
    let mut lost: Vec<String> = institutions
        .map(ToString::to_string)
        .filter(|c| !granted.contains(c))
        .collect();
    if lost.is_empty() {
        Standing::Valid
    } else {
        lost.sort();
        lost.dedup();
        Standing::Revoked(lost)
    }
}

impl Hub {
    /// A hub with the default login protection and no audit trail; see
    /// [`Hub::with_login_protection`].
    pub fn new(auth: Authenticator, support: DurableSupport) -> Self {
        Self {
            auth: RwLock::new(Arc::new(auth)),
            guard: LoginGuard::new(&crate::auth::AuthConfig::default()),
            audit: Audit::disabled(),
            registry: Arc::default(),
            durable: Arc::default(),
            next_id: AtomicU64::new(1),
            support,
            streams: Arc::default(),
            credential_of: Arc::default(),
            generation: AtomicU64::new(0),
        }
    }

    /// Puts `auth` in force (a credentials reload). Subscriptions of a credential it
    /// no longer has, or of a certificate login whose names no longer identify their
    /// credential, end with [`EndReason::CredentialRemoved`]; those subscribed to
    /// institutions it no longer grants, with [`EndReason::GrantsRevoked`]. Each is
    /// audited (`credential_removed`). Returns how many subscriptions were ended.
    ///
    /// The scan runs under the table's write lock, and [`Hub::attach`] checks a new
    /// subscription against the table in force after registering it, under the read
    /// lock: whichever comes second sees the other, so a login made with the old
    /// table cannot attach past a reload.
    pub fn replace_authenticator(&self, auth: Authenticator) -> usize {
        let auth = Arc::new(auth);
        let mut table = self.auth.write().unwrap_or_else(|p| p.into_inner());
        *table = auth.clone();
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut ended = 0;
        for sub in self.all() {
            let Some(login) = self.credential_of.get(&sub.id).map(|e| e.value().clone()) else {
                continue;
            };
            if self.end_if_invalid(&auth, &login, &sub) {
                ended += 1;
            }
        }
        drop(table);
        ended
    }

    /// How many credential tables have been put in force since start.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks `sub` (logged in as `login`) against `auth`; when it may not go on, its
    /// end is logged, audited and the subscription kicked. Returns whether it ended.
    fn end_if_invalid(&self, auth: &Authenticator, login: &Login, sub: &SubState) -> bool {
        let (institution, login_id) = (&login.institution, &login.login_id);
        let record = |reason: &str, lost: &[String]| {
            AuditRecord::new(AuditEvent::CredentialRemoved, institution, login_id, None)
                .institutions(lost)
                .subscriber_id(
                    sub.key
                        .as_ref()
                        .and_then(|k| k.as_str().rsplit('/').next())
                        .unwrap_or(""),
                )
                .reason(reason)
        };
        match standing(auth, login, sub.institutions.iter()) {
            Standing::Valid => false,
            Standing::Removed(reason) => {
                let mut all: Vec<String> =
                    sub.institutions.iter().map(ToString::to_string).collect();
                all.sort();
                tracing::warn!(%institution, %login_id, subscriber = %sub.name, reason, "credential removed: its subscription ends");
                self.audit.record(record(reason, &all));
                sub.queue.kick(EndReason::CredentialRemoved);
                true
            }
            Standing::Revoked(lost) => {
                tracing::warn!(%institution, %login_id, subscriber = %sub.name, lost = ?lost, "grants revoked: the subscription ends");
                self.audit.record(record("grants_revoked", &lost));
                sub.queue.kick(EndReason::GrantsRevoked(lost));
                true
            }
        }
    }

    /// Login protection by `guard`, audit records to `audit`.
    pub fn with_login_protection(mut self, guard: LoginGuard, audit: Audit) -> Self {
        self.guard = guard;
        self.audit = audit;
        self
    }

    /// The credential table in force.
    pub fn authenticator(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The audit trail (the engine's own records, e.g. of a reload).
    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The subscriptions attached to `code` right now (a cheap snapshot).
    pub fn subscribers(&self, code: &InstitutionCode) -> Option<Arc<[Arc<SubState>]>> {
        self.registry.get(code).map(|e| e.value().clone())
    }

    /// Number of attached (institution, subscription) pairs.
    pub fn attachments(&self) -> usize {
        self.registry.iter().map(|e| e.value().len()).sum()
    }

    /// Every attached subscription, once.
    pub fn all(&self) -> Vec<Arc<SubState>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for e in self.registry.iter() {
            for s in e.value().iter() {
                if seen.insert(s.id) {
                    out.push(s.clone());
                }
            }
        }
        out
    }

    /// Partitions are being revoked (called before ingest forgets them): durable
    /// subscriptions served live on them go back to catch-up from where they may
    /// have missed something (their lowest unacknowledged or unoffered offset), so
    /// they keep receiving whether the partition comes back or moves to another
    /// replica, and are handed to the live path again once it is consumed here.
    pub fn partitions_revoking(&self, partitions: &[i32]) {
        for s in self.all() {
            for &p in partitions {
                s.revoked(p);
            }
        }
    }

    /// Partitions moved away from this replica: ephemeral subscriptions (live on
    /// every partition, with no cursor to be served from) would silently stop
    /// receiving, so they are closed and reconnect.
    pub fn partitions_revoked(&self, partitions: &[i32]) {
        for s in self.all() {
            if partitions.iter().any(|&p| s.live_on(p)) {
                s.queue.kick(EndReason::PartitionsMoved);
            }
        }
    }

    /// The cursor table (CAFIS links keep their "may have sent" marks there).
    pub fn cursor_store(&self) -> &Arc<CursorStore> {
        &self.support.cursors
    }

    /// Writes every durable cursor now (shutdown, tests).
    pub async fn flush_cursors(&self) -> crate::error::Result<usize> {
        self.support.cursors.flush().await
    }

    /// Where a durable subscription starts, per partition. A first position (an id
    /// never seen, or an explicit `start_from`) is written to the cursor topic before
    /// this returns, so the subscriber is told `Subscribed` only once it is durable.
    /// An id is taken as never seen only after a read barrier on the cursor topic
    /// (another replica may have just written its first position). A never-seen
    /// internal subscriber (a CAFIS link) starts at the group's committed position,
    /// not at "now": records consumed and committed before it attached must not
    /// bypass it; a gRPC subscriber starts at "now".
    fn start_positions(
        &self,
        key: &SubscriberKey,
        req: &AttachRequest,
        institutions: &[String],
        internal: bool,
    ) -> Result<Vec<i64>, BackendError> {
        let s = &self.support;
        let kafka_failed = |e: rdkafka::error::KafkaError| unavailable("reading positions", e);
        let consumer: BaseConsumer = s.kafka.consumer().create().map_err(kafka_failed)?;
        let topic = &s.kafka.input_topic;
        let timeout = Duration::from_secs(10);
        let mut low = Vec::with_capacity(s.partitions);
        let mut high = Vec::with_capacity(s.partitions);
        for p in 0..s.partitions as i32 {
            let (l, h) = consumer
                .fetch_watermarks(topic, p, timeout)
                .map_err(kafka_failed)?;
            low.push(l);
            high.push(h);
        }
        let unknown = |v| BackendError::InvalidArgument(format!("start_from: unknown value {v}"));
        let start = match req.start_from {
            StartFrom::Unknown(v) => return Err(unknown(v)),
            known => known,
        };
        let mut stored = s.cursors.get(key, s.partitions);
        if start == StartFrom::Cursor && stored.iter().all(Option::is_none) {
            s.runtime
                .block_on(s.cursors.sync())
                .map_err(|e| unavailable("reading the cursor topic", format!("{e:#}")))?;
            stored = s.cursors.get(key, s.partitions);
        }
        let limit = s.limits.ids_per_credential;
        if !internal
            && stored.iter().all(Option::is_none)
            && s.cursors.ids_of_credential(key) >= limit
        {
            return Err(BackendError::ResourceExhausted(format!(
                "login {} already keeps {limit} durable subscriber ids \
                 (cursors.max_ids_per_credential); reuse one of them — unused ids \
                 expire after cursors.expire_after_hours",
                key.credential_prefix().trim_end_matches('/')
            )));
        }
        let positions = match start {
            StartFrom::Cursor if stored.iter().all(Option::is_none) => {
                if internal && s.link_start.len() == s.partitions {
                    s.link_start
                        .iter()
                        .zip(&low)
                        .map(|(&c, &l)| c.max(l))
                        .collect()
                } else if internal {
                    committed_or(&consumer, topic, &low, timeout).map_err(kafka_failed)?
                } else {
                    high.clone()
                }
            }
            StartFrom::Cursor => {
                // Cursors are per partition, not per institution: resuming them for
                // another set would skip the added institutions' records below them.
                let mut requested = institutions.to_vec();
                requested.sort();
                requested.dedup();
                let requested = requested.join(",");
                let narrower = |stored: &str| {
                    requested
                        .split(',')
                        .all(|c| stored.split(',').any(|s| s == c))
                };
                let store_set = || {
                    s.runtime
                        .block_on(s.cursors.persist_institutions(key, institutions))
                        .map_err(|e| unavailable("storing the institution set", format!("{e:#}")))
                };
                match s.cursors.institutions(key) {
                    // A subset resumes safely: below the cursor, everything of those
                    // institutions was delivered. Cursors stored before sets were kept
                    // adopt this one.
                    Some(stored_set) if stored_set != requested && narrower(&stored_set) => {
                        store_set()?
                    }
                    None => store_set()?,
                    Some(stored_set) if stored_set != requested => {
                        return Err(BackendError::FailedPrecondition(format!(
                            "subscriber_id {key} has cursors for institutions [{stored_set}], \
                             not the requested [{requested}]; resume with the same institutions, \
                             use another subscriber_id, or choose start_from explicitly \
                             (START_FROM_TIME, START_FROM_EARLIEST or START_FROM_NOW) to start \
                             this set afresh"
                        )));
                    }
                    Some(_) => {}
                }
                let expired = stored
                    .iter()
                    .zip(&low)
                    .any(|(c, &l)| c.is_some_and(|c| c < l));
                if expired {
                    return Err(BackendError::OutOfRange {
                        message: format!(
                            "the stored cursor of {} is older than the input topic's retention; \
                             resubscribe with START_FROM_EARLIEST or START_FROM_TIME",
                            key
                        ),
                        earliest: low
                            .iter()
                            .enumerate()
                            .map(|(p, &o)| (p as i32, o))
                            .collect(),
                    });
                }
                // A partition without a cursor (added later) is read from its start.
                stored
                    .iter()
                    .zip(&low)
                    .map(|(c, &l)| c.unwrap_or(l))
                    .collect()
            }
            StartFrom::Now => high.clone(),
            StartFrom::Earliest => low.clone(),
            StartFrom::Unknown(v) => return Err(unknown(v)),
            StartFrom::Time(start_time_ms) => {
                if start_time_ms <= 0 {
                    return Err(BackendError::InvalidArgument(
                        "start_time_ms: must be a positive Unix time in milliseconds".into(),
                    ));
                }
                let mut tpl = TopicPartitionList::new();
                for p in 0..s.partitions as i32 {
                    tpl.add_partition_offset(topic, p, Offset::Offset(start_time_ms))
                        .map_err(kafka_failed)?;
                }
                let found = consumer
                    .offsets_for_times(tpl, timeout)
                    .map_err(kafka_failed)?;
                (0..s.partitions)
                    .map(
                        |p| match found.find_partition(topic, p as i32).map(|e| e.offset()) {
                            Some(Offset::Offset(o)) => o,
                            _ => high[p],
                        },
                    )
                    .collect()
            }
        };
        if start != StartFrom::Cursor || stored.iter().any(Option::is_none) {
            // A connection of this identity still open here must not overwrite the
            // new position with its own progress (it is replaced below).
            let old = self.durable.get(key).map(|e| e.value().clone());
            if let Some(old) = &old {
                old.supersede(true);
            }
            if let Err(e) = s
                .runtime
                .block_on(s.cursors.persist(key, institutions, &positions))
            {
                // Refused: the older connection goes on as it was.
                if let Some(old) = &old {
                    old.supersede(false);
                }
                return Err(unavailable("storing the first position", format!("{e:#}")));
            }
        }
        Ok(positions)
    }
}

/// What a client is told when Kafka fails under its call. The broker's text (topic
/// names, broker addresses, librdkafka's wording) is for the operator: logged here,
/// never returned to the client.
pub(crate) const UNAVAILABLE: &str = "temporarily unavailable; retry";

fn unavailable(what: &str, detail: impl std::fmt::Display) -> BackendError {
    tracing::warn!(error = %detail, "Kafka failed while attaching a subscriber ({what})");
    BackendError::Unavailable(UNAVAILABLE.into())
}

/// The engine group's committed offset of each of `partitions` partitions (the low
/// watermark where none is): read at start-up, before ingest consumes, it is the
/// first position of a CAFIS link that has no cursor yet. Read later, ingest could
/// already have committed records the new link was never offered.
pub fn group_start(
    kafka: &mpn_kafka::Config,
    partitions: usize,
    timeout: Duration,
) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let consumer: BaseConsumer = kafka.consumer().create()?;
    let topic = &kafka.input_topic;
    let mut low = Vec::with_capacity(partitions);
    for p in 0..partitions as i32 {
        low.push(consumer.fetch_watermarks(topic, p, timeout)?.0);
    }
    committed_or(&consumer, topic, &low, timeout)
}

/// The engine group's committed offset of each partition; `low` where none is.
fn committed_or(
    consumer: &BaseConsumer,
    topic: &str,
    low: &[i64],
    timeout: Duration,
) -> Result<Vec<i64>, rdkafka::error::KafkaError> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..low.len() as i32 {
        tpl.add_partition(topic, p);
    }
    let got = consumer.committed_offsets(tpl, timeout)?;
    Ok(low
        .iter()
        .enumerate()
        .map(
            |(p, &l)| match got.find_partition(topic, p as i32).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o.max(l),
                _ => l,
            },
        )
        .collect())
}

/// Detaches a subscription from every institution when dropped.
struct Detach {
    registry: Arc<Registry>,
    credential_of: Arc<DashMap<u64, Login>>,
    durable: Arc<DashMap<SubscriberKey, Arc<SubState>>>,
    sub: Arc<SubState>,
    _slot: Option<StreamSlot>,
}

/// One of a credential's open subscriptions; given back when dropped.
struct StreamSlot {
    streams: Arc<DashMap<String, usize>>,
    credential: String,
}

impl StreamSlot {
    /// `replacing`: a durable id reconnecting while its older connection is still
    /// open here (it is about to be replaced) is not refused for it.
    fn take(
        streams: &Arc<DashMap<String, usize>>,
        credential: String,
        limit: usize,
        replacing: bool,
    ) -> Result<Self, BackendError> {
        let mut open = streams.entry(credential.clone()).or_insert(0);
        if *open >= limit && !replacing {
            return Err(BackendError::ResourceExhausted(format!(
                "login {credential} already has {limit} open subscriptions \
                 (grpc.max_streams_per_credential); close one first"
            )));
        }
        *open += 1;
        drop(open);
        Ok(Self {
            streams: streams.clone(),
            credential,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some(mut open) = self.streams.get_mut(&self.credential) {
            *open = open.saturating_sub(1);
        }
        self.streams.remove_if(&self.credential, |_, &n| n == 0);
    }
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.sub.detach();
        self.credential_of.remove(&self.sub.id);
        for code in &self.sub.institutions {
            let mut now_empty = false;
            if let Some(mut entry) = self.registry.get_mut(code) {
                let kept: Arc<[Arc<SubState>]> = entry
                    .iter()
                    .filter(|a| a.id != self.sub.id)
                    .cloned()
                    .collect();
                now_empty = kept.is_empty();
                *entry = kept;
            }
            if now_empty {
                self.registry.remove_if(code, |_, v| v.is_empty());
            }
        }
        if let Some(key) = &self.sub.key {
            self.durable.remove_if(key, |_, s| s.id == self.sub.id);
        }
        self.sub.save_cursors();
    }
}

/// The key a login's failures are counted under: the canonical institution code
/// (the raw value, bounded, when it is not one) and the login id, bounded.
fn login_key(institution: &str, login_id: &str) -> String {
    let inst = InstitutionCode::parse(institution)
        .map(|c| c.to_string())
        .unwrap_or_else(|_| institution.chars().take(16).collect());
    let login: String = login_id.chars().take(64).collect();
    format!("{inst}/{login}")
}

fn locked_out(l: &Locked) -> BackendError {
    let until = chrono::DateTime::<chrono::Utc>::from(l.until)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let what = match l.scope {
        crate::auth::LockScope::Login => "too many failed logins",
        crate::auth::LockScope::Peer => "too many failed logins from this address",
    };
    BackendError::LockedOut {
        message: format!("{what}; login locked until {until}"),
        retry_after: l.retry_after,
    }
}

impl Hub {
    /// A refused login: counted, the lockouts it starts recorded, audited unless
    /// `audit` is false (a refusal during a lockout after its first: counted in
    /// `mpn_audit_records_suppressed_total` instead).
    fn refuse(
        &self,
        caller: &Caller,
        login: Option<&str>,
        reason: &str,
        count_failure: bool,
        audit: bool,
    ) {
        metrics::counter!(metric::AUTH_FAILURES_TOTAL, "reason" => reason.to_owned()).increment(1);
        let (inst, login_id) = caller
            .credentials
            .as_ref()
            .map_or(("", ""), |c| (c.institution.as_str(), c.login_id.as_str()));
        let peer = caller.peer;
        if count_failure {
            for l in self.guard.failed(login, peer) {
                metrics::counter!(metric::AUTH_LOCKOUTS_TOTAL, "scope" => l.scope.as_str())
                    .increment(1);
                tracing::warn!(
                    scope = l.scope.as_str(),
                    institution = %mpn_delivery::display_name(inst),
                    login_id = %mpn_delivery::display_name(login_id),
                    ?peer,
                    lockout_s = l.retry_after.as_secs(),
                    "login protection: lockout started"
                );
                self.audit.record(
                    AuditRecord::new(AuditEvent::LockedOut, inst, login_id, peer)
                        .reason(l.scope.as_str()),
                );
            }
        }
        if audit {
            self.audit.record(
                AuditRecord::new(AuditEvent::LoginFailed, inst, login_id, peer).reason(reason),
            );
        } else {
            metrics::counter!(metric::AUDIT_RECORDS_SUPPRESSED_TOTAL).increment(1);
        }
    }
}

impl Backend for Hub {
    /// Lockouts first (a locked login or peer is refused without checking, the right
    /// secret too); then a verified client certificate maps to the credential that
    /// lists one of its names (metadata sent along must name that same credential),
    /// or the secret is checked. Every outcome is counted and audited.
    fn authenticate(&self, caller: &Caller) -> Result<Principal, BackendError> {
        let login = caller
            .credentials
            .as_ref()
            .map(|c| login_key(&c.institution, &c.login_id));
        if let Err(l) = self.guard.check(login.as_deref(), caller.peer) {
            self.refuse(caller, login.as_deref(), "locked_out", false, l.first);
            return Err(locked_out(&l));
        }
        let auth = self.authenticator();
        let result = match &caller.certificate_names {
            Some(names) => match auth.by_certificate(names) {
                Ok(p) => match &caller.credentials {
                    Some(c) if !Authenticator::same_credential(&p, &c.institution, &c.login_id) => {
                        Err(Refusal::BadCertificate)
                    }
                    _ => Ok((
                        Principal {
                            certificate_names: Some(names.clone()),
                            ..p
                        },
                        "certificate",
                    )),
                },
                Err(refusal) => Err(refusal),
            },
            None => match &caller.credentials {
                Some(c) => auth.authenticate(c).map(|p| (p, "secret")),
                None => Err(Refusal::BadCredentials),
            },
        };
        match result {
            Ok((mut p, how)) => {
                p.peer = caller.peer;
                self.guard
                    .succeeded(&login_key(&p.institution, &p.login_id));
                self.audit.record(
                    AuditRecord::new(
                        AuditEvent::Authenticated,
                        &p.institution,
                        &p.login_id,
                        p.peer,
                    )
                    .institutions(&p.granted)
                    .reason(how),
                );
                Ok(p)
            }
            Err(refusal) => {
                if refusal == Refusal::AmbiguousCertificate {
                    let names: Vec<String> = caller
                        .certificate_names
                        .iter()
                        .flatten()
                        .map(|n| mpn_delivery::display_name(n))
                        .collect();
                    tracing::warn!(
                        ?names,
                        peer = ?caller.peer,
                        "a client certificate's names are listed by more than one credential: refused"
                    );
                }
                self.refuse(caller, login.as_deref(), refusal.as_str(), true, true);
                Err(BackendError::Unauthenticated(match refusal {
                    Refusal::BadCredentials => "invalid credentials".into(),
                    Refusal::BadCertificate | Refusal::AmbiguousCertificate => {
                        "the client certificate does not identify this credential".into()
                    }
                }))
            }
        }
    }

    fn attach(
        &self,
        principal: &Principal,
        req: &AttachRequest,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError> {
        let attachment = self.attach_as(principal, req, queue, false)?;
        self.audit.record(
            AuditRecord::new(
                AuditEvent::Subscribed,
                &principal.institution,
                &principal.login_id,
                principal.peer,
            )
            .institutions(&attachment.institutions)
            .subscriber_id(&req.subscriber_id),
        );
        Ok(attachment)
    }
}

impl InternalBackend for Hub {
    /// The subscriber's cursors are kept under the login `~<service>`, which no
    /// configured login id may be.
    fn attach_internal(
        &self,
        service: &str,
        institution: &str,
        subscriber_id: &str,
        queue: SubscriberQueue,
    ) -> Result<Attachment, BackendError> {
        let principal = Principal {
            institution: institution.into(),
            login_id: crate::cursors::internal_login(service),
            granted: vec![institution.into()],
            peer: None,
            certificate_names: None,
        };
        let req = AttachRequest {
            institutions: vec![institution.into()],
            subscriber_name: format!("{service}-link-{institution}"),
            subscriber_id: subscriber_id.into(),
            start_from: StartFrom::Cursor,
            remote_addr: None,
        };
        self.attach_as(&principal, &req, queue, true)
    }
}

impl Hub {
    /// Attaches `queue` for `principal`; `internal` subscribers (the engine's own) are
    /// exempt from the per-credential limits and start a never-seen id at the group's
    /// committed position.
    fn attach_as(
        &self,
        principal: &Principal,
        req: &AttachRequest,
        queue: SubscriberQueue,
        internal: bool,
    ) -> Result<Attachment, BackendError> {
        let requested: &[String] = if req.institutions.is_empty() {
            &principal.granted
        } else {
            &req.institutions
        };
        let mut codes = Vec::new();
        for raw in requested {
            let code = InstitutionCode::parse(raw)
                .map_err(|m| BackendError::InvalidArgument(format!("institution {raw:?}: {m}")))?;
            if !principal.granted.iter().any(|g| g == code.as_str()) {
                return Err(BackendError::PermissionDenied(format!(
                    "institution {code} is not granted to login {}",
                    principal.login_id
                )));
            }
            if !codes.contains(&code) {
                codes.push(code);
            }
        }
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::attaching(&principal.login_id);
        let replacing = !req.subscriber_id.is_empty()
            && SubscriberKey::new(
                &principal.institution,
                &principal.login_id,
                &req.subscriber_id,
            )
            .is_ok_and(|k| self.durable.contains_key(&k));
        let slot = if internal {
            None
        } else {
            Some(StreamSlot::take(
                &self.streams,
                format!("{}/{}", principal.institution, principal.login_id),
                self.support.limits.streams_per_credential,
                replacing,
            )?)
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let name = if req.subscriber_name.is_empty() {
            principal.login_id.clone()
        } else {
            req.subscriber_name.clone()
        };
        let institutions: HashSet<InstitutionCode> = codes.iter().copied().collect();
        let s = &self.support;
        let sub = if req.subscriber_id.is_empty() {
            if req.start_from != StartFrom::Cursor {
                return Err(BackendError::InvalidArgument(
                    "start_from needs a subscriber_id (only durable subscribers have a position)"
                        .into(),
                ));
            }
            let sub = Arc::new(SubState::ephemeral(
                SubBase {
                    id,
                    name,
                    queue,
                    institutions,
                    remote_addr: req.remote_addr.clone(),
                },
                s.partitions,
            ));
            (sub, None)
        } else {
            let key = SubscriberKey::new(
                &principal.institution,
                &principal.login_id,
                &req.subscriber_id,
            )
            .map_err(BackendError::InvalidArgument)?;
            let set: Vec<String> = codes.iter().map(ToString::to_string).collect();
            let start = self.start_positions(&key, req, &set, internal)?;
            let (tx, rx) = mpsc::unbounded_channel();
            let sub = Arc::new(SubState::durable(
                SubBase {
                    id,
                    name,
                    queue,
                    institutions,
                    remote_addr: req.remote_addr.clone(),
                },
                key.clone(),
                &start,
                tx,
                s.cursors.clone(),
                s.tracker.clone(),
            ));
            if let Some(old) = self.durable.insert(key.clone(), sub.clone()) {
                old.queue.kick(EndReason::Replaced);
            }
            (sub, Some((start, rx)))
        };
        let (sub, reader) = sub;
        let login = Login {
            institution: principal.institution.clone(),
            login_id: principal.login_id.clone(),
            certificate_names: principal.certificate_names.clone(),
        };
        // Registration starts here: from now on a reload's scan finds the
        // subscription. The check against the table in force must stay below it.
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::registering(&principal.login_id);
        if !internal {
            self.credential_of.insert(sub.id, login.clone());
        }
        // Registered with the sessions before its reader can hand any partition to
        // the live path: a partition gone live must find the subscription there.
        for code in &codes {
            let mut entry = self
                .registry
                .entry(*code)
                .or_insert_with(|| Arc::from(Vec::new()));
            let mut list = entry.to_vec();
            list.push(sub.clone());
            *entry = Arc::from(list);
        }
        let guard = Detach {
            registry: self.registry.clone(),
            credential_of: self.credential_of.clone(),
            durable: self.durable.clone(),
            sub: sub.clone(),
            _slot: slot,
        };
        // The login was checked against the table in force when it was made; a
        // reload since (while the client had not yet sent `subscribe`, or while the
        // positions were read) may have removed or narrowed it. Checked after
        // registering, under the table's lock (see `replace_authenticator`).
        if !internal {
            let auth = self.authenticator();
            match standing(&auth, &login, sub.institutions.iter()) {
                Standing::Valid => {}
                refused => {
                    self.end_if_invalid(&auth, &login, &sub);
                    drop(guard);
                    return Err(match refused {
                        Standing::Revoked(lost) => BackendError::PermissionDenied(format!(
                            "institutions [{}] are no longer granted to login {}",
                            lost.join(", "),
                            principal.login_id
                        )),
                        _ => BackendError::Unauthenticated(
                            "the credential was removed; log in again".into(),
                        ),
                    });
                }
            }
        }
        if let Some((start, rx)) = reader {
            s.shutdown.spawn_on(
                catchup::run(sub.clone(), s.kafka.clone(), start, rx, s.go_live.clone()),
                &s.runtime,
            );
        }
        Ok(Attachment {
            institutions: codes.iter().map(ToString::to_string).collect(),
            guard: Box::new(guard),
        })
    }
}

/// Per-subscriber lag: for each attached durable subscription (by its id in this
/// process), how far its cursors are behind what ingest has consumed (summed over
/// partitions).
pub fn lag_by_subscriber(
    hub: &Hub,
    consumed: impl Fn(i32) -> Option<i64>,
) -> Vec<(Arc<SubState>, i64)> {
    let mut out = Vec::new();
    for s in hub.all() {
        if s.key.is_none() {
            continue;
        }
        let lag: i64 = (0..hub.support.partitions as i32)
            .filter_map(|p| Some((consumed(p)? - s.cursor(p)?).max(0)))
            .sum();
        out.push((s, lag));
    }
    out
}
