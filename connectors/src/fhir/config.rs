//! `fhir:` in the config file.

use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;

/// Where and how to send transaction bundles.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirConfig {
    /// The server's base URL (`[base]`), e.g. `https://hapi.example.org/fhir`;
    /// transactions are POSTed to it.
    pub base_url: String,
    /// How to authenticate; none by default.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Longest wait for one whole request, connecting included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Gzip request bodies of 1 KiB or more (`Content-Encoding: gzip`).
    /// On by default: HAPI FHIR decodes them
    /// (`RestfulServer.uncompressIncomingContents`, default true). A
    /// server that refuses them (415, or a 400 about the encoding) gets
    /// plain bodies from then on, logged once.
    #[serde(default = "default_true")]
    pub compress_requests: bool,
    /// Ask for gzipped answers (`Accept-Encoding: gzip`) and decode them.
    #[serde(default = "default_true")]
    pub compress_responses: bool,
    /// How long an idle connection is kept open for the next request;
    /// keep it below the server's (or its proxy's) keep-alive timeout
    /// (Tomcat 20s, Jetty 30s, nginx 75s). `0s` never reuses a
    /// connection.
    #[serde(default = "default_pool_idle_timeout", with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
}

const fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
const fn default_true() -> bool {
    true
}
const fn default_pool_idle_timeout() -> Duration {
    Duration::from_secs(15)
}
const fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

impl FhirConfig {
    /// A config with defaults for everything but the URL and auth.
    pub fn new(base_url: impl Into<String>, auth: AuthConfig) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            compress_requests: true,
            compress_responses: true,
            pool_idle_timeout: default_pool_idle_timeout(),
        }
    }
}
