//! mpn-history, the payment history behind the staff console (`docs/history.md`).
//!
//! - [`writer`]: one internal durable subscriber per institution writes every
//!   notification as a row, with the same at-least-once guarantee as any subscriber;
//!   rows are idempotent by notification id.
//! - [`store`]: the table on PostgreSQL (monthly partitions, dropped after
//!   `retention_days`) or SQLite (the embedded store of `demo`), through one
//!   interface and the same SQL.
//! - [`crypto`]: personal fields sealed with AES-256-GCM under a key id per row; a
//!   keyed blind index finds a customer number without decrypting the table.
//! - [`History`]: what the console reads: searches, a payment with its lifecycle,
//!   daily totals beside MPN's counters, the live tail.

pub mod config;
pub mod crypto;
pub mod metrics;
pub mod record;
pub mod store;
pub mod testing;
pub mod writer;

use mpn_proto::mpn::notify::v1 as pb;

pub use config::Config;
pub use crypto::{CryptoError, Keyring};
pub use record::{Counters, DayTotals, Payment, Query, Row};
pub use store::{Dialect, SCHEMA_VERSION, Store, StoreError};
pub use writer::{HISTORY_SERVICE, HISTORY_SUBSCRIBER, Writers};

/// Why a history call failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("history keys: {0}")]
    Keys(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("the history database is not open yet (its connection is being retried)")]
    NotOpen,
}

pub type Result<T> = std::result::Result<T, HistoryError>;

impl HistoryError {
    /// The database could not be reached or cannot serve yet (trying again later
    /// may succeed): network and pool errors, and PostgreSQL's connection errors
    /// (SQLSTATE class 08), "starting up / shutting down" (57P0x) and "too many
    /// connections" (53300).
    pub fn is_unreachable(&self) -> bool {
        match self {
            HistoryError::Store(StoreError::Database(e)) => transient(e),
            HistoryError::Store(StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e))) => {
                transient(e)
            }
            _ => false,
        }
    }
}

fn transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0") || c == "53300"),
        _ => false,
    }
}

/// The store and the keys: what the writers write through and the console reads.
#[derive(Debug)]
pub struct History {
    store: Store,
    keys: Keyring,
}

fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Today's date in JST as YYYYMMDD, `days` days back.
pub fn jst_day(days_back: u32) -> i32 {
    let jst = chrono::FixedOffset::east_opt(9 * 3600).expect("JST");
    let d = chrono::Utc::now().with_timezone(&jst).date_naive()
        - chrono::Duration::days(i64::from(days_back));
    d.format("%Y%m%d").to_string().parse().unwrap_or(0)
}

impl History {
    pub fn new(store: Store, keys: Keyring) -> Self {
        Self { store, keys }
    }

    /// Opens the configured store (migrating it) with the configured keys.
    pub async fn open(config: &Config) -> Result<Self> {
        Self::open_with(config, Self::load_keys(config)?).await
    }

    /// The configured keys (a missing or bad file is a configuration error).
    pub fn load_keys(config: &Config) -> Result<Keyring> {
        match (&config.encryption_keys_file, &config.index_key_file) {
            (Some(k), Some(i)) => Keyring::load(k, i).map_err(HistoryError::Keys),
            _ => Err(HistoryError::Keys("no keys files configured".into())),
        }
    }

