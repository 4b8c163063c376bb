//! What operators and apps read about the pipeline: destination health
//! (shared by replicas through the `destinations` table), backlog, flows,
//! failures by reason, and the status of one event. None of it carries a
//! payload.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::sql::query;
use super::{Store, StoreError};

/// A delivery pass's view of its destination.
#[derive(Debug, Clone)]
pub struct DestinationUpdate<'a> {
    /// `closed`, `open` or `half_open`.
    pub circuit: &'a str,
    /// When the pass delivered something.
    pub success_at: Option<i64>,
    /// The pass's last failure (already cut of client data).
    pub error: Option<&'a str>,
    /// Now (ms).
    pub now: i64,
}

/// One destination's health as last recorded by any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationHealth {
    /// `fhir` or `dhis2`.
    pub name: String,
    /// Circuit state as last reported.
    pub circuit: String,
    /// Last delivery (ms).
    pub last_success_at: Option<i64>,
    /// Last failure message.
    pub last_error: Option<String>,
    /// When it happened (ms).
    pub last_error_at: Option<i64>,
}

/// Work waiting per destination.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Backlog {
    /// FHIR bundles never tried yet.
    pub fhir_pending: i64,
    /// FHIR bundles waiting for another attempt.
    pub fhir_retrying: i64,
    /// FHIR bundles being sent now.
    pub fhir_delivering: i64,
    /// Creation time of the oldest undelivered bundle (ms).
    pub fhir_oldest_at: Option<i64>,
    /// DHIS2 totals changed and not yet pushed.
    pub dhis2_pending: i64,
    /// Of those, waiting for another attempt.
    pub dhis2_retrying: i64,
    /// When the oldest of them changed (ms).
    pub dhis2_oldest_at: Option<i64>,
    /// Open dead letters by stage.
    pub dead_letters_open: BTreeMap<String, i64>,
}

/// Events per source and mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Flow {
    /// Source app.
    pub source: String,
    /// Mapping of the current versions (`None` for tombstones).
    pub mapping: Option<String>,
    /// Events stored.
    pub events: i64,
    /// Last received (ms).
    pub last_received_ms: Option<i64>,
    /// Open dead letters of this source and mapping.
    pub dead_letters_open: i64,
}

/// Open dead letters per stage and reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonCount {
    /// `ingest`, `fhir` or `dhis2`.
    pub stage: String,
    /// Reason code.
    pub reason_code: String,
    /// Open dead letters.
    pub count: i64,
}

/// Where one event stands, for the app that sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventStatus {
    /// Source app.
    pub source: String,
    /// Event id.
    pub event_id: String,
    /// `live`, `superseded`, or `parked` when only dead letters exist.
    pub state: String,
    /// Mapping of the current version.
    pub mapping: Option<String>,
    /// When the current version was received (ms).
    pub received_at: Option<i64>,
    /// Per destination.
    pub destinations: Vec<DestinationStatus>,
    /// Dead letters naming this event, without payloads.
    pub dead_letters: Vec<EventDeadLetter>,
    /// Resources withdrawn from the FHIR server that this event had
    /// placed (an edit or a replacement no longer produces them), or that
    /// its delivery withdrew, with when and how.
    pub withdrawn: Vec<super::Withdrawn>,
}

/// One destination's part of an [`EventStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DestinationStatus {
    /// `fhir` or `dhis2`.
    pub destination: String,
    /// `pending`, `retrying`, `delivering`, `delivered`, `parked` or
    /// `superseded`.
    pub status: String,
    /// FHIR: attempts so far; DHIS2: data values the event contributes.
    pub count: i64,
    /// Last error, when retrying or parked.
    pub last_error: Option<String>,
    /// When delivered (FHIR, ms).
    pub delivered_at: Option<i64>,
}

/// A dead letter in an [`EventStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventDeadLetter {
    /// Id.
    pub id: i64,
    /// Stage.
    pub stage: String,
    /// Reason code.
    pub reason_code: String,
    /// Reason.
    pub reason: String,
    /// `open`, `replayed` or `discarded`.
    pub state: String,
}

