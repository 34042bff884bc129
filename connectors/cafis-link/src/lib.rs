//! mpn-cafis-link, the CAFIS-style telegram links: for each institution configured under
//! `[[cafis.links]]`, one TCP connection from the engine to the institution's
//! receiving host, carrying its notifications as fixed-length telegrams
//! (`docs/cafis-telegram.md`, codec in the `mpn-cafis` crate).
//!
//! A link is an internal **durable subscriber** of its institution (through the
//! delivery contract's `InternalBackend`; cursor key `<institution>/~cafis/link`). That one choice gives it everything the durable
//! gRPC subscribers already have: a notification is finalised for the offset
//! watermark only once its telegram is acknowledged (or dead-lettered), a host that
//! is down or slow makes the link fall back to reading Kafka from its cursor (memory
//! stays bounded, other institutions are not held up), and after a crash or a
//! take-over the link resumes from its cursor.
//!
//! **One owner per link.** A link runs on the replica that the consumer group has
//! assigned partition [`owner_partition`] of the input topic — Kafka's partition
//! ownership is the election; there is no other. When that partition is revoked the
//! link's [`Gate`] closes inside the rebalance callback, *before* the group can give
//! the partition to another replica: no telegram is started after that, and one
//! being written is waited for (bounded). When the partition turns out to be lost,
//! the link disconnects; the new owner connects and resends from the cursor.

pub mod config;
mod link;
mod machine;
pub mod metrics;
pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use mpn_delivery::{InternalBackend, Outbound};
use mpn_domain::InstitutionCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{Config, LinkConfig};
pub use link::{LINK_SERVICE, LINK_SUBSCRIBER};

/// What a link needs from the engine besides its subscription: the "may have sent"
/// marks (kept durably, beside the cursors) and a dead-letter sink for notices a host
/// can never take.
pub trait LinkBackend: InternalBackend {
    /// Reads the marks up to date (the previous owner may be another replica).
    fn sync_marks(&self) -> BoxFuture<'_, Result<(), String>>;
    /// The mark of `institution`'s link on `partition`, as last read.
    fn sent_mark(&self, institution: &str, partition: i32) -> Option<i64>;
    /// Writes a mark durably.
    fn persist_sent_mark(
        &self,
        institution: &str,
        partition: i32,
        mark: i64,
    ) -> BoxFuture<'_, Result<(), String>>;
    /// Dead-letters `item` (its token is released once the dead letter is written);
    /// `kind` and `field` name the rule, `message` says what happened.
    fn dead_letter(&self, item: Outbound, kind: &'static str, field: &str, message: String);
}

/// The input-topic partition whose owner holds a link (shared with the history
/// writers, which are owned the same way).
pub use mpn_domain::owner_partition;

/// Whether a link may send, and how many writes are under way. Closed by the
/// rebalance callback (a librdkafka thread or a runtime worker: never awaits).
#[derive(Debug, Default)]
pub struct Gate {
    open: AtomicBool,
    /// Whether the link's connection is open (reported as `mpn_cafis_link_up`).
    pub up: AtomicBool,
    writing: Mutex<usize>,
    idle: Condvar,
    changed: tokio::sync::Notify,
}

/// Proof that a write may start; the gate waits for it on close.
#[derive(Debug)]
pub struct WritePermit<'a>(&'a Gate);

impl Drop for WritePermit<'_> {
    fn drop(&mut self) {
        let mut w = self.0.writing.lock().unwrap_or_else(|p| p.into_inner());
        *w -= 1;
        self.0.idle.notify_all();
    }
}

impl Gate {
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    pub fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
        self.changed.notify_waiters();
    }

    /// Closes the gate and waits (at most `limit`) for writes in progress to end.
    /// Returns false if one was still running at the limit.
    pub fn close(&self, limit: Duration) -> bool {
        let w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        self.open.store(false, Ordering::SeqCst);
        self.changed.notify_waiters();
        let (w, timeout) = self
            .idle
            .wait_timeout_while(w, limit, |w| *w > 0)
            .unwrap_or_else(|p| p.into_inner());
        drop(w);
        !timeout.timed_out()
    }

    /// A permit to write, if the gate is open.
    pub fn permit(&self) -> Option<WritePermit<'_>> {
        let mut w = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.is_open() {
            return None;
        }
        *w += 1;
        Some(WritePermit(self))
    }

    /// A wake-up for the next change, to `enable` before reading the gate.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }
}

