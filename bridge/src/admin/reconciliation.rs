//! `GET /v1/reconciliation`: `kiungo dhis2 reconcile` over the admin API
//! (viewers; reading only, `--repair` stays on the command line).

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use kiungo_connectors::dhis2::Dhis2Client;
use serde::Deserialize;
use serde_json::json;

use super::auth::Viewer;
use super::{AdminState, server_error};
use crate::reconcile::{DriftKind, ReconcileError, Request, reconcile};

/// Query of `/v1/reconciliation`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileQuery {
    /// Data set UID.
    data_set: String,
    /// Period id.
    period: String,
    /// Only this org unit.
    org_unit: Option<String>,
    /// With `org_unit`: its descendants too.
    #[serde(default)]
    children: bool,
}

/// A DHIS2 UID: 11 letters and digits, the first a letter.
fn is_uid(s: &str) -> bool {
    s.len() == 11
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// A period id: letters and digits, at most 20.
fn is_period(s: &str) -> bool {
    !s.is_empty() && s.len() <= 20 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

fn bad_request(field: &str, expected: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": {
        "code": "invalid_query",
        "message": format!("{field}: expected {expected}"),
    }}))
}

/// `GET /v1/reconciliation?data_set=&period=[&org_unit=&children=true]`.
pub async fn reconciliation(
    _who: Viewer,
    state: web::Data<AdminState>,
    query: web::Query<ReconcileQuery>,
) -> HttpResponse {
    let q = query.into_inner();
    if !is_uid(&q.data_set) {
        return bad_request("data_set", "a DHIS2 UID");
    }
    if !is_period(&q.period) {
        return bad_request("period", "a DHIS2 period id");
    }
    if q.org_unit.as_deref().is_some_and(|ou| !is_uid(ou)) {
        return bad_request("org_unit", "a DHIS2 UID");
    }
    if q.children && q.org_unit.is_none() {
        return bad_request("children", "an org_unit beside it");
    }
    let Some(client): Option<&Arc<Dhis2Client>> = state.dhis2.as_ref() else {
        return HttpResponse::NotFound().json(json!({"error": {
            "code": "not_configured",
            "message": "destinations.dhis2: not configured",
        }}));
    };
    let request = Request {
        data_set: q.data_set,
        period: q.period,
        org_unit: q.org_unit,
        children: q.children,
    };
    match reconcile(client, &state.store, &request).await {
        Ok(report) => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            for kind in DriftKind::ALL {
                v[kind.as_str()] = report.count(kind).into();
            }
            HttpResponse::Ok().json(v)
        }
        Err(e @ ReconcileError::Store(_)) => server_error(e),
        // DHIS2's message, cut like every server message.
        Err(e) => HttpResponse::BadGateway().json(json!({"error": {
            "code": "reconcile_failed",
            "message": crate::delivery::sinks::redact(&e.to_string()),
        }})),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_periods_are_checked() {
        assert!(is_uid("BfMAe6Itzgt"));
        assert!(!is_uid("BfMAe6Itzg"));
        assert!(!is_uid("1fMAe6Itzgt"));
        assert!(!is_uid("BfMAe6Itz&t"));
        assert!(is_period("2024Q1"));
        assert!(!is_period("2024-01"));
        assert!(!is_period(""));
    }
}
