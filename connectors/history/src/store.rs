//! The history store: one table, `payments`, on PostgreSQL (production, monthly
//! partitions) or SQLite (the embedded store of `mpn-notify demo`). Both run through
//! sqlx's `Any` driver with the same SQL; only the migrations and retention differ
//! (`Dialect`). The store never sees a personal value in clear: rows arrive sealed.
//!
//! Writes are idempotent: a row is inserted once per notification id
//! (`ON CONFLICT DO NOTHING`), and the lifecycle links run only when it was new, in
//! the same transaction, so a redelivered batch changes nothing.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, Row as _, SqlSafeStr as _};

use crate::record::{CANCELLED, CLOSED, Counters, DayTotals, OPEN, Query, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("history database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("history schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Sqlite,
}

/// The schema versions, in order (`migrations/<dialect>/NNNN_*.sql`).
const POSTGRES: [(i64, &str, &str); 2] = [
    (
        1,
        "payments",
        include_str!("../migrations/postgres/0001_payments.sql"),
    ),
    (
        2,
        "console indexes",
        include_str!("../migrations/postgres/0002_console_indexes.sql"),
    ),
];
const SQLITE: [(i64, &str, &str); 2] = [
    (
        1,
        "payments",
        include_str!("../migrations/sqlite/0001_payments.sql"),
    ),
    (
        2,
        "console indexes",
        include_str!("../migrations/sqlite/0002_console_indexes.sql"),
    ),
];
/// How long partition DDL waits for the table's lock.
const DDL_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The newest schema version.
pub const SCHEMA_VERSION: i64 = 2;

const COLUMNS: &str = "CAST(day AS BIGINT) AS day, notification_id, CAST(row_no AS BIGINT) AS row_no, \
    institution, kind, status, linked_id, transaction_key, original_transaction_key, \
    CAST(amount AS BIGINT) AS amount, channel, collection_method, bank_code, branch_code, \
    payment_class, fee_name, paid_at, CAST(paid_at_us AS BIGINT) AS paid_at_us, \
    CAST(counter_date AS BIGINT) AS counter_date, CAST(inquiry_count AS BIGINT) AS inquiry_count, \
    CAST(clearing_count AS BIGINT) AS clearing_count, CAST(clearing_amount AS BIGINT) AS clearing_amount, \
    CAST(cancel_count AS BIGINT) AS cancel_count, CAST(cancel_amount AS BIGINT) AS cancel_amount, \
    key_id, customer_number, confirmation_number, payer_kana, customer_index, \
    CAST(source_partition AS BIGINT) AS source_partition, CAST(source_offset AS BIGINT) AS source_offset, \
    CAST(published_at_us AS BIGINT) AS published_at_us, CAST(written_at_us AS BIGINT) AS written_at_us";

const INSERT: &str = "INSERT INTO payments (day, notification_id, institution, kind, status, \
    linked_id, transaction_key, original_transaction_key, amount, channel, collection_method, \
    bank_code, branch_code, payment_class, fee_name, paid_at, paid_at_us, counter_date, \
    inquiry_count, clearing_count, clearing_amount, cancel_count, cancel_amount, key_id, \
    customer_number, confirmation_number, payer_kana, customer_index, source_partition, \
    source_offset, published_at_us, written_at_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, \
    $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, \
    $27, $28, $29, $30, $31, $32) ON CONFLICT (day, notification_id) DO NOTHING";

/// A value bound to a placeholder of a query built at run time.
#[derive(Debug, Clone)]
enum Arg {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

/// A query built at run time: its text, with `$n` placeholders, and their values.
#[derive(Debug, Default)]
struct Sql {
    text: String,
    args: Vec<Arg>,
}

impl Sql {
    fn new(text: &str) -> Self {
        Self {
            text: text.into(),
            args: Vec::new(),
        }
    }
    /// Appends `text` with `?` replaced by the next placeholder, bound to `arg`.
    fn push(&mut self, text: &str, arg: Arg) -> &mut Self {
        self.args.push(arg);
        self.text
            .push_str(&text.replacen('?', &format!("${}", self.args.len()), 1));
        self
    }
    fn raw(&mut self, text: &str) -> &mut Self {
        self.text.push_str(text);
        self
    }
    /// ` AND column IN ($a, $b, ...)`.
    fn any_of(&mut self, column: &str, values: &[String]) -> &mut Self {
        self.text.push_str(&format!(" AND {column} IN ("));
        for (n, v) in values.iter().enumerate() {
            if n > 0 {
                self.text.push_str(", ");
            }
            self.push("?", Arg::Text(v.clone()));
        }
        self.text.push(')');
        self
    }
    fn query(&self) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments> {
        let mut q = sqlx::query(AssertSqlSafe(self.text.clone()));
        for a in &self.args {
            q = match a {
                Arg::Int(v) => q.bind(*v),
                Arg::Text(v) => q.bind(v.clone()),
                Arg::Blob(v) => q.bind(v.clone()),
            };
        }
        q
    }
}

/// The history's database.
#[derive(Debug)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Monthly partitions known to exist (PostgreSQL).
    months: Mutex<HashSet<i32>>,
}

fn dialect_of(url: &str) -> Dialect {
    if url.starts_with("sqlite:") {
        Dialect::Sqlite
    } else {
        Dialect::Postgres
    }
}

fn migrator(dialect: Dialect, upto: i64) -> Migrator {
    let all = match dialect {
        Dialect::Postgres => &POSTGRES,
        Dialect::Sqlite => &SQLITE,
    };
    Migrator::with_migrations(
        all.iter()
            .filter(|(v, ..)| *v <= upto)
            .map(|(v, d, sql)| {
                Migration::new(
                    *v,
                    Cow::Borrowed(*d),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// `YYYYMM` of the month after `month`.
fn next_month(month: i32) -> i32 {
    if month % 100 == 12 {
        (month / 100 + 1) * 100 + 1
    } else {
        month + 1
    }
}

impl Store {
    /// Connects and brings the schema to the newest version.
    pub async fn open(url: &str, max_connections: u32) -> Result<Self> {
        Self::open_at(url, max_connections, SCHEMA_VERSION).await
    }

    /// Connects and migrates up to `version` only (tests of the upgrade path).
    pub async fn open_at(url: &str, max_connections: u32, version: i64) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let dialect = dialect_of(url);
        // SQLite takes one writer at a time: one connection, so writers queue in
        // the pool instead of failing with "database is locked".
        let connections = match dialect {
            Dialect::Postgres => max_connections,
            Dialect::Sqlite => 1,
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .connect(url)
            .await?;
        if dialect == Dialect::Sqlite {
            // One writer at a time and readers beside it; kept in the file.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        migrator(dialect, version).run(&pool).await?;
        Ok(Self {
            pool,
            dialect,
            months: Mutex::default(),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The schema versions applied, in order.
    pub async fn applied_versions(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT CAST(version AS BIGINT) AS v FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get::<i64, _>("v")).collect())
    }

    /// Creates the monthly partitions `rows` need (PostgreSQL).
    async fn ensure_months(&self, rows: &[Row]) -> Result<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        let mut wanted: Vec<i32> = rows.iter().map(|r| r.day / 100).collect();
        wanted.sort_unstable();
        wanted.dedup();
        for month in wanted {
            if self.months.lock().unwrap().contains(&month) {
                continue;
            }
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS payments_p{month} PARTITION OF payments \
                 FOR VALUES FROM ({}) TO ({})",
                month * 100,
                next_month(month) * 100
            );
            if let Err(e) = self.ddl(ddl).await {
                // Another replica may have created it at the same moment.
                let n: i64 =
                    sqlx::query("SELECT CAST(count(*) AS BIGINT) FROM pg_class WHERE relname = $1")
                        .bind(format!("payments_p{month}"))
                        .fetch_one(&self.pool)
                        .await?
                        .get(0);
                if n == 0 {
                    return Err(e.into());
                }
            }
            self.months.lock().unwrap().insert(month);
        }
        Ok(())
    }

    /// Runs `ddl` (which locks the whole table) giving up after [`DDL_LOCK_WAIT`]
    /// rather than queueing every writer and reader behind a long read.
    async fn ddl(&self, ddl: String) -> std::result::Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL lock_timeout = '{}ms'",
            DDL_LOCK_WAIT.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
        sqlx::query(AssertSqlSafe(ddl)).execute(&mut *tx).await?;
        tx.commit().await
    }

    /// Creates the partitions of the month of `day` and the next (PostgreSQL), so
    /// the first write of a month does not wait for the table's lock.
    pub async fn prepare_months(&self, day: i32) -> Result<()> {
        let month = day / 100;
        let probe = |m: i32| Row {
            day: m * 100 + 1,
            ..Row::default()
        };
        self.ensure_months(&[probe(month), probe(next_month(month))])
            .await
    }

    /// Writes `rows` in one transaction: each is inserted once (a redelivered row is
    /// skipped) and, when new, linked to the rows of its lifecycle. Returns how many
    /// were new.
    pub async fn write(&self, rows: &[Row]) -> Result<u64> {
        let written = self.write_once(rows).await;
        if written.is_err() {
            // Another replica may have dropped a month this one remembers.
            self.months.lock().unwrap().clear();
        }
        written
    }

    async fn write_once(&self, rows: &[Row]) -> Result<u64> {
        self.ensure_months(rows).await?;
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        for r in rows {
            let c = &r.counters;
            let inserted = sqlx::query(INSERT)
                .bind(i64::from(r.day))
                .bind(r.notification_id.clone())
                .bind(r.institution.clone())
                .bind(r.kind.clone())
                .bind(r.status.clone())
                .bind(r.linked_id.clone())
                .bind(r.transaction_key.clone())
                .bind(r.original_transaction_key.clone())
                .bind(r.amount)
                .bind(r.channel.clone())
                .bind(r.collection_method.clone())
                .bind(r.bank_code.clone())
                .bind(r.branch_code.clone())
                .bind(r.payment_class.clone())
                .bind(r.fee_name.clone())
                .bind(r.paid_at.clone())
                .bind(r.paid_at_us)
                .bind(i64::from(c.counter_date))
                .bind(c.inquiry_count)
                .bind(c.clearing_count)
                .bind(c.clearing_amount)
                .bind(c.cancel_count)
                .bind(c.cancel_amount)
                .bind(r.key_id.clone())
                .bind(r.customer_number.clone())
                .bind(r.confirmation_number.clone())
                .bind(r.payer_kana.clone())
                .bind(r.customer_index.clone())
                .bind(i64::from(r.source_partition))
                .bind(r.source_offset)
                .bind(r.published_at_us)
                .bind(r.written_at_us)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
                continue;
            }
            new += 1;
            for step in lifecycle(r) {
                step.query().execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(new)
    }

    fn decode(row: &AnyRow) -> Result<Row> {
        let int = |c: &str| row.try_get::<i64, _>(c);
        let text = |c: &str| row.try_get::<String, _>(c);
        let blob = |c: &str| row.try_get::<Vec<u8>, _>(c);
        Ok(Row {
            day: int("day")? as i32,
            notification_id: text("notification_id")?,
            row_no: int("row_no")?,
            institution: text("institution")?,
            kind: text("kind")?,
            status: text("status")?,
            linked_id: text("linked_id")?,
            transaction_key: text("transaction_key")?,
            original_transaction_key: text("original_transaction_key")?,
            amount: int("amount")?,
            channel: text("channel")?,
            collection_method: text("collection_method")?,
            bank_code: text("bank_code")?,
            branch_code: text("branch_code")?,
            payment_class: text("payment_class")?,
            fee_name: text("fee_name")?,
            paid_at: text("paid_at")?,
            paid_at_us: int("paid_at_us")?,
            counters: Counters {
                counter_date: int("counter_date")? as i32,
                inquiry_count: int("inquiry_count")?,
                clearing_count: int("clearing_count")?,
                clearing_amount: int("clearing_amount")?,
                cancel_count: int("cancel_count")?,
                cancel_amount: int("cancel_amount")?,
            },
            key_id: text("key_id")?,
            customer_number: blob("customer_number")?,
            confirmation_number: blob("confirmation_number")?,
            payer_kana: blob("payer_kana")?,
            customer_index: blob("customer_index")?,
            source_partition: int("source_partition")? as i32,
            source_offset: int("source_offset")?,
            published_at_us: int("published_at_us")?,
            written_at_us: int("written_at_us")?,
        })
    }

    async fn rows(&self, sql: &Sql) -> Result<Vec<Row>> {
        sql.query()
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::decode)
            .collect()
    }

    fn select(institutions: &[String]) -> Sql {
        let mut sql = Sql::new(&format!("SELECT {COLUMNS} FROM payments WHERE 1 = 1"));
        sql.any_of("institution", institutions);
        sql
    }

    /// Rows matching `q`, newest payment time first; `customer_index` is the blind
    /// index of the customer number searched for (the store never sees the number).
    /// Daily counters are not listed (see [`daily`](Self::daily)).
    pub async fn search(&self, q: &Query, customer_index: Option<Vec<u8>>) -> Result<Vec<Row>> {
        if q.institutions.is_empty() {
            return Ok(Vec::new());
        }
        let mut sql = Self::select(&q.institutions);
        sql.raw(" AND kind <> 'daily_counters'");
        if let Some(ci) = customer_index {
            sql.push(" AND customer_index = ?", Arg::Blob(ci));
        }
        if let Some(v) = q.day_from {
            sql.push(" AND day >= ?", Arg::Int(v.into()));
        }
        if let Some(v) = q.day_to {
            sql.push(" AND day <= ?", Arg::Int(v.into()));
        }
        if let Some(v) = q.amount_min {
            sql.push(" AND amount >= ?", Arg::Int(v));
        }
        if let Some(v) = q.amount_max {
            sql.push(" AND amount <= ?", Arg::Int(v));
        }
        if !q.kinds.is_empty() {
            sql.any_of("kind", &q.kinds);
        }
        if let Some(v) = &q.channel {
            sql.push(" AND channel = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = &q.status {
            sql.push(" AND status = ?", Arg::Text(v.clone()));
        }
        if let Some(v) = q.max_row_no {
            sql.push(" AND row_no <= ?", Arg::Int(v));
        }
        if let Some((paid, row)) = q.before {
            sql.push(" AND (paid_at_us < ?", Arg::Int(paid));
            sql.push(" OR (paid_at_us = ?", Arg::Int(paid));
            sql.push(" AND row_no < ?))", Arg::Int(row));
        }
        sql.raw(" ORDER BY paid_at_us DESC, row_no DESC");
        sql.push(" LIMIT ?", Arg::Int(q.limit.min(10_000) as i64));
        sql.push(" OFFSET ?", Arg::Int(q.offset.min(i64::MAX as u64) as i64));
        self.rows(&sql).await
    }

    /// The row of `notification_id`, if it belongs to one of `institutions`.
    pub async fn get(&self, institutions: &[String], notification_id: &str) -> Result<Option<Row>> {
        // The id is `<transaction key>:<kind>`: its key names the partition (the
        // processing date) and the index to use.
        let Some((key, _)) = notification_id.split_once(':') else {
            return Ok(None);
        };
        let Some(day) = key.get(10..18).and_then(|d| d.parse::<i64>().ok()) else {
            return Ok(None);
        };
        let mut sql = Self::select(institutions);
        sql.push(" AND day = ?", Arg::Int(day));
        sql.push(" AND transaction_key = ?", Arg::Text(key.into()));
        sql.push(
            " AND notification_id = ?",
            Arg::Text(notification_id.into()),
        );
        Ok(self.rows(&sql).await?.into_iter().next())
    }

    /// The other rows of `row`'s lifecycle: what it cancels or closes, and what
    /// cancels or closes it, oldest first.
    pub async fn lifecycle_of(&self, row: &Row) -> Result<Vec<Row>> {
        let mut sql = Self::select(std::slice::from_ref(&row.institution));
        sql.push(
            " AND notification_id <> ?",
            Arg::Text(row.notification_id.clone()),
        );
        sql.push(
            " AND (transaction_key = ?",
            Arg::Text(row.original_transaction_key.clone()),
        );
        sql.push(
            " OR original_transaction_key = ?",
            Arg::Text(row.transaction_key.clone()),
        );
        // The row named by `linked_id`, through its transaction key (indexed).
        let linked_key = row.linked_id.split_once(':').map_or("", |(k, _)| k);
        sql.push(" OR (transaction_key = ?", Arg::Text(linked_key.into()));
        sql.push(
            " AND notification_id = ?)",
            Arg::Text(row.linked_id.clone()),
        );
        sql.push(
            " OR linked_id = ?) ORDER BY row_no",
            Arg::Text(row.notification_id.clone()),
        );
        self.rows(&sql).await
    }

    /// Rows written at or after `written_at_us` (microseconds), in the order of
    /// writing (the live view).
    pub async fn written_since(
        &self,
        institutions: &[String],
        written_at_us: i64,
        limit: i64,
    ) -> Result<Vec<Row>> {
        let mut sql = Self::select(institutions);
        sql.raw(" AND kind <> 'daily_counters'");
        sql.push(" AND written_at_us >= ?", Arg::Int(written_at_us));
        sql.push(" ORDER BY row_no LIMIT ?", Arg::Int(limit));
        self.rows(&sql).await
    }

    /// Rows written after `row_no`, oldest first.
    pub async fn since(
        &self,
        institutions: &[String],
        row_no: i64,
        limit: i64,
    ) -> Result<Vec<Row>> {
        let mut sql = Self::select(institutions);
        sql.raw(" AND kind <> 'daily_counters'");
        sql.push(" AND row_no > ?", Arg::Int(row_no));
        sql.push(" ORDER BY row_no LIMIT ?", Arg::Int(limit));
        self.rows(&sql).await
    }

    /// The highest row number among `institutions`' rows (0 without any).
    pub async fn max_row_no(&self, institutions: &[String]) -> Result<i64> {
        let mut sql = Sql::new(
            "SELECT CAST(COALESCE(MAX(row_no), 0) AS BIGINT) AS m FROM payments WHERE 1 = 1",
        );
        sql.any_of("institution", institutions);
        Ok(sql.query().fetch_one(&self.pool).await?.try_get("m")?)
    }

    /// The newest `limit` rows, oldest first (the live view's first page).
    pub async fn latest(&self, institutions: &[String], limit: i64) -> Result<Vec<Row>> {
        let mut sql = Self::select(institutions);
        sql.raw(" AND kind <> 'daily_counters'");
        sql.push(" ORDER BY row_no DESC LIMIT ?", Arg::Int(limit));
        let mut rows = self.rows(&sql).await?;
        rows.reverse();
        Ok(rows)
    }

    /// Totals per institution and processing date between `from` and `to`
    /// (YYYYMMDD, inclusive), each beside the last daily counters MPN sent for it.
    pub async fn daily(
        &self,
        institutions: &[String],
        from: i32,
        to: i32,
    ) -> Result<Vec<DayTotals>> {
        let mut out: BTreeMap<(String, i32), DayTotals> = BTreeMap::new();
        let mut sql = Sql::new(
            "SELECT institution, CAST(day AS BIGINT) AS day, \
             CAST(SUM(CASE WHEN kind = 'payment' THEN 1 ELSE 0 END) AS BIGINT) AS pc, \
             CAST(SUM(CASE WHEN kind = 'payment' THEN amount ELSE 0 END) AS BIGINT) AS pa, \
             CAST(SUM(CASE WHEN kind = 'cancellation' THEN 1 ELSE 0 END) AS BIGINT) AS cc, \
             CAST(SUM(CASE WHEN kind = 'cancellation' THEN amount ELSE 0 END) AS BIGINT) AS ca \
             FROM payments WHERE kind IN ('payment', 'cancellation')",
        );
        sql.any_of("institution", institutions);
        sql.push(" AND day >= ?", Arg::Int(from.into()));
        sql.push(
            " AND day <= ? GROUP BY institution, day",
            Arg::Int(to.into()),
        );
        for r in sql.query().fetch_all(&self.pool).await? {
            let (inst, day): (String, i64) = (r.try_get("institution")?, r.try_get("day")?);
            out.insert(
                (inst.clone(), day as i32),
                DayTotals {
                    institution: inst,
                    day: day as i32,
                    payment_count: r.try_get("pc")?,
                    payment_amount: r.try_get("pa")?,
                    cancel_count: r.try_get("cc")?,
                    cancel_amount: r.try_get("ca")?,
                    counters: None,
                },
            );
        }
        let mut sql = Self::select(institutions);
        sql.raw(" AND kind = 'daily_counters'");
        sql.push(" AND counter_date >= ?", Arg::Int(from.into()));
        sql.push(
            " AND counter_date <= ? ORDER BY row_no",
            Arg::Int(to.into()),
        );
        for r in self.rows(&sql).await? {
            let c = r.counters;
            let e = out
                .entry((r.institution.clone(), c.counter_date))
                .or_insert_with(|| DayTotals {
                    institution: r.institution.clone(),
                    day: c.counter_date,
                    ..DayTotals::default()
                });
            e.counters = Some(c);
        }
        Ok(out.into_values().collect())
    }

    /// Drops the months that ended before `cutoff_day` (YYYYMMDD): whole partitions
    /// on PostgreSQL, their rows on SQLite. Returns the rows removed.
    pub async fn sweep(&self, cutoff_day: i32) -> Result<u64> {
        let first_kept = cutoff_day / 100;
        match self.dialect {
            Dialect::Sqlite => Ok(sqlx::query("DELETE FROM payments WHERE day < $1")
                .bind(i64::from(first_kept * 100))
                .execute(&self.pool)
                .await?
                .rows_affected()),
            Dialect::Postgres => {
                let parts = sqlx::query(
                    "SELECT CAST(c.relname AS TEXT) AS name FROM pg_inherits i \
                     JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
                     WHERE p.relname = 'payments'",
                )
                .fetch_all(&self.pool)
                .await?;
                let mut removed = 0;
                for p in parts {
                    let name: String = p.try_get("name")?;
                    let Some(month) = name
                        .strip_prefix("payments_p")
                        .and_then(|m| m.parse::<i32>().ok())
                    else {
                        continue;
                    };
                    if month >= first_kept {
                        continue;
                    }
                    let n: i64 = sqlx::query(AssertSqlSafe(format!(
                        "SELECT CAST(count(*) AS BIGINT) FROM {name}"
                    )))
                    .fetch_one(&self.pool)
                    .await?
                    .get(0);
                    self.ddl(format!("DROP TABLE {name}")).await?;
                    self.months.lock().unwrap().remove(&month);
                    tracing::info!(partition = %name, rows = n, "history: expired month dropped");
                    removed += n as u64;
                }
                Ok(removed)
            }
        }
    }

    /// Rows in the table, and distinct notification ids among them (tests, checks).
    pub async fn counts(&self) -> Result<(i64, i64)> {
        let r = sqlx::query(
            "SELECT CAST(count(*) AS BIGINT) AS n, CAST(count(DISTINCT notification_id) AS BIGINT) AS d FROM payments",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((r.try_get("n")?, r.try_get("d")?))
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// How many days before its confirmed notice a preliminary may have been processed.
pub const CONFIRM_WINDOW_DAYS: i64 = 14;

/// `day` (YYYYMMDD) moved by `days`, as YYYYMMDD (unchanged if not a date).
fn shift_day(day: i32, days: i64) -> i32 {
    chrono::NaiveDate::parse_from_str(&day.to_string(), "%Y%m%d")
        .ok()
        .and_then(|d| d.checked_add_signed(chrono::Duration::days(days)))
        .and_then(|d| d.format("%Y%m%d").to_string().parse().ok())
        .unwrap_or(day)
}

/// What a newly written row changes in its lifecycle (and in itself, when the row
/// that changes it arrived first):
/// - a cancellation marks the payment it names `cancelled`; a preliminary cancel
///   marks its preliminary `cancelled`;
/// - a confirmed notice closes the open preliminaries of the same customer number
///   (blind index) and amount processed in the [`CONFIRM_WINDOW_DAYS`] before it
///   (a payer who pays the same amount every month does not have next month's
///   preliminary closed by this month's confirmed notice);
/// - a payment or preliminary written after what cancels or closes it takes that
///   status at once.
fn lifecycle(r: &Row) -> Vec<Sql> {
    let inst = || Arg::Text(r.institution.clone());
    let id = || Arg::Text(r.notification_id.clone());
    let mut steps = Vec::new();
    match r.kind.as_str() {
        "cancellation" | "preliminary_cancel" => {
            let target = if r.kind == "cancellation" {
                "payment"
            } else {
                "preliminary"
            };
            let mut s = Sql::new("UPDATE payments SET status = ");
            s.push("?", Arg::Text(CANCELLED.into()))
                .push(", linked_id = ?", id())
                .push(" WHERE institution = ?", inst())
                .push(
                    " AND transaction_key = ?",
                    Arg::Text(r.original_transaction_key.clone()),
                )
                .push(" AND kind = ?", Arg::Text(target.into()));
            steps.push(s);
            let mut own = Sql::new("UPDATE payments SET linked_id = ");
            own.push(
                "?",
                Arg::Text(format!("{}:{target}", r.original_transaction_key)),
            )
            .push(" WHERE day = ?", Arg::Int(r.day.into()))
            .push(" AND notification_id = ?", id());
            steps.push(own);
        }
        "confirmed" if !r.customer_index.is_empty() => {
            let mut s = Sql::new("UPDATE payments SET status = ");
            s.push("?", Arg::Text(CLOSED.into()))
                .push(", linked_id = ?", id())
                .push(" WHERE institution = ?", inst())
                .push(
                    " AND kind = 'preliminary' AND status = ?",
                    Arg::Text(OPEN.into()),
                )
                .push(
                    " AND customer_index = ?",
                    Arg::Blob(r.customer_index.clone()),
                )
                .push(" AND amount = ?", Arg::Int(r.amount))
                .push(
                    " AND day >= ?",
                    Arg::Int(shift_day(r.day, -CONFIRM_WINDOW_DAYS).into()),
                )
                .push(" AND day <= ?", Arg::Int(r.day.into()));
            steps.push(s);
        }
        "payment" | "preliminary" => {
            let (canceller, status) = if r.kind == "payment" {
                ("cancellation", CANCELLED)
            } else {
                ("preliminary_cancel", CANCELLED)
            };
            // Cancelled by a row that arrived before it.
            let mut s = Sql::new("UPDATE payments SET status = ");
            s.push("?", Arg::Text(status.into()));
            let from = s.args.len() + 1;
            s.raw(&format!(
                ", linked_id = (SELECT c.notification_id FROM payments c WHERE c.institution = ${a} \
                 AND c.original_transaction_key = ${b} AND c.kind = ${k} ORDER BY c.row_no LIMIT 1) \
                 WHERE day = ${d} AND notification_id = ${i} AND EXISTS (SELECT 1 FROM payments c \
                 WHERE c.institution = ${a} AND c.original_transaction_key = ${b} AND c.kind = ${k})",
                a = from,
                b = from + 1,
                k = from + 2,
                d = from + 3,
                i = from + 4
            ));
            s.args.extend([
                inst(),
                Arg::Text(r.transaction_key.clone()),
                Arg::Text(canceller.into()),
                Arg::Int(r.day.into()),
                id(),
            ]);
            steps.push(s);
            if r.kind == "preliminary" && !r.customer_index.is_empty() {
                // Closed by a confirmed notice that arrived before it (within the window).
                let mut s = Sql::new("UPDATE payments SET status = ");
                s.push("?", Arg::Text(CLOSED.into()));
                let from = s.args.len() + 1;
                s.raw(&format!(
                    ", linked_id = (SELECT c.notification_id FROM payments c WHERE c.institution = ${a} \
                     AND c.kind = 'confirmed' AND c.customer_index = ${ci} AND c.amount = ${am} \
                     AND c.day >= ${d} AND c.day <= ${hi} ORDER BY c.row_no LIMIT 1) \
                     WHERE day = ${d} AND notification_id = ${i} AND status = ${open} \
                     AND EXISTS (SELECT 1 FROM payments c WHERE c.institution = ${a} \
                     AND c.kind = 'confirmed' AND c.customer_index = ${ci} AND c.amount = ${am} \
                     AND c.day >= ${d} AND c.day <= ${hi})",
                    a = from,
                    ci = from + 1,
                    am = from + 2,
                    d = from + 3,
                    i = from + 4,
                    open = from + 5,
                    hi = from + 6
                ));
                s.args.extend([
                    inst(),
                    Arg::Blob(r.customer_index.clone()),
                    Arg::Int(r.amount),
                    Arg::Int(r.day.into()),
                    id(),
                    Arg::Text(OPEN.into()),
                    Arg::Int(shift_day(r.day, CONFIRM_WINDOW_DAYS).into()),
                ]);
                steps.push(s);
            }
        }
        _ => {}
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_roll_over_the_year() {
        assert_eq!(next_month(202612), 202701);
        assert_eq!(next_month(202605), 202606);
    }

    #[test]
    fn placeholders_are_numbered_in_order() {
        let mut s = Sql::new("SELECT 1 WHERE 1 = 1");
        s.push(" AND a = ?", Arg::Int(1))
            .any_of("b", &["x".into(), "y".into()]);
        assert_eq!(s.text, "SELECT 1 WHERE 1 = 1 AND a = $1 AND b IN ($2, $3)");
        assert_eq!(s.args.len(), 3);
    }
}
