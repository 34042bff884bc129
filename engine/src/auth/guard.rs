//! Login protection: failed logins counted per login (institution, login id) and
//! per peer address within a window; past the limit, a lockout during which every
//! login it covers is refused without checking, the right secret too. Unknown logins
//! are counted and locked out the same way, so a lockout says nothing about whether
//! a login exists. Memory is bounded: at most [`MAX_TRACKED`] keys per kind, the
//! least recently failed (and never a locked one while another can go) evicted
//! first.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::AuthConfig;

/// Keys tracked per kind (logins, peers).
pub const MAX_TRACKED: usize = 65_536;

/// What a lockout covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    Login,
    Peer,
}

impl LockScope {
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::Login => "login",
            LockScope::Peer => "peer",
        }
    }
}

/// A lockout in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locked {
    pub scope: LockScope,
    pub until: SystemTime,
    pub retry_after: Duration,
    /// The first refusal of this lockout for its key (or the lockout starting): the
    /// one audited. Later refusals during the same lockout are only counted, so one
    /// locked-out caller cannot fill the audit trail.
    pub first: bool,
}

#[derive(Debug, Default)]
struct Track {
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    last: Option<Instant>,
    /// Refusals during the current lockout.
    refused: u64,
}

#[derive(Debug)]
struct Table<K> {
    keys: HashMap<K, Track>,
    limit: usize,
    cap: usize,
}

impl<K: Eq + Hash + Clone> Table<K> {
    fn new(limit: u32, cap: usize) -> Self {
        Self {
            keys: HashMap::new(),
            limit: limit as usize,
            cap,
        }
    }

    /// The end of `k`'s lockout, if in force, and whether this is its first refusal
    /// (counted).
    fn refuse(&mut self, k: &K, now: Instant) -> Option<(Instant, bool)> {
        let t = self.keys.get_mut(k)?;
        let until = t.locked_until.filter(|&u| u > now)?;
        t.refused += 1;
        Some((until, t.refused == 1))
    }

    /// Counts a failure; returns the lockout's end when this failure starts one.
    fn fail(
        &mut self,
        k: &K,
        now: Instant,
        window: Duration,
        lockout: Duration,
    ) -> Option<Instant> {
        if !self.keys.contains_key(k) && self.keys.len() >= self.cap {
            self.evict(now, window);
        }
        let t = self.keys.entry(k.clone()).or_default();
        t.last = Some(now);
        if t.locked_until.is_some_and(|u| u > now) {
            return None;
        }
        t.locked_until = None;
        while t
            .failures
            .front()
            .is_some_and(|&f| now.duration_since(f) >= window)
        {
            t.failures.pop_front();
        }
        t.failures.push_back(now);
        if t.failures.len() >= self.limit {
            t.failures.clear();
            let until = now + lockout;
            t.locked_until = Some(until);
            t.refused = 0;
            return Some(until);
        }
        None
    }

    fn clear(&mut self, k: &K) {
        self.keys.remove(k);
    }

    /// Makes room: drops what no longer matters (no failure in the window, no
    /// lockout), then, if still full, the least recently failed eighth, unlocked
    /// keys first.
    fn evict(&mut self, now: Instant, window: Duration) {
        self.keys.retain(|_, t| {
            t.locked_until.is_some_and(|u| u > now)
                || t.failures
                    .back()
                    .is_some_and(|&f| now.duration_since(f) < window)
        });
        if self.keys.len() < self.cap {
            return;
        }
        let mut order: Vec<(bool, Option<Instant>, K)> = self
            .keys
            .iter()
            .map(|(k, t)| (t.locked_until.is_some_and(|u| u > now), t.last, k.clone()))
            .collect();
        order.sort_by_key(|e| (e.0, e.1));
        for (_, _, k) in order.into_iter().take((self.cap / 8).max(1)) {
            self.keys.remove(&k);
        }
    }
}

#[derive(Debug)]
struct State {
    logins: Table<String>,
    peers: Table<IpAddr>,
}

/// The failure counters and lockouts of one engine (kept across credential reloads).
#[derive(Debug)]
pub struct LoginGuard {
    state: Mutex<State>,
    window: Duration,
    lockout: Duration,
}

impl LoginGuard {
    pub fn new(config: &AuthConfig) -> Self {
        Self::with_capacity(config, MAX_TRACKED)
    }

