//! The DHIS2 preflight at start-up, retried until it gets an answer: a
//! DHIS2 that answers 503 while Kiungo starts (both restarted together)
//! no longer leaves `/v1/preflight` showing that 503 for the life of the
//! process. Each failed attempt is remembered with the time of the next
//! one; the retry schedule is the destination's (`retry`), and past its
//! maximum age attempts go on every `max_delay`.
//!
//! One preflight is two checks: the static one of the mappings
//! ([`super::static_preflight`]: credentials, calendar, every reference
//! the mappings name, even with an empty store) and the references found
//! in stored values.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kiungo_connectors::dhis2::PreflightReport;
use tokio::sync::watch;
use tracing::warn;

use super::SinkFailure;
use super::retry::{Clock, NextStep, RetryParams, jitter_unit};
use super::sinks::{log_preflight, remember_preflight};
use super::static_preflight::StaticReport;

/// What one preflight found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// The references found in stored values.
    pub stored: PreflightReport,
    /// The static check of the mappings, when it ran.
    pub static_report: Option<StaticReport>,
}

/// Runs `check` until it returns a report (logged and kept for
/// `/v1/preflight` with the number of attempts) or `shutdown` turns true.
/// Returns the attempts made.
pub async fn until_answered<F, Fut>(
    mut check: F,
    retry: RetryParams,
    clock: Arc<dyn Clock>,
    mut shutdown: watch::Receiver<bool>,
) -> u32
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Answer, SinkFailure>>,
{
    let first = clock.now_ms();
    let mut attempt: u32 = 0;
    loop {
        attempt = attempt.saturating_add(1);
        let failure = match check().await {
            Ok(report) => {
                log_preflight(&report, attempt);
                return attempt;
            }
            Err(f) => f,
        };
        let now = clock.now_ms();
        let wait = match retry.next(attempt, first, now, failure.retry_after, jitter_unit()) {
            NextStep::RetryAt(at) => Duration::from_millis(u64::try_from(at - now).unwrap_or(0)),
            NextStep::GiveUp => retry.max_delay,
        };
        let next_at = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX));
        remember_preflight(serde_json::json!({
            "checked_at_ms": now,
            "error": failure.message,
            "attempts": attempt,
            "next_attempt_at_ms": next_at,
        }));
        warn!(error = %failure.message, attempt, retry_in_ms = next_at - now,
            "dhis2 preflight failed; trying again (references are checked at each push meanwhile)");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::delivery::retry::ManualClock;

    /// Two 503s, then an answer: three attempts on the schedule (the test
    /// schedule's waits are below half a second; nothing here is timed),
    /// and `/v1/preflight` ends on the answer, with the attempts it took.
    #[tokio::test]
    async fn a_failed_preflight_is_retried_until_answered() {
        let answers = Mutex::new(vec![
            Ok(Answer::default()),
            Err(SinkFailure {
                retryable: true,
                retry_after: None,
                message: "dhis2 answered HTTP 503 Service Unavailable: empty body".into(),
            }),
            Err(SinkFailure {
                retryable: true,
                retry_after: None,
                message: "dhis2 answered HTTP 503 Service Unavailable: empty body".into(),
            }),
        ]);
        let (_tx, rx) = watch::channel(false);
        let attempts = until_answered(
            || {
                let next = answers.lock().expect("lock").pop().expect("an answer");
                async move { next }
            },
            RetryParams::for_test(),
            Arc::new(ManualClock::at(1_000)),
            rx,
        )
        .await;
        assert_eq!(attempts, 3);
        let last = crate::delivery::sinks::last_preflight().expect("remembered");
        assert_eq!(last["attempts"], 3, "{last}");
        assert!(last.get("error").is_none(), "{last}");
    }
}
