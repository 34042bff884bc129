//! Whether metric labels may name tenants (`metrics.tenant_labels`). Off by default:
//! a scraper then sees no institution code or subscriber name, only aggregates and
//! opaque stream numbers; the admin API (behind the operator token) maps them. The
//! setting is process-wide because the metrics recorder is.

use std::sync::atomic::{AtomicBool, Ordering};

static TENANT_LABELS: AtomicBool = AtomicBool::new(false);

/// Set once at start-up from the configuration.
pub fn set_tenant_labels(on: bool) {
    TENANT_LABELS.store(on, Ordering::Relaxed);
}

pub fn tenant_labels() -> bool {
    TENANT_LABELS.load(Ordering::Relaxed)
}

/// The `subscriber` label of a subscription: its name when tenant labels are on,
/// else the opaque number of its stream in this process (`s<id>`).
pub fn subscriber_label(id: u64, name: &str) -> String {
    if tenant_labels() {
        name.to_owned()
    } else {
        format!("s{id}")
    }
}

/// The `institution` label of a per-institution series: present only with tenant
/// labels on (without, the series is the aggregate over institutions). For the
/// `labels` argument of the `metrics` macros.
pub fn institution(code: &str) -> Vec<(&'static str, String)> {
    if tenant_labels() {
        vec![("institution", code.to_owned())]
    } else {
        Vec::new()
    }
}