    /// Opens the configured store (migrating it) with `keys`.
    pub async fn open_with(config: &Config, keys: Keyring) -> Result<Self> {
        let store = Store::open(&config.database_url, config.max_connections).await?;
        Ok(Self { store, keys })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn keys(&self) -> &Keyring {
        &self.keys
    }

    /// Writes `notifications` (one transaction); returns how many rows were new. A
    /// notification that cannot become a row (none the engine lets through) is
    /// logged and skipped, so it cannot block the institution's history.
    pub async fn record(&self, notifications: &[&pb::Notification]) -> Result<u64> {
        let now = now_us();
        let rows: Vec<Row> = notifications
            .iter()
            .filter_map(|n| match Row::seal(n, &self.keys, now) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(notification = %e.id, field = e.field, rule = %e.message, "history cannot record a notification");
                    None
                }
            })
            .collect();
        let start = std::time::Instant::now();
        let new = self.store.write(&rows).await?;
        ::metrics::histogram!(metrics::HISTORY_WRITE_SECONDS).record(start.elapsed().as_secs_f64());
        ::metrics::counter!(metrics::HISTORY_ROWS_WRITTEN_TOTAL).increment(new);
        Ok(new)
    }

    fn open_all(&self, rows: Vec<Row>) -> Result<Vec<Payment>> {
        rows.iter()
            .map(|r| r.open(&self.keys).map_err(HistoryError::from))
            .collect()
    }

    /// Payments matching `q` (personal fields opened).
    pub async fn search(&self, q: &Query) -> Result<Vec<Payment>> {
        let index = q.customer_number.as_deref().map(|c| {
            // The index is per institution: search each granted one's.
            q.institutions
                .iter()
                .map(|i| self.keys.blind(i, c))
                .collect::<Vec<_>>()
        });
        let rows = match index {
            None => self.store.search(q, None).await?,
            Some(indexes) => {
                let mut all = Vec::new();
                for (inst, ci) in q.institutions.iter().zip(indexes) {
                    let one = Query {
                        institutions: vec![inst.clone()],
                        offset: 0,
                        limit: q.offset.saturating_add(q.limit),
                        ..q.clone()
                    };
                    all.extend(self.store.search(&one, Some(ci)).await?);
                }
                all.sort_by_key(|r| std::cmp::Reverse((r.paid_at_us, r.row_no)));
                all.into_iter()
                    .skip(q.offset as usize)
                    .take(q.limit as usize)
                    .collect()
            }
        };
        self.open_all(rows)
    }

    /// The payment `id` if it belongs to `institutions`, with the other rows of its
    /// lifecycle.
    pub async fn payment(
        &self,
        institutions: &[String],
        id: &str,
    ) -> Result<Option<(Payment, Vec<Payment>)>> {
        let Some(row) = self.store.get(institutions, id).await? else {
            return Ok(None);
        };
        let related = self.store.lifecycle_of(&row).await?;
        Ok(Some((row.open(&self.keys)?, self.open_all(related)?)))
    }

    /// Rows written at or after `written_at_us` (the live view), in writing order.
    pub async fn written_since(
        &self,
        institutions: &[String],
        written_at_us: i64,
        limit: i64,
    ) -> Result<Vec<Payment>> {
        let rows = self
            .store
            .written_since(institutions, written_at_us, limit)
            .await?;
        self.open_all(rows)
    }

    /// Rows written after `row_no`, oldest first.
    pub async fn since(
        &self,
        institutions: &[String],
        row_no: i64,
        limit: i64,
    ) -> Result<Vec<Payment>> {
        let rows = self.store.since(institutions, row_no, limit).await?;
        self.open_all(rows)
    }

    /// The highest row number of `institutions` (a download's snapshot).
    pub async fn max_row_no(&self, institutions: &[String]) -> Result<i64> {
        Ok(self.store.max_row_no(institutions).await?)
    }

    /// The newest `limit` rows, oldest first.
    pub async fn latest(&self, institutions: &[String], limit: i64) -> Result<Vec<Payment>> {
        let rows = self.store.latest(institutions, limit).await?;
        self.open_all(rows)
    }

    pub async fn daily(
        &self,
        institutions: &[String],
        from: i32,
        to: i32,
    ) -> Result<Vec<DayTotals>> {
        Ok(self.store.daily(institutions, from, to).await?)
    }

    /// Drops what is older than `retention_days` (whole months), and creates this
    /// month's and next month's partitions ahead of their first row.
    pub async fn expire(&self, retention_days: u32) -> Result<u64> {
        self.store.prepare_months(jst_day(0)).await?;
        let n = self.store.sweep(jst_day(retention_days)).await?;
        ::metrics::counter!(metrics::HISTORY_ROWS_EXPIRED_TOTAL).increment(n);
        Ok(n)
    }
}

/// The history as the engine holds it: opened in the background (a database that is
/// down at start-up delays the history, never the notifications), so readers find it
/// open or get [`HistoryError::NotOpen`].
#[derive(Debug, Clone)]
pub struct HistoryHandle {
    rx: tokio::sync::watch::Receiver<Option<std::sync::Arc<History>>>,
}

impl HistoryHandle {
    /// A handle and the sender that opens it.
    pub fn new() -> (
        tokio::sync::watch::Sender<Option<std::sync::Arc<History>>>,
        Self,
    ) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, Self { rx })
    }

    /// A handle on a history already open.
    pub fn open(history: History) -> Self {
        let (tx, handle) = Self::new();
        tx.send_replace(Some(std::sync::Arc::new(history)));
        handle
    }

    /// The history, if open.
    pub fn get(&self) -> Result<std::sync::Arc<History>> {
        self.rx.borrow().clone().ok_or(HistoryError::NotOpen)
    }

    /// Waits until the history is open (`None` if its opener has gone).
    pub async fn opened(&self) -> Option<std::sync::Arc<History>> {
        let mut rx = self.rx.clone();
        rx.wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|h| h.clone())
    }

    pub async fn search(&self, q: &Query) -> Result<Vec<Payment>> {
        self.get()?.search(q).await
    }

    pub async fn payment(
        &self,
        institutions: &[String],
        id: &str,
    ) -> Result<Option<(Payment, Vec<Payment>)>> {
        self.get()?.payment(institutions, id).await
    }

    pub async fn written_since(
        &self,
        institutions: &[String],
        written_at_us: i64,
        limit: i64,
    ) -> Result<Vec<Payment>> {
        self.get()?
            .written_since(institutions, written_at_us, limit)
            .await
    }

    pub async fn latest(&self, institutions: &[String], limit: i64) -> Result<Vec<Payment>> {
        self.get()?.latest(institutions, limit).await
    }

    pub async fn max_row_no(&self, institutions: &[String]) -> Result<i64> {
        self.get()?.max_row_no(institutions).await
    }

    pub async fn daily(
        &self,
        institutions: &[String],
        from: i32,
        to: i32,
    ) -> Result<Vec<DayTotals>> {
        self.get()?.daily(institutions, from, to).await
    }
}
