//! Test-only fault injection, compiled only with the `test-hooks` feature (enabled by
//! this crate's dev-dependency on itself, never in a release build).

use std::sync::{Arc, Mutex};

use crate::domain::Event;

type Hook = Arc<dyn Fn(&Event) -> bool + Send + Sync>;

static PANIC_IF: Mutex<Vec<Hook>> = Mutex::new(Vec::new());

/// Makes a session panic on every event for which `f` returns true. Hooks add up
/// (tests choose their own institutions, so tests in one process do not interfere).
pub fn panic_if(f: impl Fn(&Event) -> bool + Send + Sync + 'static) {
    PANIC_IF
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Arc::new(f));
}

type Pause = (Hook, Arc<std::sync::atomic::AtomicBool>);

static PAUSE_IF: Mutex<Vec<Pause>> = Mutex::new(Vec::new());

type Step = Box<dyn FnOnce() + Send>;

static BEFORE_FINAL_COMMIT: Mutex<Option<Step>> = Mutex::new(None);

/// Makes a session wait before every event for which `f` returns true, for as long
/// as `paused` is set (its arbiter thread sleeps meanwhile).
pub fn pause_if(
    paused: Arc<std::sync::atomic::AtomicBool>,
    f: impl Fn(&Event) -> bool + Send + Sync + 'static,
) {
    PAUSE_IF
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((Arc::new(f), paused));
}

/// Runs `step` once, in the committer, after a drain has handed its work back and
/// before the final commit.
pub fn before_final_commit(step: impl FnOnce() + Send + 'static) {
    *BEFORE_FINAL_COMMIT
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(step));
}

pub(crate) fn final_commit() {
    let step = BEFORE_FINAL_COMMIT
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(step) = step {
        step();
    }
}

pub(crate) fn before_process(event: &Event) {
    let hooks: Vec<Hook> = PANIC_IF.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if hooks.iter().any(|h| h(event)) {
        panic!("test hook: injected panic for {}", event.transaction_key);
    }
    let pauses: Vec<Pause> = PAUSE_IF.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (h, paused) in pauses {
        if h(event) {
            while paused.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// A login whose attaching is held: `reached` is set when an attach of it gets
/// there, which then waits while `paused` is set.
type AttachPause = (
    String,
    Arc<std::sync::atomic::AtomicBool>,
    Arc<std::sync::atomic::AtomicBool>,
);

static PAUSE_ATTACH: Mutex<Vec<AttachPause>> = Mutex::new(Vec::new());

/// Holds every attach of `login_id` after its grants were checked against the login
/// and before it is registered (where it reads Kafka positions), for as long as
/// `paused` is set; `reached` is set when one gets there.
pub fn pause_attach(
    login_id: &str,
    paused: Arc<std::sync::atomic::AtomicBool>,
    reached: Arc<std::sync::atomic::AtomicBool>,
) {
    add(&PAUSE_ATTACH, login_id, paused, reached);
}

pub(crate) fn attaching(login_id: &str) {
    hold(&PAUSE_ATTACH, login_id);
}

static PAUSE_REGISTERING: Mutex<Vec<AttachPause>> = Mutex::new(Vec::new());

/// Holds every attach of `login_id` at the start of its registration: everything
/// before it is done (grants checked, positions read), nothing of it is visible to a
/// reload's scan yet, and the check against the table in force comes after it. For
/// as long as `paused` is set; `reached` is set when one gets there.
pub fn pause_registering(
    login_id: &str,
    paused: Arc<std::sync::atomic::AtomicBool>,
    reached: Arc<std::sync::atomic::AtomicBool>,
) {
    add(&PAUSE_REGISTERING, login_id, paused, reached);
}

fn add(
    pauses: &Mutex<Vec<AttachPause>>,
    login_id: &str,
    paused: Arc<std::sync::atomic::AtomicBool>,
    reached: Arc<std::sync::atomic::AtomicBool>,
) {
    pauses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((login_id.to_owned(), paused, reached));
}

pub(crate) fn registering(login_id: &str) {
    hold(&PAUSE_REGISTERING, login_id);
}

fn hold(pauses: &Mutex<Vec<AttachPause>>, login_id: &str) {
    use std::sync::atomic::Ordering;
    let pauses: Vec<AttachPause> = pauses.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (login, paused, reached) in pauses {
        if login == login_id {
            reached.store(true, Ordering::Release);
            while paused.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
