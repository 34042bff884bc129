//! The store suite: every test runs against the real PostgreSQL (`MPN_POSTGRES_URL`,
//! default `postgres://postgres@127.0.0.1:5432/postgres`; each test creates its own
//! database and drops it) and against the embedded SQLite store.

use mpn_history::testing::TestDb;
use mpn_history::{Dialect, History, Keyring, Query, SCHEMA_VERSION, Store};
use mpn_proto::mpn::notify::v1 as pb;
use mpn_proto::mpn::v1 as wire;
use sqlx::Row as _;

const A: &str = "00200000";
const B: &str = "00300000";

/// A database for one test (see `mpn_history::testing`).
async fn db(dialect: Dialect) -> TestDb {
    TestDb::create(dialect, "store").await
}

fn ring(ids: &[(&str, u8)]) -> Keyring {
    let keys: Vec<_> = ids.iter().map(|(i, b)| (i.to_string(), [*b; 32])).collect();
    Keyring::new(&keys, &[42; 32]).unwrap()
}

async fn history(db: &TestDb, keys: Keyring) -> History {
    History::new(Store::open(&db.url, 4).await.unwrap(), keys)
}

/// A transaction key with processing date `day` and serial `serial`.
fn key(day: &str, serial: u32) -> String {
    format!("0000000101{day}{serial:08}")
}

use mpn_history::testing::notification as note;

fn pay(inst: &str, day: &str, serial: u32, customer: &str, amount: u64) -> pb::Notification {
    note(
        inst,
        wire::EventKind::Payment,
        day,
        serial,
        customer,
        amount,
    )
}

fn cancel_of(original: &pb::Notification, serial: u32) -> pb::Notification {
    let day = &original.transaction_key[10..18];
    let mut c = note(
        &original.institution_code,
        wire::EventKind::Cancellation,
        day,
        serial,
        &original.customer_number,
        original.amount,
    );
    c.channel = wire::Channel::Counter as i32;
    c.original_transaction_key = original.transaction_key.clone();
    c
}

fn all(inst: &[&str]) -> Query {
    Query {
        institutions: inst.iter().map(|s| s.to_string()).collect(),
        limit: 1000,
        ..Query::default()
    }
}

async fn record(h: &History, notes: &[pb::Notification]) -> u64 {
    let refs: Vec<_> = notes.iter().collect();
    h.record(&refs).await.unwrap()
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(mpn_history::Dialect::Postgres).await })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(mpn_history::Dialect::Sqlite).await })*
        }
    };
}

both!(
    redelivery_never_makes_a_second_row,
    cancellations_and_confirmed_notices_link_their_lifecycle,
    personal_fields_are_encrypted_and_rows_stay_readable_after_key_rotation,
    customer_numbers_are_found_through_the_blind_index_only_in_the_callers_institutions,
    searches_filter_and_page,
    retention_drops_whole_expired_months,
    migrations_run_from_empty_and_from_the_previous_version,
    daily_totals_sit_beside_mpns_counters_and_mismatches_show,
    the_live_tail_follows_the_order_of_writing,
);

async fn redelivery_never_makes_a_second_row(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    let batch: Vec<_> = (1..=50)
        .map(|n| pay(A, "20261201", n, &format!("C{n}"), 1000 + u64::from(n)))
        .collect();
    assert_eq!(record(&h, &batch).await, 50);
    // The same batch again (a crash after the commit), then an overlapping one.
    assert_eq!(record(&h, &batch).await, 0);
    let overlap: Vec<_> = (40..=60)
        .map(|n| pay(A, "20261201", n, &format!("C{n}"), 1000 + u64::from(n)))
        .collect();
    assert_eq!(record(&h, &overlap).await, 10);
    // A resend confirmation is notified as the payment it confirms: same id.
    let mut resent = batch[0].clone();
    resent.resent_by_mpn = true;
    assert_eq!(record(&h, &[resent]).await, 0);
    assert_eq!(h.store().counts().await.unwrap(), (60, 60));
}

