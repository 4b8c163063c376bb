//! Committing a batch of ingested events in one transaction (group
//! commit): one fsync for the whole batch, a handful of statements
//! whatever its size.
//!
//! Each event is recognised by `(source, event id)` and its version by the
//! SHA-256 of the raw payload:
//! - a new id stores the event's outputs ([`Outcome::Stored`]);
//! - the same id and hash again is a no-op ([`Outcome::Duplicate`]);
//! - a hash seen before for that id, or a publisher timestamp older than
//!   the current version's, is a late re-delivery of an older version and
//!   a no-op ([`Outcome::Stale`]);
//! - any other hash is an edit: the old version's DHIS2 contributions are
//!   withdrawn, its undelivered FHIR bundle superseded, and the new
//!   outputs stored ([`Outcome::Replaced`]);
//! - an event whose mapping declares `replaces: OLD` withdraws OLD the
//!   same way and leaves a tombstone, so that OLD arriving later (out of
//!   order) is recognised ([`Outcome::Superseded`]). Every version that
//!   names OLD withdraws it, even one that changes nothing of its own
//!   event; if OLD's bundle already went out, the live version's bundle
//!   is sent again after it (see `0005_outbox_resend.sql`).
//!
//! Rejected events (not JSON, too large, no mapping, mapping error) become
//! dead letters with their raw payload, headers and reason; the same
//! message parked twice (a redelivery after a crash) is counted, not
//! duplicated.
//!
//! Before any statement each event is screened (`ingest/screen.rs`): text
//! PostgreSQL cannot hold (U+0000) never reaches the database, so that one
//! message cannot fail its batch and both backends store the same.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use kiungo_mappings::{Dhis2Contribution, MappedEvent};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row;

mod screen;

use super::dhis2::CONTRIBUTION_WAITING;
use super::read::{TotalKey, total_key};
use super::sql::{by_keys, multi_row, query};
use super::{Store, StoreError};

/// One event as it arrived, with the mapping's verdict.
#[derive(Debug, Clone)]
pub struct Ingest {
    /// The source app (from the queue or the HTTP path).
    pub source: String,
    /// The queue it came from; `None` for HTTP ingest.
    pub queue: Option<String>,
    /// The AMQP `message_id`, or the HTTP `X-Message-Id`.
    pub message_id: Option<String>,
    /// The publisher's timestamp (AMQP `timestamp`, milliseconds), which
    /// orders versions of one event when present.
    pub version_ts: Option<i64>,
    /// When Kiungo received it (milliseconds since the epoch).
    pub received_at: i64,
    /// The raw body, as received.
    pub payload: Vec<u8>,
    /// The AMQP headers as JSON, kept with dead letters.
    pub headers: Option<serde_json::Value>,
    /// The mapped outputs, or why there are none.
    pub result: Result<Outputs, Rejection>,
}

/// What one event yields, ready to store: the FHIR transaction bundle is
/// serialized already (by the mapper, off the store's critical path, and
/// so that the resource trees are freed before the event waits for its
/// commit).
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    /// Id of the mapping that produced them.
    pub mapping: String,
    /// Its version.
    pub mapping_version: u32,
    /// The event id.
    pub event_id: String,
    /// The event this one replaces, if any.
    pub replaces: Option<String>,
    /// The transaction `Bundle` as JSON and its number of entries; `None`
    /// when the event yields no FHIR resources.
    pub bundle: Option<(String, usize)>,
    /// DHIS2 contributions.
    pub dhis2: Vec<Dhis2Contribution>,
    /// `Type/id` of every bundle entry written with `PUT` at its own id:
    /// what the bundle places on the server for this event (conditional
    /// creates are shared and never withdrawn).
    pub puts: Vec<String>,
}

