//! Read-only views for viewers: who am I, summary, flows, destination
//! health, mappings, preflight, outbox, audit log, and `/metrics`.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::auth::{AppCaller, Viewer};
use super::{AdminState, server_error};
use crate::metrics::{BacklogLabels, DestinationLabels, metrics};
use crate::store::Backlog;

/// `GET /v1/whoami`.
pub async fn whoami(AppCaller(who): AppCaller) -> HttpResponse {
    HttpResponse::Ok().json(who)
}

/// `GET /v1/summary`: counters since start, the store's state, failures
/// by reason.
pub async fn summary(_who: Viewer, state: web::Data<AdminState>) -> HttpResponse {
    let stored = state
        .cache
        .summary
        .get(state.cache.ttl, || async {
            let (stats, reasons) =
                tokio::try_join!(state.store.stats(), state.store.dead_letters_by_reason())?;
            Ok::<_, crate::store::StoreError>(json!({"stats": stats, "reasons": reasons}))
        })
        .await;
    let stored = match stored {
        Ok(v) => v,
        Err(e) => return server_error(e),
    };
    let totals = metrics().totals();
    let get = |k: &str| totals.get(k).copied().unwrap_or(0);
    let ingest: BTreeMap<&str, u64> = [
        "received",
        "stored",
        "replaced",
        "duplicate",
        "stale",
        "superseded",
        "parked",
    ]
    .into_iter()
    .map(|k| (k, get(&format!("ingest.{k}"))))
    .collect();
    let delivery: BTreeMap<&str, BTreeMap<&str, u64>> = ["fhir", "dhis2"]
        .into_iter()
        .map(|d| {
            (
                d,
                ["delivered", "retried", "parked"]
                    .into_iter()
                    .map(|r| (r, get(&format!("{d}.{r}"))))
                    .collect(),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({
        "uptime_s": state.started.elapsed().as_secs_f64(),
        "now_ms": crate::store::now_ms(),
        "ingest": ingest,
        "delivery": delivery,
        "store": stored["stats"],
        "dead_letters_by_reason": stored["reasons"],
    }))
}

/// `GET /v1/flows`.
pub async fn flows(_who: Viewer, state: web::Data<AdminState>) -> HttpResponse {
    let flows = state
        .cache
        .flows
        .get(state.cache.ttl, || async {
            Ok::<_, crate::store::StoreError>(json!(state.store.flows().await?))
        })
        .await;
    match flows {
        Ok(flows) => HttpResponse::Ok().json(json!({"flows": flows})),
        Err(e) => server_error(e),
    }
}

/// `GET /v1/destinations`: health as last recorded by any replica, and
/// the backlog.
pub async fn destinations(_who: Viewer, state: web::Data<AdminState>) -> HttpResponse {
    let (health, backlog) =
        match tokio::try_join!(state.store.destination_health(), cached_backlog(&state)) {
            Ok(v) => v,
            Err(e) => return server_error(e),
        };
    let list: Vec<serde_json::Value> = ["fhir", "dhis2"]
        .into_iter()
        .map(|name| {
            let h = health.iter().find(|h| h.name == name);
            let (pending, retrying, parked) = match name {
                "fhir" => (
                    backlog.fhir_pending + backlog.fhir_delivering,
                    backlog.fhir_retrying,
                    backlog.dead_letters_open.get("fhir").copied().unwrap_or(0),
                ),
                _ => (
                    backlog.dhis2_pending - backlog.dhis2_retrying,
                    backlog.dhis2_retrying,
                    backlog.dead_letters_open.get("dhis2").copied().unwrap_or(0),
                ),
            };
            json!({
                "name": name,
                "configured": state.destinations.contains(&name),
                "circuit": h.map_or("closed", |h| h.circuit.as_str()),
                "last_success_ms": h.and_then(|h| h.last_success_at),
                "last_error": h.and_then(|h| h.last_error.as_ref().map(|m| json!({
                    "at_ms": h.last_error_at, "message": m,
                }))),
                "pending": pending,
                "retrying": retrying,
                "parked": parked,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"destinations": list}))
}

/// `GET /v1/mappings`: the mappings loaded, with versions.
pub async fn mappings(_who: Viewer, state: web::Data<AdminState>) -> HttpResponse {
    let list: Vec<serde_json::Value> = state
        .mappings
        .mappings()
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "version": m.version,
                "source": m.source,
                "description": m.description,
                "file": m.file.file_name().map(|f| f.to_string_lossy().into_owned()),
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({"mappings": list}))
}

/// `GET /v1/preflight`: the last DHIS2 reference check.
pub async fn preflight(_who: Viewer) -> HttpResponse {
    HttpResponse::Ok().json(json!({"dhis2": crate::delivery::sinks::last_preflight()}))
}

/// `GET /v1/outbox`: FHIR outbox rows by state.
pub async fn outbox(_who: Viewer, state: web::Data<AdminState>) -> HttpResponse {
    match state.store.outbox_states().await {
        Ok(states) => HttpResponse::Ok()
            .json(json!({"fhir_outbox": states.into_iter().collect::<BTreeMap<_, _>>()})),
        Err(e) => server_error(e),
    }
}

/// Query of `/v1/audit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    limit: Option<i64>,
}

/// `GET /v1/audit`: the newest operator actions.
pub async fn audit(
    _who: Viewer,
    state: web::Data<AdminState>,
    q: web::Query<AuditQuery>,
) -> HttpResponse {
    match state
        .store
        .audit_log(q.limit.unwrap_or(100).clamp(1, 1000))
        .await
    {
        Ok(rows) => {
            let rows: Vec<serde_json::Value> = rows
                .into_iter()
                .map(|(at, actor, action, target, detail)| {
                    json!({"at_ms": at, "actor": actor, "action": action, "target": target, "detail": detail})
                })
                .collect();
            HttpResponse::Ok().json(json!({"audit": rows}))
        }
        Err(e) => server_error(e),
    }
}

/// `GET /metrics`: refreshes the store gauges, then encodes everything.
///
/// The store gauges (`kiungo_backlog`, `kiungo_oldest_pending_seconds`,
/// `kiungo_dead_letters_open`, `kiungo_feedback_pending`) describe the
/// shared store: every replica reports the same values, so aggregate them
/// with `max`, not `sum`.
pub async fn metrics_route(state: web::Data<AdminState>) -> HttpResponse {
    let m = metrics();
    match cached_backlog(&state).await {
        Ok(b) => set_backlog(&b),
        Err(e) => tracing::debug!(error = %e, "metrics: cannot read the backlog"),
    }
    if state.feedback
        && let Ok(n) = state.store.pending_status_count().await
    {
        m.feedback_pending.set(n);
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(m.encode())
}

fn set_backlog(b: &Backlog) {
    let m = metrics();
    let now = crate::store::now_ms();
    for (destination, state, n) in [
        ("fhir", "pending", b.fhir_pending),
        ("fhir", "retrying", b.fhir_retrying),
        ("fhir", "delivering", b.fhir_delivering),
        ("dhis2", "pending", b.dhis2_pending - b.dhis2_retrying),
        ("dhis2", "retrying", b.dhis2_retrying),
    ] {
        m.backlog
            .get_or_create(&BacklogLabels {
                destination: destination.into(),
                state: state.into(),
            })
            .set(n);
    }
    for (destination, oldest) in [("fhir", b.fhir_oldest_at), ("dhis2", b.dhis2_oldest_at)] {
        m.oldest_pending
            .get_or_create(&DestinationLabels {
                destination: destination.into(),
            })
            .set(oldest.map_or(0, |t| (now - t).max(0) / 1000));
    }
    m.dead_letters_open
        .set(b.dead_letters_open.values().copied().sum());
}

/// The backlog, read at most once per `http.admin_cache`.
async fn cached_backlog(state: &AdminState) -> Result<Backlog, crate::store::StoreError> {
    let v = state
        .cache
        .backlog
        .get(state.cache.ttl, || async {
            Ok::<_, crate::store::StoreError>(json!(state.store.backlog().await?))
        })
        .await?;
    Ok(serde_json::from_value(v).unwrap_or_default())
}
