//! Every metric the engine emits, declared once (name, kind, help text). Code emits
//! them through these names only; `docs/ARCHITECTURE.md` lists the same set, with
//! the gRPC connector's (`mpn_grpc::metrics`) and the CAFIS link's
//! (`mpn_cafis_link::metrics`), and a test keeps the two in step.

/// Always 1; its `version` label is the running build (gauge).
pub const BUILD_INFO: &str = "mpn_build_info";
/// 1 while every readiness check passes (what /readyz answers), else 0 (gauge).
pub const READY: &str = "mpn_ready";
/// Records in the partition not yet consumed: the broker's high watermark minus the engine's position, by partition (gauge).
pub const INGEST_CONSUMER_LAG: &str = "mpn_ingest_consumer_lag";
/// Notifications waiting in a subscriber's queue, by subscriber (gauge).
pub const SUBSCRIBER_QUEUE_DEPTH: &str = "mpn_subscriber_queue_depth";
/// Audit records dropped (the writer behind, or the broker refusing them) (counter).
pub const AUDIT_RECORDS_DROPPED_TOTAL: &str = "mpn_audit_records_dropped_total";
/// Refusals during a lockout after its first, not written to the audit trail (each is in mpn_auth_failures_total{reason="locked_out"}) (counter).
pub const AUDIT_RECORDS_SUPPRESSED_TOTAL: &str = "mpn_audit_records_suppressed_total";
/// Refused logins, by reason: bad_credentials / locked_out / bad_certificate / ambiguous_certificate (counter).
pub const AUTH_FAILURES_TOTAL: &str = "mpn_auth_failures_total";
/// Lockouts started, by scope: login / peer (counter).
pub const AUTH_LOCKOUTS_TOTAL: &str = "mpn_auth_lockouts_total";
/// Catch-up readers: such answers that no earlier start mended (records skipped by the broker) (counter).
pub const CATCHUP_FETCH_GAPS_TOTAL: &str = "mpn_catchup_fetch_gaps_total";
/// Catch-up readers: a first fetch after an assignment came back past the position (a broker that answers inside-a-batch fetches with the next batch); read again from earlier (counter).
pub const CATCHUP_FETCH_REWINDS_TOTAL: &str = "mpn_catchup_fetch_rewinds_total";
/// Notifications queued by catch-up readers (counter).
pub const CATCHUP_NOTIFICATIONS_TOTAL: &str = "mpn_catchup_notifications_total";
/// Durable ids removed after cursors.expire_after_hours unused (counter).
pub const CURSOR_IDS_EXPIRED_TOTAL: &str = "mpn_cursor_ids_expired_total";
/// Cursor records written (counter).
pub const CURSOR_WRITES_TOTAL: &str = "mpn_cursor_writes_total";
/// Dead letters written, by decode / validation / session_panic / cafis_nack / cafis_encode (counter).
pub const DLQ_RECORDS_TOTAL: &str = "mpn_dlq_records_total";
/// Ephemeral subscribers cut off as too slow (counter).
pub const GRPC_SUBSCRIBER_OVERFLOWS_TOTAL: &str = "mpn_grpc_subscriber_overflows_total";
/// Consumer errors (counter).
pub const INGEST_ERRORS_TOTAL: &str = "mpn_ingest_errors_total";
/// Ingest: such answers that no earlier start mended (records skipped by the broker) (counter).
pub const INGEST_FETCH_GAPS_TOTAL: &str = "mpn_ingest_fetch_gaps_total";
/// Ingest: a first fetch after an assignment came back past the position (a broker that answers inside-a-batch fetches with the next batch); read again from earlier (counter).
pub const INGEST_FETCH_REWINDS_TOTAL: &str = "mpn_ingest_fetch_rewinds_total";
/// Records met on a partition past the pinned count (the topic grew; the engine stops) (counter).
pub const INGEST_GROWN_PARTITIONS_TOTAL: &str = "mpn_ingest_grown_partitions_total";
/// Records consumed, not yet finalised (gauge).
pub const INGEST_IN_FLIGHT: &str = "mpn_ingest_in_flight";
/// Partitions revoked from this replica by rebalances (cooperative: only those that move) (counter).
pub const INGEST_PARTITIONS_REVOKED_TOTAL: &str = "mpn_ingest_partitions_revoked_total";
/// Records consumed (counter).
pub const INGEST_RECORDS_TOTAL: &str = "mpn_ingest_records_total";
/// Keyed records not on murmur2(key) mod n, dead-lettered (counter).
pub const INGEST_WRONG_PARTITION_TOTAL: &str = "mpn_ingest_wrong_partition_total";
/// Holds dropped without completion (a bug; redelivered after restart) (counter).
pub const OFFSET_HOLDS_LEAKED_TOTAL: &str = "mpn_offset_holds_leaked_total";
/// Commits made (counter).
pub const OFFSETS_COMMITS_TOTAL: &str = "mpn_offsets_commits_total";
/// Last committed position (gauge).
pub const OFFSETS_COMMITTED: &str = "mpn_offsets_committed";
/// Duplicate records dropped by the dedupe window (counter).
pub const SESSION_DUPLICATES_DROPPED_TOTAL: &str = "mpn_session_duplicates_dropped_total";
/// Events dead-lettered after the restart budget (counter).
pub const SESSION_POISON_EVENTS_TOTAL: &str = "mpn_session_poison_events_total";
/// Sessions re-created after stopping (counter).
pub const SESSION_RESPAWNS_TOTAL: &str = "mpn_session_respawns_total";
/// Session restarts after a panic (counter).
pub const SESSION_RESTARTS_TOTAL: &str = "mpn_session_restarts_total";
/// Institution sessions alive (gauge).
pub const SESSIONS: &str = "mpn_sessions";
/// Sessions stopped after sessions.idle_evict_after_ms without an event (or found dead) (counter).
pub const SESSIONS_EVICTED_TOTAL: &str = "mpn_sessions_evicted_total";
/// Partitions of durable subscribers sent back to catch-up (queue full) (counter).
pub const SUBSCRIBER_CATCHUPS_TOTAL: &str = "mpn_subscriber_catchups_total";
/// Released tokens whose offset no longer pins a cursor (the partition is read again from below) (counter).
pub const SUBSCRIBER_CURSOR_PINS_CLEARED_TOTAL: &str = "mpn_subscriber_cursor_pins_cleared_total";
/// Durable subscriber's cursors behind what ingest consumed (records, summed over partitions) (gauge).
pub const SUBSCRIBER_LAG: &str = "mpn_subscriber_lag";

