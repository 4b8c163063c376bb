//! Bearer tokens and roles for the admin API.
//!
//! Tokens come from the config as SHA-256 hashes (`sha256: <hex>`), or as
//! a secret in the environment or a file (`token: {env: VAR}`), hashed at
//! load; the plain token is never kept. `kiungo admin token` makes a new
//! random token and prints its hash. Tokens are random and long, so one
//! round of SHA-256 is enough (a slow password hash protects guessable
//! passwords, not 256-bit random strings).
//!
//! Roles, each including the one before:
//! - `app`: the status of an event (`GET /v1/events/{id}`), and writing
//!   events (`POST /v1/events/{source}`, see `crate::ingest::auth`), for
//!   apps;
//! - `viewer`: counts, reasons, health, flows, dead letters without
//!   payloads;
//! - `operator`: payloads, replay and discard; every such action is
//!   recorded in the audit log with the token's name.

use std::collections::HashMap;
use std::future::{Ready, ready};

use actix_web::http::StatusCode;
use actix_web::{FromRequest, HttpRequest, HttpResponse, ResponseError, web};
use kiungo_connectors::auth::SecretRef;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `admin:` in the config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Who may use the admin API. Without tokens every `/v1/` admin route
    /// answers 401 (ingest, probes, metrics and the dashboard page do not
    /// need one).
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// One token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it: recorded in the audit log for each operator action.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Hex SHA-256 of the token (`kiungo admin token` prints one).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Or the token itself, from the environment or a file.
    #[serde(default)]
    pub token: Option<SecretRef>,
    /// For `app` tokens: the sources whose events it may see and write
    /// (an app vendor's token sees and writes its own app's events only).
    /// All when absent.
    #[serde(default)]
    pub sources: Option<Vec<String>>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Event status, and writing events of its sources.
    App,
    /// Read everything but payloads.
    Viewer,
    /// Also payloads, replay and discard.
    Operator,
}

impl Role {
    /// `app`, `viewer` or `operator`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// Who called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The token's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// The sources it may see events of; all when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<String>>,
}

impl Principal {
    /// Whether it may see the events of `source`.
    pub fn may_see(&self, source: &str) -> bool {
        self.sources
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == source))
    }
}

/// The tokens, by hash.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl AdminConfig {
    /// Problems with the tokens, each naming its place
    /// (`admin.tokens[1].sha256`).
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashMap::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("admin.tokens[{i}]");
            if t.name.trim().is_empty() {
                p.push(format!("{at}.name: must not be empty"));
            } else if !names.insert(t.name.as_str()) {
                p.push(format!("{at}.name: `{}` is used twice", t.name));
            }
            match (&t.sha256, &t.token) {
                (Some(h), None) => match parse_hash(h) {
                    None => p.push(format!(
                        "{at}.sha256: must be 64 hex digits (the SHA-256 of the token)"
                    )),
                    Some(hash) => {
                        if let Some(first) = hashes.insert(hash, i) {
                            p.push(format!(
                                "{at}: the same token as admin.tokens[{first}] (one token, one role)"
                            ));
                        }
                    }
                },
                (None, Some(secret)) => match secret.load("token") {
                    Err(e) => p.push(format!("{at}.{e}")),
                    Ok(token) if token.expose().chars().count() < MIN_TOKEN_CHARS => {
                        p.push(format!(
                            "{at}.token: the token of `{}` ({}) has {} characters; admin tokens \
                             need at least {MIN_TOKEN_CHARS} (128 bits as hex; `kiungo admin token` \
                             makes one)",
                            t.name,
                            secret_source(secret),
                            token.expose().chars().count()
                        ));
                    }
                    Ok(token) => {
                        if let Some(first) = hashes.insert(hash_token(token.expose()), i) {
                            p.push(format!(
                                "{at}: the same token as admin.tokens[{first}] (one token, one role)"
                            ));
                        }
                    }
                },
                _ => p.push(format!("{at}: give exactly one of `sha256` and `token`")),
            }
        }
        p
    }

    /// Makes relative token files relative to `dir`.
    pub fn resolve_paths(&mut self, dir: &std::path::Path) {
        for t in &mut self.tokens {
            if let Some(f) = t.token.as_mut().and_then(|s| s.file.as_mut())
                && f.is_relative()
            {
                *f = dir.join(&*f);
            }
        }
    }

    /// The tokens by hash; fails with the config's problems.
    pub fn tokens(&self) -> Result<Tokens, Vec<String>> {
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut by_hash = HashMap::new();
        for t in &self.tokens {
            let hash = match (&t.sha256, &t.token) {
                (Some(h), _) => parse_hash(h),
                (None, Some(secret)) => secret.load("token").ok().map(|s| hash_token(s.expose())),
                (None, None) => None,
            };
            if let Some(hash) = hash {
                by_hash.insert(
                    hash,
                    Principal {
                        name: t.name.clone(),
                        role: t.role,
                        sources: t.sources.clone(),
                    },
                );
            }
        }
        Ok(Tokens { by_hash })
    }
}