impl From<MappedEvent> for Outputs {
    fn from(m: MappedEvent) -> Self {
        let puts = m
            .fhir
            .iter()
            .filter(|e| e.request.method == "PUT" && !e.request.url.contains('?'))
            .map(|e| e.request.url.clone())
            .collect();
        // Written straight to text: building a `Value` first copied every
        // entry once more per event.
        let bundle = (!m.fhir.is_empty()).then(|| {
            let text = serde_json::to_string(&TransactionBundle {
                resource_type: "Bundle",
                kind: "transaction",
                entry: &m.fhir,
            })
            .unwrap_or_else(|_| {
                // Entries are JSON values and strings, which always
                // serialize; should that change, the slower way still
                // keeps every entry.
                serde_json::json!({
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": m.fhir,
                })
                .to_string()
            });
            (text, m.fhir.len())
        });
        Self {
            mapping: m.mapping,
            mapping_version: m.mapping_version,
            event_id: m.event_id,
            replaces: m.replaces,
            bundle,
            dhis2: m.dhis2,
            puts,
        }
    }
}

/// The stored transaction bundle of one event, in the key order a reader
/// expects (`resourceType`, `type`, `entry`).
#[derive(Serialize)]
struct TransactionBundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    entry: &'a [kiungo_mappings::FhirEntry],
}

/// Why an event could not be mapped: it is parked as a dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rejection {
    /// Stable reason code: `not_json`, `too_large`, `no_mapping`,
    /// `mapping_error`, ... (a [`kiungo_mappings::MapError::reason`]);
    /// `invalid_text` from the store's screen (ids or outputs holding
    /// U+0000) and `store_refused` from the committer (the database
    /// refused the event).
    pub code: String,
    /// The full message, naming mapping, field, line and event, made
    /// without the event's values: viewers, apps and logs read it.
    pub reason: String,
    /// The event's values the reason leaves out (a lookup key that was
    /// not found), stored beside the payload for operators only.
    pub detail: Option<String>,
    /// The mapping involved, when known.
    pub mapping: Option<String>,
    /// The event id, when known.
    pub event_id: Option<String>,
}

/// What committing one event did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Outcome {
    /// A new event: its outputs are stored.
    Stored,
    /// A new version of a known event: its outputs replace the old ones.
    Replaced,
    /// The current version again: nothing changed.
    Duplicate,
    /// An older version than the one stored: nothing changed.
    Stale,
    /// The event was replaced by another (`replaces`): nothing changed.
    Superseded,
    /// Parked as a dead letter.
    Parked {
        /// The dead letter's id.
        dead_letter_id: i64,
        /// The reason code.
        reason: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    Superseded,
}

impl State {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Superseded => "superseded",
        }
    }
}

/// The events row of one key as the batch sees it.
#[derive(Debug, Clone)]
struct Current {
    in_db: bool,
    changed: bool,
    state: State,
    superseded_by: Option<String>,
    mapping: Option<String>,
    mapping_version: Option<i64>,
    hash: Option<String>,
    ts: Option<i64>,
    versions: i64,
    message_id: Option<String>,
    payload: Option<Vec<u8>>,
    received_at: i64,
    seen: HashSet<String>,
}

impl Current {
    /// A row this batch creates: live for a new event, or the tombstone
    /// of an event replaced before it arrived.
    fn unstored(state: State, superseded_by: Option<String>, received_at: i64) -> Self {
        Self {
            in_db: false,
            changed: true,
            state,
            superseded_by,
            mapping: None,
            mapping_version: None,
            hash: None,
            ts: None,
            versions: 0,
            message_id: None,
            payload: None,
            received_at,
            seen: HashSet::new(),
        }
    }
}

type Key = (String, String);

/// A bundle one batch stores in the outbox.
struct PlannedBundle {
    hash: String,
    mapping: String,
    entries: usize,
    bundle: String,
    traceparent: Option<String>,
    /// `Type/id` placed with `PUT`, one per line.
    puts: String,
    /// An edit's, a replacement's: its claim computes what earlier
    /// versions placed that it no longer produces.
    withdraw_check: bool,
}

