//! Every metric the history writer emits, declared once (name, kind, help text); the
//! engine describes them to the exporter with its own (`telemetry::metric`).

/// Rows written for the first time (redeliveries not counted) (counter).
pub const HISTORY_ROWS_WRITTEN_TOTAL: &str = "mpn_history_rows_written_total";
/// Batches whose transaction failed; their notifications are read again from Kafka (counter).
pub const HISTORY_WRITE_FAILURES_TOTAL: &str = "mpn_history_write_failures_total";
/// One batch's transaction (histogram).
pub const HISTORY_WRITE_SECONDS: &str = "mpn_history_write_seconds";
/// Institutions whose history this replica writes (gauge).
pub const HISTORY_WRITERS_OWNED: &str = "mpn_history_writers_owned";
/// Attaching a writer's subscription failed (counter).
pub const HISTORY_ATTACH_FAILURES_TOTAL: &str = "mpn_history_attach_failures_total";
/// Rows removed by retention (counter).
pub const HISTORY_ROWS_EXPIRED_TOTAL: &str = "mpn_history_rows_expired_total";

/// Every metric above: (name, kind, help text).
pub const ALL: &[(&str, &str, &str)] = &[
    (
        HISTORY_ATTACH_FAILURES_TOTAL,
        "counter",
        "history writers' subscriptions that could not attach (retried)",
    ),
    (
        HISTORY_ROWS_WRITTEN_TOTAL,
        "counter",
        "history rows written for the first time",
    ),
    (
        HISTORY_WRITE_FAILURES_TOTAL,
        "counter",
        "history batches whose transaction failed (read again from Kafka)",
    ),
    (
        HISTORY_WRITE_SECONDS,
        "histogram",
        "one history batch's transaction",
    ),
    (
        HISTORY_WRITERS_OWNED,
        "gauge",
        "institutions whose history this replica writes",
    ),
    (
        HISTORY_ROWS_EXPIRED_TOTAL,
        "counter",
        "history rows removed by retention",
    ),
];
