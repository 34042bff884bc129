//! The embedded demo's counts are measured and add up.

use std::time::Duration;

use mpn_notify::demo::{DemoOptions, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_delivers_everything_it_expects_and_dead_letters_the_rest() {
    let opts = DemoOptions {
        duration: Some(Duration::from_secs(3)),
        rate: 300,
        quiet: true,
        console: "127.0.0.1:0".parse().unwrap(),
        ..DemoOptions::default()
    };
    let summary = run(opts, std::future::pending()).await.unwrap();
    assert!(summary.produced >= 300, "{summary}");
    assert_eq!(summary.lost, 0, "{summary}");
    assert!(
        summary.delivered > 0 && summary.delivered < summary.produced,
        "resends and invalid records produce no new notification: {summary}"
    );
    assert!(summary.dead_lettered > 0, "{summary}");
    assert_eq!(
        summary.dead_lettered, summary.expected_dead_letters,
        "{summary}"
    );
    // The embedded history holds one row per notification the subscriber received.
    assert_eq!(summary.history_rows, summary.delivered, "{summary}");
    assert!(summary.is_complete(), "{summary}");
    assert!(summary.to_string().starts_with("demo: produced "));
}
