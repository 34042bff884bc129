//! The CAFIS-style host simulator, driven over loopback by a minimal centre written
//! with the `mpn-cafis` codec. Every test is bounded in time.

use std::future::Future;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use mpn_cafis::{
    Body, Channel, CollectionMethod, Deframer, Header, NackReason, Notice, NoticeKind, Telegram,
    TelegramType, decode, encode,
};
use mpn_sim::cafis_host::{Behaviour, CafisHost, CafisHostConfig, OVERLAP_GRACE, Violation};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(300);
const LONG: Duration = Duration::from_secs(5);

async fn bounded<F: Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(20), test)
        .await
        .expect("test took longer than 20 s");
}

fn at() -> chrono::NaiveDateTime {
    NaiveDate::from_ymd_opt(2026, 5, 31)
        .unwrap()
        .and_hms_opt(10, 15, 0)
        .unwrap()
}

fn key(serial: u32) -> String {
    format!("123456789020260531{serial:08}")
}

fn header(sequence: u32) -> Header {
    Header {
        sequence,
        resend: false,
        centre_id: "1234567890".into(),
        sent_at: at(),
    }
}

fn notice(sequence: u32, serial: u32) -> Telegram {
    Telegram {
        header: header(sequence),
        body: Body::PaymentNotice(Box::new(Notice {
            institution_code: "12345000".into(),
            transaction_key: key(serial),
            kind: NoticeKind::Confirmed,
            customer_number: format!("C{serial}"),
            confirmation_number: String::new(),
            payment_class: String::new(),
            amount: 1_000 + u64::from(serial),
            bank_code: "0001".into(),
            branch_code: "001".into(),
            channel: Channel::Atm,
            collection_method: CollectionMethod::Online,
            paid_at: at(),
            fee_name: "水道料金".into(),
            payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
        })),
    }
}

fn resend(mut t: Telegram) -> Telegram {
    t.header.resend = true;
    t
}

fn echo(sequence: u32) -> Telegram {
    Telegram {
        header: header(sequence),
        body: Body::EchoRequest,
    }
}

#[derive(Debug)]
enum Got {
    Telegram(Box<Telegram>),
    Closed,
    Nothing,
}

/// The centre's side of one connection.
struct Centre {
    stream: TcpStream,
    deframer: Deframer,
}

impl Centre {
    async fn connect(host: &CafisHost) -> Self {
        Self {
            stream: TcpStream::connect(host.local_addr()).await.unwrap(),
            deframer: Deframer::new(),
        }
    }

    async fn send(&mut self, t: &Telegram) {
        self.stream.write_all(&encode(t).unwrap()).await.unwrap();
    }

    async fn recv(&mut self, within: Duration) -> Got {
        let deadline = tokio::time::Instant::now() + within;
        let mut buf = [0u8; 1024];
        loop {
            if let Some(frame) = self.deframer.next_frame().unwrap() {
                return Got::Telegram(Box::new(decode(&frame).unwrap()));
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return Got::Nothing,
                Ok(Ok(0)) | Ok(Err(_)) => return Got::Closed,
                Ok(Ok(n)) => self.deframer.push(&buf[..n]),
            }
        }
    }

