//! Purging personal data once delivery no longer needs it.
//!
//! Raw payloads and FHIR bundles carry client data. A bundle is purged
//! once it is delivered (or superseded) and the retention period has
//! passed; an event's raw payload once no bundle of it waits for delivery
//! and the same period has passed since its last version arrived. A dead
//! letter keeps its payload, headers and detail while it is open (an
//! operator may replay it); once replayed or discarded, they go after the
//! same period. What stays is what deduplication, DHIS2 totals and the
//! dead-letter list need: ids, version hashes, aggregate contributions,
//! reasons.

use std::time::Duration;

use serde::Serialize;
use sqlx::Row;

use super::sql::query;
use super::{Backend, Store, StoreError};

/// What one purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Raw event payloads removed.
    pub payloads: u64,
    /// FHIR bundles removed.
    pub bundles: u64,
    /// Payloads of replayed or discarded dead letters removed.
    pub dead_letters: u64,
}

/// Rows purged per transaction: the writer is held briefly, and each
/// batch is found through the partial indexes `fhir_outbox_purgeable`,
/// `events_purgeable` and `dead_letters_purgeable` (oldest first), however
/// large the store.
const PURGE_BATCH: i64 = 1_000;

impl Store {
    /// Purges delivered payloads older than `retention`, as of `now_ms`,
    /// in batches of 1,000 rows.
    ///
    /// Each batch picks its rows through a partial index and updates them
    /// by physical id (SQLite's rowid, PostgreSQL's ctid, an array probed
    /// one by one): as `IN (SELECT ...)` PostgreSQL planned the update as
    /// a hash join over the whole table.
    pub async fn purge_delivered(
        &self,
        retention: Duration,
        now_ms: i64,
    ) -> Result<PurgeReport, StoreError> {
        let cutoff = now_ms - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let (open, rowid, close) = match self.backend {
            Backend::Sqlite => ("rowid IN (", "rowid", ")"),
            Backend::Postgres => ("ctid = ANY(ARRAY(", "ctid", "))"),
        };
        let bundles = format!(
            "UPDATE fhir_outbox SET bundle = NULL WHERE {open}SELECT {rowid} FROM fhir_outbox \
             WHERE bundle IS NOT NULL AND state IN ('delivered', 'superseded') AND updated_at < $1 \
             AND updated_at >= $2 ORDER BY updated_at LIMIT $3{close} RETURNING updated_at"
        );
        // An event whose bundle still waits keeps its payload (replay and
        // re-mapping need it). The check is a scalar subquery, one index
        // probe per candidate: as a plain `NOT EXISTS`, PostgreSQL hashed
        // every bundle in flight to check one batch.
        let payloads = format!(
            "UPDATE events SET payload = NULL WHERE {open}SELECT e.{rowid} FROM events e \
             WHERE payload IS NOT NULL AND updated_at < $1 AND updated_at >= $2 \
             AND NOT (SELECT EXISTS (SELECT 1 FROM fhir_outbox o WHERE o.source = e.source \
               AND o.event_id = e.event_id AND o.state IN ('pending', 'delivering'))) \
             ORDER BY updated_at LIMIT $3{close} RETURNING updated_at"
        );
        // A dead letter replayed or discarded keeps nothing an operator
        // still needs: its client data goes `retention` after it was
        // resolved, like a delivered event's.
        let letters = format!(
            "UPDATE dead_letters SET payload = NULL, headers = NULL, detail = NULL \
             WHERE {open}SELECT {rowid} FROM dead_letters \
             WHERE payload IS NOT NULL AND resolved_at IS NOT NULL AND state <> 'open' \
             AND resolved_at < $1 AND resolved_at >= $2 ORDER BY resolved_at LIMIT $3{close} \
             RETURNING resolved_at"
        );
        let mut report = PurgeReport::default();
        for (sql, count) in [
            (bundles, &mut report.bundles),
            (payloads, &mut report.payloads),
            (letters, &mut report.dead_letters),
        ] {
            // Each batch starts where the last one ended (`updated_at`),
            // so that rows a batch walks and keeps (an old event whose
            // bundle still waits, after an outage longer than the
            // retention) are not walked again by every later batch.
            let mut from = i64::MIN;
            loop {
                let (n, last) = self.purge_batch(&sql, cutoff, from).await?;
                *count += n;
                if n < PURGE_BATCH.unsigned_abs() {
                    break;
                }
                from = last.max(from);
            }
        }
        Ok(report)
    }

    /// One batch: rows purged, and the newest `updated_at` (or
    /// `resolved_at`) among them.
    async fn purge_batch(
        &self,
        sql: &str,
        cutoff: i64,
        from: i64,
    ) -> Result<(u64, i64), StoreError> {
        let mut tx = self.begin_write().await?;
        let rows = query(
            self.backend,
            sql.to_owned(),
            vec![cutoff.into(), from.into(), PURGE_BATCH.into()],
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut last = from;
        for r in &rows {
            last = last.max(r.try_get::<i64, _>(0)?);
        }
        Ok((rows.len() as u64, last))
    }
}
