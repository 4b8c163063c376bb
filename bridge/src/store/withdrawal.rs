//! What each event put on the FHIR server, and withdrawing what an edit
//! no longer produces (issue 18).
//!
//! A delivered bundle records the resources it wrote with `PUT` at their
//! own ids in `fhir_placed`, under its event. The bundle of an edit, of a
//! replacement (`replaces`, CHT's `deprecatedID`) or of a re-mapping is
//! claimed with `withdraw_check`: its claim reads what the event and the
//! events it replaced placed (withdrawn events point at the live one, so
//! that is one index probe each) and marks for withdrawal every resource
//! the new bundle does not produce and no other event placed. The worker
//! sends those withdrawals in the same transaction as the new version, so
//! they never reach the server before it nor race it, and a crash before
//! the result is recorded sends both again (a delete is idempotent). The
//! server refusing them (409, 412: referenced elsewhere) parks them as a
//! dead letter and delivers the new version alone.

use std::collections::HashSet;

use sqlx::Row;

use super::outbox::{OutboxItem, Placed};
use super::sql::query;
use super::{Store, StoreError};

/// One withdrawn resource, for `/v1/events/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Withdrawn {
    /// The event that had placed it.
    pub event_id: String,
    /// `Type/id`.
    pub resource: String,
    /// `DELETE` or `entered-in-error`.
    pub method: String,
    /// The live event whose delivery withdrew it.
    pub by_event_id: String,
    /// When (ms since the epoch).
    pub withdrawn_at: i64,
}