async fn cancellations_and_confirmed_notices_link_their_lifecycle(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    let inst = vec![A.to_string()];
    let status = |id: String| {
        let (h, inst) = (&h, inst.clone());
        async move { h.payment(&inst, &id).await.unwrap().expect("row").0 }
    };
    // Payment, then its cancellation.
    let p = pay(A, "20261201", 1, "C1", 5000);
    let c = cancel_of(&p, 2);
    record(&h, std::slice::from_ref(&p)).await;
    record(&h, std::slice::from_ref(&c)).await;
    let row = status(p.notification_id.clone()).await;
    assert_eq!(
        (row.status.as_str(), row.linked_id.as_str()),
        ("cancelled", c.notification_id.as_str())
    );
    assert_eq!(
        status(c.notification_id.clone()).await.linked_id,
        p.notification_id
    );
    let (_, lifecycle) = h.payment(&inst, &p.notification_id).await.unwrap().unwrap();
    assert_eq!(
        lifecycle
            .iter()
            .map(|r| r.notification_id.clone())
            .collect::<Vec<_>>(),
        vec![c.notification_id.clone()]
    );
    // The cancellation first (another batch order): the payment is cancelled on arrival.
    let p2 = pay(A, "20261201", 3, "C3", 700);
    let c2 = cancel_of(&p2, 4);
    record(&h, &[c2.clone(), p2.clone()]).await;
    let row = status(p2.notification_id.clone()).await;
    assert_eq!(
        (row.status.as_str(), row.linked_id.as_str()),
        ("cancelled", c2.notification_id.as_str())
    );
    // An untouched payment stays paid; a redelivered cancellation changes nothing.
    let p3 = pay(A, "20261201", 5, "C5", 800);
    record(&h, &[p3.clone(), c.clone()]).await;
    assert_eq!(status(p3.notification_id.clone()).await.status, "paid");
    // Convenience store: two preliminaries of one bill, then the confirmed notice
    // closes both; a voided scan is cancelled and stays so.
    let pre1 = note(
        A,
        wire::EventKind::Preliminary,
        "20261201",
        10,
        "BILL9",
        3000,
    );
    let pre2 = note(
        A,
        wire::EventKind::Preliminary,
        "20261201",
        11,
        "BILL9",
        3000,
    );
    let other = note(
        A,
        wire::EventKind::Preliminary,
        "20261201",
        12,
        "BILL8",
        3000,
    );
    let mut void = note(
        A,
        wire::EventKind::PreliminaryCancel,
        "20261201",
        13,
        "BILL8",
        3000,
    );
    void.original_transaction_key = other.transaction_key.clone();
    let conf = note(A, wire::EventKind::Confirmed, "20261201", 14, "BILL9", 3000);
    record(
        &h,
        &[pre1.clone(), pre2.clone(), other.clone(), void.clone()],
    )
    .await;
    assert_eq!(status(pre1.notification_id.clone()).await.status, "open");
    record(&h, std::slice::from_ref(&conf)).await;
    for pre in [&pre1, &pre2] {
        let row = status(pre.notification_id.clone()).await;
        assert_eq!(
            (row.status.as_str(), row.linked_id.as_str()),
            ("closed", conf.notification_id.as_str())
        );
    }
    assert_eq!(
        status(other.notification_id.clone()).await.status,
        "cancelled"
    );
    // A preliminary arriving after its confirmed notice is closed at once.
    let late = note(
        A,
        wire::EventKind::Preliminary,
        "20261201",
        15,
        "BILL9",
        3000,
    );
    record(&h, std::slice::from_ref(&late)).await;
    assert_eq!(status(late.notification_id.clone()).await.status, "closed");
    // A payer who pays the same amount every month: December's confirmed notice
    // does not close January's preliminary (outside the window); January's does.
    let jan = note(
        A,
        wire::EventKind::Preliminary,
        "20270110",
        17,
        "BILL9",
        3000,
    );
    record(&h, std::slice::from_ref(&jan)).await;
    assert_eq!(status(jan.notification_id.clone()).await.status, "open");
    let jan_conf = note(A, wire::EventKind::Confirmed, "20270112", 18, "BILL9", 3000);
    record(&h, std::slice::from_ref(&jan_conf)).await;
    assert_eq!(status(jan.notification_id.clone()).await.status, "closed");
    // Another institution's cancellation of the same key touches nothing here.
    let mut foreign = cancel_of(&p3, 16);
    foreign.institution_code = B.into();
    record(&h, &[foreign]).await;
    assert_eq!(status(p3.notification_id.clone()).await.status, "paid");
}

