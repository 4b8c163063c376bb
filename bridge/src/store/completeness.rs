//! DHIS2 data set completeness seen from the store: where DHIS2's values
//! from Kiungo changed (noted with each push's result), one row per data
//! set, period, org unit and attribute option combo to register complete
//! with DHIS2 or to undo, claimed once due, and what DHIS2 said.
//!
//! **The guarantee**: a data set, period, org unit and attribute option
//! combo (DHIS2's key of a registration) is registered once,
//! when its period has ended plus the grace and DHIS2 holds at least one
//! of the set's values there from Kiungo (`dhis2_pushed`), none of them
//! still on its way (`dhis2_dirty`); the registration is undone once
//! DHIS2 holds none of them any more (all withdrawn). Notes are written in
//! the transaction that records the push, so a crash loses none.
//!
//! **Cost**: the pass walks `dhis2_completeness_due` (rows with something
//! to do, oldest first) and stops after its batch; registered rows with
//! nothing to do are not in it. A row's values are read through the
//! totals' key indexes, one probe per data element of its set. Notes are
//! all work: each pass takes a batch of them and deletes it.

use std::collections::BTreeMap;

use sqlx::Row;

use super::dhis2::DirtyTotal;
use super::sql::{Bind, multi_row, query};
use super::{Backend, Store, StoreError, TotalResult};

/// The fingerprint of a completeness dead letter (one letter per data
/// set, period, org unit and attribute option combo; migration 0013 gave
/// the letters made before it the default combo).
fn fingerprint(key: &CompletenessKey) -> String {
    format!(
        "dhis2-completeness:{}:{}:{}:{}",
        key.data_set, key.period, key.org_unit, key.attribute_option_combo
    )
}

/// A data set, period, org unit and attribute option combo (the org unit
/// and combo as the mappings wrote them: a UID or `code:X`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CompletenessKey {
    /// Data set UID.
    pub data_set: String,
    /// Period id.
    pub period: String,
    /// Org unit, as written.
    pub org_unit: String,
    /// Attribute option combo, as written (`HllvX50cXC0` the default).
    pub attribute_option_combo: String,
}

impl CompletenessKey {
    /// Data set, period, org unit and attribute option combo, bound in the
    /// order of the table's key.
    fn binds(&self) -> Vec<Bind> {
        vec![
            self.data_set.as_str().into(),
            self.period.as_str().into(),
            self.org_unit.as_str().into(),
            self.attribute_option_combo.as_str().into(),
        ]
    }
}

/// Where DHIS2's values from Kiungo changed: a data element, period, org
/// unit and attribute option combo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletenessChange {
    /// Data element, as written.
    pub data_element: String,
    /// Period id.
    pub period: String,
    /// Org unit, as written.
    pub org_unit: String,
    /// Attribute option combo, as written.
    pub attribute_option_combo: String,
    /// A value was stored there.
    pub filled: bool,
    /// A value was deleted there.
    pub emptied: bool,
}

/// A data set a change concerns: it holds the data element and has the
/// period's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletenessTarget {
    /// Data set UID.
    pub data_set: String,
    /// The period's end plus the set's grace (ms).
    pub due_at: i64,
}

/// A row claimed by the completeness pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedCompleteness {
    /// Which.
    pub key: CompletenessKey,
    /// DHIS2 holds Kiungo's registration.
    pub registered: bool,
    /// The period's end plus the grace (ms).
    pub due_at: i64,
    /// The `changes` counter at claim time.
    pub changes: i64,
    /// Failed attempts so far.
    pub attempts: i64,
    /// Since when attempts fail (ms), for the retry policy's maximum age.
    pub failing_since: Option<i64>,
    /// The claim that holds it; results are recorded only while it does.
    pub claim: String,
}

/// What the pass did with one claimed row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletenessResult {
    /// DHIS2 registered the data set complete.
    Registered,
    /// DHIS2 undid Kiungo's registration.
    Undone,
    /// Nothing to send: DHIS2 already has what the values say.
    Settled,
    /// Not yet: values of the set are still on their way, or the row is
    /// not due; look again at `until` (ms).
    Postponed {
        /// When (ms).
        until: i64,
    },
    /// A transient failure: try again at `next_attempt_at`.
    Retry {
        /// When (ms).
        next_attempt_at: i64,
        /// Why.
        error: String,
    },
    /// DHIS2 refused the registration (or its undo): parked as a DHIS2
    /// dead letter with DHIS2's code and message.
    Refused {
        /// DHIS2's error code, or ours.
        code: String,
        /// DHIS2's message.
        message: String,
        /// The refused request was an undo.
        undo: bool,
    },
}

