//! Per-caller rate limits for HTTP ingest: two token buckets per caller
//! (requests and bytes), refilled continuously, each with a burst. A
//! request is admitted only if both buckets hold what it costs; otherwise
//! it is answered 429 with the wait after which it would be (`Retry-After`).
//!
//! A body's bytes are taken before it is read: its declared length, or
//! the largest body allowed when it is sent chunked, the difference given
//! back once it is read. So a caller cannot hold more unread bodies than
//! its byte bucket holds, however many connections it opens.
//!
//! The bucket is a pure function of time ([`TokenBucket::take`] takes
//! `now`); [`RateLimiter`] reads an injectable [`Clock`], so that tests move
//! time by hand instead of sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::delivery::retry::Clock;

/// `http.ingest.rate_limit:` (per token, or per client address with
/// `http.ingest.auth: none`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second a caller may keep up.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: f64,
    /// Requests a caller may send at once after a quiet spell.
    #[serde(default = "default_request_burst")]
    pub request_burst: u32,
    /// Body bytes per second a caller may keep up.
    #[serde(default = "default_bytes_per_second")]
    pub bytes_per_second: f64,
    /// Body bytes a caller may send at once; at least
    /// `http.max_body_bytes`, so that a largest body can pass.
    #[serde(default = "default_byte_burst")]
    pub byte_burst: u64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            requests_per_second: default_requests_per_second(),
            request_burst: default_request_burst(),
            bytes_per_second: default_bytes_per_second(),
            byte_burst: default_byte_burst(),
        }
    }
}

const fn default_requests_per_second() -> f64 {
    100.0
}
const fn default_request_burst() -> u32 {
    200
}
const fn default_bytes_per_second() -> f64 {
    4.0 * 1024.0 * 1024.0
}
const fn default_byte_burst() -> u64 {
    16 * 1024 * 1024
}

impl RateLimitConfig {
    /// Problems with the values, each naming its field.
    pub fn problems(&self, max_body_bytes: usize) -> Vec<String> {
        let at = "http.ingest.rate_limit";
        let mut p = Vec::new();
        for (name, v) in [
            ("requests_per_second", self.requests_per_second),
            ("bytes_per_second", self.bytes_per_second),
        ] {
            if !(v.is_finite() && v > 0.0) {
                p.push(format!("{at}.{name}: must be a number above 0"));
            }
        }
        if self.request_burst == 0 {
            p.push(format!("{at}.request_burst: must be at least 1"));
        }
        if self.byte_burst < max_body_bytes as u64 {
            p.push(format!(
                "{at}.byte_burst: must be at least http.max_body_bytes ({max_body_bytes}), \
                 or the largest bodies could never pass"
            ));
        }
        p
    }
}

