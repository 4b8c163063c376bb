//! `GET /v1/events/{id}?source=`: where one event stands, for apps on
//! HTTP (any token role, `app` included). No payload, no personal data:
//! states, counts and reasons.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::auth::AppCaller;
use super::{AdminState, not_found, server_error};

/// Query of the route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// Only the event of this source (ids are unique per source).
    source: Option<String>,
}

/// The handler.
pub async fn status(
    AppCaller(who): AppCaller,
    state: web::Data<AdminState>,
    id: web::Path<String>,
    q: web::Query<StatusQuery>,
) -> HttpResponse {
    let found = state
        .store
        .event_status(&id, q.source.as_deref())
        .await
        .map(|mut list| {
            // An app's token sees its own sources' events only.
            list.retain(|e| who.may_see(&e.source));
            list
        });
    match found {
        Ok(list) if list.is_empty() => not_found(format!(
            "no event `{id}`{} has reached Kiungo",
            q.source
                .as_deref()
                .map(|s| format!(" from source `{s}`"))
                .unwrap_or_default()
        )),
        // Ids are unique per source; the list has one entry per source
        // that sent an event with this id (usually one).
        Ok(list) => HttpResponse::Ok().json(json!({"events": list})),
        Err(e) => server_error(e),
    }
}
