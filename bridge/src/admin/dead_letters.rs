//! `/v1/dead-letters`: list and show (viewer, without payloads), the
//! payload (operator, audited), replay and discard (operator, audited).
//!
//! - `GET  /v1/dead-letters?stage=&source=&reason=&mapping=&state=&since_ms=&limit=`
//!   newest first;
//! - `GET  /v1/dead-letters/{id}`;
//! - `GET  /v1/dead-letters/{id}/payload` the raw payload and headers;
//! - `POST /v1/dead-letters/{id}/replay` and `.../discard`;
//! - `POST /v1/dead-letters/replay` with `{"ids": [..]}`.

use actix_web::{HttpResponse, web};
use base64::Engine;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Operator, Viewer};
use super::{AdminState, not_found, server_error};
use crate::store::DeadLetterFilter;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/dead-letters", web::get().to(list))
        .route("/v1/dead-letters/replay", web::post().to(replay_many))
        .route("/v1/dead-letters/{id}", web::get().to(show))
        .route("/v1/dead-letters/{id}/payload", web::get().to(payload))
        .route("/v1/dead-letters/{id}/replay", web::post().to(replay_one))
        .route("/v1/dead-letters/{id}/discard", web::post().to(discard_one));
}

/// Query of the list route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stage: Option<String>,
    source: Option<String>,
    reason: Option<String>,
    mapping: Option<String>,
    /// `open` (default), `replayed`, `discarded` or `all`.
    state: Option<String>,
    since_ms: Option<i64>,
    limit: Option<i64>,
}

async fn list(
    _who: Viewer,
    state: web::Data<AdminState>,
    q: web::Query<ListQuery>,
) -> HttpResponse {
    let q = q.into_inner();
    let filter = DeadLetterFilter {
        state: match q.state.as_deref() {
            None => Some("open".into()),
            Some("all") => None,
            Some(s) => Some(s.into()),
        },
        source: q.source,
        reason_code: q.reason,
        mapping: q.mapping,
        stage: q.stage,
        since: q.since_ms,
        limit: Some(q.limit.unwrap_or(100).clamp(1, 10_000)),
    };
    match state.store.dead_letters(&filter).await {
        Ok(list) => HttpResponse::Ok().json(json!({"dead_letters": list})),
        Err(e) => server_error(e),
    }
}

async fn show(_who: Viewer, state: web::Data<AdminState>, id: web::Path<i64>) -> HttpResponse {
    match state.store.dead_letter(*id).await {
        Ok(Some(mut d)) => {
            d.payload = None;
            d.headers = None;
            d.detail = None;
            HttpResponse::Ok().json(d)
        }
        Ok(None) => not_found(format!("no dead letter {id}")),
        Err(e) => server_error(e),
    }
}

/// The raw payload: client data, so operators only, and audited.
async fn payload(
    Operator(who): Operator,
    state: web::Data<AdminState>,
    id: web::Path<i64>,
) -> HttpResponse {
    let d = match state.store.dead_letter(*id).await {
        Ok(Some(d)) => d,
        Ok(None) => return not_found(format!("no dead letter {id}")),
        Err(e) => return server_error(e),
    };
    if let Err(e) = state
        .store
        .audit(
            &who.name,
            "dead_letter.read_payload",
            &format!("dead_letter:{id}"),
            None,
        )
        .await
    {
        return server_error(e);
    }
    let (encoding, body) = match d.payload.as_deref().map(std::str::from_utf8) {
        None => ("none", None),
        Some(Ok(text)) => ("utf8", Some(text.to_owned())),
        Some(Err(_)) => (
            "base64",
            d.payload
                .as_ref()
                .map(|p| base64::engine::general_purpose::STANDARD.encode(p)),
        ),
    };
    let headers = d
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str::<serde_json::Value>(h).ok());
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(json!({"id": d.id, "encoding": encoding, "payload": body, "headers": headers, "detail": d.detail}))
}

async fn replay_ids(state: &AdminState, ids: &[i64], actor: &str) -> HttpResponse {
    let mut results = Vec::new();
    for id in ids {
        match crate::dlq::replay(&state.store, &state.mappings, state.limits, *id, actor).await {
            Ok(r) => results.push(json!({"id": id, "replay": r})),
            Err(e) => return server_error(e),
        }
    }
    HttpResponse::Ok().json(json!({"results": results}))
}

async fn replay_one(
    Operator(who): Operator,
    state: web::Data<AdminState>,
    id: web::Path<i64>,
) -> HttpResponse {
    replay_ids(&state, &[*id], &who.name).await
}

/// Body of the bulk replay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<i64>,
}

async fn replay_many(
    Operator(who): Operator,
    state: web::Data<AdminState>,
    body: web::Json<Ids>,
) -> HttpResponse {
    replay_ids(&state, &body.ids, &who.name).await
}

async fn discard_one(
    Operator(who): Operator,
    state: web::Data<AdminState>,
    id: web::Path<i64>,
) -> HttpResponse {
    match state
        .store
        .discard_dead_letters(&[*id], &who.name, crate::store::now_ms())
        .await
    {
        Ok(n) => HttpResponse::Ok().json(json!({"discarded": n})),
        Err(e) => server_error(e),
    }
}
