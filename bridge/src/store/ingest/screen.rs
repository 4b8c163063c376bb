//! The text of a batch, screened before any of it reaches a statement.
//!
//! PostgreSQL's TEXT cannot hold U+0000 (NUL), the one character of valid
//! UTF-8 it refuses ("invalid byte sequence for encoding UTF8: 0x00"),
//! while SQLite stores it. Both backends must do the same with the same
//! event, and one event must never fail its whole batch, so every event
//! passes here first, in [`Store::commit`](super::Store::commit):
//! - an event that mapped, but whose source, message id, event id, the id
//!   it replaces, or any output text (mapping, FHIR bundle, DHIS2
//!   contribution) holds a NUL is refused: it is parked as
//!   [`INVALID_TEXT`], naming the fields (never quoting them), with its
//!   raw payload as bytes;
//! - everything else that goes to a dead letter (source, queue, message
//!   id, event id, mapping, reason) has each NUL escaped as the six
//!   characters `\u0000`, as JSON writes it, and keeps its reason code;
//! - the `traceparent` header of a stored event (saved with its FHIR
//!   bundle) is escaped the same way; dead letters store headers as JSON
//!   text, which escapes NUL already, so they keep them as they came.
//!
//! Payloads are bytes (BYTEA, BLOB): they are kept unchanged.

use std::borrow::Cow;

use super::{Ingest, Outputs, Rejection};

/// Reason code of an event whose ids or outputs hold text the store
/// cannot hold.
pub(super) const INVALID_TEXT: &str = "invalid_text";

/// How a NUL is written in stored text.
const NUL_ESCAPE: &str = "\\u0000";

fn has_nul(s: &str) -> bool {
    s.as_bytes().contains(&0)
}

/// `s` with each NUL written as `\u0000`.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if has_nul(s) {
        Cow::Owned(s.replace('\0', NUL_ESCAPE))
    } else {
        Cow::Borrowed(s)
    }
}

fn escape_owned(s: &str) -> String {
    escape(s).into_owned()
}

/// The event as it may be stored: borrowed when it is fine as it is (the
/// common case, which costs one scan of its text), else a screened copy.
pub(super) fn screen(ing: &Ingest) -> Cow<'_, Ingest> {
    // Only a stored event's traceparent goes to a statement as text (with
    // its FHIR bundle); a dead letter keeps the headers as JSON.
    let traceparent = traceparent(ing).filter(|_| ing.result.is_ok());
    let rejection_text = ing.result.as_ref().err().is_some_and(|r| {
        has_nul(&r.code)
            || has_nul(&r.reason)
            || r.mapping.as_deref().is_some_and(has_nul)
            || r.event_id.as_deref().is_some_and(has_nul)
            || r.detail.as_deref().is_some_and(has_nul)
    });
    let refused = refused_fields(ing);
    let escapes = has_nul(&ing.source)
        || ing.message_id.as_deref().is_some_and(has_nul)
        || ing.queue.as_deref().is_some_and(has_nul)
        || traceparent.is_some_and(has_nul)
        || rejection_text;
    if refused.is_empty() && !escapes {
        return Cow::Borrowed(ing);
    }
    let result = match &ing.result {
        Ok(m) if refused.is_empty() => Ok(m.clone()),
        Ok(m) => Err(Rejection {
            code: INVALID_TEXT.to_owned(),
            reason: invalid_text_reason(&refused),
            mapping: Some(escape_owned(&m.mapping)),
            event_id: Some(escape_owned(&m.event_id)),
            detail: None,
        }),
        Err(r) => Err(Rejection {
            code: escape_owned(&r.code),
            reason: escape_owned(&r.reason),
            mapping: r.mapping.as_deref().map(escape_owned),
            event_id: r.event_id.as_deref().map(escape_owned),
            detail: r.detail.as_deref().map(escape_owned),
        }),
    };
    let mut headers = ing.headers.clone();
    if let Some(tp) = traceparent.filter(|tp| has_nul(tp))
        && result.is_ok()
        && let Some(serde_json::Value::Object(h)) = headers.as_mut()
    {
        h.insert("traceparent".into(), escape_owned(tp).into());
    }
    Cow::Owned(Ingest {
        source: escape_owned(&ing.source),
        queue: ing.queue.as_deref().map(escape_owned),
        message_id: ing.message_id.as_deref().map(escape_owned),
        version_ts: ing.version_ts,
        received_at: ing.received_at,
        payload: ing.payload.clone(),
        headers,
        result,
    })
}