/// One bucket: its level and when it was last refilled. Capacity and rate
/// are passed in, so one config serves every bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    level: f64,
    at_ms: i64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`.
    pub const fn full(capacity: f64, now_ms: i64) -> Self {
        Self {
            level: capacity,
            at_ms: now_ms,
        }
    }

    /// The level at `now_ms` (a clock moving back refills nothing).
    pub fn level_at(&self, now_ms: i64, rate: f64, capacity: f64) -> f64 {
        let elapsed = (now_ms - self.at_ms).max(0) as f64 / 1000.0;
        (self.level + elapsed * rate).min(capacity)
    }

    /// How long until the bucket holds `cost` (zero: it does now).
    pub fn wait_for(&self, now_ms: i64, rate: f64, capacity: f64, cost: f64) -> Duration {
        let missing = cost.min(capacity) - self.level_at(now_ms, rate, capacity);
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(missing / rate).unwrap_or(Duration::MAX)
        }
    }

    /// Takes `cost` (charging into debt is allowed: the level may go below
    /// zero, and later requests wait until it is repaid; a negative cost
    /// gives back, up to the capacity).
    pub fn charge(&mut self, now_ms: i64, rate: f64, capacity: f64, cost: f64) {
        self.level = (self.level_at(now_ms, rate, capacity) - cost).min(capacity);
        self.at_ms = self.at_ms.max(now_ms);
    }

    /// Takes `cost` if the bucket holds it; otherwise how long to wait.
    pub fn take(
        &mut self,
        now_ms: i64,
        rate: f64,
        capacity: f64,
        cost: f64,
    ) -> Result<(), Duration> {
        match self.wait_for(now_ms, rate, capacity, cost) {
            Duration::ZERO => {
                self.charge(now_ms, rate, capacity, cost);
                Ok(())
            }
            wait => Err(wait),
        }
    }
}

/// Which of a caller's limits a refused request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// Too many requests.
    Requests,
    /// Too many body bytes.
    Bytes,
}

impl Exceeded {
    /// `requests` or `bytes`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Requests => "requests",
            Self::Bytes => "bytes",
        }
    }
}

/// Callers' buckets beyond which idle (full) ones are forgotten.
const MAX_CALLERS: usize = 10_000;
/// Where callers beyond [`MAX_CALLERS`] active ones are counted together.
const OVERFLOW: &str = "(too many callers)";

/// Every caller's buckets.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateLimitConfig,
    clock: Arc<dyn Clock>,
    callers: Mutex<HashMap<String, [TokenBucket; 2]>>,
}

impl RateLimiter {
    /// Limits from `config`, on `clock`.
    pub fn new(config: RateLimitConfig, clock: Arc<dyn Clock>) -> Self {
        Self {
            config,
            clock,
            callers: Mutex::new(HashMap::new()),
        }
    }

    fn params(&self) -> [(f64, f64); 2] {
        [
            (
                self.config.requests_per_second,
                f64::from(self.config.request_burst),
            ),
            (self.config.bytes_per_second, self.config.byte_burst as f64),
        ]
    }

    /// Admits one request of `bytes` body bytes (declared, or the most a
    /// body may have) from `caller`, taking from both buckets, or says
    /// which limit it hit and how long to wait; a refused request takes
    /// nothing.
    pub fn admit(&self, caller: &str, bytes: u64) -> Result<(), (Exceeded, Duration)> {
        let now = self.clock.now_ms();
        let params = self.params();
        let costs = [1.0, bytes as f64];
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        let buckets = self.buckets(&mut callers, caller, now);
        let waits = [
            buckets[0].wait_for(now, params[0].0, params[0].1, costs[0]),
            buckets[1].wait_for(now, params[1].0, params[1].1, costs[1]),
        ];
        for (i, which) in [Exceeded::Requests, Exceeded::Bytes]
            .into_iter()
            .enumerate()
        {
            if !waits[i].is_zero() {
                return Err((which, waits[i]));
            }
        }
        for (i, b) in buckets.iter_mut().enumerate() {
            b.charge(now, params[i].0, params[i].1, costs[i]);
        }
        Ok(())
    }

    /// Settles a body admitted for `taken` bytes that had `read` bytes:
    /// gives back the difference (or takes more).
    pub fn settle_bytes(&self, caller: &str, taken: u64, read: u64) {
        if taken == read {
            return;
        }
        let now = self.clock.now_ms();
        let (rate, capacity) = self.params()[1];
        let mut callers = self.callers.lock().unwrap_or_else(PoisonError::into_inner);
        self.buckets(&mut callers, caller, now)[1].charge(
            now,
            rate,
            capacity,
            read as f64 - taken as f64,
        );
    }

    fn buckets<'a>(
        &self,
        callers: &'a mut HashMap<String, [TokenBucket; 2]>,
        caller: &str,
        now: i64,
    ) -> &'a mut [TokenBucket; 2] {
        let params = self.params();
        let mut key = caller;
        if !callers.contains_key(caller) && callers.len() >= MAX_CALLERS {
            // Forget callers whose buckets have refilled: a new bucket
            // would be the same.
            callers.retain(|_, b| {
                b.iter()
                    .zip(params)
                    .any(|(b, (rate, cap))| b.level_at(now, rate, cap) < cap)
            });
            if callers.len() >= MAX_CALLERS {
                key = OVERFLOW;
            }
        }
        callers
            .entry(key.to_owned())
            .or_insert_with(|| params.map(|(_, cap)| TokenBucket::full(cap, now)))
    }

    /// How many callers have buckets (for tests).
    pub fn callers(&self) -> usize {
        self.callers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::retry::ManualClock;

    #[test]
    fn a_bucket_refills_with_time_up_to_its_capacity() {
        let mut b = TokenBucket::full(2.0, 0);
        assert_eq!(b.take(0, 1.0, 2.0, 1.0), Ok(()));
        assert_eq!(b.take(0, 1.0, 2.0, 1.0), Ok(()));
        assert_eq!(b.take(0, 1.0, 2.0, 1.0), Err(Duration::from_secs(1)));
        assert_eq!(b.take(500, 1.0, 2.0, 1.0), Err(Duration::from_millis(500)));
        assert_eq!(b.take(1_000, 1.0, 2.0, 1.0), Ok(()));
        // Long idle: full, never more.
        assert_eq!(b.level_at(1_000_000, 1.0, 2.0), 2.0);
        // A clock moving back refills nothing.
        assert_eq!(b.level_at(-5_000, 1.0, 2.0), 0.0);
        // Debt is repaid before anything is taken again.
        let mut b = TokenBucket::full(10.0, 0);
        b.charge(0, 5.0, 10.0, 30.0);
        assert_eq!(b.wait_for(0, 5.0, 10.0, 1.0), Duration::from_millis(4_200));
        // A cost above capacity waits for a full bucket, not forever.
        let b = TokenBucket::full(10.0, 0);
        assert_eq!(b.wait_for(0, 5.0, 10.0, 50.0), Duration::ZERO);
    }

    fn limiter(clock: &ManualClock) -> RateLimiter {
        RateLimiter::new(
            RateLimitConfig {
                requests_per_second: 2.0,
                request_burst: 2,
                bytes_per_second: 100.0,
                byte_burst: 1_000,
            },
            Arc::new(clock.clone()),
        )
    }

    #[test]
    fn requests_and_bytes_per_caller() {
        let clock = ManualClock::at(1_000_000);
        let l = limiter(&clock);
        assert_eq!(l.admit("a", 10), Ok(()));
        assert_eq!(l.admit("a", 10), Ok(()));
        assert_eq!(
            l.admit("a", 10),
            Err((Exceeded::Requests, Duration::from_millis(500)))
        );
        // Another caller has its own buckets.
        assert_eq!(l.admit("b", 900), Ok(()));
        assert_eq!(
            l.admit("b", 200),
            Err((Exceeded::Bytes, Duration::from_millis(1_000)))
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.admit("a", 10), Ok(()));
        // The refused request took nothing: one more second of bytes is
        // what "b" waited for.
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.admit("b", 200), Ok(()));
    }

    #[test]
    fn an_undeclared_length_is_settled_after_reading() {
        let clock = ManualClock::at(0);
        let l = RateLimiter::new(
            RateLimitConfig {
                request_burst: 100,
                ..limiter(&clock).config
            },
            Arc::new(clock.clone()),
        );
        // Chunked bodies take the largest size (say 600) while unread: a
        // second one does not fit beside the first.
        assert_eq!(l.admit("a", 600), Ok(()));
        assert_eq!(l.admit("a", 600).map_err(|e| e.0), Err(Exceeded::Bytes));
        // The first had 100 bytes: 500 come back.
        l.settle_bytes("a", 600, 100);
        assert_eq!(l.admit("a", 600), Ok(()));
        // Never above the capacity.
        l.settle_bytes("a", 600, 0);
        l.settle_bytes("a", 600, 0);
        assert_eq!(l.admit("a", 1_000), Ok(()));
        assert_eq!(l.admit("a", 1).map_err(|e| e.0), Err(Exceeded::Bytes));
        // More than taken: into debt, 5 s to repay at 100 bytes/s.
        clock.advance(Duration::from_secs(10));
        l.settle_bytes("a", 0, 1_500);
        assert_eq!(
            l.admit("a", 0),
            Err((Exceeded::Bytes, Duration::from_secs(5)))
        );
    }

    #[test]
    fn idle_callers_are_forgotten_and_the_rest_share_one_bucket() {
        let clock = ManualClock::at(0);
        let l = limiter(&clock);
        for i in 0..MAX_CALLERS {
            assert_eq!(l.admit(&format!("ip-{i}"), 1), Ok(()));
        }
        // All of them busy: a new caller shares the overflow bucket.
        assert_eq!(l.admit("new-1", 1), Ok(()));
        assert_eq!(l.admit("new-2", 1), Ok(()));
        assert_eq!(
            l.admit("new-3", 1).map_err(|e| e.0),
            Err(Exceeded::Requests)
        );
        assert_eq!(l.callers(), MAX_CALLERS + 1);
        // Once they are idle again they are forgotten.
        clock.advance(Duration::from_secs(60));
        assert_eq!(l.admit("new-4", 1), Ok(()));
        assert_eq!(l.callers(), 1);
    }
}
