//! Dynamic statements shared by both backends: numbered placeholders
//! (`$1`, which SQLite and PostgreSQL both accept) and multi-row inserts
//! chunked under each database's parameter limit.

use sqlx::any::{AnyArguments, AnyQueryResult, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, Executor};

use super::{Backend, StoreError};

/// SQLite allows 32,766 parameters per statement and PostgreSQL 65,535.
pub(crate) const MAX_PARAMS: usize = 30_000;

/// One bound value.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    Text(Option<String>),
    Int(Option<i64>),
    Real(Option<f64>),
    Blob(Option<Vec<u8>>),
}

impl From<&str> for Bind {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_owned()))
    }
}
impl From<String> for Bind {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}
impl From<Option<String>> for Bind {
    fn from(v: Option<String>) -> Self {
        Self::Text(v)
    }
}
impl From<i64> for Bind {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}
impl From<Option<i64>> for Bind {
    fn from(v: Option<i64>) -> Self {
        Self::Int(v)
    }
}
impl From<Option<f64>> for Bind {
    fn from(v: Option<f64>) -> Self {
        Self::Real(v)
    }
}
impl From<Option<Vec<u8>>> for Bind {
    fn from(v: Option<Vec<u8>>) -> Self {
        Self::Blob(v)
    }
}

/// Rewrites `$1, $2, …` to SQLite's anonymous `?` when they appear exactly
/// in order, once each. SQLite looks a named parameter up by walking a
/// list (and sqlx asks for every parameter's name), which makes binding
/// quadratic: a 500-row insert spent most of its time there.
pub(crate) fn anonymous_placeholders(sql: &str) -> Option<String> {
    let mut out = String::with_capacity(sql.len());
    let mut next = 1usize;
    let mut chars = sql.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        let mut n = 0usize;
        let mut digits = 0;
        while let Some(&(_, d)) = chars.peek() {
            let Some(v) = d.to_digit(10) else { break };
            n = n * 10 + v as usize;
            digits += 1;
            chars.next();
        }
        if digits == 0 || n != next {
            return None;
        }
        next += 1;
        out.push('?');
    }
    Some(out)
}

/// A statement with its binds, owning its text: sqlx 0.8 borrows a
/// query's SQL, and statements here are built at run time (multi-row
/// inserts, backend-specific locking), so the text lives in the statement
/// and is borrowed only while it runs.
///
/// Statements with up to 16 binds are kept in the connection's
/// prepared-statement cache; multi-row statements differ in size from
/// batch to batch, and caching each shape would hold many large prepared
/// statements per connection for no reuse.
#[derive(Debug)]
pub(crate) struct Stmt {
    sql: String,
    binds: Vec<Bind>,
}

impl Stmt {
    fn build(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut q = sqlx::query(&self.sql).persistent(self.binds.len() <= 16);
        for b in &self.binds {
            q = match b {
                // Text and bytes are borrowed from the statement: payloads
                // and bundles are not copied once more per statement.
                Bind::Text(v) => q.bind(v.as_deref()),
                Bind::Int(v) => q.bind(*v),
                Bind::Real(v) => q.bind(*v),
                Bind::Blob(v) => q.bind(v.as_deref()),
            };
        }
        q
    }

    fn record(&self) {
        let _ = RECORDER.try_with(|r| {
            if let Ok(mut r) = r.lock() {
                r.push(Recorded {
                    sql: self.sql.clone(),
                    binds: self.binds.clone(),
                });
            }
        });
    }

    /// Runs the statement; rows affected.
    pub(crate) async fn execute<'c, E>(self, executor: E) -> Result<AnyQueryResult, sqlx::Error>
    where
        E: Executor<'c, Database = Any>,
    {
        self.record();
        self.build().execute(executor).await
    }

    /// Runs the statement; every row.
    pub(crate) async fn fetch_all<'c, E>(self, executor: E) -> Result<Vec<AnyRow>, sqlx::Error>
    where
        E: Executor<'c, Database = Any>,
    {
        self.record();
        self.build().fetch_all(executor).await
    }

    /// Runs the statement and hands each row to `f` as it arrives,
    /// without holding the result in memory; stops at `f`'s first error.
    pub(crate) async fn for_each<'c, E, F>(self, executor: E, mut f: F) -> Result<(), StoreError>
    where
        E: Executor<'c, Database = Any>,
        F: FnMut(AnyRow) -> Result<(), StoreError>,
    {
        use futures_util::TryStreamExt;
        self.record();
        let mut rows = self.build().fetch(executor);
        while let Some(row) = rows.try_next().await? {
            f(row)?;
        }
        Ok(())
    }

    /// Runs the statement; the first row, if any.
    pub(crate) async fn fetch_optional<'c, E>(
        self,
        executor: E,
    ) -> Result<Option<AnyRow>, sqlx::Error>
    where
        E: Executor<'c, Database = Any>,
    {
        self.record();
        self.build().fetch_optional(executor).await
    }

    /// Runs the statement; exactly one row.
    pub(crate) async fn fetch_one<'c, E>(self, executor: E) -> Result<AnyRow, sqlx::Error>
    where
        E: Executor<'c, Database = Any>,
    {
        self.record();
        self.build().fetch_one(executor).await
    }
}

tokio::task_local! {
    static RECORDER: std::sync::Mutex<Vec<Recorded>>;
}

/// A statement as the store ran it, for plan tests (see
/// [`super::plan`]).
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its text, as sent to the database.
    pub sql: String,
    pub(crate) binds: Vec<Bind>,
}

