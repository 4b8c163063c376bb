//! Group commit: one task owns the store's write path, gathers work into
//! batches (up to `max_events`, or whatever arrived within `max_wait` of
//! the first), commits each batch in one transaction, then acknowledges.
//!
//! A transient store failure (database down, busy, a race lost to another
//! replica) retries the same batch with backoff, holding its messages
//! unacknowledged. A permanent failure (or the same conflict again and
//! again) splits the batch so that one bad event cannot block the others:
//! an event the database refuses alone is parked as `store_refused`; if
//! even that dead letter is refused, as a minimal one (placeholders for
//! its ids, its raw payload as bytes). No message is acknowledged before
//! its event or dead letter is committed.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use kiungo_connectors::rabbitmq::SourceMessage;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, warn};

use crate::store::{Ingest, Outcome, Rejection, Store, StoreError};

/// `ingest:` batching settings.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most events per transaction.
    #[serde(default = "default_max_events")]
    pub max_events: usize,
    /// Longest wait for more events after the first one of a batch.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_events: default_max_events(),
            max_wait: default_max_wait(),
        }
    }
}

const fn default_max_events() -> usize {
    500
}
const fn default_max_wait() -> Duration {
    Duration::from_millis(5)
}

/// What to do once an event is committed.
#[derive(Debug)]
pub enum Done {
    /// Acknowledge the AMQP message.
    Amqp(Box<SourceMessage>),
    /// Answer the HTTP request.
    Http(oneshot::Sender<Outcome>),
}

/// One event on its way to the store.
#[derive(Debug)]
pub struct Work {
    /// The mapped event or its rejection.
    pub ingest: Ingest,
    /// Who waits for the commit.
    pub done: Done,
    /// The event's `ingest` span, ended once it is committed and
    /// acknowledged or answered ([`crate::telemetry::Span::none`] when
    /// spans are not exported).
    pub span: crate::telemetry::Span,
}

/// Counters the committer keeps (also read by benchmarks).
#[derive(Debug, Default)]
pub struct Counters {
    /// Events committed (any outcome).
    pub committed: AtomicU64,
    /// Of those, parked as dead letters.
    pub parked: AtomicU64,
    /// Transactions committed.
    pub batches: AtomicU64,
    /// Commit attempts that failed and were retried.
    pub retries: AtomicU64,
    /// AMQP acks (one per channel per batch) that failed: the channel is
    /// gone and the broker redelivers.
    pub ack_failures: AtomicU64,
}

/// Sends work to the committer.
#[derive(Debug, Clone)]
pub struct CommitterHandle {
    tx: mpsc::Sender<Work>,
    /// The committer's counters.
    pub counters: Arc<Counters>,
}

impl CommitterHandle {
    /// Queues one event; waits when the committer is behind.
    pub async fn send(&self, work: Work) -> Result<(), Work> {
        self.tx.send(work).await.map_err(|e| e.0)
    }
}

/// The committer task.
#[derive(Debug)]
pub struct Committer {
    store: Store,
    rx: mpsc::Receiver<Work>,
    config: BatchConfig,
    counters: Arc<Counters>,
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl Committer {
    /// Starts the committer; it stops once every handle is dropped and the
    /// queued work is committed. `wake` is notified after each commit that
    /// stored new outputs (the delivery workers wait on it).
    pub fn spawn(
        store: Store,
        config: BatchConfig,
        wake: Option<Arc<tokio::sync::Notify>>,
    ) -> (CommitterHandle, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.max_events.max(1));
        let counters = Arc::new(Counters::default());
        let committer = Self {
            store,
            rx,
            config,
            counters: counters.clone(),
            wake,
        };
        (
            CommitterHandle { tx, counters },
            tokio::spawn(committer.run()),
        )
    }

    async fn run(mut self) {
        let max = self.config.max_events.max(1);
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.config.max_wait;
            while batch.len() < max {
                match self.rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                            Ok(Some(w)) => batch.push(w),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            self.commit(batch).await;
        }
    }

