//! What a DHIS2 instance says about itself: `/api/system/info` (version
//! and system calendar) and `/api/me` (whether the credentials work).
//!
//! Both are one small `GET` each, read with `fields=` so that a shared
//! ministry server sends only what Kiungo uses.

use reqwest::header::ACCEPT;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::client::{Dhis2Client, send_error};
use super::import_summary::{Dhis2Error, error_from_body};
use crate::retry::{StatusClass, classify_status, retry_after_header};

/// `GET /api/system/info`, the parts Kiungo uses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SystemInfo {
    /// Server version, e.g. `2.40.3`.
    #[serde(default)]
    pub version: Option<String>,
    /// System calendar, e.g. `iso8601`, `ethiopian`, `nepali` (DHIS2 also
    /// has `gregorian`, `coptic`, `islamic`, `persian`, `thai`, `julian`).
    #[serde(default)]
    pub calendar: Option<String>,
}

/// `GET /api/me`, the parts Kiungo uses: who the credentials are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// The user's UID.
    pub id: String,
    /// The username, when DHIS2 sends it (2.38–2.41 do).
    #[serde(default)]
    pub username: Option<String>,
}

impl Dhis2Client {
    /// Reads the version and system calendar (`/api/system/info`).
    pub async fn system_info(&self) -> Result<SystemInfo, Dhis2Error> {
        self.get_json("system/info", "version,calendar").await
    }

    /// Checks the credentials (`/api/me`): a 401 is a
    /// [`Dhis2Error::Status`] with DHIS2's message.
    pub async fn me(&self) -> Result<Me, Dhis2Error> {
        self.get_json("me", "id,username").await
    }

    /// One `GET {api}/{path}?fields=…`, its JSON body read as `T`.
    pub(super) async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        fields: &str,
    ) -> Result<T, Dhis2Error> {
        let url = format!("{}/{path}", self.api);
        let build = || {
            self.http
                .get(&url)
                .query(&[("fields", fields)])
                .header(ACCEPT, "application/json")
        };
        let response = self.auth.send(build).await.map_err(send_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.map_err(Dhis2Error::Transport)?;
        if classify_status(status) != StatusClass::Success {
            return Err(error_from_body(status, &text, retry_after));
        }
        serde_json::from_str(&text).map_err(|_| Dhis2Error::UnexpectedResponse {
            status,
            found: format!("an unreadable body for /api/{path}"),
        })
    }
}
