//! Dynamic statements shared by both backends: numbered placeholders
//! (`$1`, which SQLite and PostgreSQL both accept) and multi-row inserts
//! chunked under each database's parameter limit.

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, AssertSqlSafe};

/// SQLite allows 32,766 parameters per statement and PostgreSQL 65,535.
const MAX_PARAMS: usize = 30_000;

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

/// Builds `sql` with `binds` bound in order.
pub(crate) fn query(sql: String, binds: Vec<Bind>) -> Query<'static, Any, AnyArguments> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::Text(v) => q.bind(v),
            Bind::Int(v) => q.bind(v),
            Bind::Real(v) => q.bind(v),
            Bind::Blob(v) => q.bind(v),
        };
    }
    q
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

/// Splits `keys` (source, event id) into `… WHERE (source, event_id) IN
/// (VALUES …)` statements: `prefix` is everything before `IN`, numbered
/// after `fixed` leading binds.
pub(crate) fn by_keys(
    prefix: &str,
    suffix: &str,
    fixed: &[Bind],
    keys: &[(String, String)],
) -> Vec<(String, Vec<Bind>)> {
    let per = (MAX_PARAMS - fixed.len()) / 2;
    keys.chunks(per.max(1))
        .map(|chunk| {
            let sql = format!(
                "{prefix} (source, event_id) IN (VALUES {}) {suffix}",
                tuples(fixed.len() + 1, chunk.len(), 2)
            );
            let mut binds = fixed.to_vec();
            for (s, e) in chunk {
                binds.push(s.as_str().into());
                binds.push(e.as_str().into());
            }
            (sql, binds)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_are_numbered_across_rows() {
        assert_eq!(tuples(3, 2, 2), "($3, $4), ($5, $6)");
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