async fn personal_fields_are_encrypted_and_rows_stay_readable_after_key_rotation(d: Dialect) {
    let db = db(d).await;
    let before = pay(A, "20261201", 1, "SECRETCUST01", 100);
    {
        let h = history(&db, ring(&[("k1", 1)])).await;
        record(&h, std::slice::from_ref(&before)).await;
        // What the table holds: no personal value in clear, the key id beside it.
        let raw = sqlx::query(
            "SELECT key_id, customer_number, payer_kana, confirmation_number FROM payments",
        )
        .fetch_one(&test_pool(&db).await)
        .await
        .unwrap();
        assert_eq!(raw.get::<String, _>("key_id"), "k1");
        for col in ["customer_number", "payer_kana", "confirmation_number"] {
            let bytes: Vec<u8> = raw.get(col);
            for plain in ["SECRETCUST01", "ﾔﾏﾀﾞ", "123456"] {
                assert!(
                    !bytes.windows(plain.len()).any(|w| w == plain.as_bytes()),
                    "{col} holds {plain} in clear"
                );
            }
        }
        h.store().close().await;
    }
    // Rotation: k2 encrypts from now on, k1 stays to read.
    let h = history(&db, ring(&[("k2", 2), ("k1", 1)])).await;
    let after = pay(A, "20261201", 2, "SECRETCUST02", 200);
    record(&h, std::slice::from_ref(&after)).await;
    let rows = h.search(&all(&[A])).await.unwrap();
    let by_id = |id: &str| {
        rows.iter()
            .find(|r| r.notification_id == id)
            .unwrap()
            .clone()
    };
    let (old, new) = (
        by_id(&before.notification_id),
        by_id(&after.notification_id),
    );
    assert_eq!(
        (
            old.key_id.as_str(),
            old.customer_number.as_str(),
            old.payer_kana.as_str()
        ),
        ("k1", "SECRETCUST01", "ﾔﾏﾀﾞ ﾀﾛｳ")
    );
    assert_eq!(
        (new.key_id.as_str(), new.customer_number.as_str()),
        ("k2", "SECRETCUST02")
    );
    // Both are found by customer number (the index key did not change).
    let mut q = all(&[A]);
    q.customer_number = Some("SECRETCUST01".into());
    assert_eq!(h.search(&q).await.unwrap().len(), 1);
    // A keyring that lost k1 says which key is missing.
    h.store().close().await;
    let h = history(&db, ring(&[("k2", 2)])).await;
    let e = h.search(&all(&[A])).await.unwrap_err().to_string();
    assert!(e.contains("\"k1\""), "{e}");
}

async fn test_pool(db: &TestDb) -> sqlx::AnyPool {
    sqlx::AnyPool::connect(&db.url).await.unwrap()
}

async fn customer_numbers_are_found_through_the_blind_index_only_in_the_callers_institutions(
    d: Dialect,
) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    record(
        &h,
        &[
            pay(A, "20261201", 1, "SAME01", 100),
            pay(A, "20261201", 2, "OTHER1", 200),
            pay(A, "20261202", 3, "SAME01", 300),
            pay(B, "20261201", 4, "SAME01", 400),
        ],
    )
    .await;
    let mut q = all(&[A]);
    q.customer_number = Some("SAME01".into());
    let found = h.search(&q).await.unwrap();
    assert_eq!(
        found.iter().map(|p| p.amount).collect::<Vec<_>>(),
        vec![300, 100]
    );
    assert!(
        found
            .iter()
            .all(|p| p.institution == A && p.customer_number == "SAME01")
    );
    q.institutions = vec![A.into(), B.into()];
    assert_eq!(h.search(&q).await.unwrap().len(), 3);
    q.customer_number = Some("NOBODY".into());
    assert!(h.search(&q).await.unwrap().is_empty());
    // The row of B is not B's to A: by id neither.
    let b_id = format!("{}:payment", key("20261201", 4));
    assert!(h.payment(&[A.into()], &b_id).await.unwrap().is_none());
    assert!(h.payment(&[B.into()], &b_id).await.unwrap().is_some());
}

