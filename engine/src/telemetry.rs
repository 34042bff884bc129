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

/// Serves Prometheus `/metrics` on `addr`.
pub fn init_metrics(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| anyhow::anyhow!("metrics.listen {addr}: {e}"))
}