/// The shortest admin token accepted from the environment or a file: 32
/// characters, 128 bits when they are hex digits (`kiungo admin token`
/// makes 71: `kiungo_` and 256 bits as hex). A short token is guessed.
pub const MIN_TOKEN_CHARS: usize = 32;

/// Where a token comes from, for error messages (never its value).
fn secret_source(secret: &SecretRef) -> String {
    match (&secret.env, &secret.file) {
        (Some(var), _) => format!("environment variable `{var}`"),
        (None, Some(file)) => format!("file `{}`", file.display()),
        (None, None) => "nowhere".to_owned(),
    }
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 of a token.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of a token's SHA-256, as `admin.tokens[].sha256` wants.
pub fn token_hash_hex(token: &str) -> String {
    hash_token(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Tokens {
    /// Whether any token is configured.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Every configured token's holder.
    pub fn principals(&self) -> impl Iterator<Item = &Principal> {
        self.by_hash.values()
    }

    /// Who holds `token`, if anyone.
    pub fn principal(&self, token: &str) -> Option<&Principal> {
        self.by_hash.get(&hash_token(token))
    }

    fn authorize(&self, req: &HttpRequest, need: Role) -> Result<Principal, AuthError> {
        if self.is_empty() {
            return Err(AuthError::Unauthorized(
                "the admin API has no tokens configured (admin.tokens in the config)",
            ));
        }
        let header = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Unauthorized(
                "missing `Authorization: Bearer <token>`",
            ))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .ok_or(AuthError::Unauthorized(
                "the Authorization header must be `Bearer <token>`",
            ))?;
        let p = self
            .principal(token)
            .ok_or(AuthError::Unauthorized("unknown token"))?;
        if p.role < need {
            return Err(AuthError::Forbidden { role: p.role, need });
        }
        Ok(p.clone())
    }
}

/// Why a request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No usable token (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The token's role is not enough (403).
    #[error("this needs the {} role; the token has {}", need.as_str(), role.as_str())]
    Forbidden {
        /// The token's role.
        role: Role,
        /// The role needed.
        need: Role,
    },
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let code = match self {
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
        };
        let mut res = HttpResponse::build(self.status_code());
        if matches!(self, Self::Unauthorized(_)) {
            res.insert_header(("WWW-Authenticate", "Bearer realm=\"kiungo\""));
        }
        res.json(serde_json::json!({"error": {"code": code, "message": self.to_string()}}))
    }
}

fn extract(req: &HttpRequest, need: Role) -> Result<Principal, AuthError> {
    match req.app_data::<web::Data<Tokens>>() {
        Some(tokens) => tokens.authorize(req, need),
        None => Err(AuthError::Unauthorized(
            "the admin API has no tokens configured (admin.tokens in the config)",
        )),
    }
}

