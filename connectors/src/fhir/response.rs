//! What a FHIR server answers: the transaction-response bundle, or an
//! OperationOutcome, read leniently and classified.

use std::fmt;
use std::time::Duration;

use serde_json::Value;

use crate::auth::AuthError;
use crate::http::{excerpt, status_line};
use crate::retry::{Retryable, StatusClass, classify_status};

/// The server's answer to a transaction that succeeded: one entry per
/// request entry, in the same order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransactionResponse {
    /// `Bundle.entry[].response`, in request order.
    pub entries: Vec<EntryResponse>,
}

/// One `Bundle.entry.response`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryResponse {
    /// The 3-digit code at the start of `response.status` (`201 Created`,
    /// `200 ok`); 0 when the server gave none (the R4 example has
    /// `"DELETE"`).
    pub status: u16,
    /// `response.status` as sent.
    pub status_text: String,
    /// `response.location`, e.g. `Patient/12423/_history/1`.
    pub location: Option<String>,
    /// `response.etag`, e.g. `W/"1"`.
    pub etag: Option<String>,
    /// `Type/id` from the location, without the base or `_history`.
    pub resource_id: Option<String>,
}

/// One `OperationOutcome.issue`, as the server wrote it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Issue {
    /// `fatal`, `error`, `warning` or `information`.
    pub severity: String,
    /// The IssueType code: `invalid`, `multiple-matches`, `throttled`, ...
    pub code: String,
    /// `details.text`, else `diagnostics`.
    pub text: Option<String>,
    /// `expression` (FHIRPath of the offending element), else `location`.
    pub expression: Vec<String>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.severity, self.code)?;
        if let Some(text) = &self.text {
            write!(f, ": {text}")?;
        }
        if !self.expression.is_empty() {
            write!(f, " (at {})", self.expression.join(", "))?;
        }
        Ok(())
    }
}

/// A transaction was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// The server could not be reached, or did not answer in time:
    /// retryable.
    #[error("fhir request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The server answered with an error status: retryable for 408, 429
    /// and 5xx but 501, permanent otherwise (412 multiple matches, 422
    /// business rules, ...).
    #[error("fhir server answered HTTP {}: {detail}", status_line(*.status))]
    Status {
        /// HTTP status.
        status: u16,
        /// The OperationOutcome's issues, if one came back.
        issues: Vec<Issue>,
        /// The issues summarised, or what came back instead.
        detail: String,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// A 2xx whose body is not a transaction-response bundle: permanent
    /// (the server did not run the transaction as one).
    #[error("fhir server answered HTTP {} with {found}, not a transaction-response bundle", status_line(*.status))]
    UnexpectedResponse {
        /// HTTP status.
        status: u16,
        /// What came back instead.
        found: String,
    },
    /// No OAuth2 access token could be had.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl Retryable for FhirError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(e) => !e.is_builder(),
            Self::Status { status, .. } => classify_status(*status) == StatusClass::Transient,
            Self::UnexpectedResponse { .. } => false,
            Self::Auth(e) => e.is_retryable(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            Self::Auth(e) => e.retry_after(),
            _ => None,
        }
    }
}

/// The issues of an OperationOutcome, or `None` if `json` is not one.
pub(crate) fn operation_outcome_issues(json: &Value) -> Option<Vec<Issue>> {
    if json.get("resourceType")?.as_str()? != "OperationOutcome" {
        return None;
    }
    let issues = json.get("issue").and_then(Value::as_array);
    Some(issues.map_or_else(Vec::new, |issues| issues.iter().map(issue).collect()))
}

