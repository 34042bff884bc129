//! A notification on its way to one subscriber, and the engine's claim on it.

use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use mpn_proto::mpn::notify::v1 as pb;

/// Why a delivery token is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// The subscriber acknowledged the notification.
    Acked,
    /// The subscriber went away (disconnected, too slow, protocol error) before
    /// acknowledging it.
    SubscriberGone,
    /// The server is shutting down: the notification is handed back, not finished.
    Shutdown,
}

/// The engine's claim on a queued notification; released exactly once.
pub trait DeliveryToken: Send + 'static {
    fn release(self: Box<Self>, how: Release);

    /// True when the notification is read again from Kafka (a catch-up after a
    /// reconnect, a take-over or an overflow) rather than arriving live: it may have
    /// been delivered before.
    fn replayed(&self) -> bool {
        false
    }
}

/// Work deferred to the end of a [`release_all`] run, by key.
type Deferred = Vec<((usize, i64), Box<dyn FnOnce()>)>;

thread_local! {
    /// The run in progress on this thread, if any.
    static RUN: std::cell::RefCell<Option<Deferred>> = const { std::cell::RefCell::new(None) };
}

/// Releases a run of tokens at once (an acknowledgement of many), in order. Work the
/// tokens share, registered with [`once_per_run`] (an engine saves a subscriber's
/// cursor once per partition rather than once per notification), runs once, after
/// the last token, before this returns.
pub fn release_all(tokens: impl IntoIterator<Item = Box<dyn DeliveryToken>>, how: Release) {
    let _run = Run::begin();
    for t in tokens {
        t.release(how);
    }
}

/// The run of a [`release_all`] on this thread; the outermost one runs the deferred
/// work when it ends. A token that panics ends the run too (while unwinding, the
/// deferred work is dropped, not run: a cursor saved later is only later), so the
/// thread is never left inside a run.
struct Run {
    outer: bool,
}

impl Run {
    fn begin() -> Self {
        let outer = RUN.with(|r| {
            let mut r = r.borrow_mut();
            let outer = r.is_none();
            if outer {
                *r = Some(Vec::new());
            }
            outer
        });
        Self { outer }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.outer {
            return;
        }
        let deferred = RUN.with(|r| r.borrow_mut().take()).unwrap_or_default();
        if std::thread::panicking() {
            return;
        }
        for (_, work) in deferred {
            work();
        }
    }
}

/// Runs the work `make` builds once at the end of the current [`release_all`] run
/// for all calls with the same `key`, or at once outside a run.
pub fn once_per_run(key: (usize, i64), make: impl FnOnce() -> Box<dyn FnOnce()>) {
    let mut make = Some(make);
    RUN.with(|r| {
        if let Some(run) = r.borrow_mut().as_mut()
            && let Some(make) = make.take()
            && !run.iter().any(|(k, _)| *k == key)
        {
            run.push((key, make()));
        }
    });
    // Outside a run: at once.
    if let Some(make) = make {
        make()();
    }
}

/// A notification as its session built it, shared by every subscriber it goes to.
/// Its protobuf encoding (without `seq`, which each stream writes in front of it, see
/// [`mpn_proto::frame`]) is made once, by the first transport that asks for it, and
/// shared from then on; transports that read fields (telegrams, the history) never
/// pay for it.
pub struct SharedNotification {
    notification: pb::Notification,
    body: OnceLock<Bytes>,
}

impl SharedNotification {
    /// `notification.seq` must be 0: a sequence number belongs to one stream.
    pub fn new(notification: pb::Notification) -> Self {
        debug_assert_eq!(notification.seq, 0, "a shared notification has no seq");
        Self {
            notification,
            body: OnceLock::new(),
        }
    }

    /// The encoded notification without `seq`, made on the first call.
    pub fn body(&self) -> Bytes {
        self.body
            .get_or_init(|| mpn_proto::frame::encode_body(&self.notification))
            .clone()
    }
}

impl Deref for SharedNotification {
    type Target = pb::Notification;

    fn deref(&self) -> &pb::Notification {
        &self.notification
    }
}

