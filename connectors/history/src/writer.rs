//! The history writers: one internal durable subscriber per institution (cursor key
//! `<institution>/~history/writer`), running on the replica that owns the
//! institution's owner partition, as the CAFIS links do. A writer takes what its
//! queue holds (up to `batch_max`), writes it in one transaction and only then
//! releases the notifications `Acked`; a failed transaction releases them
//! `SubscriberGone`, detaches and attaches again after a back-off, so they are read
//! again from the cursor. Writes are idempotent, so a batch written twice (a crash
//! after the commit, a partition moving mid-batch) leaves one row per notification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mpn_delivery::{InternalBackend, Outbound, Release, SubscriberQueue};
use mpn_domain::InstitutionCode;
use mpn_domain::owner_partition;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{
    HISTORY_ATTACH_FAILURES_TOTAL, HISTORY_WRITE_FAILURES_TOTAL, HISTORY_WRITERS_OWNED,
};
use crate::{History, HistoryHandle};

/// The service name of the writers' subscriptions (their cursors live under
/// `<institution>/~history/writer`).
pub const HISTORY_SERVICE: &str = "history";
pub const HISTORY_SUBSCRIBER: &str = "writer";

struct Shared {
    history: HistoryHandle,
    backend: Arc<dyn InternalBackend>,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
    queue_capacity: usize,
    batch_max: usize,
}

/// The writers of this replica.
pub struct Writers {
    shared: Arc<Shared>,
    partitions: usize,
    shutdown: CancellationToken,
    institutions: Mutex<Vec<InstitutionCode>>,
    assigned: Mutex<Vec<i32>>,
    running: Mutex<HashMap<InstitutionCode, (CancellationToken, tokio::task::JoinHandle<()>)>>,
}

impl std::fmt::Debug for Writers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writers")
            .field("running", &self.owned())
            .finish_non_exhaustive()
    }
}

impl Writers {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        history: HistoryHandle,
        backend: Arc<dyn InternalBackend>,
        partitions: usize,
        queue_capacity: usize,
        batch_max: usize,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                history,
                backend,
                runtime,
                tasks,
                queue_capacity,
                batch_max,
            }),
            partitions,
            shutdown,
            institutions: Mutex::default(),
            assigned: Mutex::default(),
            running: Mutex::default(),
        }
    }

    /// The institutions whose history is kept (those a credential grants); writers
    /// start or stop to match.
    pub fn set_institutions(&self, mut codes: Vec<InstitutionCode>) {
        codes.sort();
        codes.dedup();
        *self.institutions.lock().unwrap() = codes;
        self.reconcile();
    }

    /// Rebalance, before: the writers of `partitions` stop (a batch in flight may
    /// still commit: writes are idempotent, the next owner's copy changes nothing).
    pub fn partitions_revoked(&self, partitions: &[i32]) {
        self.assigned
            .lock()
            .unwrap()
            .retain(|p| !partitions.contains(p));
        self.reconcile();
    }

    /// Rebalance, after: the whole assignment of this replica.
    pub fn partitions_assigned(&self, assigned: &[i32]) {
        *self.assigned.lock().unwrap() = assigned.to_vec();
        self.reconcile();
    }

    fn reconcile(&self) {
        let owned: Vec<InstitutionCode> = {
            let assigned = self.assigned.lock().unwrap();
            self.institutions
                .lock()
                .unwrap()
                .iter()
                .filter(|c| assigned.contains(&owner_partition(c, self.partitions)))
                .copied()
                .collect()
        };
        let mut running = self.running.lock().unwrap();
        running.retain(|code, (stop, _)| {
            let keep = owned.contains(code);
            if !keep {
                stop.cancel();
            }
            keep
        });
        if self.shutdown.is_cancelled() {
            return;
        }
        for code in owned {
            if running.contains_key(&code) {
                continue;
            }
            let stop = self.shutdown.child_token();
            let task = self.shared.tasks.spawn_on(
                run(self.shared.clone(), code, stop.clone()),
                &self.shared.runtime,
            );
            running.insert(code, (stop, task));
        }
        ::metrics::gauge!(HISTORY_WRITERS_OWNED).set(running.len() as f64);
    }

    /// Sets the writers gauge again (gauges not set for a while are dropped).
    pub fn report_gauges(&self) {
        let n = self.running.lock().unwrap().len();
        ::metrics::gauge!(HISTORY_WRITERS_OWNED).set(n as f64);
    }

    /// Institutions whose writer runs here, sorted.
    pub fn owned(&self) -> Vec<InstitutionCode> {
        let mut v: Vec<_> = self.running.lock().unwrap().keys().copied().collect();
        v.sort();
        v
    }

    /// Stops every writer and waits for each to hand back what it has not written.
    pub async fn shutdown(&self) {
        let all: Vec<_> = self
            .running
            .lock()
            .unwrap()
            .drain()
            .map(|(_, r)| r)
            .collect();
        ::metrics::gauge!(HISTORY_WRITERS_OWNED).set(0.0);
        for (stop, _) in &all {
            stop.cancel();
        }
        for (_, task) in all {
            let _ = task.await;
        }
    }
}

