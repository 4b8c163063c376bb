//! Fault injection shared by both simulators.
//!
//! Guarantee: a fault is decided, and answered, before the request touches
//! any state, so a request that gets a fault changed nothing. Decisions come
//! from a seeded inline PRNG (splitmix64), so a given seed and request
//! sequence always yields the same faults.
//!
//! Faults are set at start ([`Faults`] in the config) and can be replaced
//! at runtime with `POST /sandbox/faults` (the same JSON shape) or
//! [`FaultControl::set`]; `GET /sandbox/faults` shows the current ones.
//! The `/sandbox/*` endpoints themselves are never faulted.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// What to inject. Every field defaults to "no fault".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Share of requests (0..=1) answered with a server error: 503 or 500,
    /// chosen at random, with the simulator's error body.
    pub error_rate: f64,
    /// Share of requests (0..=1) answered 429 with `Retry-After`.
    pub throttle_rate: f64,
    /// Seconds sent in `Retry-After` on 429 and outage 503 answers
    /// (default 1).
    pub retry_after_secs: Option<u64>,
    /// Delay added before every answer (faulted or not), e.g. `"50ms"`.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// A window during which every request gets 503.
    pub outage: Option<Outage>,
    /// PRNG seed; the same seed gives the same fault sequence.
    pub seed: u64,
}

/// An outage window, relative to the moment the faults were set (at
/// start, or by `POST /sandbox/faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    /// When the outage starts after the faults are set, e.g. `"0s"`.
    #[serde(with = "humantime_serde")]
    pub start_offset: Duration,
    /// How long it lasts, e.g. `"1h"`.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
}

/// Why the faults are invalid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FaultsError {
    /// A rate outside 0..=1 (or not a number).
    #[error("{field} must be between 0 and 1, got {value}")]
    Rate {
        /// `error_rate` or `throttle_rate`.
        field: &'static str,
        /// The value given.
        value: f64,
    },
}

impl Faults {
    /// Checks the rates.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (field, value) in [
            ("error_rate", self.error_rate),
            ("throttle_rate", self.throttle_rate),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(FaultsError::Rate { field, value });
            }
        }
        Ok(())
    }

    fn retry_after(&self) -> u64 {
        self.retry_after_secs.unwrap_or(1)
    }
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 503 because an outage window is open; carries `Retry-After` seconds.
    Outage {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
    /// 503 Service Unavailable (random server error).
    Unavailable,
    /// 500 Internal Server Error (random server error).
    Internal,
    /// 429 Too Many Requests with `Retry-After` seconds.
    Throttled {
        /// Seconds for `Retry-After`.
        retry_after: u64,
    },
}

impl Fault {
    /// The HTTP status code of the answer.
    pub const fn status(self) -> u16 {
        match self {
            Self::Outage { .. } | Self::Unavailable => 503,
            Self::Internal => 500,
            Self::Throttled { .. } => 429,
        }
    }

    /// `Retry-After` seconds, when the answer carries one.
    pub const fn retry_after(self) -> Option<u64> {
        match self {
            Self::Outage { retry_after } | Self::Throttled { retry_after } => Some(retry_after),
            Self::Unavailable | Self::Internal => None,
        }
    }

    /// A short human message for the error body.
    pub const fn message(self) -> &'static str {
        match self {
            Self::Outage { .. } => "sandbox outage: service unavailable",
            Self::Unavailable => "sandbox fault: service unavailable",
            Self::Internal => "sandbox fault: internal server error",
            Self::Throttled { .. } => {
                "Request has been throttled due to exceeding the allocated rate limit."
            }
        }
    }

    /// An actix response builder with the status and `Retry-After` set.
    pub fn response_builder(self) -> actix_web::HttpResponseBuilder {
        let status = actix_web::http::StatusCode::from_u16(self.status())
            .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = actix_web::HttpResponse::build(status);
        if let Some(secs) = self.retry_after() {
            builder.insert_header(("Retry-After", secs.to_string()));
        }
        builder
    }
}

struct State {
    faults: Faults,
    set_at: Instant,
    rng: u64,
}

/// A shared, runtime-changeable fault setting.
#[derive(Clone)]
pub struct FaultControl {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultControl")
            .field("faults", &self.get())
            .finish()
    }
}

impl FaultControl {
    /// Starts with `faults` (the outage window counts from now).
    pub fn new(faults: Faults) -> Result<Self, FaultsError> {
        faults.validate()?;
        Ok(Self {
            state: Arc::new(Mutex::new(State {
                rng: faults.seed,
                faults,
                set_at: Instant::now(),
            })),
        })
    }

    /// Replaces the faults; the PRNG restarts from the new seed and the
    /// outage window counts from now.
    pub fn set(&self, faults: Faults) -> Result<(), FaultsError> {
        faults.validate()?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.rng = faults.seed;
        state.faults = faults;
        state.set_at = Instant::now();
        Ok(())
    }

    /// The current faults.
    pub fn get(&self) -> Faults {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .faults
            .clone()
    }

    /// Decides the fault for one request (none, mostly) and returns the
    /// latency to add first.
    pub fn decide(&self) -> (Duration, Option<Fault>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let latency = state.faults.latency;
        let retry_after = state.faults.retry_after();
        if let Some(outage) = state.faults.outage {
            let elapsed = state.set_at.elapsed();
            if elapsed >= outage.start_offset && elapsed < outage.start_offset + outage.duration {
                return (latency, Some(Fault::Outage { retry_after }));
            }
        }
        let (error_rate, throttle_rate) = (state.faults.error_rate, state.faults.throttle_rate);
        if error_rate > 0.0 {
            let roll = next_unit(&mut state.rng);
            if roll < error_rate {
                let fault = if next_u64(&mut state.rng) & 1 == 0 {
                    Fault::Unavailable
                } else {
                    Fault::Internal
                };
                return (latency, Some(fault));
            }
        }
        if throttle_rate > 0.0 && next_unit(&mut state.rng) < throttle_rate {
            return (latency, Some(Fault::Throttled { retry_after }));
        }
        (latency, None)
    }

    /// Waits the configured latency, then returns the fault, if any.
    pub async fn apply(&self) -> Option<Fault> {
        let (latency, fault) = self.decide();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        fault
    }
}

/// splitmix64: small, fast, good enough for fault rolls.
const fn next_u64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in [0, 1).
#[allow(clippy::cast_precision_loss)]
fn next_unit(state: &mut u64) -> f64 {
    (next_u64(state) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_rates_roughly_hold() {
        let faults = Faults {
            error_rate: 0.3,
            seed: 42,
            ..Faults::default()
        };
        let a = FaultControl::new(faults.clone()).unwrap();
        let b = FaultControl::new(faults).unwrap();
        let seq_a: Vec<_> = (0..1000).map(|_| a.decide().1).collect();
        let seq_b: Vec<_> = (0..1000).map(|_| b.decide().1).collect();
        assert_eq!(seq_a, seq_b);
        let errors = seq_a.iter().filter(|f| f.is_some()).count();
        assert!((250..350).contains(&errors), "{errors}");
        assert!(seq_a.contains(&Some(Fault::Internal)));
        assert!(seq_a.contains(&Some(Fault::Unavailable)));
    }

    #[test]
    fn rates_outside_unit_interval_are_rejected() {
        let bad = Faults {
            throttle_rate: 1.5,
            ..Faults::default()
        };
        assert!(FaultControl::new(bad).is_err());
    }
}
