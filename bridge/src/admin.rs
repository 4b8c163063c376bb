//! Admin HTTP API, version 1 (the dead-letter part; the operations issue
//! adds authentication, roles and the rest).
//!
//! - `GET  /v1/dead-letters?stage=&source=&reason=&mapping=&state=&since_ms=&limit=`
//!   lists dead letters, newest first, **without payloads** (payloads are
//!   client data: `kiungo dlq show` reads them on the server);
//! - `GET  /v1/dead-letters/{id}` one dead letter, without payload;
//! - `POST /v1/dead-letters/{id}/replay` and `.../discard`;
//! - `POST /v1/dead-letters/replay` with `{"ids": [..]}`;
//! - `GET  /v1/outbox` FHIR outbox rows by state.
//!
//! The actor recorded in the audit log is the `X-Kiungo-Actor` header
//! (until tokens identify operators).

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use kiungo_mappings::MappingSet;
use serde::Deserialize;
use serde_json::json;

use crate::ingest::Limits;
use crate::store::{DeadLetterFilter, Store};

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The mappings, for replays.
    pub mappings: Arc<MappingSet>,
    /// Limits applied to replayed messages.
    pub limits: Limits,
}

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/dead-letters", web::get().to(list))
        .route("/v1/dead-letters/replay", web::post().to(replay_many))
        .route("/v1/dead-letters/{id}", web::get().to(show))
        .route("/v1/dead-letters/{id}/replay", web::post().to(replay_one))
        .route("/v1/dead-letters/{id}/discard", web::post().to(discard_one))
        .route("/v1/outbox", web::get().to(outbox));
}

fn server_error(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::InternalServerError()
        .json(json!({"error": {"code": "store_error", "message": e.to_string()}}))
}

fn actor(req: &HttpRequest) -> String {
    req.headers()
        .get("x-kiungo-actor")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
        .map_or_else(|| "admin-api".to_owned(), |v| v.trim().to_owned())
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

async fn list(state: web::Data<AdminState>, q: web::Query<ListQuery>) -> HttpResponse {
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

async fn show(state: web::Data<AdminState>, id: web::Path<i64>) -> HttpResponse {
    match state.store.dead_letter(*id).await {
        Ok(Some(mut d)) => {
            d.payload = None;
            d.headers = None;
            HttpResponse::Ok().json(d)
        }
        Ok(None) => HttpResponse::NotFound().json(
            json!({"error": {"code": "not_found", "message": format!("no dead letter {id}")}}),
        ),
        Err(e) => server_error(e),
    }
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
    req: HttpRequest,
    state: web::Data<AdminState>,
    id: web::Path<i64>,
) -> HttpResponse {
    replay_ids(&state, &[*id], &actor(&req)).await
}

/// Body of the bulk replay.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Ids {
    ids: Vec<i64>,
}

async fn replay_many(
    req: HttpRequest,
    state: web::Data<AdminState>,
    body: web::Json<Ids>,
) -> HttpResponse {
    replay_ids(&state, &body.ids, &actor(&req)).await
}

async fn discard_one(
    req: HttpRequest,
    state: web::Data<AdminState>,
    id: web::Path<i64>,
) -> HttpResponse {
    match state
        .store
        .discard_dead_letters(&[*id], &actor(&req), crate::store::now_ms())
        .await
    {
        Ok(n) => HttpResponse::Ok().json(json!({"discarded": n})),
        Err(e) => server_error(e),
    }
}

async fn outbox(state: web::Data<AdminState>) -> HttpResponse {
    match state.store.outbox_states().await {
        Ok(states) => HttpResponse::Ok().json(json!({"fhir_outbox": states.into_iter().collect::<std::collections::BTreeMap<_, _>>()})),
        Err(e) => server_error(e),
    }
}
