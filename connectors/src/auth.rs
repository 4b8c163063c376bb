//! Credentials for the HTTP sinks.
//!
//! **The guarantee**: a secret is never written in the config file and
//! never printed. Config names where it lives (`env: VAR` or
//! `file: PATH`); [`Secret`] shows `***` in `Debug` and `Display`, header
//! values are marked sensitive, and no error or log line carries one.
//!
//! OAuth2 uses the client-credentials grant (RFC 6749 §4.4) with the
//! client authenticating by HTTP Basic (§2.3.1). The access token is
//! cached and fetched again when less than a minute (or a tenth of its
//! lifetime, if shorter) remains, or once after the server answers 401.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{RequestBuilder, Response, Url};
use serde::Deserialize;
use tracing::debug;

use crate::http::{ConfigError, excerpt, parse_base_url, status_line};
use crate::retry::{Retryable, StatusClass, classify_status, retry_after_header};

/// A credential. Shows `***` when printed; read it with
/// [`expose`](Self::expose) only to put it on the wire.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value obtained elsewhere (tests, a secret manager).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret lives: exactly one of an environment variable or a file
/// (a mounted Kubernetes secret, say). The value itself never appears in
/// the config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the environment variable holding the secret.
    #[serde(default)]
    pub env: Option<String>,
    /// File holding the secret; a trailing newline is dropped.
    #[serde(default)]
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// Reads the secret. `field` names it in errors (`auth.password`).
    pub fn load(&self, field: &'static str) -> Result<Secret, ConfigError> {
        let fail = |reason: String| ConfigError::Secret { field, reason };
        let value = match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var).map_err(|e| match e {
                std::env::VarError::NotPresent => {
                    fail(format!("environment variable `{var}` is not set"))
                }
                std::env::VarError::NotUnicode(_) => {
                    fail(format!("environment variable `{var}` is not valid UTF-8"))
                }
            })?,
            (None, Some(path)) => {
                let mut text = std::fs::read_to_string(path)
                    .map_err(|e| fail(format!("cannot read `{}`: {e}", path.display())))?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            }
            (Some(_), Some(_)) => return Err(fail("give `env` or `file`, not both".to_owned())),
            (None, None) => {
                return Err(fail(
                    "give `env: VARIABLE` or `file: PATH` (secrets are never written inline)"
                        .to_owned(),
                ));
            }
        };
        if value.is_empty() {
            let origin = match (&self.env, &self.file) {
                (Some(var), _) => format!("environment variable `{var}`"),
                (_, Some(path)) => format!("file `{}`", path.display()),
                _ => String::new(),
            };
            return Err(fail(format!("{origin} is empty")));
        }
        Ok(Secret(value))
    }
}

/// `auth:` of a sink.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// No `Authorization` header.
    #[default]
    None,
    /// `Authorization: Basic base64(username:password)`.
    Basic {
        /// User name (not a secret).
        username: String,
        /// Where the password lives.
        password: SecretRef,
    },
    /// `Authorization: Bearer <token>`, a long-lived token.
    Bearer {
        /// Where the token lives.
        token: SecretRef,
    },
    /// DHIS2 personal access token: `Authorization: ApiToken <token>`. The
    /// token's format and checksum are checked at load.
    ApiToken {
        /// Where the token (`d2pat_…`) lives.
        token: SecretRef,
    },
    /// OAuth2 client credentials; the access token is sent as `Bearer`.
    #[serde(rename = "oauth2")]
    OAuth2 {
        /// The authorization server's token endpoint.
        token_url: String,
        /// The client id (not a secret).
        client_id: String,
        /// Where the client secret lives.
        client_secret: SecretRef,
        /// Space-separated scopes to request, if the server needs them.
        #[serde(default)]
        scope: Option<String>,
    },
}

impl AuthConfig {
    /// Makes a relative secret file path relative to `dir` (the config
    /// file's directory) rather than to wherever the process started.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        let secret = match self {
            Self::None => return,
            Self::Basic { password: s, .. }
            | Self::Bearer { token: s }
            | Self::ApiToken { token: s }
            | Self::OAuth2 {
                client_secret: s, ..
            } => s,
        };
        if let Some(file) = secret.file.as_mut()
            && file.is_relative()
        {
            *file = dir.join(&*file);
        }
    }

    /// The `type` as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Basic { .. } => "basic",
            Self::Bearer { .. } => "bearer",
            Self::ApiToken { .. } => "api_token",
            Self::OAuth2 { .. } => "oauth2",
        }
    }
}