    async fn commit(&self, batch: Vec<Work>) {
        let mut spans = Vec::with_capacity(batch.len());
        let (ingests, dones): (Vec<Ingest>, Vec<Done>) = batch
            .into_iter()
            .map(|w| {
                spans.push(w.span);
                (w.ingest, w.done)
            })
            .unzip();
        let started = std::time::Instant::now();
        let started_at = std::time::SystemTime::now();
        let events = ingests.len();
        let labels: Vec<(String, String)> = ingests
            .iter()
            .map(|i| {
                let mapping = match &i.result {
                    Ok(o) => o.mapping.clone(),
                    Err(r) => r.mapping.clone().unwrap_or_default(),
                };
                (i.source.clone(), mapping)
            })
            .collect();
        let outcomes = self.commit_all(ingests).await;
        count_outcomes(&labels, &outcomes, &dones);
        commit_spans(&mut spans, &outcomes, started_at);
        debug!(
            events,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        self.counters.batches.fetch_add(1, Ordering::Relaxed);
        let parked = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Parked { .. }))
            .count();
        self.counters
            .committed
            .fetch_add(outcomes.len() as u64, Ordering::Relaxed);
        self.counters
            .parked
            .fetch_add(parked as u64, Ordering::Relaxed);
        if let Some(wake) = &self.wake
            && outcomes
                .iter()
                .any(|o| matches!(o, Outcome::Stored | Outcome::Replaced))
        {
            wake.notify_one();
        }
        // AMQP: one `multiple` ack per channel, on its last delivery in the
        // batch. The mapper keeps each channel's order and batches commit in
        // order, so every earlier delivery of the channel is committed.
        let mut last: HashMap<u64, Box<SourceMessage>> = HashMap::new();
        for (outcome, done) in outcomes.into_iter().zip(dones) {
            match done {
                Done::Amqp(msg) => match last.entry(msg.channel) {
                    Entry::Occupied(mut e) => {
                        if msg.delivery_tag > e.get().delivery_tag {
                            e.insert(msg);
                        }
                    }
                    Entry::Vacant(e) => {
                        e.insert(msg);
                    }
                },
                Done::Http(tx) => {
                    let _ = tx.send(outcome);
                }
            }
        }
        let acks = last.into_values().map(|msg| async move {
            if let Err(e) = msg.ack_up_to().await {
                self.counters.ack_failures.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, "ack failed; the broker will redeliver and the store will recognise it");
            }
        });
        join_all(acks).await;
        // Each event's `ingest` span ends here, acknowledged or answered.
        drop(spans);
    }

    /// Commits, retrying transient failures (the messages stay
    /// unacknowledged meanwhile) and splitting on permanent ones, so that
    /// an event the database refuses is parked alone (see [`Self::settle`])
    /// and the rest of its batch commits.
    async fn commit_all(&self, ingests: Vec<Ingest>) -> Vec<Outcome> {
        match self.attempt(&ingests).await {
            Ok(outcomes) => outcomes,
            Err(e) if ingests.len() > 1 => {
                warn!(error = %e, events = ingests.len(), "store refused a batch; committing its events one by one");
                let mut out = Vec::with_capacity(ingests.len());
                for one in ingests {
                    out.push(self.settle(one, None).await);
                }
                out
            }
            Err(e) => {
                let one = ingests.into_iter().next();
                match one {
                    Some(one) => vec![self.settle(one, Some(e)).await],
                    None => Vec::new(),
                }
            }
        }
    }

    /// Commits one batch, retrying transient failures with backoff: a
    /// database that is down or busy is waited for, for as long as it
    /// takes; a conflict ([`StoreError::is_conflict`]) is retried
    /// [`MAX_CONFLICTS`] times, then counts as permanent. Returns the
    /// permanent failure.
    async fn attempt(&self, ingests: &[Ingest]) -> Result<Vec<Outcome>, StoreError> {
        let mut backoff = Backoff::new(Duration::from_secs(10));
        let mut conflicts = 0;
        loop {
            match self.store.commit(ingests).await {
                Ok(outcomes) => return Ok(outcomes),
                Err(e) if e.is_transient() && !(e.is_conflict() && conflicts >= MAX_CONFLICTS) => {
                    conflicts += u32::from(e.is_conflict());
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, events = ingests.len(), retry_in_ms = backoff.delay.as_millis() as u64, "store commit failed; retrying");
                    backoff.wait().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Commits one event whatever the database refuses, trying in turn:
    /// the event itself (unless `refused` says how that went); a
    /// `store_refused` dead letter with its ids and headers; a minimal
    /// one (placeholders for the ids, the raw payload kept as bytes), so
    /// that no event can hold up the ones behind it. Only when even that
    /// is refused (the database takes no writes at all: permissions,
    /// schema) does it wait and start over, the message unacknowledged.
    async fn settle(&self, ingest: Ingest, mut refused: Option<StoreError>) -> Outcome {
        let mut backoff = Backoff::new(Duration::from_secs(30));
        loop {
            let e = match refused.take() {
                Some(e) => e,
                None => match self.attempt(std::slice::from_ref(&ingest)).await {
                    Ok(outcomes) => return first(outcomes),
                    Err(e) => e,
                },
            };
            error!(error = %e, "store refused an event; parking it");
            let e = match self.attempt(&[refused_letter(&ingest, &e)]).await {
                Ok(outcomes) => return first(outcomes),
                Err(e) => e,
            };
            error!(error = %e, "store refused the dead letter too; parking a minimal one");
            let e = match self.attempt(&[minimal_letter(&ingest, &e)]).await {
                Ok(outcomes) => return first(outcomes),
                Err(e) => e,
            };
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            error!(error = %e, retry_in_ms = backoff.delay.as_millis() as u64,
                "store refuses even a minimal dead letter; retrying");
            backoff.wait().await;
        }
    }
}

/// Conflicts retried before they count as permanent: a lost race clears
/// at the first retry, which sees the winner's rows.
const MAX_CONFLICTS: u32 = 5;

/// Reason code of an event the database refused.
const STORE_REFUSED: &str = "store_refused";

/// A source kept in a minimal dead letter only up to this length.
const MINIMAL_SOURCE_MAX: usize = 64;

/// Exponential backoff from 50 ms up to a cap.
struct Backoff {
    delay: Duration,
    max: Duration,
}

impl Backoff {
    const fn new(max: Duration) -> Self {
        Self {
            delay: Duration::from_millis(50),
            max,
        }
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(self.max);
    }
}

/// The one outcome of a one-event commit.
fn first(outcomes: Vec<Outcome>) -> Outcome {
    outcomes.into_iter().next().unwrap_or(Outcome::Duplicate)
}

/// The event as a `store_refused` dead letter, with everything it came
/// with (the store escapes what it must).
fn refused_letter(ing: &Ingest, e: &StoreError) -> Ingest {
    let (mapping, event_id) = match &ing.result {
        Ok(m) => (Some(m.mapping.clone()), Some(m.event_id.clone())),
        Err(r) => (r.mapping.clone(), r.event_id.clone()),
    };
    Ingest {
        result: Err(Rejection {
            code: STORE_REFUSED.into(),
            reason: format!("the store could not record this event: {e}"),
            mapping,
            event_id,
            detail: None,
        }),
        ..ing.clone()
    }
}

/// The least a dead letter can be: the raw payload (bytes, which any
/// database holds), the source when it is short, and fixed text naming
/// the database's error code. Nothing else the message carried is kept.
fn minimal_letter(ing: &Ingest, e: &StoreError) -> Ingest {
    let code: String = e
        .database_code()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(16)
        .collect();
    let code = if code.is_empty() {
        String::new()
    } else {
        format!(" (database error {code})")
    };
    let source = if ing.source.len() <= MINIMAL_SOURCE_MAX {
        ing.source.clone()
    } else {
        "(too long)".to_owned()
    };
    Ingest {
        source,
        queue: None,
        message_id: None,
        version_ts: None,
        received_at: ing.received_at,
        payload: ing.payload.clone(),
        headers: None,
        result: Err(Rejection {
            code: STORE_REFUSED.into(),
            reason: format!(
                "the store refused this event and its dead letter{code}; its ids were replaced \
                 and only its raw payload is kept"
            ),
            mapping: None,
            event_id: None,
            detail: None,
        }),
    }
}

/// The stable name of an outcome (metrics labels, span attributes).
const fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Stored => "stored",
        Outcome::Replaced => "replaced",
        Outcome::Duplicate => "duplicate",
        Outcome::Stale => "stale",
        Outcome::Superseded => "superseded",
        Outcome::Parked { .. } => "parked",
    }
}

