//! `demo-load` end to end, in-process: broker, engine, publisher and three durable
//! subscribers (one of them reconnecting), for five seconds at a modest rate. Bounded
//! in time.

use std::time::Duration;

use mpn_sim_cli::report::{Report, SCHEMA};
use mpn_sim_cli::settings::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_load_report_is_complete_and_clean() {
    mpn_engine::telemetry::init_logging(mpn_engine::config::LogFormat::Human, "error");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report");
    let settings = Settings {
        duration: Some(5),
        rate: Some(100.0),
        subscribers: Some(3),
        reconnect_every_secs: Some(2),
        ack_delay_ms: Some(2),
        out: Some(out.clone()),
        no_progress: true,
        ..Settings::default()
    };
    settings.check_demo().unwrap();
    let opts = settings.load_options(10).unwrap();
    let (report, written) = tokio::time::timeout(
        Duration::from_secs(90),
        mpn_sim_cli::demo::run(&opts, &settings.topic(), 6, std::future::pending()),
    )
    .await
    .expect("demo-load finished within 90 s")
    .expect("demo-load ran");
    println!("{report}");

    let c = &report.checks;
    assert_eq!(c.gaps, 0, "{report}");
    assert_eq!(c.order_violations, 0, "{report}");
    assert!(c.passed);
    let p = &report.published;
    assert!(p.records >= 400, "about 500 records in 5 s at 100/s: {p:?}");
    assert_eq!(p.errors, 0);
    assert!(p.invalid > 0 && p.valid > 0);
    let d = &report.delivered;
    assert!(d.notifications > 0);
    // Every subscriber is granted every institution, so each got every expected id.
    assert_eq!(d.distinct, 3 * p.expected_notifications, "{report}");
    let l = &report.latency_us;
    assert_eq!(l.count, d.distinct, "one latency per first delivery");
    assert!(l.p50 > 0 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
    assert_eq!(report.dead_letters.found, p.invalid, "{report}");
    assert!(report.dead_letters.error.is_none());
    assert_eq!(report.subscribers.len(), 3);
    assert!(
        report.subscribers[1].reconnects >= 1,
        "subscriber 1 reconnects every 2 s: {:?}",
        report.subscribers[1]
    );
    assert!(!report.timeline.is_empty());
    assert!(report.timeline.iter().any(|s| s.latency_p99_us.is_some()));

    assert_eq!(written.json, out.join("report.json"));
    let json: Report = serde_json::from_str(&std::fs::read_to_string(&written.json).unwrap())
        .expect("report.json reads back");
    assert_eq!(json.schema, SCHEMA);
    assert_eq!(json.checks, report.checks);
    assert_eq!(json.subscribers, report.subscribers);
    assert_eq!(json.timeline, report.timeline);
    let svg = std::fs::read_to_string(&written.svg).unwrap();
    let doc = roxmltree::Document::parse(&svg).expect("report.svg is well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    assert!(
        doc.descendants()
            .filter(|n| n.has_tag_name("polyline"))
            .count()
            >= 4
    );
}