/// The bundle of an edit or replacement that produces no FHIR resources
/// of its own: it exists to withdraw what earlier versions placed.
const EMPTY_BUNDLE: &str = r#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#;

/// Everything one batch writes.
#[derive(Default)]
struct Plan {
    rows: IndexMap<Key, Current>,
    /// Keys whose contributions and pending bundles in the database are
    /// withdrawn.
    withdraw: Vec<Key>,
    contributions: IndexMap<Key, Vec<Dhis2Contribution>>,
    bundles: IndexMap<Key, PlannedBundle>,
    versions: Vec<(Key, String)>,
    /// Stored events withdrawn by a replacement, with the live event that
    /// now stands for them: if the withdrawn event's bundle reached the
    /// server (or is on its way), the live one's is sent again after it.
    resends: Vec<(Key, String)>,
    /// Events withdrawn in this batch, with their live successor: stored
    /// events that pointed at them point at the successor.
    repoint: Vec<(Key, String)>,
}

impl Store {
    /// Commits a batch in one transaction and returns one outcome per
    /// event, in order. On error nothing of the batch is stored.
    ///
    /// Each event is screened first (see `ingest/screen.rs`): one whose ids or
    /// outputs hold text the database cannot store (U+0000) is parked as
    /// `invalid_text` rather than failing the batch, and NUL in the text
    /// of dead letters is escaped, so that both backends store the same.
    pub async fn commit(&self, batch: &[Ingest]) -> Result<Vec<Outcome>, StoreError> {
        let batch: Vec<std::borrow::Cow<'_, Ingest>> = batch.iter().map(screen::screen).collect();
        let now = super::now_ms();
        let mut tx = self.begin_write().await?;

        // 1. Load the current rows of every key the batch touches.
        let mut keys: IndexMap<Key, ()> = IndexMap::new();
        for ing in &batch {
            if let Ok(m) = &ing.result {
                keys.insert((ing.source.clone(), m.event_id.clone()), ());
                if let Some(old) = m.replaces.as_ref().filter(|o| !o.is_empty()) {
                    keys.insert((ing.source.clone(), old.clone()), ());
                }
            }
        }
        let keys: Vec<Key> = keys.into_keys().collect();
        let mut plan = Plan::default();
        let lock = self.lock_rows();
        for (sql, binds) in by_keys(
            "SELECT source, event_id, state, superseded_by, mapping, mapping_version, version_hash, \
             version_ts, versions, message_id, received_at FROM events WHERE",
            lock,
            &[],
            &keys,
        ) {
            for row in query(self.backend, sql, binds).fetch_all(&mut *tx).await? {
                let key: Key = (row.try_get(0)?, row.try_get(1)?);
                let state: String = row.try_get(2)?;
                plan.rows.insert(
                    key,
                    Current {
                        in_db: true,
                        changed: false,
                        state: if state == "live" {
                            State::Live
                        } else {
                            State::Superseded
                        },
                        superseded_by: row.try_get(3)?,
                        mapping: row.try_get(4)?,
                        mapping_version: row.try_get(5)?,
                        hash: row.try_get(6)?,
                        ts: row.try_get(7)?,
                        versions: row.try_get(8)?,
                        message_id: row.try_get(9)?,
                        payload: None,
                        received_at: row.try_get(10)?,
                        seen: HashSet::new(),
                    },
                );
            }
        }
        let known: Vec<Key> = plan.rows.keys().cloned().collect();
        for (sql, binds) in by_keys(
            "SELECT source, event_id, version_hash FROM event_versions WHERE",
            "",
            &[],
            &known,
        ) {
            for row in query(self.backend, sql, binds).fetch_all(&mut *tx).await? {
                let key: Key = (row.try_get(0)?, row.try_get(1)?);
                if let Some(cur) = plan.rows.get_mut(&key) {
                    cur.seen.insert(row.try_get(2)?);
                }
            }
        }

        // 2. Decide, in order, what each event does.
        let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
        let mut parked = Vec::new();
        for (i, ing) in batch.iter().enumerate() {
            match &ing.result {
                Ok(m) => outcomes.push(Some(plan.apply(ing, m, now))),
                Err(rejection) => {
                    outcomes.push(None);
                    parked.push((i, rejection));
                }
            }
        }

        // 3. Write.
        let mut dirty: IndexMap<TotalKey, ()> = IndexMap::new();
        for (sql, binds) in by_keys(
            "DELETE FROM dhis2_contributions WHERE",
            "RETURNING data_element, period, org_unit, coc, aoc",
            &[],
            &plan.withdraw,
        ) {
            for row in query(self.backend, sql, binds).fetch_all(&mut *tx).await? {
                dirty.insert(total_key(&row)?, ());
            }
        }
        self.execute_all(&mut tx, by_keys(
            "UPDATE fhir_outbox SET state = 'superseded', updated_at = $1 WHERE state = 'pending' AND",
            "",
            &[now.into()],
            &plan.withdraw,
        )).await?;

        let (mut fresh, mut changed) = (Vec::new(), Vec::new());
        for (key, cur) in &plan.rows {
            if !cur.changed {
                continue;
            }
            let row = vec![
                key.0.as_str().into(),
                key.1.as_str().into(),
                cur.state.as_str().into(),
                cur.superseded_by.clone().into(),
                cur.mapping.clone().into(),
                cur.mapping_version.into(),
                cur.hash.clone().into(),
                cur.ts.into(),
                cur.versions.into(),
                cur.message_id.clone().into(),
                cur.payload.clone().into(),
                cur.received_at.into(),
                now.into(),
            ];
            if cur.in_db {
                changed.push(row)
            } else {
                fresh.push(row)
            }
        }
        const EVENT_COLS: &str = "INSERT INTO events (source, event_id, state, superseded_by, mapping, \
             mapping_version, version_hash, version_ts, versions, message_id, payload, received_at, updated_at)";
        // New keys are plainly inserted: if another replica inserted the
        // same key meanwhile, the unique violation fails the batch, which
        // is retried and then sees that row.
        self.execute_all(&mut tx, multi_row(EVENT_COLS, "", 13, fresh))
            .await?;
        self.execute_all(&mut tx, multi_row(
            EVENT_COLS,
            "ON CONFLICT (source, event_id) DO UPDATE SET state = excluded.state, \
             superseded_by = excluded.superseded_by, mapping = excluded.mapping, \
             mapping_version = excluded.mapping_version, version_hash = excluded.version_hash, \
             version_ts = excluded.version_ts, versions = excluded.versions, \
             message_id = excluded.message_id, payload = excluded.payload, updated_at = excluded.updated_at",
            13,
            changed,
        )).await?;

        let versions = plan
            .versions
            .iter()
            .map(|((s, e), h)| {
                vec![
                    s.as_str().into(),
                    e.as_str().into(),
                    h.as_str().into(),
                    now.into(),
                ]
            })
            .collect();
        self.execute_all(
            &mut tx,
            multi_row(
                "INSERT INTO event_versions (source, event_id, version_hash, seen_at)",
                "ON CONFLICT DO NOTHING",
                4,
                versions,
            ),
        )
        .await?;

        let mut contributions = Vec::new();
        for (key, list) in &plan.contributions {
            let (source, event_id) = key;
            let mapping = plan
                .rows
                .get(key)
                .and_then(|cur| cur.mapping.as_deref())
                .unwrap_or("");
            for c in list {
                dirty.insert(
                    (
                        c.data_element.clone(),
                        c.period.clone(),
                        c.org_unit.clone(),
                        c.category_option_combo.clone(),
                        c.attribute_option_combo.clone(),
                    ),
                    (),
                );
                let (text, num) = match &c.value {
                    serde_json::Value::Number(n) => (Some(n.to_string()), n.as_f64()),
                    serde_json::Value::String(s) => (Some(s.clone()), s.trim().parse::<f64>().ok()),
                    serde_json::Value::Bool(b) => (Some(b.to_string()), None),
                    serde_json::Value::Null => (None, None),
                    other => (Some(other.to_string()), None),
                };
                contributions.push(vec![
                    source.as_str().into(),
                    event_id.as_str().into(),
                    c.rule.as_str().into(),
                    c.data_element.as_str().into(),
                    c.period.as_str().into(),
                    c.org_unit.as_str().into(),
                    c.category_option_combo.as_str().into(),
                    c.attribute_option_combo.as_str().into(),
                    aggregation_name(c.aggregation).into(),
                    text.into(),
                    num.into(),
                    c.date.as_str().into(),
                    now.into(),
                    mapping.into(),
                    CONTRIBUTION_WAITING.into(),
                ]);
            }
        }
        self.execute_all(&mut tx, multi_row(
            "INSERT INTO dhis2_contributions (source, event_id, rule, data_element, period, org_unit, \
             coc, aoc, aggregation, value, value_num, event_date, created_at, mapping, notified)",
            "",
            15,
            contributions,
        )).await?;

        // In key order: replicas committing at once, and the DHIS2 worker,
        // then lock the rows in the same order and cannot deadlock.
        let mut dirty: Vec<TotalKey> = dirty.into_keys().collect();
        dirty.sort_unstable();
        let dirty = dirty
            .into_iter()
            .map(|(de, pe, ou, coc, aoc)| {
                vec![
                    de.into(),
                    pe.into(),
                    ou.into(),
                    coc.into(),
                    aoc.into(),
                    now.into(),
                    now.into(),
                ]
            })
            .collect();
        self.execute_all(
            &mut tx,
            multi_row(
                "INSERT INTO dhis2_dirty (data_element, period, org_unit, coc, aoc, marked_at, changed_at)",
                // Keep the first mark (the longest wait runs from it), move
                // the latest (the settling runs from it); count the change,
                // so that a push in flight does not clear it.
                "ON CONFLICT (data_element, period, org_unit, coc, aoc) \
                 DO UPDATE SET changes = dhis2_dirty.changes + 1, changed_at = excluded.changed_at",
                7,
                dirty,
            ),
        )
        .await?;

        let bundles = plan
            .bundles
            .iter()
            .map(|((source, event_id), b)| {
                vec![
                    source.as_str().into(),
                    event_id.as_str().into(),
                    b.hash.as_str().into(),
                    b.mapping.as_str().into(),
                    b.bundle.as_str().into(),
                    (b.entries as i64).into(),
                    now.into(),
                    now.into(),
                    now.into(),
                    b.traceparent.clone().into(),
                    (!b.puts.is_empty()).then(|| b.puts.clone()).into(),
                    i64::from(b.withdraw_check).into(),
                ]
            })
            .collect();
        self.execute_all(&mut tx, multi_row(
            "INSERT INTO fhir_outbox (source, event_id, version_hash, mapping, bundle, entries, \
             next_attempt_at, created_at, updated_at, traceparent, puts, withdraw_check)",
            "ON CONFLICT (source, event_id, version_hash) DO NOTHING",
            12,
            bundles,
        )).await?;

        // Withdrawn events point at the live event that stands for them,
        // never at another withdrawn one: with X <- Y committed earlier
        // and Y <- Z now, X points at Z, so that Z's bundle waits for X's
        // in flight and withdraws what X placed (one index probe per
        // replacement, `events_superseded_by`).
        for ((source, withdrawn), live) in &plan.repoint {
            query(
                self.backend,
                "UPDATE events SET superseded_by = $1, updated_at = $2 \
                 WHERE source = $3 AND superseded_by = $4"
                    .to_owned(),
                vec![
                    live.as_str().into(),
                    now.into(),
                    source.as_str().into(),
                    withdrawn.as_str().into(),
                ],
            )
            .execute(&mut *tx)
            .await?;
        }

        // Out-of-order replacements: the live version's bundle goes again
        // (after the withdrawn event's bundles in flight, which the claim
        // waits for) if the withdrawn event's bundle was delivered or is
        // being delivered, since that one may have landed last. In order
        // (the replacement's bundle is new in this batch, still pending)
        // this changes nothing.
        for ((source, withdrawn), live) in &plan.resends {
            let resent = query(
                self.backend,
                "UPDATE fhir_outbox SET \
                 state = CASE WHEN state = 'delivered' THEN 'pending' ELSE state END, \
                 next_attempt_at = CASE WHEN state = 'delivered' THEN $1 ELSE next_attempt_at END, \
                 resend = CASE WHEN state = 'delivering' THEN 1 ELSE resend END, updated_at = $1, \
                 withdraw_check = 1 \
                 WHERE source = $2 AND event_id = $3 AND state IN ('delivered', 'delivering') \
                 AND version_hash = (SELECT e.version_hash FROM events e WHERE e.source = $2 \
                     AND e.event_id = $3 AND e.state = 'live') \
                 AND EXISTS (SELECT 1 FROM fhir_outbox x WHERE x.source = $2 AND x.event_id = $4 \
                     AND x.state IN ('delivered', 'delivering'))"
                    .to_owned(),
                vec![
                    now.into(),
                    source.as_str().into(),
                    live.as_str().into(),
                    withdrawn.as_str().into(),
                ],
            )
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if resent > 0 {
                tracing::info!(
                    source = %source,
                    event_id = %live,
                    replaced = %withdrawn,
                    "replacement committed out of order: the live version's FHIR bundle is sent again"
                );
            }
        }

        for (i, rejection) in parked {
            let ing = &batch[i];
            let fingerprint = hex(&Sha256::new()
                .chain_update(b"ingest\0")
                .chain_update(ing.source.as_bytes())
                .chain_update(b"\0")
                .chain_update(&ing.payload)
                .finalize());
            let row = query(
                self.backend,
                // The same message again reopens its letter with its payload
                // (a discard or retention dropped it).
                "INSERT INTO dead_letters (fingerprint, stage, source, queue, message_id, event_id, mapping, \
                 reason_code, reason, payload, headers, received_at, last_seen_at, detail) \
                 VALUES ($1, 'ingest', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 ON CONFLICT (fingerprint) DO UPDATE SET seen_count = dead_letters.seen_count + 1, \
                 last_seen_at = excluded.last_seen_at, reason_code = excluded.reason_code, \
                 reason = excluded.reason, detail = excluded.detail, \
                 payload = COALESCE(dead_letters.payload, excluded.payload), \
                 headers = COALESCE(dead_letters.headers, excluded.headers), \
                 state = 'open', resolved_at = NULL, notified = 0 RETURNING id"
                    .to_owned(),
                vec![
                    fingerprint.into(),
                    ing.source.as_str().into(),
                    ing.queue.clone().into(),
                    ing.message_id.clone().into(),
                    rejection.event_id.clone().into(),
                    rejection.mapping.clone().into(),
                    rejection.code.as_str().into(),
                    rejection.reason.as_str().into(),
                    Some(ing.payload.clone()).into(),
                    ing.headers.as_ref().map(|h| h.to_string()).into(),
                    now.into(),
                    now.into(),
                    rejection.detail.clone().into(),
                ],
            )
            .fetch_one(&mut *tx)
            .await?;
            outcomes[i] = Some(Outcome::Parked {
                dead_letter_id: row.try_get(0)?,
                reason: rejection.code.clone(),
            });
        }

        tx.commit().await?;
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or(Outcome::Duplicate))
            .collect())
    }
}