    async fn answer(&mut self) -> Telegram {
        match self.recv(LONG).await {
            Got::Telegram(t) => *t,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    /// Sends a notice and returns the answer's type and nack reason.
    async fn exchange(&mut self, t: &Telegram) -> (TelegramType, Option<NackReason>) {
        self.send(t).await;
        let a = self.answer().await;
        assert_eq!(a.sequence(), t.sequence(), "an answer echoes the sequence");
        assert_eq!(a.transaction_key(), t.transaction_key(), "and the key");
        assert_eq!(a.is_resend(), t.is_resend(), "and the resend flag");
        let ty = a.telegram_type();
        let reason = match a.body {
            Body::Nack(n) => Some(n.reason),
            _ => None,
        };
        (ty, reason)
    }
}

async fn host(behaviour: Behaviour) -> CafisHost {
    CafisHost::start(CafisHostConfig {
        institution_code: Some("12345000".into()),
        behaviour,
        ..CafisHostConfig::default()
    })
    .await
    .unwrap()
}

/// Polls until `cond` holds or the deadline passes.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + LONG;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn acknowledges_notices_and_answers_echoes() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        assert!(host.local_addr().ip().is_loopback());
        let mut c = Centre::connect(&host).await;
        c.send(&echo(7)).await;
        let a = c.answer().await;
        assert_eq!(
            (a.telegram_type(), a.sequence()),
            (TelegramType::EchoResponse, 7)
        );
        for seq in 1..=3 {
            assert_eq!(
                c.exchange(&notice(seq, seq)).await,
                (TelegramType::Ack, None)
            );
        }
        eventually("3 acks recorded", || host.acknowledged().len() == 3).await;
        let acked: Vec<_> = host.acknowledged().iter().map(|a| a.sequence).collect();
        assert_eq!(acked, [1, 2, 3]);
        let received = host.received();
        assert_eq!(received.len(), 3);
        assert!(
            received
                .iter()
                .all(|r| r.connection == 1 && !r.resend && !r.duplicate)
        );
        assert!(
            received
                .windows(2)
                .all(|w| w[0].arrived_at <= w[1].arrived_at)
        );
        assert_eq!(received[1].transaction_key, key(2));
        assert_eq!(host.duplicate_count(), 0);
        assert_eq!(host.violations(), []);
    })
    .await;
}

#[tokio::test]
async fn resends_are_counted_as_duplicates_and_acked_again() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        let mut c = Centre::connect(&host).await;
        assert_eq!(c.exchange(&notice(1, 1)).await.0, TelegramType::Ack);
        assert_eq!(c.exchange(&resend(notice(1, 1))).await.0, TelegramType::Ack);
        assert_eq!(c.exchange(&resend(notice(1, 1))).await.0, TelegramType::Ack);
        assert_eq!(c.exchange(&notice(2, 2)).await.0, TelegramType::Ack);
        eventually("2 distinct acks", || host.acknowledged().len() == 2).await;
        assert_eq!(host.duplicate_count(), 2);
        assert_eq!(host.duplicates(), [((1, key(1)), 2)].into());
        let flags: Vec<_> = host
            .received()
            .iter()
            .map(|r| (r.resend, r.duplicate))
            .collect();
        assert_eq!(
            flags,
            [(false, false), (true, true), (true, true), (false, false)]
        );
    })
    .await;
}

#[tokio::test]
async fn transient_nacks_every_nth_and_for_the_next_k() {
    bounded(async {
        let host = host(Behaviour {
            transient_nack_every: Some(2),
            ..Behaviour::default()
        })
        .await;
        let mut c = Centre::connect(&host).await;
        let busy = (TelegramType::Nack, Some(NackReason::HostBusy));
        assert_eq!(c.exchange(&notice(1, 1)).await.0, TelegramType::Ack);
        assert_eq!(c.exchange(&notice(2, 2)).await, busy);
        assert!(!NackReason::HostBusy.is_permanent());
        // The resend of a transiently refused notice goes through.
        assert_eq!(c.exchange(&resend(notice(2, 2))).await.0, TelegramType::Ack);
        // Changed at run time: the next two are refused, then normal again.
        host.update(|b| {
            b.transient_nack_every = None;
            b.transient_nack_next = 2;
        });
        assert_eq!(c.exchange(&notice(3, 3)).await, busy);
        assert_eq!(c.exchange(&resend(notice(3, 3))).await, busy);
        assert_eq!(c.exchange(&resend(notice(3, 3))).await.0, TelegramType::Ack);
        assert_eq!(host.behaviour().transient_nack_next, 0);
        eventually("3 acks", || host.acknowledged().len() == 3).await;
    })
    .await;
}