/// Releases what an ended attachment still queues: read again from the cursor.
fn give_back(items: impl IntoIterator<Item = Outbound>, rx: &mut mpsc::Receiver<Outbound>) {
    for item in items {
        item.token.release(Release::SubscriberGone);
    }
    rx.close();
    while let Ok(item) = rx.try_recv() {
        item.token.release(Release::SubscriberGone);
    }
}

async fn run(shared: Arc<Shared>, code: InstitutionCode, stop: CancellationToken) {
    let inst = code.to_string();
    // Nothing is taken from Kafka for the history before its database is open.
    let history: Arc<History> = tokio::select! {
        h = shared.history.opened() => match h {
            Some(h) => h,
            None => return,
        },
        _ = stop.cancelled() => return,
    };
    let mut failures = 0u32;
    'attach: while !stop.is_cancelled() {
        let (queue, mut rx) = SubscriberQueue::channel(shared.queue_capacity);
        let attached = mpn_delivery::attach_internal_blocking(
            shared.backend.clone(),
            HISTORY_SERVICE,
            inst.clone(),
            HISTORY_SUBSCRIBER,
            queue.clone(),
        )
        .await;
        let attachment = match attached {
            Ok(a) => a,
            Err(why) => {
                ::metrics::counter!(HISTORY_ATTACH_FAILURES_TOTAL).increment(1);
                tracing::warn!(institution = %inst, reason = %why, "history writer cannot attach; retrying");
                if wait_or_stop(&stop, backoff(&mut failures)).await {
                    break;
                }
                continue;
            }
        };
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.cancelled() => {
                    give_back([], &mut rx);
                    break 'attach;
                }
                reason = queue.kicked() => {
                    tracing::info!(institution = %inst, %reason, "history writer's subscription ended by the engine; attaching again");
                    give_back([], &mut rx);
                    continue 'attach;
                }
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => continue 'attach,
                },
            };
            let mut batch = vec![first];
            while batch.len() < shared.batch_max {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let written = {
                let notes: Vec<_> = batch.iter().map(|o| &**o.notification).collect();
                tokio::select! {
                    r = history.record(&notes) => Some(r),
                    // A stop in the middle gives the batch back (the transaction rolls
                    // back with its dropped future, or commits: either is safe).
                    _ = stop.cancelled() => None,
                }
            };
            match written {
                Some(Ok(_)) => {
                    failures = 0;
                    // One run: the writer's cursor is saved once per batch.
                    mpn_delivery::release_all(
                        batch.into_iter().map(|item| item.token),
                        Release::Acked,
                    );
                }
                Some(Err(e)) => {
                    ::metrics::counter!(HISTORY_WRITE_FAILURES_TOTAL).increment(1);
                    tracing::warn!(institution = %inst, error = %e, notifications = batch.len(), "history write failed; reading them again after a pause");
                    give_back(batch, &mut rx);
                    drop(attachment);
                    // Attach again (a catch-up read of Kafka) only once the
                    // database answers.
                    loop {
                        if wait_or_stop(&stop, backoff(&mut failures)).await {
                            break 'attach;
                        }
                        if history.store().ping().await.is_ok() {
                            break;
                        }
                    }
                    continue 'attach;
                }
                None => {
                    give_back(batch, &mut rx);
                    break 'attach;
                }
            }
        }
    }
    tracing::info!(institution = %inst, "history writer stopped");
}

/// 200 ms doubling to 30 s.
fn backoff(failures: &mut u32) -> Duration {
    let d = Duration::from_millis(200) * 2u32.saturating_pow((*failures).min(8));
    *failures = failures.saturating_add(1);
    d.min(Duration::from_secs(30))
}

/// True if stopped while waiting.
async fn wait_or_stop(stop: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.cancelled() => true,
    }
}
