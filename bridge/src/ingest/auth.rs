//! Who may write events over `POST /v1/events/{source}`.
//!
//! With `http.ingest.auth: token` (the default) a request needs
//! `Authorization: Bearer <token>` with a token from `admin.tokens`: an
//! `app` token whose `sources` include the source (all sources when it
//! lists none), or an `operator` token (within its `sources`, if any).
//! `viewer` tokens read, never write. With `auth: none` anyone who can
//! reach the port writes (for local trials; a warning is logged at start).
//!
//! The source is the only scope needed for edits and replacements too:
//! the store keys events by source and id, and an event's edit (same id)
//! or `replaces` resolves within the source it is posted to, so a caller
//! allowed on `kobo` cannot reach a `cht` event, whatever its payload
//! names. A request to a source its token does not cover is refused (403)
//! before its body is read, never parked.

use std::net::IpAddr;

use actix_web::HttpRequest;

use super::http_config::IngestAuth;
use super::refusal::Refusal;
use crate::admin::{Principal, Role, Tokens};

/// The token of the example config (`kiungo.example.yaml`), published in
/// the README so that a first `curl` works. Anyone may use it: a warning
/// is logged when it is configured.
pub const DEMO_TOKEN: &str = "kiungo-demo-app-token-published-in-the-readme-never-deploy";

/// Who is writing.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A configured token.
    Token(Principal),
    /// Anyone (`auth: none`), by client address.
    Anonymous(Option<IpAddr>),
}

impl Caller {
    /// The key of the caller's rate limits: the token's name, or the
    /// client's address.
    pub fn limit_key(&self) -> String {
        match self {
            Self::Token(p) => format!("token:{}", p.name),
            Self::Anonymous(Some(ip)) => format!("ip:{ip}"),
            Self::Anonymous(None) => "ip:unknown".to_owned(),
        }
    }

    /// Whether the caller may write events of `source`.
    pub fn may_write(&self, source: &str) -> Result<(), Refusal> {
        let Self::Token(p) = self else {
            return Ok(());
        };
        if p.role == Role::Viewer {
            return Err(Refusal::Forbidden(format!(
                "token `{}` has the viewer role, which reads only; writing events needs an app or operator token",
                p.name
            )));
        }
        if !p.may_see(source) {
            return Err(Refusal::Forbidden(format!(
                "token `{}` may not write events of source `{source}` (its sources: {})",
                p.name,
                p.sources.as_deref().unwrap_or_default().join(", ")
            )));
        }
        Ok(())
    }
}

/// The caller of `req`, or why it is refused (401).
pub fn caller(auth: IngestAuth, tokens: &Tokens, req: &HttpRequest) -> Result<Caller, Refusal> {
    if auth == IngestAuth::None {
        return Ok(Caller::Anonymous(req.peer_addr().map(|a| a.ip())));
    }
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(Refusal::Unauthorized(
            "missing `Authorization: Bearer <token>`: writing events needs an app token",
        ))?
        .to_str()
        .map_err(|_| Refusal::Unauthorized("the Authorization header is not text"))?;
    let token = header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .map(str::trim)
        .ok_or(Refusal::Unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ))?;
    tokens
        .principal(token)
        .cloned()
        .map(Caller::Token)
        .ok_or(Refusal::Unauthorized("unknown token"))
}

