//! The HTTP client of the FHIR sink.

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use tracing::{debug, warn};

use super::config::FhirConfig;
use super::response::{
    FhirError, TransactionResponse, describe_body, operation_outcome_issues,
    parse_transaction_response, summarise,
};
use crate::auth::{Authenticator, SendError};
use crate::http::{ConfigError, build_client, join, media_type, parse_base_url};
use crate::retry::{StatusClass, classify_status, retry_after_header};

const FHIR_JSON: &str = "application/fhir+json";

/// Sends transaction bundles to one FHIR server. Cheap to share: clone
/// the `Arc` it lives in, not the client.
#[derive(Debug)]
pub struct FhirClient {
    http: reqwest::Client,
    auth: Authenticator,
    base_url: Url,
    endpoint: String,
}

impl FhirClient {
    /// Checks the config, loads the credentials and builds the client.
    pub fn new(config: FhirConfig) -> Result<Self, ConfigError> {
        let base_url = parse_base_url("fhir.base_url", &config.base_url)?;
        let http = build_client(config.timeout, config.connect_timeout)?;
        let auth = Authenticator::new(&config.auth, http.clone())?;
        let endpoint = join(&base_url, "");
        Ok(Self {
            http,
            auth,
            base_url,
            endpoint,
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// POSTs a transaction bundle (already serialised JSON) to `[base]`,
    /// forwarding `traceparent` (W3C trace context) when given, and reads
    /// the transaction-response.
    pub async fn transaction(
        &self,
        bundle_json: &str,
        traceparent: Option<&str>,
    ) -> Result<TransactionResponse, FhirError> {
        let traceparent = traceparent.and_then(|t| match HeaderValue::from_str(t) {
            Ok(v) => Some(v),
            Err(_) => {
                warn!("traceparent is not a valid header value; not forwarded");
                None
            }
        });
        let build = || {
            let mut request = self
                .http
                .post(&self.endpoint)
                .header(CONTENT_TYPE, FHIR_JSON)
                .header(ACCEPT, FHIR_JSON)
                .header("Prefer", "return=minimal")
                .body(bundle_json.to_owned());
            if let Some(tp) = &traceparent {
                request = request.header("traceparent", tp.clone());
            }
            request
        };
        let response = self.auth.send(build).await.map_err(|e| match e {
            SendError::Auth(e) => FhirError::Auth(e),
            SendError::Transport(e) => FhirError::Transport(e),
        })?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let media = media_type(response.headers());
        let text = response.text().await.map_err(FhirError::Transport)?;
        debug!(status, bytes = text.len(), "fhir transaction answered");
        if classify_status(status) == StatusClass::Success {
            return parse_transaction_response(status, &media, &text);
        }
        let issues = serde_json::from_str(&text)
            .ok()
            .and_then(|json| operation_outcome_issues(&json));
        let detail = match &issues {
            Some(issues) => summarise(issues),
            None => describe_body(&media, &text),
        };
        Err(FhirError::Status {
            status,
            issues: issues.unwrap_or_default(),
            detail,
            retry_after,
        })
    }
}
