//! Backup and restore of the history, for real: `scripts/history-backup` and
//! `scripts/history-restore` (what the Helm chart's CronJob runs) against the real
//! PostgreSQL (`MPN_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`;
//! the test creates its own database and drops it). No PostgreSQL, or no pg_dump,
//! pg_restore and psql on PATH, fails the test: it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;

use mpn_history::testing::TestDb;
use mpn_history::{Dialect, History, Keyring, Payment, Query, SCHEMA_VERSION, Store};
use mpn_proto::mpn::notify::v1 as pb;
use mpn_proto::mpn::v1 as wire;
use sqlx::Row as _;

const A: &str = "00200000";
const B: &str = "00300000";

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(name)
}

/// A database and a backup directory for one test (its own directory), both removed
/// when it ends.
async fn fixture() -> TestDb {
    TestDb::create(Dialect::Postgres, "backup").await
}

/// The URL the scripts get, and the password in it that they must never print: the
/// configured one, or (a URL without one, e.g. trust authentication) a made-up one
/// the server never asks for.
fn url_with_password(url: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").unwrap();
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    match authority.rsplit_once('@') {
        Some((userinfo, _)) => match userinfo.split_once(':') {
            Some((_, pw)) => (url.to_owned(), pw.to_owned()),
            None => {
                let pw = "never-printed-7f3a".to_owned();
                (
                    format!("{scheme}://{userinfo}:{pw}@{}", &rest[userinfo.len() + 1..]),
                    pw,
                )
            }
        },
        None => (url.to_owned(), String::new()),
    }
}

/// Runs a script; fails the test with its output unless it exits 0. Returns stdout
/// and stderr together.
fn run(name: &str, args: &[&str], password: &str) -> String {
    let out = Command::new(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script(name).display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{name} {args:?} exited {}:\n{text}",
        out.status
    );
    if !password.is_empty() {
        assert!(
            !text.contains(password),
            "{name} printed the password:\n{text}"
        );
    }
    text
}

/// The generations in `dir`, oldest first.
fn dumps(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in &names {
        assert!(
            n.starts_with("history-") && n.ends_with("Z.dump"),
            "unexpected file {n} in the backup directory"
        );
    }
    names
}

fn ring() -> Keyring {
    Keyring::new(&[("k1".to_string(), [7; 32])], &[42; 32]).unwrap()
}

async fn history(url: &str) -> History {
    History::new(Store::open(url, 2).await.unwrap(), ring())
}

fn pay(inst: &str, day: &str, serial: u32, amount: u64) -> pb::Notification {
    let mut n = mpn_history::testing::notification(
        inst,
        wire::EventKind::Payment,
        day,
        serial,
        &format!("CUST{serial:04}"),
        amount,
    );
    n.confirmation_number = format!("{serial:06}");
    n.payer_kana = format!("ﾔﾏﾀﾞ ﾀﾛｳ {serial}");
    n.source_partition = (serial % 12) as i32;
    n.source_offset = i64::from(serial) * 10;
    n
}

fn cancel_of(original: &pb::Notification, serial: u32) -> pb::Notification {
    let day = &original.transaction_key[10..18];
    let mut c = pay(&original.institution_code, day, serial, original.amount);
    c.notification_id = c.notification_id.replace(":payment", ":cancellation");
    c.kind = wire::EventKind::Cancellation as i32;
    c.channel = wire::Channel::Counter as i32;
    c.customer_number = original.customer_number.clone();
    c.original_transaction_key = original.transaction_key.clone();
    c
}

fn everything() -> Query {
    Query {
        institutions: vec![A.into(), B.into()],
        limit: 1000,
        ..Query::default()
    }
}

