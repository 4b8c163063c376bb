//! A DHIS2 2.40 simulator: aggregate data value import, read-back and the
//! metadata look-ups Kiungo's preflight uses (data elements with their
//! category combo and data sets, org units with their data sets, option
//! combos with their category combo, data sets with their period type,
//! category combo and `timelyDays`;
//! `/api/me`, `/api/system/info`).
//!
//! Guarantee: `POST /api/dataValueSets` answers as a 2.40 server does
//! (contract note `dhis2-contract.md`): each value is validated against the
//! loaded metadata, conflicts are merged by error code and objects with
//! 0-based indexes, clean values are stored even when others conflict
//! (409 WARNING), and the counts follow the 2.40 rules (identical values
//! are `ignored`). A data-set-level problem (E7600, E7603, E7604) aborts
//! the whole import: status ERROR, nothing stored. A faulted or
//! unauthorised request changes nothing.
//!
//! Periods exist in the configured system calendar only
//! ([`SystemCalendar`], `iso8601` by default): an id that names no period
//! there is E7611 on import, dropped on read-back (409 E2002 when no
//! period is left), 409 E1101 on `/api/dataValues` and a `Period not
//! valid` conflict on completeness registration, as in 2.40.
//!
//! Compression, as DHIS2 2.38+ (`StreamUtils.wrapAndCheckCompressionFormat`
//! in the import): a `dataValueSets` body that starts with the gzip magic
//! bytes is inflated, whatever its `Content-Encoding`; one that does not
//! inflate fails the import (409 ERROR, "The import process failed").
//! `/sandbox/traffic` counts the bytes on the wire and inflated.
//!
//! The metadata is the document at `bridge/sandbox/dhis2-metadata.json`
//! (a subset of the Sierra Leone demo database) unless the config names
//! another file of the same shape. Attribute option combos: the default
//! `HllvX50cXC0`, the option combos of any ATTRIBUTE category combo that
//! lists them, and (sandbox extension) a top-level `attributeOptionCombos`
//! array of `{id, code?, name?, categoryCombo?: {id}, categoryOptions?:
//! [id]}`; those with a known category combo are listed by
//! `/api/categoryOptionCombos` too, with their category options.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Map, Value, json};

use super::faults::{Fault, FaultControl};

mod calendar;
mod completeness;
mod data_sets;

pub use calendar::{SystemCalendar, UnknownSystemCalendar};

/// The metadata shipped with the sandbox (Sierra Leone demo subset, 2.40).
pub const DEFAULT_METADATA: &str = include_str!("../../sandbox/dhis2-metadata.json");

/// The default category option combo (and attribute option combo).
pub const DEFAULT_COC: &str = "HllvX50cXC0";

/// The Basic credentials the simulator accepts (`admin:district`).
pub const BASIC_USER: (&str, &str) = ("admin", "district");

/// Why the metadata cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// Not JSON.
    #[error("metadata is not JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON of the wrong shape.
    #[error("metadata: {0}")]
    Shape(String),
}

/// One named object (data element, org unit, option combo).
#[derive(Debug, Clone)]
struct Named {
    id: String,
    code: Option<String>,
    name: String,
    /// The hierarchy path (`/root/…/id`) of an org unit; `None` elsewhere.
    path: Option<String>,
}

#[derive(Debug, Clone)]
struct DataElement {
    named: Named,
    value_type: String,
    category_combo: String,
    zero_is_significant: bool,
}

#[derive(Debug, Clone)]
struct DataSet {
    named: Named,
    data_elements: Vec<String>,
    period_type: Option<String>,
    /// The attribute category combo.
    category_combo: Option<String>,
    /// Days after a period within which a completeness registration is on
    /// time.
    timely_days: Option<i64>,
    /// The org units it is assigned to (`organisationUnits_in_subset`, or
    /// `organisationUnits: [{id}]`).
    org_units: HashSet<String>,
}

/// The metadata the simulator validates against.
#[derive(Debug, Clone)]
pub struct Metadata {
    data_elements: Vec<DataElement>,
    de_index: HashMap<String, usize>,
    org_units: Vec<Named>,
    ou_index: HashMap<String, usize>,
    /// Disaggregation option combos with their category combo.
    cocs: Vec<(Named, String)>,
    coc_index: HashMap<String, usize>,
    aocs: HashSet<String>,
    /// The attribute option combos whose category combo is known (those
    /// of ATTRIBUTE category combos, and top-level ones that name theirs),
    /// served by `/api/categoryOptionCombos` beside the others.
    aoc_combos: Vec<(Named, String)>,
    /// Each option combo's category options (UIDs, sorted), where the
    /// document lists them: `/api/categoryOptionCombos` serves them, and
    /// the undo of a registration finds its attribute option combo by
    /// them (`cc` and `cp`).
    combo_options: HashMap<String, Vec<String>>,
    data_sets: HashMap<String, DataSet>,
}

