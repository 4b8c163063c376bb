//! Status messages to apps, read from the outcomes the store already
//! holds (a transactional outbox without a second table): a delivered FHIR
//! bundle, a dead letter, or a DHIS2 contribution whose total DHIS2 has
//! accepted, each with `notified = 0` until the broker confirmed its
//! status message. A crash between publish and mark sends the message
//! again: delivery to apps is at least once, and each message carries a
//! stable `status_id` to deduplicate on.

use serde::Serialize;
use sqlx::Row;

use super::dhis2::{CONTRIBUTION_ACCEPTED, CONTRIBUTION_WAITING};
use super::sql::query;
use super::{Store, StoreError};

/// Where a status comes from, to mark it published. Each carries what the
/// row looked like when read: marking is compare-and-set, so an outcome
/// that changed in between (parked again, delivered again, an edit) stays
/// unpublished and goes out in the next round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusOrigin {
    /// A delivered FHIR bundle.
    Fhir {
        /// Outbox id.
        id: i64,
        /// Its `delivered_at` when read.
        delivered_at: i64,
    },
    /// A dead letter.
    DeadLetter {
        /// Its id.
        id: i64,
        /// Its `seen_count` when read.
        seen: i64,
        /// For a refused DHIS2 total, its key: the contributions are set
        /// back to unpublished, so that their events hear "delivered"
        /// once DHIS2 accepts the total.
        dhis2_key: Option<[String; 5]>,
    },
    /// Resources an event had placed on the FHIR server, withdrawn by
    /// the delivery of the live event that replaced it.
    Withdrawn {
        /// Source app.
        source: String,
        /// The withdrawn event.
        event_id: String,
        /// The highest `fhir_withdrawals` id covered.
        up_to: i64,
    },
    /// DHIS2 contributions of one event now in accepted totals.
    Dhis2 {
        /// Source app.
        source: String,
        /// Event id.
        event_id: String,
        /// Rules (contributions) covered, with their `created_at`.
        rules: Vec<(String, i64)>,
    },
}

/// One status message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusMessage {
    /// Stable id of this outcome (`fhir:42:delivered`, `dead-letter:7:3`).
    pub status_id: String,
    /// Source app.
    pub source: String,
    /// Event id (the message id for a message parked before its event
    /// id was known).
    pub event_id: Option<String>,
    /// The AMQP message id or HTTP `X-Message-Id` it arrived with.
    pub message_id: Option<String>,
    /// Mapping, when known.
    pub mapping: Option<String>,
    /// `ingest`, `fhir` or `dhis2`.
    pub destination: String,
    /// `delivered`, `parked`, or `withdrawn` (FHIR: what the event had
    /// placed was withdrawn; an edit or a replacement stands for it).
    pub status: String,
    /// Reason code, when parked.
    pub reason_code: Option<String>,
    /// Reason, when parked (never payload content).
    pub reason: Option<String>,
    /// The dead letter an operator can replay, when parked.
    pub dead_letter_id: Option<i64>,
    /// When the outcome happened (ms).
    pub at_ms: i64,
    /// What to mark once published.
    #[serde(skip)]
    pub origin: StatusOrigin,
    /// `false` for an outcome that is already over (a dead letter an
    /// operator replayed or discarded): marked without a message.
    #[serde(skip)]
    pub publish: bool,
}

/// A status id of at most 128 bytes (AMQP short strings hold 255): long
/// source names or event ids are replaced by their SHA-256.
fn bounded(id: String) -> String {
    if id.len() <= 128 {
        id
    } else {
        use sha2::{Digest, Sha256};
        format!("h:{}", super::ingest::hex(&Sha256::digest(id.as_bytes())))
    }
}

