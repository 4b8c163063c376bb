//! The retry policy both sinks share: exponential backoff with full
//! jitter, `Retry-After` honoured, a maximum age after which a delivery is
//! parked. The schedule is stored (next attempt time in the store), so it
//! survives restarts; the clock is injectable so that tests advance it
//! instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::Deserialize;

/// `retry:` of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryParams {
    /// First backoff ceiling; doubles per attempt.
    #[serde(default = "default_base", with = "humantime_serde")]
    pub base_delay: Duration,
    /// Largest backoff ceiling.
    #[serde(default = "default_max", with = "humantime_serde")]
    pub max_delay: Duration,
    /// After this long since the first attempt, a failing delivery is
    /// parked instead of retried.
    #[serde(default = "default_age", with = "humantime_serde")]
    pub max_age: Duration,
}

const fn default_base() -> Duration {
    Duration::from_secs(1)
}
const fn default_max() -> Duration {
    Duration::from_secs(300)
}
const fn default_age() -> Duration {
    Duration::from_secs(3 * 24 * 3600)
}

impl Default for RetryParams {
    fn default() -> Self {
        Self {
            base_delay: default_base(),
            max_delay: default_max(),
            max_age: default_age(),
        }
    }
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this time (ms).
    RetryAt(i64),
    /// Out of time: park it.
    GiveUp,
}

impl RetryParams {
    /// Short delays for tests.
    pub const fn for_test() -> Self {
        Self {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_millis(400),
            max_age: Duration::from_secs(120),
        }
    }

    /// Problems with the values, naming the field.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.base_delay.is_zero() {
            out.push(format!("{at}.base_delay: must be above zero"));
        }
        if self.base_delay > self.max_delay {
            out.push(format!("{at}.base_delay: longer than max_delay"));
        }
        out
    }

    /// The next step after failed attempt number `attempt` (1 for the
    /// first failure) of a delivery first tried at `first_ms`, at `now_ms`.
    /// `unit` in [0, 1) draws the jitter; `retry_after` is the server's
    /// wish, honoured as a floor.
    pub fn next(
        &self,
        attempt: u32,
        first_ms: i64,
        now_ms: i64,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> NextStep {
        let exp = attempt.saturating_sub(1).min(30);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let mut delay = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        if let Some(wish) = retry_after {
            delay = delay.max(wish);
        }
        let at = now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let deadline =
            first_ms.saturating_add(i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX));
        if at > deadline {
            NextStep::GiveUp
        } else {
            NextStep::RetryAt(at)
        }
    }
}

/// Time, as the delivery workers see it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::store::now_ms()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// Starts at `ms`.
    pub fn at(ms: i64) -> Self {
        Self(Arc::new(AtomicI64::new(ms)))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(
            i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A uniform draw in [0, 1) for jitter, from a per-process counter mixed
/// with the clock (replicas only need to differ, not to be unpredictable).
pub fn jitter_unit() -> f64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let mut x =
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ nanos ^ (u64::from(std::process::id()) << 32);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_ceiling_with_full_jitter() {
        let p = RetryParams {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_age: Duration::from_secs(3600),
        };
        // unit = 1.0 (top of the range): 1, 2, 4, 8, 8 s.
        let at = |attempt| p.next(attempt, 0, 0, None, 1.0);
        assert_eq!(at(1), NextStep::RetryAt(1_000));
        assert_eq!(at(2), NextStep::RetryAt(2_000));
        assert_eq!(at(3), NextStep::RetryAt(4_000));
        assert_eq!(at(4), NextStep::RetryAt(8_000));
        assert_eq!(at(9), NextStep::RetryAt(8_000));
        // Full jitter: anywhere from now to the ceiling.
        assert_eq!(p.next(3, 0, 0, None, 0.0), NextStep::RetryAt(0));
        assert_eq!(p.next(3, 0, 0, None, 0.5), NextStep::RetryAt(2_000));
    }

    #[test]
    fn retry_after_is_a_floor_and_max_age_gives_up() {
        let p = RetryParams {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(8),
            max_age: Duration::from_secs(60),
        };
        assert_eq!(
            p.next(1, 0, 0, Some(Duration::from_secs(30)), 0.2),
            NextStep::RetryAt(30_000)
        );
        assert_eq!(
            p.next(1, 0, 50_000, Some(Duration::from_secs(30)), 0.2),
            NextStep::GiveUp
        );
        assert_eq!(p.next(2, 0, 59_000, None, 0.0), NextStep::RetryAt(59_000));
    }

    #[test]
    fn config_is_checked() {
        let bad = RetryParams {
            base_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(1),
            max_age: Duration::from_secs(1),
        };
        assert_eq!(
            bad.problems("fhir.retry"),
            vec!["fhir.retry.base_delay: longer than max_delay"]
        );
        assert!(RetryParams::default().problems("x").is_empty());
    }

    #[test]
    fn jitter_is_in_range_and_varies() {
        let draws: Vec<f64> = (0..200).map(|_| jitter_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / 200.0;
        assert!((0.3..0.7).contains(&mean), "{mean}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.advance(Duration::from_millis(250));
        assert_eq!(c.now_ms(), 1_250);
    }
}
