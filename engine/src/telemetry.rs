//! Logging and metrics set-up for the binary. Metric names follow
//! `mpn_<noun>_<verb>_<unit>_total`; they are listed in docs/ARCHITECTURE.md.

use std::net::SocketAddr;

use tracing_subscriber::EnvFilter;

/// Structured logs to stderr; `RUST_LOG` overrides `default_filter`.
pub fn init_logging(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// How long a gauge series stays exported after it was last set. The engine sets
/// every gauge it keeps again each second, so only series of what is gone (a
/// subscriber that left, a partition or link this replica no longer holds) lapse.
pub const SERIES_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// The exporter as the binary installs it; `idle` is [`SERIES_IDLE`] there.
pub fn prometheus(idle: std::time::Duration) -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(idle))
}

/// Serves Prometheus `/metrics` on `addr`.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    prometheus(SERIES_IDLE)
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))
}
