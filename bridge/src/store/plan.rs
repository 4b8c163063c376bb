//! Query plans of the statements the store runs, for the plan tests
//! (`bridge/tests/plans.rs`): record what an operation runs, then ask the
//! database how it would run each statement against the data it holds.
//! Not part of the service's interface.

use sqlx::Row;

use super::sql::query;
pub use super::sql::{Recorded, record};
use super::{Backend, Store, StoreError};

impl Store {
    /// The plan of a recorded statement, one line per plan node, indented
    /// by depth: `EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on PostgreSQL
    /// (with the recorded binds, so PostgreSQL plans for those values).
    pub async fn explain(&self, statement: &Recorded) -> Result<Vec<String>, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let rows = query(
                    self.backend,
                    format!("EXPLAIN QUERY PLAN {}", statement.sql),
                    statement.binds.clone(),
                )
                .fetch_all(&self.pool)
                .await?;
                // (id, parent, notused, detail): depth from the parent chain.
                let mut depth: std::collections::HashMap<i64, usize> = Default::default();
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let id: i64 = r.try_get(0)?;
                    let parent: i64 = r.try_get(1)?;
                    let detail: String = r.try_get(3)?;
                    let d = depth.get(&parent).map_or(0, |d| d + 1);
                    depth.insert(id, d);
                    out.push(format!("{}{detail}", "  ".repeat(d)));
                }
                Ok(out)
            }
            Backend::Postgres => {
                let rows = query(
                    self.backend,
                    format!("EXPLAIN {}", statement.sql),
                    statement.binds.clone(),
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
                    .collect()
            }
        }
    }

    /// Runs statements without binds (test data, `ANALYZE`).
    pub async fn execute_script(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::raw_sql(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Rows in `table` (benchmarks: rows written per event). The name must
    /// be a plain identifier.
    pub async fn count_rows(&self, table: &str) -> Result<i64, StoreError> {
        if table.is_empty()
            || !table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(StoreError::Database(sqlx::Error::Protocol(format!(
                "count_rows: {table:?} is not a table name"
            ))));
        }
        let row = query(
            self.backend,
            format!("SELECT COUNT(*) FROM {table}"),
            vec![],
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
