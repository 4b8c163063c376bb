//! The FHIR outbox worker: claim due bundles, send each as a transaction,
//! record the result.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::sync::watch;
use tracing::{Instrument, debug, warn};

use super::circuit::Circuit;
use super::retry::{Clock, NextStep, RetryParams, jitter_unit};
use super::{PassReport, SinkFailure};
use crate::store::{Delivery, OutboxItem, Store, StoreError};

/// Where bundles go: a FHIR server (or a fake in tests).
pub trait FhirDestination: Send + Sync + 'static {
    /// Sends one transaction bundle with a W3C `traceparent`; returns the
    /// `Type/id` of each entry.
    fn transaction(
        &self,
        bundle: &str,
        traceparent: Option<&str>,
    ) -> impl Future<Output = Result<Vec<String>, SinkFailure>> + Send;
}

/// The worker.
#[derive(Debug)]
pub struct FhirWorker<D> {
    /// The store.
    pub store: Store,
    /// The destination.
    pub destination: D,
    /// Retry policy.
    pub retry: RetryParams,
    /// Circuit breaker.
    pub circuit: Circuit,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Bundles claimed (and sent concurrently) per pass.
    pub batch: i64,
    /// How long a claim holds before another worker may take it over.
    pub lease: Duration,
    /// Wait between passes when nothing is due.
    pub idle: Duration,
    /// Woken by the committer when new bundles are stored, so that a quiet
    /// worker does not wait out `idle` (replicas without it poll).
    pub wake: Option<Arc<tokio::sync::Notify>>,
}

impl<D: FhirDestination> FhirWorker<D> {
    /// One pass: claim what is due and deliver it.
    pub async fn run_once(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now_ms();
        let lease = super::ms(self.lease);
        let claimed = super::claim_through(&self.circuit, now, |probe| {
            // A probe risks one bundle on a server that may still be down.
            let limit = if probe { 1 } else { self.batch };
            self.store.claim_fhir(limit, now, lease)
        })
        .await?;
        let Some(items) = claimed else {
            super::report_health(
                &self.store,
                "fhir",
                &self.circuit,
                super::PassHealth::default(),
                now,
            )
            .await;
            return Ok(PassReport {
                held: true,
                ..PassReport::default()
            });
        };
        let mut report = PassReport {
            claimed: items.len(),
            ..PassReport::default()
        };
        if items.is_empty() {
            return Ok(report);
        }
        let results = join_all(items.iter().map(|item| self.deliver(item))).await;
        let m = crate::metrics::metrics();
        let now = self.clock.now_ms();
        let mut health = super::PassHealth::default();
        for (item, result) in items.iter().zip(&results) {
            let outcome = match result {
                Delivery::Delivered { .. } => {
                    report.delivered += 1;
                    health.success_at = Some(now);
                    m.observe_latency("fhir", (now - item.created_at) as f64 / 1000.0);
                    "delivered"
                }
                Delivery::Retry { error, .. } => {
                    report.retried += 1;
                    health.error = Some(error.clone());
                    "retried"
                }
                Delivery::Dead { reason_code, error } => {
                    report.parked += 1;
                    health.error = Some(error.clone());
                    m.park("fhir", &item.source, reason_code);
                    "parked"
                }
            };
            m.delivery("fhir", &item.source, &item.mapping, outcome);
        }
        let recorded: Vec<(OutboxItem, Delivery)> = items.into_iter().zip(results).collect();
        self.store.record_fhir_many(&recorded, now).await?;
        super::report_health(&self.store, "fhir", &self.circuit, health, now).await;
        Ok(report)
    }

    async fn deliver(&self, item: &OutboxItem) -> Delivery {
        let traceparent = item.traceparent.as_deref().map(crate::trace::child);
        let span = tracing::debug_span!(
            "deliver",
            destination = "fhir",
            outbox = item.id,
            source = %item.source,
            event_id = %item.event_id,
            trace_id = crate::trace::trace_id(traceparent.as_deref().unwrap_or("")),
        );
        let started = std::time::Instant::now();
        let sent = self
            .destination
            .transaction(&item.bundle, traceparent.as_deref())
            .instrument(span.clone())
            .await;
        let _entered = span.enter();
        crate::metrics::metrics().observe_request("fhir", started.elapsed().as_secs_f64());
        match sent {
            Ok(server_ids) => {
                self.circuit.success();
                Delivery::Delivered { server_ids }
            }
            Err(f) if f.retryable => {
                let now = self.clock.now_ms();
                self.circuit.failure(now);
                let attempt = u32::try_from(item.attempts + 1).unwrap_or(u32::MAX);
                match self
                    .retry
                    .next(attempt, item.created_at, now, f.retry_after, jitter_unit())
                {
                    NextStep::RetryAt(at) => {
                        debug!(outbox = item.id, attempt, error = %f.message, "fhir delivery failed; will retry");
                        Delivery::Retry {
                            next_attempt_at: at,
                            error: f.message,
                        }
                    }
                    NextStep::GiveUp => {
                        warn!(outbox = item.id, attempt, error = %f.message, "fhir delivery out of retries; parked");
                        Delivery::Dead {
                            reason_code: "fhir_retries_exhausted".into(),
                            error: format!("gave up after {attempt} attempts: {}", f.message),
                        }
                    }
                }
            }
            Err(f) => {
                // The server answered: it is up, the bundle is the problem.
                self.circuit.success();
                warn!(outbox = item.id, error = %f.message, "fhir server rejected a bundle; parked");
                Delivery::Dead {
                    reason_code: "fhir_rejected".into(),
                    error: f.message,
                }
            }
        }
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        super::run_passes(
            "fhir",
            || self.run_once(),
            self.idle,
            self.wake.as_deref(),
            shutdown,
        )
        .await;
    }
}
