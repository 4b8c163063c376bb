//! DHIS2 totals seen from the delivery side: claim the totals whose
//! contributions changed, recompute each from every stored contribution,
//! record what DHIS2 said.
//!
//! Totals are absolute: a replay, an edit or a withdrawn event yields the
//! right value, never a double count. A total left with no contribution
//! is sent as an empty value, which deletes it in DHIS2. A change that
//! arrives while a push is in flight keeps the total dirty (the row's
//! `changes` counter moved), so it is pushed again.

use std::collections::BTreeMap;

use sqlx::Row;

use super::read::{TotalKey, fold_total, total_binds, total_key};
use super::sql::query;

/// At most this many contributing events are listed in a DHIS2 dead
/// letter's detail (`contributions`; `more_contributions` says if there
/// were more).
pub const CONTRIBUTORS_SHOWN: usize = 20;

/// `(source, event_id, mapping)` of an event behind a DHIS2 total.
type Contributor = (String, String, Option<String>);
use super::{Backend, Store, StoreError};

/// A total to push.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtyTotal {
    /// Data element, period, org unit, COC, AOC (as the mappings wrote
    /// them: UIDs or `code:X`).
    pub key: TotalKey,
    /// The value to send: the recomputed total, or empty to delete.
    pub value: String,
    /// The `changes` counter at claim time.
    pub changes: i64,
    /// Failed pushes so far.
    pub attempts: i64,
    /// When the total first became dirty (ms).
    pub marked_at: i64,
    /// The claim that holds it; results are recorded only while it does.
    pub claim: String,
    /// The source app of its contributions: one, [`MIXED`] when they come
    /// from several, empty when none is left (a withdrawn total).
    pub source: String,
    /// The mapping of its contributions, in the same way (empty also for
    /// contributions stored before mappings were recorded with them).
    pub mapping: String,
    /// A withdrawn total (no contribution left) of which DHIS2 holds no
    /// value from Kiungo (never accepted, or already deleted): there is
    /// nothing to delete, so nothing is sent; recording it as pushed
    /// resolves a refusal still open for it.
    pub nothing_to_send: bool,
}

/// The source or mapping of a total made by more than one.
pub const MIXED: &str = "mixed";

/// Folds one contribution's source or mapping into a total's: the first
/// one seen, then [`MIXED`] as soon as another differs.
fn fold_label(label: &mut Option<String>, next: &str) {
    match label {
        None => *label = Some(next.to_owned()),
        Some(l) if l != next && l != MIXED => *label = Some(MIXED.to_owned()),
        Some(_) => {}
    }
}

/// What happened to one claimed total.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TotalResult {
    /// DHIS2 stored (or ignored as identical) the value.
    Pushed,
    /// DHIS2 refused this value: park it with DHIS2's message.
    Rejected {
        /// DHIS2's error code (E76xx) or our reason code.
        code: String,
        /// DHIS2's message.
        message: String,
    },
    /// A transient failure: try again at `next_attempt_at`.
    Retry {
        /// When (ms).
        next_attempt_at: i64,
        /// Why.
        error: String,
    },
}

/// `dhis2_contributions.notified` of a contribution no push DHIS2 accepted
/// has included yet (migration 0015): new, or its total refused since.
pub(super) const CONTRIBUTION_WAITING: i64 = 2;

/// `notified` of a contribution an accepted push included, not yet told
/// "delivered" by a status message (`store/feedback.rs`); `accepted_at`
/// says when DHIS2 accepted it.
pub(super) const CONTRIBUTION_ACCEPTED: i64 = 0;

/// The one rule for "DHIS2 refused this contribution's total", used by
/// the event status and the status messages alike: an open dead letter
/// for the total (aliased `c`, a row of `dhis2_contributions`). A total
/// DHIS2 accepts after a refusal resolves its letter
/// ([`Store::finish_totals`]); a letter an operator discarded no longer
/// counts.
pub(super) const DHIS2_REFUSED: &str = "EXISTS (SELECT 1 FROM dead_letters dl WHERE dl.state = 'open' \
     AND dl.fingerprint = 'dhis2:' || c.data_element || ':' || c.period || ':' || c.org_unit \
     || ':' || c.coc || ':' || c.aoc)";

/// The fingerprint of a total's dead letter (one letter per total).
pub(super) fn dhis2_fingerprint((de, pe, ou, coc, aoc): &TotalKey) -> String {
    format!("dhis2:{de}:{pe}:{ou}:{coc}:{aoc}")
}

