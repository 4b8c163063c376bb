//! The FHIR outbox seen from the delivery side: claim due bundles, record
//! what the server said.
//!
//! A claim moves rows from `pending` (due) to `delivering` with a lease.
//! On PostgreSQL the claim uses `FOR UPDATE SKIP LOCKED`, so replicas
//! sharing the database never claim the same row; on SQLite the single
//! writer transaction does the same. A row whose lease passed (its worker
//! crashed) is claimable again. A newer version of an event is not
//! claimed while an older one is in flight, so versions reach the server
//! in order.

use sqlx::Row;

use super::sql::query;
use super::{Backend, Store, StoreError};

/// One bundle to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Outbox row id.
    pub id: i64,
    /// Source app.
    pub source: String,
    /// Event id.
    pub event_id: String,
    /// Mapping that produced it.
    pub mapping: String,
    /// The transaction bundle (JSON).
    pub bundle: String,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// When the row was created (ms), for the retry policy's maximum age.
    pub created_at: i64,
    /// The lease this claim holds; results are recorded only while it
    /// still does (a worker that outlived its lease records nothing).
    pub lease_until: i64,
    /// The event's W3C `traceparent`, forwarded (as a child) with it.
    pub traceparent: Option<String>,
    /// `Type/id` of each resource the bundle writes with `PUT`: recorded
    /// as placed by this event once delivered.
    pub puts: Vec<String>,
    /// Resources earlier versions of this event, or events it replaced,
    /// placed on the server: those marked `withdraw` it no longer
    /// produces, and they go in the same transaction (computed at claim).
    pub placed_before: Vec<Placed>,
    /// Where the destination withdraws by `entered-in-error` updates: each
    /// placed resource (`Type/id`) marked so, kept with its placement
    /// (set by the worker before it records a delivery).
    pub marked_bodies: Vec<(String, String)>,
}

impl OutboxItem {
    /// The resources this delivery withdraws.
    pub fn withdrawals(&self) -> impl Iterator<Item = &Placed> {
        self.placed_before.iter().filter(|p| p.withdraw)
    }
}

/// A resource an event placed on the FHIR server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The event that placed it (this one, or one it replaced).
    pub event_id: String,
    /// `Type/id`.
    pub resource: String,
    /// The resource marked `entered-in-error`, where the destination
    /// withdraws that way and the type has such a status.
    pub body: Option<String>,
    /// Whether this delivery withdraws it: the event no longer produces it
    /// and no other event placed it. Otherwise the record is only moved
    /// (produced again) or dropped (still placed by another event).
    pub withdraw: bool,
}

/// What happened to one claimed bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The server accepted it; `server_ids` are its `Type/id`s.
    Delivered {
        /// `Type/id` per entry, as the server answered.
        server_ids: Vec<String>,
    },
    /// The server accepted the bundle but refused, in a first attempt,
    /// the withdrawal of resources earlier versions placed (409, 412: the
    /// resource is referenced elsewhere): the bundle was delivered without
    /// them and the withdrawal is parked with the server's message.
    DeliveredWithdrawalRefused {
        /// `Type/id` per entry, as the server answered.
        server_ids: Vec<String>,
        /// The server's answer to the transaction with the withdrawals.
        error: String,
    },
    /// A transient failure: try again at `next_attempt_at`.
    Retry {
        /// When (ms).
        next_attempt_at: i64,
        /// Why it failed.
        error: String,
    },
    /// A permanent failure, or out of retries: park it.
    Dead {
        /// Stable reason code (`fhir_rejected`, `fhir_retries_exhausted`).
        reason_code: String,
        /// The server's message.
        error: String,
    },
}

/// A delivered bundle's new state: delivered, or pending again (due now)
/// when an out-of-order replacement asked for it to be sent once more
/// while it was in flight (see `0005_outbox_resend.sql`). `$1` is now.
const RESEND_OR_DELIVERED: &str = "state = CASE WHEN resend = 1 THEN 'pending' ELSE 'delivered' END, \
     next_attempt_at = CASE WHEN resend = 1 THEN $1 ELSE next_attempt_at END, resend = 0";

