//! The admin HTTP API, version 1, and the dashboard page.
//!
//! Every `/v1/` admin route needs a bearer token (see [`auth`]): `app`
//! tokens read an event's status, `viewer` tokens everything but payloads,
//! `operator` tokens also payloads, replay and discard, each audited with
//! the token's name. `/v1/openapi.json` describes the routes; `/metrics`,
//! `/healthz`, `/readyz` and the dashboard page (which asks for a token and
//! then calls the API) need none.

pub mod auth;
mod dead_letters;
mod events;
mod reconciliation;
mod views;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use kiungo_mappings::MappingSet;
use serde_json::json;

pub use auth::{AdminConfig, Principal, Role, Tokens, token_hash_hex};

use crate::ingest::Limits;
use crate::store::Store;

/// What the admin routes need.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The store.
    pub store: Store,
    /// The mappings, for replays and `/v1/mappings`.
    pub mappings: Arc<MappingSet>,
    /// Limits applied to replayed messages.
    pub limits: Limits,
    /// When the process started.
    pub started: Instant,
    /// Destinations in the config (`fhir`, `dhis2`).
    pub destinations: Vec<&'static str>,
    /// The consumed queues' names, for the queue-lag gauge.
    pub queues: Vec<String>,
    /// Whether status messages to apps are on (the pending gauge is read
    /// only then).
    pub feedback: bool,
    /// Store reads shared by every poll and scrape for a few seconds.
    pub cache: Arc<Caches>,
    /// The DHIS2 client reconciliation reads with, when DHIS2 is
    /// configured.
    pub dhis2: Option<Arc<kiungo_connectors::dhis2::Dhis2Client>>,
}

/// Store reads shared by every dashboard poll (each open dashboard polls
/// every 10 s) and scrape for `http.admin_cache`, while counting a large
/// table takes time on PostgreSQL.
#[derive(Debug, Default)]
pub struct Caches {
    /// How long a read is reused.
    pub ttl: Duration,
    /// `/v1/summary`'s store part.
    pub summary: Cached,
    /// `/v1/flows`.
    pub flows: Cached,
    /// `/v1/destinations` and the `/metrics` store gauges.
    pub backlog: Cached,
}

/// One cached read; concurrent callers wait for a single read.
#[derive(Debug, Default)]
pub struct Cached {
    slot: tokio::sync::Mutex<Option<(Instant, serde_json::Value)>>,
}

impl Cached {
    /// The value read within the last `ttl`, or a fresh one from `read`.
    pub async fn get<F, Fut, E>(&self, ttl: Duration, read: F) -> Result<serde_json::Value, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<serde_json::Value, E>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some((at, v)) = slot.as_ref()
            && at.elapsed() < ttl
        {
            return Ok(v.clone());
        }
        let v = read().await?;
        *slot = Some((Instant::now(), v.clone()));
        Ok(v)
    }
}

/// The OpenAPI document of `/v1/`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// The dashboard page.
pub const DASHBOARD: &str = include_str!("dashboard.html");

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/openapi.json", web::get().to(openapi))
        .route("/dashboard", web::get().to(dashboard))
        .route("/", web::get().to(root))
        .route("/metrics", web::get().to(views::metrics_route))
        .route("/v1/whoami", web::get().to(views::whoami))
        .route("/v1/summary", web::get().to(views::summary))
        .route("/v1/flows", web::get().to(views::flows))
        .route("/v1/destinations", web::get().to(views::destinations))
        .route("/v1/mappings", web::get().to(views::mappings))
        .route("/v1/preflight", web::get().to(views::preflight))
        .route("/v1/outbox", web::get().to(views::outbox))
        .route("/v1/audit", web::get().to(views::audit))
        .route("/v1/events/{id}", web::get().to(events::status))
        .route(
            "/v1/reconciliation",
            web::get().to(reconciliation::reconciliation),
        );
    dead_letters::configure(cfg);
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

/// The dashboard's Content-Security-Policy: only its own inline script
/// and style, by hash, so that injected markup could run nothing.
fn dashboard_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let hashes = |tag: &str| -> String {
            let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
            let mut out = Vec::new();
            let mut rest = DASHBOARD;
            while let Some(i) = rest.find(&open) {
                let body = &rest[i + open.len()..];
                let Some(j) = body.find(&close) else { break };
                use base64::Engine;
                use sha2::Digest;
                let digest = sha2::Sha256::digest(&body.as_bytes()[..j]);
                out.push(format!(
                    "'sha256-{}'",
                    base64::engine::general_purpose::STANDARD.encode(digest)
                ));
                rest = &body[j..];
            }
            out.join(" ")
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hashes("script"),
            hashes("style")
        )
    })
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("Content-Security-Policy", dashboard_csp()))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .body(DASHBOARD)
}

async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header(("Location", "/dashboard"))
        .finish()
}

/// A 500 with the store's message (which never carries payloads).
fn server_error(e: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::InternalServerError()
        .json(json!({"error": {"code": "store_error", "message": e.to_string()}}))
}

/// A 404.
fn not_found(message: String) -> HttpResponse {
    HttpResponse::NotFound().json(json!({"error": {"code": "not_found", "message": message}}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_cached_read_is_reused_within_its_ttl() {
        let cached = Cached::default();
        let reads = AtomicU32::new(0);
        let read = || async {
            let n = reads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(json!(n))
        };
        let ttl = Duration::from_millis(200);
        assert_eq!(cached.get(ttl, read).await, Ok(json!(0)));
        assert_eq!(cached.get(ttl, read).await, Ok(json!(0)), "reused");
        tokio::time::sleep(ttl).await;
        assert_eq!(cached.get(ttl, read).await, Ok(json!(1)), "read again");
        assert_eq!(cached.get(Duration::ZERO, read).await, Ok(json!(2)));
        assert_eq!(reads.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn the_csp_allows_the_dashboards_own_script_and_style_only() {
        let csp = dashboard_csp();
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
    }
}