async fn searches_filter_and_page(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    let mut notes: Vec<_> = (1..=30)
        .map(|n| {
            pay(
                A,
                if n <= 10 { "20261201" } else { "20261202" },
                n,
                "C",
                u64::from(n) * 100,
            )
        })
        .collect();
    notes[0].channel = wire::Channel::Counter as i32;
    notes.push(cancel_of(&notes[0].clone(), 99));
    record(&h, &notes).await;
    let mut q = all(&[A]);
    q.day_from = Some(20261202);
    assert_eq!(h.search(&q).await.unwrap().len(), 20);
    q.day_from = None;
    q.amount_min = Some(500);
    q.amount_max = Some(900);
    assert_eq!(h.search(&q).await.unwrap().len(), 5);
    let mut q = all(&[A]);
    q.kinds = vec!["cancellation".into()];
    assert_eq!(h.search(&q).await.unwrap().len(), 1);
    let mut q = all(&[A]);
    q.status = Some("cancelled".into());
    assert_eq!(
        h.search(&q).await.unwrap()[0].notification_id,
        notes[0].notification_id
    );
    let mut q = all(&[A]);
    q.channel = Some("counter".into());
    assert_eq!(h.search(&q).await.unwrap().len(), 2);
    // Pages: newest payment time first, no row twice, none left out.
    let mut seen = Vec::new();
    for page in 0..4 {
        let mut q = all(&[A]);
        q.limit = 10;
        q.offset = page * 10;
        seen.extend(
            h.search(&q)
                .await
                .unwrap()
                .into_iter()
                .map(|p| p.notification_id),
        );
    }
    assert_eq!(seen.len(), 31);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 31);
}

async fn retention_drops_whole_expired_months(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    record(
        &h,
        &[
            pay(A, "20250115", 1, "C", 100),
            pay(A, "20250131", 2, "C", 100),
            pay(A, "20250201", 3, "C", 100),
            pay(A, "20261201", 4, "C", 100),
        ],
    )
    .await;
    // Cut-off in mid-February 2025: January has ended before it, February has not.
    assert_eq!(h.store().sweep(20250214).await.unwrap(), 2);
    let left: Vec<_> = h
        .search(&all(&[A]))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.day)
        .collect();
    assert_eq!(left, vec![20261201, 20250201]);
    if d == Dialect::Postgres {
        let parts: Vec<String> = sqlx::query("SELECT CAST(relname AS TEXT) AS n FROM pg_class WHERE relname LIKE 'payments_p%' AND relkind = 'r' ORDER BY 1")
            .fetch_all(&test_pool(&db).await)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get("n"))
            .collect();
        assert_eq!(parts, vec!["payments_p202502", "payments_p202612"]);
    }
    // The month written again later is created again (a late row), then swept.
    record(&h, &[pay(A, "20250110", 5, "C", 100)]).await;
    assert_eq!(h.store().sweep(20250214).await.unwrap(), 1);
    // The configured retention counts back from today (JST): a row of today stays,
    // one of 800 days ago goes with its month.
    let (today, old) = (mpn_history::jst_day(0), mpn_history::jst_day(800));
    record(
        &h,
        &[
            pay(A, &today.to_string(), 6, "C", 100),
            pay(A, &old.to_string(), 7, "C", 100),
        ],
    )
    .await;
    let kept = mpn_history::jst_day(400) / 100 * 100;
    let expected = h
        .search(&all(&[A]))
        .await
        .unwrap()
        .iter()
        .filter(|p| p.day < kept)
        .count() as u64;
    assert!(expected >= 1);
    assert_eq!(h.expire(400).await.unwrap(), expected);
    let days: Vec<_> = h
        .search(&all(&[A]))
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.day)
        .collect();
    assert!(days.contains(&today) && !days.contains(&old), "{days:?}");
}