/// Fetching an OAuth2 access token failed. Transient for network errors,
/// 408/429/5xx; permanent otherwise (wrong client id or secret, say).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token endpoint could not be reached or timed out.
    #[error("oauth2 token request failed: {0}")]
    TokenTransport(#[source] reqwest::Error),
    /// The token endpoint refused.
    #[error("oauth2 token endpoint answered HTTP {}: {message}", status_line(*.status))]
    TokenStatus {
        /// HTTP status.
        status: u16,
        /// The server's `error` and `error_description` (RFC 6749 §5.2).
        message: String,
        /// The server's `Retry-After`.
        retry_after: Option<Duration>,
    },
    /// The token endpoint answered 2xx without a usable token.
    #[error("oauth2 token endpoint answered HTTP {status} without a usable token: {reason}")]
    TokenResponse {
        /// HTTP status.
        status: u16,
        /// What was wrong (never the token).
        reason: String,
    },
}

impl Retryable for AuthError {
    fn is_retryable(&self) -> bool {
        match self {
            Self::TokenTransport(e) => !e.is_builder(),
            Self::TokenStatus { status, .. } => classify_status(*status) == StatusClass::Transient,
            Self::TokenResponse { .. } => false,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TokenStatus { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Why a request could not be sent (crate-internal).
#[derive(Debug)]
pub(crate) enum SendError {
    /// No credential to send.
    Auth(AuthError),
    /// Network trouble or a timeout.
    Transport(reqwest::Error),
}

/// Adds the configured `Authorization` header to requests.
pub struct Authenticator {
    scheme: Scheme,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator")
            .field("type", &self.kind())
            .finish_non_exhaustive()
    }
}

enum Scheme {
    None,
    Static {
        kind: &'static str,
        header: HeaderValue,
    },
    OAuth2(Box<OAuth2>),
}

struct OAuth2 {
    http: reqwest::Client,
    token_url: Url,
    /// `Basic base64(client_id:client_secret)`.
    client_auth: HeaderValue,
    scope: Option<String>,
    cache: tokio::sync::Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    token: Option<CachedToken>,
    /// Bumped on every fetch, so that a 401 only discards the token it
    /// was answered with.
    generation: u64,
}

struct CachedToken {
    header: HeaderValue,
    /// When to fetch a new one; `None` if the server gave no lifetime
    /// (kept until a 401).
    refresh_at: Option<Instant>,
}

impl Authenticator {
    /// Loads the secrets and prepares the header. `http` sends the OAuth2
    /// token requests.
    pub fn new(config: &AuthConfig, http: reqwest::Client) -> Result<Self, ConfigError> {
        let scheme = match config {
            AuthConfig::None => Scheme::None,
            AuthConfig::Basic { username, password } => {
                if username.contains(':') {
                    return Err(ConfigError::Invalid {
                        field: "auth.username",
                        reason: "must not contain `:`".to_owned(),
                    });
                }
                let password = password.load("auth.password")?;
                Scheme::Static {
                    kind: "basic",
                    header: basic_header(username, password.expose(), "auth.password")?,
                }
            }
            AuthConfig::Bearer { token } => {
                let token = token.load("auth.token")?;
                Scheme::Static {
                    kind: "bearer",
                    header: header_value(&format!("Bearer {}", token.expose()), "auth.token")?,
                }
            }
            AuthConfig::ApiToken { token } => {
                let token = token.load("auth.token")?;
                check_dhis2_pat(token.expose()).map_err(ConfigError::ApiToken)?;
                Scheme::Static {
                    kind: "api_token",
                    header: header_value(&format!("ApiToken {}", token.expose()), "auth.token")?,
                }
            }
            AuthConfig::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
            } => {
                let token_url = parse_base_url("auth.token_url", token_url)?;
                let secret = client_secret.load("auth.client_secret")?;
                let client_auth = basic_header(
                    &form_encode(client_id),
                    &form_encode(secret.expose()),
                    "auth.client_secret",
                )?;
                Scheme::OAuth2(Box::new(OAuth2 {
                    http,
                    token_url,
                    client_auth,
                    scope: scope.clone().filter(|s| !s.trim().is_empty()),
                    cache: tokio::sync::Mutex::new(Cache::default()),
                }))
            }
        };
        Ok(Self { scheme })
    }

    /// The configured `type`.
    pub fn kind(&self) -> &'static str {
        match &self.scheme {
            Scheme::None => "none",
            Scheme::Static { kind, .. } => kind,
            Scheme::OAuth2(_) => "oauth2",
        }
    }

    /// Adds the `Authorization` header, fetching an OAuth2 token first if
    /// none is cached or it is about to expire.
    pub async fn authorize(&self, request: RequestBuilder) -> Result<RequestBuilder, AuthError> {
        Ok(self.authorize_inner(request).await?.0)
    }

    /// Forgets the cached OAuth2 token (no-op for other schemes).
    pub async fn invalidate(&self) {
        if let Scheme::OAuth2(o) = &self.scheme {
            o.cache.lock().await.token = None;
        }
    }

    async fn authorize_inner(
        &self,
        request: RequestBuilder,
    ) -> Result<(RequestBuilder, u64), AuthError> {
        match &self.scheme {
            Scheme::None => Ok((request, 0)),
            Scheme::Static { header, .. } => Ok((request.header(AUTHORIZATION, header.clone()), 0)),
            Scheme::OAuth2(o) => {
                let (header, generation) = o.header().await?;
                Ok((request.header(AUTHORIZATION, header), generation))
            }
        }
    }

    /// Sends the request `build` makes, authorized. With OAuth2, a 401
    /// discards the token and the request is sent once more with a fresh
    /// one.
    pub(crate) async fn send<F>(&self, build: F) -> Result<Response, SendError>
    where
        F: Fn() -> RequestBuilder,
    {
        let (request, generation) = self
            .authorize_inner(build())
            .await
            .map_err(SendError::Auth)?;
        let response = request.send().await.map_err(SendError::Transport)?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED
            && let Scheme::OAuth2(o) = &self.scheme
        {
            debug!("access token refused with 401, fetching a new one");
            o.discard(generation).await;
            let (request, _) = self
                .authorize_inner(build())
                .await
                .map_err(SendError::Auth)?;
            return request.send().await.map_err(SendError::Transport);
        }
        Ok(response)
    }
}

impl OAuth2 {
    async fn header(&self) -> Result<(HeaderValue, u64), AuthError> {
        let mut cache = self.cache.lock().await;
        if let Some(token) = &cache.token
            && token.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok((token.header.clone(), cache.generation));
        }
        let token = self.fetch().await?;
        cache.generation += 1;
        let header = token.header.clone();
        cache.token = Some(token);
        Ok((header, cache.generation))
    }