impl Store {
    /// Runs statements in order inside `tx`.
    async fn execute_all(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        statements: Vec<(String, Vec<super::sql::Bind>)>,
    ) -> Result<(), StoreError> {
        for (sql, binds) in statements {
            query(self.backend, sql, binds).execute(&mut **tx).await?;
        }
        Ok(())
    }
}

impl Plan {
    fn apply(&mut self, ing: &Ingest, m: &Outputs, now: i64) -> Outcome {
        let hash = hex(&Sha256::digest(&ing.payload));
        let key: Key = (ing.source.clone(), m.event_id.clone());
        let early = match self.rows.get_mut(&key) {
            None => None,
            Some(cur) if cur.state == State::Superseded => {
                if cur.seen.insert(hash.clone()) {
                    self.versions.push((key.clone(), hash.clone()));
                }
                Some(Outcome::Superseded)
            }
            Some(cur) if cur.hash.as_deref() == Some(hash.as_str()) => Some(Outcome::Duplicate),
            Some(cur) if cur.seen.contains(&hash) => Some(Outcome::Stale),
            Some(cur) if matches!((ing.version_ts, cur.ts), (Some(new), Some(old)) if new < old) => {
                cur.seen.insert(hash.clone());
                self.versions.push((key.clone(), hash.clone()));
                Some(Outcome::Stale)
            }
            Some(_) => None,
        };
        if let Some(outcome) = early {
            // A version that changes nothing of its own event still
            // declares what it replaces, and withdrawal is for good: with
            // Y replacing X, an edit of Y (without `replaces`) that commits
            // before Y itself, or a chain X <- Y <- Z committed as Z then
            // Y, must still leave X withdrawn. The live version's bundle
            // may be out already: it may have to go again.
            self.supersede_replaced(ing, m, now, true);
            return outcome;
        }
        let outcome = if self.rows.contains_key(&key) {
            Outcome::Replaced
        } else {
            Outcome::Stored
        };
        if outcome == Outcome::Replaced {
            self.withdraw(&key);
        }
        let cur = self
            .rows
            .entry(key.clone())
            .or_insert_with(|| Current::unstored(State::Live, None, ing.received_at));
        // The version being replaced joins the versions seen before, so
        // that a late re-delivery of it is recognised as stale.
        if let Some(previous) = cur.hash.take() {
            self.versions.push((key.clone(), previous));
        }
        cur.changed = true;
        cur.state = State::Live;
        cur.mapping = Some(m.mapping.clone());
        cur.mapping_version = Some(i64::from(m.mapping_version));
        cur.hash = Some(hash.clone());
        // Only publisher timestamps order versions: the receive time is
        // another clock, and comparing the two would be meaningless.
        cur.ts = ing.version_ts;
        cur.versions += 1;
        cur.message_id = ing.message_id.clone();
        cur.payload = Some(ing.payload.clone());
        cur.seen.insert(hash.clone());
        if !m.dhis2.is_empty() {
            self.contributions.insert(key.clone(), m.dhis2.clone());
        }
        // An edit or a replacement withdraws what earlier versions placed
        // and it no longer produces; one without resources of its own gets
        // an empty bundle for that (sent only if there is something to
        // withdraw).
        let replaces = m
            .replaces
            .as_ref()
            .is_some_and(|o| !o.is_empty() && *o != m.event_id);
        let withdraw_check = outcome == Outcome::Replaced || replaces;
        let bundle = match &m.bundle {
            Some((bundle, entries)) => Some((bundle.clone(), *entries)),
            None if withdraw_check => Some((EMPTY_BUNDLE.to_owned(), 0)),
            None => None,
        };
        if let Some((bundle, entries)) = bundle {
            self.bundles.insert(
                key.clone(),
                PlannedBundle {
                    hash,
                    mapping: m.mapping.clone(),
                    entries,
                    bundle,
                    traceparent: ing
                        .headers
                        .as_ref()
                        .and_then(|h| h.get("traceparent"))
                        .and_then(serde_json::Value::as_str)
                        .map(str::to_owned),
                    puts: m.puts.join("\n"),
                    withdraw_check,
                },
            );
        }
        // The new version's bundle (if any) is pending and waits for the
        // replaced event's in flight: nothing to send again.
        self.supersede_replaced(ing, m, now, false);
        outcome
    }

