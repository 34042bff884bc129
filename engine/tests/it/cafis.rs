//! CAFIS-style telegram links end to end: the engine (in process, mock cluster)
//! delivers notifications to simulated institution hosts that drop the connection,
//! refuse for now, refuse for good, or go silent; every notice ends up acknowledged
//! exactly once per host after dedupe, in order, and the refused ones are in the
//! dead-letter topic with their reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpn_cafis::NackReason;
use mpn_notify::cafis::{Config as CafisConfig, LinkConfig};
use mpn_sim::cafis_host::{Behaviour, CafisHost, CafisHostConfig};

use crate::support::*;

/// Link settings that make failures show quickly in tests.
pub fn fast_links(hosts: &[(String, String)]) -> CafisConfig {
    CafisConfig {
        centre_id: "1234567890".into(),
        ack_timeout_ms: 2_000,
        echo_interval_ms: 300,
        echo_timeout_ms: 500,
        backoff_initial_ms: 20,
        backoff_max_ms: 300,
        retry_delay_ms: 30,
        links: hosts
            .iter()
            .map(|(institution, host)| LinkConfig {
                institution: institution.clone(),
                host: host.clone(),
            })
            .collect(),
        ..CafisConfig::default()
    }
}

pub async fn start_host(code: &str, behaviour: Behaviour) -> Arc<CafisHost> {
    Arc::new(
        CafisHost::start(CafisHostConfig {
            institution_code: Some(code.to_owned()),
            behaviour,
            ..CafisHostConfig::default()
        })
        .await
        .expect("host starts"),
    )
}

/// Transaction keys a host acknowledged, in order of first acknowledgement.
pub fn acked_keys(host: &CafisHost) -> Vec<String> {
    host.acknowledged()
        .into_iter()
        .map(|a| a.transaction_key)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_notices_to_ten_hosts_with_faults_arrive_once_and_in_order() {
    const PER_HOST: u32 = 500;
    let codes: Vec<String> = (0..10).map(inst).collect();
    let permanent: HashSet<String> = [10, 20, 30, 40, 50]
        .iter()
        .map(|&s| payment(&codes[2], s).transaction_key)
        .collect();
    let mut hosts = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        let behaviour = match i {
            // Drops its connection mid-stream without answering the notice.
            0 => Behaviour {
                drop_after_notices: Some(150),
                ..Behaviour::default()
            },
            // Busy now and then.
            1 => Behaviour {
                transient_nack_every: Some(7),
                ..Behaviour::default()
            },
            // Refuses five notices for good.
            2 => Behaviour {
                permanent_nack_keys: permanent.clone(),
                permanent_reason: Some(NackReason::UnknownCustomer),
                ..Behaviour::default()
            },
            // Slow.
            4 => Behaviour {
                ack_delay: Duration::from_millis(1),
                ..Behaviour::default()
            },
            // Busy for its first twenty notices.
            5 => Behaviour {
                transient_nack_next: 20,
                ..Behaviour::default()
            },
            _ => Behaviour::default(),
        };
        hosts.push(start_host(code, behaviour).await);
    }
    let links: Vec<(String, String)> = codes
        .iter()
        .zip(&hosts)
        .map(|(c, h)| (c.clone(), h.local_addr().to_string()))
        .collect();
    let mut h = Harness::new(4, vec![]);
    h.config.cafis = fast_links(&links);
    let engine = h.start().await;
    engine.open_ingest();
    for host in &hosts {
        eventually("every link connected", Duration::from_secs(30), || async {
            host.connections().accepted >= 1
        })
        .await;
    }
    assert_eq!(
        engine.cafis_links().owned().len(),
        10,
        "one replica owns every link"
    );

    // Host 3 goes silent mid-stream (not even echoes) until the link gives up on it
    // and reconnects.
    let silent = {
        let host = hosts[3].clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while host.acknowledged().len() < 100 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            host.update(|b| b.silent = true);
            let went_silent = Instant::now();
            while host.connections().accepted < 2 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            host.update(|b| b.silent = false);
            went_silent.elapsed()
        })
    };

    let mut records = Vec::new();
    for serial in 1..=PER_HOST {
        for code in &codes {
            records.push(Rec::proto(&payment(code, serial)));
        }
    }
    h.publish_all(&records).await;

    for (i, (code, host)) in codes.iter().zip(&hosts).enumerate() {
        let expected: Vec<String> = (1..=PER_HOST)
            .map(|s| payment(code, s).transaction_key)
            .filter(|k| !permanent.contains(k))
            .collect();
        eventually(
            &format!("host {i} acknowledged all {} notices", expected.len()),
            Duration::from_secs(90),
            || async { host.acknowledged().len() >= expected.len() },
        )
        .await;
        assert_eq!(
            acked_keys(host),
            expected,
            "host {i}: exactly once, in order"
        );
        assert!(
            host.violations().is_empty(),
            "host {i}: {:?}",
            host.violations()
        );
    }
    let detected = silent.await.unwrap();
    assert!(
        hosts[3].connections().accepted >= 2,
        "the silent host's link reconnected"
    );
    println!(
        "silent host detected and reconnected after {detected:?} (echo 300 ms + timeout 500 ms)"
    );
    assert!(
        hosts[0].connections().accepted >= 2,
        "host 0 dropped the link once"
    );
    let resent = hosts[0].received().iter().filter(|r| r.resend).count();
    assert!(
        resent >= 1,
        "the notice unanswered at the drop was resent, flagged"
    );
    assert!(
        hosts[1].duplicate_count() >= 1,
        "busy refusals were followed by resends of the same notice"
    );

    let letters = h.dead_letters(5).await;
    let mut refused = HashSet::new();
    for l in &letters {
        assert_eq!(l.header("mpn-error-kind"), "cafis_nack");
        assert_eq!(l.header("mpn-error-field"), "P003");
        assert!(l.header("mpn-error-message").contains("P003"), "{l:?}");
        let n: mpn_proto::mpn::notify::v1::Notification =
            prost::Message::decode(l.payload.as_slice()).unwrap();
        refused.insert(n.transaction_key);
    }
    assert_eq!(
        refused, permanent,
        "the permanently refused notices are dead-lettered"
    );
    engine.shutdown().await;
}