/// Runs `f`, recording every statement the store runs for it in this
/// task (statements run elsewhere, such as by other tasks, are not).
pub async fn record<F: std::future::Future>(f: F) -> (F::Output, Vec<Recorded>) {
    RECORDER
        .scope(std::sync::Mutex::new(Vec::new()), async {
            let out = f.await;
            let list = RECORDER
                .with(|r| r.lock().map(|mut l| std::mem::take(&mut *l)).ok())
                .unwrap_or_default();
            (out, list)
        })
        .await
}

/// Builds `sql` with `binds` bound in order (on SQLite with anonymous
/// placeholders where they allow it).
pub(crate) fn query(backend: Backend, sql: String, binds: Vec<Bind>) -> Stmt {
    let sql = match backend {
        Backend::Sqlite => anonymous_placeholders(&sql).unwrap_or(sql),
        Backend::Postgres => sql,
    };
    Stmt { sql, binds }
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` placeholders, numbered
/// from `first`.
pub(crate) fn tuples(first: usize, rows: usize, cols: usize) -> String {
    let mut s = String::with_capacity(rows * cols * 5);
    let mut n = first;
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            s.push('$');
            s.push_str(&n.to_string());
            n += 1;
        }
        s.push(')');
    }
    s
}

/// Splits `rows` (each `cols` values) into statements `head VALUES … tail`
/// that stay under the parameter limit.
pub(crate) fn multi_row(
    head: &str,
    tail: &str,
    cols: usize,
    rows: Vec<Vec<Bind>>,
) -> Vec<(String, Vec<Bind>)> {
    let per = (MAX_PARAMS / cols.max(1)).max(1);
    let mut out = Vec::new();
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<Vec<Bind>> = rows.by_ref().take(per).collect();
        let sql = format!("{head} VALUES {} {tail}", tuples(1, chunk.len(), cols));
        out.push((sql, chunk.into_iter().flatten().collect()));
    }
    out
}

/// Splits `keys` (source, event id) into `… WHERE source = $n AND
/// event_id IN ($n+1, …)` statements, one or more per source, so that
/// both databases look the keys up through the primary key: `prefix` is
/// everything before `source =`, numbered after `fixed` leading binds.
pub(crate) fn by_keys(
    prefix: &str,
    suffix: &str,
    fixed: &[Bind],
    keys: &[(String, String)],
) -> Vec<(String, Vec<Bind>)> {
    let mut by_source: std::collections::BTreeMap<&str, Vec<&str>> =
        std::collections::BTreeMap::new();
    for (s, e) in keys {
        by_source.entry(s.as_str()).or_default().push(e.as_str());
    }
    let per = (MAX_PARAMS - fixed.len() - 1).max(1);
    let mut out = Vec::new();
    for (source, ids) in by_source {
        for chunk in ids.chunks(per) {
            let first = fixed.len() + 2;
            let list: Vec<String> = (first..first + chunk.len())
                .map(|n| format!("${n}"))
                .collect();
            let sql = format!(
                "{prefix} source = ${} AND event_id IN ({}) {suffix}",
                fixed.len() + 1,
                list.join(", ")
            );
            let mut binds = fixed.to_vec();
            binds.push(source.into());
            binds.extend(chunk.iter().map(|e| Bind::from(*e)));
            out.push((sql, binds));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_are_numbered_across_rows() {
        assert_eq!(tuples(3, 2, 2), "($3, $4), ($5, $6)");
    }

    #[test]
    fn placeholders_become_anonymous_only_in_order() {
        assert_eq!(
            anonymous_placeholders("a = $1 AND b IN ($2, $3)").as_deref(),
            Some("a = ? AND b IN (?, ?)")
        );
        assert_eq!(anonymous_placeholders("a = $1, b = $1"), None);
        assert_eq!(anonymous_placeholders("a = $2"), None);
        assert_eq!(
            anonymous_placeholders("SELECT 1").as_deref(),
            Some("SELECT 1")
        );
    }

    #[test]
    fn keys_are_grouped_by_source() {
        let keys = vec![
            ("a".to_owned(), "1".to_owned()),
            ("b".to_owned(), "2".to_owned()),
            ("a".to_owned(), "3".to_owned()),
        ];
        let stmts = by_keys(
            "DELETE FROM t WHERE x = $1 AND",
            "",
            &[Bind::from(0i64)],
            &keys,
        );
        assert_eq!(stmts.len(), 2);
        assert_eq!(
            stmts[0].0,
            "DELETE FROM t WHERE x = $1 AND source = $2 AND event_id IN ($3, $4) "
        );
        assert_eq!(stmts[0].1.len(), 4);
        assert_eq!(
            stmts[1].0,
            "DELETE FROM t WHERE x = $1 AND source = $2 AND event_id IN ($3) "
        );
    }

    #[test]
    fn multi_row_splits_under_the_limit() {
        let rows: Vec<Vec<Bind>> = (0..25_000)
            .map(|i| vec![Bind::from(i as i64), Bind::from(i as i64)])
            .collect();
        let stmts = multi_row("INSERT INTO t (a, b)", "", 2, rows);
        assert_eq!(stmts.len(), 2);
        assert_eq!(stmts[0].1.len(), 30_000);
        assert_eq!(stmts[1].1.len(), 20_000);
        assert!(stmts[1].0.ends_with("($19999, $20000) "));
    }
}