    /// Withdraws the event that `m` declares it replaces, whatever `m`
    /// does to its own event. `live_may_be_out`: the live version is an
    /// earlier commit's, whose bundle may have been delivered already.
    fn supersede_replaced(&mut self, ing: &Ingest, m: &Outputs, now: i64, live_may_be_out: bool) {
        let Some(old) = m
            .replaces
            .as_ref()
            .filter(|o| !o.is_empty() && **o != m.event_id)
        else {
            return;
        };
        let old_key: Key = (ing.source.clone(), old.clone());
        let successor = self.live_successor(&ing.source, &m.event_id);
        match self.rows.get(&old_key).map(|c| (c.state, c.in_db)) {
            Some((State::Superseded, _)) => {}
            Some((State::Live, in_db)) => {
                self.withdraw(&old_key);
                if let Some(c) = self.rows.get_mut(&old_key) {
                    c.state = State::Superseded;
                    c.superseded_by = Some(successor.clone());
                    c.changed = true;
                }
                // Whatever pointed at the withdrawn event now points at
                // the live one: in this batch here, stored rows by the
                // repoint statement.
                for (k, c) in self.rows.iter_mut() {
                    if k.0 == ing.source
                        && c.state == State::Superseded
                        && c.superseded_by.as_deref() == Some(old.as_str())
                    {
                        c.superseded_by = Some(successor.clone());
                        c.changed = true;
                    }
                }
                if in_db {
                    self.repoint.push((old_key.clone(), successor.clone()));
                }
                if in_db && live_may_be_out {
                    self.resends.push((old_key, successor));
                }
            }
            None => {
                self.rows.insert(
                    old_key,
                    Current::unstored(State::Superseded, Some(successor), now),
                );
            }
        }
    }