    pub fn with_capacity(config: &AuthConfig, cap: usize) -> Self {
        Self {
            state: Mutex::new(State {
                logins: Table::new(config.max_failures, cap),
                peers: Table::new(config.max_failures_per_peer, cap),
            }),
            window: config.failure_window,
            lockout: config.lockout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn locked_at(scope: LockScope, until: Instant, now: Instant, first: bool) -> Locked {
        let retry_after = until.saturating_duration_since(now);
        Locked {
            scope,
            until: SystemTime::now() + retry_after,
            retry_after,
            first,
        }
    }

    /// The lockout `login` (if any) or `peer` is under now; a refusal it causes is
    /// counted against that lockout ([`Locked::first`]).
    pub fn check(&self, login: Option<&str>, peer: Option<IpAddr>) -> Result<(), Locked> {
        let now = Instant::now();
        let mut s = self.lock();
        if let Some((until, first)) = peer.and_then(|p| s.peers.refuse(&p, now)) {
            return Err(Self::locked_at(LockScope::Peer, until, now, first));
        }
        if let Some((until, first)) = login.and_then(|l| s.logins.refuse(&l.to_owned(), now)) {
            return Err(Self::locked_at(LockScope::Login, until, now, first));
        }
        Ok(())
    }

    /// Counts a failed login; returns the lockouts it started.
    pub fn failed(&self, login: Option<&str>, peer: Option<IpAddr>) -> Vec<Locked> {
        let now = Instant::now();
        let (window, lockout) = (self.window, self.lockout);
        let mut s = self.lock();
        let mut started = Vec::new();
        if let Some(l) = login
            && let Some(until) = s.logins.fail(&l.to_owned(), now, window, lockout)
        {
            started.push(Self::locked_at(LockScope::Login, until, now, true));
        }
        if let Some(p) = peer
            && let Some(until) = s.peers.fail(&p, now, window, lockout)
        {
            started.push(Self::locked_at(LockScope::Peer, until, now, true));
        }
        started
    }

    /// A successful login clears its login's failures (not its peer's: one valid
    /// credential must not reset the count of an address guessing others).
    pub fn succeeded(&self, login: &str) {
        self.lock().logins.clear(&login.to_owned());
    }

    /// Keys tracked (logins, peers).
    pub fn tracked(&self) -> (usize, usize) {
        let s = self.lock();
        (s.logins.keys.len(), s.peers.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max: u32, per_peer: u32, lockout_ms: u64) -> AuthConfig {
        AuthConfig {
            max_failures: max,
            max_failures_per_peer: per_peer,
            failure_window: Duration::from_secs(60),
            lockout: Duration::from_millis(lockout_ms),
            ..AuthConfig::default()
        }
    }

    #[test]
    fn the_nth_failure_locks_the_login_until_the_lockout_ends() {
        let g = LoginGuard::new(&config(3, 100, 150));
        let peer = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(g.failed(Some("00200000/a"), peer).is_empty());
        assert!(g.failed(Some("00200000/a"), peer).is_empty());
        let started = g.failed(Some("00200000/a"), peer);
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].scope, LockScope::Login);
        let locked = g.check(Some("00200000/a"), peer).unwrap_err();
        assert_eq!(locked.scope, LockScope::Login);
        assert!(locked.retry_after <= Duration::from_millis(150));
        // Another login from the same peer is not locked.
        g.check(Some("00200000/b"), peer).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while g.check(Some("00200000/a"), peer).is_err() {
            assert!(Instant::now() < deadline, "the lockout never ends");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Only the first refusal of a lockout is marked for the audit trail, per key and
    /// per lockout; a new lockout of the key is audited again.
    #[test]
    fn only_the_first_refusal_of_a_lockout_is_audited() {
        let g = LoginGuard::new(&config(2, 1_000_000, 100));
        let peer = Some(IpAddr::from([10, 0, 0, 9]));
        g.failed(Some("k"), peer);
        g.failed(Some("k"), peer);
        let firsts: Vec<bool> = (0..50)
            .map(|_| g.check(Some("k"), peer).unwrap_err().first)
            .collect();
        assert_eq!(firsts.iter().filter(|f| **f).count(), 1, "{firsts:?}");
        assert!(firsts[0]);
        assert!(
            g.check(Some("other"), peer).is_ok(),
            "another key is not locked"
        );
        std::thread::sleep(Duration::from_millis(150));
        g.check(Some("k"), peer).unwrap();
        g.failed(Some("k"), peer);
        g.failed(Some("k"), peer);
        assert!(g.check(Some("k"), peer).unwrap_err().first, "a new lockout");
        assert!(!g.check(Some("k"), peer).unwrap_err().first);
    }

    #[test]
    fn a_peer_is_locked_across_logins_and_success_keeps_its_count() {
        let g = LoginGuard::new(&config(100, 3, 60_000));
        let peer = Some(IpAddr::from([10, 0, 0, 2]));
        g.failed(Some("x/1"), peer);
        g.succeeded("x/1");
        g.failed(Some("x/2"), peer);
        let started = g.failed(Some("x/3"), peer);
        assert_eq!(
            started.iter().map(|l| l.scope).collect::<Vec<_>>(),
            vec![LockScope::Peer]
        );
        assert_eq!(
            g.check(Some("x/4"), peer).unwrap_err().scope,
            LockScope::Peer
        );
        g.check(Some("x/4"), Some(IpAddr::from([10, 0, 0, 3])))
            .unwrap();
    }

    #[test]
    fn memory_is_bounded_and_lockouts_are_evicted_last() {
        let g = LoginGuard::with_capacity(&config(2, 1_000_000, 60_000), 64);
        g.failed(Some("victim"), None);
        g.failed(Some("victim"), None);
        for n in 0..10_000 {
            g.failed(Some(&format!("spray-{n}")), None);
        }
        assert!(g.tracked().0 <= 64, "{:?}", g.tracked());
        assert!(
            g.check(Some("victim"), None).is_err(),
            "a lockout survives a spray"
        );
    }
}
