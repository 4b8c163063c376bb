//! Delivery: outbox workers that send stored bundles to the FHIR server
//! and push recomputed DHIS2 totals, with the retry policy, the circuit
//! breaker and dead letters.
//!
//! **The guarantee**: every stored output is delivered once in effect or
//! parked with the server's reason. Transient failures (transport errors,
//! timeouts, 408, 429, 5xx) are retried on the stored schedule until the
//! maximum age; permanent ones (other 4xx, DHIS2 conflicts) are parked at
//! once. Nothing is retried forever, nothing is dropped. FHIR requests
//! are idempotent (PUT by deterministic id, conditional create), DHIS2
//! values absolute totals, so a delivery repeated after a crash changes
//! nothing.

pub mod circuit;
pub mod completeness;
pub mod completeness_preflight;
mod completeness_sink;
pub mod config;
mod dhis2_worker;
mod fhir_batch;
mod fhir_worker;
pub mod preflight;
pub mod retry;
pub mod sinks;
mod start;
pub mod static_preflight;
pub mod warn_limit;
pub mod withdrawal;

use std::time::Duration;

pub use completeness::{
    CompletenessDestination, CompletenessWorker, CompletionAnswer, DataSetCache, DataSetMeta,
};
pub use dhis2_worker::{Dhis2Destination, Dhis2Push, Dhis2Worker};
pub use fhir_worker::{FhirDestination, FhirWorker};
pub use start::{DeliveryStartError, start};

/// A failed request, as the worker needs to see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkFailure {
    /// Whether trying again later may succeed.
    pub retryable: bool,
    /// The server's `Retry-After`, if any.
    pub retry_after: Option<Duration>,
    /// What went wrong, with the server's own words (never the payload).
    pub message: String,
}

/// What one worker pass did, so that tests can drain deterministically.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Items claimed.
    pub claimed: usize,
    /// Delivered.
    pub delivered: usize,
    /// Scheduled for another attempt.
    pub retried: usize,
    /// Parked as dead letters.
    pub parked: usize,
    /// Nothing sent because the circuit is open.
    pub held: bool,
    /// DHIS2 totals withdrawn (no contribution left) that DHIS2 holds no
    /// value of: recorded as done without a request.
    pub withdrawn_unsent: usize,
}

/// Runs `pass` until `shutdown` turns true: again at once after a pass that
/// claimed work, after `idle` (or a `wake`) when there was none, after five
/// times `idle` when the store failed.
async fn run_passes<F, Fut>(
    worker: &'static str,
    mut pass: F,
    idle: Duration,
    wake: Option<&tokio::sync::Notify>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<PassReport, crate::store::StoreError>>,
{
    loop {
        let wait = match pass().await {
            Ok(r) if r.claimed > 0 => Duration::ZERO,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(error = %e, worker, "store error; retrying");
                idle * 5
            }
        };
        if *shutdown.borrow() {
            return;
        }
        if !wait.is_zero() {
            let woken = async {
                match wake {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = woken => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Milliseconds of a duration, for the store's timestamps.
fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Claims work through a destination's circuit breaker: `None` (nothing
/// claimed, nothing sent) while the circuit is open. When it is half-open,
/// `claim` is told that this pass is the probe; if the claim fails no probe
/// went out, so the circuit opens again for another cool-down, and if there
/// is nothing to probe with, it closes.
async fn claim_through<T, F, Fut>(
    circuit: &circuit::Circuit,
    now: i64,
    claim: F,
) -> Result<Option<Vec<T>>, crate::store::StoreError>
where
    F: FnOnce(bool) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>>,
{
    if !circuit.allow(now) {
        return Ok(None);
    }
    let probe = matches!(circuit.state(), circuit::CircuitState::HalfOpen);
    match claim(probe).await {
        Err(e) => {
            if probe {
                circuit.failure(now);
            }
            Err(e)
        }
        Ok(items) => {
            if probe && items.is_empty() {
                circuit.success();
            }
            Ok(Some(items))
        }
    }
}

/// What a pass saw of its destination's health.
#[derive(Debug, Default)]
struct PassHealth {
    /// When something was delivered, if anything was.
    success_at: Option<i64>,
    /// The last failure's message (already cut of client data).
    error: Option<String>,
}

/// Publishes a pass's view of its destination: the circuit gauge, and the
/// `destinations` row that the admin API reads (shared by replicas). A
/// store error here is logged, never fails the pass.
async fn report_health(
    store: &crate::store::Store,
    destination: &str,
    circuit: &circuit::Circuit,
    health: PassHealth,
    now: i64,
) {
    let state = circuit.state();
    crate::metrics::metrics().set_circuit(destination, state);
    crate::signals::signals().circuit(destination, state, now);
    let update = crate::store::DestinationUpdate {
        circuit: state.as_str(),
        success_at: health.success_at,
        error: health.error.as_deref(),
        now,
    };
    if let Err(e) = store.record_destination(destination, &update).await {
        tracing::debug!(error = %e, destination, "cannot record destination health");
    }
}
