//! `POST /v1/events/{source}`: HTTP ingest for apps that cannot speak
//! AMQP. The body is the event (JSON). Optional headers: `X-Message-Id`
//! (the app's id for the submission) and `X-Kiungo-Mapping` (names the
//! mapping, bypassing `match`).
//!
//! Refused before the body is read, and nothing stored:
//! - `401` without a known bearer token (unless `http.ingest.auth: none`),
//!   `403` when the token may not write to the source (see [`super::auth`]);
//! - `404` for a source no mapping reads;
//! - `429` with `Retry-After` over the caller's rate of requests or bytes
//!   (`http.ingest.rate_limit`);
//! - `415` for a `Content-Type` that is not JSON, or none (see
//!   [`super::content_type`]);
//! - `413` for a declared `Content-Length` over `http.max_body_bytes`;
//! - `408` when the body does not arrive within `http.ingest.body_timeout`
//!   (the connection is closed and its buffer freed).
//!
//! Answers only after the commit:
//! - `202 {"event_id", "status"}` with status `stored`, `replaced`,
//!   `duplicate`, `stale` or `superseded`;
//! - `400` (not JSON), `413` (too large) or `422` (no mapping, mapping
//!   error, `invalid_text`: a NUL in an id, `store_refused`: the database
//!   refused the event) with `{"error": {"code", "message"},
//!   "dead_letter_id"}`: the event is parked, so an operator can replay
//!   it after a fix;
//! - `503` with `Retry-After` when the store has not committed within the
//!   timeout (re-sending is safe: the store recognises the event).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use kiungo_mappings::MappingSet;
use serde_json::json;
use tokio::sync::oneshot;

use super::auth;
use super::committer::{CommitterHandle, Done, Work};
use super::content_type;
use super::http_config::IngestAuth;
use super::prepare::{Limits, Origin, prepare_received};
use super::rate_limit::RateLimiter;
use super::refusal::Refusal;
use crate::admin::Tokens;
use crate::delivery::retry::Clock;
use crate::store::Outcome;

/// What the ingest route needs.
#[derive(Debug, Clone)]
pub struct IngestState {
    /// The loaded mappings.
    pub mappings: Arc<MappingSet>,
    /// The committer.
    pub committer: CommitterHandle,
    /// Body size limit.
    pub limits: Limits,
    /// How long to wait for the commit before answering 503.
    pub commit_timeout: Duration,
    /// Whether a token is needed.
    pub auth: IngestAuth,
    /// The tokens (`admin.tokens`).
    pub tokens: Tokens,
    /// The sources some mapping reads; others are answered 404.
    pub sources: Arc<BTreeSet<String>>,
    /// Every caller's rate limits.
    pub limiter: Arc<RateLimiter>,
    /// How long a body may take to arrive.
    pub body_timeout: Duration,
}

impl IngestState {
    /// The state for `config`'s `http:` section, on `clock` (the rate
    /// limits' time).
    pub fn new(
        config: &crate::config::HttpConfig,
        mappings: Arc<MappingSet>,
        committer: CommitterHandle,
        tokens: Tokens,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let sources = mappings
            .mappings()
            .iter()
            .map(|m| m.source.clone())
            .collect();
        Self {
            mappings,
            committer,
            limits: Limits {
                max_bytes: config.max_body_bytes,
            },
            commit_timeout: config.commit_timeout,
            auth: config.ingest.auth,
            tokens,
            sources: Arc::new(sources),
            limiter: Arc::new(RateLimiter::new(config.ingest.rate_limit, clock)),
            body_timeout: config.ingest.body_timeout,
        }
    }

