//! Logging and metrics set-up for the binary. Every metric is declared once, in
//! [`metric`] (and the connectors' `mpn_grpc::metrics`, `mpn_cafis_link::metrics`), with its HELP text;
//! the naming convention is in docs/ARCHITECTURE.md ("Metrics").

pub mod metric;

use tracing_subscriber::EnvFilter;

/// Structured logs to stderr, as readable lines or one JSON object per line (every
/// field its own key); `RUST_LOG` overrides `default_filter`.
pub fn init_logging(format: crate::config::LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        crate::config::LogFormat::Human => builder.try_init(),
        crate::config::LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// How long a gauge series stays exported after it was last set. The engine sets
/// every gauge it keeps again each second, so only series of what is gone (a
/// subscriber that left, a partition or link this replica no longer holds) lapse.
pub const SERIES_IDLE: std::time::Duration = std::time::Duration::from_secs(60);

/// Histogram buckets (seconds) of every histogram: from 1 ms, where live delivery
/// sits, to a minute, where a stalled subscriber or host shows.
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The exporter as the binary installs it; `idle` is [`SERIES_IDLE`] there.
pub fn prometheus(idle: std::time::Duration) -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .idle_timeout(metrics_util::MetricKindMask::GAUGE, Some(idle))
        .set_buckets(BUCKETS)
        .expect("the buckets are not empty")
}

/// Installs the process's recorder; the returned handle renders `/metrics` (served
/// by the binary's metrics/admin listener).
pub fn install_metrics() -> crate::error::Result<metrics_exporter_prometheus::PrometheusHandle> {
    let handle = prometheus(SERIES_IDLE)
        .install_recorder()
        .map_err(|e| crate::Error::Runtime(format!("cannot install the metrics recorder: {e}")))?;
    describe();
    Ok(handle)
}

/// Every metric of the engine and its connectors: (name, kind, help text).
pub fn all_metrics() -> impl Iterator<Item = &'static (&'static str, &'static str, &'static str)> {
    metric::ALL
        .iter()
        .chain(mpn_grpc::metrics::ALL)
        .chain(mpn_cafis_link::metrics::ALL)
        .chain(mpn_history::metrics::ALL)
}

