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
mod views;

use std::sync::Arc;
use std::time::Instant;

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
        .route("/v1/events/{id}", web::get().to(events::status));
    dead_letters::configure(cfg);
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn dashboard() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header((
            "Content-Security-Policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ))
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