    /// The event that stands for `event_id`: itself while it is live, else
    /// the end of its `superseded_by` chain as far as this batch knows it.
    /// A withdrawn event points at it, so that the live event's bundles
    /// wait for the withdrawn one's in flight (with X <- Y <- Z committed
    /// as Z, then X, then Y, X points at Z, not at Y which has no bundle).
    fn live_successor(&self, source: &str, event_id: &str) -> String {
        let mut id = event_id.to_owned();
        // A chain longer than this is not a real replacement history.
        for _ in 0..16 {
            let next = self
                .rows
                .get(&(source.to_owned(), id.clone()))
                .filter(|c| c.state == State::Superseded)
                .and_then(|c| c.superseded_by.clone());
            match next {
                Some(next) if next != event_id => id = next,
                _ => break,
            }
        }
        id
    }

    /// Withdraws a key's outputs: those stored by earlier batches (deleted
    /// in the database) and those planned by this one.
    fn withdraw(&mut self, key: &Key) {
        self.contributions.shift_remove(key);
        self.bundles.shift_remove(key);
        if self.rows.get(key).is_some_and(|c| c.in_db) && !self.withdraw.contains(key) {
            self.withdraw.push(key.clone());
        }
    }
}

const fn aggregation_name(a: kiungo_mappings::Aggregation) -> &'static str {
    use kiungo_mappings::Aggregation as A;
    match a {
        A::Count => "count",
        A::Sum => "sum",
        A::Min => "min",
        A::Max => "max",
        A::Last => "last",
    }
}

/// Lower-case hex of a digest.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Count of outcomes by kind, for logs and benchmarks.
pub fn tally(outcomes: &[Outcome]) -> HashMap<&'static str, usize> {
    let mut t = HashMap::new();
    for o in outcomes {
        let k = match o {
            Outcome::Stored => "stored",
            Outcome::Replaced => "replaced",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Superseded => "superseded",
            Outcome::Parked { .. } => "parked",
        };
        *t.entry(k).or_insert(0) += 1;
    }
    t
}
