//! The durable store: every event seen, its outputs waiting for delivery,
//! DHIS2 contributions, dead letters and the operators' audit log.
//!
//! **The guarantee**: an AMQP message is acknowledged (and an HTTP ingest
//! answered 202) only after [`Store::commit`] has returned, that is after
//! the event's outputs, or the dead letter that explains why there are
//! none, are durably committed. A crash before the commit loses nothing
//! (the broker redelivers); a crash after it duplicates nothing (the store
//! recognises the redelivery by its event id and version hash).
//!
//! Two backends sit behind the one [`Store`] type: SQLite, the embedded
//! default (WAL journal, `synchronous=FULL` so that an acknowledged batch
//! survives a power cut), and PostgreSQL, for production and for several
//! replicas sharing one database. Statements are shared; the few dialect
//! differences (row locks, how a transaction starts) are chosen by
//! [`Backend`]. Migrations run on open.

mod completeness;
pub mod database;
mod dead_letters;
mod dhis2;
mod error;
mod feedback;
mod ingest;
mod operations;
mod outbox;
#[doc(hidden)]
pub mod plan;
mod read;
mod reconcile;
mod retention;
pub mod scratch;
mod sql;
mod withdrawal;

use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

pub use completeness::{
    ClaimedCompleteness, CompletenessChange, CompletenessKey, CompletenessResult, CompletenessRow,
    CompletenessTarget, SetValues,
};
pub use dhis2::{DirtyTotal, MIXED, TotalResult, format_number};
pub use error::StoreError;
pub use feedback::{StatusMessage, StatusOrigin};
pub use ingest::{Ingest, Outcome, Outputs, Rejection, tally};
pub use operations::{
    Backlog, DestinationHealth, DestinationStatus, DestinationUpdate, EventDeadLetter, EventStatus,
    Flow, ReasonCount,
};
pub use outbox::{Delivery, OutboxItem, Placed};
pub use read::{DeadLetter, DeadLetterFilter, EventRow, Stats, TotalKey};
pub use reconcile::KiungoTotals;
pub use retention::PurgeReport;
pub use withdrawal::Withdrawn;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// `store:` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH` (created if missing) or `postgres://user@host/db`.
    #[serde(default = "default_url")]
    pub url: String,
    /// Connections in the pool (PostgreSQL); SQLite uses a few readers and
    /// one writer whatever this says.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// SQLite `synchronous` setting: `full` (default) makes every committed
    /// batch survive a power cut; `normal` survives a process crash only.
    #[serde(default)]
    pub sqlite_synchronous: SqliteSynchronous,
    /// How long delivered payloads (raw events and FHIR bundles) are kept
    /// after delivery, for inspection, before they are purged.
    #[serde(default = "default_retention", with = "humantime_serde")]
    pub payload_retention: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: default_url(),
            max_connections: default_max_connections(),
            sqlite_synchronous: SqliteSynchronous::default(),
            payload_retention: default_retention(),
        }
    }
}

fn default_url() -> String {
    "sqlite:kiungo.db".into()
}
const fn default_max_connections() -> u32 {
    8
}
const fn default_retention() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

/// SQLite's durability setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SqliteSynchronous {
    /// fsync at every commit.
    #[default]
    Full,
    /// fsync at checkpoints only.
    Normal,
}

/// The store. Cheap to clone: clones share one connection pool.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// When this process last put FHIR bundles with expired leases back
    /// to pending (ms): the sweep runs at most once a second, not with
    /// every claim.
    lease_sweep: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Store {
    /// Connects, creating the SQLite file if needed, and runs migrations.
    pub async fn open(config: &StoreConfig) -> Result<Self, StoreError> {
        install_default_drivers();
        let url = config.url.trim();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite:") {
            let path = path.trim_start_matches("//");
            let sep = if path.contains('?') { '&' } else { '?' };
            let url = if path.contains("mode=") {
                format!("sqlite://{path}")
            } else {
                format!("sqlite://{path}{sep}mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_owned())
        } else {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        };
        let options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(10));
        let pool = match backend {
            Backend::Sqlite => {
                let sync = match config.sqlite_synchronous {
                    SqliteSynchronous::Full => "FULL",
                    SqliteSynchronous::Normal => "NORMAL",
                };
                options
                    .max_connections(2)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // A 2 MB page cache per connection (SQLite's
                            // default; 8 MB cost 20-30 MB of peak RSS across
                            // the two connections for no measurable gain in
                            // ingest); statement journals stay in memory;
                            // checkpoints every ~64 MB of WAL rather than
                            // 4 MB write hot pages fewer times. A write
                            // transaction may hold up to 8 MB of changed
                            // pages before it spills them to the WAL: an
                            // ingest batch of 500 events changes 2-4 MB,
                            // and spilling it mid-transaction wrote a
                            // third more and cost the commit 10 % more CPU
                            // (BENCHMARKS.md, issue 16); past 8 MB a
                            // transaction still spills, so memory stays
                            // bounded whatever its size.
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                                 PRAGMA cache_size = -2000; PRAGMA cache_spill = 2048; PRAGMA temp_store = MEMORY; \
                                 PRAGMA wal_autocheckpoint = 16000;",
                            )
                            .await?;
                            conn.execute(format!("PRAGMA synchronous = {sync};").as_str())
                                .await?;
                            Ok(())
                        })
                    })
                    .connect(&url)
                    .await?
            }
            Backend::Postgres => {
                // Fail early with a clear message rather than at first use.
                let _ = sqlx::postgres::PgConnectOptions::from_str(&url)?;
                options
                    .max_connections(config.max_connections.max(2))
                    .connect(&url)
                    .await?
            }
        };
        let store = Self {
            pool,
            backend,
            lease_sweep: std::sync::Arc::new(std::sync::atomic::AtomicI64::new(i64::MIN)),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// The database this store runs on.
    pub const fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite, so that
    /// the writer never has to upgrade a read lock (which fails at once
    /// with BUSY when another writer committed meanwhile).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// `FOR UPDATE` on PostgreSQL, where several replicas may write the same
    /// rows; nothing on SQLite, whose write transaction is already exclusive.
    const fn lock_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE",
        }
    }
}

/// Removes a password from a URL for error messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://kiungo:s3cret@db/kiungo"),
            "postgres://kiungo:***@db/kiungo"
        );
        assert_eq!(redact("mysql://db/x"), "mysql://db/x");
    }
}