/// A `commit` span for each event of a batch committed since `started`,
/// child of its `ingest` span, both with the outcome (and a parked
/// event's reason code).
fn commit_spans(
    spans: &mut [crate::telemetry::Span],
    outcomes: &[Outcome],
    started: std::time::SystemTime,
) {
    let events = spans.len() as u64;
    for (span, outcome) in spans.iter_mut().zip(outcomes) {
        if !span.is_recording() {
            continue;
        }
        let mut commit = span.child("commit", started);
        commit.set_count("kiungo.batch_events", events);
        for s in [&mut commit, &mut *span] {
            s.set("kiungo.outcome", outcome_name(outcome));
            if let Outcome::Parked { reason, .. } = outcome {
                s.fail(reason);
            }
        }
    }
}

/// Counts committed events into the metrics: consumed by transport,
/// committed by outcome, parked by reason. Counted per batch (one label
/// lookup per distinct label set, not per event): this runs on the
/// commit path.
fn count_outcomes(labels: &[(String, String)], outcomes: &[Outcome], dones: &[Done]) {
    let m = crate::metrics::metrics();
    let mut consumed: HashMap<(&str, &'static str), u64> = HashMap::new();
    let mut committed: HashMap<(&str, &str, &'static str), u64> = HashMap::new();
    let mut parked: HashMap<(&str, &str), u64> = HashMap::new();
    for (((source, mapping), outcome), done) in labels.iter().zip(outcomes).zip(dones) {
        let transport = match done {
            Done::Amqp(_) => "amqp",
            Done::Http(_) => "http",
        };
        *consumed.entry((source, transport)).or_default() += 1;
        if let Outcome::Parked { reason, .. } = outcome {
            *parked.entry((source, reason)).or_default() += 1;
        }
        let name = outcome_name(outcome);
        *committed.entry((source, mapping, name)).or_default() += 1;
    }
    for ((source, transport), n) in consumed {
        m.consumed
            .get_or_create(&crate::metrics::ConsumedLabels {
                source: m.source_label(source),
                transport: transport.to_owned(),
            })
            .inc_by(n);
    }
    let now = crate::store::now_ms();
    for ((source, reason), n) in parked {
        m.park_many("ingest", source, reason, n);
        crate::signals::signals().parked_at_ingest(&m.source_label(source), reason, n, now);
    }
    for ((source, mapping, outcome), n) in committed {
        m.ingested
            .get_or_create(&crate::metrics::IngestLabels {
                source: m.source_label(source),
                mapping: m.mapping_label(mapping),
                outcome: outcome.to_owned(),
            })
            .inc_by(n);
        m.add_total(&format!("ingest.{outcome}"), n);
    }
    m.add_total("ingest.received", outcomes.len() as u64);
}
