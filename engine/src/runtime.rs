//! The engine's one shutdown signal and the tracker of every task it spawns.
//!
//! Every long-lived task of the engine is spawned through a [`Shutdown`] and selects
//! on [`Shutdown::triggered`]; [`Engine::shutdown`](crate::Engine::shutdown) triggers
//! it in order (ingest first, through a [child](Shutdown::child), then the rest) and
//! at the end waits, bounded, for every tracked task. Connectors, which do not depend
//! on the engine, get the two halves: [`Shutdown::token`] and [`Shutdown::tasks`].

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A shutdown signal and the task tracker it shares with its children. Cheap to
/// clone; every clone sees the same signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tasks: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A signal that can be triggered on its own (earlier) and is triggered by this
    /// one too; its tasks are tracked with this one's.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tasks: self.tasks.clone(),
        }
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes once triggered. Cancel-safe: use it as a `select!` branch.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// The signal alone, for connectors.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// The tracker alone, for connectors that spawn their own tasks.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Spawns a tracked task on the current runtime.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task)
    }

    /// Runs `f` on the blocking pool, tracked.
    pub fn spawn_blocking<F, T>(&self, f: F) -> JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        self.tasks.spawn_blocking(f)
    }

    /// Spawns a tracked task on `runtime` (from a thread outside it).
    pub fn spawn_on<F>(&self, task: F, runtime: &tokio::runtime::Handle) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn_on(task, runtime)
    }

    /// No more tasks; waits at most `limit` for the tracked ones to end. Returns how
    /// many were still running at the limit.
    pub async fn wait(&self, limit: Duration) -> usize {
        self.tasks.close();
        match tokio::time::timeout(limit, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tasks.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_stops_alone_or_with_its_parent_and_shares_the_tracker() {
        let parent = Shutdown::new();
        let early = parent.child();
        let late = parent.child();
        let (e, l) = (early.clone(), late.clone());
        let a = early.spawn(async move { e.triggered().await });
        let b = late.spawn(async move { l.triggered().await });
        early.trigger();
        a.await.unwrap();
        assert!(!late.is_triggered() && !parent.is_triggered());
        parent.trigger();
        b.await.unwrap();
        assert!(late.is_triggered());
        assert_eq!(parent.wait(Duration::from_secs(1)).await, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_is_bounded_and_counts_what_is_left() {
        let s = Shutdown::new();
        s.spawn(std::future::pending::<()>());
        s.spawn(async {});
        tokio::task::yield_now().await;
        assert_eq!(s.wait(Duration::from_millis(100)).await, 1);
    }
}
