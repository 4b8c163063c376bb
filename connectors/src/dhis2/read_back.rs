//! Reading values back from DHIS2, for reconciliation: the data elements
//! of a data set (`GET /api/dataSets/{id}`) and the values it holds for a
//! period (`GET /api/dataValueSets`).
//!
//! **Politely**: a ministry's DHIS2 is shared, and `dataValueSets` has no
//! paging, so the org units are asked for in batches of
//! [`ORG_UNITS_PER_READ`], one request at a time, with gzipped answers
//! (`Accept-Encoding: gzip`, see `compress_responses`); a 429 or 503 is
//! waited out (its `Retry-After`, capped at [`MAX_POLITE_WAIT`]) a few
//! times before the read gives up with the transient error.

use std::time::Duration;

use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde_json::Value;
use tracing::debug;

use super::client::{Dhis2Client, send_error};
use super::import_summary::{Dhis2Error, error_from_body};
use crate::retry::{StatusClass, classify_status, retry_after_header};

/// Most org units named in one `dataValueSets` read.
pub const ORG_UNITS_PER_READ: usize = 50;

/// Longest wait on a 429/503's `Retry-After` before asking again.
pub const MAX_POLITE_WAIT: Duration = Duration::from_secs(60);

/// How many times a 429/503 is waited out before the read gives up.
const POLITE_RETRIES: usize = 3;

/// Org units per page when reading a subtree of the hierarchy.
pub const SUBTREE_PAGE: usize = 1000;

/// Wait after a 429/503 without a `Retry-After`.
const DEFAULT_WAIT: Duration = Duration::from_secs(5);

/// A data element of a data set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DataSetElement {
    /// Its UID.
    pub id: String,
    /// Its code, when it has one (mappings may name it `code:CODE`).
    #[serde(default)]
    pub code: Option<String>,
}

/// A value as DHIS2 holds it (`GET /api/dataValueSets`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredValue {
    /// Data element UID.
    pub data_element: String,
    /// Period id.
    pub period: String,
    /// Org unit UID.
    pub org_unit: String,
    /// Category option combo UID (absent in some answers: the default).
    #[serde(default)]
    pub category_option_combo: Option<String>,
    /// Attribute option combo UID (absent in some answers: the default).
    #[serde(default)]
    pub attribute_option_combo: Option<String>,
    /// The value as text (absent for a value held only for its comment).
    #[serde(default)]
    pub value: Option<String>,
}

/// What to read back.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest<'a> {
    /// Data set UID.
    pub data_set: &'a str,
    /// Period id.
    pub period: &'a str,
    /// Org unit UIDs; asked for in batches of [`ORG_UNITS_PER_READ`].
    pub org_units: &'a [String],
    /// Also the values of the org units' descendants (`children=true`).
    pub children: bool,
}

/// A data set as reconciliation needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DataSetInfo {
    /// Its period type name (`Monthly`, `Quarterly`, ...), when DHIS2
    /// gave one.
    pub period_type: Option<String>,
    /// Its data elements.
    pub elements: Vec<DataSetElement>,
}

#[derive(Deserialize)]
struct DataSetDoc {
    #[serde(default, rename = "periodType")]
    period_type: Option<String>,
    #[serde(default, rename = "dataSetElements")]
    elements: Vec<ElementDoc>,
}

#[derive(Deserialize)]
struct ElementDoc {
    #[serde(rename = "dataElement")]
    data_element: DataSetElement,
}

impl Dhis2Client {
    /// The period type and data elements of `data_set` (`GET
    /// /api/dataSets/{id}?fields=id,periodType,dataSetElements[dataElement[id,code]]`).
    pub async fn data_set(&self, data_set: &str) -> Result<DataSetInfo, Dhis2Error> {
        let url = format!("{}/dataSets/{data_set}", self.api);
        let query = [(
            "fields",
            "id,periodType,dataSetElements[dataElement[id,code]]",
        )];
        let (status, text) = self.polite_get(&url, &query).await?;
        let doc: DataSetDoc =
            serde_json::from_str(&text).map_err(|e| Dhis2Error::UnexpectedResponse {
                status,
                found: format!("an unreadable data set: {e}"),
            })?;
        Ok(DataSetInfo {
            period_type: doc.period_type,
            elements: doc.elements.into_iter().map(|e| e.data_element).collect(),
        })
    }

