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

pub(crate) fn before_process(event: &Event) {
    let hooks: Vec<Hook> = PANIC_IF.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if hooks.iter().any(|h| h(event)) {
        panic!("test hook: injected panic for {}", event.transaction_key);
    }
}