    async fn discard(&self, generation: u64) {
        let mut cache = self.cache.lock().await;
        if cache.generation == generation {
            cache.token = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, AuthError> {
        let mut body = "grant_type=client_credentials".to_owned();
        if let Some(scope) = &self.scope {
            body.push_str("&scope=");
            body.push_str(&form_encode(scope));
        }
        let started = Instant::now();
        let response = self
            .http
            .post(self.token_url.clone())
            .header(AUTHORIZATION, self.client_auth.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await
            .map_err(AuthError::TokenTransport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_header(response.headers());
        let text = response.text().await.map_err(AuthError::TokenTransport)?;
        let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
        if classify_status(status) != StatusClass::Success {
            let message = json
                .as_ref()
                .and_then(|j| {
                    let error = j.get("error")?.as_str()?;
                    Some(match j.get("error_description").and_then(|d| d.as_str()) {
                        Some(d) => format!("{error}: {d}"),
                        None => error.to_owned(),
                    })
                })
                .unwrap_or_else(|| excerpt(&text));
            return Err(AuthError::TokenStatus {
                status,
                message,
                retry_after,
            });
        }
        let bad = |reason: &str| AuthError::TokenResponse {
            status,
            reason: reason.to_owned(),
        };
        let json = json.ok_or_else(|| bad("body is not JSON"))?;
        let token = json
            .get("access_token")
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| bad("no `access_token`"))?;
        if let Some(kind) = json.get("token_type").and_then(|t| t.as_str())
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(bad(&format!("token_type `{kind}` is not bearer")));
        }
        // Some servers send `expires_in` as a string.
        let lifetime = match json.get("expires_in") {
            Some(serde_json::Value::Number(n)) => n.as_u64(),
            Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
            _ => None,
        }
        .map(Duration::from_secs);
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| bad("`access_token` has characters not allowed in a header"))?;
        header.set_sensitive(true);
        debug!(
            lifetime_s = lifetime.map(|l| l.as_secs()),
            "fetched an oauth2 access token"
        );
        Ok(CachedToken {
            header,
            refresh_at: lifetime.and_then(|l| started.checked_add(l - refresh_margin(l))),
        })
    }
}

/// How long before expiry a token is replaced: a minute, or a tenth of its
/// lifetime if that is shorter.
fn refresh_margin(lifetime: Duration) -> Duration {
    Duration::from_secs(60).min(lifetime / 10)
}

fn header_value(value: &str, field: &'static str) -> Result<HeaderValue, ConfigError> {
    let mut header = HeaderValue::from_str(value).map_err(|_| ConfigError::Secret {
        field,
        reason: "contains characters not allowed in an HTTP header".to_owned(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn basic_header(
    username: &str,
    password: &str,
    field: &'static str,
) -> Result<HeaderValue, ConfigError> {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    header_value(&format!("Basic {encoded}"), field)
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Checks a DHIS2 personal access token (`d2pat_` + 32 characters + the
/// 10-digit CRC32 of those 32 characters; 48 in all), so that a truncated
/// or mistyped token is reported at start-up rather than as a 401. The
/// message never contains the token.
pub fn check_dhis2_pat(token: &str) -> Result<(), String> {
    const PREFIX: &str = "d2pat_";
    if !token.starts_with(PREFIX) {
        return Err("expected it to start with `d2pat_`".to_owned());
    }
    if token.len() != 48 || !token.is_ascii() {
        return Err(format!(
            "expected 48 ASCII characters (`d2pat_`, 32 characters, a 10-digit checksum), got {}",
            token.chars().count()
        ));
    }
    let (body, checksum) = token[PREFIX.len()..].split_at(32);
    if !checksum.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the last 10 characters must be digits (the checksum)".to_owned());
    }
    if format!("{:010}", crc32(body.as_bytes())) != checksum {
        return Err("checksum does not match (truncated or mistyped token?)".to_owned());
    }
    Ok(())
}

/// CRC-32 (IEEE 802.3, as `java.util.zip.CRC32`), bit by bit: it only
/// ever sees 32 bytes.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFF_u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A `file:` secret reference to a fresh file holding `value` (tests).
#[cfg(test)]
pub(crate) fn secret_file(value: &str) -> SecretRef {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "kiungo-test-secret-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("{value}\n")).expect("write secret file");
    SecretRef {
        env: None,
        file: Some(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_known_values() {
        assert_eq!(crc32(b""), 0);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn dhis2_pat_docs_example_is_valid() {
        assert_eq!(
            check_dhis2_pat("d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092"),
            Ok(())
        );
    }

    #[test]
    fn dhis2_pat_errors_are_clear_and_never_echo_the_token() {
        let cases = [
            (
                "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814093",
                "checksum",
            ),
            ("d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ115181409", "got 47"),
            ("5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092", "d2pat_"),
            ("d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ115181409x", "digits"),
        ];
        for (token, expected) in cases {
            let err = check_dhis2_pat(token).expect_err(token);
            assert!(err.contains(expected), "{err}");
            assert!(!err.contains("5xVA12"), "{err}");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn secret_refs_load_from_file_and_env() {
        let path = std::env::temp_dir().join(format!("kiungo-secret-{}", std::process::id()));
        std::fs::write(&path, "s3cret\r\n").expect("write");
        let r = SecretRef {
            env: None,
            file: Some(path.clone()),
        };
        assert_eq!(r.load("auth.password").expect("loads").expose(), "s3cret");
        std::fs::write(&path, "\n").expect("write");
        let err = r.load("auth.password").expect_err("empty");
        assert!(err.to_string().starts_with("auth.password: file"), "{err}");
        std::fs::remove_file(&path).ok();

        let r = SecretRef {
            env: Some("PATH".into()),
            file: None,
        };
        assert!(
            !r.load("auth.token")
                .expect("PATH is set")
                .expose()
                .is_empty()
        );
        let r = SecretRef {
            env: Some("KIUNGO_SURELY_UNSET_VARIABLE".into()),
            file: None,
        };
        let err = r.load("auth.token").expect_err("unset");
        assert_eq!(
            err.to_string(),
            "auth.token: environment variable `KIUNGO_SURELY_UNSET_VARIABLE` is not set"
        );
        let err = SecretRef::default().load("auth.token").expect_err("none");
        assert!(err.to_string().contains("never written inline"), "{err}");
        let both = SecretRef {
            env: Some("PATH".into()),
            file: Some(path),
        };
        assert!(both.load("auth.token").is_err());
    }

    #[test]
    fn auth_config_parses_and_refuses_inline_secrets() {
        let c: AuthConfig = serde_saphyr::from_str(
            "type: oauth2\ntoken_url: https://idp/token\nclient_id: kiungo\nclient_secret: {env: KIUNGO_SECRET}\n",
        )
        .expect("parses");
        assert_eq!(c.kind(), "oauth2");
        let c: AuthConfig =
            serde_saphyr::from_str("type: api_token\ntoken: {file: /run/secrets/pat}\n")
                .expect("parses");
        assert_eq!(c.kind(), "api_token");
        let err = serde_saphyr::from_str::<AuthConfig>(
            "type: basic\nusername: admin\npassword: district\n",
        )
        .expect_err("inline password");
        assert!(!err.to_string().is_empty());
        let err = serde_saphyr::from_str::<AuthConfig>(
            "type: basic\nusername: admin\npassword: {env: X}\npasword: {env: Y}\n",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("pasword"), "{err}");
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
    }

    #[test]
    fn refresh_margins() {
        assert_eq!(
            refresh_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            refresh_margin(Duration::from_secs(100)),
            Duration::from_secs(10)
        );
    }
}
