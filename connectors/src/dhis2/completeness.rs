//! Data set completeness: registering that an org unit's data set is
//! complete for a period (`POST /api/completeDataSetRegistrations`), and
//! undoing it (`DELETE /api/completeDataSetRegistrations`).
//!
//! The registration's answer is an ImportSummary like a `dataValueSets`
//! import's (a WebMessage at 200 or 409 from 2.38 on, bare at 200 before),
//! read by the same parser: a conflict (an unknown data set, a period not
//! valid, the data set not assigned to the org unit) is DHIS2's answer,
//! not an `Err`; only failures to get an answer are, each classified.
//!
//! Used by the bridge's completeness pass
//! (`destinations.dhis2.completeness`, `docs/dhis2-completeness.md`).

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use serde::Serialize;

use super::client::{Dhis2Client, send_error};
use super::import_summary::{Dhis2Error, ImportOutcome, error_from_body, parse_import_response};
use super::metadata_links::AttributeOptions;
use crate::retry::{StatusClass, classify_status, retry_after_header};

/// One completeness registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// Data set UID.
    pub data_set: String,
    /// Period id.
    pub period: String,
    /// Org unit UID.
    pub organisation_unit: String,
    /// Attribute option combo UID (`HllvX50cXC0` is the default).
    pub attribute_option_combo: String,
    /// Always `true` here: a registration marks the set complete.
    pub completed: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Registrations<'a> {
    complete_data_set_registrations: &'a [Registration],
}

impl Dhis2Client {
    /// Registers `registrations` (`POST /api/completeDataSetRegistrations`,
    /// the 2.38–2.41 JSON shape) and reads the import summary, whichever
    /// shape and status (200 or 409) it came with. An empty slice sends
    /// nothing.
    pub async fn register_completion(
        &self,
        registrations: &[Registration],
    ) -> Result<ImportOutcome, Dhis2Error> {
        if registrations.is_empty() {
            return Ok(ImportOutcome::default());
        }
        let body = serde_json::to_vec(&Registrations {
            complete_data_set_registrations: registrations,
        })
        .map_err(Dhis2Error::Encode)?;
        let url = format!("{}/completeDataSetRegistrations", self.api);
        let build = || {
            self.http
                .post(&url)
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .body(body.clone())
        };
        let response = self.auth.send(build).await.map_err(send_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.map_err(Dhis2Error::Transport)?;
        parse_import_response(status, &text, retry_after)
    }

    /// Undoes the registration of `data_set` for `period` at `org_unit`
    /// (`DELETE /api/completeDataSetRegistrations?ds=&pe=&ou=`; DHIS2
    /// answers 204). DHIS2 (2.38–2.41 alike) takes no attribute option
    /// combo UID there: `attribute` names a combo other than the default
    /// by its category combo (`cc`) and category options (`cp`, joined by
    /// `;`); `None` is the default combo (neither sent).
    pub async fn undo_completion(
        &self,
        data_set: &str,
        period: &str,
        org_unit: &str,
        attribute: Option<&AttributeOptions>,
    ) -> Result<(), Dhis2Error> {
        let url = format!("{}/completeDataSetRegistrations", self.api);
        let mut query: Vec<(&str, String)> = vec![
            ("ds", data_set.to_owned()),
            ("pe", period.to_owned()),
            ("ou", org_unit.to_owned()),
        ];
        if let Some(a) = attribute {
            query.push(("cc", a.category_combo.clone()));
            query.push(("cp", a.category_options.join(";")));
        }
        let build = || {
            self.http
                .delete(&url)
                .query(&query)
                .header(ACCEPT, "application/json")
        };
        let response = self.auth.send(build).await.map_err(send_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        if classify_status(status) == StatusClass::Success {
            return Ok(());
        }
        let text = response.text().await.map_err(Dhis2Error::Transport)?;
        Err(error_from_body(status, &text, retry_after))
    }
}
