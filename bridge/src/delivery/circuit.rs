//! A per-destination circuit breaker: after `threshold` consecutive
//! transient failures the circuit opens and no request is sent for
//! `cool_down`; then one probe goes out (half-open): success closes the
//! circuit, failure opens it again. Deliveries held back by an open
//! circuit stay in the outbox, due; nothing is lost or parked for it.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// Circuit state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// No requests until the given time (ms).
    Open {
        /// When a probe may go.
        until_ms: i64,
    },
    /// One probe in flight.
    HalfOpen,
}

impl CircuitState {
    /// `closed`, `open` or `half_open`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open { .. } => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// The breaker.
#[derive(Debug)]
pub struct Circuit {
    threshold: u32,
    cool_down: Duration,
    inner: Mutex<(CircuitState, u32)>,
}

impl Circuit {
    /// Opens after `threshold` consecutive failures, for `cool_down`.
    pub fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cool_down,
            inner: Mutex::new((CircuitState::Closed, 0)),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.inner
            .lock()
            .map(|g| g.0)
            .unwrap_or(CircuitState::Closed)
    }

    /// Whether a request may go now; moves an expired open circuit to
    /// half-open and lets exactly one probe through.
    pub fn allow(&self, now_ms: i64) -> bool {
        let Ok(mut g) = self.inner.lock() else {
            return true;
        };
        match g.0 {
            CircuitState::Closed => true,
            CircuitState::HalfOpen => false,
            CircuitState::Open { until_ms } if now_ms >= until_ms => {
                g.0 = CircuitState::HalfOpen;
                true
            }
            CircuitState::Open { .. } => false,
        }
    }

    /// A request succeeded (or failed permanently: the server answered).
    pub fn success(&self) {
        if let Ok(mut g) = self.inner.lock() {
            *g = (CircuitState::Closed, 0);
        }
    }

    /// A request failed transiently.
    pub fn failure(&self, now_ms: i64) {
        if let Ok(mut g) = self.inner.lock() {
            let failures = g.1.saturating_add(1);
            let open = g.0 == CircuitState::HalfOpen || failures >= self.threshold;
            let until_ms = now_ms + i64::try_from(self.cool_down.as_millis()).unwrap_or(i64::MAX);
            *g = (
                if open {
                    CircuitState::Open { until_ms }
                } else {
                    g.0
                },
                failures,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_probes_once_and_closes_on_success() {
        let c = Circuit::new(3, Duration::from_secs(10));
        assert!(c.allow(0));
        c.failure(0);
        c.failure(0);
        assert_eq!(c.state(), CircuitState::Closed);
        c.failure(1_000);
        assert_eq!(c.state(), CircuitState::Open { until_ms: 11_000 });
        assert!(!c.allow(5_000));
        assert!(c.allow(11_000), "one probe after the cool-down");
        assert!(!c.allow(11_001), "only one");
        c.failure(11_500);
        assert_eq!(c.state(), CircuitState::Open { until_ms: 21_500 });
        assert!(c.allow(21_500));
        c.success();
        assert_eq!(c.state(), CircuitState::Closed);
        assert!(c.allow(21_600));
    }
}
