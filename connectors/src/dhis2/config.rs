//! `dhis2:` in the config file.

use std::time::Duration;

use serde::Deserialize;

use crate::auth::AuthConfig;

/// Where and how to push data values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhis2Config {
    /// The instance's base URL, without `/api`, e.g.
    /// `https://dhis2.example.org` or `https://example.org/dhis`.
    pub base_url: String,
    /// `basic` (user name and password) or `api_token` (a personal access
    /// token, DHIS2 2.37+).
    pub auth: AuthConfig,
    /// Pin the Web API version: requests go to `/api/{version}/…`. `37`
    /// keeps the pre-2.38 answers (a bare import summary, HTTP 200 whatever
    /// the outcome); both shapes are understood. Unversioned by default.
    #[serde(default)]
    pub api_version: Option<u16>,
    /// Longest wait for one whole request; large imports take a while.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Longest wait to open a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most data values per `dataValueSets` request; the delivery worker
    /// splits larger pushes.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Gzip request bodies of 1 KiB or more (`Content-Encoding: gzip`).
    /// On by default: DHIS2 (2.38+) inflates a `dataValueSets` body
    /// that starts with the gzip magic bytes, whatever its headers. A
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
    Duration::from_secs(60)
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
const fn default_batch_size() -> usize {
    1000
}

impl Dhis2Config {
    /// A config with defaults for everything but the URL and auth.
    pub fn new(base_url: impl Into<String>, auth: AuthConfig) -> Self {
        Self {
            base_url: base_url.into(),
            auth,
            api_version: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            batch_size: default_batch_size(),
            compress_requests: true,
            compress_responses: true,
            pool_idle_timeout: default_pool_idle_timeout(),
        }
    }
}
