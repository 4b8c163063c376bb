//! What the HTTP sinks share: building a client, reading base URLs,
//! the configuration error, and short excerpts of error bodies.

use std::time::Duration;

use reqwest::{StatusCode, Url};

/// A sink's configuration cannot be used: the message names the field
/// and never the secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `base_url` (or `token_url`) is not an absolute http(s) URL.
    #[error("{field}: `{url}` is not an http(s) URL: {reason}")]
    InvalidUrl {
        /// The config field.
        field: &'static str,
        /// What was configured.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// A secret could not be loaded.
    #[error("{field}: {reason}")]
    Secret {
        /// The config field (`auth.password`, ...).
        field: &'static str,
        /// Why, naming the variable or file (never the value).
        reason: String,
    },
    /// The DHIS2 personal access token is malformed.
    #[error("auth.token: not a DHIS2 personal access token: {0}")]
    ApiToken(String),
    /// The connector does not support this kind of authentication.
    #[error("auth.type: {connector} does not support `{kind}` (use one of: {supported})")]
    UnsupportedAuth {
        /// `fhir` or `dhis2`.
        connector: &'static str,
        /// The configured `type`.
        kind: &'static str,
        /// What the connector accepts.
        supported: &'static str,
    },
    /// Another field is out of range.
    #[error("{field}: {reason}")]
    Invalid {
        /// The config field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the http client: {0}")]
    Client(#[source] reqwest::Error),
}

/// Installs rustls' ring provider for the process; a provider installed
/// earlier (by us or by the binary) is kept.
pub(crate) fn install_crypto_provider() {
    // An error only means a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds the client a sink sends with: no redirects (a redirected POST
/// would silently become a GET), whole-request and connect timeouts.
pub(crate) fn build_client(
    timeout: Duration,
    connect_timeout: Duration,
) -> Result<reqwest::Client, ConfigError> {
    if timeout.is_zero() {
        return Err(ConfigError::Invalid {
            field: "timeout",
            reason: "must be longer than zero".to_owned(),
        });
    }
    install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(connect_timeout.min(timeout))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kiungo/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(ConfigError::Client)
}

/// Parses a base URL: absolute http(s), no query or fragment, without
/// its trailing slash.
pub(crate) fn parse_base_url(field: &'static str, raw: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::InvalidUrl {
        field,
        url: raw.to_owned(),
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not carry a query or fragment"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials go in `auth`, not in the URL"));
    }
    Ok(url)
}

/// `base` joined with `path` (which starts with `/`), keeping the base's
/// own path (`https://host/dhis` + `/api/x` = `https://host/dhis/api/x`).
pub(crate) fn join(base: &Url, path: &str) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), path)
}

/// `412 Precondition Failed`.
pub(crate) fn status_line(status: u16) -> String {
    match StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

/// The first characters of a body, on one line, for an error message.
pub(crate) fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    let one_line: String = body.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let cut: String = one_line.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// The body's media type, without parameters, lowercase.
pub(crate) fn media_type(headers: &reqwest::header::HeaderMap) -> String {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls() {
        let u = parse_base_url("base_url", "https://play.dhis2.org/40/").expect("ok");
        assert_eq!(
            join(&u, "/api/dataValueSets"),
            "https://play.dhis2.org/40/api/dataValueSets"
        );
        let u = parse_base_url("base_url", "http://hapi:8080/fhir").expect("ok");
        assert_eq!(join(&u, ""), "http://hapi:8080/fhir");
        for bad in [
            "hapi:8080",
            "ftp://x/",
            "http://x/?a=1",
            "https://u:p@x/",
            "not a url",
        ] {
            let e = parse_base_url("base_url", bad).expect_err(bad);
            assert!(e.to_string().starts_with("base_url: "), "{e}");
        }
    }

    #[test]
    fn excerpts_are_short_and_single_line() {
        assert_eq!(
            excerpt("<h1>502\n Bad   Gateway</h1>\n"),
            "<h1>502 Bad Gateway</h1>"
        );
        let long = "x".repeat(500);
        assert_eq!(excerpt(&long).chars().count(), 201);
        assert_eq!(status_line(412), "412 Precondition Failed");
        assert_eq!(status_line(599), "599");
    }
}