/// One row, as tests and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletenessRow {
    /// Which.
    pub key: CompletenessKey,
    /// DHIS2 holds Kiungo's registration.
    pub registered: bool,
    /// When the pass looks at it next (ms), if it has something to do.
    pub check_at: Option<i64>,
    /// Failed attempts since the last success.
    pub attempts: i64,
    /// The last failure or refusal.
    pub last_error: Option<String>,
}

/// What DHIS2 holds of a data set's values for one period, org unit and
/// attribute option combo.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetValues {
    /// A total of the set is still to be pushed (changed, or retrying).
    pub in_flight: bool,
    /// DHIS2 holds at least one non-empty value of the set from Kiungo.
    pub held: bool,
}

/// Notes where the values DHIS2 accepted changed, in the transaction that
/// records the push (`Store::finish_totals_noting`): one row per data
/// element, period, org unit and attribute option combo.
pub(super) async fn note_changes(
    backend: Backend,
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    results: &[(DirtyTotal, TotalResult)],
) -> Result<(), StoreError> {
    let mut notes: BTreeMap<(&str, &str, &str, &str), (bool, bool)> = BTreeMap::new();
    for (t, r) in results {
        if *r != TotalResult::Pushed {
            continue;
        }
        let (de, pe, ou, _, aoc) = &t.key;
        let n = notes.entry((de, pe, ou, aoc)).or_default();
        if t.value.is_empty() {
            n.1 = true;
        } else {
            n.0 = true;
        }
    }
    if notes.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<Bind>> = notes
        .into_iter()
        .map(|((de, pe, ou, aoc), (filled, emptied))| {
            vec![
                de.into(),
                pe.into(),
                ou.into(),
                aoc.into(),
                i64::from(filled).into(),
                i64::from(emptied).into(),
            ]
        })
        .collect();
    for (sql, binds) in multi_row(
        "INSERT INTO dhis2_completeness_changes (data_element, period, org_unit, aoc, filled, emptied)",
        "ON CONFLICT (data_element, period, org_unit, aoc) DO UPDATE SET \
         filled = CASE WHEN excluded.filled = 1 THEN 1 ELSE dhis2_completeness_changes.filled END, \
         emptied = CASE WHEN excluded.emptied = 1 THEN 1 ELSE dhis2_completeness_changes.emptied END",
        6,
        rows,
    ) {
        query(backend, sql, binds).execute(&mut **tx).await?;
    }
    Ok(())
}