/// A caller with at least the `app` role.
#[derive(Debug, Clone)]
pub struct AppCaller(pub Principal);

/// A caller with at least the `viewer` role.
#[derive(Debug, Clone)]
pub struct Viewer(pub Principal);

/// A caller with the `operator` role.
#[derive(Debug, Clone)]
pub struct Operator(pub Principal);

macro_rules! extractor {
    ($t:ident, $role:expr) => {
        impl FromRequest for $t {
            type Error = AuthError;
            type Future = Ready<Result<Self, AuthError>>;

            fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
                ready(extract(req, $role).map($t))
            }
        }
    };
}

extractor!(AppCaller, Role::App);
extractor!(Viewer, Role::Viewer);
extractor!(Operator, Role::Operator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_and_problems() {
        let cfg = AdminConfig {
            tokens: vec![
                TokenConfig {
                    name: "alice".into(),
                    role: Role::Operator,
                    sha256: Some(token_hash_hex("secret-a")),
                    token: None,
                    sources: None,
                },
                TokenConfig {
                    name: "alice".into(),
                    role: Role::Viewer,
                    sha256: Some("xyz".into()),
                    token: None,
                    sources: None,
                },
                TokenConfig {
                    name: "carol".into(),
                    role: Role::Viewer,
                    sha256: None,
                    token: None,
                    sources: None,
                },
            ],
        };
        let p = cfg.problems();
        assert!(
            p.iter().any(|p| p.starts_with("admin.tokens[1].name")),
            "{p:?}"
        );
        assert!(
            p.iter().any(|p| p.starts_with("admin.tokens[1].sha256")),
            "{p:?}"
        );
        assert!(p.iter().any(|p| p.starts_with("admin.tokens[2]:")), "{p:?}");
        let twice = AdminConfig {
            tokens: vec![
                cfg.tokens[0].clone(),
                TokenConfig {
                    name: "bob".into(),
                    ..cfg.tokens[0].clone()
                },
            ],
        };
        assert!(
            twice
                .problems()
                .iter()
                .any(|p| p.contains("the same token as admin.tokens[0]")),
            "{:?}",
            twice.problems()
        );
        let ok = AdminConfig {
            tokens: cfg.tokens[..1].to_vec(),
        };
        let tokens = ok.tokens().expect("valid");
        assert_eq!(
            tokens.principal("secret-a").map(|p| p.role),
            Some(Role::Operator)
        );
        assert!(tokens.principal("secret-b").is_none());
        assert!(Role::Operator > Role::Viewer && Role::Viewer > Role::App);
    }

    #[test]
    fn short_tokens_from_files_are_refused_naming_token_and_source() {
        let dir = tempfile::tempdir().expect("dir");
        let short = dir.path().join("short");
        let long = dir.path().join("long");
        std::fs::write(&short, "a\n").expect("write");
        std::fs::write(&long, "0123456789abcdef0123456789abcdef\n").expect("write");
        let from = |name: &str, file: &std::path::Path| TokenConfig {
            name: name.into(),
            role: Role::Operator,
            sha256: None,
            token: Some(SecretRef {
                env: None,
                file: Some(file.to_path_buf()),
            }),
            sources: None,
        };
        let cfg = AdminConfig {
            tokens: vec![from("ops", &short), from("viewer", &long)],
        };
        let p = cfg.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("admin.tokens[0].token: the token of `ops` (file `")
                && p[0].contains("has 1 characters; admin tokens need at least 32"),
            "{p:?}"
        );
        assert!(cfg.tokens().is_err(), "a short token stops the start");
        let generated = crate::config_check::new_token("x", Role::Viewer);
        let token = generated.lines().nth(1).map(str::trim).expect("token");
        assert!(token.chars().count() >= MIN_TOKEN_CHARS, "{token}");
    }
}