async fn partitions(url: &str) -> Vec<String> {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let names = sqlx::query(
        "SELECT CAST(c.relname AS TEXT) AS n FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'payments' AND c.relkind = 'r' ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("n"))
    .collect();
    pool.close().await;
    names
}

async fn execute(url: &str, sql: &str) {
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

/// What a restore must bring back: every row with its opened fields, the partitions,
/// the schema versions.
async fn assert_restored(url: &str, rows: &[Payment], months: &[String], what: &str) {
    // A fresh store, as a restarted replica opens it: its migrator finds the restored
    // `_sqlx_migrations` (versions and checksums) and has nothing to do.
    let h = history(url).await;
    assert_eq!(
        h.store().applied_versions().await.unwrap(),
        (1..=SCHEMA_VERSION).collect::<Vec<_>>(),
        "{what}: schema versions"
    );
    let back = h.search(&everything()).await.unwrap();
    assert_eq!(back.len(), rows.len(), "{what}: row count");
    assert_eq!(back, rows, "{what}: rows differ");
    assert_eq!(partitions(url).await, months, "{what}: partitions");
    // The lifecycle links survived, and the blind index still finds a customer.
    let cancelled = back.iter().find(|p| p.status == "cancelled").unwrap();
    let (_, lifecycle) = h
        .payment(&[A.into()], &cancelled.notification_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lifecycle.len(), 1, "{what}: the cancellation's link");
    let mut q = everything();
    q.customer_number = Some("CUST0005".into());
    assert_eq!(h.search(&q).await.unwrap().len(), 1, "{what}: blind index");
    h.store().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_keep_n_generations_and_a_restore_brings_every_row_back() {
    let fx = fixture().await;
    let (url, password) = url_with_password(&fx.url);
    let dir = fx.dir.to_str().unwrap().to_owned();

    // 19 payments over two months and two institutions, and a cancellation of one.
    let h = history(&fx.url).await;
    let mut notes: Vec<_> = (1..=19)
        .map(|n| {
            pay(
                if n % 4 == 0 { B } else { A },
                if n <= 9 { "20261130" } else { "20261201" },
                n,
                1000 + u64::from(n),
            )
        })
        .collect();
    notes.push(cancel_of(&notes[2].clone(), 99));
    let refs: Vec<_> = notes.iter().collect();
    assert_eq!(h.record(&refs).await.unwrap(), 20);
    let rows = h.search(&everything()).await.unwrap();
    assert_eq!(rows.len(), 20);
    assert_eq!(rows.iter().filter(|p| p.status == "cancelled").count(), 1);
    let months = partitions(&fx.url).await;
    assert_eq!(months, vec!["payments_p202611", "payments_p202612"]);
    h.store().close().await;

    // Four backups keeping three generations: the first one goes.
    let mut written = Vec::new();
    for run_no in 1..=4 {
        let before = dumps(&fx.dir);
        let out = run("history-backup", &[&url, &dir, "3"], &password);
        assert!(out.contains("verified"), "{out}");
        if !password.is_empty() {
            assert!(out.contains(":***@"), "the URL is shown masked: {out}");
        }
        let after = dumps(&fx.dir);
        let new: Vec<_> = after.iter().filter(|n| !before.contains(n)).collect();
        assert_eq!(new.len(), 1, "run {run_no} wrote one dump: {after:?}");
        written.push(new[0].clone());
        assert_eq!(after.len(), run_no.min(3), "run {run_no}: {after:?}");
    }
    let kept = dumps(&fx.dir);
    assert_eq!(kept, written[1..], "the oldest generation was removed");
    assert!(!kept.contains(&written[0]));

    // Loss 1: the rows deleted (the table and its partitions still there), one more
    // row and a new month written after the last dump.
    let h = history(&fx.url).await;
    assert_eq!(h.record(&[&pay(A, "20270105", 50, 5)]).await.unwrap(), 1);
    h.store().close().await;
    execute(&fx.url, "DELETE FROM payments").await;
    let out = run("history-restore", &[&url, &dir], &password);
    assert!(
        out.contains(kept.last().unwrap()),
        "the newest generation is restored: {out}"
    );
    assert!(out.contains("restored 20 rows"), "{out}");
    // The database is as it was at the dump: the later row and month are gone.
    assert_restored(&fx.url, &rows, &months, "after deleting the rows").await;

    // Loss 2: the tables dropped (partitions and schema versions with them); restore
    // an older generation named as a file.
    execute(&fx.url, "DROP TABLE payments").await;
    execute(&fx.url, "DROP TABLE _sqlx_migrations").await;
    let file = fx.dir.join(&kept[0]);
    run(
        "history-restore",
        &[&url, file.to_str().unwrap()],
        &password,
    );
    assert_restored(&fx.url, &rows, &months, "after dropping the tables").await;

    // The restored history goes on: a new row in a restored month and one in a new
    // month, numbered after the restored rows.
    let h = history(&fx.url).await;
    let more = [pay(A, "20261202", 60, 6), pay(A, "20270105", 61, 7)];
    assert_eq!(h.record(&[&more[0], &more[1]]).await.unwrap(), 2);
    let all = h.search(&everything()).await.unwrap();
    assert_eq!(all.len(), 22);
    let max_before = rows.iter().map(|p| p.row_no).max().unwrap();
    assert!(
        all.iter()
            .filter(|p| p.amount < 10)
            .all(|p| p.row_no > max_before),
        "row numbers continue after the restored ones"
    );
    h.store().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scripts_refuse_clearly_and_never_print_the_password() {
    let fx = fixture().await;
    let dir = fx.dir.to_str().unwrap().to_owned();
    let fail = |name: &str, args: &[&str], env: Option<(&str, &str)>| {
        let mut cmd = Command::new(script(name));
        cmd.args(args).env_remove("MPN_HISTORY_DATABASE_URL");
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success(), "{name} {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!err.contains("s3cret-pw"), "password printed: {err}");
        (out.status.code(), err)
    };
    // Usage.
    let (code, err) = fail("history-backup", &[], None);
    assert_eq!(code, Some(2));
    assert!(err.contains("usage: history-backup"), "{err}");
    let (code, _) = fail("history-restore", &["only-one"], None);
    assert_eq!(code, Some(2));
    // An unreachable server (nothing listens on port 1), named without its password.
    let dead = "postgres://mpn:s3cret-pw@127.0.0.1:1/history";
    let (code, err) = fail("history-backup", &[dead, &dir], None);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot connect to postgres://mpn:***@127.0.0.1:1/history"),
        "{err}"
    );
    let (_, err) = fail(
        "history-backup",
        &["-", &dir],
        Some(("MPN_HISTORY_DATABASE_URL", dead)),
    );
    assert!(
        err.contains("cannot connect to postgres://mpn:***@"),
        "{err}"
    );
    let (_, err) = fail("history-backup", &["-", &dir], None);
    assert!(
        err.contains("MPN_HISTORY_DATABASE_URL is empty or unset"),
        "{err}"
    );
    // A database that is not the history (no payments table): no generation is kept.
    let (_, err) = fail("history-backup", &[&fx.url, &dir], None);
    assert!(err.contains("holds no payments table"), "{err}");
    assert!(dumps(&fx.dir).is_empty(), "no dump, no partial file left");
    // Bad directory and generation count.
    let (_, err) = fail("history-backup", &[&fx.url, "/nonexistent/backups"], None);
    assert!(err.contains("/nonexistent/backups does not exist"), "{err}");
    let (_, err) = fail("history-backup", &[&fx.url, &dir, "0"], None);
    assert!(err.contains("generations must be"), "{err}");
    // Restore: nothing to restore, or not an archive.
    let (_, err) = fail("history-restore", &[&fx.url, &dir], None);
    assert!(err.contains("no generation"), "{err}");
    let junk = fx.dir.join("history-20260101T000000.000000Z.dump");
    std::fs::write(&junk, b"not a dump").unwrap();
    let (_, err) = fail("history-restore", &[&fx.url, &dir], None);
    assert!(err.contains("not a readable pg_dump archive"), "{err}");
    std::fs::remove_file(junk).unwrap();
}
