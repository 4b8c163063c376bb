//! Group commit: one task owns the store's write path, gathers work into
//! batches (up to `max_events`, or whatever arrived within `max_wait` of
//! the first), commits each batch in one transaction, then acknowledges.
//!
//! A transient store failure (database down, busy, a race lost to another
//! replica) retries the same batch with backoff, holding its messages
//! unacknowledged. A permanent failure splits the batch so that one bad
//! event cannot block the others; an event that fails alone is parked as
//! `store_rejected`.

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
        let (ingests, dones): (Vec<Ingest>, Vec<Done>) =
            batch.into_iter().map(|w| (w.ingest, w.done)).unzip();
        let started = std::time::Instant::now();
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
    }

    /// Commits, retrying transient failures forever (the messages stay
    /// unacknowledged meanwhile) and splitting on permanent ones.
    async fn commit_all(&self, ingests: Vec<Ingest>) -> Vec<Outcome> {
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.commit(&ingests).await {
                Ok(outcomes) => return outcomes,
                Err(e) if e.is_transient() => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    warn!(error = %e, events = ingests.len(), retry_in_ms = delay.as_millis() as u64, "store commit failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) if ingests.len() > 1 => {
                    warn!(error = %e, events = ingests.len(), "store rejected a batch; committing its events one by one");
                    let mut out = Vec::with_capacity(ingests.len());
                    for one in ingests {
                        out.extend(Box::pin(self.commit_all(vec![one])).await);
                    }
                    return out;
                }
                Err(e) => return self.park_rejected(ingests, &e).await,
            }
        }
    }

    async fn park_rejected(&self, mut ingests: Vec<Ingest>, e: &StoreError) -> Vec<Outcome> {
        error!(error = %e, "store rejected an event; parking it");
        for ing in &mut ingests {
            let (mapping, event_id) = match &ing.result {
                Ok(m) => (Some(m.mapping.clone()), Some(m.event_id.clone())),
                Err(r) => (r.mapping.clone(), r.event_id.clone()),
            };
            ing.result = Err(Rejection {
                code: "store_rejected".into(),
                reason: format!("the store could not record this event: {e}"),
                mapping,
                event_id,
            });
        }
        let mut delay = Duration::from_millis(50);
        loop {
            match self.store.commit(&ingests).await {
                Ok(outcomes) => return outcomes,
                Err(e) => {
                    self.counters.retries.fetch_add(1, Ordering::Relaxed);
                    error!(error = %e, "cannot park an event the store rejected; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
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
        let name = match outcome {
            Outcome::Stored => "stored",
            Outcome::Replaced => "replaced",
            Outcome::Duplicate => "duplicate",
            Outcome::Stale => "stale",
            Outcome::Superseded => "superseded",
            Outcome::Parked { reason, .. } => {
                *parked.entry((source, reason)).or_default() += 1;
                "parked"
            }
        };
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
    for ((source, reason), n) in parked {
        m.park_many("ingest", source, reason, n);
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