struct Running {
    gate: Arc<Gate>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One configured link as [`Links::status`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkStatus {
    pub institution: String,
    pub host: String,
    /// The input partition whose consumer owns the link.
    pub partition: i32,
    /// This replica holds the link now.
    pub owned_here: bool,
    /// Its TCP connection to the host is open.
    pub up: bool,
}

/// The links this engine is configured with, and the ones it currently owns.
pub struct Links {
    links: HashMap<InstitutionCode, LinkConfig>,
    partitions: usize,
    ctx: Arc<link::Shared>,
    running: Mutex<HashMap<InstitutionCode, Running>>,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("configured", &self.links.len())
            .finish_non_exhaustive()
    }
}

/// How long a rebalance waits for a telegram being written when a gate closes.
const WRITE_DRAIN_LIMIT: Duration = Duration::from_secs(1);

impl Links {
    pub fn new(
        config: Config,
        partitions: usize,
        backend: Arc<dyn LinkBackend>,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Result<Self, mpn_config::ConfigError> {
        // Every configured link runs, or none: a link whose entry is wrong is named,
        // never left out.
        config.validate().map_err(|e| e.within("cafis"))?;
        let links = config
            .links
            .iter()
            .enumerate()
            .map(|(n, l)| {
                InstitutionCode::parse(&l.institution)
                    .map(|code| (code, l.clone()))
                    .map_err(|m| {
                        mpn_config::ConfigError::new(format!("cafis.links[{n}].institution"), m)
                    })
            })
            .collect::<Result<_, _>>()?;
        let config = Arc::new(config);
        Ok(Self {
            ctx: Arc::new(link::Shared {
                config: config.clone(),
                backend,
                runtime,
                shutdown,
                tasks,
                partitions,
                shutting_down: Default::default(),
            }),
            links,
            partitions,
            running: Mutex::default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    fn owned_by(&self, partitions: &[i32]) -> Vec<InstitutionCode> {
        self.links
            .keys()
            .filter(|c| partitions.contains(&owner_partition(c, self.partitions)))
            .copied()
            .collect()
    }

    /// Rebalance, before: stop sending on the links of `partitions`. Called from the
    /// consumer's rebalance callback, so it returns before the group can move them.
    pub fn partitions_revoked(&self, partitions: &[i32]) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for code in self.owned_by(partitions) {
            if let Some(r) = running.get(&code)
                && !r.gate.close(WRITE_DRAIN_LIMIT)
            {
                tracing::warn!(institution = %code, "a telegram was still being written when its link's partition was revoked");
            }
        }
    }

    /// Rebalance, after: run the links of `assigned`, stop every other one.
    pub fn partitions_assigned(&self, assigned: &[i32]) {
        let owned = self.owned_by(assigned);
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.retain(|code, r| {
            let keep = owned.contains(code);
            if !keep {
                r.gate.close(WRITE_DRAIN_LIMIT);
                r.stop.cancel();
                tracing::info!(institution = %code, "CAFIS link moved to another replica");
            }
            keep
        });
        for code in owned {
            if let Some(r) = running.get(&code) {
                r.gate.open();
                continue;
            }
            let gate = Arc::new(Gate::default());
            gate.open();
            let stop = self.ctx.shutdown.child_token();
            let task = self.ctx.tasks.spawn_on(
                link::run(
                    self.ctx.clone(),
                    code,
                    self.links[&code].host.clone(),
                    gate.clone(),
                    stop.clone(),
                ),
                &self.ctx.runtime,
            );
            tracing::info!(institution = %code, host = %self.links[&code].host, "CAFIS link owned here");
            running.insert(code, Running { gate, stop, task });
        }
        ::metrics::gauge!(crate::metrics::CAFIS_LINKS_OWNED).set(running.len() as f64);
    }

    /// Sets the link gauges again (they are dropped when not set for a while, see
    /// `telemetry`): how many links this replica owns, and which are connected.
    pub fn report_gauges(&self) {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        ::metrics::gauge!(crate::metrics::CAFIS_LINKS_OWNED).set(running.len() as f64);
        for (code, r) in running.iter() {
            let up = r.gate.up.load(std::sync::atomic::Ordering::Relaxed);
            // `link` (its place in cafis.links) is no tenant identity: always there.
            let mut labels = mpn_delivery::labels::institution(&code.to_string());
            labels.push(("link", self.position(code).to_string()));
            ::metrics::gauge!(crate::metrics::CAFIS_LINK_UP, &labels).set(if up {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Shutdown: stops every link and waits for each to hand back what is unsent.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        self.ctx
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for r in &all {
            r.stop.cancel();
        }
        for r in all {
            let _ = r.task.await;
        }
    }

    /// Institutions whose link runs here (tests, diagnostics).
    /// Every configured link: where it goes, the partition whose owner holds it,
    /// whether this replica holds it now and whether its connection is up.
    pub fn status(&self) -> Vec<LinkStatus> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<LinkStatus> = self
            .links
            .iter()
            .map(|(code, link)| {
                let here = running.get(code);
                LinkStatus {
                    institution: code.to_string(),
                    host: link.host.clone(),
                    partition: owner_partition(code, self.partitions),
                    owned_here: here.is_some(),
                    up: here.is_some_and(|r| r.gate.up.load(std::sync::atomic::Ordering::Relaxed)),
                }
            })
            .collect();
        out.sort_by(|a, b| a.institution.cmp(&b.institution));
        out
    }

    /// The link's place in `cafis.links` (the `link` label).
    fn position(&self, code: &InstitutionCode) -> usize {
        self.ctx
            .config
            .links
            .iter()
            .position(|l| InstitutionCode::parse(&l.institution).is_ok_and(|c| c == *code))
            .unwrap_or(usize::MAX)
    }

    pub fn owned(&self) -> Vec<InstitutionCode> {
        let mut v: Vec<_> = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend for tests that never get as far as attaching.
    struct NoBackend;
    impl InternalBackend for NoBackend {
        fn attach_internal(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: mpn_delivery::SubscriberQueue,
        ) -> Result<mpn_delivery::Attachment, mpn_delivery::BackendError> {
            Err(mpn_delivery::BackendError::Unavailable("test".into()))
        }
    }
    impl LinkBackend for NoBackend {
        fn sync_marks(&self) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn sent_mark(&self, _: &str, _: i32) -> Option<i64> {
            None
        }
        fn persist_sent_mark(&self, _: &str, _: i32, _: i64) -> BoxFuture<'_, Result<(), String>> {
            Box::pin(async { Ok(()) })
        }
        fn dead_letter(&self, _: Outbound, _: &'static str, _: &str, _: String) {}
    }

    fn links(entries: &[(&str, &str)]) -> Result<Links, mpn_config::ConfigError> {
        let config = Config {
            links: entries
                .iter()
                .map(|(institution, host)| LinkConfig {
                    institution: (*institution).into(),
                    host: (*host).into(),
                })
                .collect(),
            ..Config::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Links::new(
            config,
            4,
            Arc::new(NoBackend),
            rt.handle().clone(),
            CancellationToken::new(),
            TaskTracker::new(),
        )
    }

    #[test]
    fn a_bad_link_entry_is_refused_by_name_not_left_out() {
        let ok = links(&[("20001", "127.0.0.1:7001"), ("20002000", "host:7002")]).unwrap();
        assert_eq!(ok.links.len(), 2);
        let e = links(&[("20001", "127.0.0.1:7001"), ("2x", "127.0.0.1:7002")])
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("cafis.links[1].institution"), "{e}");
        let e = links(&[("20001", "nowhere")])
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with("cafis.links[0].host"), "{e}");
    }

    #[test]
    fn a_closed_gate_gives_no_permit_and_waits_for_writes() {
        let gate = Arc::new(Gate::default());
        assert!(gate.permit().is_none(), "a new gate is closed");
        gate.open();
        let permit = gate.permit().expect("open");
        let g = gate.clone();
        let closer = std::thread::spawn(move || g.close(Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !closer.is_finished(),
            "close waits for the write in progress"
        );
        drop(permit);
        assert!(closer.join().unwrap(), "close returns once the write ended");
        assert!(gate.permit().is_none());
        gate.open();
        let _p = gate.permit().unwrap();
        assert!(!gate.close(Duration::from_millis(20)), "bounded wait");
    }
}
