//! The HTTP client of the FHIR sink.

use reqwest::Url;
use reqwest::header::{ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, HeaderValue};
use tracing::{debug, warn};

use super::config::FhirConfig;
use super::response::{FhirError, TransactionResponse, read_answer};
use crate::auth::{Authenticator, SendError};
use crate::http::{
    ClientSettings, ConfigError, RequestCompression, build_client, join, media_type, parse_base_url,
};
use crate::retry::retry_after_header;

const FHIR_JSON: &str = "application/fhir+json";

/// Sends transaction bundles to one FHIR server. Cheap to share: clone
/// the `Arc` it lives in, not the client.
#[derive(Debug)]
pub struct FhirClient {
    http: reqwest::Client,
    auth: Authenticator,
    base_url: Url,
    endpoint: String,
    pub(super) compression: RequestCompression,
}

/// What the server answered, read whole.
struct Answer {
    status: u16,
    retry_after: Option<std::time::Duration>,
    media: String,
    text: String,
}

impl FhirClient {
    /// Checks the config, loads the credentials and builds the client.
    pub fn new(config: FhirConfig) -> Result<Self, ConfigError> {
        let base_url = parse_base_url("fhir.base_url", &config.base_url)?;
        let http = build_client(ClientSettings {
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            compress_responses: config.compress_responses,
            pool_idle_timeout: config.pool_idle_timeout,
        })?;
        let auth = Authenticator::new(&config.auth, http.clone())?;
        let endpoint = join(&base_url, "");
        Ok(Self {
            http,
            auth,
            base_url,
            endpoint,
            compression: RequestCompression::new(config.compress_requests, "fhir"),
        })
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// POSTs a transaction bundle (already serialised JSON) to `[base]`,
    /// gzipped when it pays and the server takes it, forwarding
    /// `traceparent` (W3C trace context) when given, and reads the
    /// transaction-response. A gzipped bundle the server refuses for its
    /// encoding is sent again plain at once (and from then on).
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
        let plain = bundle_json.as_bytes();
        let Answer {
            status,
            retry_after,
            media,
            text,
        } = match self.compression.encode(plain) {
            None => self.post(plain, false, traceparent.as_ref()).await?,
            Some(gz) => {
                let answer = self.post(&gz, true, traceparent.as_ref()).await?;
                if RequestCompression::refuses_gzip(answer.status, &answer.text) {
                    let again = self.post(plain, false, traceparent.as_ref()).await?;
                    // The same refusal of the plain body: about the
                    // content, not the encoding.
                    if again.status != answer.status {
                        self.compression.disable(answer.status, &answer.text);
                    }
                    again
                } else {
                    answer
                }
            }
        };
        read_answer(status, &media, &text, retry_after)
    }

    /// One POST of `body` (gzipped or not), answered and read whole.
    async fn post(
        &self,
        body: &[u8],
        gzipped: bool,
        traceparent: Option<&HeaderValue>,
    ) -> Result<Answer, FhirError> {
        let build = || {
            let mut request = self
                .http
                .post(&self.endpoint)
                .header(CONTENT_TYPE, FHIR_JSON)
                .header(ACCEPT, FHIR_JSON)
                .header("Prefer", "return=minimal")
                .body(body.to_vec());
            if gzipped {
                request = request.header(CONTENT_ENCODING, "gzip");
            }
            if let Some(tp) = traceparent {
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
        debug!(
            status,
            bytes = text.len(),
            gzipped,
            "fhir transaction answered"
        );
        Ok(Answer {
            status,
            retry_after,
            media,
            text,
        })
    }
}
