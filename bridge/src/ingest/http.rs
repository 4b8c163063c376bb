//! `POST /v1/events/{source}`: HTTP ingest for apps that cannot speak
//! AMQP. The body is the event (JSON). Optional headers: `X-Message-Id`
//! (the app's id for the submission) and `X-Kiungo-Mapping` (names the
//! mapping, bypassing `match`).
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

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::StreamExt;
use kiungo_mappings::MappingSet;
use serde_json::json;
use tokio::sync::oneshot;

use super::committer::{CommitterHandle, Done, Work};
use super::prepare::{Limits, Origin, prepare};
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

fn header(req: &HttpRequest, name: &str) -> Option<String> {
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
) -> HttpResponse {
    let source = source.into_inner();
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        match chunk {
            Ok(chunk) => {
                if body.len() + chunk.len() > state.limits.max_bytes {
                    return error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too_large",
                        &format!("body is over the limit of {} bytes", state.limits.max_bytes),
                        None,
                    );
                }
                body.extend_from_slice(&chunk);
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    &format!("reading the body: {e}"),
                    None,
                );
            }
        }
    }
    let origin = Origin {
        source,
        queue: None,
        message_id: header(&req, "x-message-id"),
        timestamp_ms: None,
        headers: header(&req, "traceparent").map(|tp| serde_json::json!({ "traceparent": tp })),
        route: Ok(header(&req, "x-kiungo-mapping")),
    };
    let ingest = prepare(&state.mappings, origin, body.to_vec(), state.limits);
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