#[tokio::test]
async fn permanent_nacks_by_key_and_every_nth_stay_refused() {
    bounded(async {
        let host = host(Behaviour {
            permanent_nack_keys: [key(2)].into(),
            ..Behaviour::default()
        })
        .await;
        let mut c = Centre::connect(&host).await;
        let refused = (TelegramType::Nack, Some(NackReason::UnknownCustomer));
        assert_eq!(c.exchange(&notice(1, 1)).await.0, TelegramType::Ack);
        assert_eq!(c.exchange(&notice(2, 2)).await, refused);
        assert!(NackReason::UnknownCustomer.is_permanent());
        // A resend gets the same answer.
        assert_eq!(c.exchange(&resend(notice(2, 2))).await, refused);
        host.update(|b| {
            b.permanent_nack_keys.clear();
            b.permanent_nack_every = Some(5); // counts every notice received: 3 so far
            b.permanent_reason = Some(NackReason::AmountMismatch);
        });
        assert_eq!(c.exchange(&notice(3, 3)).await.0, TelegramType::Ack); // #4
        assert_eq!(
            c.exchange(&notice(4, 4)).await,
            (TelegramType::Nack, Some(NackReason::AmountMismatch)) // #5
        );
        // Wrong institution: P002.
        let mut other = notice(5, 5);
        if let Body::PaymentNotice(n) = &mut other.body {
            n.institution_code = "99999000".into();
        }
        assert_eq!(
            c.exchange(&other).await,
            (TelegramType::Nack, Some(NackReason::UnknownInstitution))
        );
        eventually("2 acks", || host.acknowledged().len() == 2).await;
    })
    .await;
}

#[tokio::test]
async fn slow_host_delays_answers_in_order() {
    bounded(async {
        let delay = Duration::from_millis(200);
        let host = host(Behaviour {
            ack_delay: delay,
            ..Behaviour::default()
        })
        .await;
        let mut c = Centre::connect(&host).await;
        let start = Instant::now();
        c.send(&notice(1, 1)).await;
        c.send(&notice(2, 2)).await;
        c.send(&echo(9)).await;
        let answers: Vec<_> = [c.answer().await, c.answer().await, c.answer().await]
            .iter()
            .map(|t| (t.telegram_type(), t.sequence()))
            .collect();
        assert!(start.elapsed() >= delay, "{:?}", start.elapsed());
        assert_eq!(
            answers,
            [
                (TelegramType::Ack, 1),
                (TelegramType::Ack, 2),
                (TelegramType::EchoResponse, 9)
            ]
        );
        host.update(|b| b.ack_delay = Duration::ZERO);
        let start = Instant::now();
        assert_eq!(c.exchange(&notice(3, 3)).await.0, TelegramType::Ack);
        assert!(start.elapsed() < delay);
    })
    .await;
}

#[tokio::test]
async fn drops_the_connection_after_n_notices_then_accepts_the_resend() {
    bounded(async {
        let host = host(Behaviour {
            drop_after_notices: Some(2),
            ..Behaviour::default()
        })
        .await;
        let mut c = Centre::connect(&host).await;
        assert_eq!(c.exchange(&notice(1, 1)).await.0, TelegramType::Ack);
        c.send(&notice(2, 2)).await;
        assert!(
            matches!(c.recv(LONG).await, Got::Closed),
            "dropped without an answer"
        );
        drop(c);
        // The centre reconnects and resends: acknowledged, no overlap.
        let mut c = Centre::connect(&host).await;
        assert_eq!(c.exchange(&resend(notice(2, 2))).await.0, TelegramType::Ack);
        eventually("2 acks", || host.acknowledged().len() == 2).await;
        let acked: Vec<_> = host
            .acknowledged()
            .iter()
            .map(|a| (a.connection, a.sequence))
            .collect();
        assert_eq!(acked, [(1, 1), (2, 2)]);
        assert_eq!(host.duplicate_count(), 1);
        tokio::time::sleep(OVERLAP_GRACE + SHORT).await;
        assert_eq!(host.violations(), []);
        assert_eq!(host.connections().accepted, 2);
        assert_eq!(host.connections().open, 1);
        // Also on command: every connection closed now.
        host.drop_connections();
        assert!(matches!(c.recv(LONG).await, Got::Closed));
        eventually("no connection open", || host.connections().open == 0).await;
    })
    .await;
}

