//! WARN lines for delivery failures, rate-limited per destination and
//! reason: a DHIS2 that refuses every value of a backlog, or a rotated
//! password, yields one line per reason per interval (with how many were
//! left out since the last one), not one per value or per pass. Reasons
//! are codes (`E7640`, `http_401`, `transport`), never event values.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// The interval between two lines for one destination and reason.
pub const WARN_INTERVAL_MS: i64 = 60_000;

/// Remembers, per destination and reason, when the last line went out
/// and how many were left out since.
#[derive(Debug)]
pub struct WarnLimiter {
    interval_ms: i64,
    last: Mutex<HashMap<(String, String), (i64, u64)>>,
}

impl WarnLimiter {
    /// A limiter letting one line per `interval_ms` through per key.
    pub fn new(interval_ms: i64) -> Self {
        Self {
            interval_ms,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(suppressed)` when a line for `destination` and `reason` may
    /// go out at `now_ms` (the clock of the caller, so tests move it by
    /// hand), with how many were left out since the last one; `None`
    /// when it is to be left out.
    pub fn allow(&self, destination: &str, reason: &str, now_ms: i64) -> Option<u64> {
        let Ok(mut last) = self.last.lock() else {
            return Some(0);
        };
        let entry = last
            .entry((destination.to_owned(), reason.to_owned()))
            .or_insert((i64::MIN, 0));
        if entry.0 == i64::MIN || now_ms.saturating_sub(entry.0) >= self.interval_ms {
            let suppressed = entry.1;
            *entry = (now_ms, 0);
            Some(suppressed)
        } else {
            entry.1 += 1;
            None
        }
    }
}

/// The process's limiter for delivery WARN lines.
pub fn limiter() -> &'static WarnLimiter {
    static LIMITER: OnceLock<WarnLimiter> = OnceLock::new();
    LIMITER.get_or_init(|| WarnLimiter::new(WARN_INTERVAL_MS))
}

/// A failure message's class as a reason: `http_<status>` when it names
/// an HTTP status (`… HTTP 503 …`), `transport` otherwise.
pub fn failure_class(message: &str) -> String {
    message
        .split("HTTP ")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|s| s.len() == 3)
        .map_or_else(|| "transport".to_owned(), |s| format!("http_{s}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_destination_and_reason_per_interval() {
        let l = WarnLimiter::new(60_000);
        assert_eq!(l.allow("dhis2", "E7640", 0), Some(0));
        assert_eq!(l.allow("dhis2", "E7640", 1_000), None);
        assert_eq!(l.allow("dhis2", "E7640", 59_999), None);
        assert_eq!(
            l.allow("dhis2", "http_401", 1_000),
            Some(0),
            "another reason"
        );
        assert_eq!(
            l.allow("fhir", "E7640", 1_000),
            Some(0),
            "another destination"
        );
        assert_eq!(l.allow("dhis2", "E7640", 60_000), Some(2), "two left out");
        assert_eq!(l.allow("dhis2", "E7640", 60_001), None);
    }

    #[test]
    fn failures_are_classed_by_status() {
        assert_eq!(
            failure_class("dhis2 answered HTTP 401 Unauthorized: Account locked"),
            "http_401"
        );
        assert_eq!(failure_class("HTTP 503: down"), "http_503");
        assert_eq!(
            failure_class("dhis2 request failed: connection refused"),
            "transport"
        );
    }
}
