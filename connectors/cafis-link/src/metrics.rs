//! Every metric the CAFIS-style links emit, declared once (name, kind, help text); the
//! engine describes them to the exporter with its own (`telemetry::metric`).

/// First send → acknowledgement (histogram).
pub const CAFIS_ACK_SECONDS: &str = "mpn_cafis_ack_seconds";
/// Notices acknowledged (counter).
pub const CAFIS_ACKS_TOTAL: &str = "mpn_cafis_acks_total";
/// Connection attempts failed (counter).
pub const CAFIS_CONNECT_FAILURES_TOTAL: &str = "mpn_cafis_connect_failures_total";
/// Connections made (counter).
pub const CAFIS_CONNECTS_TOTAL: &str = "mpn_cafis_connects_total";
/// 1 while the link's connection is open (gauge).
pub const CAFIS_LINK_UP: &str = "mpn_cafis_link_up";
/// CAFIS links this replica holds (gauge).
pub const CAFIS_LINKS_OWNED: &str = "mpn_cafis_links_owned";
/// Notices refused (counter).
pub const CAFIS_NACKS_TOTAL: &str = "mpn_cafis_nacks_total";
/// Connections lost (dead peer, time-out, closed) (counter).
pub const CAFIS_RECONNECTS_TOTAL: &str = "mpn_cafis_reconnects_total";
/// Notices sent again (after a reconnect or a transient refusal) (counter).
pub const CAFIS_RESENDS_TOTAL: &str = "mpn_cafis_resends_total";
/// Answers to no pending notice (late answers after a reconnect) (counter).
pub const CAFIS_STRAY_REPLIES_TOTAL: &str = "mpn_cafis_stray_replies_total";
/// Notices written, resends included (counter).
pub const CAFIS_TELEGRAMS_SENT_TOTAL: &str = "mpn_cafis_telegrams_sent_total";

/// Every metric above: (name, kind, help text), for the exporter's HELP lines and
/// the check that docs/ARCHITECTURE.md lists exactly these.
pub const ALL: &[(&str, &str, &str)] = &[
    (
        CAFIS_ACK_SECONDS,
        "histogram",
        "first send → acknowledgement",
    ),
    (CAFIS_ACKS_TOTAL, "counter", "notices acknowledged"),
    (
        CAFIS_CONNECT_FAILURES_TOTAL,
        "counter",
        "connection attempts failed",
    ),
    (CAFIS_CONNECTS_TOTAL, "counter", "connections made"),
    (
        CAFIS_LINK_UP,
        "gauge",
        "1 while the link's connection is open",
    ),
    (CAFIS_LINKS_OWNED, "gauge", "CAFIS links this replica holds"),
    (CAFIS_NACKS_TOTAL, "counter", "notices refused"),
    (
        CAFIS_RECONNECTS_TOTAL,
        "counter",
        "connections lost (dead peer, time-out, closed)",
    ),
    (
        CAFIS_RESENDS_TOTAL,
        "counter",
        "notices sent again (after a reconnect or a transient refusal)",
    ),
    (
        CAFIS_STRAY_REPLIES_TOTAL,
        "counter",
        "answers to no pending notice (late answers after a reconnect)",
    ),
    (
        CAFIS_TELEGRAMS_SENT_TOTAL,
        "counter",
        "notices written, resends included",
    ),
];
