//! Reads for tests, the CLI and the admin API. None of them returns
//! payloads unless asked for one dead letter by id.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::sql::{Bind, query};
use super::{Store, StoreError};

/// Row counts by table and state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Events whose current version is live.
    pub events_live: i64,
    /// Events replaced by another event (tombstones).
    pub events_superseded: i64,
    /// Versions seen other than the current ones (earlier versions, late
    /// arrivals), over all events.
    pub previous_versions: i64,
    /// FHIR bundles waiting for delivery.
    pub outbox_pending: i64,
    /// FHIR bundles superseded by a newer version before delivery.
    pub outbox_superseded: i64,
    /// Stored DHIS2 contributions.
    pub contributions: i64,
    /// DHIS2 totals changed since last pushed.
    pub dhis2_dirty: i64,
    /// Open dead letters.
    pub dead_letters_open: i64,
}

/// The key of one DHIS2 total: data element, period, org unit, category
/// option combo, attribute option combo.
pub type TotalKey = (String, String, String, String, String);

/// Reads a total's key from a row's first five columns (data element,
/// period, org unit, COC, AOC).
pub(crate) fn total_key(row: &sqlx::any::AnyRow) -> Result<TotalKey, sqlx::Error> {
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        row.try_get(2)?,
        row.try_get(3)?,
        row.try_get(4)?,
    ))
}

/// A total's key as the binds `$n..$n+4` of a statement that names its
/// columns in that order (data element, period, org unit, COC, AOC).
pub(crate) fn total_binds((de, pe, ou, coc, aoc): &TotalKey) -> Vec<Bind> {
    vec![
        de.as_str().into(),
        pe.as_str().into(),
        ou.as_str().into(),
        coc.as_str().into(),
        aoc.as_str().into(),
    ]
}

/// Folds one numeric contribution into a total by its rule's aggregation:
/// `min` and `max` pick, `last` replaces (rows come in event order), the
/// rest (`count`, `sum`) add.
pub(crate) fn fold_total(total: Option<f64>, aggregation: &str, v: f64) -> f64 {
    match (total, aggregation) {
        (None, _) => v,
        (Some(t), "min") => t.min(v),
        (Some(t), "max") => t.max(v),
        (Some(_), "last") => v,
        (Some(t), _) => t + v,
    }
}

/// One event's current row, without its payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRow {
    /// Source app.
    pub source: String,
    /// Event id.
    pub event_id: String,
    /// `live` or `superseded`.
    pub state: String,
    /// The mapping of the current version (none for a tombstone).
    pub mapping: Option<String>,
    /// SHA-256 of the current version's payload.
    pub version_hash: Option<String>,
    /// Number of distinct versions stored.
    pub versions: i64,
    /// Whether the raw payload is still held.
    pub has_payload: bool,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Id.
    pub id: i64,
    /// `ingest`, `fhir` or `dhis2`.
    pub stage: String,
    /// Source app.
    pub source: String,
    /// Queue, for AMQP messages.
    pub queue: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Event id, when known.
    pub event_id: Option<String>,
    /// Mapping, when known.
    pub mapping: Option<String>,
    /// Stable reason code.
    pub reason_code: String,
    /// The full reason.
    pub reason: String,
    /// `open`, `replayed` or `discarded`.
    pub state: String,
    /// How many times this same message was parked.
    pub seen_count: i64,
    /// How many times an operator replayed it.
    pub replay_count: i64,
    /// First parked (ms since the epoch).
    pub received_at: i64,
    /// The raw payload (only from [`Store::dead_letter`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<Vec<u8>>,
    /// AMQP headers as JSON text (only from [`Store::dead_letter`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub headers: Option<String>,
    /// The event's values the reason leaves out (only from
    /// [`Store::dead_letter`]): client data, for operators only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Only this state (`open`, `replayed`, `discarded`); all when `None`.
    pub state: Option<String>,
    /// Only this source.
    pub source: Option<String>,
    /// Only this reason code.
    pub reason_code: Option<String>,
    /// Only this mapping.
    pub mapping: Option<String>,
    /// Only this stage: `ingest`, `fhir` or `dhis2`.
    pub stage: Option<String>,
    /// Only dead letters first parked at or after this time (ms).
    pub since: Option<i64>,
    /// At most this many (default 100).
    pub limit: Option<i64>,
}

const DEAD_LETTER_COLS: &str = "id, stage, source, queue, message_id, event_id, mapping, reason_code, \
     reason, state, seen_count, replay_count, received_at";

fn dead_letter(row: &sqlx::any::AnyRow, with_payload: bool) -> Result<DeadLetter, sqlx::Error> {
    Ok(DeadLetter {
        id: row.try_get(0)?,
        stage: row.try_get(1)?,
        source: row.try_get(2)?,
        queue: row.try_get(3)?,
        message_id: row.try_get(4)?,
        event_id: row.try_get(5)?,
        mapping: row.try_get(6)?,
        reason_code: row.try_get(7)?,
        reason: row.try_get(8)?,
        state: row.try_get(9)?,
        seen_count: row.try_get(10)?,
        replay_count: row.try_get(11)?,
        received_at: row.try_get(12)?,
        payload: if with_payload { row.try_get(13)? } else { None },
        headers: if with_payload { row.try_get(14)? } else { None },
        detail: if with_payload { row.try_get(15)? } else { None },
    })
}

