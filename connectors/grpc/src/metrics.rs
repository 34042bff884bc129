//! Every metric the gRPC connector emits, declared once (name, kind, help text); the
//! engine describes them to the exporter with its own (`telemetry::metric`).

/// Event publish time to the notification written to the stream (stage="send") or acknowledged (stage="ack") (histogram, seconds).
pub const DELIVERY_LATENCY_SECONDS: &str = "mpn_delivery_latency_seconds";
/// Age of the oldest notification handed to a subscriber and not yet acknowledged, the largest over subscribers (gauge, seconds).
pub const DELIVERY_AGE_SECONDS: &str = "mpn_delivery_age_seconds";
/// Notifications sent or queued, then handed back unacknowledged (the subscriber left, was ended or the engine stopped): they are delivered again (counter).
pub const GRPC_REDELIVERIES_TOTAL: &str = "mpn_grpc_redeliveries_total";
/// Notifications acknowledged (counter).
pub const GRPC_ACKS_TOTAL: &str = "mpn_grpc_acks_total";
/// Logins refused at once past grpc.max_pending_logins (counter).
pub const GRPC_LOGINS_REFUSED_TOTAL: &str = "mpn_grpc_logins_refused_total";
/// Notifications written to streams (counter).
pub const GRPC_NOTIFICATIONS_SENT_TOTAL: &str = "mpn_grpc_notifications_sent_total";
/// Subscribers disconnected for not acknowledging (counter).
pub const GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL: &str = "mpn_grpc_subscriber_ack_timeouts_total";
/// Open subscriptions (gauge).
pub const GRPC_SUBSCRIBERS: &str = "mpn_grpc_subscribers";

/// TLS handshakes refused or abandoned, by reason (counter): see [`TLS_HANDSHAKE_FAILURE_REASONS`].
pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "mpn_tls_handshake_failures_total";
/// The `reason` values of [`TLS_HANDSHAKE_FAILURES_TOTAL`]: no client certificate
/// where one is required, one from an unknown CA, an expired one, another bad
/// certificate, another protocol error, no ClientHello or no handshake within the
/// time-outs, more than `grpc.tls.max_pending_handshakes` in progress, more than
/// `grpc.tls.max_pending_handshakes_per_peer` in progress from the peer's address.
pub const TLS_HANDSHAKE_FAILURE_REASONS: &[&str] = &[
    "certificate_required",
    "unknown_ca",
    "certificate_expired",
    "bad_certificate",
    "protocol",
    "timeout",
    "too_many_pending",
    "too_many_pending_from_peer",
];

/// Every metric above: (name, kind, help text), for the exporter's HELP lines and
/// the check that docs/ARCHITECTURE.md lists exactly these.
pub const ALL: &[(&str, &str, &str)] = &[
    (
        DELIVERY_LATENCY_SECONDS,
        "histogram",
        "event publish time to the notification written to the stream (stage=send) or acknowledged (stage=ack)",
    ),
    (
        DELIVERY_AGE_SECONDS,
        "gauge",
        "age of the oldest notification handed to a subscriber and not yet acknowledged (largest over subscribers; per institution with metrics.tenant_labels)",
    ),
    (
        GRPC_REDELIVERIES_TOTAL,
        "counter",
        "notifications sent or queued, then handed back unacknowledged (subscriber gone, ended or engine stopping); a durable subscriber gets them again",
    ),
    (GRPC_ACKS_TOTAL, "counter", "notifications acknowledged"),
    (
        GRPC_LOGINS_REFUSED_TOTAL,
        "counter",
        "logins refused at once past grpc.max_pending_logins",
    ),
    (
        GRPC_NOTIFICATIONS_SENT_TOTAL,
        "counter",
        "notifications written to streams",
    ),
    (
        GRPC_SUBSCRIBER_ACK_TIMEOUTS_TOTAL,
        "counter",
        "subscribers disconnected for not acknowledging",
    ),
    (GRPC_SUBSCRIBERS, "gauge", "open subscriptions"),
    (
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "counter",
        "TLS handshakes refused or abandoned, by reason: certificate_required / unknown_ca / certificate_expired / bad_certificate / protocol / timeout / too_many_pending",
    ),
];
