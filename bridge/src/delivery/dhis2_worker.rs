//! The DHIS2 worker: claim dirty totals (once settled), recompute
//! them from the stored contributions, push them in one `dataValueSets`
//! request, record per value what DHIS2 said.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use super::circuit::Circuit;
use super::retry::{Clock, NextStep, RetryParams, jitter_unit};
use super::warn_limit::{failure_class, limiter};
use super::{PassReport, SinkFailure};
use crate::store::{DirtyTotal, Store, StoreError, TotalKey, TotalResult};

/// What DHIS2 said about one push.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dhis2Push {
    /// The whole batch was refused (E7600–E7604, or status ERROR): code
    /// and DHIS2's message.
    pub batch_rejected: Option<(String, String)>,
    /// Values refused one by one, by index in the request: code and
    /// DHIS2's message. The others were stored.
    pub rejected: HashMap<usize, (String, String)>,
}

/// Where totals go: DHIS2 (or a fake in tests).
pub trait Dhis2Destination: Send + Sync + 'static {
    /// Pushes absolute values, in order.
    fn push(
        &self,
        values: &[(TotalKey, String)],
    ) -> impl Future<Output = Result<Dhis2Push, SinkFailure>> + Send;
}

/// One WARN line per failure class of a pass (retried: by HTTP status or
/// transport; parked: by DHIS2's code), rate-limited per destination and
/// reason. Messages are the redacted ones stored as reasons: no event
/// values.
fn warn_failures(results: &[(DirtyTotal, TotalResult)], now: i64) {
    let mut classes: BTreeMap<(&'static str, String), (usize, &str)> = BTreeMap::new();
    for (_, r) in results {
        let (kind, reason, message) = match r {
            TotalResult::Pushed => continue,
            TotalResult::Retry { error, .. } => ("retried", failure_class(error), error.as_str()),
            TotalResult::Rejected { code, message } => ("parked", code.clone(), message.as_str()),
        };
        classes.entry((kind, reason)).or_insert((0, message)).0 += 1;
    }
    for ((kind, reason), (values, message)) in classes {
        let Some(suppressed) = limiter().allow("dhis2", &reason, now) else {
            continue;
        };
        if kind == "retried" {
            warn!(destination = "dhis2", %reason, values, suppressed, error = %message, "dhis2 push failed; values will be retried");
        } else {
            warn!(destination = "dhis2", %reason, values, suppressed, error = %message, "dhis2 refused values; parked");
        }
    }
}

/// The worker.
#[derive(Debug)]
pub struct Dhis2Worker<D> {
    /// The store.
    pub store: Store,
    /// The destination.
    pub destination: D,
    /// Retry policy.
    pub retry: RetryParams,
    /// Circuit breaker (shared with the completeness pass).
    pub circuit: Arc<Circuit>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Values per request.
    pub batch: i64,
    /// How long a total must stay unchanged before it is pushed (a burst
    /// of events goes out as one value).
    pub delay: Duration,
    /// How long after its first change a total is pushed at the latest,
    /// while changes keep coming (during a backlog each total then goes
    /// out once per `max_delay`, not once per change).
    pub max_delay: Duration,
    /// Claim lease.
    pub lease: Duration,
    /// Wait between passes when nothing is due.
    pub idle: Duration,
    /// Note where the values DHIS2 accepted changed, with each push's
    /// result, for the completeness pass (`destinations.dhis2.completeness`
    /// configured).
    pub completeness: bool,
}

impl<D: Dhis2Destination> Dhis2Worker<D> {
    /// One pass: claim due totals and push them.
    pub async fn run_once(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now_ms();
        let claimed = super::claim_through(&self.circuit, now, |_probe| {
            self.store.claim_totals(
                self.batch,
                now,
                super::ms(self.delay),
                super::ms(self.max_delay),
                super::ms(self.lease),
            )
        })
        .await?;
        let Some(totals) = claimed else {
            super::report_health(
                &self.store,
                "dhis2",
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
            claimed: totals.len(),
            ..PassReport::default()
        };
        if totals.is_empty() {
            return Ok(report);
        }
        // Withdrawn totals DHIS2 holds no value of: nothing to delete.
        // They are recorded with the pushed ones, in the same write.
        let (quiet, totals): (Vec<DirtyTotal>, Vec<DirtyTotal>) =
            totals.into_iter().partition(|t| t.nothing_to_send);
        let unsent: Vec<(DirtyTotal, TotalResult)> = quiet
            .into_iter()
            .map(|t| (t, TotalResult::Pushed))
            .collect();
        report.withdrawn_unsent = unsent.len();
        if totals.is_empty() {
            self.store
                .finish_totals_noting(&unsent, now, self.completeness)
                .await?;
            return Ok(report);
        }
        let values: Vec<(TotalKey, String)> = totals
            .iter()
            .map(|t| (t.key.clone(), t.value.clone()))
            .collect();
        let started = std::time::Instant::now();
        let pushed = self.destination.push(&values).await;
        crate::metrics::metrics().observe_request("dhis2", started.elapsed().as_secs_f64());
        let mut results: Vec<(DirtyTotal, TotalResult)> = match pushed {
            Ok(push) => {
                self.circuit.success();
                totals
                    .into_iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let r = match (&push.batch_rejected, push.rejected.get(&i)) {
                            (Some((code, message)), _) | (None, Some((code, message))) => {
                                TotalResult::Rejected {
                                    code: code.clone(),
                                    message: message.clone(),
                                }
                            }
                            (None, None) => TotalResult::Pushed,
                        };
                        (t, r)
                    })
                    .collect()
            }
            Err(f) if f.retryable => {
                let now = self.clock.now_ms();
                self.circuit.failure(now);
                totals
                    .into_iter()
                    .map(|t| {
                        let attempt = u32::try_from(t.attempts + 1).unwrap_or(u32::MAX);
                        let r = match self.retry.next(
                            attempt,
                            t.marked_at,
                            now,
                            f.retry_after,
                            jitter_unit(),
                        ) {
                            NextStep::RetryAt(at) => TotalResult::Retry {
                                next_attempt_at: at,
                                error: f.message.clone(),
                            },
                            NextStep::GiveUp => TotalResult::Rejected {
                                code: "dhis2_retries_exhausted".into(),
                                message: format!("gave up after {attempt} attempts: {}", f.message),
                            },
                        };
                        (t, r)
                    })
                    .collect()
            }
            Err(f) => {
                self.circuit.success();
                totals
                    .into_iter()
                    .map(|t| {
                        (
                            t,
                            TotalResult::Rejected {
                                code: "dhis2_rejected".into(),
                                message: f.message.clone(),
                            },
                        )
                    })
                    .collect()
            }
        };
        let m = crate::metrics::metrics();
        let now = self.clock.now_ms();
        let mut health = super::PassHealth::default();
        for (t, r) in &results {
            let outcome = match r {
                TotalResult::Pushed => {
                    report.delivered += 1;
                    health.success_at = Some(now);
                    m.observe_latency("dhis2", (now - t.marked_at) as f64 / 1000.0);
                    "delivered"
                }
                TotalResult::Retry { error, .. } => {
                    report.retried += 1;
                    health.error = Some(error.clone());
                    "retried"
                }
                TotalResult::Rejected { code, message } => {
                    report.parked += 1;
                    health.error = Some(message.clone());
                    m.park("dhis2", &t.source, code);
                    "parked"
                }
            };
            m.delivery("dhis2", &t.source, &t.mapping, outcome);
        }
        results.extend(unsent);
        self.store
            .finish_totals_noting(&results, now, self.completeness)
            .await?;
        warn_failures(&results, now);
        super::report_health(&self.store, "dhis2", &self.circuit, health, now).await;
        Ok(report)
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        super::run_passes("dhis2", || self.run_once(), self.idle, None, shutdown).await;
    }
}
