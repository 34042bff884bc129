//! Readiness: what `/readyz` and the gRPC health service report. One [`Readiness`]
//! is made by the caller before the engine starts (so a process still waiting for
//! Kafka at start-up answers "not ready" instead of not answering), handed to
//! [`crate::EngineBuilder::readiness`], and set by the engine's parts:
//!
//! - `kafka`: the broker answered the last metadata probe (every
//!   [`PROBE_INTERVAL`]);
//! - `group_joined`: ingest's consumer got its assignment from the group (possibly
//!   empty: a replica beyond the partition count still serves subscribers); an
//!   engine fed from memory joins no group and counts as joined, and so does one
//!   waiting out `ingest.startup_grace_ms` before it joins (that wait is for
//!   subscribers to reconnect first: a replica they could not reach would defeat it);
//! - `grpc_serving`: the subscription listener is bound and serving, until shutdown;
//! - `cursors_loaded`: the durable cursors were read at start-up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

/// How often the engine asks the broker for metadata to tell whether it is reachable.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Inner {
    kafka: AtomicBool,
    group_joined: AtomicBool,
    grpc_serving: AtomicBool,
    cursors_loaded: AtomicBool,
}

/// The readiness checks, shared by the engine (which sets them) and whoever reports
/// them (the admin listener, the gRPC health service).
#[derive(Debug, Clone)]
pub struct Readiness {
    inner: Arc<Inner>,
    changed: Arc<watch::Sender<Serving>>,
}

/// What the gRPC health service reports: `ready` for the overall service (`""`),
/// the same as `/readyz`; `subscriptions` for `mpn.notify.v1.Notify`: subscribers
/// can be served (Kafka answers, the listener serves, the cursors are read) even
/// before the group is joined, since durable subscribers are served from their
/// cursors by catch-up readers until ingest consumes their partitions.
pub use mpn_grpc::Serving;

impl Default for Readiness {
    fn default() -> Self {
        Self::new()
    }
}

/// The checks as `/readyz` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checks {
    pub kafka: bool,
    pub group_joined: bool,
    pub grpc_serving: bool,
    pub cursors_loaded: bool,
}

impl Checks {
    pub fn ready(&self) -> bool {
        self.kafka && self.group_joined && self.grpc_serving && self.cursors_loaded
    }

    /// Subscribers can be served (see [`Serving`]).
    pub fn subscriptions(&self) -> bool {
        self.kafka && self.grpc_serving && self.cursors_loaded
    }

    fn serving(&self) -> Serving {
        Serving {
            ready: self.ready(),
            subscriptions: self.subscriptions(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Check {
    Kafka,
    GroupJoined,
    GrpcServing,
    CursorsLoaded,
}

impl Readiness {
    /// Nothing checked yet: not ready.
    pub fn new() -> Self {
        Self {
            inner: Arc::default(),
            changed: Arc::new(watch::channel(Serving::default()).0),
        }
    }

    pub fn checks(&self) -> Checks {
        let i = &self.inner;
        Checks {
            kafka: i.kafka.load(Ordering::Acquire),
            group_joined: i.group_joined.load(Ordering::Acquire),
            grpc_serving: i.grpc_serving.load(Ordering::Acquire),
            cursors_loaded: i.cursors_loaded.load(Ordering::Acquire),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.checks().ready()
    }

    /// Follows readiness: the current value at once, then every change.
    pub fn watch(&self) -> watch::Receiver<Serving> {
        self.changed.subscribe()
    }

    pub(crate) fn set(&self, check: Check, ok: bool) {
        let i = &self.inner;
        let flag = match check {
            Check::Kafka => &i.kafka,
            Check::GroupJoined => &i.group_joined,
            Check::GrpcServing => &i.grpc_serving,
            Check::CursorsLoaded => &i.cursors_loaded,
        };
        if flag.swap(ok, Ordering::AcqRel) != ok {
            tracing::info!(check = ?check, ok, ready = self.is_ready(), "readiness changed");
        }
        self.report();
    }

    /// Publishes the current readiness: to the watchers (computed under the watch's
    /// lock, so two checks changing at once cannot leave a watcher behind) and as
    /// the `mpn_ready` gauge (set again by the binary every few seconds, so the
    /// series exists from the start and never lapses).
    pub fn report(&self) {
        self.changed.send_if_modified(|r| {
            let now = self.checks().serving();
            let changed = *r != now;
            *r = now;
            changed
        });
        let ready = self.changed.borrow().ready;
        metrics::gauge!(crate::telemetry::metric::READY).set(if ready { 1.0 } else { 0.0 });
    }

    /// A start failed because Kafka could not be reached (the engine's own probe
    /// is not running yet to say so).
    pub fn kafka_unreachable(&self) {
        self.set(Check::Kafka, false);
    }

    /// Everything down (the engine is stopping).
    pub(crate) fn stopping(&self) {
        self.set(Check::GrpcServing, false);
        self.set(Check::GroupJoined, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_check_passes_and_changes_are_announced() {
        let r = Readiness::new();
        let mut w = r.watch();
        assert!(!r.is_ready());
        for c in [Check::Kafka, Check::GroupJoined, Check::GrpcServing] {
            r.set(c, true);
            assert!(!r.is_ready(), "{c:?} alone");
        }
        assert!(!w.has_changed().unwrap());
        r.set(Check::CursorsLoaded, true);
        assert!(r.is_ready());
        assert!(w.has_changed().unwrap());
        assert_eq!(
            *w.borrow_and_update(),
            Serving {
                ready: true,
                subscriptions: true
            }
        );
        r.set(Check::GroupJoined, false);
        assert_eq!(
            *w.borrow_and_update(),
            Serving {
                ready: false,
                subscriptions: true
            },
            "subscribers are served before the group is joined"
        );
        r.set(Check::GroupJoined, true);
        r.set(Check::Kafka, false);
        assert_eq!(*w.borrow_and_update(), Serving::default());
        assert_eq!(
            r.checks(),
            Checks {
                kafka: false,
                group_joined: true,
                grpc_serving: true,
                cursors_loaded: true
            }
        );
    }
}
