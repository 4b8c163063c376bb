//! How a failed delivery classifies itself: retry later, or park.
//!
//! **The guarantee**: every error a sink returns answers two questions,
//! [`Retryable::is_retryable`] and [`Retryable::retry_after`], so the
//! outbox worker never guesses from a message. 408, 429 and 5xx (but 501)
//! are transient; other 4xx and 501 are permanent. A server's
//! `Retry-After` is honoured up to [`MAX_RETRY_AFTER`].

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` honoured; longer requests are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// A failure that knows whether trying again can help.
pub trait Retryable {
    /// `true` if the same request may succeed later (network trouble,
    /// throttling, server errors); `false` if it must be parked.
    fn is_retryable(&self) -> bool;
    /// How long the server asked us to wait, if it said so.
    fn retry_after(&self) -> Option<Duration>;
}

/// What an HTTP status means for delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusClass {
    /// 2xx: the server took the request (read the body for details).
    Success,
    /// 408, 429, and 5xx except 501: try again later.
    Transient,
    /// Everything else (other 4xx, 501, and 1xx/3xx which a sink never
    /// expects): trying again cannot help.
    Permanent,
}

/// Classifies an HTTP status code.
pub fn classify_status(status: u16) -> StatusClass {
    match status {
        200..=299 => StatusClass::Success,
        408 | 429 => StatusClass::Transient,
        501 => StatusClass::Permanent,
        500..=599 => StatusClass::Transient,
        _ => StatusClass::Permanent,
    }
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delay-seconds or an
/// HTTP-date, relative to `now`. A date in the past gives zero; anything
/// longer than [`MAX_RETRY_AFTER`] is capped; garbage gives `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let delay = if value.bytes().all(|b| b.is_ascii_digit()) {
        // Very long digit strings overflow u64: that is "a long time".
        value
            .parse::<u64>()
            .map_or(MAX_RETRY_AFTER, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The `Retry-After` of a response, if present and readable.
pub(crate) fn retry_after_header(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        for s in [200, 201, 204] {
            assert_eq!(classify_status(s), StatusClass::Success, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 507, 599] {
            assert_eq!(classify_status(s), StatusClass::Transient, "{s}");
        }
        for s in [301, 400, 401, 403, 404, 409, 412, 422, 501] {
            assert_eq!(classify_status(s), StatusClass::Permanent, "{s}");
        }
    }

    #[test]
    fn retry_after_seconds() {
        let now = SystemTime::now();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("86400", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").expect("date");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", now),
            Some(Duration::from_secs(120))
        );
        // In the past: go now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        // Far future: capped.
        assert_eq!(
            parse_retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        // The obsolete RFC 850 form is still an HTTP-date.
        assert_eq!(
            parse_retry_after("Sunday, 06-Nov-94 08:49:47 GMT", now),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn retry_after_garbage() {
        let now = SystemTime::now();
        for v in ["", "soon", "-5", "1.5", "7 seconds", "2024-01-01T00:00:00Z"] {
            assert_eq!(parse_retry_after(v, now), None, "{v:?}");
        }
    }
}
