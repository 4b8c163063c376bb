//! From raw bytes to an [`Ingest`]: size check, JSON parse, routing,
//! mapping. Every failure becomes a [`Rejection`] with a stable reason
//! code; nothing here panics the pipeline (a panicking mapping is caught
//! and parked as `mapping_panic`).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::SystemTime;

use kiungo_mappings::{Event, MappingSet};

use crate::store::{Ingest, Outputs, Rejection};
use crate::telemetry::Span;

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

/// How far past its receive time a publisher's timestamp is believed: a
/// clock a few minutes fast is common, a timestamp in 2100 is not. Later
/// ones are clamped to the receive time plus this, so that one bad clock
/// cannot make every later genuine edit of the event "stale".
pub const FUTURE_TOLERANCE_MS: i64 = 5 * 60 * 1000;

/// The header recording a clamped publisher timestamp (the original, in
/// ms), kept with the message's headers.
pub const CLAMPED_HEADER: &str = "x-kiungo-timestamp-clamped";

/// The publisher timestamp to order versions by: `ts`, or the receive time
/// plus [`FUTURE_TOLERANCE_MS`] when it is later than that. The second
/// value is the original when it was clamped.
pub fn clamp_version_ts(ts: Option<i64>, received_at: i64) -> (Option<i64>, Option<i64>) {
    let limit = received_at.saturating_add(FUTURE_TOLERANCE_MS);
    match ts {
        Some(t) if t > limit => (Some(limit), Some(t)),
        other => (other, None),
    }
}

/// Maps one message. Pure apart from the clock: the result is committed by
/// the caller.
///
/// The event's W3C `traceparent` (a valid one from the headers, or a new
/// trace) is kept in its headers under `traceparent`; the store saves it
/// with the FHIR bundle and delivery forwards it.
pub fn prepare(set: &MappingSet, origin: Origin, body: Vec<u8>, limits: Limits) -> Ingest {
    prepare_inner(set, origin, body, limits, false).0
}

/// [`prepare`] for an event just received: also its `ingest` span (with
/// its `map` child, ended), which the caller ends once the event is
/// committed. When spans are exported and the message came without a
/// valid `traceparent`, the new trace starts at the `ingest` span, and
/// that span is the event's `traceparent`.
pub fn prepare_received(
    set: &MappingSet,
    origin: Origin,
    body: Vec<u8>,
    limits: Limits,
) -> (Ingest, Span) {
    prepare_inner(set, origin, body, limits, true)
}

fn prepare_inner(
    set: &MappingSet,
    mut origin: Origin,
    body: Vec<u8>,
    limits: Limits,
    received: bool,
) -> (Ingest, Span) {
    let incoming = origin
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .and_then(serde_json::Value::as_str)
        .and_then(crate::trace::parse)
        .map(str::to_owned);
    let mut span = if received {
        crate::telemetry::ingest(
            incoming.as_deref(),
            &origin.source,
            origin.queue.is_some(),
            SystemTime::now(),
        )
    } else {
        Span::none()
    };
    let traceparent = incoming.unwrap_or_else(|| {
        span.traceparent()
            .unwrap_or_else(|| crate::trace::continue_or_start(None))
    });
    let map_start = SystemTime::now();
    let result = classify(set, &origin, &body, limits);
    if span.is_recording() {
        let mut map = span.child("map", map_start);
        match &result {
            Ok(o) => {
                map.set("kiungo.mapping", &o.mapping);
                span.set("kiungo.mapping", &o.mapping);
            }
            Err(r) => {
                if let Some(m) = &r.mapping {
                    map.set("kiungo.mapping", m);
                    span.set("kiungo.mapping", m);
                }
                map.fail(&r.code);
            }
        }
        map.end();
    }
    let received_at = crate::store::now_ms();
    let (version_ts, clamped) = clamp_version_ts(origin.timestamp_ms, received_at);
    match origin.headers.as_mut() {
        Some(serde_json::Value::Object(h)) => {
            h.insert("traceparent".into(), traceparent.clone().into());
        }
        _ => origin.headers = Some(serde_json::json!({ "traceparent": traceparent })),
    }
    if let (Some(original), Some(serde_json::Value::Object(h))) = (clamped, origin.headers.as_mut())
    {
        h.insert(CLAMPED_HEADER.into(), original.into());
    }
    let log_span = tracing::debug_span!(
        "event",
        source = %origin.source,
        event_id = result.as_ref().map_or("", |o| o.event_id.as_str()),
        trace_id = crate::trace::trace_id(&traceparent),
    );
    log_span.in_scope(|| {
        if let (Some(original), Some(used)) = (clamped, version_ts) {
            tracing::warn!(
                publisher_ts_ms = original,
                clamped_to_ms = used,
                "publisher timestamp is more than 5 minutes past the receive time; clamped"
            );
        }
        match &result {
            Ok(o) => tracing::debug!(mapping = %o.mapping, "event mapped"),
            Err(r) => tracing::debug!(reason = %r.code, "event rejected; it will be parked"),
        }
    });
    let ingest = Ingest {
        source: origin.source,
        queue: origin.queue,
        message_id: origin.message_id,
        version_ts,
        received_at,
        payload: body,
        headers: origin.headers,
        result,
    };
    (ingest, span)
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
        E::Field { event, .. } | E::Refused { event, .. } | E::InvalidFhir { event, .. }
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
        | E::Refused { mapping, .. }
        | E::InvalidFhir { mapping, .. } => Some(mapping.clone()),
        E::NoMapping { .. } | E::Ambiguous { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn future_publisher_timestamps_are_clamped() {
        let now = 1_764_000_000_000;
        assert_eq!(clamp_version_ts(None, now), (None, None));
        assert_eq!(clamp_version_ts(Some(now - 5), now), (Some(now - 5), None));
        assert_eq!(
            clamp_version_ts(Some(now + FUTURE_TOLERANCE_MS), now),
            (Some(now + FUTURE_TOLERANCE_MS), None),
            "a clock a few minutes fast is believed"
        );
        let year_2100 = 4_102_444_800_000;
        assert_eq!(
            clamp_version_ts(Some(year_2100), now),
            (Some(now + FUTURE_TOLERANCE_MS), Some(year_2100))
        );
    }
}