fn issue(json: &Value) -> Issue {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let strings = |key: &str| -> Vec<String> {
        json.get(key)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut expression = strings("expression");
    if expression.is_empty() {
        expression = strings("location");
    }
    Issue {
        severity: text(json.get("severity")).unwrap_or_default(),
        code: text(json.get("code")).unwrap_or_default(),
        text: text(json.pointer("/details/text")).or_else(|| text(json.get("diagnostics"))),
        expression,
    }
}

/// The issues on one line, at most five.
pub(crate) fn summarise(issues: &[Issue]) -> String {
    const SHOWN: usize = 5;
    if issues.is_empty() {
        return "OperationOutcome without issues".to_owned();
    }
    let mut out = issues
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    if issues.len() > SHOWN {
        out.push_str(&format!("; and {} more", issues.len() - SHOWN));
    }
    out
}

/// Describes a body that is not what was expected, without quoting any
/// JSON (which might be a resource, i.e. personal data).
pub(crate) fn describe_body(media_type: &str, body: &str) -> String {
    if body.trim().is_empty() {
        return "an empty body".to_owned();
    }
    match serde_json::from_str::<Value>(body) {
        Ok(json) => {
            if let Some(issues) = operation_outcome_issues(&json) {
                return format!("an OperationOutcome ({})", summarise(&issues));
            }
            match json.get("resourceType").and_then(Value::as_str) {
                Some("Bundle") => format!(
                    "a Bundle of type `{}`",
                    json.get("type").and_then(Value::as_str).unwrap_or("?")
                ),
                Some(other) => format!("a {other} resource"),
                None => format!("JSON that is not a FHIR resource ({} bytes)", body.len()),
            }
        }
        Err(_) => {
            let media = if media_type.is_empty() {
                "no content type"
            } else {
                media_type
            };
            format!("a non-JSON body ({media}): {}", excerpt(body))
        }
    }
}

/// Reads the server's answer to a transaction: a 2xx as a
/// transaction-response bundle, anything else as an error with the
/// OperationOutcome's issues (or a description of the body).
pub(crate) fn read_answer(
    status: u16,
    media_type: &str,
    body: &str,
    retry_after: Option<Duration>,
) -> Result<TransactionResponse, FhirError> {
    if classify_status(status) == StatusClass::Success {
        return parse_transaction_response(status, media_type, body);
    }
    let issues = serde_json::from_str(body)
        .ok()
        .and_then(|json| operation_outcome_issues(&json));
    let detail = match &issues {
        Some(issues) => summarise(issues),
        None => describe_body(media_type, body),
    };
    Err(FhirError::Status {
        status,
        issues: issues.unwrap_or_default(),
        detail,
        retry_after,
    })
}

/// Reads a 2xx body as a transaction-response bundle.
pub(crate) fn parse_transaction_response(
    status: u16,
    media_type: &str,
    body: &str,
) -> Result<TransactionResponse, FhirError> {
    let unexpected = || FhirError::UnexpectedResponse {
        status,
        found: describe_body(media_type, body),
    };
    let json: Value = serde_json::from_str(body).map_err(|_| unexpected())?;
    let is_bundle = json.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    let kind = json.get("type").and_then(Value::as_str);
    if !is_bundle || kind != Some("transaction-response") {
        return Err(unexpected());
    }
    let entries = json
        .get("entry")
        .and_then(Value::as_array)
        .map(|entries| entries.iter().map(entry_response).collect())
        .unwrap_or_default();
    Ok(TransactionResponse { entries })
}

fn entry_response(entry: &Value) -> EntryResponse {
    let response = entry.get("response");
    let field = |key: &str| {
        response
            .and_then(|r| r.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let status_text = field("status").unwrap_or_default();
    let location = field("location");
    EntryResponse {
        status: leading_status(&status_text),
        resource_id: location.as_deref().and_then(resource_id),
        etag: field("etag"),
        location,
        status_text,
    }
}

/// `201` from `"201 Created"`; 0 if the text does not start with a
/// 3-digit code.
fn leading_status(text: &str) -> u16 {
    let text = text.trim();
    let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() == 3 {
        digits.parse().unwrap_or(0)
    } else {
        0
    }
}

/// `Patient/123` from `Patient/123/_history/4`,
/// `http://host/fhir/Patient/123/_history/4` or `Patient/123`.
pub(crate) fn resource_id(location: &str) -> Option<String> {
    let path = location.split(['?', '#']).next().unwrap_or(location);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let end = segments
        .iter()
        .position(|s| *s == "_history")
        .unwrap_or(segments.len());
    if end < 2 {
        return None;
    }
    let (kind, id) = (segments[end - 2], segments[end - 1]);
    let is_type = kind.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && kind.chars().all(|c| c.is_ascii_alphanumeric());
    is_type.then(|| format!("{kind}/{id}"))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn resource_ids_from_locations() {
        assert_eq!(
            resource_id("Patient/12423/_history/1").as_deref(),
            Some("Patient/12423")
        );
        assert_eq!(
            resource_id("https://h/fhir/Observation/a-b.c/_history/2").as_deref(),
            Some("Observation/a-b.c")
        );
        assert_eq!(resource_id("Encounter/9").as_deref(), Some("Encounter/9"));
        assert_eq!(resource_id("urn:uuid:7f9724ed"), None);
        assert_eq!(resource_id("12423"), None);
    }

    #[test]
    fn lenient_statuses() {
        assert_eq!(leading_status("201 Created"), 201);
        assert_eq!(leading_status("200 ok"), 200);
        assert_eq!(leading_status("200"), 200);
        assert_eq!(leading_status("DELETE"), 0);
        assert_eq!(leading_status("2000"), 0);
    }
}
