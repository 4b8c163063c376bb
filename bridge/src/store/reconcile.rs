//! What Kiungo holds for one data set and period, for reconciliation
//! with DHIS2 (`kiungo dhis2 reconcile`): each total recomputed from the
//! stored contributions exactly as the push recomputes it, and the value
//! DHIS2 last accepted for each total Kiungo ever pushed.
//!
//! **Cost**: both reads reach their rows through the totals' key index
//! (`data_element, period, …`), probed once per data element of the data
//! set: proportional to the period's totals of the set, never to the
//! table.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;

use super::dhis2::format_number;
use super::read::{TotalKey, fold_total, total_key};
use super::sql::query;
use super::{Store, StoreError};

/// Kiungo's side of one data set and period.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KiungoTotals {
    /// Every total with contributions → the value a push sends, keyed as
    /// the mappings wrote it (UIDs or `code:X`).
    pub totals: BTreeMap<TotalKey, String>,
    /// Every total DHIS2 accepted from Kiungo → the value accepted (empty
    /// for a deletion).
    pub pushed: BTreeMap<TotalKey, String>,
    /// Totals that changed since their last push (still in
    /// `dhis2_dirty`): the worker has yet to send them.
    pub pending: BTreeSet<TotalKey>,
}

impl Store {
    /// The totals of `period` whose data element is one of
    /// `data_elements` (as written: UIDs and `code:X`), in `org_units`
    /// when given.
    pub async fn dhis2_totals_for(
        &self,
        data_elements: &[String],
        period: &str,
        org_units: Option<&[String]>,
    ) -> Result<KiungoTotals, StoreError> {
        let mut out = KiungoTotals::default();
        let wanted = |key: &TotalKey| org_units.is_none_or(|ous| ous.contains(&key.2));
        for de in data_elements {
            // One index probe per data element; org units filtered here
            // (a list of them would make the planner guess).
            let binds = vec![de.as_str().into(), period.into()];
            let rows = query(
                self.backend,
                "SELECT data_element, period, org_unit, coc, aoc, aggregation, value, value_num \
                 FROM dhis2_contributions WHERE data_element = $1 AND period = $2 \
                 ORDER BY data_element, period, org_unit, coc, aoc, event_date, event_id"
                    .to_owned(),
                binds.clone(),
            )
            .fetch_all(&self.pool)
            .await?;
            let mut acc: BTreeMap<TotalKey, (Option<f64>, Option<String>)> = BTreeMap::new();
            for row in rows {
                let key = total_key(&row)?;
                if !wanted(&key) {
                    continue;
                }
                let a = acc.entry(key).or_default();
                let aggregation: String = row.try_get(5)?;
                let text: Option<String> = row.try_get(6)?;
                let num: Option<f64> = row.try_get(7)?;
                match (aggregation.as_str(), num) {
                    ("last", _) => *a = (num, text),
                    (aggregation, Some(v)) => a.0 = Some(fold_total(a.0, aggregation, v)),
                    (_, None) => {}
                }
            }
            out.totals.extend(acc.into_iter().map(|(key, a)| {
                let value = match a {
                    (Some(n), _) => format_number(n),
                    (None, Some(t)) => t,
                    (None, None) => String::new(),
                };
                (key, value)
            }));
            let rows = query(
                self.backend,
                "SELECT data_element, period, org_unit, coc, aoc, value FROM dhis2_pushed \
                 WHERE data_element = $1 AND period = $2"
                    .to_owned(),
                binds,
            )
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let key = total_key(&row)?;
                if wanted(&key) {
                    out.pushed.insert(key, row.try_get(5)?);
                }
            }
            // The dirty totals: the primary key's prefix, one probe.
            let rows = query(
                self.backend,
                "SELECT data_element, period, org_unit, coc, aoc FROM dhis2_dirty \
                 WHERE data_element = $1 AND period = $2"
                    .to_owned(),
                vec![de.as_str().into(), period.into()],
            )
            .fetch_all(&self.pool)
            .await?;
            for row in rows {
                let key = total_key(&row)?;
                if wanted(&key) {
                    out.pending.insert(key);
                }
            }
        }
        Ok(out)
    }

    /// Marks `keys` for a push at once (reconciliation's repair) and
    /// writes one audit record naming the data set, the period and how
    /// many totals, in one transaction.
    pub async fn repair_totals(
        &self,
        keys: &[TotalKey],
        actor: &str,
        target: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        for key in keys {
            let mut b = super::read::total_binds(key);
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
            .execute(&mut *tx)
            .await?;
        }
        let detail = format!("{} total(s) marked for a push", keys.len());
        self.audit_in(
            &mut tx,
            actor,
            "dhis2.reconcile_repair",
            target,
            Some(&detail),
            now,
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }
}
