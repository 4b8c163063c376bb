//! Throwaway databases for tests and benchmarks: a fresh SQLite file or a
//! fresh PostgreSQL database per caller, so that tests can run in
//! parallel against the one server on the machine.

use sqlx::Connection;

use super::{Backend, StoreConfig, StoreError};

/// The PostgreSQL server tests use; `KIUNGO_TEST_POSTGRES` overrides it.
pub fn postgres_admin_url() -> String {
    std::env::var("KIUNGO_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A scratch database; a SQLite one is deleted with its directory when
/// dropped, a PostgreSQL one is left for inspection after the test (named
/// `kiungo_test_<unix seconds>_<random>`) and dropped by the first
/// scratch database created more than an hour later.
#[derive(Debug)]
pub struct ScratchDb {
    /// Config that points at it.
    pub config: StoreConfig,
    _dir: Option<tempfile::TempDir>,
}

impl ScratchDb {
    /// Creates one on `backend`.
    pub async fn new(backend: Backend) -> Result<Self, StoreError> {
        match backend {
            Backend::Sqlite => {
                let dir =
                    tempfile::tempdir().map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
                let url = format!("sqlite:{}", dir.path().join("kiungo.db").display());
                Ok(Self {
                    config: StoreConfig {
                        url,
                        ..StoreConfig::default()
                    },
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let now = super::now_ms() / 1000;
                let name = format!(
                    "kiungo_test_{now}_{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..12]
                );
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                let old: Vec<String> = sqlx::query_scalar(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'kiungo\\_test\\_%'",
                )
                .fetch_all(&mut conn)
                .await?;
                for db in old {
                    let stamp = db.split('_').nth(2).and_then(|t| t.parse::<i64>().ok());
                    if stamp.is_none_or(|t| now - t > 3600) {
                        let sql = format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)");
                        let _ = sqlx::raw_sql(&sql).execute(&mut conn).await;
                    }
                }
                sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
                // Same server and options, other database: the name is the
                // last path segment, before any `?query`.
                let (path, query) = admin
                    .split_once('?')
                    .map_or((admin.as_str(), None), |(p, q)| (p, Some(q)));
                let base = path.rsplit_once('/').map_or(path, |(b, _)| b);
                let query = query.map(|q| format!("?{q}")).unwrap_or_default();
                Ok(Self {
                    config: StoreConfig {
                        url: format!("{base}/{name}{query}"),
                        ..StoreConfig::default()
                    },
                    _dir: None,
                })
            }
        }
    }
}

/// Declares one `#[tokio::test]` per backend for each named
/// `async fn name(backend: Backend)`: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::store::Backend::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::store::Backend::Postgres).await })*
        }
    };
}