/// Gives the installed recorder each metric's HELP text (and the histogram's unit),
/// and exports every counter at 0 from the start (per label value for those with a
/// known set, [`metric::KNOWN_LABELS`]), so `rate()` and `increase()` see the first
/// event and a dashboard shows 0 rather than nothing. The refusals of CAFIS hosts are counted
/// by their reason only once one comes.
pub fn describe() {
    for &(name, kind, help) in all_metrics() {
        match kind {
            "counter" => metrics::describe_counter!(name, metrics::Unit::Count, help),
            "gauge" => metrics::describe_gauge!(name, help),
            _ => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
        }
        if kind != "counter" {
            continue;
        }
        match metric::KNOWN_LABELS.iter().find(|(n, ..)| *n == name) {
            Some((_, label, values)) => {
                for v in *values {
                    metrics::counter!(name, *label => *v).increment(0);
                }
            }
            None if name != mpn_cafis_link::metrics::CAFIS_NACKS_TOTAL => {
                metrics::counter!(name).increment(0);
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Docs follow the code: the table of docs/metrics.md lists exactly the metrics
    /// declared, with the same kinds; and no code emits a metric by a name of its
    /// own (every name is declared once).
    #[test]
    fn every_metric_is_declared_once_and_documented() {
        let doc = include_str!("../../docs/metrics.md");
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
            "docs/metrics.md vs the declared metrics"
        );
        let names: BTreeSet<&str> = super::all_metrics().map(|&(n, ..)| n).collect();
        assert_eq!(names.len(), declared.len(), "a name declared twice");
        for &(name, _, help) in super::all_metrics() {
            assert!(!help.is_empty(), "{name} has no help text");
        }
    }

    /// The Helm chart's alert rules (helm/mpn-notify/files/prometheus-rules.yaml):
    /// every expression parses as PromQL, names only metrics the engine exports (or
    /// Prometheus' own `up`), and every alert links a section of the runbook
    /// (docs/operations.md) that exists.
    #[test]
    fn every_alert_parses_names_exported_metrics_and_has_a_runbook_entry() {
        use promql_parser::parser;
        let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(include_str!(
            "../../helm/mpn-notify/files/prometheus-rules.yaml"
        ))
        .expect("the rules file is YAML");
        let runbook = include_str!("../../docs/operations.md");
        let anchors: BTreeSet<String> = runbook
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| {
                h.trim_start_matches('#')
                    .trim()
                    .to_lowercase()
                    .chars()
                    .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                    .map(|c| if c == ' ' { '-' } else { c })
                    .collect()
            })
            .collect();
        let exported = exported();
        let mut alerts = 0;
        for group in rules["groups"].as_sequence().expect("groups") {
            for rule in group["rules"].as_sequence().expect("rules") {
                let alert = rule["alert"].as_str().expect("an alert name");
                let expr = rule["expr"].as_str().expect("an expression");
                let parsed = parser::parse(expr).unwrap_or_else(|e| panic!("{alert}: {e}\n{expr}"));
                let used = metric_names(&parsed);
                assert!(!used.is_empty(), "{alert} names no metric");
                for n in used {
                    assert!(
                        exported.contains(&n),
                        "{alert} names {n}, which the engine does not export"
                    );
                }
                let url = rule["annotations"]["runbook_url"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
                let anchor = url
                    .split_once("docs/operations.md#")
                    .unwrap_or_else(|| panic!("{alert}: {url} is not a docs/operations.md anchor"))
                    .1;
                assert!(
                    anchors.contains(anchor),
                    "{alert}: docs/operations.md has no section #{anchor}"
                );
                assert_eq!(anchor, alert.to_lowercase(), "{alert}'s section is its own");
                alerts += 1;
            }
        }
        assert!(alerts >= 8, "only {alerts} alerts");
    }

    /// The metric names a PromQL expression selects.
    fn metric_names(e: &promql_parser::parser::Expr) -> Vec<String> {
        use promql_parser::parser::Expr;
        fn walk(e: &Expr, out: &mut Vec<String>) {
            match e {
                Expr::VectorSelector(v) => out.extend(v.name.clone()),
                Expr::MatrixSelector(m) => out.extend(m.vs.name.clone()),
                Expr::Aggregate(a) => {
                    walk(&a.expr, out);
                    if let Some(p) = &a.param {
                        walk(p, out);
                    }
                }
                Expr::Unary(u) => walk(&u.expr, out),
                Expr::Binary(b) => {
                    walk(&b.lhs, out);
                    walk(&b.rhs, out);
                }
                Expr::Paren(p) => walk(&p.expr, out),
                Expr::Subquery(s) => walk(&s.expr, out),
                Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
                Expr::Extension(_) | Expr::NumberLiteral(_) | Expr::StringLiteral(_) => {}
            }
        }
        let mut out = Vec::new();
        walk(e, &mut out);
        out
    }

    /// Every series name the engine exports (histograms with their `_bucket`,
    /// `_sum` and `_count`), and Prometheus' own `up`.
    fn exported() -> BTreeSet<String> {
        let mut exported: BTreeSet<String> = BTreeSet::from(["up".to_owned()]);
        for &(name, kind, _) in super::all_metrics() {
            exported.insert(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    exported.insert(format!("{name}{suffix}"));
                }
            }
        }
        exported
    }

    /// Every query of the chart's Grafana dashboard parses as PromQL (Grafana's
    /// `$__rate_interval` read as a duration) and names only exported metrics.
    #[test]
    fn every_dashboard_query_parses_and_names_exported_metrics() {
        fn targets(panel: &serde_json::Value, out: &mut Vec<String>) {
            for t in panel["targets"].as_array().into_iter().flatten() {
                out.extend(t["expr"].as_str().map(str::to_owned));
            }
            for p in panel["panels"].as_array().into_iter().flatten() {
                targets(p, out);
            }
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../helm/mpn-notify/files/dashboard.json"))
                .expect("the dashboard is JSON");
        let mut queries = Vec::new();
        for p in dashboard["panels"].as_array().expect("panels") {
            targets(p, &mut queries);
        }
        assert!(queries.len() >= 10, "only {} queries", queries.len());
        let exported = exported();
        for q in queries {
            let expr = q
                .replace("$__rate_interval", "5m")
                .replace("$__interval", "1m");
            let parsed = promql_parser::parser::parse(&expr).unwrap_or_else(|e| panic!("{e}\n{q}"));
            let used = metric_names(&parsed);
            assert!(!used.is_empty(), "{q} names no metric");
            for n in used {
                assert!(
                    exported.contains(&n),
                    "the dashboard queries {n}, which the engine does not export: {q}"
                );
            }
        }
    }
}