async fn migrations_run_from_empty_and_from_the_previous_version(d: Dialect) {
    let db = db(d).await;
    // The previous version (1), with rows in it.
    let v1 = Store::open_at(&db.url, 2, 1).await.unwrap();
    assert_eq!(v1.applied_versions().await.unwrap(), vec![1]);
    let h = History::new(v1, ring(&[("k1", 1)]));
    record(&h, &[pay(A, "20261201", 1, "C1", 100)]).await;
    h.store().close().await;
    // Opening it migrates to the newest and keeps the rows.
    let h = history(&db, ring(&[("k1", 1)])).await;
    assert_eq!(
        h.store().applied_versions().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    let mut q = all(&[A]);
    q.customer_number = Some("C1".into());
    assert_eq!(h.search(&q).await.unwrap().len(), 1);
    // Opening again is a no-op.
    h.store().close().await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    assert_eq!(
        h.store().applied_versions().await.unwrap().len() as i64,
        SCHEMA_VERSION
    );
    // From empty.
    let empty = self::db(d).await;
    let fresh = Store::open(&empty.url, 2).await.unwrap();
    assert_eq!(
        fresh.applied_versions().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>()
    );
    assert_eq!(fresh.counts().await.unwrap(), (0, 0));
}

async fn daily_totals_sit_beside_mpns_counters_and_mismatches_show(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    let p1 = pay(A, "20261201", 1, "C", 1000);
    let p2 = pay(A, "20261201", 2, "C", 2500);
    let p3 = pay(A, "20261202", 3, "C", 100);
    let c1 = cancel_of(&p1, 4);
    let counters = |serial: u32, date: &str, clearing: (u64, u64), cancel: (u64, u64)| {
        let mut n = note(A, wire::EventKind::DailyCounters, date, serial, "", 0);
        n.customer_number.clear();
        n.paid_at.clear();
        n.counters = Some(wire::DailyCounters {
            counter_date: date.into(),
            inquiry_count: 9,
            clearing_count: clearing.0,
            clearing_amount: clearing.1,
            cancel_count: cancel.0,
            cancel_amount: cancel.1,
        });
        n
    };
    record(
        &h,
        &[
            p1,
            p2,
            p3,
            c1,
            counters(10, "20261201", (2, 3500), (1, 1000)),
            // MPN counted a payment the history does not have.
            counters(11, "20261202", (2, 200), (0, 0)),
        ],
    )
    .await;
    let totals = h.daily(&[A.into()], 20261201, 20261203).await.unwrap();
    assert_eq!(totals.len(), 2);
    let (d1, d2) = (&totals[0], &totals[1]);
    assert_eq!(
        (
            d1.day,
            d1.payment_count,
            d1.payment_amount,
            d1.cancel_count,
            d1.cancel_amount
        ),
        (20261201, 2, 3500, 1, 1000)
    );
    assert!(!d1.mismatch());
    assert_eq!(
        (d2.day, d2.payment_count, d2.payment_amount),
        (20261202, 1, 100)
    );
    assert!(d2.mismatch());
    assert!(
        h.daily(&[B.into()], 20261201, 20261203)
            .await
            .unwrap()
            .is_empty()
    );
    // Counters are not payments: searches do not list them.
    assert_eq!(h.search(&all(&[A])).await.unwrap().len(), 4);
}

async fn the_live_tail_follows_the_order_of_writing(d: Dialect) {
    let db = db(d).await;
    let h = history(&db, ring(&[("k1", 1)])).await;
    record(
        &h,
        &[pay(A, "20261201", 1, "C", 1), pay(B, "20261201", 2, "C", 2)],
    )
    .await;
    let first = h.latest(&[A.into()], 10).await.unwrap();
    assert_eq!(first.len(), 1);
    let mark = first[0].row_no;
    record(
        &h,
        &[
            pay(A, "20261130", 3, "C", 3),
            pay(B, "20261201", 4, "C", 4),
            pay(A, "20261202", 5, "C", 5),
        ],
    )
    .await;
    let next = h.since(&[A.into()], mark, 100).await.unwrap();
    assert_eq!(
        next.iter().map(|p| p.amount).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert!(
        h.since(&[A.into()], next[1].row_no, 100)
            .await
            .unwrap()
            .is_empty()
    );
}
