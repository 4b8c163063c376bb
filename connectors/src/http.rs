//! What the HTTP sinks share: building a client, reading base URLs,
//! the configuration error, gzip request bodies, and short excerpts of
//! error bodies.
//!
//! **On the wire**: one client per destination, built once, so that its
//! connections are kept alive and reused (an idle one is closed after the
//! destination's `pool_idle_timeout`); over TLS, HTTP/2 is offered by ALPN
//! and used when the server takes it; answers are asked for gzipped
//! (`Accept-Encoding: gzip`) and decoded transparently; request bodies of
//! 1 KiB or more are gzipped (`Content-Encoding: gzip`) unless the
//! destination turns it off, and a server that refuses them gets plain
//! bodies from then on ([`RequestCompression`]).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use tracing::warn;

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

/// How a sink's client talks to its server, from its config.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSettings {
    /// Longest wait for one whole request.
    pub timeout: Duration,
    /// Longest wait to open a connection.
    pub connect_timeout: Duration,
    /// Ask for gzipped answers and decode them.
    pub compress_responses: bool,
    /// How long an idle connection is kept for the next request.
    pub pool_idle_timeout: Duration,
}

/// Builds the client a sink sends with (once per destination: clones
/// share its connection pool): no redirects (a redirected POST would
/// silently become a GET), whole-request and connect timeouts, idle
/// connections kept `pool_idle_timeout`, HTTP/2 offered by ALPN over TLS
/// (`h2`, then `http/1.1`), gzipped answers accepted unless turned off.
pub(crate) fn build_client(settings: ClientSettings) -> Result<reqwest::Client, ConfigError> {
    let ClientSettings {
        timeout,
        connect_timeout,
        compress_responses,
        pool_idle_timeout,
    } = settings;
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
        .gzip(compress_responses)
        // Zero: a connection is never reused.
        .pool_idle_timeout(pool_idle_timeout)
        .build()
        .map_err(ConfigError::Client)
}

/// Bodies shorter than this are sent as they are: gzip's 18-byte frame
/// and the compressor's start-up eat most of what it would save.
pub const MIN_COMPRESSED_BODY: usize = 1024;

/// Gzips `body` (default level, pure-Rust deflate).
pub fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        Compression::default(),
    );
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// Decodes a gzip body, refusing one that inflates past `limit` bytes
/// (what the simulators and tests use to read what the sinks sent).
pub fn gunzip(body: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    let read = flate2::read::MultiGzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if read > limit {
        return Err(std::io::Error::other(format!(
            "the body inflates past {limit} bytes"
        )));
    }
    Ok(out)
}

/// Whether one destination's request bodies are gzipped. On by config;
/// switched off for the rest of the process, logged once, when the server
/// refuses a gzipped body that it then takes plain
/// ([`refuses_gzip`](Self::refuses_gzip)).
#[derive(Debug)]
pub(crate) struct RequestCompression {
    enabled: AtomicBool,
    destination: &'static str,
}

impl RequestCompression {
    /// `destination` (`fhir`, `dhis2`) names it in the log.
    pub(crate) fn new(enabled: bool, destination: &'static str) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            destination,
        }
    }

    /// The gzipped body to send instead of `body`, if compression is on,
    /// the body is at least [`MIN_COMPRESSED_BODY`] long and gzip makes
    /// it smaller.
    pub(crate) fn encode(&self, body: &[u8]) -> Option<Vec<u8>> {
        if !self.enabled.load(Ordering::Relaxed) || body.len() < MIN_COMPRESSED_BODY {
            return None;
        }
        Some(gzip(body)).filter(|gz| gz.len() < body.len())
    }

    /// Whether an answer to a gzipped body may be the server refusing the
    /// encoding rather than the content: `415 Unsupported Media Type`, or
    /// a `400` that speaks of encoding or compression, or of the gzip
    /// magic byte a JSON parser choked on (Jackson: `Illegal character
    /// ((CTRL-CHAR, code 31))`, what HAPI answers with decompression off).
    pub(crate) fn refuses_gzip(status: u16, body: &str) -> bool {
        match status {
            415 => true,
            400 => {
                let body = body.to_ascii_lowercase();
                ["encoding", "gzip", "compress", "code 31"]
                    .iter()
                    .any(|w| body.contains(w))
            }
            _ => false,
        }
    }

    /// Sends plain bodies from now on; logs the first time only.
    pub(crate) fn disable(&self, status: u16, body: &str) {
        if self.enabled.swap(false, Ordering::Relaxed) {
            warn!(
                destination = self.destination,
                status,
                // The answer's text can quote the request: its size only.
                answer_bytes = body.len(),
                "the server refuses gzipped request bodies; sending them uncompressed from now on"
            );
        }
    }

    /// Whether bodies are still gzipped.
    #[cfg(test)]
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
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

/// A wiremock matcher: the request says `Content-Encoding: gzip` and its
/// body inflates to the expected bytes.
#[cfg(test)]
pub(crate) struct GzippedBody(pub Vec<u8>);

#[cfg(test)]
impl wiremock::Match for GzippedBody {
    fn matches(&self, request: &wiremock::Request) -> bool {
        request
            .headers
            .get(reqwest::header::CONTENT_ENCODING)
            .is_some_and(|v| v == "gzip")
            && gunzip(&request.body, 1 << 24).is_ok_and(|b| b == self.0)
    }
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
    fn small_bodies_go_plain_and_large_ones_round_trip() {
        let c = RequestCompression::new(true, "fhir");
        assert!(c.encode(&[b'a'; MIN_COMPRESSED_BODY - 1]).is_none());
        let body = br#"{"resourceType":"Bundle","type":"transaction"}"#.repeat(40);
        let gz = c.encode(&body).expect("compressed");
        assert!(gz.len() < body.len() / 4, "{} of {}", gz.len(), body.len());
        assert_eq!(gunzip(&gz, body.len()).expect("decodes"), body);
        assert!(gunzip(&gz, body.len() - 1).is_err(), "limit");
        c.disable(415, "no");
        assert!(!c.is_enabled());
        assert!(c.encode(&body).is_none());
    }

    #[test]
    fn refusals_of_the_encoding() {
        assert!(RequestCompression::refuses_gzip(415, ""));
        assert!(RequestCompression::refuses_gzip(
            400,
            "Failed to parse request body as JSON resource. Error was: Illegal character ((CTRL-CHAR, code 31))"
        ));
        assert!(RequestCompression::refuses_gzip(
            400,
            "Unsupported Content-Encoding"
        ));
        assert!(!RequestCompression::refuses_gzip(
            400,
            "Patient.birthDate: invalid date"
        ));
        assert!(!RequestCompression::refuses_gzip(422, "gzip"));
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