    /// The values DHIS2 holds for the data set and period in the org
    /// units (and their descendants with `children`): one request per
    /// batch of org units, one after the other.
    pub async fn read_data_values(
        &self,
        request: ReadRequest<'_>,
    ) -> Result<Vec<StoredValue>, Dhis2Error> {
        let url = format!("{}/dataValueSets", self.api);
        let mut out = Vec::new();
        for batch in request.org_units.chunks(ORG_UNITS_PER_READ) {
            let mut query: Vec<(&str, &str)> = vec![
                ("dataSet", request.data_set),
                ("period", request.period),
                ("children", if request.children { "true" } else { "false" }),
            ];
            query.extend(batch.iter().map(|ou| ("orgUnit", ou.as_str())));
            let (status, text) = self.polite_get(&url, &query).await?;
            out.extend(parse_values(status, &text)?);
            debug!(
                org_units = batch.len(),
                values = out.len(),
                "dhis2 dataValueSets read"
            );
        }
        Ok(out)
    }

    /// The ids of `org_unit` and every org unit below it in the hierarchy
    /// (`GET /api/organisationUnits?filter=path:like:{id}&fields=id`), read
    /// in pages of 1,000 one after the other: the subtree of a
    /// national root can hold tens of thousands of org units.
    pub async fn org_unit_subtree(&self, org_unit: &str) -> Result<Vec<String>, Dhis2Error> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(rename = "organisationUnits", default)]
            units: Vec<Id>,
            #[serde(default)]
            pager: Option<Pager>,
        }
        #[derive(Deserialize)]
        struct Id {
            id: String,
        }
        #[derive(Deserialize)]
        struct Pager {
            #[serde(rename = "pageCount", default)]
            page_count: u64,
        }
        let url = format!("{}/organisationUnits", self.api);
        let filter = format!("path:like:{org_unit}");
        let size = SUBTREE_PAGE.to_string();
        let mut out = Vec::new();
        let mut page = 1u64;
        loop {
            let number = page.to_string();
            let query = [
                ("filter", filter.as_str()),
                ("fields", "id"),
                ("pageSize", size.as_str()),
                ("page", number.as_str()),
            ];
            let (status, text) = self.polite_get(&url, &query).await?;
            let doc: Page =
                serde_json::from_str(&text).map_err(|e| Dhis2Error::UnexpectedResponse {
                    status,
                    found: format!("an unreadable org unit list: {e}"),
                })?;
            let last =
                doc.units.is_empty() || doc.pager.as_ref().is_none_or(|p| page >= p.page_count);
            out.extend(doc.units.into_iter().map(|u| u.id));
            if last {
                break;
            }
            page += 1;
        }
        // `like` matches anywhere in the path: keep the org unit itself
        // even if the server's answer left it out.
        if !out.iter().any(|id| id == org_unit) {
            out.push(org_unit.to_owned());
        }
        Ok(out)
    }

    /// One GET, a 429/503 waited out up to [`POLITE_RETRIES`] times:
    /// the status and the body of a 2xx.
    async fn polite_get(
        &self,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<(u16, String), Dhis2Error> {
        let mut tries = 0;
        loop {
            let build = || {
                self.http
                    .get(url)
                    .query(query)
                    .header(ACCEPT, "application/json")
            };
            let response = self.auth.send(build).await.map_err(send_error)?;
            let status = response.status().as_u16();
            let retry_after = retry_after_header(response.headers());
            let text = response.text().await.map_err(Dhis2Error::Transport)?;
            if classify_status(status) == StatusClass::Success {
                return Ok((status, text));
            }
            if matches!(status, 429 | 503) && tries < POLITE_RETRIES {
                tries += 1;
                let wait = retry_after.unwrap_or(DEFAULT_WAIT).min(MAX_POLITE_WAIT);
                debug!(status, ?wait, "dhis2 asked to slow down; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            return Err(error_from_body(status, &text, retry_after));
        }
    }
}

/// Reads a `dataValueSets` answer: `{"dataValues": [...]}` (with
/// `dataSet`, `period`, `orgUnit` beside it for one org unit), or `{}`
/// when nothing is stored (2.38–2.41).
pub(super) fn parse_values(status: u16, text: &str) -> Result<Vec<StoredValue>, Dhis2Error> {
    let unexpected = |found: String| Dhis2Error::UnexpectedResponse { status, found };
    let doc: Value = serde_json::from_str(text)
        .map_err(|_| unexpected("a non-JSON body for /dataValueSets".to_owned()))?;
    if !doc.is_object() {
        return Err(unexpected(
            "a dataValueSets answer that is not an object".to_owned(),
        ));
    }
    match doc.get("dataValues") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(list) => Vec::<StoredValue>::deserialize(list)
            .map_err(|e| unexpected(format!("an unreadable `dataValues` list: {e}"))),
    }
}