impl Store {
    /// Records a delivery pass's view of a destination.
    pub async fn record_destination(
        &self,
        name: &str,
        u: &DestinationUpdate<'_>,
    ) -> Result<(), StoreError> {
        query(
            self.backend,
            "INSERT INTO destinations (name, circuit, last_success_at, last_error, last_error_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET circuit = excluded.circuit, \
             last_success_at = COALESCE(excluded.last_success_at, destinations.last_success_at), \
             last_error = COALESCE(excluded.last_error, destinations.last_error), \
             last_error_at = COALESCE(excluded.last_error_at, destinations.last_error_at)"
                .to_owned(),
            vec![
                name.into(),
                u.circuit.into(),
                u.success_at.into(),
                u.error.map(str::to_owned).into(),
                u.error.map(|_| u.now).into(),
            ],
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every destination's health, by name.
    pub async fn destination_health(&self) -> Result<Vec<DestinationHealth>, StoreError> {
        let rows = query(self.backend, "SELECT name, circuit, last_success_at, last_error, last_error_at FROM destinations ORDER BY name".to_owned(), vec![])
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DestinationHealth {
                    name: r.try_get(0)?,
                    circuit: r.try_get(1)?,
                    last_success_at: r.try_get(2)?,
                    last_error: r.try_get(3)?,
                    last_error_at: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// The backlog of every destination.
    pub async fn backlog(&self) -> Result<Backlog, StoreError> {
        let mut b = Backlog::default();
        // Each state through its own partial index (`fhir_outbox_ready`,
        // `fhir_outbox_leased`): the rows in flight, not the table.
        let rows = query(
            self.backend,
            "SELECT 'pending', CASE WHEN attempts > 0 THEN 1 ELSE 0 END, COUNT(*), MIN(created_at) \
             FROM fhir_outbox WHERE state = 'pending' GROUP BY 2 \
             UNION ALL \
             SELECT 'delivering', 0, COUNT(*), MIN(created_at) FROM fhir_outbox \
             WHERE state = 'delivering' HAVING COUNT(*) > 0"
                .to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let (state, retried, n, oldest): (String, i32, i64, Option<i64>) =
                (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?);
            match (state.as_str(), retried) {
                ("delivering", _) => b.fhir_delivering += n,
                (_, 0) => b.fhir_pending += n,
                _ => b.fhir_retrying += n,
            }
            b.fhir_oldest_at = match (b.fhir_oldest_at, oldest) {
                (Some(a), Some(o)) => Some(a.min(o)),
                (a, o) => a.or(o),
            };
        }
        let r = query(self.backend, "SELECT COUNT(*), COALESCE(SUM(CASE WHEN attempts > 0 THEN 1 ELSE 0 END), 0), MIN(marked_at) \
             FROM dhis2_dirty".to_owned(), vec![])
        .fetch_one(&self.pool)
        .await?;
        b.dhis2_pending = r.try_get(0)?;
        b.dhis2_retrying = r.try_get(1)?;
        b.dhis2_oldest_at = r.try_get(2)?;
        let rows = query(
            self.backend,
            "SELECT stage, COUNT(*) FROM dead_letters WHERE state = 'open' GROUP BY stage"
                .to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            b.dead_letters_open.insert(r.try_get(0)?, r.try_get(1)?);
        }
        Ok(b)
    }

    /// Events and open dead letters per source and mapping.
    pub async fn flows(&self) -> Result<Vec<Flow>, StoreError> {
        let rows = query(self.backend, "SELECT source, mapping, COUNT(*), MAX(received_at) FROM events GROUP BY source, mapping".to_owned(), vec![])
        .fetch_all(&self.pool)
        .await?;
        let mut flows: BTreeMap<(String, Option<String>), Flow> = BTreeMap::new();
        for r in &rows {
            let (source, mapping): (String, Option<String>) = (r.try_get(0)?, r.try_get(1)?);
            flows.insert(
                (source.clone(), mapping.clone()),
                Flow {
                    source,
                    mapping,
                    events: r.try_get(2)?,
                    last_received_ms: r.try_get(3)?,
                    dead_letters_open: 0,
                },
            );
        }
        let rows = query(
            self.backend,
            "SELECT source, mapping, COUNT(*) FROM dead_letters \
             WHERE state = 'open' AND stage <> 'dhis2' GROUP BY source, mapping"
                .to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let (source, mapping): (String, Option<String>) = (r.try_get(0)?, r.try_get(1)?);
            let n: i64 = r.try_get(2)?;
            flows
                .entry((source.clone(), mapping.clone()))
                .or_insert(Flow {
                    source,
                    mapping,
                    events: 0,
                    last_received_ms: None,
                    dead_letters_open: 0,
                })
                .dead_letters_open += n;
        }
        Ok(flows.into_values().collect())
    }

    /// Open dead letters per stage and reason code.
    pub async fn dead_letters_by_reason(&self) -> Result<Vec<ReasonCount>, StoreError> {
        let rows = query(
            self.backend,
            "SELECT stage, reason_code, COUNT(*) FROM dead_letters WHERE state = 'open' \
             GROUP BY stage, reason_code ORDER BY 3 DESC, 1, 2"
                .to_owned(),
            vec![],
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ReasonCount {
                    stage: r.try_get(0)?,
                    reason_code: r.try_get(1)?,
                    count: r.try_get(2)?,
                })
            })
            .collect()
    }

    /// Where the event `event_id` stands (one entry per source that sent
    /// an event with that id; `source` narrows it). Empty when unknown.
    pub async fn event_status(
        &self,
        event_id: &str,
        source: Option<&str>,
    ) -> Result<Vec<EventStatus>, StoreError> {
        // The id under each source through the primary key: the sources
        // are found by a loose scan of its first column (one probe per
        // source), so no index of every event id is kept for this lookup.
        let rows = query(
            self.backend,
            "WITH RECURSIVE sources (source) AS ( \
               SELECT MIN(source) FROM events \
               UNION ALL \
               SELECT (SELECT MIN(n.source) FROM events n WHERE n.source > sources.source) \
               FROM sources WHERE sources.source IS NOT NULL) \
             SELECT e.source, e.state, e.mapping, e.received_at FROM sources \
             JOIN events e ON e.source = sources.source AND e.event_id = $1 ORDER BY e.source"
                .to_owned(),
            vec![event_id.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let src: String = r.try_get(0)?;
            if source.is_some_and(|s| s != src) {
                continue;
            }
            let mut status = EventStatus {
                event_id: event_id.to_owned(),
                state: r.try_get(1)?,
                mapping: r.try_get(2)?,
                received_at: r.try_get(3)?,
                destinations: self.fhir_status(&src, event_id).await?,
                dead_letters: Vec::new(),
                withdrawn: self.withdrawals_of(&src, event_id).await?,
                source: src,
            };
            status
                .destinations
                .extend(self.dhis2_status(&status.source, event_id).await?);
            out.push(status);
        }
        // Dead letters naming the event, by event id or by the message id
        // the app sent (a message parked before its event id was known).
        let rows = query(
            self.backend,
            "SELECT id, stage, reason_code, reason, state, source FROM dead_letters \
             WHERE event_id = $1 OR message_id = $2 ORDER BY id"
                .to_owned(),
            vec![event_id.into(), event_id.into()],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            let src: String = r.try_get(5)?;
            if source.is_some_and(|s| s != src) {
                continue;
            }
            let letter = EventDeadLetter {
                id: r.try_get(0)?,
                stage: r.try_get(1)?,
                reason_code: r.try_get(2)?,
                reason: r.try_get(3)?,
                state: r.try_get(4)?,
            };
            match out.iter_mut().find(|s| s.source == src) {
                Some(s) => s.dead_letters.push(letter),
                None => out.push(EventStatus {
                    source: src,
                    event_id: event_id.to_owned(),
                    state: "parked".into(),
                    mapping: None,
                    received_at: None,
                    destinations: Vec::new(),
                    dead_letters: vec![letter],
                    withdrawn: Vec::new(),
                }),
            }
        }
        for status in &mut out {
            self.add_dhis2_letters(status).await?;
        }
        Ok(out)
    }

    /// The DHIS2 dead letters of the totals `status`'s event contributes
    /// to (a DHIS2 letter is about a total, not an event), and, when DHIS2
    /// is `parked` with no error of its own, the first open letter's code
    /// and message as its `last_error`.
    async fn add_dhis2_letters(&self, status: &mut EventStatus) -> Result<(), StoreError> {
        if !status.destinations.iter().any(|d| d.destination == "dhis2") {
            return Ok(());
        }
        let rows = query(
            self.backend,
            "SELECT DISTINCT dl.id, dl.stage, dl.reason_code, dl.reason, dl.state \
             FROM dhis2_contributions c JOIN dead_letters dl ON dl.fingerprint = 'dhis2:' || c.data_element \
               || ':' || c.period || ':' || c.org_unit || ':' || c.coc || ':' || c.aoc \
             WHERE c.source = $1 AND c.event_id = $2 ORDER BY dl.id"
                .to_owned(),
            vec![status.source.as_str().into(), status.event_id.as_str().into()],
        )
        .fetch_all(&self.pool)
        .await?;
        for r in &rows {
            status.dead_letters.push(EventDeadLetter {
                id: r.try_get(0)?,
                stage: r.try_get(1)?,
                reason_code: r.try_get(2)?,
                reason: r.try_get(3)?,
                state: r.try_get(4)?,
            });
        }
        let first_open = status
            .dead_letters
            .iter()
            .find(|l| l.stage == "dhis2" && l.state == "open")
            .map(|l| format!("{}: {}", l.reason_code, l.reason));
        if let Some(d) = status
            .destinations
            .iter_mut()
            .find(|d| d.destination == "dhis2" && d.status == "parked" && d.last_error.is_none())
        {
            d.last_error = first_open;
        }
        Ok(())
    }

    async fn fhir_status(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Vec<DestinationStatus>, StoreError> {
        // The newest version's bundle.
        let row = query(
            self.backend,
            "SELECT state, attempts, last_error, delivered_at FROM fhir_outbox \
             WHERE source = $1 AND event_id = $2 ORDER BY id DESC LIMIT 1"
                .to_owned(),
            vec![source.into(), event_id.into()],
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else {
            return Ok(Vec::new());
        };
        let state: String = r.try_get(0)?;
        let attempts: i64 = r.try_get(1)?;
        let status = match state.as_str() {
            "pending" if attempts > 0 => "retrying",
            "dead" => "parked",
            other => other,
        };
        Ok(vec![DestinationStatus {
            destination: "fhir".into(),
            status: status.into(),
            count: attempts,
            last_error: r.try_get(2)?,
            delivered_at: r.try_get(3)?,
        }])
    }

    async fn dhis2_status(
        &self,
        source: &str,
        event_id: &str,
    ) -> Result<Vec<DestinationStatus>, StoreError> {
        // Each contribution: delivered once a push DHIS2 accepted included
        // it (`notified` no longer waiting), unless its total is refused
        // since (an open dead letter); otherwise pending while its total
        // waits for a push (dirty), parked when it does not (refused, or
        // its letter discarded). The rule the status messages use.
        let row = query(
            self.backend,
            format!(
            "SELECT COUNT(*), \
             COALESCE(SUM(CASE WHEN {undelivered} AND d.data_element IS NOT NULL THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN {undelivered} AND d.data_element IS NULL THEN 1 ELSE 0 END), 0), \
             MAX(d.last_error) \
             FROM dhis2_contributions c \
             LEFT JOIN dhis2_dirty d ON d.data_element = c.data_element AND d.period = c.period \
               AND d.org_unit = c.org_unit AND d.coc = c.coc AND d.aoc = c.aoc \
             WHERE c.source = $1 AND c.event_id = $2",
                undelivered = format_args!(
                    "(c.notified = {} OR {})",
                    super::dhis2::CONTRIBUTION_WAITING,
                    super::dhis2::DHIS2_REFUSED
                ),
            ),
            vec![source.into(), event_id.into()],
        )
        .fetch_one(&self.pool)
        .await?;
        let (n, waiting, stuck): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        if n == 0 {
            return Ok(Vec::new());
        }
        let status = if waiting > 0 {
            "pending"
        } else if stuck > 0 {
            "parked"
        } else {
            "delivered"
        };
        Ok(vec![DestinationStatus {
            destination: "dhis2".into(),
            status: status.into(),
            count: n,
            last_error: row.try_get(3)?,
            delivered_at: None,
        }])
    }
}
