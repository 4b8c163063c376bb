//! `http.ingest:`: who may write over `POST /v1/events/{source}`, how
//! fast, and how long a body may take to arrive.

use std::time::Duration;

use serde::Deserialize;

use super::rate_limit::RateLimitConfig;

/// `http.ingest:` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpIngestConfig {
    /// `token` (the default): every request needs `Authorization: Bearer`
    /// with an `app` token allowed on the source (`admin.tokens[].sources`)
    /// or an `operator` token. `none`: anyone who can reach the port
    /// writes, for local trials only (a warning is logged at start).
    #[serde(default)]
    pub auth: IngestAuth,
    /// How long a request's body may take to arrive, from the end of its
    /// headers; a slower or stalled upload is answered 408 and its
    /// connection closed, so that its buffer is freed.
    #[serde(default = "default_body_timeout", with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Request and byte rates per token (per client address with
    /// `auth: none`); past them, 429 with `Retry-After`.
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

impl Default for HttpIngestConfig {
    fn default() -> Self {
        Self {
            auth: IngestAuth::default(),
            body_timeout: default_body_timeout(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

const fn default_body_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Who may write events over HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IngestAuth {
    /// A bearer token from `admin.tokens`: `app` (on its sources) or
    /// `operator`.
    #[default]
    Token,
    /// Anyone: for local trials only.
    None,
}

impl HttpIngestConfig {
    /// Problems with the values, each naming its field; `max_body_bytes`
    /// is `http.max_body_bytes`, which one burst of bytes must hold.
    pub fn problems(&self, max_body_bytes: usize) -> Vec<String> {
        let mut p = Vec::new();
        if self.body_timeout.is_zero() {
            p.push("http.ingest.body_timeout: must be more than 0s".into());
        }
        p.extend(self.rate_limit.problems(max_body_bytes));
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let c: HttpIngestConfig = serde_saphyr::from_str("{}").expect("parse");
        assert_eq!(c.auth, IngestAuth::Token);
        assert_eq!(c.body_timeout, Duration::from_secs(30));
        assert!(c.problems(4 << 20).is_empty(), "{:?}", c.problems(4 << 20));
        let c: HttpIngestConfig =
            serde_saphyr::from_str("{auth: none, body_timeout: 0s}").expect("parse");
        assert_eq!(c.auth, IngestAuth::None);
        assert_eq!(
            c.problems(4 << 20),
            vec!["http.ingest.body_timeout: must be more than 0s".to_owned()]
        );
        let err = serde_saphyr::from_str::<HttpIngestConfig>("{auth: nobody}")
            .expect_err("unknown variant");
        assert!(err.to_string().contains("nobody"), "{err}");
        let err =
            serde_saphyr::from_str::<HttpIngestConfig>("{auht: none}").expect_err("unknown field");
        assert!(err.to_string().contains("auht"), "{err}");
    }

    /// The whole file: every bad value is reported with its field.
    #[test]
    fn config_file_problems_name_their_fields() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("k.yaml");
        std::fs::write(
            &file,
            "http:\n  max_connections: 1\n  max_body_bytes: 100\n  ingest:\n    auth: none\n    \
             rate_limit: {requests_per_second: 0, request_burst: 0, bytes_per_second: -1, byte_burst: 10}\n",
        )
        .expect("write");
        let err = crate::config::Config::load(&file)
            .expect_err("bad values")
            .to_string();
        for field in [
            "http.max_connections",
            "http.ingest.rate_limit.requests_per_second",
            "http.ingest.rate_limit.request_burst",
            "http.ingest.rate_limit.bytes_per_second",
            "http.ingest.rate_limit.byte_burst",
        ] {
            assert!(err.contains(field), "{field} in {err}");
        }
        std::fs::write(&file, "http:\n  ingest:\n    auth: nobody\n").expect("write");
        let err = crate::config::Config::load(&file)
            .expect_err("bad auth")
            .to_string();
        assert!(err.contains("nobody"), "{err}");
    }
}