/// The `kind` label values of [`DLQ_RECORDS_TOTAL`].
pub const DLQ_KINDS: &[&str] = &[
    "decode",
    "validation",
    "session_panic",
    "cafis_nack",
    "cafis_encode",
];

/// Counters whose one label takes a known set of values: exported at 0 for each
/// from the start.
pub const KNOWN_LABELS: &[(&str, &str, &[&str])] = &[
    (DLQ_RECORDS_TOTAL, "kind", DLQ_KINDS),
    (
        AUTH_FAILURES_TOTAL,
        "reason",
        &[
            "bad_credentials",
            "locked_out",
            "bad_certificate",
            "ambiguous_certificate",
        ],
    ),
    (AUTH_LOCKOUTS_TOTAL, "scope", &["login", "peer"]),
    (
        mpn_grpc::metrics::TLS_HANDSHAKE_FAILURES_TOTAL,
        "reason",
        mpn_grpc::metrics::TLS_HANDSHAKE_FAILURE_REASONS,
    ),
];

/// Every metric above: (name, kind, help text), for the exporter's HELP lines and
/// the check that docs/ARCHITECTURE.md lists exactly these.
pub const ALL: &[(&str, &str, &str)] = &[
    (
        BUILD_INFO,
        "gauge",
        "always 1; its version label is the running build",
    ),
    (
        READY,
        "gauge",
        "1 while every readiness check passes (what /readyz answers), else 0",
    ),
    (
        INGEST_CONSUMER_LAG,
        "gauge",
        "records in the partition not yet consumed: the broker's high watermark minus the engine's position",
    ),
    (
        SUBSCRIBER_QUEUE_DEPTH,
        "gauge",
        "notifications waiting in a subscriber's queue",
    ),
    (
        AUDIT_RECORDS_DROPPED_TOTAL,
        "counter",
        "audit records dropped (the writer behind, or the broker refusing them)",
    ),
    (
        AUDIT_RECORDS_SUPPRESSED_TOTAL,
        "counter",
        "refusals during a lockout after its first, not written to the audit trail (one login_failed record per key and lockout)",
    ),
    (
        AUTH_FAILURES_TOTAL,
        "counter",
        "refused logins, by reason: bad_credentials / locked_out / bad_certificate / ambiguous_certificate",
    ),
    (
        AUTH_LOCKOUTS_TOTAL,
        "counter",
        "lockouts started, by scope: login / peer",
    ),
    (
        CATCHUP_FETCH_GAPS_TOTAL,
        "counter",
        "catch-up readers: such answers that no earlier start mended (records skipped by the broker)",
    ),
    (
        CATCHUP_FETCH_REWINDS_TOTAL,
        "counter",
        "catch-up readers: a first fetch after an assignment came back past the position (a broker that answers inside-a-batch fetches with the next batch); read again from earlier",
    ),
    (
        CATCHUP_NOTIFICATIONS_TOTAL,
        "counter",
        "notifications queued by catch-up readers",
    ),
    (
        CURSOR_IDS_EXPIRED_TOTAL,
        "counter",
        "durable ids removed after cursors.expire_after_hours unused",
    ),
    (CURSOR_WRITES_TOTAL, "counter", "cursor records written"),
    (
        DLQ_RECORDS_TOTAL,
        "counter",
        "dead letters written, by decode / validation / session_panic / cafis_nack / cafis_encode",
    ),
    (
        GRPC_SUBSCRIBER_OVERFLOWS_TOTAL,
        "counter",
        "ephemeral subscribers cut off as too slow",
    ),
    (INGEST_ERRORS_TOTAL, "counter", "consumer errors"),
    (
        INGEST_FETCH_GAPS_TOTAL,
        "counter",
        "ingest: such answers that no earlier start mended (records skipped by the broker)",
    ),
    (
        INGEST_FETCH_REWINDS_TOTAL,
        "counter",
        "ingest: a first fetch after an assignment came back past the position (a broker that answers inside-a-batch fetches with the next batch); read again from earlier",
    ),
    (
        INGEST_GROWN_PARTITIONS_TOTAL,
        "counter",
        "records met on a partition past the pinned count (the topic grew; the engine stops)",
    ),
    (
        INGEST_IN_FLIGHT,
        "gauge",
        "records consumed, not yet finalised",
    ),
    (
        INGEST_PARTITIONS_REVOKED_TOTAL,
        "counter",
        "partitions revoked from this replica by rebalances (cooperative: only those that move)",
    ),
    (INGEST_RECORDS_TOTAL, "counter", "records consumed"),
    (
        INGEST_WRONG_PARTITION_TOTAL,
        "counter",
        "keyed records not on murmur2(key) mod n, dead-lettered",
    ),
    (
        OFFSET_HOLDS_LEAKED_TOTAL,
        "counter",
        "holds dropped without completion (a bug; redelivered after restart)",
    ),
    (OFFSETS_COMMITS_TOTAL, "counter", "commits made"),
    (OFFSETS_COMMITTED, "gauge", "last committed position"),
    (
        SESSION_DUPLICATES_DROPPED_TOTAL,
        "counter",
        "duplicate records dropped by the dedupe window",
    ),
    (
        SESSION_POISON_EVENTS_TOTAL,
        "counter",
        "events dead-lettered after the restart budget",
    ),
    (
        SESSION_RESPAWNS_TOTAL,
        "counter",
        "sessions re-created after stopping",
    ),
    (
        SESSION_RESTARTS_TOTAL,
        "counter",
        "session restarts after a panic",
    ),
    (SESSIONS, "gauge", "institution sessions alive"),
    (
        SESSIONS_EVICTED_TOTAL,
        "counter",
        "sessions stopped after sessions.idle_evict_after_ms without an event (or found dead)",
    ),
    (
        SUBSCRIBER_CATCHUPS_TOTAL,
        "counter",
        "partitions of durable subscribers sent back to catch-up (queue full)",
    ),
    (
        SUBSCRIBER_CURSOR_PINS_CLEARED_TOTAL,
        "counter",
        "released tokens whose offset no longer pins a cursor (the partition is read again from below)",
    ),
    (
        SUBSCRIBER_LAG,
        "gauge",
        "durable subscriber's cursors behind what ingest consumed (records, summed over partitions)",
    ),
];
