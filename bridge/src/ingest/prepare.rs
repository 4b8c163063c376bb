//! From raw bytes to an [`Ingest`]: size check, JSON parse, routing,
//! mapping. Every failure becomes a [`Rejection`] with a stable reason
//! code; nothing here panics the pipeline (a panicking mapping is caught
//! and parked as `mapping_panic`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use kiungo_mappings::{Event, MappingSet};

use crate::store::{Ingest, Outputs, Rejection};

/// Input limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body accepted.
    pub max_bytes: usize,
}

/// Where an event came from and how it is routed.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Source app.
    pub source: String,
    /// Queue, for AMQP.
    pub queue: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Publisher timestamp in ms.
    pub timestamp_ms: Option<i64>,
    /// Headers as JSON.
    pub headers: Option<serde_json::Value>,
    /// `Ok(Some(id))`: the route names the mapping; `Ok(None)`: the
    /// mappings' `match` rules decide; `Err`: no route, with the reason.
    pub route: Result<Option<String>, String>,
}

/// Maps one message. Pure apart from the clock: the result is committed by
/// the caller.
///
/// The event's W3C `traceparent` (a valid one from the headers, or a new
/// trace) is kept in its headers under `traceparent`; the store saves it
/// with the FHIR bundle and delivery forwards it.
pub fn prepare(set: &MappingSet, mut origin: Origin, body: Vec<u8>, limits: Limits) -> Ingest {
    let traceparent = crate::trace::continue_or_start(
        origin
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .and_then(serde_json::Value::as_str),
    );
    let result = classify(set, &origin, &body, limits);
    match origin.headers.as_mut() {
        Some(serde_json::Value::Object(h)) => {
            h.insert("traceparent".into(), traceparent.clone().into());
        }
        _ => origin.headers = Some(serde_json::json!({ "traceparent": traceparent })),
    }
    let span = tracing::debug_span!(
        "event",
        source = %origin.source,
        event_id = result.as_ref().map_or("", |o| o.event_id.as_str()),
        trace_id = crate::trace::trace_id(&traceparent),
    );
    span.in_scope(|| match &result {
        Ok(o) => tracing::debug!(mapping = %o.mapping, "event mapped"),
        Err(r) => tracing::debug!(reason = %r.code, "event rejected; it will be parked"),
    });
    Ingest {
        source: origin.source,
        queue: origin.queue,
        message_id: origin.message_id,
        version_ts: origin.timestamp_ms,
        received_at: crate::store::now_ms(),
        payload: body,
        headers: origin.headers,
        result,
    }
}

fn reject(code: &str, reason: String) -> Rejection {
    Rejection {
        code: code.to_owned(),
        reason,
        mapping: None,
        event_id: None,
        detail: None,
    }
}

fn classify(
    set: &MappingSet,
    origin: &Origin,
    body: &[u8],
    limits: Limits,
) -> Result<Outputs, Rejection> {
    let label = origin.message_id.as_deref().unwrap_or("(no message id)");
    if body.len() > limits.max_bytes {
        return Err(reject(
            "too_large",
            format!(
                "message {label}: body is {} bytes, over the limit of {} bytes",
                body.len(),
                limits.max_bytes
            ),
        ));
    }
    let payload: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json's messages name a position, never the content.
        reject(
            "not_json",
            format!("message {label}: body is not JSON: {e}"),
        )
    })?;
    let route = origin
        .route
        .clone()
        .map_err(|reason| reject("no_route", format!("message {label}: {reason}")))?;
    let event = Event {
        source: origin.source.clone(),
        message_id: origin.message_id.clone(),
        payload: Arc::new(payload),
    };
    let mapped = std::panic::catch_unwind(AssertUnwindSafe(|| match &route {
        Some(id) => set.map_by_id(id, &event),
        None => set.map(&event),
    }))
    .map_err(|_| {
        reject(
            "mapping_panic",
            format!("message {label}: the mapping engine panicked on this event"),
        )
    })?;
    mapped.map(Outputs::from).map_err(|e| Rejection {
        code: e.reason().to_owned(),
        reason: e.to_string(),
        mapping: mapping_of(&e),
        event_id: event_of(&e, origin.message_id.as_ref()),
        // The reason is made without the event's values; the values go
        // beside the payload, for operators.
        detail: (!e.values().is_empty()).then(|| e.values().join("\n")),
    })
}

/// The event id a mapping error names, so that the app can look the
/// parked event up by its id (`GET /v1/events/{id}`).
fn event_of(e: &kiungo_mappings::MapError, message_id: Option<&String>) -> Option<String> {
    use kiungo_mappings::MapError as E;
    match e {
        // Before the event id is evaluated the engine names the event by
        // its message id, or "(no id)": neither is an event id (the dead
        // letter keeps the message id, which finds it all the same).
        E::Field { event, .. } | E::InvalidFhir { event, .. }
            if event != "(no id)" && Some(event) != message_id =>
        {
            Some(event.clone())
        }
        _ => None,
    }
}

fn mapping_of(e: &kiungo_mappings::MapError) -> Option<String> {
    use kiungo_mappings::MapError as E;
    match e {
        E::UnknownMapping { mapping, .. }
        | E::NoEventId { mapping }
        | E::Field { mapping, .. }
        | E::InvalidFhir { mapping, .. } => Some(mapping.clone()),
        E::NoMapping { .. } | E::Ambiguous { .. } => None,
    }
}