/// The `traceparent` header, which goes to the FHIR outbox as text.
fn traceparent(ing: &Ingest) -> Option<&str> {
    ing.headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .and_then(serde_json::Value::as_str)
}

/// The fields that make a mapped event unstorable. A rejected event is
/// parked anyway: its text is escaped and it keeps its reason.
fn refused_fields(ing: &Ingest) -> Vec<&'static str> {
    let Ok(m) = &ing.result else {
        return Vec::new();
    };
    let mut fields = Vec::new();
    if has_nul(&ing.source) {
        fields.push("source");
    }
    if ing.message_id.as_deref().is_some_and(has_nul) {
        fields.push("message id");
    }
    fields.extend(output_fields(m));
    fields
}

fn output_fields(m: &Outputs) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if has_nul(&m.event_id) {
        fields.push("event id");
    }
    if m.replaces.as_deref().is_some_and(has_nul) {
        fields.push("id it replaces");
    }
    if has_nul(&m.mapping) {
        fields.push("mapping id");
    }
    if m.bundle.as_ref().is_some_and(|(b, _)| has_nul(b)) {
        fields.push("FHIR bundle");
    }
    let dhis2 = m.dhis2.iter().any(|c| {
        [
            &c.rule,
            &c.data_element,
            &c.period,
            &c.org_unit,
            &c.category_option_combo,
            &c.attribute_option_combo,
            &c.date,
        ]
        .into_iter()
        .any(|s| has_nul(s))
            || c.value.as_str().is_some_and(has_nul)
    });
    if dhis2 {
        fields.push("DHIS2 contributions");
    }
    fields
}

/// Names the fields, never their content (personal data).
fn invalid_text_reason(fields: &[&str]) -> String {
    let list = match fields {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    };
    let verb = if fields.len() == 1 {
        "contains"
    } else {
        "contain"
    };
    format!(
        "the event's {list} {verb} a NUL character (U+0000), which the store cannot hold; \
         the event is parked with its raw payload, and this dead letter writes NUL as \\u0000"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(source: &str, event_id: &str) -> Ingest {
        Ingest {
            source: source.into(),
            queue: None,
            message_id: None,
            version_ts: None,
            received_at: 0,
            payload: b"{\"_id\": \"x\\u0000y\"}".to_vec(),
            headers: None,
            result: Ok(Outputs {
                mapping: "m".into(),
                mapping_version: 1,
                event_id: event_id.into(),
                replaces: None,
                bundle: None,
                dhis2: Vec::new(),
                puts: Vec::new(),
            }),
        }
    }

    #[test]
    fn clean_events_are_borrowed() {
        let ing = event("cht", "a");
        assert!(matches!(screen(&ing), Cow::Borrowed(_)));
    }

    #[test]
    fn nul_ids_are_refused_by_name_and_escaped() {
        let ing = event("c\0ht", "x\0y");
        let screened = screen(&ing);
        let Err(r) = &screened.result else {
            panic!("{screened:?}")
        };
        assert_eq!(r.code, INVALID_TEXT);
        assert_eq!(r.event_id.as_deref(), Some("x\\u0000y"));
        assert!(
            r.reason
                .starts_with("the event's source and event id contain a NUL"),
            "{}",
            r.reason
        );
        assert_eq!(screened.source, "c\\u0000ht");
        assert_eq!(screened.payload, ing.payload, "payload bytes unchanged");
    }

    #[test]
    fn field_lists_read_as_english() {
        assert_eq!(
            invalid_text_reason(&["source", "message id", "event id"])
                .split(" a NUL")
                .next(),
            Some("the event's source, message id and event id contain")
        );
    }
}
