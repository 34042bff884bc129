//! CAFIS-style telegram links end to end: the engine (in process, mock cluster)
//! delivers notifications to simulated institution hosts that drop the connection,
//! refuse for now, refuse for good, or go silent; every notice ends up acknowledged
//! exactly once per host after dedupe, in order, and the refused ones are in the
//! dead-letter topic with their reason.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mpn_cafis::NackReason;
use mpn_engine::cafis::{Config as CafisConfig, LinkConfig};
use mpn_sim::cafis_host::{Behaviour, CafisHost, CafisHostConfig};

use crate::support::*;

/// Link settings that make failures show quickly in tests.
pub(crate) fn fast_links(hosts: &[(String, String)]) -> CafisConfig {
    CafisConfig {
        centre_id: "1234567890".into(),
        ack_timeout: Duration::from_millis(2_000),
        echo_interval: Duration::from_millis(300),
        echo_timeout: Duration::from_millis(500),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        retry_delay: Duration::from_millis(30),
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

pub(crate) async fn start_host(code: &str, behaviour: Behaviour) -> Arc<CafisHost> {
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
pub(crate) fn acked_keys(host: &CafisHost) -> Vec<String> {
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

/// Two engine binaries in one group and ten hosts: SIGKILL of one replica moves its
/// links to the other, which resends what was not acknowledged; nothing is lost and
/// no host ever sees notices from two connections at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_replica_that_owns_links_moves_them_without_loss_or_overlap() {
    use crate::binary::{temp_dir, write_config};
    use crate::recovery::{serve, wait_serving};

    const PER_HOST: u32 = 200;
    let codes: Vec<String> = (0..10).map(|i| inst(600 + i)).collect();
    let mut hosts = Vec::new();
    for code in &codes {
        hosts.push(start_host(code, Behaviour::default()).await);
    }
    let h = Harness::new(4, vec![]);
    let links: String = codes
        .iter()
        .zip(&hosts)
        .map(|(c, h)| format!("{{ institution = \"{c}\", host = \"{}\" }}", h.local_addr()))
        .collect::<Vec<_>>()
        .join(", ");
    let dir = temp_dir("cafis-replicas");
    let config = write_config(
        &dir,
        &format!(
            "[kafka]\nbootstrap_servers = \"{}\"\nsession_timeout_ms = 3000\ntopic_partitions = 4\n\
             [grpc]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n[ingest]\ndrain_timeout_ms = 500\n\
             [cafis]\ncentre_id = \"42\"\necho_interval_ms = 500\necho_timeout_ms = 1000\nbackoff_initial_ms = 20\n\
             backoff_max_ms = 500\nlinks = [{links}]\n",
            h.config.kafka.bootstrap_servers
        ),
    );
    let (mut a, addr_a) = serve(&config).await;
    wait_serving(&addr_a).await;
    for host in &hosts {
        eventually(
            "replica A connected every link",
            Duration::from_secs(30),
            || async { host.connections().accepted >= 1 },
        )
        .await;
    }
    // B joins: the group splits the partitions, and the links with them.
    let (mut b, addr_b) = serve(&config).await;
    wait_serving(&addr_b).await;
    eventually(
        "some links moved to replica B",
        Duration::from_secs(60),
        || async { hosts.iter().any(|h| h.connections().accepted >= 2) },
    )
    .await;
    let batch = |r: std::ops::RangeInclusive<u32>| -> Vec<Rec> {
        r.flat_map(|n| codes.iter().map(move |c| Rec::proto(&payment(c, n))))
            .collect()
    };
    h.publish_all(&batch(1..=50)).await;
    // Give the rebalance time to settle and the links time to move.
    eventually(
        "the first notices acknowledged",
        Duration::from_secs(60),
        || async { hosts.iter().all(|h| h.acknowledged().len() >= 50) },
    )
    .await;
    let before: Vec<u64> = hosts.iter().map(|h| h.connections().accepted).collect();

    // Kill A mid-stream.
    let publisher = {
        let records: Vec<mpn_sim::traffic::Record> = (51..=PER_HOST)
            .flat_map(|n| codes.iter().map(move |c| payment(c, n)))
            .map(|e| mpn_sim::traffic::Record {
                key: e.institution_code.clone(),
                payload: prost::Message::encode_to_vec(&e),
                content_type: None,
                fault: None,
                event: e,
            })
            .collect();
        let config = h.config.clone();
        tokio::spawn(async move {
            let p =
                mpn_sim::publish::Publisher::new(&config.kafka, &config.kafka.input_topic).unwrap();
            for chunk in records.chunks(50) {
                for r in futures::future::join_all(chunk.iter().map(|r| p.send(r))).await {
                    r.expect("published");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed = Instant::now();
    publisher.await.unwrap();

    // The links that lived on A reconnect from B; measure when each is back.
    let mut moved = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut pending: Vec<usize> = (0..hosts.len()).collect();
    while !pending.is_empty() && Instant::now() < deadline {
        pending.retain(|&i| {
            let full = hosts[i].acknowledged().len() >= PER_HOST as usize;
            if full && hosts[i].connections().accepted > before[i] {
                moved.push((i, killed.elapsed()));
            }
            !full
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, (code, host)) in codes.iter().zip(&hosts).enumerate() {
        let expected: Vec<String> = (1..=PER_HOST)
            .map(|s| payment(code, s).transaction_key)
            .collect();
        assert_eq!(acked_keys(host), expected, "host {i}: all, once, in order");
        assert!(
            host.violations().is_empty(),
            "host {i}: {:?}",
            host.violations()
        );
    }
    assert!(
        !moved.is_empty(),
        "replica A owned links when it was killed; they moved to B"
    );
    let first_resent: Vec<String> = moved
        .iter()
        .map(|(i, _)| {
            let r = hosts[*i].received();
            let last_conn = r.last().map(|x| x.connection).unwrap_or_default();
            let at = r
                .iter()
                .find(|x| x.connection == last_conn)
                .map(|x| x.arrived_at.saturating_duration_since(killed))
                .unwrap_or_default();
            format!("host {i}: first notice from B {at:?} after the kill")
        })
        .collect();
    println!(
        "links moved from the killed replica: {} of {} (session timeout 3000 ms); {}",
        moved.len(),
        hosts.len(),
        first_resent.join("; ")
    );
    b.start_kill().unwrap();
    let _ = b.wait().await;
    let _ = (addr_a, addr_b);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A link that has no cursor yet starts at the consumer group's committed position,
/// not at "now": payments that ingest consumes (and commits) before the link has
/// attached still reach the host. Here they are published before ingest opens, so
/// the link attaches only after they are in the topic. Before the fix the link
/// started at the high watermark and the host never saw them (0 of 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_link_starts_at_the_committed_position_not_at_now() {
    let code = inst(640);
    let host = start_host(&code, Behaviour::default()).await;
    let mut h = Harness::new(2, vec![]);
    h.config.cafis = fast_links(&[(code.clone(), host.local_addr().to_string())]);
    let engine = h.start().await;
    h.publish_all(
        &(1..=3)
            .map(|n| Rec::proto(&payment(&code, n)))
            .collect::<Vec<_>>(),
    )
    .await;
    engine.open_ingest();
    eventually("the link connected", Duration::from_secs(30), || async {
        host.connections().accepted >= 1
    })
    .await;
    h.publish_all(&[Rec::proto(&payment(&code, 4))]).await;
    eventually(
        "every payment acknowledged by the host",
        Duration::from_secs(30),
        || async { host.acknowledged().len() >= 4 },
    )
    .await;
    let expected: Vec<String> = (1..=4).map(|n| payment(&code, n).transaction_key).collect();
    assert_eq!(acked_keys(&host), expected, "once each, in order");
    engine.shutdown().await;
}

/// A raw host: accepts connections on loopback and runs `behave` on each.
async fn raw_host<F, Fut>(behave: F) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU64>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(behave(conn));
        }
    });
    (addr, accepted)
}

/// A host that trickles bytes which never make a telegram is not alive: the link
/// still sends its echo and reconnects when no answer comes. Before the fix every
/// byte counted as "heard from the host", the echo was never sent, and the link sat
/// on the dead connection for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_trickling_partial_bytes_is_found_dead() {
    use tokio::io::AsyncWriteExt as _;
    let code = inst(641);
    let (addr, accepted) = raw_host(|mut conn| async move {
        // A length prefix (4 ASCII digits, §3) announcing the longest telegram, then
        // a byte every 200 ms: it would take over 200 s to complete.
        let _ = conn.write_all(b"1024").await;
        loop {
            if conn.write_all(b"0").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let mut h = Harness::new(1, vec![]);
    h.config.cafis = fast_links(&[(code.clone(), addr.to_string())]);
    let engine = h.start().await;
    engine.open_ingest();
    eventually(
        "the link gave up on the trickling host and reconnected",
        Duration::from_secs(20),
        || {
            let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
            async move { n >= 2 }
        },
    )
    .await;
    engine.shutdown().await;
}

/// A host that floods echo requests and never reads the answers cannot freeze the
/// link: the answer's write is bounded, and the link reconnects. Before the fix the
/// link waited in that write for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_reads_echo_answers_cannot_freeze_the_link() {
    use tokio::io::AsyncWriteExt as _;
    let code = inst(642);
    let (addr, accepted) = raw_host(|mut conn| async move {
        let request = mpn_engine::cafis::wire::echo_request("1234567890", 1);
        let mut flood = Vec::with_capacity(request.len() * 1024);
        for _ in 0..1024 {
            flood.extend_from_slice(&request);
        }
        // Never reads: the engine's answers fill the socket buffers.
        loop {
            if conn.write_all(&flood).await.is_err() {
                return;
            }
        }
    })
    .await;
    let mut h = Harness::new(1, vec![]);
    h.config.cafis = fast_links(&[(code.clone(), addr.to_string())]);
    let engine = h.start().await;
    engine.open_ingest();
    eventually(
        "the link gave up on the host that does not read and reconnected",
        Duration::from_secs(30),
        || {
            let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
            async move { n >= 2 }
        },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(15), engine.shutdown())
        .await
        .expect("shutdown ends");
}

/// MPN's resend confirmation (再送確認) of a payment the host already booked, arriving
/// after the engine restarted (its sessions' dedupe window gone), reaches the host as
/// a notice of its own sequence; it carries the payment's transaction key and kind and
/// the resend flag, and a host that books once per (transaction key, kind), as the
/// spec now says, books the payment once. Before: it was sent with resend flag 0 and
/// a host deduplicating by (sequence, transaction key), as the spec said then, booked
/// the payment twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_confirmation_after_a_restart_is_booked_once() {
    use mpn_proto::mpn::v1 as ev;
    let code = inst(643);
    let host = start_host(&code, Behaviour::default()).await;
    let mut h = Harness::new(1, vec![]);
    h.config.cafis = fast_links(&[(code.clone(), host.local_addr().to_string())]);
    let engine = h.start().await;
    engine.open_ingest();
    let k = payment(&code, 7);
    h.publish_all(&[Rec::proto(&k)]).await;
    eventually(
        "the payment acknowledged",
        Duration::from_secs(30),
        || async { !host.acknowledged().is_empty() },
    )
    .await;
    engine.shutdown().await;

    // Published before the restarted engine consumes: the link reads them back
    // from Kafka (its cursor is below them).
    let engine = h.start().await;
    let mut resend = k.clone();
    resend.kind = ev::EventKind::ResendConfirmation as i32;
    h.publish_all(&[Rec::proto(&resend), Rec::proto(&payment(&code, 8))])
        .await;
    engine.open_ingest();
    eventually(
        "the resend confirmation and the next payment answered",
        Duration::from_secs(30),
        || async { host.acknowledged().len() >= 3 },
    )
    .await;
    let received = host.received();
    let copies: Vec<_> = received
        .iter()
        .filter(|r| r.transaction_key == k.transaction_key)
        .collect();
    assert_eq!(copies.len(), 2, "the payment and its resend confirmation");
    assert_ne!(
        copies[0].sequence, copies[1].sequence,
        "the confirmation has its own position in the log"
    );
    assert!(
        !copies[0].resend,
        "the payment's first send is not a resend"
    );
    assert!(copies[1].resend, "the resend confirmation is flagged");
    let next = received
        .iter()
        .find(|r| r.transaction_key == payment(&code, 8).transaction_key)
        .expect("the next payment arrived");
    assert!(
        !next.resend,
        "a notice first sent after the restart is not flagged (it was read back from Kafka)"
    );
    assert_eq!(
        host.bookings(),
        vec![
            (k.transaction_key.clone(), "confirmed"),
            (payment(&code, 8).transaction_key, "confirmed"),
        ],
        "the payment is booked once"
    );
    engine.shutdown().await;
}

/// Writes the notice telegram of `n` to a host and returns its answer.
async fn exchange(
    conn: &mut tokio::net::TcpStream,
    reader: &mut mpn_engine::cafis::wire::Reader,
    n: &mpn_proto::mpn::notify::v1::Notification,
) -> mpn_engine::cafis::wire::Reply {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let bytes = mpn_engine::cafis::wire::notice(n, 1, "1234567890", false)
        .unwrap()
        .unwrap();
    conn.write_all(&bytes).await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        if let Some(r) = reader.next_reply() {
            return r.unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(got > 0, "the host closed the connection");
        reader.push(&buf[..got]);
    }
}

/// The notification of a payment event at `offset` of partition 0.
fn notification_of(
    event: &mpn_proto::mpn::v1::PaymentEvent,
    offset: i64,
) -> mpn_proto::mpn::notify::v1::Notification {
    use prost::Message as _;
    mpn_engine::domain::check_record(
        None,
        Some(event.institution_code.as_bytes()),
        &event.encode_to_vec(),
    )
    .unwrap()
    .to_notification(0, offset)
}

/// Sequences wrap after 10^8 positions. The spec's cycles (§7) make a reused
/// sequence after the wrap no conflict: the reference host acknowledges it instead
/// of refusing it `P006` (which would dead-letter a payment). Before, the host
/// remembered every sequence for ever and refused it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrapped_sequence_is_no_conflict_at_the_host() {
    use mpn_engine::cafis::wire::{self, Reply};
    let code = inst(644);
    let host = start_host(&code, Behaviour::default()).await;
    let mut conn = tokio::net::TcpStream::connect(host.local_addr())
        .await
        .unwrap();
    let mut reader = wire::Reader::default();
    // With one partition the sequence is offset + 1.
    for (serial, offset) in [(1u32, 9i64), (2, 99_998_999), (3, 9)] {
        let n = notification_of(&payment(&code, serial), offset);
        match exchange(&mut conn, &mut reader, &n).await {
            Reply::Ack { sequence, .. } => assert_eq!(i64::from(sequence), offset + 1),
            other => panic!("notice {serial} at sequence {}: {other:?}", offset + 1),
        }
    }
    assert_eq!(host.bookings().len(), 3, "three payments booked");
}

/// Identity is (transaction key, kind) with its content: the same identity with
/// another body is not a duplicate to acknowledge silently (a host would then never
/// book it, nor tell anyone), it is refused `P007`, permanently, so the centre
/// dead-letters it for an operator; the first booking stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identity_with_another_body_is_refused_at_the_host() {
    use mpn_engine::cafis::wire::{self, Reply};
    let code = inst(645);
    let host = start_host(&code, Behaviour::default()).await;
    let mut conn = tokio::net::TcpStream::connect(host.local_addr())
        .await
        .unwrap();
    let mut reader = wire::Reader::default();
    let first = payment(&code, 1);
    let mut other = first.clone();
    other.amount += 1;
    let again = exchange(&mut conn, &mut reader, &notification_of(&first, 0)).await;
    assert!(matches!(again, Reply::Ack { .. }), "{again:?}");
    // The same notice again (another sequence): a duplicate, acknowledged.
    let dup = exchange(&mut conn, &mut reader, &notification_of(&first, 5)).await;
    assert!(matches!(dup, Reply::Ack { .. }), "{dup:?}");
    match exchange(&mut conn, &mut reader, &notification_of(&other, 9)).await {
        Reply::Nack {
            code, permanent, ..
        } => {
            assert_eq!(code, "P007");
            assert!(permanent);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(host.bookings().len(), 1);
}