impl Store {
    /// What the event of `item` and the events it replaced placed on the
    /// server, each marked with whether `item`'s delivery withdraws it.
    /// The replaced events are a list probed by primary key, not a join:
    /// SQLite, without statistics, planned the join as a walk of every
    /// placement of the source.
    pub(crate) async fn placed_before(&self, item: &OutboxItem) -> Result<Vec<Placed>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT event_id, resource, body FROM fhir_placed WHERE source = $1 AND event_id = $2 \
             UNION ALL \
             SELECT p.event_id, p.resource, p.body FROM fhir_placed p WHERE p.source = $1 \
               AND p.event_id IN (SELECT e.event_id FROM events e WHERE e.source = $1 \
                 AND e.superseded_by = $2)"
                .to_owned(),
            vec![item.source.as_str().into(), item.event_id.as_str().into()],
        )
        .fetch_all(&self.pool)
        .await?;
        let mut placed = rows
            .iter()
            .map(|r| {
                Ok(Placed {
                    event_id: r.try_get(0)?,
                    resource: r.try_get(1)?,
                    body: r.try_get(2)?,
                    withdraw: false,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let produced: HashSet<&str> = item.puts.iter().map(String::as_str).collect();
        let family: HashSet<String> = placed
            .iter()
            .map(|p| p.event_id.clone())
            .chain([item.event_id.clone()])
            .collect();
        let mut decided: HashSet<String> = HashSet::new();
        for p in &mut placed {
            let resource = p.resource.clone();
            if produced.contains(resource.as_str()) || !decided.insert(resource.clone()) {
                continue;
            }
            // Placed by an event outside this one's family (a resource
            // several events write, e.g. a shared Location): it stays.
            let shared = query(
                self.backend,
                "SELECT source, event_id FROM fhir_placed WHERE resource = $1".to_owned(),
                vec![resource.as_str().into()],
            )
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?
            .into_iter()
            .any(|(s, e)| s != item.source || !family.contains(&e));
            if !shared {
                p.withdraw = true;
            }
        }
        Ok(placed)
    }

    /// Records what a delivered bundle placed and withdrew, inside the
    /// transaction that records its delivery. `withdrawn`: whether the
    /// withdrawals went with it (false: the server refused them and they
    /// stay placed, parked for an operator).
    pub(crate) async fn record_placements(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        item: &OutboxItem,
        withdrawn: bool,
        now: i64,
    ) -> Result<(), StoreError> {
        if withdrawn {
            for p in &item.placed_before {
                query(
                    self.backend,
                    "DELETE FROM fhir_placed WHERE source = $1 AND event_id = $2 AND resource = $3"
                        .to_owned(),
                    vec![
                        item.source.as_str().into(),
                        p.event_id.as_str().into(),
                        p.resource.as_str().into(),
                    ],
                )
                .execute(&mut **tx)
                .await?;
                if p.withdraw {
                    query(
                        self.backend,
                        "INSERT INTO fhir_withdrawals (source, event_id, resource, method, by_event_id, \
                         outbox_id, withdrawn_at) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                            .to_owned(),
                        vec![
                            item.source.as_str().into(),
                            p.event_id.as_str().into(),
                            p.resource.as_str().into(),
                            withdraw_method(p).into(),
                            item.event_id.as_str().into(),
                            item.id.into(),
                            now.into(),
                        ],
                    )
                    .execute(&mut **tx)
                    .await?;
                }
            }
        }
        self.insert_placements(tx, placement_rows(item, now)).await
    }

    /// Records what several delivered bundles placed in one statement per
    /// `MAX_PARAMS` values (rows from [`placement_rows`]): a pass of
    /// plain deliveries costs one insert, not one per bundle.
    pub(crate) async fn insert_placements(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        rows: Vec<Vec<super::sql::Bind>>,
    ) -> Result<(), StoreError> {
        for (sql, binds) in super::sql::multi_row(
            "INSERT INTO fhir_placed (source, event_id, resource, outbox_id, placed_at, body)",
            "ON CONFLICT (source, event_id, resource) DO UPDATE SET outbox_id = excluded.outbox_id, \
             placed_at = excluded.placed_at, body = excluded.body",
            6,
            rows,
        ) {
            query(self.backend, sql, binds).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// What was withdrawn from the FHIR server that `event_id` had placed,
    /// or that its delivery withdrew, oldest first.
    pub async fn withdrawals_of(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Vec<Withdrawn>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT event_id, resource, method, by_event_id, withdrawn_at FROM fhir_withdrawals \
             WHERE source = $1 AND event_id = $2 \
             UNION \
             SELECT event_id, resource, method, by_event_id, withdrawn_at FROM fhir_withdrawals \
             WHERE source = $1 AND by_event_id = $2 \
             ORDER BY withdrawn_at, resource"
                .to_owned(),
            vec![source.into(), event_id.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Withdrawn {
                    event_id: r.try_get(0)?,
                    resource: r.try_get(1)?,
                    method: r.try_get(2)?,
                    by_event_id: r.try_get(3)?,
                    withdrawn_at: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The resources an event has on the FHIR server now, as far as
    /// Kiungo placed them (`Type/id`, sorted).
    pub async fn placed_by(&self, source: &str, event_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT resource FROM fhir_placed WHERE source = $1 AND event_id = $2 ORDER BY resource"
                .to_owned(),
            vec![source.into(), event_id.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<Vec<String>, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// How a placed resource is withdrawn: an `entered-in-error` update when
/// its marked body was kept, else `DELETE`.
pub(crate) fn withdraw_method(p: &Placed) -> &'static str {
    if p.body.is_some() {
        "entered-in-error"
    } else {
        "DELETE"
    }
}

/// The `fhir_placed` rows of what a delivered bundle placed: one per
/// resource it wrote with `PUT` at its own id (a bundle never writes one
/// twice: the mapper refuses duplicate ids), with the marked body in
/// `entered-in-error` mode.
pub(crate) fn placement_rows(item: &OutboxItem, now: i64) -> Vec<Vec<super::sql::Bind>> {
    item.puts
        .iter()
        .map(|resource| {
            vec![
                item.source.as_str().into(),
                item.event_id.as_str().into(),
                resource.as_str().into(),
                item.id.into(),
                now.into(),
                item.marked_bodies
                    .iter()
                    .find(|(r, _)| r == resource)
                    .map(|(_, b)| b.clone())
                    .into(),
            ]
        })
        .collect()
}
