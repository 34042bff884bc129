//! 10,000 events across 50 institutions, 5 subscribers with different grants: each
//! subscriber receives exactly its institutions' events, each once, in per-institution
//! order; JSON and protobuf records mixed.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_exactly_its_institutions_in_order() {
    let codes: Vec<String> = (0..50).map(inst).collect();
    let range = |a: usize, b: usize| codes[a..b].to_vec();
    // (login, credential institution, grants, subscribed institutions)
    let plan: Vec<(&str, String, Vec<String>, Vec<String>)> = vec![
        ("city-a", codes[0].clone(), range(0, 10), vec![]),
        ("utility-b", codes[10].clone(), range(10, 30), vec![]),
        ("vendor-all", codes[0].clone(), codes.clone(), vec![]),
        ("single-d", codes[25].clone(), vec![], vec![]),
        ("subset-e", codes[40].clone(), range(40, 50), range(40, 45)),
    ];
    let mut h = Harness::new(
        8,
        plan.iter()
            .map(|(l, i, g, _)| credential(i, l, g))
            .collect(),
    );
    // The whole burst fits every queue: this test is about who gets what, not about
    // how fast a reader sharing the machine's two cores keeps up with a burst.
    h.config.grpc.queue_capacity = 16_384;
    let engine = h.start().await;
    let mut subs = Vec::new();
    for (l, i, _, wanted) in &plan {
        subs.push(subscribe(&engine, &login(i, l), wanted).await);
    }
    engine.open_ingest();

    // 200 rounds over 50 institutions; every other record is JSON; 5-digit codes on
    // some records (accepted and padded).
    let mut records = Vec::new();
    for round in 0..200u32 {
        for (i, code) in codes.iter().enumerate() {
            let mut e = payment(code, round);
            if i % 7 == 0 {
                e.institution_code = code[..5].to_owned();
            }
            records.push(if (round as usize + i).is_multiple_of(2) {
                Rec::json(&e)
            } else {
                Rec::proto(&e)
            });
        }
    }
    assert_eq!(records.len(), 10_000);
    h.publish_all(&records).await;

    let expected_institutions: Vec<HashSet<String>> = vec![
        range(0, 10).into_iter().collect(),
        range(10, 30).into_iter().collect(),
        codes.iter().cloned().collect(),
        [codes[25].clone()].into_iter().collect(),
        range(40, 45).into_iter().collect(),
    ];
    // Read all five streams at once: a subscriber that is not read falls behind and
    // is (rightly) disconnected as too slow.
    let readers: Vec<_> = subs
        .into_iter()
        .zip(expected_institutions)
        .map(|(mut s, expected)| {
            tokio::spawn(async move {
                let want = expected.len() * 200;
                let got = receive(&mut s, want, Duration::from_secs(120)).await;
                let mut per_inst: BTreeMap<String, Vec<u32>> = BTreeMap::new();
                let mut ids = HashSet::new();
                for n in &got {
                    assert!(
                        expected.contains(&n.institution_code),
                        "foreign institution {}",
                        n.institution_code
                    );
                    assert!(
                        ids.insert(n.notification_id.clone()),
                        "duplicate {}",
                        n.notification_id
                    );
                    per_inst
                        .entry(n.institution_code.clone())
                        .or_default()
                        .push(serial(n));
                }
                assert_eq!(per_inst.len(), expected.len());
                for (code, serials) in per_inst {
                    assert_eq!(serials, (0..200).collect::<Vec<_>>(), "order of {code}");
                }
                assert_nothing_more(&mut s, Duration::from_millis(300)).await;
            })
        })
        .collect();
    for r in readers {
        r.await.expect("subscriber checks");
    }
    engine.shutdown().await;
}
