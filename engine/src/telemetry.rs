//! Logging and metrics set-up for the binary. Every metric is declared once, in
//! [`metric`] (and the connectors' `mpn_grpc::metrics`, `mpn_cafis_link::metrics`), with its HELP text;
//! the naming convention is in docs/ARCHITECTURE.md ("Metrics").

pub mod metric;

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
pub fn init_metrics(addr: SocketAddr) -> crate::error::Result<()> {
    prometheus(SERIES_IDLE)
        .with_http_listener(addr)
        .install()
        .map_err(|e| crate::Error::Metrics {
            addr,
            message: e.to_string(),
        })?;
    describe();
    Ok(())
}

/// Every metric of the engine and its connectors: (name, kind, help text).
pub fn all_metrics() -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    metric::ALL
        .iter()
        .chain(mpn_grpc::metrics::ALL)
        .chain(mpn_cafis_link::metrics::ALL)
}

/// Gives the installed recorder each metric's HELP text (and the histogram's unit).
pub fn describe() {
    for &(name, kind, help) in all_metrics() {
        match kind {
            "counter" => metrics::describe_counter!(name, metrics::Unit::Count, help),
            "gauge" => metrics::describe_gauge!(name, help),
            _ => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Docs follow the code: the metrics table of docs/ARCHITECTURE.md lists exactly
    /// the metrics declared, with the same kinds; and no code emits a metric by a
    /// name of its own (every name is declared once).
    #[test]
    fn every_metric_is_declared_once_and_documented() {
        let doc = include_str!("../../docs/ARCHITECTURE.md");
        let mut documented = BTreeSet::new();
        for row in doc.lines().filter(|l| l.starts_with("| `mpn_")) {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            for name in cells[0].split('`').filter(|c| c.starts_with("mpn_")) {
                let name = name.split('{').next().unwrap_or(name);
                documented.insert((name.to_owned(), cells[1].to_owned()));
            }
        }
        let declared: BTreeSet<(String, String)> = super::all_metrics()
            .map(|&(n, k, _)| (n.to_owned(), k.to_owned()))
            .collect();
        assert_eq!(
            documented, declared,
            "docs/ARCHITECTURE.md vs the declared metrics"
        );
        let names: BTreeSet<&str> = super::all_metrics().map(|&(n, ..)| n).collect();
        assert_eq!(names.len(), declared.len(), "a name declared twice");
        for &(name, _, help) in super::all_metrics() {
            assert!(!help.is_empty(), "{name} has no help text");
        }
    }
}