/// How often a process sweeps expired FHIR leases (ms).
const LEASE_SWEEP_MS: i64 = 1_000;

impl Store {
    /// Whether this claim should first sweep expired leases: at most once
    /// a second (leases last minutes), or after the clock went back.
    fn lease_sweep_due(&self, now: i64) -> bool {
        use std::sync::atomic::Ordering;
        let last = self.lease_sweep.load(Ordering::Relaxed);
        if now < last || now.saturating_sub(last) >= LEASE_SWEEP_MS {
            self.lease_sweep.store(now, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Claims up to `limit` due bundles for `lease_ms`.
    ///
    /// Bundles whose lease ran out (a replica died mid-delivery) are put
    /// back to pending first (at most once a second), so that one ordered
    /// index walk over pending rows finds every due bundle and stops after
    /// `limit` of them. A bundle waits while an older version of its
    /// event, or a bundle of the event it replaces, is in flight.
    ///
    /// Each candidate costs index probes only: older versions through
    /// the unique (source, event id, version) index, replaced events
    /// through `events_superseded_by`, then their bundles by (source,
    /// event id). The replaced-event check is a nested `EXISTS`, not a
    /// join: SQLite, which plans without statistics, planned the join as
    /// a walk of every in-flight bundle of the candidate's source, once
    /// per candidate (2.3 s per claim with 50,000 pending).
    pub async fn claim_fhir(
        &self,
        limit: i64,
        now: i64,
        lease_ms: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let lock = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "FOR UPDATE SKIP LOCKED",
        };
        // Expired leases: taking the row's lease away (lease_until NULL)
        // makes the late holder's result a no-op. A bundle whose event was
        // withdrawn meanwhile (`replaces`) is not sent again: it would
        // overwrite what its replacement delivered.
        // PostgreSQL locks the expired rows in id order (replicas sweep at
        // once); SQLite's writer is alone, and an `ORDER BY id` there makes
        // it walk the table in rowid order instead of the few rows in
        // `fhir_outbox_leased`.
        let order = match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => "ORDER BY id",
        };
        let expired = format!(
            "UPDATE fhir_outbox SET lease_until = NULL, updated_at = $1, resend = 0, \
             state = CASE WHEN EXISTS (SELECT 1 FROM events e WHERE e.source = fhir_outbox.source \
                 AND e.event_id = fhir_outbox.event_id AND e.state = 'superseded') \
               THEN 'superseded' ELSE 'pending' END \
             WHERE id IN (SELECT id FROM fhir_outbox WHERE state = 'delivering' AND lease_until < $2 \
             {order} {lock})"
        );
        let sql = format!(
            "UPDATE fhir_outbox SET state = 'delivering', lease_until = $1, updated_at = $2 \
             WHERE id IN ( \
               SELECT o.id FROM fhir_outbox o \
               WHERE o.state = 'pending' AND o.next_attempt_at <= $3 \
               AND NOT EXISTS (SELECT 1 FROM fhir_outbox p WHERE p.source = o.source \
                   AND p.event_id = o.event_id AND p.id < o.id AND p.state IN ('pending', 'delivering')) \
               AND NOT EXISTS (SELECT 1 FROM events x WHERE x.source = o.source \
                   AND x.superseded_by = o.event_id AND EXISTS (SELECT 1 FROM fhir_outbox p \
                   WHERE p.source = x.source AND p.event_id = x.event_id \
                   AND p.state IN ('pending', 'delivering'))) \
               ORDER BY o.next_attempt_at, o.id LIMIT $4 {lock}) \
             RETURNING id, source, event_id, mapping, bundle, attempts, created_at, lease_until, traceparent, \
             puts, withdraw_check"
        );
        let mut tx = self.begin_write().await?;
        if self.lease_sweep_due(now) {
            query(self.backend, expired, vec![now.into(), now.into()])
                .execute(&mut *tx)
                .await?;
        }
        let rows = query(
            self.backend,
            sql,
            vec![
                (now + lease_ms).into(),
                now.into(),
                now.into(),
                limit.into(),
            ],
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut items = rows
            .iter()
            .map(|r| {
                Ok(OutboxItem {
                    id: r.try_get(0)?,
                    source: r.try_get(1)?,
                    event_id: r.try_get(2)?,
                    mapping: r.try_get(3)?,
                    bundle: r.try_get::<Option<String>, _>(4)?.unwrap_or_default(),
                    attempts: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                    lease_until: r.try_get::<Option<i64>, _>(7)?.unwrap_or(0),
                    traceparent: r.try_get(8)?,
                    puts: r
                        .try_get::<Option<String>, _>(9)?
                        .map(|p| p.lines().map(str::to_owned).collect())
                        .unwrap_or_default(),
                    placed_before: Vec::new(),
                    marked_bodies: Vec::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let checks: Vec<bool> = rows
            .iter()
            .map(|r| r.try_get::<i64, _>(10).map(|c| c != 0))
            .collect::<Result<_, sqlx::Error>>()?;
        for (item, check) in items.iter_mut().zip(checks) {
            if check {
                item.placed_before = self.placed_before(item).await?;
            }
        }
        items.sort_by_key(|i| i.id);
        Ok(items)
    }

    /// Records the result of delivering one claimed bundle.
    pub async fn record_fhir(
        &self,
        item: &OutboxItem,
        result: &Delivery,
        now: i64,
    ) -> Result<(), StoreError> {
        self.record_fhir_many(&[(item.clone(), result.clone())], now)
            .await
    }

    /// Records the results of a pass in one transaction (one fsync).
    pub async fn record_fhir_many(
        &self,
        results: &[(OutboxItem, Delivery)],
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Deliveries, the common case, are one statement per pass, not
        // one per bundle.
        let (delivered, rest): (Vec<_>, Vec<_>) = results
            .iter()
            .partition(|(_, r)| matches!(r, Delivery::Delivered { .. }));
        for chunk in delivered.chunks((super::sql::MAX_PARAMS - 1) / 3) {
            let sql = format!(
                "UPDATE fhir_outbox SET {RESEND_OR_DELIVERED}, attempts = attempts + 1, delivered_at = $1, \
                 updated_at = $1, lease_until = NULL, last_error = NULL, server_ids = v.column3, \
                 notified = 0 FROM (VALUES {}) AS v WHERE fhir_outbox.id = v.column1 \
                 AND fhir_outbox.state = 'delivering' AND fhir_outbox.lease_until = v.column2",
                super::sql::tuples(2, chunk.len(), 3)
            );
            let mut binds = vec![now.into()];
            for (item, result) in chunk {
                let Delivery::Delivered { server_ids } = result else {
                    continue;
                };
                binds.push(item.id.into());
                binds.push(item.lease_until.into());
                binds.push(
                    serde_json::to_string(server_ids)
                        .unwrap_or_else(|_| "[]".into())
                        .into(),
                );
            }
            query(self.backend, sql, binds).execute(&mut *tx).await?;
        }
        // Withdrawals are per bundle (only edits have them); what the
        // bundles placed is one insert for the pass.
        let mut placed = Vec::new();
        for (item, _) in &delivered {
            if item.placed_before.is_empty() {
                placed.extend(super::withdrawal::placement_rows(item, now));
            } else {
                self.record_placements(&mut tx, item, true, now).await?;
            }
        }
        self.insert_placements(&mut tx, placed).await?;
        for (item, result) in rest {
            self.record_one(&mut tx, item, result, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn mark_delivered(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        item: &OutboxItem,
        server_ids: &[String],
        now: i64,
    ) -> Result<(), StoreError> {
        let ids = serde_json::to_string(server_ids).unwrap_or_else(|_| "[]".into());
        query(
            self.backend,
            format!(
                "UPDATE fhir_outbox SET {RESEND_OR_DELIVERED}, attempts = attempts + 1, delivered_at = $1, \
                 updated_at = $2, lease_until = NULL, last_error = NULL, server_ids = $3, notified = 0 \
                 WHERE id = $4 AND state = 'delivering' AND lease_until = $5"
            ),
            vec![now.into(), now.into(), ids.into(), item.id.into(), item.lease_until.into()],
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    async fn record_one(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        item: &OutboxItem,
        result: &Delivery,
        now: i64,
    ) -> Result<(), StoreError> {
        match result {
            Delivery::Delivered { server_ids } => {
                self.mark_delivered(tx, item, server_ids, now).await?;
                self.record_placements(tx, item, true, now).await?;
            }
            Delivery::DeliveredWithdrawalRefused { server_ids, error } => {
                self.mark_delivered(tx, item, server_ids, now).await?;
                self.record_placements(tx, item, false, now).await?;
                let withdrawals: Vec<serde_json::Value> = item
                    .withdrawals()
                    .map(|p| {
                        serde_json::json!({
                            "event_id": p.event_id,
                            "resource": p.resource,
                            "method": super::withdrawal::withdraw_method(p),
                        })
                    })
                    .collect();
                let payload = serde_json::to_vec(&withdrawals).unwrap_or_default();
                query(
                    self.backend,
                    "INSERT INTO dead_letters (fingerprint, stage, source, message_id, event_id, mapping, \
                     reason_code, reason, payload, received_at, last_seen_at) \
                     VALUES ($1, 'fhir', $2, $3, $4, $5, 'fhir_withdrawal_refused', $6, $7, $8, $9) \
                     ON CONFLICT (fingerprint) DO UPDATE SET seen_count = dead_letters.seen_count + 1, \
                     last_seen_at = excluded.last_seen_at, reason = excluded.reason, \
                     payload = excluded.payload, state = 'open', notified = 0"
                        .to_owned(),
                    vec![
                        format!("fhir-withdraw:{}", item.id).into(),
                        item.source.as_str().into(),
                        Some(format!("outbox:{}", item.id)).into(),
                        Some(item.event_id.clone()).into(),
                        Some(item.mapping.clone()).into(),
                        format!(
                            "the FHIR server refused to withdraw {} resource(s) earlier versions placed; \
                             the new version was delivered without the withdrawal: {error}",
                            withdrawals.len()
                        )
                        .into(),
                        Some(payload).into(),
                        now.into(),
                        now.into(),
                    ],
                )
                .execute(&mut **tx)
                .await?;
            }
            Delivery::Retry {
                next_attempt_at,
                error,
            } => {
                query(
                    self.backend,
                    "UPDATE fhir_outbox SET state = 'pending', attempts = attempts + 1, next_attempt_at = $1, \
                     updated_at = $2, lease_until = NULL, last_error = $3, resend = 0 \
                     WHERE id = $4 AND state = 'delivering' AND lease_until = $5"
                        .to_owned(),
                    vec![
                        (*next_attempt_at).into(),
                        now.into(),
                        error.as_str().into(),
                        item.id.into(),
                        item.lease_until.into(),
                    ],
                )
                .execute(&mut **tx)
                .await?;
            }
            Delivery::Dead { reason_code, error } => {
                let held = query(
                    self.backend,
                    "UPDATE fhir_outbox SET state = 'dead', attempts = attempts + 1, updated_at = $1, \
                     lease_until = NULL, last_error = $2, resend = 0 WHERE id = $3 AND state = 'delivering' AND lease_until = $4"
                        .to_owned(),
                    vec![now.into(), error.as_str().into(), item.id.into(), item.lease_until.into()],
                )
                .execute(&mut **tx)
                .await?
                .rows_affected();
                if held == 0 {
                    // Another worker took the row over: its result counts.
                    return Ok(());
                }
                query(
                    self.backend,
                    "INSERT INTO dead_letters (fingerprint, stage, source, message_id, event_id, mapping, \
                     reason_code, reason, payload, received_at, last_seen_at) \
                     VALUES ($1, 'fhir', $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (fingerprint) DO UPDATE SET seen_count = dead_letters.seen_count + 1, \
                     last_seen_at = excluded.last_seen_at, reason_code = excluded.reason_code, \
                     reason = excluded.reason, payload = excluded.payload, state = 'open', notified = 0"
                        .to_owned(),
                    vec![
                        format!("fhir:{}", item.id).into(),
                        item.source.as_str().into(),
                        Some(format!("outbox:{}", item.id)).into(),
                        Some(item.event_id.clone()).into(),
                        Some(item.mapping.clone()).into(),
                        reason_code.as_str().into(),
                        error.as_str().into(),
                        Some(item.bundle.as_bytes().to_vec()).into(),
                        now.into(),
                        now.into(),
                    ],
                )
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(())
    }

    /// The raw payload an outbox row's event arrived with, if not purged.
    pub async fn outbox_event_payload(
        &self,
        outbox_id: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = query(
            self.backend,
            "SELECT e.payload FROM fhir_outbox o JOIN events e ON e.source = o.source AND e.event_id = o.event_id \
             AND e.version_hash = o.version_hash WHERE o.id = $1"
                .to_owned(),
            vec![outbox_id.into()],
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<Vec<u8>>, _>(0)?,
            None => None,
        })
    }

    /// Puts a dead bundle back in the queue with a new body (re-mapped
    /// after a mapping fix), due now. `puts`: what the new body places
    /// (`Type/id` of each entry written with `PUT` at its own id).
    pub async fn requeue_fhir_with(
        &self,
        outbox_id: i64,
        bundle: &str,
        entries: usize,
        puts: &[String],
        mapping: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let n = query(
            self.backend,
            "UPDATE fhir_outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $2, \
             created_at = $3, bundle = $4, entries = $5, mapping = $6, puts = $8, withdraw_check = 1 \
             WHERE id = $7 AND state = 'dead' \
             AND NOT EXISTS (SELECT 1 FROM fhir_outbox n WHERE n.source = fhir_outbox.source \
             AND n.event_id = fhir_outbox.event_id AND n.id > fhir_outbox.id AND n.state <> 'superseded')"
                .to_owned(),
            vec![
                now.into(),
                now.into(),
                now.into(),
                bundle.into(),
                i64::try_from(entries).unwrap_or(i64::MAX).into(),
                mapping.into(),
                outbox_id.into(),
                // A re-mapped bundle may no longer produce what earlier
                // versions placed: its claim withdraws that.
                (!puts.is_empty()).then(|| puts.join("\n")).into(),
            ],
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Puts a dead bundle back in the queue, due now (operator replay).
    pub async fn requeue_fhir(&self, outbox_id: i64, now: i64) -> Result<bool, StoreError> {
        let n = query(
            self.backend,
            "UPDATE fhir_outbox SET state = 'pending', attempts = 0, next_attempt_at = $1, updated_at = $2, \
             created_at = $3 WHERE id = $4 AND state = 'dead' AND bundle IS NOT NULL \
             AND NOT EXISTS (SELECT 1 FROM fhir_outbox n WHERE n.source = fhir_outbox.source \
             AND n.event_id = fhir_outbox.event_id AND n.id > fhir_outbox.id AND n.state <> 'superseded')"
                .to_owned(),
            vec![now.into(), now.into(), now.into(), outbox_id.into()],
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Counts of outbox rows by state.
    pub async fn outbox_states(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT state, COUNT(*) FROM fhir_outbox GROUP BY state ORDER BY state".to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}

impl Store {
    /// Outbox rows that needed more than one attempt.
    pub async fn outbox_retried(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM fhir_outbox WHERE attempts > 1")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

impl Store {
    /// `(source, event id, created, delivered)` of every delivered bundle
    /// (ms), for latency measurements.
    pub async fn delivery_times(&self) -> Result<Vec<(String, String, i64, i64)>, StoreError> {
        let rows = query(self.backend, "SELECT source, event_id, created_at, delivered_at FROM fhir_outbox WHERE state = 'delivered'".to_owned(), vec![])
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    r.try_get(2)?,
                    r.try_get::<Option<i64>, _>(3)?.unwrap_or(0),
                ))
            })
            .collect()
    }
}
