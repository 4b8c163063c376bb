//! What mapping one event yields.

use serde::{Deserialize, Serialize};

/// The outputs of one event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappedEvent {
    /// Id of the mapping that produced this.
    pub mapping: String,
    /// Version of that mapping.
    pub mapping_version: u32,
    /// The event's id (from the payload or the message).
    pub event_id: String,
    /// The id of the event this one replaces (an edit in the app), whose
    /// outputs it supersedes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// FHIR transaction-bundle entries, in mapping order.
    pub fhir: Vec<FhirEntry>,
    /// DHIS2 aggregate contributions, in mapping order.
    pub dhis2: Vec<Dhis2Contribution>,
}

/// One entry of a FHIR transaction bundle (`Bundle.entry`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FhirEntry {
    /// `urn:uuid:` of the resource's deterministic id.
    pub full_url: String,
    /// The resource.
    pub resource: serde_json::Value,
    /// How the server is to write it.
    pub request: FhirRequest,
}

/// `Bundle.entry.request`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FhirRequest {
    /// `PUT` or `POST`.
    pub method: String,
    /// `Type/id`, `Type` or `Type?query`.
    pub url: String,
    /// Conditional-create query, for `POST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_none_exist: Option<String>,
}

/// How the contributions of several events combine into one DHIS2 value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// Number of contributing events (each contributes 1).
    Count,
    /// Sum of the values.
    Sum,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// The value of the latest event by date, then event id.
    Last,
}

/// One event's contribution to a DHIS2 aggregate data value. The delivery
/// side recomputes each total from all stored contributions, so replays
/// and withdrawn events never double count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Dhis2Contribution {
    /// Name of the contribution rule in the mapping.
    pub rule: String,
    /// Data element UID, or `code:CODE`.
    pub data_element: String,
    /// DHIS2 period id, e.g. `202403`.
    pub period: String,
    /// Org unit UID, or `code:CODE`.
    pub org_unit: String,
    /// Category option combo UID, or `code:CODE`.
    pub category_option_combo: String,
    /// Attribute option combo UID, or `code:CODE`.
    pub attribute_option_combo: String,
    /// The contribution: 1 for `count`, a number for `sum`/`min`/`max`, a
    /// number or text for `last`.
    pub value: serde_json::Value,
    /// How contributions combine.
    pub aggregation: Aggregation,
    /// The event date the period was derived from (`YYYY-MM-DD`), which
    /// orders contributions for `last`.
    pub date: String,
}

/// DHIS2's default category option combo, the same UID in every instance.
pub const DEFAULT_COMBO: &str = "HllvX50cXC0";
