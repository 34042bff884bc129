//! The Prometheus exporter as the binary installs it: series of what is gone lapse,
//! the rest stay. Runs without the debugging recorder of `support::metrics` (one
//! recorder per process; nextest runs each test in its own).

use std::time::Duration;

use mpn_proto::mpn::notify::v1 as pb;
use mpn_sim::subscriber::Subscriber;

use crate::support::*;

/// A durable subscriber's `mpn_subscriber_lag` series is exported while it is
/// connected and goes once it has left, while every other gauge (set again each
/// second) stays. Before the fix a departed subscriber's series stayed for the life
/// of the process: one more per subscriber id ever seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_subscribers_lag_series_goes_and_the_other_gauges_stay() {
    let idle = Duration::from_secs(3);
    let handle = mpn_engine::telemetry::prometheus(idle)
        .install_recorder()
        .expect("the only recorder of this process");
    mpn_engine::telemetry::describe();
    let code = inst(140);
    let h = Harness::new(1, vec![credential(&code, "billing", &[])]);
    let engine = h.start().await;
    engine.open_ingest();
    let addr = engine.grpc_addr().to_string();
    let mut s = Subscriber::durable(
        &addr,
        &login(&code, "billing"),
        &[],
        "erp-lag",
        pb::StartFrom::Cursor,
    )
    .await
    .expect("subscribe");
    h.publish_all(&[Rec::proto(&payment(&code, 1))]).await;
    receive(&mut s, 1, Duration::from_secs(20)).await;
    let lag_line = |text: &str| {
        text.lines()
            .any(|l| l.starts_with("mpn_subscriber_lag{") && l.contains("erp-lag"))
    };
    eventually(
        "the lag series is exported",
        Duration::from_secs(10),
        || {
            let text = handle.render();
            async move { lag_line(&text) }
        },
    )
    .await;
    drop(s);
    eventually(
        "the departed subscriber's series goes",
        Duration::from_secs(30),
        || {
            let text = handle.render();
            async move { !lag_line(&text) }
        },
    )
    .await;
    // Past another idle period: whatever was set only once (when the subscriber left,
    // say) would be gone now too.
    tokio::time::sleep(idle + Duration::from_secs(1)).await;
    let text = handle.render();
    for gauge in [
        "mpn_sessions ",
        "mpn_grpc_subscribers ",
        "mpn_ingest_in_flight ",
        "mpn_offsets_committed{",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(gauge)),
            "{gauge:?} lapsed although it is still kept:\n{text}"
        );
    }
    for help in [
        "# HELP mpn_sessions institution sessions alive",
        "# HELP mpn_grpc_subscribers open subscriptions",
    ] {
        assert!(text.contains(help), "{help:?} missing:\n{text}");
    }
    engine.shutdown().await;
}