/// Formats a number the way DHIS2 stores it: integers without a decimal
/// point.
pub fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Store {
    /// Claims up to `limit` due dirty totals and recomputes their values.
    /// A total is due once it has not changed for `settle_ms`, or
    /// `max_wait_ms` after its first change while changes keep coming
    /// (equal, they mean "`settle_ms` after the first change"), and its
    /// retry time has come.
    ///
    /// The walk follows `dhis2_dirty_due` (next attempt, then first mark):
    /// totals never tried come first, oldest mark first; totals waiting
    /// for a retry lie beyond `now` and are never walked, so a DHIS2
    /// outage that leaves every total waiting costs nothing per claim.
    /// Totals still settling are walked and skipped: those first changed
    /// within the last `max_wait_ms`, the totals in use, not the events.
    pub async fn claim_totals(
        &self,
        limit: i64,
        now: i64,
        settle_ms: i64,
        max_wait_ms: i64,
        lease_ms: i64,
    ) -> Result<Vec<DirtyTotal>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let mut tx = self.begin_write().await?;
        query(
            self.backend,
            format!(
                "UPDATE dhis2_dirty SET claim = $1, lease_until = $2 \
                 WHERE (data_element, period, org_unit, coc, aoc) IN ( \
                   SELECT data_element, period, org_unit, coc, aoc FROM dhis2_dirty \
                   WHERE next_attempt_at <= $3 AND (changed_at <= $4 OR marked_at <= $5) \
                   AND (lease_until IS NULL OR lease_until < $6) \
                   ORDER BY next_attempt_at, marked_at LIMIT $7 {lock})"
            ),
            vec![
                token.as_str().into(),
                (now + lease_ms).into(),
                now.into(),
                (now - settle_ms).into(),
                (now - max_wait_ms).into(),
                now.into(),
                limit.into(),
            ],
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;

        // The recompute reads every contribution of the claimed totals:
        // outside the write transaction (SQLite's single writer, and the
        // FHIR worker, would wait for it), in one statement so that each
        // total's `changes` and its contributions come from one snapshot,
        // folded row by row rather than held in memory. A commit after
        // that snapshot moves `changes`, so the total stays dirty.
        struct Acc {
            changes: i64,
            attempts: i64,
            marked_at: i64,
            num: Option<f64>,
            text: Option<String>,
            source: Option<String>,
            mapping: Option<String>,
        }
        let mut acc: BTreeMap<TotalKey, Acc> = BTreeMap::new();
        query(
            self.backend,
            "SELECT d.data_element, d.period, d.org_unit, d.coc, d.aoc, d.changes, d.attempts, d.marked_at, \
             c.aggregation, c.value, c.value_num, c.source, c.mapping \
             FROM dhis2_dirty d LEFT JOIN dhis2_contributions c ON c.data_element = d.data_element \
             AND c.period = d.period AND c.org_unit = d.org_unit AND c.coc = d.coc AND c.aoc = d.aoc \
             WHERE d.claim = $1 \
             ORDER BY d.data_element, d.period, d.org_unit, d.coc, d.aoc, c.event_date, c.event_id"
                .to_owned(),
            vec![token.as_str().into()],
        )
        .for_each(&self.pool, |row| {
            let a = acc.entry(total_key(&row)?).or_insert(Acc {
                changes: row.try_get(5).unwrap_or(0),
                attempts: row.try_get(6).unwrap_or(0),
                marked_at: row.try_get(7).unwrap_or(0),
                num: None,
                text: None,
                source: None,
                mapping: None,
            });
            let Some(aggregation) = row.try_get::<Option<String>, _>(8)? else {
                return Ok(()); // no contribution left: the total is withdrawn
            };
            let source: Option<String> = row.try_get(11)?;
            let mapping: Option<String> = row.try_get(12)?;
            fold_label(&mut a.source, source.as_deref().unwrap_or(""));
            fold_label(&mut a.mapping, mapping.as_deref().unwrap_or(""));
            let text: Option<String> = row.try_get(9)?;
            let num: Option<f64> = row.try_get(10)?;
            match (aggregation.as_str(), num) {
                ("last", _) => {
                    a.text = text;
                    a.num = num;
                }
                (aggregation, Some(v)) => a.num = Some(fold_total(a.num, aggregation, v)),
                (_, None) => {}
            }
            Ok(())
        })
        .await?;
        // A withdrawn total is deleted on DHIS2 only if DHIS2 holds a
        // value Kiungo pushed (one primary-key look-up per withdrawn
        // total, the rare case).
        let mut held: BTreeMap<TotalKey, bool> = BTreeMap::new();
        for (key, a) in &acc {
            if a.num.is_some() || a.text.is_some() {
                continue;
            }
            let row = query(
                self.backend,
                "SELECT value FROM dhis2_pushed WHERE data_element = $1 AND period = $2 \
                 AND org_unit = $3 AND coc = $4 AND aoc = $5"
                    .to_owned(),
                total_binds(key),
            )
            .fetch_optional(&self.pool)
            .await?;
            let value: Option<String> = match row {
                Some(r) => r.try_get(0)?,
                None => None,
            };
            held.insert(key.clone(), value.is_some_and(|v| !v.is_empty()));
        }
        Ok(acc
            .into_iter()
            .map(|(key, a)| DirtyTotal {
                nothing_to_send: held.get(&key) == Some(&false),
                key,
                value: match (a.num, a.text) {
                    (Some(n), _) => format_number(n),
                    (None, Some(t)) => t,
                    (None, None) => String::new(),
                },
                changes: a.changes,
                attempts: a.attempts,
                marked_at: a.marked_at,
                claim: token.clone(),
                source: a.source.unwrap_or_default(),
                mapping: a.mapping.unwrap_or_default(),
            })
            .collect())
    }

    /// Records the results of one push.
    pub async fn finish_totals(
        &self,
        results: &[(DirtyTotal, TotalResult)],
        now: i64,
    ) -> Result<(), StoreError> {
        self.finish_totals_noting(results, now, false).await
    }

    /// Records the results of one push and, with `completeness`, notes in
    /// the same transaction where the values DHIS2 accepted changed, for
    /// the completeness pass (`store/completeness.rs`).
    pub async fn finish_totals_noting(
        &self,
        results: &[(DirtyTotal, TotalResult)],
        now: i64,
        completeness: bool,
    ) -> Result<(), StoreError> {
        // Rows are locked in key order, as the committer marks them.
        let mut ordered: Vec<&(DirtyTotal, TotalResult)> = results.iter().collect();
        ordered.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        let mut tx = self.begin_write().await?;
        // Accepted, and no change arrived while the push was in flight:
        // the value DHIS2 accepted holds every contribution waiting, so
        // each can be told "delivered" (after a change in flight, the next
        // push will include it). One seek on the total's index for its
        // waiting rows. Done before any dirty row is locked below, so
        // that this transaction, like the ingest commit, locks
        // contributions before totals (PostgreSQL).
        for (t, _) in ordered
            .iter()
            .filter(|(_, r)| matches!(r, TotalResult::Pushed))
        {
            let mut b = total_binds(&t.key);
            b.extend([
                CONTRIBUTION_ACCEPTED.into(),
                CONTRIBUTION_WAITING.into(),
                t.changes.into(),
                t.claim.as_str().into(),
                now.into(),
            ]);
            query(
                self.backend,
                "UPDATE dhis2_contributions SET notified = $6, accepted_at = $10 WHERE data_element = $1 \
                 AND period = $2 AND org_unit = $3 AND coc = $4 AND aoc = $5 AND notified = $7 \
                 AND EXISTS (SELECT 1 FROM dhis2_dirty d WHERE d.data_element = $1 AND d.period = $2 \
                   AND d.org_unit = $3 AND d.coc = $4 AND d.aoc = $5 AND d.changes = $8 AND d.claim = $9)"
                    .to_owned(),
                b,
            )
            .execute(&mut *tx)
            .await?;
        }
        for (t, result) in ordered {
            let (de, pe, ou, coc, aoc) = &t.key;
            let key_binds = || total_binds(&t.key);
            let clear = |changes: i64| {
                let mut b = key_binds();
                b.push(changes.into());
                b.push(t.claim.as_str().into());
                (
                    "DELETE FROM dhis2_dirty WHERE data_element = $1 AND period = $2 AND org_unit = $3 \
                     AND coc = $4 AND aoc = $5 AND changes = $6 AND claim = $7"
                        .to_owned(),
                    b,
                )
            };
            match result {
                TotalResult::Pushed => {
                    let mut b = key_binds();
                    b.push(t.value.as_str().into());
                    b.push(now.into());
                    query(
                        self.backend,
                        "INSERT INTO dhis2_pushed (data_element, period, org_unit, coc, aoc, value, pushed_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (data_element, period, org_unit, coc, aoc) \
                         DO UPDATE SET value = excluded.value, pushed_at = excluded.pushed_at"
                            .to_owned(),
                        b,
                    )
                    .execute(&mut *tx)
                    .await?;
                    let (sql, b) = clear(t.changes);
                    query(self.backend, sql, b).execute(&mut *tx).await?;
                    // Accepted after a refusal: the refusal is over. The
                    // letter counts as replayed (delivered after all);
                    // its detail goes with `payload_retention`.
                    query(
                        self.backend,
                        "UPDATE dead_letters SET state = 'replayed', resolved_at = $1 \
                         WHERE fingerprint = $2 AND state = 'open'"
                            .to_owned(),
                        vec![now.into(), dhis2_fingerprint(&t.key).into()],
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                TotalResult::Rejected { code, message } => {
                    // The events that made the total (rare path: one
                    // indexed lookup per refused total, at most
                    // CONTRIBUTORS_SHOWN + 1 rows).
                    let rows = query(
                        self.backend,
                        format!(
                            "SELECT c.source, c.event_id, e.mapping FROM dhis2_contributions c \
                             LEFT JOIN events e ON e.source = c.source AND e.event_id = c.event_id \
                             WHERE c.data_element = $1 AND c.period = $2 AND c.org_unit = $3 \
                             AND c.coc = $4 AND c.aoc = $5 ORDER BY c.source, c.event_id LIMIT {}",
                            CONTRIBUTORS_SHOWN + 1
                        ),
                        key_binds(),
                    )
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut contributors = Vec::with_capacity(rows.len());
                    for row in &rows {
                        let source: String = row.try_get(0)?;
                        let event_id: String = row.try_get(1)?;
                        let mapping: Option<String> = row.try_get(2)?;
                        contributors.push((source, event_id, mapping));
                    }
                    let more = contributors.len() > CONTRIBUTORS_SHOWN;
                    contributors.truncate(CONTRIBUTORS_SHOWN);
                    // One mapping (one event) behind the total: the letter
                    // names it, as an ingest or FHIR letter does.
                    let only = |f: fn(&Contributor) -> Option<&str>| {
                        let first = contributors.first().and_then(f)?;
                        (!more && contributors.iter().all(|c| f(c) == Some(first)))
                            .then(|| first.to_owned())
                    };
                    let mapping = only(|c| c.2.as_deref());
                    let event_id = only(|c| Some(c.1.as_str()));
                    let detail = serde_json::json!({
                        "dataElement": de, "period": pe, "orgUnit": ou,
                        "categoryOptionCombo": coc, "attributeOptionCombo": aoc, "value": t.value,
                        "contributions": contributors.iter().map(|(source, event_id, mapping)| {
                            serde_json::json!({"source": source, "event_id": event_id, "mapping": mapping})
                        }).collect::<Vec<_>>(),
                        "more_contributions": more,
                    });
                    query(
                        self.backend,
                        "INSERT INTO dead_letters (fingerprint, stage, source, reason_code, reason, payload, \
                         received_at, last_seen_at, mapping, event_id) \
                         VALUES ($1, 'dhis2', 'dhis2', $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (fingerprint) DO UPDATE SET seen_count = dead_letters.seen_count + 1, \
                         last_seen_at = excluded.last_seen_at, reason_code = excluded.reason_code, \
                         reason = excluded.reason, payload = excluded.payload, \
                         mapping = excluded.mapping, event_id = excluded.event_id, \
                         notified = CASE WHEN dead_letters.state = 'discarded' THEN dead_letters.notified ELSE 0 END, \
                         state = CASE WHEN dead_letters.state = 'discarded' THEN 'discarded' ELSE 'open' END, \
                         resolved_at = CASE WHEN dead_letters.state = 'discarded' THEN dead_letters.resolved_at END"
                            .to_owned(),
                        vec![
                            dhis2_fingerprint(&t.key).into(),
                            code.as_str().into(),
                            message.as_str().into(),
                            Some(detail.to_string().into_bytes()).into(),
                            now.into(),
                            now.into(),
                            mapping.into(),
                            event_id.into(),
                        ],
                    )
                    .execute(&mut *tx)
                    .await?;
                    let (sql, b) = clear(t.changes);
                    query(self.backend, sql, b).execute(&mut *tx).await?;
                }
                TotalResult::Retry {
                    next_attempt_at,
                    error,
                } => {
                    let mut b = vec![(*next_attempt_at).into(), error.as_str().into()];
                    b.extend(key_binds());
                    query(
                        self.backend,
                        "UPDATE dhis2_dirty SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2, \
                         claim = NULL, lease_until = NULL WHERE data_element = $3 AND period = $4 \
                         AND org_unit = $5 AND coc = $6 AND aoc = $7 AND claim = $8"
                            .to_owned(),
                        {
                            b.push(t.claim.as_str().into());
                            b
                        },
                    )
                    .execute(&mut *tx)
                    .await?;
                }
            }
            // A change arrived while the push was in flight: release the
            // claim so that the new total goes out (no-op if cleared).
            // Changed while the push was in flight: still dirty, and the
            // changes after this push start a new wait (`marked_at`), so
            // that a total that keeps changing goes out once per
            // `max_push_delay`, not at every pass once the first wait ran
            // out.
            let mut b = vec![now.into()];
            b.extend(key_binds());
            b.push(t.changes.into());
            b.push(t.claim.as_str().into());
            query(
                self.backend,
                "UPDATE dhis2_dirty SET claim = NULL, lease_until = NULL, marked_at = $1 \
                 WHERE data_element = $2 AND period = $3 AND org_unit = $4 AND coc = $5 AND aoc = $6 \
                 AND changes <> $7 AND claim = $8"
                    .to_owned(),
                b,
            )
            .execute(&mut *tx)
            .await?;
        }
        if completeness {
            super::completeness::note_changes(self.backend, &mut tx, results).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The values DHIS2 last accepted, by total.
    pub async fn dhis2_pushed(&self) -> Result<BTreeMap<TotalKey, String>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT data_element, period, org_unit, coc, aoc, value FROM dhis2_pushed".to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((total_key(r)?, r.try_get(5)?)))
            .collect()
    }

    /// Marks a total dirty again (operator replay of a parked value).
    pub async fn remark_total(&self, key: &TotalKey, now: i64) -> Result<(), StoreError> {
        let mut b = total_binds(key);
        b.push(now.into());
        query(
            self.backend,
            "INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at, changed_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             ON CONFLICT (data_element, period, org_unit, coc, aoc) DO UPDATE SET changes = dhis2_dirty.changes + 1, \
             next_attempt_at = 0, attempts = 0"
                .to_owned(),
            b,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Every data element, org unit, COC and AOC of the totals Kiungo has
    /// pushed or will push, as written (for the DHIS2 preflight).
    ///
    /// Read from the totals (`dhis2_dirty`, `dhis2_pushed`: one row per
    /// total), not from the contributions (one row per event and rule):
    /// at start-up, after an outage, the latter meant four full scans of
    /// a table of millions of rows. A total DHIS2 refused and that no
    /// event changed since is in neither; its dead letter names it.
    pub async fn referenced_metadata(&self) -> Result<[Vec<String>; 4], StoreError> {
        let mut out: [Vec<String>; 4] = Default::default();
        for (i, col) in ["data_element", "org_unit", "coc", "aoc"]
            .iter()
            .enumerate()
        {
            let rows = query(
                self.backend,
                format!("SELECT {col} FROM dhis2_dirty UNION SELECT {col} FROM dhis2_pushed"),
                vec![],
            )
            .fetch_all(&self.pool)
            .await?;
            out[i] = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        }
        Ok(out)
    }
}

impl Store {
    /// Marks every total that has contributions for a push (the scheduled
    /// re-sync, which repairs values changed in DHIS2 by hand). Returns how
    /// many were marked.
    pub async fn remark_all_totals(&self, now: i64) -> Result<u64, StoreError> {
        // `WHERE 1 = 1`: without a WHERE, SQLite reads `ON CONFLICT` as
        // part of the SELECT's join and fails to parse.
        let n = query(
            self.backend,
            "INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at, changed_at) \
             SELECT DISTINCT data_element, period, org_unit, coc, aoc, $1, $1 FROM dhis2_contributions WHERE 1 = 1 \
             ON CONFLICT (data_element, period, org_unit, coc, aoc) DO UPDATE SET changes = dhis2_dirty.changes + 1"
                .to_owned(),
            vec![now.into()],
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::format_number;

    #[test]
    fn numbers_format_like_dhis2() {
        assert_eq!(format_number(3.0), "3");
        assert_eq!(format_number(2.5), "2.5");
        assert_eq!(format_number(-0.0), "0");
    }
}
