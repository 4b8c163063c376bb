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
}

const fn default_timeout() -> Duration {
    Duration::from_secs(30)
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
        }
    }
}