    /// Everything that can be refused before the body is read, in this
    /// order: who calls (401), the source (404), the caller's right to it
    /// (403), the caller's rate (429), the type (415), the declared size
    /// (413). Gives the caller's rate-limit key and the bytes taken from
    /// its bucket (the declared length, or the most allowed).
    pub(super) fn admit(&self, req: &HttpRequest, source: &str) -> Result<(String, u64), Refusal> {
        let caller = auth::caller(self.auth, &self.tokens, req)?;
        if !self.sources.contains(source) {
            return Err(Refusal::UnknownSource {
                known: self
                    .sources
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        caller.may_write(source)?;
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let key = caller.limit_key();
        let taken = declared.unwrap_or(self.limits.max_bytes as u64);
        self.limiter
            .admit(&key, taken)
            .map_err(|(what, retry_after)| Refusal::RateLimited {
                what: what.as_str(),
                retry_after,
            })?;
        content_type::check(
            req.headers()
                .get(header::CONTENT_TYPE)
                .map(|v| v.as_bytes()),
        )
        .map_err(Refusal::UnsupportedMediaType)?;
        if declared.is_some_and(|n| n > self.limits.max_bytes as u64) {
            return Err(Refusal::TooLarge {
                limit: self.limits.max_bytes,
            });
        }
        Ok((key, taken))
    }

    /// Reads the body within `body_timeout` and `max_bytes`.
    async fn read_body(&self, payload: &mut web::Payload) -> Result<Vec<u8>, Refusal> {
        let max = self.limits.max_bytes;
        let read = async {
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| Refusal::BadBody(e.to_string()))?;
                if body.len() + chunk.len() > max {
                    return Err(Refusal::TooLarge { limit: max });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.to_vec())
        };
        tokio::time::timeout(self.body_timeout, read)
            .await
            .unwrap_or(Err(Refusal::BodyTimeout {
                limit: self.body_timeout,
            }))
    }
}

/// Registers the ingest route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/events/{source}", web::post().to(ingest));
}

fn error(
    status: StatusCode,
    code: &str,
    message: &str,
    dead_letter_id: Option<i64>,
) -> HttpResponse {
    let mut body = json!({"error": {"code": code, "message": message}});
    if let Some(id) = dead_letter_id {
        body["dead_letter_id"] = json!(id);
    }
    HttpResponse::build(status).json(body)
}

/// A header's value as trimmed text, if it is text and not empty.
pub(super) fn header(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

async fn ingest(
    req: HttpRequest,
    source: web::Path<String>,
    mut payload: web::Payload,
    state: web::Data<IngestState>,
) -> Result<HttpResponse, Refusal> {
    let source = source.into_inner();
    let (caller, taken) = state.admit(&req, &source)?;
    let body = state.read_body(&mut payload).await?;
    state
        .limiter
        .settle_bytes(&caller, taken, body.len() as u64);
    Ok(commit(&req, source, body, &state).await)
}

/// Maps the body, commits it (or its dead letter) and answers.
async fn commit(
    req: &HttpRequest,
    source: String,
    body: Vec<u8>,
    state: &IngestState,
) -> HttpResponse {
    let origin = Origin {
        source,
        queue: None,
        message_id: header(req, "x-message-id"),
        timestamp_ms: None,
        headers: header(req, "traceparent").map(|tp| serde_json::json!({ "traceparent": tp })),
        route: Ok(header(req, "x-kiungo-mapping")),
    };
    let (ingest, span) = prepare_received(&state.mappings, origin, body, state.limits);
    let (event_id, rejection) = match &ingest.result {
        Ok(m) => (Some(m.event_id.clone()), None),
        Err(r) => (None, Some(r.clone())),
    };
    let (tx, rx) = oneshot::channel();
    if state
        .committer
        .send(Work {
            ingest,
            done: Done::Http(tx),
            span,
        })
        .await
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the service is stopping",
            None,
        );
    }
    let outcome = match tokio::time::timeout(state.commit_timeout, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => {
            return HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "30"))
                .json(json!({"error": {"code": "store_unavailable",
                    "message": "the event is not committed yet; re-send it later (re-sending is safe)"}}));
        }
    };
    match (outcome, rejection) {
        (
            Outcome::Parked {
                dead_letter_id,
                reason,
            },
            rejection,
        ) => {
            let status = match reason.as_str() {
                "not_json" => StatusCode::BAD_REQUEST,
                "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            // A mapped event the store parked has no rejection here: say
            // why by its code (the dead letter has the full reason).
            let message = rejection
                .map(|r| r.reason)
                .unwrap_or_else(|| match reason.as_str() {
                    "invalid_text" => {
                        "an id or output of this event contains a NUL character (U+0000), \
                        which the store cannot hold; the event is parked"
                            .to_owned()
                    }
                    "store_refused" => "the store refused this event; it is parked".to_owned(),
                    _ => reason.clone(),
                });
            error(status, &reason, &message, Some(dead_letter_id))
        }
        (outcome, _) => {
            let status = serde_json::to_value(&outcome)
                .ok()
                .and_then(|v| v.get("status").cloned())
                .unwrap_or(json!("stored"));
            HttpResponse::Accepted().json(json!({"event_id": event_id, "status": status}))
        }
    }
}