impl From<pb::Notification> for SharedNotification {
    fn from(n: pb::Notification) -> Self {
        Self::new(n)
    }
}

impl fmt::Debug for SharedNotification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedNotification")
            .field("notification_id", &self.notification.notification_id)
            .finish_non_exhaustive()
    }
}

/// A notification queued for one subscriber; the stream numbers it on sending.
pub struct Outbound {
    pub notification: Arc<SharedNotification>,
    pub token: Box<dyn DeliveryToken>,
}

impl Outbound {
    pub fn new(notification: pb::Notification, token: Box<dyn DeliveryToken>) -> Self {
        Self {
            notification: Arc::new(SharedNotification::new(notification)),
            token,
        }
    }
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("notification_id", &self.notification.notification_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use std::sync::Mutex;

    /// Records its release and registers shared work under `key`.
    struct Token {
        id: u32,
        key: i64,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl DeliveryToken for Token {
        fn release(self: Box<Self>, how: Release) {
            self.log
                .lock()
                .unwrap()
                .push(format!("{} {how:?}", self.id));
            let (log, key) = (self.log.clone(), self.key);
            once_per_run((0, key), move || {
                Box::new(move || log.lock().unwrap().push(format!("shared {key}")))
            });
        }
    }

    fn tokens(log: &Arc<Mutex<Vec<String>>>, keys: &[i64]) -> Vec<Box<dyn DeliveryToken>> {
        keys.iter()
            .enumerate()
            .map(|(i, &key)| {
                Box::new(Token {
                    id: i as u32,
                    key,
                    log: log.clone(),
                }) as Box<dyn DeliveryToken>
            })
            .collect()
    }

    #[test]
    fn a_run_releases_every_token_in_order_then_shared_work_once_per_key() {
        let log = Arc::default();
        release_all(tokens(&log, &[1, 2, 1, 1]), Release::Acked);
        assert_eq!(
            *log.lock().unwrap(),
            [
                "0 Acked", "1 Acked", "2 Acked", "3 Acked", "shared 1", "shared 2"
            ]
        );
    }

    #[test]
    fn outside_a_run_shared_work_runs_at_once_and_a_run_leaves_nothing_behind() {
        let log = Arc::default();
        for t in tokens(&log, &[7, 7]) {
            t.release(Release::SubscriberGone);
        }
        release_all(Vec::new(), Release::Acked);
        for t in tokens(&log, &[7]) {
            t.release(Release::Shutdown);
        }
        assert_eq!(
            *log.lock().unwrap(),
            [
                "0 SubscriberGone",
                "shared 7",
                "1 SubscriberGone",
                "shared 7",
                "0 Shutdown",
                "shared 7"
            ]
        );
    }

    /// A token that panics.
    struct Panics;

    impl DeliveryToken for Panics {
        fn release(self: Box<Self>, _: Release) {
            panic!("a release failed");
        }
    }

    #[test]
    fn a_panic_in_a_run_leaves_the_thread_outside_any_run() {
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut run = tokens(&log, &[3]);
        run.push(Box::new(Panics));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            release_all(run, Release::Acked);
        }));
        assert!(caught.is_err());
        assert_eq!(
            *log.lock().unwrap(),
            ["0 Acked"],
            "the run's shared work is dropped"
        );
        // Later releases on this thread are not swallowed by a stale run.
        for t in tokens(&log, &[4]) {
            t.release(Release::Acked);
        }
        release_all(tokens(&log, &[5]), Release::Acked);
        assert_eq!(
            *log.lock().unwrap(),
            ["0 Acked", "0 Acked", "shared 4", "0 Acked", "shared 5"]
        );
    }

    #[test]
    fn the_body_is_encoded_once_and_shared() {
        let shared = SharedNotification::new(pb::Notification {
            notification_id: "k:PAYMENT".into(),
            amount: 5,
            ..Default::default()
        });
        let (a, b) = (shared.body(), shared.body());
        assert_eq!(a.as_ptr(), b.as_ptr(), "one buffer for every stream");
        assert_eq!(pb::Notification::decode(a).unwrap(), *shared);
    }
}