/// What to warn about at start, one line each: open ingest, no token that
/// can write, the published demo token.
pub fn start_warnings(auth: IngestAuth, tokens: &Tokens, listen: &str) -> Vec<String> {
    let mut w = Vec::new();
    match auth {
        IngestAuth::None => w.push(format!(
            "HTTP INGEST IS OPEN (http.ingest.auth: none): anyone who can reach {listen} can write, \
             edit and withdraw events of every source; for local trials only"
        )),
        IngestAuth::Token => {
            if !tokens.principals().any(|p| p.role != Role::Viewer) {
                w.push(
                    "no app or operator token in admin.tokens: POST /v1/events/{source} will refuse \
                     every request (401); `kiungo admin token --name NAME --role app` makes one"
                        .to_owned(),
                );
            }
            if let Some(p) = tokens.principal(DEMO_TOKEN) {
                w.push(format!(
                    "admin.tokens `{}` is the demo token published in the README: anyone can use it; \
                     replace it before real use",
                    p.name
                ));
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::AdminConfig;
    use crate::admin::auth::TokenConfig;
    use actix_web::test::TestRequest;

    fn tokens(list: &[(&str, Role, &str, Option<&[&str]>)]) -> Tokens {
        AdminConfig {
            tokens: list
                .iter()
                .map(|(name, role, secret, sources)| TokenConfig {
                    name: (*name).into(),
                    role: *role,
                    sha256: Some(crate::admin::token_hash_hex(secret)),
                    token: None,
                    sources: sources.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
                })
                .collect(),
        }
        .tokens()
        .expect("tokens")
    }

    #[test]
    fn tokens_roles_and_sources() {
        let t = tokens(&[
            (
                "cht-app",
                Role::App,
                "secret-cht-0123456789",
                Some(&["cht"]),
            ),
            ("ops", Role::Operator, "secret-ops-0123456789", None),
            ("viewer", Role::Viewer, "secret-viewer-0123456789", None),
        ]);
        let with = |auth: Option<&str>| {
            let mut r = TestRequest::post().uri("/v1/events/cht");
            if let Some(a) = auth {
                r = r.insert_header(("Authorization", a));
            }
            caller(IngestAuth::Token, &t, &r.to_http_request())
        };
        for (auth, want) in [
            (None, "missing"),
            (Some("Basic abc"), "must be `Bearer"),
            (Some("Bearer nope"), "unknown token"),
        ] {
            let err = with(auth).expect_err("refused");
            assert!(
                matches!(err, Refusal::Unauthorized(m) if m.contains(want)),
                "{auth:?}"
            );
        }
        let app = with(Some("Bearer secret-cht-0123456789")).expect("app");
        assert!(app.may_write("cht").is_ok());
        let err = app.may_write("kobo").expect_err("other source");
        assert!(err.to_string().contains("its sources: cht"), "{err}");
        assert_eq!(app.limit_key(), "token:cht-app");
        let ops = with(Some("bearer secret-ops-0123456789")).expect("ops");
        assert!(ops.may_write("kobo").is_ok());
        let viewer = with(Some("Bearer secret-viewer-0123456789")).expect("viewer");
        assert!(
            viewer
                .may_write("cht")
                .expect_err("reads only")
                .to_string()
                .contains("viewer role")
        );
        let open = caller(
            IngestAuth::None,
            &Tokens::default(),
            &TestRequest::post().to_http_request(),
        )
        .expect("anyone");
        assert!(open.may_write("cht").is_ok());
        assert!(open.limit_key().starts_with("ip:"));
    }

    #[test]
    fn warnings_at_start() {
        let none = start_warnings(IngestAuth::None, &Tokens::default(), "0.0.0.0:8080");
        assert!(
            none[0].contains("OPEN") && none[0].contains("0.0.0.0:8080"),
            "{none:?}"
        );
        let viewers_only = tokens(&[("v", Role::Viewer, "secret-viewer-0123456789", None)]);
        let w = start_warnings(IngestAuth::Token, &viewers_only, "x");
        assert!(
            w.iter().any(|w| w.contains("refuse every request")),
            "{w:?}"
        );
        let demo = tokens(&[("demo-app", Role::App, DEMO_TOKEN, None)]);
        let w = start_warnings(IngestAuth::Token, &demo, "x");
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("`demo-app` is the demo token"), "{w:?}");
    }

    /// The quickstart: the example config admits the README's token on
    /// every shipped source, and the README sends it as JSON.
    #[test]
    fn the_readme_curl_works_with_the_example_config() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let config =
            crate::config::Config::load(&root.join("kiungo.example.yaml")).expect("example");
        assert_eq!(config.http.ingest.auth, IngestAuth::Token);
        let tokens = config.admin.tokens().expect("tokens");
        let p = tokens
            .principal(DEMO_TOKEN)
            .expect("the demo token is in the example");
        let caller = Caller::Token(p.clone());
        for source in ["cht", "commcare", "kobo", "inhouse"] {
            assert!(caller.may_write(source).is_ok(), "{source}");
        }
        let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
        assert!(readme.contains(&format!("Authorization: Bearer {DEMO_TOKEN}")));
        assert!(readme.contains("Content-Type: application/json"));
    }
}