#[tokio::test]
async fn silent_host_answers_nothing_until_told_otherwise() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        let mut c = Centre::connect(&host).await;
        host.update(|b| b.silent = true);
        c.send(&echo(1)).await;
        c.send(&notice(1, 1)).await;
        assert!(matches!(c.recv(SHORT).await, Got::Nothing));
        eventually("notice recorded", || host.received().len() == 1).await;
        host.update(|b| b.silent = false);
        c.send(&echo(2)).await;
        let a = c.answer().await;
        assert_eq!(
            (a.telegram_type(), a.sequence()),
            (TelegramType::EchoResponse, 2)
        );
        assert_eq!(c.exchange(&resend(notice(1, 1))).await.0, TelegramType::Ack);
        assert_eq!(host.acknowledged().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn two_connections_sending_notices_at_once_are_an_overlap() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        let mut a = Centre::connect(&host).await;
        let mut b = Centre::connect(&host).await;
        // Echo-only traffic on the second connection is not an overlap.
        assert_eq!(a.exchange(&notice(1, 1)).await.0, TelegramType::Ack);
        b.send(&echo(1)).await;
        b.answer().await;
        tokio::time::sleep(OVERLAP_GRACE + SHORT).await;
        assert_eq!(host.violations(), []);
        // Notices on both while both are open: one.
        assert_eq!(b.exchange(&notice(2, 2)).await.0, TelegramType::Ack);
        eventually("overlap recorded", || !host.violations().is_empty()).await;
        assert_eq!(
            host.violations(),
            [Violation::Overlap {
                connection: 2,
                other: 1
            }]
        );
    })
    .await;
}

#[tokio::test]
async fn closing_then_reconnecting_at_once_is_not_an_overlap() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        for round in 1..=5 {
            let mut c = Centre::connect(&host).await;
            assert_eq!(c.exchange(&notice(round, round)).await.0, TelegramType::Ack);
            // Closed by the centre, the next connection's notice follows at once.
        }
        tokio::time::sleep(OVERLAP_GRACE + SHORT).await;
        assert_eq!(host.violations(), []);
        assert_eq!(host.connections().accepted, 5);
    })
    .await;
}

#[tokio::test]
async fn malformed_telegrams_are_violations() {
    bounded(async {
        let host = host(Behaviour::default()).await;
        // A notice with a broken field: nack P001 naming the field; the link stays up.
        let mut c = Centre::connect(&host).await;
        let mut bytes = encode(&notice(1, 1)).unwrap();
        bytes[143] = b'9'; // channel
        c.stream.write_all(&bytes).await.unwrap();
        let a = c.answer().await;
        let Body::Nack(nack) = &a.body else { panic!("{a:?}") };
        assert_eq!(nack.reason, NackReason::FormatError);
        assert_eq!(nack.detail, "FORMAT CHANNEL");
        assert_eq!(a.sequence(), 1);
        assert_eq!(a.transaction_key(), Some(key(1).as_str()));
        assert_eq!(c.exchange(&notice(2, 2)).await.0, TelegramType::Ack);
        // A sequence reused for another transaction: P006 and a violation.
        assert_eq!(
            c.exchange(&notice(2, 3)).await,
            (TelegramType::Nack, Some(NackReason::SequenceConflict))
        );
        // An answer type the centre never sends: recorded, ignored.
        let ack = notice(2, 2).ack(at()).unwrap();
        c.send(&ack).await;
        // Garbage framing: the host closes the connection.
        c.stream.write_all(b"HELO this is not a telegram").await.unwrap();
        assert!(matches!(c.recv(LONG).await, Got::Closed));
        eventually("4 violations", || host.violations().len() == 4).await;
        let v = host.violations();
        assert!(
            matches!(&v[0], Violation::Malformed { connection: 1, error } if error.contains("channel")),
            "{v:?}"
        );
        assert_eq!(
            v[1],
            Violation::SequenceConflict {
                sequence: 2,
                first_key: key(2),
                key: key(3)
            }
        );
        assert_eq!(
            v[2],
            Violation::Unexpected {
                connection: 1,
                telegram_type: TelegramType::Ack
            }
        );
        assert!(
            matches!(&v[3], Violation::Malformed { error, .. } if error.contains("total_length")),
            "{v:?}"
        );
        // A connection that ends mid-telegram.
        let mut c = Centre::connect(&host).await;
        c.stream.write_all(&encode(&notice(3, 3)).unwrap()[..100]).await.unwrap();
        drop(c);
        eventually("truncation recorded", || host.violations().len() == 5).await;
        assert!(matches!(
            host.violations()[4],
            Violation::Truncated { bytes: 100, .. }
        ));
    })
    .await;
}
