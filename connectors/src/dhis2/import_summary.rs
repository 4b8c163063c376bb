//! DHIS2's answers to a data value import, in both shapes: the bare
//! ImportSummary (before 2.38, and `/api/37` after; HTTP 200 whatever the
//! outcome) and the 2.38+ WebMessage wrapping it in `response` (HTTP 200
//! for SUCCESS, 409 for WARNING and ERROR).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::auth::AuthError;
use crate::http::{excerpt, status_line};
use crate::retry::{Retryable, StatusClass, classify_status};

/// The import's overall status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImportStatus {
    /// Every value was handled (imported, updated, ignored as unchanged,
    /// or deleted).
    #[default]
    Success,
    /// Some values were rejected (see the conflicts); the others were
    /// stored.
    Warning,
    /// Nothing was stored: a batch-level problem (data set, outer org
    /// unit or attribute option combo, or an exception).
    Error,
}

/// One conflict of an import summary, as DHIS2 reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conflict {
    /// The first UID of `objects` (or the offending text).
    pub object: String,
    /// The objects concerned, by type: `{"organisationUnit": "uid"}`.
    pub objects: BTreeMap<String, String>,
    /// DHIS2's message, e.g. ``Period not valid: `2024-13` ``.
    pub value: String,
    /// `E7611` and the like (2.38+).
    pub error_code: Option<String>,
    /// The offending field of the value: `period`, `orgUnit`, ...
    pub property: Option<String>,
    /// 0-based positions in the request's `dataValues` (2.38+); empty for
    /// batch-level conflicts.
    pub indexes: Vec<usize>,
}

/// What DHIS2 did with one `dataValueSets` request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Overall status.
    pub status: ImportStatus,
    /// New values stored.
    pub imported: u64,
    /// Existing values changed.
    pub updated: u64,
    /// Values not stored: rejected, or (2.38.6+) identical to what DHIS2
    /// already had.
    pub ignored: u64,
    /// Values deleted (sent empty).
    pub deleted: u64,
    /// `description`, e.g. `Import process completed successfully`.
    pub description: Option<String>,
    /// The conflicts, merged by DHIS2 per error code and objects.
    pub conflicts: Vec<Conflict>,
    /// Positions of the values that were not stored because of an error.
    pub rejected_indexes: Vec<usize>,
}

impl ImportOutcome {
    /// Each rejected value's position (below `n_values`, the number of
    /// values sent) with the conflict that explains it, by position.
    /// Batch-level conflicts (no indexes) are not listed: check
    /// [`is_batch_rejected`](Self::is_batch_rejected) first.
    pub fn rejected(&self, n_values: usize) -> Vec<(usize, &Conflict)> {
        let mut out: Vec<(usize, &Conflict)> = self
            .conflicts
            .iter()
            .flat_map(|c| c.indexes.iter().map(move |&i| (i, c)))
            .filter(|(i, _)| *i < n_values)
            .collect();
        out.sort_by_key(|(i, _)| *i);
        out
    }