impl Store {
    /// Up to `limit` outcomes not yet published, oldest first within each
    /// kind.
    pub async fn pending_statuses(&self, limit: i64) -> Result<Vec<StatusMessage>, StoreError> {
        let mut out = Vec::new();
        let rows = query(
            self.backend,
            "SELECT id, source, event_id, mapping, delivered_at FROM fhir_outbox \
             WHERE notified = 0 AND state = 'delivered' ORDER BY id LIMIT $1"
                .to_owned(),
            vec![limit.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            let delivered_at = r.try_get::<Option<i64>, _>(4)?.unwrap_or_default();
            out.push(StatusMessage {
                status_id: format!("fhir:{id}:{delivered_at}"),
                source: r.try_get(1)?,
                event_id: Some(r.try_get(2)?),
                message_id: None,
                mapping: Some(r.try_get(3)?),
                destination: "fhir".into(),
                status: "delivered".into(),
                reason_code: None,
                reason: None,
                dead_letter_id: None,
                at_ms: delivered_at,
                origin: StatusOrigin::Fhir { id, delivered_at },
                publish: true,
            });
        }
        // Withdrawn events: one message per event, whatever number of
        // resources went (rows of one event are grouped here, in order).
        let rows = query(
            self.backend,
            "SELECT id, source, event_id, withdrawn_at, by_event_id FROM fhir_withdrawals \
             WHERE notified = 0 ORDER BY id LIMIT $1"
                .to_owned(),
            vec![limit.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        let mut withdrawn: indexmap::IndexMap<(String, String), (i64, i64, String, i64)> =
            indexmap::IndexMap::new();
        for r in &rows {
            let (id, source, event_id): (i64, String, String) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let (at, by): (i64, String) = (r.try_get(3)?, r.try_get(4)?);
            let e = withdrawn
                .entry((source, event_id))
                .or_insert((id, at, by.clone(), 0));
            e.0 = e.0.max(id);
            e.1 = e.1.max(at);
            e.2 = by;
            e.3 += 1;
        }
        for ((source, event_id), (up_to, at, by, n)) in withdrawn {
            out.push(StatusMessage {
                status_id: bounded(format!("withdrawn:{source}:{event_id}:{up_to}")),
                source: source.clone(),
                event_id: Some(event_id.clone()),
                message_id: None,
                mapping: None,
                destination: "fhir".into(),
                status: "withdrawn".into(),
                reason_code: Some("replaced".into()),
                reason: Some(format!(
                    "{n} resource(s) this event had placed were withdrawn from the FHIR server: \
                     event {by} stands for it"
                )),
                dead_letter_id: None,
                at_ms: at,
                origin: StatusOrigin::Withdrawn {
                    source,
                    event_id,
                    up_to,
                },
                publish: true,
            });
        }
        let rows = query(
            self.backend,
            "SELECT id, stage, source, event_id, message_id, mapping, reason_code, reason, last_seen_at, \
             seen_count, payload, state FROM dead_letters WHERE notified = 0 ORDER BY id LIMIT $1"
                .to_owned(),
            vec![limit.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            let stage: String = r.try_get(1)?;
            let seen: i64 = r.try_get(9)?;
            let state: String = r.try_get(11)?;
            let payload: Option<Vec<u8>> = r.try_get(10)?;
            // A refused DHIS2 total: its key, to tell every contributor (a
            // refused completeness registration has none: no app to tell).
            let dhis2_key = (stage == "dhis2")
                .then(|| {
                    payload
                        .and_then(|p| serde_json::from_slice::<serde_json::Value>(&p).ok())
                        .filter(|v| v.get("dataElement").is_some())
                        .map(|v| {
                            [
                                "dataElement",
                                "period",
                                "orgUnit",
                                "categoryOptionCombo",
                                "attributeOptionCombo",
                            ]
                            .map(|k| v[k].as_str().unwrap_or_default().to_owned())
                        })
                })
                .flatten();
            let base = StatusMessage {
                status_id: bounded(format!("dead-letter:{id}:{seen}")),
                source: r.try_get(2)?,
                event_id: r.try_get::<Option<String>, _>(3)?,
                message_id: r.try_get(4)?,
                mapping: r.try_get(5)?,
                destination: stage.clone(),
                status: "parked".into(),
                reason_code: Some(r.try_get(6)?),
                reason: Some(r.try_get(7)?),
                dead_letter_id: Some(id),
                at_ms: r.try_get(8)?,
                origin: StatusOrigin::DeadLetter {
                    id,
                    seen,
                    dhis2_key: dhis2_key.clone(),
                },
                // Replayed or discarded since: nothing to tell any more.
                publish: state == "open",
            };
            if stage != "dhis2" {
                let mut m = base;
                if stage == "fhir" {
                    // `outbox:N` is Kiungo's, not the app's message id.
                    m.message_id = None;
                }
                if m.event_id.is_none() {
                    m.event_id.clone_from(&m.message_id);
                }
                out.push(m);
                continue;
            }
            let events = match &dhis2_key {
                Some(k) => self.contributing_events(k).await?,
                None => Vec::new(),
            };
            if events.is_empty() {
                // Nothing to tell an app; mark it all the same.
                out.push(StatusMessage {
                    event_id: None,
                    publish: false,
                    ..base
                });
                continue;
            }
            for (source, event_id) in events {
                out.push(StatusMessage {
                    status_id: bounded(format!("dead-letter:{id}:{seen}:{source}:{event_id}")),
                    source,
                    event_id: Some(event_id),
                    ..base.clone()
                });
            }
        }
        // Contributions a push DHIS2 accepted included (moved from
        // waiting by that push, `store/dhis2.rs`), unless their total was
        // refused since (an open dead letter: the rule the event status
        // uses; telling "parked" moves them back to waiting). Contributions
        // still waiting for their total are not read, however many an
        // outage leaves.
        let rows = query(
            self.backend,
            format!(
            "SELECT c.source, c.event_id, c.rule, COALESCE(c.accepted_at, c.created_at), c.created_at \
             FROM dhis2_contributions c WHERE c.notified = {accepted} AND NOT {refused} \
             ORDER BY c.created_at, c.source, c.event_id LIMIT $1",
                accepted = CONTRIBUTION_ACCEPTED,
                refused = super::dhis2::DHIS2_REFUSED
            ),
            vec![limit.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        let mut current: Option<StatusMessage> = None;
        for r in &rows {
            let (source, event_id, rule, at, created): (String, String, String, i64, i64) = (
                r.try_get(0)?,
                r.try_get(1)?,
                r.try_get(2)?,
                r.try_get(3)?,
                r.try_get(4)?,
            );
            if let Some(StatusMessage {
                origin:
                    StatusOrigin::Dhis2 {
                        source: s,
                        event_id: e,
                        rules,
                    },
                at_ms,
                ..
            }) = current.as_mut()
                && *s == source
                && *e == event_id
            {
                rules.push((rule, created));
                *at_ms = (*at_ms).max(at);
                continue;
            }
            out.extend(current.take());
            current = Some(StatusMessage {
                status_id: bounded(format!("dhis2:{source}:{event_id}:{at}")),
                source: source.clone(),
                event_id: Some(event_id.clone()),
                message_id: None,
                mapping: None,
                destination: "dhis2".into(),
                status: "delivered".into(),
                reason_code: None,
                reason: None,
                dead_letter_id: None,
                at_ms: at,
                origin: StatusOrigin::Dhis2 {
                    source,
                    event_id,
                    rules: vec![(rule, created)],
                },
                publish: true,
            });
        }
        out.extend(current);
        // In the order things happened, so that an app that hears both
        // "parked" and then "delivered" ends on the latter.
        out.sort_by_key(|m| m.at_ms);
        Ok(out)
    }

    async fn contributing_events(
        &self,
        key: &[String; 5],
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT DISTINCT source, event_id FROM dhis2_contributions WHERE data_element = $1 \
             AND period = $2 AND org_unit = $3 AND coc = $4 AND aoc = $5 ORDER BY source, event_id"
                .to_owned(),
            key.iter().map(|k| k.as_str().into()).collect(),
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Marks statuses published (after the broker confirmed them), each
    /// only if its row is still as it was read.
    pub async fn mark_statuses(&self, published: &[StatusOrigin]) -> Result<(), StoreError> {
        if published.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for origin in published {
            match origin {
                StatusOrigin::Withdrawn {
                    source,
                    event_id,
                    up_to,
                } => {
                    query(
                        self.backend,
                        "UPDATE fhir_withdrawals SET notified = 1 WHERE source = $1 AND event_id = $2 \
                         AND id <= $3 AND notified = 0"
                            .to_owned(),
                        vec![
                            source.as_str().into(),
                            event_id.as_str().into(),
                            (*up_to).into(),
                        ],
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                StatusOrigin::Fhir { id, delivered_at } => {
                    query(
                        self.backend,
                        "UPDATE fhir_outbox SET notified = 1 WHERE id = $1 AND state = 'delivered' \
                         AND delivered_at = $2"
                            .to_owned(),
                        vec![(*id).into(), (*delivered_at).into()],
                    )
                    .execute(&mut *tx)
                    .await?;
                }
                StatusOrigin::DeadLetter {
                    id,
                    seen,
                    dhis2_key,
                } => {
                    let marked = query(
                        self.backend,
                        "UPDATE dead_letters SET notified = 1 WHERE id = $1 AND seen_count = $2 \
                         RETURNING state"
                            .to_owned(),
                        vec![(*id).into(), (*seen).into()],
                    )
                    .fetch_optional(&mut *tx)
                    .await?;
                    let told_parked = match marked {
                        Some(row) => row.try_get::<String, _>(0)? == "open",
                        None => false,
                    };
                    if let (true, Some(key)) = (told_parked, dhis2_key) {
                        // Told "parked": tell "delivered" once accepted,
                        // by the push DHIS2 accepts next. (A letter
                        // replayed or discarded before it was told is
                        // marked without a word: the "delivered" told
                        // before still stands.)
                        query(
                            self.backend,
                            format!(
                                "UPDATE dhis2_contributions SET notified = {CONTRIBUTION_WAITING} \
                                 WHERE data_element = $1 AND period = $2 AND org_unit = $3 AND coc = $4 \
                                 AND aoc = $5 AND notified <> {CONTRIBUTION_WAITING}"
                            ),
                            key.iter().map(|k| k.as_str().into()).collect(),
                        )
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                StatusOrigin::Dhis2 {
                    source,
                    event_id,
                    rules,
                } => {
                    for (rule, created) in rules {
                        query(
                            self.backend,
                            format!(
                                "UPDATE dhis2_contributions SET notified = 1 WHERE source = $1 \
                                 AND event_id = $2 AND rule = $3 AND created_at = $4 \
                                 AND notified = {CONTRIBUTION_ACCEPTED}"
                            ),
                            vec![
                                source.as_str().into(),
                                event_id.as_str().into(),
                                rule.as_str().into(),
                                (*created).into(),
                            ],
                        )
                        .execute(&mut *tx)
                        .await?;
                    }
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Takes or renews the lease `name` for `holder` until `now + ttl_ms`;
    /// `false` while another holder's lease runs. Used so that one replica
    /// publishes status messages at a time.
    pub async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: i64,
        ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = query(
            self.backend,
            "INSERT INTO leases (name, holder, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until = excluded.until \
             WHERE leases.holder = excluded.holder OR leases.until < $4"
                .to_owned(),
            vec![
                name.into(),
                holder.into(),
                (now + ttl_ms).into(),
                now.into(),
            ],
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Delivered bundles and dead letters not yet published (the
    /// `kiungo_feedback_pending` gauge; DHIS2 contributions are left out:
    /// counting them means joining the totals).
    pub async fn pending_status_count(&self) -> Result<i64, StoreError> {
        let row = query(
            self.backend,
            "SELECT (SELECT COUNT(*) FROM fhir_outbox WHERE notified = 0 AND state = 'delivered') \
             + (SELECT COUNT(*) FROM dead_letters WHERE notified = 0)"
                .to_owned(),
            vec![],
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