fn str_field(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn array<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc.get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The category options an option combo lists (`categoryOptions` as ids
/// or `{id}` objects), sorted; `None` when it lists none.
fn category_options(v: &Value) -> Option<Vec<String>> {
    let mut ids: Vec<String> = array(v, "categoryOptions")
        .iter()
        .filter_map(|o| o.as_str().map(str::to_owned).or_else(|| str_field(o, "id")))
        .collect();
    ids.sort();
    (!ids.is_empty()).then_some(ids)
}

fn named(v: &Value) -> Result<Named, MetadataError> {
    let id = str_field(v, "id")
        .ok_or_else(|| MetadataError::Shape(format!("object without id: {v}")))?;
    let name = str_field(v, "name")
        .or_else(|| str_field(v, "displayName"))
        .unwrap_or_else(|| id.clone());
    Ok(Named {
        id,
        code: str_field(v, "code"),
        name,
        path: str_field(v, "path"),
    })
}

impl Metadata {
    /// The attribute option combo of category combo `cc` whose category
    /// options are `options` (as DHIS2 finds the combo an undo's `cc` and
    /// `cp` name).
    pub(crate) fn attribute_combo_of(&self, cc: &str, options: &[String]) -> Option<&str> {
        let mut wanted = options.to_vec();
        wanted.sort();
        self.aoc_combos
            .iter()
            .find(|(n, combo)| combo == cc && self.combo_options.get(&n.id) == Some(&wanted))
            .map(|(n, _)| n.id.as_str())
    }

    /// Parses a metadata document (the shape of `dhis2-metadata.json`).
    pub fn parse(text: &str) -> Result<Self, MetadataError> {
        let doc: Value = serde_json::from_str(text)?;
        if !doc.is_object() {
            return Err(MetadataError::Shape("not a JSON object".into()));
        }
        let mut data_elements = Vec::new();
        for de in array(&doc, "dataElements") {
            data_elements.push(DataElement {
                named: named(de)?,
                value_type: str_field(de, "valueType").unwrap_or_else(|| "NUMBER".into()),
                category_combo: de
                    .pointer("/categoryCombo/id")
                    .and_then(Value::as_str)
                    .unwrap_or("bjDvmb4bfuf")
                    .to_owned(),
                zero_is_significant: de
                    .get("zeroIsSignificant")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            });
        }
        let org_units = array(&doc, "organisationUnits")
            .iter()
            .map(named)
            .collect::<Result<Vec<_>, _>>()?;
        let mut cocs = Vec::new();
        let mut aocs = HashSet::from([DEFAULT_COC.to_owned()]);
        let mut aoc_combos = Vec::new();
        let mut combo_options = HashMap::new();
        for cc in array(&doc, "categoryCombos") {
            let cc_id = str_field(cc, "id")
                .ok_or_else(|| MetadataError::Shape("categoryCombo without id".into()))?;
            let attribute =
                cc.get("dataDimensionType").and_then(Value::as_str) == Some("ATTRIBUTE");
            for coc in array(cc, "categoryOptionCombos") {
                let options = category_options(coc);
                let coc = named(coc)?;
                if let Some(options) = options {
                    combo_options.insert(coc.id.clone(), options);
                }
                if attribute {
                    aocs.insert(coc.id.clone());
                    aoc_combos.push((coc, cc_id.clone()));
                } else {
                    cocs.push((coc, cc_id.clone()));
                }
            }
        }
        for aoc in array(&doc, "attributeOptionCombos") {
            let n = named(aoc)?;
            aocs.insert(n.id.clone());
            if let Some(options) = category_options(aoc) {
                combo_options.insert(n.id.clone(), options);
            }
            if let Some(cc) = aoc.pointer("/categoryCombo/id").and_then(Value::as_str) {
                aoc_combos.push((n, cc.to_owned()));
            }
        }
        let mut data_sets = HashMap::new();
        for ds in array(&doc, "dataSets") {
            let id = str_field(ds, "id")
                .ok_or_else(|| MetadataError::Shape("dataSet without id".into()))?;
            let data_elements = array(ds, "dataSetElements")
                .iter()
                .filter_map(|e| e.pointer("/dataElement/id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect();
            let period_type = str_field(ds, "periodType");
            let org_units = array(ds, "organisationUnits_in_subset")
                .iter()
                .filter_map(Value::as_str)
                .chain(
                    array(ds, "organisationUnits")
                        .iter()
                        .filter_map(|o| o.get("id").and_then(Value::as_str)),
                )
                .map(str::to_owned)
                .collect();
            data_sets.insert(
                id,
                DataSet {
                    named: named(ds)?,
                    data_elements,
                    period_type,
                    category_combo: ds
                        .pointer("/categoryCombo/id")
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                    timely_days: ds.get("timelyDays").and_then(Value::as_i64),
                    org_units,
                },
            );
        }
        let de_index = index(data_elements.iter().map(|d| &d.named));
        let ou_index = index(org_units.iter());
        let coc_index = index(cocs.iter().map(|(n, _)| n));
        Ok(Self {
            data_elements,
            de_index,
            org_units,
            ou_index,
            cocs,
            coc_index,
            aocs,
            aoc_combos,
            combo_options,
            data_sets,
        })
    }

    /// The shipped default metadata.
    pub fn default_subset() -> Result<Self, MetadataError> {
        Self::parse(DEFAULT_METADATA)
    }

    fn data_element(&self, id: &str) -> Option<&DataElement> {
        self.de_index.get(id).map(|&i| &self.data_elements[i])
    }

    fn coc_combo(&self, id: &str) -> Option<&str> {
        self.coc_index.get(id).map(|&i| self.cocs[i].1.as_str())
    }

    /// Translates a code to a UID under `idScheme=code`; unknown codes
    /// are returned unchanged (and then fail as "not found").
    fn resolve(&self, kind: Kind, scheme: Scheme, id: &str) -> String {
        if scheme == Scheme::Uid {
            return id.to_owned();
        }
        let found = match kind {
            Kind::DataElement => self
                .data_elements
                .iter()
                .map(|d| &d.named)
                .find(|n| n.code.as_deref() == Some(id)),
            Kind::OrgUnit => self
                .org_units
                .iter()
                .find(|n| n.code.as_deref() == Some(id)),
            Kind::Coc => self
                .cocs
                .iter()
                .map(|(n, _)| n)
                .find(|n| n.code.as_deref() == Some(id)),
        };
        found.map_or_else(|| id.to_owned(), |n| n.id.clone())
    }
}

fn index<'a>(items: impl Iterator<Item = &'a Named>) -> HashMap<String, usize> {
    items.enumerate().map(|(i, n)| (n.id.clone(), i)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    DataElement,
    OrgUnit,
    Coc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Uid,
    Code,
}

// ---------------------------------------------------------------------------
// Periods

/// Parses a DHIS2 ISO period id (2.38–2.41 formats) and returns its
/// canonical form (`2024-01` -> `202401`, `2024W05` -> `2024W5`), or
/// `None` when it is not a valid period.
pub fn normalize_period(pe: &str) -> Option<String> {
    let bytes = pe.as_bytes();
    if bytes.len() < 4 || !bytes[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let year: i32 = pe[..4].parse().ok()?;
    let rest = &pe[4..];
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let small = |s: &str, max: u32| -> Option<u32> {
        if !digits(s) || s.len() > 2 {
            return None;
        }
        let n: u32 = s.parse().ok()?;
        (1..=max).contains(&n).then_some(n)
    };
    let day = |m: &str, d: &str| -> Option<String> {
        if m.len() != 2 || d.len() != 2 || !digits(m) || !digits(d) {
            return None;
        }
        let (mo, da): (u32, u32) = (m.parse().ok()?, d.parse().ok()?);
        chrono::NaiveDate::from_ymd_opt(year, mo, da)?;
        Some(format!("{year:04}{mo:02}{da:02}"))
    };
    let month = |m: &str| -> Option<String> {
        if m.len() != 2 || !digits(m) {
            return None;
        }
        let mo: u32 = m.parse().ok()?;
        (1..=12).contains(&mo).then(|| format!("{year:04}{mo:02}"))
    };
    if rest.is_empty() {
        return Some(pe.to_owned());
    }
    if digits(rest) {
        return match rest.len() {
            2 => month(rest),
            4 => day(&rest[..2], &rest[2..]),
            _ => None,
        };
    }
    if let Some(r) = rest.strip_prefix('-') {
        return match r.split_once('-') {
            Some((m, d)) => day(m, d),
            None => month(r),
        };
    }
    for (prefix, max) in [
        ("WedW", 53),
        ("ThuW", 53),
        ("SatW", 53),
        ("SunW", 53),
        ("BiW", 27),
        ("NovQ", 4),
        ("AprilS", 2),
        ("NovS", 2),
        ("W", 53),
        ("Q", 4),
        ("S", 2),
    ] {
        if let Some(n) = rest.strip_prefix(prefix)
            && digits(n)
        {
            let n = small(n, max)?;
            if prefix == "W" {
                chrono::NaiveDate::from_isoywd_opt(year, n, chrono::Weekday::Mon)?;
            }
            return Some(format!("{year:04}{prefix}{n}"));
        }
    }
    if let Some(m) = rest.strip_suffix('B') {
        let n = small(m, 6)?;
        return (m.len() == 2).then(|| format!("{year:04}{n:02}B"));
    }
    matches!(rest, "April" | "July" | "Oct" | "Nov").then(|| pe.to_owned())
}

// ---------------------------------------------------------------------------
// Value types

/// Checks `value` against a DHIS2 value type; `Err` carries the i18n key
/// DHIS2 reports in E7619.
fn check_value_type(value_type: &str, value: &str) -> Result<(), &'static str> {
    let int = || -> Option<i64> {
        let digits = value.strip_prefix('-').unwrap_or(value);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        value.parse::<i32>().ok().map(i64::from)
    };
    let num = || -> Option<f64> {
        if value.is_empty()
            || !value
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            return None;
        }
        value.parse::<f64>().ok().filter(|f| f.is_finite())
    };
    let ok = match value_type {
        "NUMBER" => num().is_some(),
        "INTEGER" => int().is_some(),
        "INTEGER_POSITIVE" => int().is_some_and(|i| i > 0),
        "INTEGER_NEGATIVE" => int().is_some_and(|i| i < 0),
        "INTEGER_ZERO_OR_POSITIVE" => int().is_some_and(|i| i >= 0),
        "PERCENTAGE" => num().is_some_and(|f| (0.0..=100.0).contains(&f)),
        "UNIT_INTERVAL" => num().is_some_and(|f| (0.0..=1.0).contains(&f)),
        "BOOLEAN" => matches!(value, "true" | "false"),
        "TRUE_ONLY" => value == "true",
        "DATE" => chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").is_ok(),
        "TEXT" => value.chars().count() <= 50_000,
        _ => true,
    };
    if ok {
        return Ok(());
    }
    Err(match value_type {
        "NUMBER" => "value_not_numeric",
        "INTEGER" => "value_not_integer",
        "INTEGER_POSITIVE" => "value_not_positive_integer",
        "INTEGER_NEGATIVE" => "value_not_negative_integer",
        "INTEGER_ZERO_OR_POSITIVE" => "value_not_zero_or_positive_integer",
        "PERCENTAGE" => "value_not_percentage",
        "UNIT_INTERVAL" => "value_not_unit_interval",
        "BOOLEAN" => "value_not_bool",
        "TRUE_ONLY" => "value_not_true_only",
        "DATE" => "value_not_valid_date",
        _ => "value_length_greater_than_max_length",
    })
}

fn is_numeric_type(value_type: &str) -> bool {
    matches!(
        value_type,
        "NUMBER"
            | "INTEGER"
            | "INTEGER_POSITIVE"
            | "INTEGER_NEGATIVE"
            | "INTEGER_ZERO_OR_POSITIVE"
            | "PERCENTAGE"
            | "UNIT_INTERVAL"
    )
}

// ---------------------------------------------------------------------------
// Store and import

/// The key of one stored value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueKey {
    /// Data element UID.
    pub data_element: String,
    /// Canonical period id.
    pub period: String,
    /// Org unit UID.
    pub org_unit: String,
    /// Category option combo UID.
    pub category_option_combo: String,
    /// Attribute option combo UID.
    pub attribute_option_combo: String,
}

#[derive(Debug, Clone, PartialEq)]
struct Stored {
    value: String,
    comment: Option<String>,
    followup: bool,
    stored_by: String,
    created: String,
    last_updated: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strategy {
    CreateAndUpdate,
    Create,
    Update,
    Delete,
}

impl Strategy {
    fn parse(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "CREATE" | "NEW" => Self::Create,
            "UPDATE" | "UPDATES" => Self::Update,
            "DELETE" | "DELETES" => Self::Delete,
            _ => Self::CreateAndUpdate,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::CreateAndUpdate => "CREATE_AND_UPDATE",
            Self::Create => "CREATE",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// Options from the query string (the payload's own take precedence).
#[derive(Debug, Clone)]
struct ImportOptions {
    dry_run: bool,
    strategy: Strategy,
    de_scheme: Scheme,
    ou_scheme: Scheme,
    coc_scheme: Scheme,
}

impl ImportOptions {
    fn from_query(q: &[(String, String)]) -> Self {
        let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
        let scheme = |specific: &str| match get(specific).or_else(|| get("idScheme")) {
            Some(s) if s.eq_ignore_ascii_case("code") => Scheme::Code,
            _ => Scheme::Uid,
        };
        Self {
            dry_run: get("dryRun").is_some_and(|v| v == "true"),
            strategy: get("importStrategy")
                .or_else(|| get("strategy"))
                .map_or(Strategy::CreateAndUpdate, Strategy::parse),
            de_scheme: scheme("dataElementIdScheme"),
            ou_scheme: scheme("orgUnitIdScheme"),
            coc_scheme: scheme("categoryOptionComboIdScheme"),
        }
    }

    fn echo(&self) -> Value {
        let scheme = |s: Scheme| if s == Scheme::Code { "CODE" } else { "UID" };
        json!({
            "idSchemes": {
                "dataElementIdScheme": {"type": scheme(self.de_scheme)},
                "orgUnitIdScheme": {"type": scheme(self.ou_scheme)},
                "categoryOptionComboIdScheme": {"type": scheme(self.coc_scheme)},
            },
            "dryRun": self.dry_run,
            "async": false,
            "importStrategy": self.strategy.name(),
            "mergeMode": "REPLACE",
            "reportMode": "FULL",
            "skipExistingCheck": false,
            "sharing": false,
            "skipNotifications": false,
            "skipAudit": false,
            "datasetAllowsPeriods": false,
            "strictPeriods": false,
            "strictDataElements": false,
            "strictCategoryOptionCombos": false,
            "strictAttributeOptionCombos": false,
            "strictOrganisationUnits": false,
            "strictDataSetApproval": false,
            "strictDataSetLocking": false,
            "strictDataSetInputPeriods": false,
            "requireCategoryOptionCombo": false,
            "requireAttributeOptionCombo": false,
            "skipPatternValidation": false,
            "ignoreEmptyCollection": false,
            "force": false,
            "firstRowIsHeader": true,
            "skipLastUpdated": false,
            "mergeDataValues": false,
            "skipCache": false,
        })
    }
}

/// ImportSummary.status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ImportStatus {
    Success,
    Warning,
    Error,
}

impl ImportStatus {
    const fn name(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
        }
    }
}

/// A conflict being built: merged by (errorCode, objects).
#[derive(Debug)]
struct Conflict {
    code: &'static str,
    property: &'static str,
    objects: Vec<(&'static str, String)>,
    message: String,
    indexes: Option<Vec<usize>>,
}

impl Conflict {
    fn to_json(&self) -> Value {
        let mut objects = Map::new();
        for (k, v) in &self.objects {
            objects.insert((*k).to_owned(), Value::String(v.clone()));
        }
        let mut c = Map::new();
        c.insert(
            "object".into(),
            Value::String(
                self.objects
                    .first()
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            ),
        );
        c.insert("objects".into(), Value::Object(objects));
        c.insert("value".into(), Value::String(self.message.clone()));
        c.insert("errorCode".into(), Value::String(self.code.into()));
        c.insert("property".into(), Value::String(self.property.into()));
        if let Some(ix) = &self.indexes {
            c.insert("indexes".into(), json!(ix));
        }
        Value::Object(c)
    }
}

#[derive(Default)]
struct Conflicts(Vec<Conflict>);

impl Conflicts {
    fn add(
        &mut self,
        index: Option<usize>,
        code: &'static str,
        property: &'static str,
        objects: Vec<(&'static str, String)>,
        message: String,
    ) {
        if let Some(existing) = self
            .0
            .iter_mut()
            .find(|c| c.code == code && c.objects == objects)
        {
            if let (Some(ix), Some(i)) = (existing.indexes.as_mut(), index) {
                ix.push(i);
            }
            return;
        }
        self.0.push(Conflict {
            code,
            property,
            objects,
            message,
            indexes: index.map(|i| vec![i]),
        });
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    imported: u64,
    updated: u64,
    ignored: u64,
    deleted: u64,
}

/// What clients sent to `dataValueSets`, for benchmarks: requests,
/// bytes, values, and how often each value key was sent.
#[derive(Debug, Default)]
struct Traffic {
    requests: u64,
    /// Body bytes as received (gzipped or not).
    bytes: u64,
    /// The same bodies inflated.
    body_bytes: u64,
    /// Of the requests, how many came gzipped.
    gzipped: u64,
    /// Client (address, port) pairs seen: one per TCP connection.
    peers: std::collections::HashSet<std::net::SocketAddr>,
    values: u64,
    accepted: u64,
    per_key: std::collections::HashMap<String, u64>,
}

/// The simulator's state.
pub struct Dhis2State {
    metadata: Metadata,
    /// The system calendar: which period ids exist.
    calendar: SystemCalendar,
    values: Mutex<BTreeMap<ValueKey, Stored>>,
    registrations: completeness::Registrations,
    traffic: Mutex<Traffic>,
    pub(crate) faults: FaultControl,
}

impl std::fmt::Debug for Dhis2State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dhis2State").finish_non_exhaustive()
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f")
        .to_string()
}

impl Dhis2State {
    /// A simulator over `metadata` in `calendar` with `faults`.
    pub fn new(metadata: Metadata, calendar: SystemCalendar, faults: FaultControl) -> Self {
        Self {
            metadata,
            calendar,
            values: Mutex::new(BTreeMap::new()),
            registrations: completeness::Registrations::default(),
            traffic: Mutex::new(Traffic::default()),
            faults,
        }
    }

    /// What clients sent to `dataValueSets` (what `GET /sandbox/traffic`
    /// answers): requests, body bytes on the wire (`bytes`) and inflated
    /// (`body_bytes`), gzipped requests, values sent and accepted
    /// (imported, updated or deleted), distinct value keys, sends per key,
    /// and TCP connections opened to the API (distinct client ports).
    pub fn traffic_json(&self) -> Value {
        let t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
        let keys = t.per_key.len() as u64;
        json!({
            "requests": t.requests,
            "bytes": t.bytes,
            "body_bytes": t.body_bytes,
            "gzipped": t.gzipped,
            "connections": t.peers.len(),
            "values": t.values,
            "accepted": t.accepted,
            "keys": keys,
            "sends_per_key_mean": if keys == 0 { 0.0 } else { t.values as f64 / keys as f64 },
            "sends_per_key_max": t.per_key.values().copied().max().unwrap_or(0),
        })
    }

    /// Notes the connection a request came on.
    fn saw_peer(&self, req: &HttpRequest) {
        if let Some(peer) = req.peer_addr() {
            let mut t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
            t.peers.insert(peer);
        }
    }

    /// Counts one `dataValueSets` request (`wire` bytes received, `body`
    /// inflated) and its import summary.
    fn count(&self, wire: usize, gzipped: bool, body: &[u8], summary: &Value) {
        let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let mut t = self.traffic.lock().unwrap_or_else(PoisonError::into_inner);
        t.requests += 1;
        t.bytes += wire as u64;
        t.body_bytes += body.len() as u64;
        t.gzipped += u64::from(gzipped);
        for v in doc["dataValues"].as_array().into_iter().flatten() {
            t.values += 1;
            let key = [
                "dataElement",
                "period",
                "orgUnit",
                "categoryOptionCombo",
                "attributeOptionCombo",
            ]
            .iter()
            .map(|f| v[*f].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("/");
            *t.per_key.entry(key).or_default() += 1;
        }
        let c = &summary["importCount"];
        t.accepted += ["imported", "updated", "deleted"]
            .iter()
            .map(|k| c[*k].as_u64().unwrap_or(0))
            .sum::<u64>();
    }

    /// Every stored value, as `/sandbox/values` shows it.
    pub fn values_json(&self) -> Value {
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let list: Vec<Value> = values.iter().map(|(k, v)| value_json(k, v)).collect();
        json!({"total": list.len(), "dataValues": list})
    }

    /// Runs one import and returns the ImportSummary and its status.
    fn import(&self, body: &[u8], query: &[(String, String)]) -> (Value, ImportStatus) {
        let mut options = ImportOptions::from_query(query);
        let failed = |options: &ImportOptions, e: &str| {
            (
                summary(
                    options,
                    ImportStatus::Error,
                    &format!("The import process failed: {e}"),
                    Counts::default(),
                    &Conflicts::default(),
                    &[],
                    "false",
                ),
                ImportStatus::Error,
            )
        };
        let doc: Value = match serde_json::from_slice(body) {
            Ok(d) => d,
            Err(e) => return failed(&options, &e.to_string()),
        };
        let Some(set) = doc.as_object() else {
            return failed(&options, "the payload is not a JSON object");
        };
        if let Some(d) = set.get("dryRun").and_then(Value::as_bool) {
            options.dry_run = d;
        }
        if let Some(s) = set.get("strategy").and_then(Value::as_str) {
            options.strategy = Strategy::parse(s);
        }
        let body_scheme = |key: &str| -> Option<Scheme> {
            set.get(key)
                .or_else(|| set.get("idScheme"))
                .and_then(Value::as_str)
                .map(|s| {
                    if s.eq_ignore_ascii_case("code") {
                        Scheme::Code
                    } else {
                        Scheme::Uid
                    }
                })
        };
        if let Some(s) = body_scheme("dataElementIdScheme") {
            options.de_scheme = s;
        }
        if let Some(s) = body_scheme("orgUnitIdScheme") {
            options.ou_scheme = s;
        }
        if let Some(s) = body_scheme("categoryOptionComboIdScheme") {
            options.coc_scheme = s;
        }
        let md = &self.metadata;
        let data_set = text(set.get("dataSet"));
        let outer_pe = text(set.get("period"));
        let outer_ou =
            text(set.get("orgUnit")).map(|o| md.resolve(Kind::OrgUnit, options.ou_scheme, &o));
        let outer_aoc = text(set.get("attributeOptionCombo"));
        let complete = match (&data_set, text(set.get("completeDate"))) {
            (Some(_), Some(d)) if !d.is_empty() => d,
            _ => "false".to_owned(),
        };
        let mut conflicts = Conflicts::default();

        // Data-set-level checks: the first failure aborts the import.
        let ds_objects = |first: (&'static str, String)| {
            let mut o = vec![first];
            if let Some(ds) = &data_set {
                o.push(("dataSet", ds.clone()));
            }
            o
        };
        if let Some(ds) = data_set
            .as_ref()
            .filter(|ds| !md.data_sets.contains_key(*ds))
        {
            conflicts.add(
                None,
                "E7600",
                "dataSet",
                vec![("dataSet", ds.clone())],
                format!("Data set not found or not accessible: `{ds}`"),
            );
        } else if let Some(ou) = outer_ou
            .as_ref()
            .filter(|ou| !md.ou_index.contains_key(*ou))
        {
            conflicts.add(
                None,
                "E7603",
                "orgUnit",
                ds_objects(("organisationUnit", ou.clone())),
                format!("Org unit not found or not accessible: `{ou}`"),
            );
        } else if let Some(aoc) = outer_aoc.as_ref().filter(|a| !md.aocs.contains(*a)) {
            conflicts.add(
                None,
                "E7604",
                "attributeOptionCombo",
                ds_objects(("categoryOptionCombo", aoc.clone())),
                format!("Attribute option combo not found or not accessible: `{aoc}`"),
            );
        }
        if !conflicts.0.is_empty() {
            return (
                summary(
                    &options,
                    ImportStatus::Error,
                    "Import process was aborted",
                    Counts::default(),
                    &conflicts,
                    &[],
                    &complete,
                ),
                ImportStatus::Error,
            );
        }

        let empty = Vec::new();
        let values = set
            .get("dataValues")
            .and_then(Value::as_array)
            .unwrap_or(&empty);
        let mut counts = Counts::default();
        let mut rejected = Vec::new();
        let mut store = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let stamp = now();
        for (i, dv) in values.iter().enumerate() {
            let field = |k: &str| text(dv.get(k));
            let de_raw = field("dataElement").unwrap_or_else(|| "null".into());
            let de_id = md.resolve(Kind::DataElement, options.de_scheme, &de_raw);
            let pe = field("period")
                .or_else(|| outer_pe.clone())
                .unwrap_or_else(|| "null".into());
            let ou = field("orgUnit")
                .map(|o| md.resolve(Kind::OrgUnit, options.ou_scheme, &o))
                .or_else(|| outer_ou.clone())
                .unwrap_or_else(|| "null".into());
            let coc = field("categoryOptionCombo")
                .filter(|c| !c.is_empty())
                .map_or_else(
                    || DEFAULT_COC.to_owned(),
                    |c| md.resolve(Kind::Coc, options.coc_scheme, &c),
                );
            let aoc = field("attributeOptionCombo")
                .filter(|c| !c.is_empty())
                .or_else(|| outer_aoc.clone())
                .unwrap_or_else(|| DEFAULT_COC.to_owned());
            let value = field("value");
            let comment = field("comment");
            let followup = dv.get("followup").and_then(Value::as_bool).unwrap_or(false);
            let deleted = dv.get("deleted").and_then(Value::as_bool).unwrap_or(false);

            let Some(de) = md.data_element(&de_id) else {
                conflicts.add(
                    Some(i),
                    "E7610",
                    "dataElement",
                    vec![("dataElement", de_id.clone())],
                    format!("Data element not found or not accessible: `{de_id}`"),
                );
                rejected.push(i);
                counts.ignored += 1;
                continue;
            };
            let Some(period) = self.calendar.canonical_period(&pe) else {
                conflicts.add(
                    Some(i),
                    "E7611",
                    "period",
                    vec![("period", pe.clone())],
                    format!("Period not valid: `{pe}`"),
                );
                rejected.push(i);
                counts.ignored += 1;
                continue;
            };
            if !md.ou_index.contains_key(&ou) {
                conflicts.add(
                    Some(i),
                    "E7612",
                    "orgUnit",
                    vec![("organisationUnit", ou.clone())],
                    format!("Organisation unit not found or not accessible: `{ou}`"),
                );
                rejected.push(i);
                counts.ignored += 1;
                continue;
            }
            match md.coc_combo(&coc) {
                None => {
                    conflicts.add(Some(i), "E7613", "categoryOptionCombo", vec![("categoryOptionCombo", coc.clone())], format!("Category option combo not found or not accessible for writing data: `{coc}`"));
                    rejected.push(i);
                    counts.ignored += 1;
                    continue;
                }
                Some(cc) if cc != de.category_combo => {
                    conflicts.add(Some(i), "E7634", "categoryOptionCombo", vec![("categoryOptionCombo", coc.clone()), ("dataElement", de_id.clone())], format!("Category option combo: `{coc}` must be part of category combo of data element: `{de_id}`"));
                    rejected.push(i);
                    counts.ignored += 1;
                    continue;
                }
                Some(_) => {}
            }
            if !md.aocs.contains(&aoc) {
                conflicts.add(Some(i), "E7615", "attributeOptionCombo", vec![("categoryOptionCombo", aoc.clone())], format!("Attribute option combo not found or not accessible for writing data: `{aoc}`"));
                rejected.push(i);
                counts.ignored += 1;
                continue;
            }
            let value = value.filter(|v| !v.is_empty());
            if let Some(v) = &value
                && !deleted
                && let Err(key) = check_value_type(&de.value_type, v)
            {
                conflicts.add(
                    Some(i),
                    "E7619",
                    "value",
                    vec![("dataElement", de_id.clone()), ("value", key.to_owned())],
                    format!("Value must match value type of data element `{de_id}`: `{key}`"),
                );
                rejected.push(i);
                counts.ignored += 1;
                continue;
            }

            let key = ValueKey {
                data_element: de_id.clone(),
                period,
                org_unit: ou,
                category_option_combo: coc,
                attribute_option_combo: aoc,
            };
            let existing = store.get(&key);
            let delete = deleted || options.strategy == Strategy::Delete;
            match (existing, value) {
                (Some(_), _) if delete => {
                    counts.deleted += 1;
                    if !options.dry_run {
                        store.remove(&key);
                    }
                }
                (None, _) if delete => counts.ignored += 1,
                (Some(_), None) if options.strategy != Strategy::Create => {
                    counts.deleted += 1;
                    if !options.dry_run {
                        store.remove(&key);
                    }
                }
                (_, None) => counts.ignored += 1,
                (Some(_), Some(_)) if options.strategy == Strategy::Create => {
                    counts.ignored += 1;
                    rejected.push(i);
                }
                (Some(old), Some(v)) => {
                    if old.value == v && old.comment == comment && old.followup == followup {
                        counts.ignored += 1;
                    } else {
                        counts.updated += 1;
                        if !options.dry_run {
                            let created = old.created.clone();
                            store.insert(
                                key,
                                Stored {
                                    value: v,
                                    comment,
                                    followup,
                                    stored_by: BASIC_USER.0.into(),
                                    created,
                                    last_updated: stamp.clone(),
                                },
                            );
                        }
                    }
                }
                (None, Some(_)) if options.strategy == Strategy::Update => {
                    counts.ignored += 1;
                    rejected.push(i);
                }
                (None, Some(v)) => {
                    let zero =
                        is_numeric_type(&de.value_type) && v.parse::<f64>().is_ok_and(|f| f == 0.0);
                    if zero && !de.zero_is_significant {
                        // 2.40 quirk: skipped and not counted at all.
                        continue;
                    }
                    counts.imported += 1;
                    if !options.dry_run {
                        store.insert(
                            key,
                            Stored {
                                value: v,
                                comment,
                                followup,
                                stored_by: BASIC_USER.0.into(),
                                created: stamp.clone(),
                                last_updated: stamp.clone(),
                            },
                        );
                    }
                }
            }
        }
        let status = if conflicts.0.is_empty() {
            ImportStatus::Success
        } else {
            ImportStatus::Warning
        };
        (
            summary(
                &options,
                status,
                "Import process completed successfully",
                counts,
                &conflicts,
                &rejected,
                &complete,
            ),
            status,
        )
    }

    /// `GET /api/dataValueSets`: the stored values the query selects. As
    /// 2.40 (`DefaultDataValueSetService`), period ids that do not exist
    /// in the system calendar are dropped; when periods were asked for and
    /// none exists, the query is refused (409 E2002).
    fn read_set(&self, query: &[(String, String)]) -> Result<Value, IllegalQuery> {
        let all = |k: &str| -> Vec<&str> {
            query
                .iter()
                .filter(|(key, _)| key == k)
                .flat_map(|(_, v)| v.split(','))
                .collect()
        };
        let (sets, periods, mut units) = (all("dataSet"), all("period"), all("orgUnit"));
        // `children=true`: the org units' whole subtrees, as DHIS2 reads
        // them (every org unit whose path passes through one asked for).
        let children = query.iter().any(|(k, v)| k == "children" && v == "true");
        let asked = units.clone();
        if children && !asked.is_empty() {
            units = self
                .metadata
                .org_units
                .iter()
                .filter(|ou| {
                    ou.path
                        .as_deref()
                        .is_some_and(|p| p.split('/').any(|step| asked.contains(&step)))
                })
                .map(|ou| ou.id.as_str())
                .chain(asked.iter().copied())
                .collect();
        }
        let asked_periods = !periods.is_empty();
        let periods: Vec<String> = periods
            .iter()
            .filter_map(|p| self.calendar.canonical_period(p))
            .collect();
        if asked_periods && periods.is_empty() {
            return Err(IllegalQuery {
                code: "E2002",
                message: "At least one period, start/end dates, last updated or last updated duration must be specified".into(),
            });
        }
        let des: Option<HashSet<&str>> = (!sets.is_empty()).then(|| {
            sets.iter()
                .filter_map(|s| self.metadata.data_sets.get(*s))
                .flat_map(|ds| ds.data_elements.iter().map(String::as_str))
                .collect()
        });
        let values = self.values.lock().unwrap_or_else(PoisonError::into_inner);
        let list: Vec<Value> = values
            .iter()
            .filter(|(k, _)| {
                des.as_ref()
                    .is_none_or(|d| d.contains(k.data_element.as_str()))
            })
            .filter(|(k, _)| periods.is_empty() || periods.contains(&k.period))
            .filter(|(k, _)| units.is_empty() || units.contains(&k.org_unit.as_str()))
            .map(|(k, v)| value_json(k, v))
            .collect();
        let mut out = Map::new();
        if let [ds] = sets.as_slice() {
            out.insert("dataSet".into(), json!(ds));
        }
        if let [pe] = periods.as_slice() {
            out.insert("period".into(), json!(pe));
        }
        if let [ou] = asked.as_slice() {
            out.insert("orgUnit".into(), json!(ou));
        }
        out.insert("dataValues".into(), Value::Array(list));
        Ok(Value::Object(out))
    }
}

fn value_json(k: &ValueKey, v: &Stored) -> Value {
    let mut m = Map::new();
    m.insert("dataElement".into(), json!(k.data_element));
    m.insert("period".into(), json!(k.period));
    m.insert("orgUnit".into(), json!(k.org_unit));
    m.insert("categoryOptionCombo".into(), json!(k.category_option_combo));
    m.insert(
        "attributeOptionCombo".into(),
        json!(k.attribute_option_combo),
    );
    m.insert("value".into(), json!(v.value));
    m.insert("storedBy".into(), json!(v.stored_by));
    m.insert("created".into(), json!(v.created));
    m.insert("lastUpdated".into(), json!(v.last_updated));
    if let Some(c) = &v.comment {
        m.insert("comment".into(), json!(c));
    }
    m.insert("followup".into(), json!(v.followup));
    Value::Object(m)
}

fn summary(
    options: &ImportOptions,
    status: ImportStatus,
    description: &str,
    counts: Counts,
    conflicts: &Conflicts,
    rejected: &[usize],
    complete: &str,
) -> Value {
    json!({
        "responseType": "ImportSummary",
        "status": status.name(),
        "importOptions": options.echo(),
        "description": description,
        "importCount": {
            "imported": counts.imported,
            "updated": counts.updated,
            "ignored": counts.ignored,
            "deleted": counts.deleted,
        },
        "conflicts": conflicts.0.iter().map(Conflict::to_json).collect::<Vec<_>>(),
        "rejectedIndexes": rejected,
        "dataSetComplete": complete,
    })
}

// ---------------------------------------------------------------------------
// HTTP

/// A WebMessage (`httpStatus, httpStatusCode, status, message, response`).
fn web_message(
    code: StatusCode,
    status: &str,
    message: &str,
    response: Option<Value>,
) -> HttpResponse {
    let mut m = Map::new();
    m.insert(
        "httpStatus".into(),
        json!(code.canonical_reason().unwrap_or("Unknown")),
    );
    m.insert("httpStatusCode".into(), json!(code.as_u16()));
    m.insert("status".into(), json!(status));
    m.insert("message".into(), json!(message));
    if let Some(r) = response {
        m.insert("response".into(), r);
    }
    HttpResponse::build(code).json(Value::Object(m))
}

/// A query DHIS2 refuses (its `IllegalQueryException`).
struct IllegalQuery {
    code: &'static str,
    message: String,
}

/// DHIS2's answer to an `IllegalQueryException`: a 409 WebMessage with
/// its error code.
fn illegal_query(code: &str, message: &str) -> HttpResponse {
    HttpResponse::Conflict().json(json!({
        "httpStatus": "Conflict",
        "httpStatusCode": 409,
        "status": "ERROR",
        "message": message,
        "errorCode": code,
    }))
}

fn fault_response(fault: Fault) -> HttpResponse {
    let code = StatusCode::from_u16(fault.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    fault.response_builder().json(json!({
        "httpStatus": code.canonical_reason().unwrap_or("Unknown"),
        "httpStatusCode": code.as_u16(),
        "status": "ERROR",
        "message": fault.message(),
    }))
}

/// Whether `key` is a well-formed personal access token: `d2pat_`, 32
/// characters, then the CRC32 of those 32 characters as `%010d`. The
/// same check the DHIS2 sink applies to its configured token.
pub fn valid_pat(key: &str) -> bool {
    kiungo_connectors::auth::check_dhis2_pat(key).is_ok()
}

fn basic_matches(encoded: &str) -> bool {
    // base64("admin:district")
    encoded.trim() == "YWRtaW46ZGlzdHJpY3Q="
}

fn authorize(req: &HttpRequest) -> Option<HttpResponse> {
    let header = req
        .headers()
        .get("Authorization")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("ApiToken") {
        if valid_pat(rest.trim()) {
            return None;
        }
        return Some(web_message(
            StatusCode::UNAUTHORIZED,
            "ERROR",
            "The API token does not exists.",
            None,
        ));
    }
    if scheme.eq_ignore_ascii_case("Basic") && basic_matches(rest) {
        return None;
    }
    let mut response = web_message(StatusCode::UNAUTHORIZED, "ERROR", "Unauthorized", None);
    response.headers_mut().insert(
        actix_web::http::header::WWW_AUTHENTICATE,
        actix_web::http::header::HeaderValue::from_static("Basic realm=\"DHIS2\""),
    );
    Some(response)
}

/// Faults first (nothing changes on a fault), then authentication.
async fn gate(state: &Dhis2State, req: &HttpRequest) -> Option<HttpResponse> {
    state.saw_peer(req);
    if let Some(fault) = state.faults.apply().await {
        return Some(fault_response(fault));
    }
    authorize(req)
}

fn version(req: &HttpRequest) -> Option<u32> {
    req.match_info().get("version").and_then(|v| v.parse().ok())
}

async fn post_data_value_sets(
    state: web::Data<Dhis2State>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let content_type = req
        .headers()
        .get("Content-Type")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !content_type.to_ascii_lowercase().contains("json") {
        return web_message(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "ERROR",
            &format!("Content type '{content_type}' not supported"),
            None,
        );
    }
    let query = super::query_pairs(req.query_string());
    // As DHIS2 (`StreamUtils.wrapAndCheckCompressionFormat`): a body that
    // starts with the gzip magic bytes is inflated, whatever its headers.
    let wire = body.len();
    let gzipped = body.starts_with(&[0x1f, 0x8b]);
    let (summary, status, body) = if gzipped {
        match kiungo_connectors::gunzip(&body, super::MAX_BODY_BYTES) {
            Ok(inflated) => {
                let (summary, status) = state.import(&inflated, &query);
                (summary, status, web::Bytes::from(inflated))
            }
            Err(e) => (
                summary(
                    &ImportOptions::from_query(&query),
                    ImportStatus::Error,
                    &format!("The import process failed: {e}"),
                    Counts::default(),
                    &Conflicts::default(),
                    &[],
                    "false",
                ),
                ImportStatus::Error,
                web::Bytes::new(),
            ),
        }
    } else {
        let (summary, status) = state.import(&body, &query);
        (summary, status, body)
    };
    state.count(wire, gzipped, &body, &summary);
    if version(&req).is_some_and(|v| v < 38) {
        return HttpResponse::Ok().json(summary);
    }
    match status {
        ImportStatus::Success => web_message(
            StatusCode::OK,
            "OK",
            "Import was successful.",
            Some(summary),
        ),
        ImportStatus::Warning => web_message(
            StatusCode::CONFLICT,
            "WARNING",
            "One more conflicts encountered, please check import summary.",
            Some(summary),
        ),
        ImportStatus::Error => web_message(
            StatusCode::CONFLICT,
            "ERROR",
            "An error occurred, please check import summary.",
            Some(summary),
        ),
    }
}

async fn get_data_value_sets(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let query = super::query_pairs(req.query_string());
    match state.read_set(&query) {
        Ok(set) => HttpResponse::Ok().json(set),
        Err(refused) => illegal_query(refused.code, &refused.message),
    }
}

/// `GET /api/dataValues?de=&pe=&ou=&co=&cc=`: `["value"]`, or 404; a
/// period that does not exist in the system calendar is 409 E1101, as
/// 2.40's `DataValidator.getAndValidatePeriod`.
async fn get_data_value(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let query = super::query_pairs(req.query_string());
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let pe = get("pe").unwrap_or_default();
    let Some(period) = state.calendar.canonical_period(&pe) else {
        return illegal_query("E1101", &format!("Period is invalid: `{pe}`"));
    };
    let key = ValueKey {
        data_element: get("de").unwrap_or_default(),
        period,
        org_unit: get("ou").unwrap_or_default(),
        category_option_combo: get("co").unwrap_or_else(|| DEFAULT_COC.into()),
        attribute_option_combo: get("cc").unwrap_or_else(|| DEFAULT_COC.into()),
    };
    let values = state.values.lock().unwrap_or_else(PoisonError::into_inner);
    match values.get(&key) {
        Some(v) => HttpResponse::Ok().json(json!([v.value])),
        None => web_message(
            StatusCode::NOT_FOUND,
            "ERROR",
            "Data value does not exist",
            None,
        ),
    }
}

#[derive(Clone, Copy)]
enum Collection {
    DataElements,
    OrgUnits,
    Cocs,
    DataSets,
}

/// Each object of a collection with the fields beyond id, code and name
/// that DHIS2 2.40 serves and the preflight asks for.
fn collection_items(md: &Metadata, c: Collection) -> Vec<(&Named, Map<String, Value>)> {
    let id = |id: &str| json!({ "id": id });
    let mut sets: Vec<(&String, &DataSet)> = md.data_sets.iter().collect();
    sets.sort_by_key(|(id, _)| *id);
    match c {
        Collection::DataElements => md
            .data_elements
            .iter()
            .map(|d| {
                let mut m = Map::new();
                m.insert("categoryCombo".into(), id(&d.category_combo));
                let elements: Vec<Value> = sets
                    .iter()
                    .filter(|(_, ds)| ds.data_elements.contains(&d.named.id))
                    .map(|(ds, _)| json!({ "dataSet": id(ds) }))
                    .collect();
                m.insert("dataSetElements".into(), elements.into());
                (&d.named, m)
            })
            .collect(),
        Collection::OrgUnits => md
            .org_units
            .iter()
            .map(|o| {
                let mut m = Map::new();
                let assigned: Vec<Value> = sets
                    .iter()
                    .filter(|(_, ds)| ds.org_units.contains(&o.id))
                    .map(|(ds, _)| id(ds))
                    .collect();
                m.insert("dataSets".into(), assigned.into());
                (o, m)
            })
            .collect(),
        Collection::Cocs => md
            .cocs
            .iter()
            .chain(&md.aoc_combos)
            .map(|(n, cc)| {
                let mut m = Map::new();
                m.insert("categoryCombo".into(), id(cc));
                if let Some(options) = md.combo_options.get(&n.id) {
                    let options: Vec<Value> = options.iter().map(|o| id(o)).collect();
                    m.insert("categoryOptions".into(), options.into());
                }
                (n, m)
            })
            .collect(),
        Collection::DataSets => sets
            .iter()
            .map(|(_, ds)| {
                let mut m = Map::new();
                if let Some(p) = &ds.period_type {
                    m.insert("periodType".into(), json!(p));
                }
                if let Some(cc) = &ds.category_combo {
                    m.insert("categoryCombo".into(), id(cc));
                }
                if let Some(days) = ds.timely_days {
                    m.insert("timelyDays".into(), json!(days));
                }
                (&ds.named, m)
            })
            .collect(),
    }
}

/// The top-level names of a `fields=` list: `id,categoryCombo[id]` →
/// `id`, `categoryCombo`.
fn field_names(fields: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in fields.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&fields[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&fields[start..]);
    out.into_iter()
        .map(|f| f.split('[').next().unwrap_or_default().trim())
        .filter(|f| !f.is_empty())
        .collect()
}

/// One `filter=prop:op:value`.
fn filter_matches(n: &Named, filter: &str) -> Result<bool, String> {
    let mut parts = filter.splitn(3, ':');
    let (Some(prop), Some(op), Some(arg)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(format!("Invalid filter: {filter}"));
    };
    let field = match prop {
        "id" => Some(n.id.as_str()),
        "code" => n.code.as_deref(),
        "name" | "displayName" => Some(n.name.as_str()),
        "path" => n.path.as_deref(),
        _ => return Err(format!("Unknown filter property: {prop}")),
    };
    match op {
        "eq" => Ok(field == Some(arg)),
        "in" => {
            let list = arg.trim_start_matches('[').trim_end_matches(']');
            Ok(field.is_some_and(|f| list.split(',').any(|x| x.trim() == f)))
        }
        "like" | "ilike" => {
            Ok(field.is_some_and(|f| f.to_lowercase().contains(&arg.to_lowercase())))
        }
        _ => Err(format!("Unsupported filter operator: {op}")),
    }
}

async fn list_metadata(
    state: web::Data<Dhis2State>,
    req: HttpRequest,
    collection: Collection,
    root: &'static str,
) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    let query = super::query_pairs(req.query_string());
    let filters: Vec<&str> = query
        .iter()
        .filter(|(k, _)| k == "filter")
        .map(|(_, v)| v.as_str())
        .collect();
    let mut items = Vec::new();
    for (n, extra) in collection_items(&state.metadata, collection) {
        let mut keep = true;
        for f in &filters {
            match filter_matches(n, f) {
                Ok(m) => keep &= m,
                Err(e) => return web_message(StatusCode::BAD_REQUEST, "ERROR", &e, None),
            }
        }
        if keep {
            items.push((n, extra));
        }
    }
    let get = |k: &str| {
        query
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let wanted: Vec<&str> = get("fields").map(field_names).unwrap_or_default();
    let wanted = if wanted.is_empty() {
        vec!["id", "code", "name"]
    } else {
        wanted
    };
    let render = |(n, extra): &(&Named, Map<String, Value>)| {
        let mut m = Map::new();
        for f in &wanted {
            match *f {
                "id" => {
                    m.insert("id".into(), json!(n.id));
                }
                "code" => {
                    if let Some(c) = &n.code {
                        m.insert("code".into(), json!(c));
                    }
                }
                "name" | "displayName" => {
                    m.insert((*f).into(), json!(n.name));
                }
                other => {
                    if let Some(v) = extra.get(other) {
                        m.insert(other.into(), v.clone());
                    }
                }
            }
        }
        Value::Object(m)
    };
    let mut out = Map::new();
    if get("paging") == Some("false") {
        out.insert(root.into(), items.iter().map(render).collect());
    } else {
        let page_size = get("pageSize")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p > 0)
            .unwrap_or(50);
        let page = get("page")
            .and_then(|p| p.parse::<usize>().ok())
            .filter(|p| *p > 0)
            .unwrap_or(1);
        let total = items.len();
        let page_count = total.div_ceil(page_size).max(1);
        out.insert(
            "pager".into(),
            json!({"page": page, "total": total, "pageSize": page_size, "pageCount": page_count}),
        );
        out.insert(
            root.into(),
            items
                .iter()
                .skip((page - 1) * page_size)
                .take(page_size)
                .map(render)
                .collect(),
        );
    }
    HttpResponse::Ok().json(Value::Object(out))
}

async fn data_elements(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    list_metadata(state, req, Collection::DataElements, "dataElements").await
}

async fn org_units(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    list_metadata(state, req, Collection::OrgUnits, "organisationUnits").await
}

async fn category_option_combos(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    list_metadata(state, req, Collection::Cocs, "categoryOptionCombos").await
}

async fn data_sets(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    list_metadata(state, req, Collection::DataSets, "dataSets").await
}

/// `/api/system/info`: a 2.40.3 server in the configured system
/// calendar (`iso8601` unless `--calendar` says otherwise).
async fn system_info(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    HttpResponse::Ok().json(json!({
        "version": "2.40.3", "revision": "sandbox", "systemName": "Kiungo DHIS2 sandbox",
        "calendar": state.calendar.name(), "dateFormat": "yyyy-mm-dd"
    }))
}

/// `/api/me`: who the accepted credentials are (the demo's `admin`).
async fn me(state: web::Data<Dhis2State>, req: HttpRequest) -> HttpResponse {
    if let Some(r) = gate(&state, &req).await {
        return r;
    }
    HttpResponse::Ok()
        .json(json!({"id": "xE7jOejl9FI", "username": BASIC_USER.0, "displayName": "John Traore"}))
}

async fn sandbox_values(state: web::Data<Dhis2State>) -> HttpResponse {
    HttpResponse::Ok().json(state.values_json())
}

async fn sandbox_traffic(state: web::Data<Dhis2State>) -> HttpResponse {
    HttpResponse::Ok().json(state.traffic_json())
}

async fn sandbox_reset(state: web::Data<Dhis2State>) -> HttpResponse {
    state
        .values
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clear();
    HttpResponse::NoContent().finish()
}

async fn get_faults(state: web::Data<Dhis2State>) -> HttpResponse {
    HttpResponse::Ok().json(state.faults.get())
}

async fn set_faults(state: web::Data<Dhis2State>, body: web::Bytes) -> HttpResponse {
    super::set_faults(&state.faults, &body)
}

/// Registers the simulator's routes on an actix app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for prefix in ["/api", "/api/{version:\\d+}"] {
        cfg.route(
            &format!("{prefix}/dataValueSets"),
            web::post().to(post_data_value_sets),
        )
        .route(
            &format!("{prefix}/dataValueSets"),
            web::get().to(get_data_value_sets),
        )
        .route(
            &format!("{prefix}/dataValues"),
            web::get().to(get_data_value),
        )
        .route(
            &format!("{prefix}/dataElements"),
            web::get().to(data_elements),
        )
        .route(
            &format!("{prefix}/organisationUnits"),
            web::get().to(org_units),
        )
        .route(
            &format!("{prefix}/categoryOptionCombos"),
            web::get().to(category_option_combos),
        )
        .route(&format!("{prefix}/system/info"), web::get().to(system_info))
        .route(&format!("{prefix}/me"), web::get().to(me))
        .route(&format!("{prefix}/dataSets"), web::get().to(data_sets))
        .route(
            &format!("{prefix}/dataSets/{{id}}"),
            web::get().to(data_sets::data_set),
        )
        .route(
            &format!("{prefix}/completeDataSetRegistrations"),
            web::post().to(completeness::register),
        )
        .route(
            &format!("{prefix}/completeDataSetRegistrations"),
            web::delete().to(completeness::undo),
        );
    }
    cfg.route("/sandbox/values", web::get().to(sandbox_values))
        .route("/sandbox/registrations", web::get().to(completeness::list))
        .route("/sandbox/traffic", web::get().to(sandbox_traffic))
        .route("/sandbox/reset", web::post().to(sandbox_reset))
        .route("/sandbox/faults", web::get().to(get_faults))
        .route("/sandbox/faults", web::post().to(set_faults));
}

/// Shares the state with the server factory.
pub(crate) fn data(state: &Arc<Dhis2State>) -> web::Data<Dhis2State> {
    web::Data::from(state.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod unit {
    use super::*;

    #[test]
    fn periods_parse_and_normalize() {
        for (pe, want) in [
            ("20240315", Some("20240315")),
            ("2024-03-15", Some("20240315")),
            ("20240230", None),
            ("2024W5", Some("2024W5")),
            ("2024W05", Some("2024W5")),
            ("2024W53", None),
            ("2020W53", Some("2020W53")),
            ("2015WedW5", Some("2015WedW5")),
            ("2015SunW8", Some("2015SunW8")),
            ("2015BiW1", Some("2015BiW1")),
            ("202401", Some("202401")),
            ("2024-01", Some("202401")),
            ("202413", None),
            ("202401B", Some("202401B")),
            ("202407B", None),
            ("2024Q1", Some("2024Q1")),
            ("2024Q5", None),
            ("2024NovQ1", Some("2024NovQ1")),
            ("2024S2", Some("2024S2")),
            ("2024AprilS1", Some("2024AprilS1")),
            ("2024NovS1", Some("2024NovS1")),
            ("2024", Some("2024")),
            ("2024April", Some("2024April")),
            ("2024July", Some("2024July")),
            ("2024Oct", Some("2024Oct")),
            ("2024Nov", Some("2024Nov")),
            ("2024Sep", None),
            ("24Q1", None),
            ("2024M01", None),
        ] {
            assert_eq!(normalize_period(pe).as_deref(), want, "{pe}");
        }
    }

    #[test]
    fn pat_checksum() {
        assert!(valid_pat(
            "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092"
        ));
        assert!(!valid_pat(
            "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814093"
        ));
        assert!(!valid_pat(
            "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZ1151814092"
        ));
    }

    #[test]
    fn value_types() {
        assert!(check_value_type("INTEGER", "12").is_ok());
        assert_eq!(check_value_type("INTEGER", "1.5"), Err("value_not_integer"));
        assert_eq!(check_value_type("NUMBER", "abc"), Err("value_not_numeric"));
        assert!(check_value_type("NUMBER", "-1.5e3").is_ok());
        assert_eq!(
            check_value_type("INTEGER_ZERO_OR_POSITIVE", "-1"),
            Err("value_not_zero_or_positive_integer")
        );
    }

    #[test]
    fn default_metadata_loads() {
        let md = Metadata::default_subset().unwrap();
        assert_eq!(md.coc_combo("pq2XI5kz2BY"), Some("KYYSTxeVw28"));
        assert!(md.data_element("fbfJHSPpUQD").is_some());
        assert!(md.ou_index.contains_key("DiszpKrYNg8"));
        assert!(md.aocs.contains(DEFAULT_COC));
    }
}

#[cfg(test)]
mod compression_tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use serde_json::{Value, json};

    use crate::sandbox::{Sandbox, SandboxConfig};

    #[tokio::test]
    async fn gzipped_imports_are_inflated_by_their_magic_bytes() {
        crate::tls::install_crypto_provider();
        let sb = Sandbox::start(SandboxConfig::for_test()).await.unwrap();
        let set = |value: &str| {
            json!({"dataValues": [{"dataElement": "fbfJHSPpUQD", "period": "202401",
                "orgUnit": "DiszpKrYNg8", "categoryOptionCombo": "pq2XI5kz2BY", "value": value}]})
            .to_string()
            .into_bytes()
        };
        let http = reqwest::Client::new();
        let post = |body: Vec<u8>, encoding: Option<&'static str>| {
            let mut r = http
                .post(format!("{}/api/dataValueSets", sb.dhis2_url()))
                .basic_auth("admin", Some("district"))
                .header("Content-Type", "application/json")
                .body(body);
            if let Some(e) = encoding {
                r = r.header("Content-Encoding", e);
            }
            r.send()
        };
        let first = kiungo_connectors::gzip(&set("3"));
        let second = kiungo_connectors::gzip(&set("4"));
        // With the header, and without it (DHIS2 sniffs the body).
        assert_eq!(
            post(first.clone(), Some("gzip")).await.unwrap().status(),
            200
        );
        assert_eq!(post(second.clone(), None).await.unwrap().status(), 200);
        let values = sb.dhis2_values();
        assert!(values.to_string().contains("\"4\""), "{values}");
        // Truncated gzip: the import fails, nothing changes.
        let response = post(second[..second.len() / 2].to_vec(), Some("gzip"))
            .await
            .unwrap();
        assert_eq!(response.status(), 409);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["response"]["status"], "ERROR", "{body}");

        let t = sb.dhis2_traffic();
        assert_eq!(t["requests"], 3);
        assert_eq!(t["gzipped"], 3);
        assert_eq!(
            t["bytes"],
            (first.len() + second.len() + second.len() / 2) as u64
        );
        assert_eq!(t["body_bytes"], (set("3").len() + set("4").len()) as u64);
        assert_eq!(t["connections"], 1, "{t}");
        sb.stop().await;
    }
}
