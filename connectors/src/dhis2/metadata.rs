//! Preflight: does the metadata the mappings name exist in this DHIS2?
//!
//! Mappings refer to data elements, org units and option combos by UID or
//! by `code:CODE`. DHIS2 rejects unknown UIDs value by value (E7610,
//! E7612, ...) and reads `code:X` as a (bad) UID, so before pushing, the
//! bridge asks which references exist and which UID each code stands for.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::client::{Dhis2Client, send_error};
use super::import_summary::{Dhis2Error, error_from_body};
use crate::retry::{StatusClass, classify_status, retry_after_header};

/// Most ids in one `filter=…:in:[…]` request.
pub(super) const CHUNK: usize = 100;

/// What a `code:` reference starts with.
pub(super) const CODE_PREFIX: &str = "code:";

/// The references to check, each a UID or `code:CODE`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Data elements.
    pub data_elements: BTreeSet<String>,
    /// Organisation units.
    pub org_units: BTreeSet<String>,
    /// Category option combos (disaggregations).
    pub category_option_combos: BTreeSet<String>,
    /// Attribute option combos (also category option combos in DHIS2).
    pub attribute_option_combos: BTreeSet<String>,
}

/// The kind of a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReferenceKind {
    /// A data element.
    DataElement,
    /// An organisation unit.
    OrgUnit,
    /// A category option combo.
    CategoryOptionCombo,
    /// An attribute option combo.
    AttributeOptionCombo,
}

impl fmt::Display for ReferenceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DataElement => "data element",
            Self::OrgUnit => "org unit",
            Self::CategoryOptionCombo => "category option combo",
            Self::AttributeOptionCombo => "attribute option combo",
        })
    }
}

/// A reference DHIS2 does not know (or the user cannot see).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MissingReference {
    /// What it should have been.
    pub kind: ReferenceKind,
    /// As written: a UID or `code:CODE`.
    pub reference: String,
}

impl fmt::Display for MissingReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}` not found", self.kind, self.reference)
    }
}

/// The outcome of a preflight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightReport {
    /// Every reference not found, by kind then reference.
    pub missing: Vec<MissingReference>,
    /// Every reference found, as written (UID or `code:CODE`) → its UID.
    pub resolved: BTreeMap<ReferenceKind, BTreeMap<String, String>>,
    /// Data element UID → the UID of its category combo.
    pub category_combos: BTreeMap<String, String>,
}

impl PreflightReport {
    /// `true` if every reference was found.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The UID to send for `reference` (itself if it is a UID that exists,
    /// the resolved UID of a `code:`), or `None` if it was not found.
    pub fn resolve(&self, kind: ReferenceKind, reference: &str) -> Option<&str> {
        self.resolved.get(&kind)?.get(reference).map(String::as_str)
    }
}

/// One metadata object as fetched.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaObject {
    id: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    category_combo: Option<IdOnly>,
}

#[derive(Debug, Deserialize)]
struct IdOnly {
    id: String,
}

/// What one endpoint knows about the references asked for.
#[derive(Default)]
struct Found {
    ids: BTreeSet<String>,
    codes: BTreeMap<String, String>,
}

impl Dhis2Client {
    /// Looks every reference up (at most 100 per request) and reports the
    /// ones missing, by kind, with the UID of each `code:` reference.
    pub async fn check_references(&self, refs: &References) -> Result<PreflightReport, Dhis2Error> {
        let mut report = PreflightReport::default();

        let des = self
            .lookup(
                "dataElements",
                "id,code,name,categoryCombo[id]",
                refs.data_elements.iter(),
                &mut report,
            )
            .await?;
        let ous = self
            .lookup(
                "organisationUnits",
                "id,code,name",
                refs.org_units.iter(),
                &mut report,
            )
            .await?;
        let combos = refs
            .category_option_combos
            .iter()
            .chain(refs.attribute_option_combos.iter());
        let cocs = self
            .lookup("categoryOptionCombos", "id,code,name", combos, &mut report)
            .await?;

        let kinds = [
            (ReferenceKind::DataElement, &refs.data_elements, &des),
            (ReferenceKind::OrgUnit, &refs.org_units, &ous),
            (
                ReferenceKind::CategoryOptionCombo,
                &refs.category_option_combos,
                &cocs,
            ),
            (
                ReferenceKind::AttributeOptionCombo,
                &refs.attribute_option_combos,
                &cocs,
            ),
        ];
        for (kind, references, found) in kinds {
            for reference in references {
                let uid = match reference.strip_prefix(CODE_PREFIX) {
                    Some(code) => found.codes.get(code).cloned(),
                    None => found.ids.contains(reference).then(|| reference.clone()),
                };
                match uid {
                    Some(uid) => {
                        report
                            .resolved
                            .entry(kind)
                            .or_default()
                            .insert(reference.clone(), uid);
                    }
                    None => report.missing.push(MissingReference {
                        kind,
                        reference: reference.clone(),
                    }),
                }
            }
        }
        report.missing.sort();
        Ok(report)
    }

    /// Fetches the objects of `endpoint` whose id or code is among `refs`.
    async fn lookup<'a>(
        &self,
        endpoint: &str,
        fields: &str,
        refs: impl Iterator<Item = &'a String>,
        report: &mut PreflightReport,
    ) -> Result<Found, Dhis2Error> {
        let mut ids = BTreeSet::new();
        let mut codes = BTreeSet::new();
        for r in refs {
            match r.strip_prefix(CODE_PREFIX) {
                Some(code) => codes.insert(code.to_owned()),
                None => ids.insert(r.clone()),
            };
        }
        let mut found = Found::default();
        for (property, values) in [("id", &ids), ("code", &codes)] {
            let values: Vec<&String> = values.iter().collect();
            for chunk in values.chunks(CHUNK) {
                let list = chunk
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let filter = format!("{property}:in:[{list}]");
                let objects: Vec<MetaObject> = self.fetch(endpoint, fields, &filter).await?;
                for object in objects {
                    if let Some(combo) = &object.category_combo {
                        report
                            .category_combos
                            .insert(object.id.clone(), combo.id.clone());
                    }
                    if let Some(code) = object.code {
                        found.codes.insert(code, object.id.clone());
                    }
                    found.ids.insert(object.id);
                }
            }
        }
        Ok(found)
    }

    /// One `GET {api}/{endpoint}?filter=…&fields=…&paging=false`: the
    /// objects of its `{endpoint}` list, read as `T`.
    pub(super) async fn fetch<T: DeserializeOwned>(
        &self,
        endpoint: &str,
        fields: &str,
        filter: &str,
    ) -> Result<Vec<T>, Dhis2Error> {
        let url = format!("{}/{endpoint}", self.api);
        let build = || {
            self.http
                .get(&url)
                .query(&[("filter", filter), ("fields", fields), ("paging", "false")])
                .header(ACCEPT, "application/json")
        };
        let response = self.auth.send(build).await.map_err(send_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.map_err(Dhis2Error::Transport)?;
        if classify_status(status) != StatusClass::Success {
            return Err(error_from_body(status, &text, retry_after));
        }
        let unexpected = |what: String| Dhis2Error::UnexpectedResponse {
            status,
            found: what,
        };
        let json: Value = serde_json::from_str(&text)
            .map_err(|_| unexpected(format!("a non-JSON body for /{endpoint}")))?;
        let list = json
            .get(endpoint)
            .cloned()
            .ok_or_else(|| unexpected(format!("no `{endpoint}` list")))?;
        Vec::<T>::deserialize(list)
            .map_err(|e| unexpected(format!("an unreadable `{endpoint}` list: {e}")))
    }
}