impl Store {
    /// Takes (deletes) up to `limit` notes and turns each into rows of the
    /// data sets `targets` names for it, in one transaction. A note
    /// where a value was stored makes a row to register (due at the
    /// period's end plus the grace) unless Kiungo's registration is
    /// already there with nothing to do; a note where a value was deleted
    /// has a registered or pending row looked at now. Returns how many
    /// notes were taken.
    pub async fn drain_completeness_changes<F>(
        &self,
        limit: i64,
        now: i64,
        targets: F,
    ) -> Result<usize, StoreError>
    where
        F: Fn(&CompletenessChange) -> Vec<CompletenessTarget>,
    {
        // Taken and deleted in one statement, through the rows' physical
        // ids (a join on the key made PostgreSQL hash the whole table);
        // replicas skip each other's notes, and a failure before the
        // commit puts them back.
        let take = match self.backend {
            Backend::Sqlite => {
                "DELETE FROM dhis2_completeness_changes WHERE rowid IN ( \
                 SELECT rowid FROM dhis2_completeness_changes LIMIT $1)"
            }
            Backend::Postgres => {
                "DELETE FROM dhis2_completeness_changes WHERE ctid = ANY(ARRAY( \
                 SELECT ctid FROM dhis2_completeness_changes LIMIT $1 FOR UPDATE SKIP LOCKED))"
            }
        };
        let mut tx = self.begin_write().await?;
        let rows = query(
            self.backend,
            format!("{take} RETURNING data_element, period, org_unit, aoc, filled, emptied"),
            vec![limit.into()],
        )
        .fetch_all(&mut *tx)
        .await?;
        // Notes of several data elements lead to one row: each row once,
        // in key order (as the pass locks them).
        let mut wanted: BTreeMap<CompletenessKey, (i64, bool, bool)> = BTreeMap::new();
        for row in &rows {
            let change = CompletenessChange {
                data_element: row.try_get(0)?,
                period: row.try_get(1)?,
                org_unit: row.try_get(2)?,
                attribute_option_combo: row.try_get(3)?,
                filled: row.try_get::<i64, _>(4)? != 0,
                emptied: row.try_get::<i64, _>(5)? != 0,
            };
            for target in targets(&change) {
                let w = wanted
                    .entry(CompletenessKey {
                        data_set: target.data_set,
                        period: change.period.clone(),
                        org_unit: change.org_unit.clone(),
                        attribute_option_combo: change.attribute_option_combo.clone(),
                    })
                    .or_insert((target.due_at, false, false));
                w.1 |= change.filled;
                w.2 |= change.emptied;
            }
        }
        let filled: Vec<Vec<Bind>> = wanted
            .iter()
            .filter(|(_, w)| w.1)
            .map(|(k, (due_at, _, _))| {
                let mut row = k.binds();
                row.extend([(*due_at).into(), (*due_at).max(now).into(), now.into()]);
                row
            })
            .collect();
        // A value stored: a row to register once due, unless Kiungo's
        // registration is there with nothing to do.
        for (sql, binds) in multi_row(
            "INSERT INTO dhis2_completeness (data_set, period, org_unit, aoc, due_at, check_at, updated_at)",
            "ON CONFLICT (data_set, period, org_unit, aoc) DO UPDATE SET due_at = excluded.due_at, \
             check_at = COALESCE(dhis2_completeness.check_at, excluded.check_at), \
             changes = dhis2_completeness.changes + 1, updated_at = excluded.updated_at \
             WHERE dhis2_completeness.registered = 0 OR dhis2_completeness.check_at IS NOT NULL",
            7,
            filled,
        ) {
            query(self.backend, sql, binds).execute(&mut *tx).await?;
        }
        // A value deleted: a registered or pending row looked at now.
        for key in wanted.iter().filter(|(_, w)| w.2).map(|(k, _)| k) {
            query(
                self.backend,
                "UPDATE dhis2_completeness SET check_at = COALESCE(check_at, $1), \
                 changes = changes + 1, updated_at = $1 \
                 WHERE data_set = $2 AND period = $3 AND org_unit = $4 AND aoc = $5 \
                 AND (registered = 1 OR check_at IS NOT NULL)"
                    .to_owned(),
                std::iter::once(now.into()).chain(key.binds()).collect(),
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Claims up to `limit` rows due by `now`, oldest first. A claim moves
    /// a row's `check_at` to the end of its lease: a pass that crashes
    /// leaves its rows to be claimed again then.
    pub async fn claim_completeness(
        &self,
        limit: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<ClaimedCompleteness>, StoreError> {
        let token = uuid::Uuid::new_v4().to_string();
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        let mut tx = self.begin_write().await?;
        let rows = query(
            self.backend,
            format!(
                "UPDATE dhis2_completeness SET claim = $1, check_at = $2 \
                 WHERE (data_set, period, org_unit, aoc) IN ( \
                   SELECT data_set, period, org_unit, aoc FROM dhis2_completeness \
                   WHERE check_at IS NOT NULL AND check_at <= $3 ORDER BY check_at LIMIT $4 {lock}) \
                 RETURNING data_set, period, org_unit, aoc, registered, due_at, changes, attempts, failing_since"
            ),
            vec![
                token.as_str().into(),
                now.saturating_add(lease_ms).into(),
                now.into(),
                limit.into(),
            ],
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ClaimedCompleteness {
                    key: completeness_key(r)?,
                    registered: r.try_get::<i64, _>(4)? != 0,
                    due_at: r.try_get(5)?,
                    changes: r.try_get(6)?,
                    attempts: r.try_get(7)?,
                    failing_since: r.try_get(8)?,
                    claim: token.clone(),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Whether a total of `data_elements` (as written: UIDs and `code:X`)
    /// for the period, org unit and attribute option combo of `key` is
    /// still to be pushed, and whether DHIS2 holds a non-empty value of
    /// one from Kiungo: one probe of each totals table's key index per
    /// data element (its category option combos walked, the attribute
    /// option combo checked on each).
    pub async fn completeness_values(
        &self,
        data_elements: &[String],
        key: &CompletenessKey,
    ) -> Result<SetValues, StoreError> {
        if data_elements.is_empty() {
            return Ok(SetValues::default());
        }
        let n = data_elements.len();
        let list = |first: usize| {
            (first..first + n)
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let sql = format!(
            "SELECT (SELECT CAST(1 AS BIGINT) FROM dhis2_dirty WHERE data_element IN ({}) AND period = ${} AND org_unit = ${} \
             AND aoc = ${} LIMIT 1), \
             (SELECT CAST(1 AS BIGINT) FROM dhis2_pushed WHERE data_element IN ({}) AND period = ${} AND org_unit = ${} \
             AND aoc = ${} AND value <> '' LIMIT 1)",
            list(1),
            n + 1,
            n + 2,
            n + 3,
            list(n + 4),
            2 * n + 4,
            2 * n + 5,
            2 * n + 6
        );
        let mut binds: Vec<Bind> = Vec::with_capacity(2 * n + 6);
        for _ in 0..2 {
            binds.extend(data_elements.iter().map(|d| Bind::from(d.as_str())));
            binds.push(key.period.as_str().into());
            binds.push(key.org_unit.as_str().into());
            binds.push(key.attribute_option_combo.as_str().into());
        }
        let row = query(self.backend, sql, binds)
            .fetch_one(&self.pool)
            .await?;
        Ok(SetValues {
            in_flight: row.try_get::<Option<i64>, _>(0)?.is_some(),
            held: row.try_get::<Option<i64>, _>(1)?.is_some(),
        })
    }

    /// Records what the pass did with its claimed rows, in one
    /// transaction. A refusal is parked as a DHIS2 dead letter; a success
    /// resolves the row's open letter. A row whose values changed since
    /// its claim is looked at again at once.
    pub async fn finish_completeness(
        &self,
        results: &[(ClaimedCompleteness, CompletenessResult)],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut ordered: Vec<&(ClaimedCompleteness, CompletenessResult)> = results.iter().collect();
        ordered.sort_by(|a, b| a.0.key.cmp(&b.0.key));
        let mut tx = self.begin_write().await?;
        for (c, result) in ordered {
            let where_claimed = |first: usize| {
                format!(
                    "WHERE data_set = ${} AND period = ${} AND org_unit = ${} AND aoc = ${} AND claim = ${}",
                    first,
                    first + 1,
                    first + 2,
                    first + 3,
                    first + 4
                )
            };
            let key_binds = || -> Vec<Bind> {
                let mut binds = c.key.binds();
                binds.push(c.claim.as_str().into());
                binds
            };
            // Done with it (sent, or nothing to send): nothing more to do
            // unless its values changed meanwhile.
            let settle = |registered: bool, error: Option<&str>| {
                let mut b: Vec<Bind> = vec![
                    i64::from(registered).into(),
                    error.map(str::to_owned).into(),
                    c.changes.into(),
                    now.into(),
                ];
                b.extend(key_binds());
                (
                    format!(
                        "UPDATE dhis2_completeness SET registered = $1, \
                         registered_at = CASE WHEN $1 = 1 THEN COALESCE(registered_at, $4) END, \
                         attempts = 0, failing_since = NULL, last_error = $2, claim = NULL, \
                         check_at = CASE WHEN changes = $3 THEN NULL ELSE $4 END, updated_at = $4 {}",
                        where_claimed(5)
                    ),
                    b,
                )
            };
            let resolve_letter = || {
                (
                    "UPDATE dead_letters SET state = 'replayed', resolved_at = $1 \
                     WHERE fingerprint = $2 AND state = 'open'"
                        .to_owned(),
                    vec![Bind::from(now), fingerprint(&c.key).into()],
                )
            };
            let mut statements: Vec<(String, Vec<Bind>)> = Vec::with_capacity(2);
            match result {
                CompletenessResult::Registered => {
                    statements.push(settle(true, None));
                    statements.push(resolve_letter());
                }
                CompletenessResult::Undone => {
                    statements.push(settle(false, None));
                    statements.push(resolve_letter());
                }
                CompletenessResult::Settled => {
                    statements.push(settle(c.registered, None));
                    statements.push(resolve_letter());
                }
                CompletenessResult::Postponed { until } => {
                    let mut b: Vec<Bind> = vec![(*until).into(), now.into()];
                    b.extend(key_binds());
                    statements.push((
                        format!(
                            "UPDATE dhis2_completeness SET claim = NULL, check_at = $1, updated_at = $2 {}",
                            where_claimed(3)
                        ),
                        b,
                    ));
                }
                CompletenessResult::Retry {
                    next_attempt_at,
                    error,
                } => {
                    let mut b: Vec<Bind> =
                        vec![(*next_attempt_at).into(), error.as_str().into(), now.into()];
                    b.extend(key_binds());
                    statements.push((
                        format!(
                            "UPDATE dhis2_completeness SET attempts = attempts + 1, \
                             failing_since = COALESCE(failing_since, $3), last_error = $2, claim = NULL, \
                             check_at = $1, updated_at = $3 {}",
                            where_claimed(4)
                        ),
                        b,
                    ));
                }
                CompletenessResult::Refused {
                    code,
                    message,
                    undo,
                } => {
                    statements.push(settle(c.registered, Some(message)));
                    let detail = serde_json::json!({
                        "dataSet": c.key.data_set, "period": c.key.period,
                        "orgUnit": c.key.org_unit,
                        "attributeOptionCombo": c.key.attribute_option_combo,
                        "action": if *undo { "undo" } else { "register" },
                    });
                    statements.push((
                        "INSERT INTO dead_letters (fingerprint, stage, source, reason_code, reason, payload, \
                         received_at, last_seen_at) VALUES ($1, 'dhis2', 'dhis2', $2, $3, $4, $5, $5) \
                         ON CONFLICT (fingerprint) DO UPDATE SET seen_count = dead_letters.seen_count + 1, \
                         last_seen_at = excluded.last_seen_at, reason_code = excluded.reason_code, \
                         reason = excluded.reason, payload = excluded.payload, \
                         notified = CASE WHEN dead_letters.state = 'discarded' THEN dead_letters.notified ELSE 0 END, \
                         state = CASE WHEN dead_letters.state = 'discarded' THEN 'discarded' ELSE 'open' END, \
                         resolved_at = CASE WHEN dead_letters.state = 'discarded' THEN dead_letters.resolved_at END"
                            .to_owned(),
                        vec![
                            fingerprint(&c.key).into(),
                            code.as_str().into(),
                            message.as_str().into(),
                            Some(detail.to_string().into_bytes()).into(),
                            now.into(),
                        ],
                    ));
                }
            }
            for (sql, binds) in statements {
                query(self.backend, sql, binds).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Has the pass look at a row again now (an operator's replay of its
    /// dead letter): `false` if there is no such row.
    pub async fn recheck_completeness(
        &self,
        key: &CompletenessKey,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = query(
            self.backend,
            "UPDATE dhis2_completeness SET check_at = $1, changes = changes + 1, attempts = 0, \
             failing_since = NULL, updated_at = $1 \
             WHERE data_set = $2 AND period = $3 AND org_unit = $4 AND aoc = $5"
                .to_owned(),
            std::iter::once(now.into()).chain(key.binds()).collect(),
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n > 0)
    }

    /// Every row of `data_set`, by period, org unit and attribute option
    /// combo (tests and
    /// inspection; reads the data set's part of the table).
    pub async fn completeness_rows(
        &self,
        data_set: &str,
    ) -> Result<Vec<CompletenessRow>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT data_set, period, org_unit, aoc, registered, check_at, attempts, last_error \
             FROM dhis2_completeness WHERE data_set = $1 ORDER BY period, org_unit, aoc"
                .to_owned(),
            vec![data_set.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(CompletenessRow {
                    key: completeness_key(r)?,
                    registered: r.try_get::<i64, _>(4)? != 0,
                    check_at: r.try_get(5)?,
                    attempts: r.try_get(6)?,
                    last_error: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Notes not yet taken by the pass (tests).
    pub async fn completeness_changes_waiting(&self) -> Result<i64, StoreError> {
        let row = query(
            self.backend,
            "SELECT COUNT(*) FROM dhis2_completeness_changes".to_owned(),
            vec![],
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}

/// The key of a row whose first four columns are data set, period, org
/// unit and attribute option combo.
fn completeness_key(r: &sqlx::any::AnyRow) -> Result<CompletenessKey, sqlx::Error> {
    Ok(CompletenessKey {
        data_set: r.try_get(0)?,
        period: r.try_get(1)?,
        org_unit: r.try_get(2)?,
        attribute_option_combo: r.try_get(3)?,
    })
}