    /// Positions listed in `rejectedIndexes` that no conflict explains
    /// (servers before 2.38 give conflicts without indexes; `CREATE` on an
    /// existing value is rejected without a conflict).
    pub fn unexplained_rejections(&self, n_values: usize) -> Vec<usize> {
        let explained: std::collections::BTreeSet<usize> = self
            .conflicts
            .iter()
            .flat_map(|c| c.indexes.iter().copied())
            .collect();
        let mut out: Vec<usize> = self
            .rejected_indexes
            .iter()
            .copied()
            .filter(|i| *i < n_values && !explained.contains(i))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// `true` if DHIS2 refused the whole batch: status ERROR, or a
    /// data-set-level conflict (E7600–E7604) without indexes.
    pub fn is_batch_rejected(&self) -> bool {
        self.status == ImportStatus::Error
            || self
                .conflicts
                .iter()
                .any(|c| c.indexes.is_empty() && c.error_code.as_deref().is_some_and(is_batch_code))
    }

    /// The conflict that rejected the whole batch, if one says why.
    pub fn batch_conflict(&self) -> Option<&Conflict> {
        self.conflicts
            .iter()
            .find(|c| c.indexes.is_empty() && c.error_code.as_deref().is_some_and(is_batch_code))
            .or_else(|| {
                (self.status == ImportStatus::Error)
                    .then(|| self.conflicts.iter().find(|c| c.indexes.is_empty()))
                    .flatten()
            })
    }
}

fn is_batch_code(code: &str) -> bool {
    matches!(code, "E7600" | "E7601" | "E7602" | "E7603" | "E7604")
}

/// No import summary could be had from DHIS2.
#[derive(Debug, thiserror::Error)]
pub enum Dhis2Error {
    /// DHIS2 could not be reached, or did not answer in time: retryable.
    #[error("dhis2 request failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// DHIS2 answered with an error status and no import summary:
    /// retryable for 408, 429 and 5xx but 501; permanent otherwise (401
    /// and 403 with DHIS2's message, a 409 WebMessage such as E1111).
    #[error("dhis2 answered HTTP {}: {message}{}", status_line(*.status), error_code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Status {
        /// HTTP status.
        status: u16,
        /// DHIS2's `message`, or what came back instead.
        message: String,
        /// DHIS2's `errorCode`, e.g. `E1111`.
        error_code: Option<String>,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
        /// The body was DHIS2's own WebMessage (JSON with `httpStatusCode`
        /// or `errorCode`), not a page from something in front of it.
        web_message: bool,
    },
    /// A 2xx without an import summary or the metadata asked for:
    /// permanent.
    #[error("dhis2 answered HTTP {} with {found}", status_line(*.status))]
    UnexpectedResponse {
        /// HTTP status.
        status: u16,
        /// What came back instead.
        found: String,
    },
    /// No credential could be had.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The values could not be encoded as JSON (not expected to happen):
    /// permanent.
    #[error("cannot encode the data values: {0}")]
    Encode(#[source] serde_json::Error),
}

impl Dhis2Error {
    /// `true` for a 409 WebMessage from DHIS2 itself without an import
    /// summary (E1111 "Category option not found or not accessible" and
    /// the like): DHIS2 refused something in the values sent, which no
    /// retry changes. Find the offending values and park them; the
    /// destination is fine. A 409 page from a proxy is not one.
    pub fn is_values_conflict(&self) -> bool {
        matches!(
            self,
            Self::Status {
                status: 409,
                web_message: true,
                ..
            }
        )
    }
}

impl Retryable for Dhis2Error {
    fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(e) => !e.is_builder(),
            Self::Status { status, .. } => classify_status(*status) == StatusClass::Transient,
            Self::UnexpectedResponse { .. } | Self::Encode(_) => false,
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

/// An error answer: DHIS2's WebMessage `message` and `errorCode`, or an
/// excerpt of whatever came back (a proxy's error page).
pub(crate) fn error_from_body(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
) -> Dhis2Error {
    let json: Option<Value> = serde_json::from_str(body).ok();
    let text = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let message = text("message").unwrap_or_else(|| {
        if body.trim().is_empty() {
            "empty body".to_owned()
        } else {
            excerpt(body)
        }
    });
    let web_message = json.as_ref().is_some_and(|j| {
        j.get("httpStatusCode").is_some_and(Value::is_u64) || j.get("errorCode").is_some()
    });
    Dhis2Error::Status {
        status,
        message,
        error_code: text("errorCode"),
        retry_after,
        web_message,
    }
}

/// Reads the answer to a `dataValueSets` POST.
pub(crate) fn parse_import_response(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
) -> Result<ImportOutcome, Dhis2Error> {
    let class = classify_status(status);
    let json: Option<Value> = serde_json::from_str(body).ok();
    if class == StatusClass::Success || status == 409 {
        if let Some(summary) = json.as_ref().and_then(find_summary) {
            return parse_summary(status, summary);
        }
        if class == StatusClass::Success {
            let found = match &json {
                Some(j) => match j.get("message").and_then(Value::as_str) {
                    Some(m) => format!("a message without an import summary: {m}"),
                    None => "JSON without an import summary".to_owned(),
                },
                None if body.trim().is_empty() => "an empty body".to_owned(),
                None => format!("a non-JSON body: {}", excerpt(body)),
            };
            return Err(Dhis2Error::UnexpectedResponse { status, found });
        }
    }
    Err(error_from_body(status, body, retry_after))
}

/// The ImportSummary: the root (bare shape) or the WebMessage's
/// `response`.
fn find_summary(json: &Value) -> Option<&Value> {
    let is_summary = |v: &Value| {
        v.get("responseType").and_then(Value::as_str) == Some("ImportSummary")
            || v.get("importCount").is_some_and(Value::is_object)
    };
    if is_summary(json) {
        return Some(json);
    }
    json.get("response").filter(|r| is_summary(r))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSummary {
    status: Option<String>,
    description: Option<String>,
    import_count: Option<RawCount>,
    conflicts: Option<Vec<RawConflict>>,
    rejected_indexes: Option<Vec<usize>>,
}

#[derive(Deserialize, Default)]
struct RawCount {
    #[serde(default)]
    imported: u64,
    #[serde(default)]
    updated: u64,
    #[serde(default)]
    ignored: u64,
    #[serde(default)]
    deleted: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConflict {
    object: Option<String>,
    objects: Option<BTreeMap<String, Value>>,
    value: Option<String>,
    error_code: Option<String>,
    property: Option<String>,
    indexes: Option<Vec<usize>>,
}

fn parse_summary(status: u16, json: &Value) -> Result<ImportOutcome, Dhis2Error> {
    let raw = RawSummary::deserialize(json).map_err(|e| Dhis2Error::UnexpectedResponse {
        status,
        found: format!("an import summary that cannot be read: {e}"),
    })?;
    let import_status = match raw
        .status
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        Some("SUCCESS" | "OK") => ImportStatus::Success,
        Some("WARNING") => ImportStatus::Warning,
        Some("ERROR") => ImportStatus::Error,
        other => {
            return Err(Dhis2Error::UnexpectedResponse {
                status,
                found: format!("an import summary with status {other:?}"),
            });
        }
    };
    let count = raw.import_count.unwrap_or_default();
    let conflicts = raw
        .conflicts
        .unwrap_or_default()
        .into_iter()
        .map(|c| Conflict {
            object: c.object.unwrap_or_default(),
            objects: c
                .objects
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (k, v)
                })
                .collect(),
            value: c.value.unwrap_or_default(),
            error_code: c.error_code,
            property: c.property,
            indexes: c.indexes.unwrap_or_default(),
        })
        .collect();
    Ok(ImportOutcome {
        status: import_status,
        imported: count.imported,
        updated: count.updated,
        ignored: count.ignored,
        deleted: count.deleted,
        description: raw.description,
        conflicts,
        rejected_indexes: raw.rejected_indexes.unwrap_or_default(),
    })
}
