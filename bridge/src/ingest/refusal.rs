//! Why an HTTP ingest request was refused before its body was mapped or
//! stored. Each refusal knows its status and code; none leaves anything
//! in the store (the requests that are parked as dead letters, 400, 413
//! after reading and 422, are answered by the route itself).

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// A request refused before its body was stored.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// No token, or an unknown one (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token may not write to this source (403).
    #[error("{0}")]
    Forbidden(String),
    /// No mapping reads events of this source (404).
    #[error("no mapping reads events of this source; the sources are: {known}")]
    UnknownSource {
        /// The known sources, comma-separated.
        known: String,
    },
    /// The body is not declared JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over the caller's rate (429).
    #[error(
        "over this caller's limit of {what} per second; retry after {} s",
        retry_after_secs(*.retry_after)
    )]
    RateLimited {
        /// `requests` or `bytes`.
        what: &'static str,
        /// When the request would be admitted.
        retry_after: Duration,
    },
    /// The declared or received body is over `http.max_body_bytes` (413).
    #[error("body is over the limit of {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body did not arrive within `http.ingest.body_timeout` (408).
    #[error("the body did not arrive within {} s; the connection is closed", .limit.as_secs_f64())]
    BodyTimeout {
        /// The deadline.
        limit: Duration,
    },
    /// The body could not be read (400).
    #[error("reading the body: {0}")]
    BadBody(String),
}

/// Whole seconds, rounded up, at least 1 (`Retry-After`).
fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs()
        .saturating_add(u64::from(d.subsec_nanos() > 0))
        .max(1)
}

impl Refusal {
    /// The stable code in `{"error": {"code"}}`.
    pub const fn code(&self) -> &'static str {
        match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownSource { .. } => "unknown_source",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooLarge { .. } => "too_large",
            Self::BodyTimeout { .. } => "body_timeout",
            Self::BadBody(_) => "bad_body",
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnknownSource { .. } => StatusCode::NOT_FOUND,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::BadBody(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status_code());
        match self {
            Self::Unauthorized(_) => {
                res.insert_header(("WWW-Authenticate", "Bearer realm=\"kiungo\""));
            }
            Self::RateLimited { retry_after, .. } => {
                res.insert_header(("Retry-After", retry_after_secs(*retry_after).to_string()));
            }
            _ => {}
        }
        // A body refused unread (or half read) is not drained: actix-web
        // closes such a connection after the answer, reading and dropping
        // what still arrives for `http.client_disconnect_timeout` (so that
        // the client reads the answer rather than a reset).
        res.json(serde_json::json!({"error": {"code": self.code(), "message": self.to_string()}}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(1_000)), 1_000);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
        let r = Refusal::RateLimited {
            what: "requests",
            retry_after: Duration::from_millis(2_500),
        };
        let res = r.error_response();
        assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            res.headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()),
            Some("3")
        );
        assert!(r.to_string().contains("requests per second"), "{r}");
    }
}