impl Store {
    /// Row counts.
    pub async fn stats(&self) -> Result<Stats, StoreError> {
        let row = query(
            self.backend,
            "SELECT \
             (SELECT COUNT(*) FROM events WHERE state = 'live'), \
             (SELECT COUNT(*) FROM events WHERE state = 'superseded'), \
             (SELECT COUNT(*) FROM event_versions), \
             (SELECT COUNT(*) FROM fhir_outbox WHERE state = 'pending'), \
             (SELECT COUNT(*) FROM fhir_outbox WHERE state = 'superseded'), \
             (SELECT COUNT(*) FROM dhis2_contributions), \
             (SELECT COUNT(*) FROM dhis2_dirty), \
             (SELECT COUNT(*) FROM dead_letters WHERE state = 'open')"
                .to_owned(),
            vec![],
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Stats {
            events_live: row.try_get(0)?,
            events_superseded: row.try_get(1)?,
            previous_versions: row.try_get(2)?,
            outbox_pending: row.try_get(3)?,
            outbox_superseded: row.try_get(4)?,
            contributions: row.try_get(5)?,
            dhis2_dirty: row.try_get(6)?,
            dead_letters_open: row.try_get(7)?,
        })
    }

    /// Every DHIS2 total recomputed from the stored contributions, with
    /// each rule's aggregation: `count` and `sum` add, `min` and `max`
    /// pick, `last` takes the value of the latest event date (then event
    /// id). Totals of text values (`last` only) are left out.
    pub async fn dhis2_totals(&self) -> Result<BTreeMap<TotalKey, f64>, StoreError> {
        let rows = query(self.backend, "SELECT data_element, period, org_unit, coc, aoc, aggregation, value_num, event_date, event_id \
             FROM dhis2_contributions ORDER BY data_element, period, org_unit, coc, aoc, event_date, event_id".to_owned(), vec![])
        .fetch_all(&self.pool)
        .await?;
        let mut totals: BTreeMap<TotalKey, f64> = BTreeMap::new();
        for row in rows {
            let key = total_key(&row)?;
            let aggregation: String = row.try_get(5)?;
            let Some(v) = row.try_get::<Option<f64>, _>(6)? else {
                continue;
            };
            let total = fold_total(totals.get(&key).copied(), &aggregation, v);
            totals.insert(key, total);
        }
        Ok(totals)
    }

    /// Current event rows, ordered by source and id.
    pub async fn events(&self) -> Result<Vec<EventRow>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT source, event_id, state, mapping, version_hash, versions, \
             CASE WHEN payload IS NULL THEN 0 ELSE 1 END FROM events ORDER BY source, event_id"
                .to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(EventRow {
                    source: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    state: row.try_get(2)?,
                    mapping: row.try_get(3)?,
                    version_hash: row.try_get(4)?,
                    versions: row.try_get(5)?,
                    has_payload: row.try_get::<i64, _>(6)? == 1,
                })
            })
            .collect()
    }

    /// Dead letters, newest first, without payloads.
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let mut sql = format!("SELECT {DEAD_LETTER_COLS} FROM dead_letters WHERE 1 = 1");
        let mut binds: Vec<Bind> = Vec::new();
        for (col, value) in [
            ("state", &filter.state),
            ("source", &filter.source),
            ("reason_code", &filter.reason_code),
            ("mapping", &filter.mapping),
            ("stage", &filter.stage),
        ] {
            if let Some(v) = value {
                binds.push(v.as_str().into());
                sql.push_str(&format!(" AND {col} = ${}", binds.len()));
            }
        }
        if let Some(since) = filter.since {
            binds.push(since.into());
            sql.push_str(&format!(" AND received_at >= ${}", binds.len()));
        }
        binds.push(filter.limit.unwrap_or(100).into());
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len()));
        let rows = query(self.backend, sql, binds)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| dead_letter(r, false))
            .collect::<Result<_, _>>()?)
    }

    /// One dead letter with its payload, headers and detail: client data,
    /// for operators (callers serving others clear them).
    pub async fn dead_letter(&self, id: i64) -> Result<Option<DeadLetter>, StoreError> {
        let row = query(
            self.backend,
            format!(
                "SELECT {DEAD_LETTER_COLS}, payload, headers, detail FROM dead_letters WHERE id = $1"
            ),
            vec![id.into()],
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(|r| dead_letter(r, true)).transpose()?)
    }
}

impl Store {
    /// Appends an operator action to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: Option<&str>,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        self.audit_in(&mut tx, actor, action, target, detail, super::now_ms())
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tries to rewrite the audit log, which the schema forbids; for the
    /// test that proves it.
    #[doc(hidden)]
    pub async fn audit_tamper_for_tests(&self) -> Result<(), StoreError> {
        query(
            self.backend,
            "UPDATE audit_log SET actor = 'someone else'".to_owned(),
            vec![],
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// Number of event rows (live and superseded): a cheap progress probe.
    pub async fn count_events(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM events")
            .fetch_one(&self.pool)
            .await?)
    }
}
