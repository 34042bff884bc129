//! Test support: a throwaway history database. The store suite, the backup test and
//! the engine's integration tests each run against a database of their own on the
//! real PostgreSQL (`MPN_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) or an SQLite file, removed when the
//! test ends (even by a panic). No PostgreSQL fails the test: it never skips.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use mpn_proto::mpn::notify::v1 as pb;
use mpn_proto::mpn::v1 as wire;

use crate::Dialect;

/// The PostgreSQL server tests use (a database on it to connect to for `CREATE DATABASE`).
pub fn admin_url() -> String {
    std::env::var("MPN_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

static N: AtomicU32 = AtomicU32::new(0);

/// A database for one test.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// The PostgreSQL database's name (empty for SQLite).
    pub name: String,
    /// A directory of the test's own (the SQLite file lives in it), removed at the end.
    pub dir: PathBuf,
}

async fn admin_sql(sql: String) {
    sqlx::any::install_default_drivers();
    let admin = admin_url();
    let pool = sqlx::AnyPool::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} (MPN_POSTGRES_URL): {e}"));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin}: {e}"));
    pool.close().await;
}

impl TestDb {
    /// A name and directory, nothing created yet.
    pub fn named(dialect: Dialect, tag: &str) -> Self {
        let name = format!(
            "mpn_test_{tag}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = match dialect {
            Dialect::Postgres => {
                let admin = admin_url();
                format!(
                    "{}/{name}",
                    admin.rsplit_once('/').expect("a URL with a database").0
                )
            }
            Dialect::Sqlite => format!("sqlite://{}?mode=rwc", dir.join("history.db").display()),
        };
        let name = if dialect == Dialect::Postgres {
            name
        } else {
            String::new()
        };
        Self { url, name, dir }
    }

    /// A new, empty database.
    pub async fn create(dialect: Dialect, tag: &str) -> Self {
        let db = Self::named(dialect, tag);
        db.create_now().await;
        db
    }

    /// Creates the PostgreSQL database of [`TestDb::named`] (SQLite creates its file
    /// on first use).
    pub async fn create_now(&self) {
        if !self.name.is_empty() {
            admin_sql(format!("CREATE DATABASE {}", self.name)).await;
        }
    }

    /// Writes an encryption keys file and an index key file into the test's
    /// directory; returns their paths.
    pub fn key_files(&self) -> (PathBuf, PathBuf) {
        let (keys, index) = (self.dir.join("keys"), self.dir.join("index-key"));
        std::fs::write(&keys, "k1 AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n")
            .expect("keys file");
        std::fs::write(&index, "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=")
            .expect("index key file");
        (keys, index)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.name.is_empty() {
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            // Its own runtime on its own thread: a test's runtime may be gone.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    sqlx::any::install_default_drivers();
                    if let Ok(pool) = sqlx::AnyPool::connect(&admin_url()).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await;
                    }
                });
            })
            .join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A notification of `kind` for `inst`: transaction key `0000000101<day><serial>`
/// (processing date `day`, YYYYMMDD), paid at 10:<serial % 60> JST that day, by ATM.
pub fn notification(
    inst: &str,
    kind: wire::EventKind,
    day: &str,
    serial: u32,
    customer: &str,
    amount: u64,
) -> pb::Notification {
    let tk = format!("0000000101{day}{serial:08}");
    let kind_name = match kind {
        wire::EventKind::Payment => "payment",
        wire::EventKind::Cancellation => "cancellation",
        wire::EventKind::Preliminary => "preliminary",
        wire::EventKind::Confirmed => "confirmed",
        wire::EventKind::PreliminaryCancel => "preliminary_cancel",
        _ => "daily_counters",
    };
    pb::Notification {
        notification_id: format!("{tk}:{kind_name}"),
        institution_code: inst.into(),
        kind: kind as i32,
        transaction_key: tk,
        customer_number: customer.into(),
        confirmation_number: "123456".into(),
        amount,
        bank_code: "0001".into(),
        branch_code: "123".into(),
        channel: wire::Channel::Atm as i32,
        collection_method: wire::CollectionMethod::Online as i32,
        paid_at: format!(
            "{}-{}-{}T10:{:02}:00+09:00",
            &day[..4],
            &day[4..6],
            &day[6..],
            serial % 60
        ),
        fee_name: "自動車税".into(),
        payer_kana: "ﾔﾏﾀﾞ ﾀﾛｳ".into(),
        ..Default::default()
    }
}
