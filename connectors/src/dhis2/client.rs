//! The HTTP client of the DHIS2 sink.

use reqwest::header::{ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::config::Dhis2Config;
use super::import_summary::{Dhis2Error, ImportOutcome, parse_import_response};
use crate::auth::{AuthConfig, Authenticator, SendError};
use crate::http::{
    ClientSettings, ConfigError, RequestCompression, build_client, join, parse_base_url,
};
use crate::retry::retry_after_header;

/// One aggregate data value, as `dataValueSets` takes it. Ids are UIDs
/// (resolve `code:` references with
/// [`check_references`](Dhis2Client::check_references) first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataValue {
    /// Data element UID.
    pub data_element: String,
    /// Period id, e.g. `202403`.
    pub period: String,
    /// Org unit UID.
    pub org_unit: String,
    /// Category option combo UID (`HllvX50cXC0` is the default).
    pub category_option_combo: String,
    /// Attribute option combo UID (`HllvX50cXC0` is the default).
    pub attribute_option_combo: String,
    /// The value as text; empty deletes the stored value.
    pub value: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DataValueSet<'a> {
    data_values: &'a [DataValue],
}

/// Talks to one DHIS2 instance.
#[derive(Debug)]
pub struct Dhis2Client {
    pub(super) http: reqwest::Client,
    pub(super) auth: Authenticator,
    /// `{base}/api` or `{base}/api/{version}`.
    pub(super) api: String,
    batch_size: usize,
    pub(super) compression: RequestCompression,
}

impl Dhis2Client {
    /// Checks the config, loads the credentials (a personal access token's
    /// checksum is verified) and builds the client.
    pub fn new(config: Dhis2Config) -> Result<Self, ConfigError> {
        let base_url = parse_base_url("dhis2.base_url", &config.base_url)?;
        if !matches!(
            config.auth,
            AuthConfig::Basic { .. } | AuthConfig::ApiToken { .. }
        ) {
            return Err(ConfigError::UnsupportedAuth {
                connector: "dhis2",
                kind: config.auth.kind(),
                supported: "basic, api_token",
            });
        }
        if config.batch_size == 0 {
            return Err(ConfigError::Invalid {
                field: "dhis2.batch_size",
                reason: "must be at least 1".to_owned(),
            });
        }
        let http = build_client(ClientSettings {
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            compress_responses: config.compress_responses,
            pool_idle_timeout: config.pool_idle_timeout,
        })?;
        let auth = Authenticator::new(&config.auth, http.clone())?;
        let api = match config.api_version {
            Some(v) => join(&base_url, &format!("/api/{v}")),
            None => join(&base_url, "/api"),
        };
        Ok(Self {
            http,
            auth,
            api,
            batch_size: config.batch_size,
            compression: RequestCompression::new(config.compress_requests, "dhis2"),
        })
    }

    /// Most values per [`post_data_values`](Self::post_data_values) call;
    /// the caller splits larger pushes (indexes in the outcome are
    /// positions within one call's slice).
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// POSTs `values` to `/api/dataValueSets` (`importStrategy=CREATE_AND_UPDATE`),
    /// gzipped when it pays and the server takes it, and reads the import
    /// summary, whichever shape and HTTP status (200 or 409) it came with.
    /// An empty slice sends nothing. A gzipped body the server refuses
    /// for its encoding is sent again plain at once (and from then on).
    pub async fn post_data_values(
        &self,
        values: &[DataValue],
        traceparent: Option<&str>,
    ) -> Result<ImportOutcome, Dhis2Error> {
        if values.is_empty() {
            return Ok(ImportOutcome::default());
        }
        if values.len() > self.batch_size {
            debug!(
                values = values.len(),
                batch_size = self.batch_size,
                "posting more values than batch_size"
            );
        }
        let body = serde_json::to_vec(&DataValueSet {
            data_values: values,
        })
        .map_err(Dhis2Error::Encode)?;
        let traceparent = traceparent.and_then(|t| match HeaderValue::from_str(t) {
            Ok(v) => Some(v),
            Err(_) => {
                warn!("traceparent is not a valid header value; not forwarded");
                None
            }
        });
        let tp = traceparent.as_ref();
        let (status, retry_after, text) = match self.compression.encode(&body) {
            None => self.post(&body, false, tp).await?,
            Some(gz) => {
                let answer = self.post(&gz, true, tp).await?;
                if RequestCompression::refuses_gzip(answer.0, &answer.2) {
                    // A refused request imported nothing: sent again plain.
                    let again = self.post(&body, false, tp).await?;
                    // The same refusal of the plain body: about the
                    // content, not the encoding.
                    if again.0 != answer.0 {
                        self.compression.disable(answer.0, &answer.2);
                    }
                    again
                } else {
                    answer
                }
            }
        };
        debug!(
            status,
            values = values.len(),
            "dhis2 dataValueSets answered"
        );
        parse_import_response(status, &text, retry_after)
    }

    /// One POST of `body` (gzipped or not) to `dataValueSets`: status,
    /// `Retry-After` and the body read whole.
    async fn post(
        &self,
        body: &[u8],
        gzipped: bool,
        traceparent: Option<&HeaderValue>,
    ) -> Result<(u16, Option<std::time::Duration>, String), Dhis2Error> {
        let url = format!("{}/dataValueSets", self.api);
        let build = || {
            let mut request = self
                .http
                .post(&url)
                .query(&[("importStrategy", "CREATE_AND_UPDATE")])
                .header(CONTENT_TYPE, "application/json")
                .header(ACCEPT, "application/json")
                .body(body.to_vec());
            if gzipped {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(tp) = traceparent {
                request = request.header("traceparent", tp.clone());
            }
            request
        };
        let response = self.auth.send(build).await.map_err(send_error)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.map_err(Dhis2Error::Transport)?;
        Ok((status, retry_after, text))
    }
}

pub(super) fn send_error(e: SendError) -> Dhis2Error {
    match e {
        SendError::Auth(e) => Dhis2Error::Auth(e),
        SendError::Transport(e) => Dhis2Error::Transport(e),
    }
}
