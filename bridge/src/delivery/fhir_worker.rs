//! The FHIR outbox worker: claim due bundles, send each as a transaction
//! (or several events' bundles as one, `events_per_transaction`), record
//! the result.

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
use crate::telemetry::outgoing_traceparent;

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

/// A `deliver` span's outcome: `delivered`, `retry` or `parked`, with
/// the failure's class (`http_503`, `transport`) or the parking reason.
fn record(span: &mut crate::telemetry::Span, delivery: &Delivery) {
    match delivery {
        Delivery::Delivered { .. } => span.set("kiungo.outcome", "delivered"),
        Delivery::DeliveredWithdrawalRefused { .. } => {
            span.set("kiungo.outcome", "delivered");
            span.set("kiungo.reason", "withdrawal_refused");
        }
        Delivery::Retry { error, .. } => {
            span.set("kiungo.outcome", "retry");
            span.fail(&super::warn_limit::failure_class(error));
        }
        Delivery::Dead { reason_code, .. } => {
            span.set("kiungo.outcome", "parked");
            span.fail(reason_code);
        }
    }
}

/// One WARN line per failure class of a pass (retried: by HTTP status or
/// transport; parked: by reason code), rate-limited per reason
/// (`crate::signals`): codes and counts, no server text.
fn warn_failures(results: &[Delivery], now: i64) {
    use super::warn_limit::failure_class;
    use crate::signals::FhirFailure;
    let mut classes: std::collections::BTreeMap<(bool, String, String), u64> =
        std::collections::BTreeMap::new();
    for r in results {
        let key = match r {
            Delivery::Retry { error, .. } => (false, failure_class(error), String::new()),
            Delivery::Dead { reason_code, error } => {
                (true, reason_code.clone(), failure_class(error))
            }
            Delivery::Delivered { .. } | Delivery::DeliveredWithdrawalRefused { .. } => continue,
        };
        *classes.entry(key).or_default() += 1;
    }
    for ((parked, reason, status), n) in classes {
        let kind = if parked {
            FhirFailure::Parked { status: &status }
        } else {
            FhirFailure::Retried
        };
        crate::signals::signals().fhir_failed(kind, &reason, n, now);
    }
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
    /// Transactions sent concurrently per pass.
    pub batch: i64,
    /// Events per transaction (1: each event's bundle alone). With more,
    /// a pass claims `batch × per_transaction` bundles and sends them as
    /// at most `batch` transactions (see `fhir_batch`).
    pub per_transaction: usize,
    /// How long a claim holds before another worker may take it over.
    pub lease: Duration,
    /// How resources an edit no longer produces are withdrawn.
    pub withdraw: super::withdrawal::WithdrawMode,
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
            let per = i64::try_from(self.per_transaction.max(1)).unwrap_or(1);
            let limit = if probe {
                1
            } else {
                self.batch.saturating_mul(per)
            };
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
        let results = self.deliver_all(&items).await;
        let m = crate::metrics::metrics();
        let now = self.clock.now_ms();
        let mut health = super::PassHealth::default();
        for (item, result) in items.iter().zip(&results) {
            let outcome = match result {
                Delivery::DeliveredWithdrawalRefused { error, .. } => {
                    report.delivered += 1;
                    health.success_at = Some(now);
                    m.park("fhir", &item.source, "fhir_withdrawal_refused");
                    warn!(
                        outbox = item.id,
                        source = %item.source,
                        error = %error,
                        "fhir server refused to withdraw what an earlier version placed; \
                         the new version was delivered without it and the withdrawal parked"
                    );
                    "delivered"
                }
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
        warn_failures(&results, now);
        let mut recorded: Vec<(OutboxItem, Delivery)> = items.into_iter().zip(results).collect();
        if self.withdraw == super::withdrawal::WithdrawMode::EnteredInError {
            for (item, result) in &mut recorded {
                if matches!(
                    result,
                    Delivery::Delivered { .. } | Delivery::DeliveredWithdrawalRefused { .. }
                ) && !item.puts.is_empty()
                {
                    item.marked_bodies = super::withdrawal::marked_bodies(&item.bundle);
                }
            }
        }
        self.store.record_fhir_many(&recorded, now).await?;
        super::report_health(&self.store, "fhir", &self.circuit, health, now).await;
        Ok(report)
    }

    /// Delivers every claimed bundle, one result per item in order: each
    /// alone, or grouped into transactions of several events.
    async fn deliver_all(&self, items: &[OutboxItem]) -> Vec<Delivery> {
        if self.per_transaction <= 1 || items.len() == 1 {
            return join_all(items.iter().map(|item| self.deliver(item))).await;
        }
        // A bundle that withdraws what earlier versions placed goes alone:
        // its withdrawals are its own, refused or not.
        let parsed: Vec<Option<super::fhir_batch::Parsed>> = items
            .iter()
            .map(|i| {
                if i.withdrawals().next().is_some() {
                    None
                } else {
                    super::fhir_batch::parse(&i.bundle)
                }
            })
            .collect();
        let groups = super::fhir_batch::group(&parsed, self.per_transaction);
        let sent = join_all(groups.iter().map(|members| {
            let group: Vec<(&OutboxItem, Option<&super::fhir_batch::Parsed>)> = members
                .iter()
                .map(|&i| (&items[i], parsed[i].as_ref()))
                .collect();
            self.deliver_group(group)
        }))
        .await;
        let mut results: Vec<Option<Delivery>> = vec![None; items.len()];
        for (members, deliveries) in groups.iter().zip(sent) {
            for (&i, d) in members.iter().zip(deliveries) {
                results[i] = Some(d);
            }
        }
        results
            .into_iter()
            .map(|d| {
                d.unwrap_or_else(|| Delivery::Retry {
                    next_attempt_at: self.clock.now_ms(),
                    error: "not sent in this pass".into(),
                })
            })
            .collect()
    }

    /// Sends a group's bundles as one transaction. A transient failure
    /// retries each event on its own schedule; a refusal (the server
    /// rejects the whole transaction for one bad entry) sends each event
    /// alone, so that only the refused one is parked.
    async fn deliver_group(
        &self,
        group: Vec<(&OutboxItem, Option<&super::fhir_batch::Parsed>)>,
    ) -> Vec<Delivery> {
        let parsed: Option<Vec<&super::fhir_batch::Parsed>> =
            group.iter().map(|(_, p)| *p).collect();
        let (Some(parsed), true) = (parsed, group.len() > 1) else {
            return join_all(group.iter().map(|(item, _)| self.deliver(item))).await;
        };
        let combined = super::fhir_batch::combine(&parsed);
        let first = group[0].0;
        // One request, one span: in the first event's trace (whose
        // `traceparent` the request carries), with the others counted.
        let mut otel = crate::telemetry::deliver(first.traceparent.as_deref(), "fhir");
        otel.set_count("kiungo.events", group.len() as u64);
        let traceparent = Some(outgoing_traceparent(&otel, first.traceparent.as_deref()));
        let span = tracing::debug_span!(
            "deliver",
            destination = "fhir",
            outbox = first.id,
            events = group.len(),
            trace_id = crate::trace::trace_id(traceparent.as_deref().unwrap_or("")),
        );
        let started = std::time::Instant::now();
        let sent = self
            .destination
            .transaction(&combined.bundle, traceparent.as_deref())
            .instrument(span)
            .await;
        crate::metrics::metrics().observe_request("fhir", started.elapsed().as_secs_f64());
        match &sent {
            Ok(_) => otel.set("kiungo.outcome", "delivered"),
            Err(f) if f.retryable => {
                otel.set("kiungo.outcome", "retry");
                otel.fail(&super::warn_limit::failure_class(&f.message));
            }
            Err(f) => {
                otel.set("kiungo.outcome", "split");
                otel.fail(&super::warn_limit::failure_class(&f.message));
            }
        }
        otel.end();
        match sent {
            Ok(server_ids) => {
                self.circuit.success();
                combined
                    .positions
                    .iter()
                    .map(|at| Delivery::Delivered {
                        server_ids: at
                            .iter()
                            .filter_map(|p| server_ids.get(*p).cloned())
                            .collect(),
                    })
                    .collect()
            }
            Err(f) if f.retryable => {
                // One failed request: the circuit counts it once.
                self.circuit.failure(self.clock.now_ms());
                group
                    .iter()
                    .map(|(item, _)| self.retry_step(item, f.clone()))
                    .collect()
            }
            Err(f) => {
                self.circuit.success();
                debug!(
                    events = group.len(),
                    error = %f.message,
                    "fhir server refused a transaction of several events; sending each alone"
                );
                join_all(group.iter().map(|(item, _)| self.deliver(item))).await
            }
        }
    }

    /// Sends one event's bundle, in a `deliver` span of its trace.
    async fn deliver(&self, item: &OutboxItem) -> Delivery {
        if super::withdrawal::with_withdrawals(item).is_none()
            && super::withdrawal::is_empty(&item.bundle)
        {
            // An edit's bundle that only withdraws, with nothing placed to
            // withdraw: nothing to send.
            return Delivery::Delivered {
                server_ids: Vec::new(),
            };
        }
        let mut otel = crate::telemetry::deliver(item.traceparent.as_deref(), "fhir");
        otel.set("kiungo.source", &item.source);
        otel.set("kiungo.mapping", &item.mapping);
        let traceparent = outgoing_traceparent(&otel, item.traceparent.as_deref());
        let delivery = self.deliver_with(item, Some(traceparent)).await;
        record(&mut otel, &delivery);
        delivery
    }

    async fn deliver_with(&self, item: &OutboxItem, traceparent: Option<String>) -> Delivery {
        let span = tracing::debug_span!(
            "deliver",
            destination = "fhir",
            outbox = item.id,
            source = %item.source,
            event_id = %item.event_id,
            trace_id = crate::trace::trace_id(traceparent.as_deref().unwrap_or("")),
        );
        let with = super::withdrawal::with_withdrawals(item);
        let own_empty = super::withdrawal::is_empty(&item.bundle);
        let started = std::time::Instant::now();
        let sent = self
            .destination
            .transaction(
                with.as_deref().unwrap_or(&item.bundle),
                traceparent.as_deref(),
            )
            .instrument(span.clone())
            .await;
        crate::metrics::metrics().observe_request("fhir", started.elapsed().as_secs_f64());
        match sent {
            Ok(server_ids) => {
                let _entered = span.enter();
                self.circuit.success();
                Delivery::Delivered { server_ids }
            }
            Err(refused) if with.is_some() && !refused.retryable => {
                // The server answered: it is up. Refused with the
                // withdrawals (a resource referenced elsewhere: 409, 412):
                // the new version goes alone and the withdrawal is parked.
                self.circuit.success();
                if own_empty {
                    return Delivery::DeliveredWithdrawalRefused {
                        server_ids: Vec::new(),
                        error: refused.message,
                    };
                }
                let again = self
                    .destination
                    .transaction(&item.bundle, traceparent.as_deref())
                    .instrument(span.clone())
                    .await;
                let _entered = span.enter();
                match again {
                    Ok(server_ids) => Delivery::DeliveredWithdrawalRefused {
                        server_ids,
                        error: refused.message,
                    },
                    Err(f) => self.failed(item, f),
                }
            }
            Err(f) => {
                let _entered = span.enter();
                self.failed(item, f)
            }
        }
    }

    /// What a failed send means for one bundle: retry on its schedule,
    /// give up, or park it (the server answered: the bundle is the
    /// problem).
    fn failed(&self, item: &OutboxItem, f: SinkFailure) -> Delivery {
        if f.retryable {
            self.circuit.failure(self.clock.now_ms());
            return self.retry_step(item, f);
        }
        // The server answered: it is up, the bundle is the problem.
        self.circuit.success();
        warn!(outbox = item.id, error = %f.message, "fhir server rejected a bundle; parked");
        Delivery::Dead {
            reason_code: "fhir_rejected".into(),
            error: f.message,
        }
    }

    /// The retry schedule's answer for one bundle after a transient
    /// failure (the circuit already counted it).
    fn retry_step(&self, item: &OutboxItem, f: SinkFailure) -> Delivery {
        let now = self.clock.now_ms();
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
