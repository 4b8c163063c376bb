//! The operations layer over HTTP against a running `Application`
//! (in-process, port 0, HTTP ingest only): bearer tokens and roles, dead
//! letters without payloads for viewers and with an audit trail for
//! operators, the summary, flows, mappings and destination views, the
//! status of one event, `/metrics`, and the OpenAPI document.
//!
//! The FHIR destination is a wiremock server. The store-touching tests run
//! on both backends (`sqlite::…`, `postgres::…`).
//!
//! The metrics registry is one per process, so these tests expect
//! `cargo nextest` (one process per test); counters are compared as
//! deltas where that is cheap, exact elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::store::Backend;
use kiungo::store::scratch::ScratchDb;
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const OPERATOR: &str = "admin-api-test-operator-token-8c1f4e2a9b7d6c5e3f1a";
const VIEWER: &str = "admin-api-test-viewer-token-2b9e7d5c3a1f8e6d4c2b";
const APP: &str = "admin-api-test-app-token-5d3c1b9a7f5e3d1c9b7a";
/// An app token limited to CommCare's events.
const COMMCARE_APP: &str = "admin-api-test-commcare-app-token-8e6c4a2";

/// The visit fixture's event id.
const VISIT_ID: &str = "0b3a8f6e-1d2c-4e5f-9a7b-6c5d4e3f2a10";
/// The unknown-facility fixture's event id (its mapping fails).
const UNKNOWN_FACILITY_ID: &str = "9c8b7a6f-5e4d-4c3b-a2a1-0f9e8d7c6b5a";

/// Values of the cht fixtures that identify the woman: none of them may
/// appear anywhere but in the operator's payload route.
const PERSONAL: [&str; 5] = [
    "Aminata",
    "Test-Kamara",
    "+23276000222",
    "bf3b7049-219d-44ef-a2a4-1647b75157e1",
    "1998-06-05",
];

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(packs().join(rel)).expect("fixture")
}

fn visit() -> Vec<u8> {
    fixture("cht-anc/fixtures/anc-visit-1-facility.json")
}

fn unknown_facility() -> Vec<u8> {
    fixture("cht-anc/fixtures/anc-visit-unknown-facility.json")
}

fn assert_no_personal_data(what: &str, text: &str) {
    for p in PERSONAL {
        assert!(
            !text.contains(p),
            "{what} quotes `{p}` from the payload: {text}"
        );
    }
}

/// One HTTP answer.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), HTTP {}: {}", self.status, self.text))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }
}

/// A running Kiungo with its database and directory.
struct Kiungo {
    app: Application,
    base: String,
    http: reqwest::Client,
    _db: ScratchDb,
    _dir: tempfile::TempDir,
}

/// What to start.
#[derive(Debug, Clone, Copy)]
struct Setup<'a> {
    tokens: bool,
    /// `http.ingest.auth: none`: ingest without a token.
    open_ingest: bool,
    /// FHIR base URL.
    fhir: Option<&'a str>,
}

const PLAIN: Setup<'static> = Setup {
    tokens: true,
    open_ingest: false,
    fhir: None,
};

fn tokens_yaml() -> String {
    let h = kiungo::admin::token_hash_hex;
    format!(
        "admin:\n  tokens:\n\
         \x20   - {{name: ops-juma, role: operator, sha256: {}}}\n\
         \x20   - {{name: viewer-amina, role: viewer, sha256: {}}}\n\
         \x20   - {{name: cht-app, role: app, sha256: {}}}\n\
         \x20   - {{name: commcare-app, role: app, sha256: {}, sources: [commcare]}}\n",
        h(OPERATOR),
        h(VIEWER),
        h(APP),
        h(COMMCARE_APP)
    )
}

async fn start(backend: Backend, setup: Setup<'_>) -> Kiungo {
    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(backend).await.expect("db");
    let dir = tempfile::tempdir().expect("dir");
    let mut yaml = format!(
        "mappings: '{}'\nstore:\n  url: '{}'\nhttp:\n  listen: 127.0.0.1:0\n  max_body_bytes: 65536\n  admin_cache: 0s\n\
         \x20 ingest: {{auth: {}}}\ningest:\n  max_wait: 2ms\n",
        packs().display(),
        db.config.url,
        if setup.open_ingest { "none" } else { "token" }
    );
    if setup.tokens {
        yaml.push_str(&tokens_yaml());
    }
    if let Some(fhir) = setup.fhir {
        yaml.push_str(&format!(
            "destinations:\n  fhir:\n    server: {{base_url: '{fhir}', timeout: 5s}}\n\
             \x20   retry: {{base_delay: 50ms, max_delay: 200ms, max_age: 10m}}\n\
             \x20   circuit: {{failures: 2, cool_down: 300ms}}\n    lease: 30s\n"
        ));
    }
    let file = dir.path().join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    let config = Config::load(&file).expect("config loads");
    let app = Application::build(config).await.expect("start");
    let base = format!("http://{}", app.http_addr());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    Kiungo {
        app,
        base,
        http,
        _db: db,
        _dir: dir,
    }
}

impl Kiungo {
    async fn send(&self, req: reqwest::RequestBuilder, token: Option<&str>) -> Resp {
        let req = match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let resp = req.send().await.expect("send");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        Resp {
            status,
            headers,
            text,
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(self.http.get(format!("{}{path}", self.base)), token)
            .await
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Option<Value>) -> Resp {
        let mut req = self.http.post(format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req, token).await
    }

    /// `POST /v1/events/{source}` as JSON with the `cht-app` token (all
    /// sources).
    async fn ingest(&self, source: &str, body: Vec<u8>, message_id: Option<&str>) -> Resp {
        let mut req = self
            .http
            .post(format!("{}/v1/events/{source}", self.base))
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(m) = message_id {
            req = req.header("X-Message-Id", m);
        }
        self.send(req, Some(APP)).await
    }

    /// A viewer GET that must answer 200; its JSON.
    async fn view(&self, path: &str) -> Value {
        let r = self.get(path, Some(VIEWER)).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        r.json()
    }

    async fn stop(self) {
        self.app.run_until(async {}).await;
    }
}

/// Polls `f` every 50 ms until it gives `Ok`, or panics with its last
/// error after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() > timeout => panic!("{what}: not after {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A 401 as the API promises it: `WWW-Authenticate: Bearer …` and a JSON
/// error.
fn assert_unauthorized(r: &Resp, what: &str) {
    assert_eq!(r.status, 401, "{what}: {}", r.text);
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Bearer"),
        "{what}: WWW-Authenticate is `{challenge}`"
    );
    let body = r.json();
    assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: {body}"
    );
}

// ---------------------------------------------------------------------
// Auth
// ---------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Need {
    App,
    Viewer,
    Operator,
}

impl Need {
    const fn name(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

/// Every role against every admin route: too low a role is 403 naming
/// both roles, and does nothing; enough is 200. No token, an unknown one
/// or another scheme is 401 with a challenge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_matrix() {
    let k = start(Backend::Sqlite, PLAIN).await;
    assert_eq!(k.ingest("cht", visit(), None).await.status, 202);
    let r = k.ingest("cht", unknown_facility(), None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let dl = r.json()["dead_letter_id"].as_i64().expect("dead letter id");

    // Discard last: it closes the dead letter the others act on.
    let routes: Vec<(&'static str, String, Need)> = vec![
        ("GET", "/v1/whoami".into(), Need::App),
        ("GET", format!("/v1/events/{VISIT_ID}"), Need::App),
        ("GET", "/v1/summary".into(), Need::Viewer),
        ("GET", "/v1/flows".into(), Need::Viewer),
        ("GET", "/v1/destinations".into(), Need::Viewer),
        ("GET", "/v1/mappings".into(), Need::Viewer),
        ("GET", "/v1/preflight".into(), Need::Viewer),
        ("GET", "/v1/outbox".into(), Need::Viewer),
        ("GET", "/v1/audit".into(), Need::Viewer),
        ("GET", "/v1/dead-letters".into(), Need::Viewer),
        ("GET", format!("/v1/dead-letters/{dl}"), Need::Viewer),
        (
            "GET",
            format!("/v1/dead-letters/{dl}/payload"),
            Need::Operator,
        ),
        (
            "POST",
            format!("/v1/dead-letters/{dl}/replay"),
            Need::Operator,
        ),
        ("POST", "/v1/dead-letters/replay".into(), Need::Operator),
        (
            "POST",
            format!("/v1/dead-letters/{dl}/discard"),
            Need::Operator,
        ),
    ];
    let tokens: [(&'static str, Need, &str); 3] = [
        (APP, Need::App, "cht-app"),
        (VIEWER, Need::Viewer, "viewer-amina"),
        (OPERATOR, Need::Operator, "ops-juma"),
    ];
    let call = |m: &'static str, path: String, token: Option<&'static str>| {
        let k = &k;
        async move {
            match m {
                "GET" => k.get(&path, token).await,
                _ => {
                    let body = path
                        .ends_with("/dead-letters/replay")
                        .then(|| json!({"ids": [dl]}));
                    k.post(&path, token, body).await
                }
            }
        }
    };
    for (m, path, need) in &routes {
        let what = format!("{m} {path}");
        assert_unauthorized(
            &call(m, path.clone(), None).await,
            &format!("{what} without a token"),
        );
        assert_unauthorized(
            &call(m, path.clone(), Some("not-a-token-anyone-was-given")).await,
            &format!("{what} with an unknown token"),
        );
        // Another scheme with a valid token is no bearer token.
        let basic = k
            .send(
                match *m {
                    "GET" => k.http.get(format!("{}{path}", k.base)),
                    _ => k.http.post(format!("{}{path}", k.base)),
                }
                .header("Authorization", format!("Token {OPERATOR}")),
                None,
            )
            .await;
        assert_unauthorized(&basic, &format!("{what} with `Authorization: Token …`"));
        for (token, role, _) in &tokens {
            if role >= need {
                continue;
            }
            let r = call(m, path.clone(), Some(*token)).await;
            assert_eq!(r.status, 403, "{what} as {}: {}", role.name(), r.text);
            assert!(
                r.header("www-authenticate").is_none(),
                "{what}: a 403 is no challenge"
            );
            let body = r.json();
            assert_eq!(body["error"]["code"], "forbidden", "{what}: {body}");
            let msg = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                msg.contains(&format!("needs the {} role", need.name()))
                    && msg.contains(&format!("has {}", role.name())),
                "{what} as {}: the message names both roles: {msg}",
                role.name()
            );
        }
    }
    // The refused operator calls changed nothing and were not audited.
    let d = k
        .app
        .store()
        .dead_letter(dl)
        .await
        .expect("get")
        .expect("found");
    assert_eq!((d.state.as_str(), d.replay_count), ("open", 0));
    assert!(
        k.app.store().audit_log(10).await.expect("audit").is_empty(),
        "refused calls leave no audit rows"
    );

    for (m, path, need) in &routes {
        for (token, role, _) in &tokens {
            if role < need {
                continue;
            }
            let r = call(m, path.clone(), Some(*token)).await;
            assert_eq!(r.status, 200, "{m} {path} as {}: {}", role.name(), r.text);
        }
    }
    for (token, role, name) in &tokens {
        let who = k.get("/v1/whoami", Some(token)).await.json();
        assert_eq!(who, json!({"name": name, "role": role.name()}));
    }
    // `bearer` in lower case is the same scheme.
    let r = k
        .send(
            k.http
                .get(format!("{}/v1/whoami", k.base))
                .header("Authorization", format!("bearer {VIEWER}")),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // The operator's calls went through: replayed twice, then discarded.
    let d = k
        .app
        .store()
        .dead_letter(dl)
        .await
        .expect("get")
        .expect("found");
    assert_eq!((d.state.as_str(), d.replay_count), ("discarded", 2));
    k.stop().await;
}

/// Without tokens every `/v1/` admin route is 401, whatever is sent;
/// probes, metrics, the OpenAPI document and the dashboard page answer,
/// and ingest only with `http.ingest.auth: none`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tokens_only_public_routes_answer() {
    let k = start(
        Backend::Sqlite,
        Setup {
            tokens: false,
            open_ingest: true,
            fhir: None,
        },
    )
    .await;
    let r = k.ingest("cht", b"{not json".to_vec(), None).await;
    assert_eq!(r.status, 400, "open ingest needs no token: {}", r.text);
    let dl = r.json()["dead_letter_id"].as_i64().expect("id");
    assert_eq!(k.ingest("cht", visit(), None).await.status, 202);
    let gets = [
        "/v1/whoami".to_owned(),
        "/v1/summary".into(),
        "/v1/flows".into(),
        "/v1/destinations".into(),
        "/v1/mappings".into(),
        "/v1/preflight".into(),
        "/v1/outbox".into(),
        "/v1/audit".into(),
        format!("/v1/events/{VISIT_ID}"),
        "/v1/dead-letters".into(),
        format!("/v1/dead-letters/{dl}"),
        format!("/v1/dead-letters/{dl}/payload"),
    ];
    for path in &gets {
        for token in [None, Some(OPERATOR), Some("anything")] {
            assert_unauthorized(
                &k.get(path, token).await,
                &format!("GET {path} ({token:?})"),
            );
        }
    }
    for path in [
        format!("/v1/dead-letters/{dl}/replay"),
        format!("/v1/dead-letters/{dl}/discard"),
        "/v1/dead-letters/replay".into(),
    ] {
        for token in [None, Some(OPERATOR)] {
            let r = k.post(&path, token, Some(json!({"ids": [dl]}))).await;
            assert_unauthorized(&r, &format!("POST {path} ({token:?})"));
        }
    }
    let d = k
        .app
        .store()
        .dead_letter(dl)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(d.state, "open", "nothing was done");

    for (path, content_type) in [
        ("/healthz", "application/json"),
        ("/readyz", "application/json"),
        ("/metrics", "application/openmetrics-text"),
        ("/v1/openapi.json", "application/json"),
        ("/dashboard", "text/html"),
    ] {
        let r = k.get(path, None).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text);
        let ct = r.header("content-type").unwrap_or_default();
        assert!(
            ct.starts_with(content_type),
            "GET {path}: content type {ct}"
        );
    }
    let root = k.get("/", None).await;
    assert_eq!(root.status, 302);
    assert_eq!(root.header("location").as_deref(), Some("/dashboard"));
    k.stop().await;
}

const ENV_TOKEN_VAR: &str = "KIUNGO_ADMIN_API_TEST_ENV_TOKEN";

/// `token: {env: VAR}` and `token: {file: …}` (relative to the config):
/// the variable is set for a child process running [`env_token_child`],
/// since this crate forbids the `unsafe` that `set_var` needs.
#[test]
fn token_from_env_and_file() {
    let token = format!("env-token-{}", uuid::Uuid::new_v4().simple());
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([
            "env_token_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ENV_TOKEN_VAR, &token)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// Run by [`token_from_env_and_file`] with the variable set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by token_from_env_and_file with the environment variable set"]
async fn env_token_child() {
    let token = std::env::var(ENV_TOKEN_VAR)
        .expect("run by token_from_env_and_file, which sets the variable");
    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let dir = tempfile::tempdir().expect("dir");
    let file_token = format!("file-token-{}", uuid::Uuid::new_v4().simple());
    std::fs::create_dir(dir.path().join("secrets")).expect("dir");
    std::fs::write(dir.path().join("secrets/viewer"), format!("{file_token}\n")).expect("write");
    let yaml = format!(
        "mappings: '{}'\nstore:\n  url: '{}'\nhttp:\n  listen: 127.0.0.1:0\n  admin_cache: 0s\n\
         admin:\n  tokens:\n\
         \x20   - {{name: ops-from-env, role: operator, token: {{env: {ENV_TOKEN_VAR}}}}}\n\
         \x20   - {{name: viewer-from-file, role: viewer, token: {{file: secrets/viewer}}}}\n",
        packs().display(),
        db.config.url
    );
    let file = dir.path().join("kiungo.yaml");
    std::fs::write(&file, &yaml).expect("config");
    assert!(!yaml.contains(&token) && !yaml.contains(&file_token));
    let app = Application::build(Config::load(&file).expect("config loads"))
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let whoami = |t: String| {
        let client = client.clone();
        let url = format!("http://{}/v1/whoami", app.http_addr());
        async move {
            let r = client.get(url).bearer_auth(t).send().await.expect("send");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    assert_eq!(
        whoami(token.clone()).await,
        (200, json!({"name": "ops-from-env", "role": "operator"}))
    );
    assert_eq!(
        whoami(file_token.clone()).await,
        (200, json!({"name": "viewer-from-file", "role": "viewer"}))
    );
    assert_eq!(whoami(format!("{token}x")).await.0, 401);
    assert_eq!(whoami(ENV_TOKEN_VAR.to_owned()).await.0, 401);
    app.run_until(async {}).await;
}

// ---------------------------------------------------------------------
// Dead letters, payloads, audit
// ---------------------------------------------------------------------

/// Viewers see dead letters without payloads or headers; the operator's
/// payload route gives the raw body and is audited; replay and discard
/// are audited with the token's name.
async fn payloads_only_for_operators_and_audited(backend: Backend) {
    let k = start(backend, PLAIN).await;
    let raw = unknown_facility();
    let r = k
        .ingest("cht", raw.clone(), Some("msg-unknown-facility"))
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    let id = r.json()["dead_letter_id"].as_i64().expect("id");
    // Not UTF-8: the payload route gives it base64.
    let binary = vec![0xff, 0xfe, b'{', 0x00, 0x9f];
    let r = k.ingest("cht", binary.clone(), Some("msg-binary")).await;
    assert_eq!(r.status, 400, "{}", r.text);
    let id2 = r.json()["dead_letter_id"].as_i64().expect("id");

    for path in [
        "/v1/dead-letters".to_owned(),
        "/v1/dead-letters?state=all".into(),
        "/v1/dead-letters?reason=mapping_error&source=cht&stage=ingest".into(),
    ] {
        let r = k.get(&path, Some(VIEWER)).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        let list = r.json();
        let items = list["dead_letters"].as_array().expect("array");
        assert!(items.iter().any(|d| d["id"] == id), "{path}: {list}");
        for d in items {
            assert!(
                d.get("payload").is_none() && d.get("headers").is_none(),
                "{path}: {d}"
            );
        }
        assert_no_personal_data(&path, &r.text);
    }
    for dl in [id, id2] {
        let r = k.get(&format!("/v1/dead-letters/{dl}"), Some(VIEWER)).await;
        assert_eq!(r.status, 200, "{}", r.text);
        let one = r.json();
        assert_eq!(one["id"], dl);
        assert!(
            one.get("payload").is_none() && one.get("headers").is_none(),
            "{one}"
        );
        assert_no_personal_data("GET /v1/dead-letters/{id}", &r.text);
    }
    let one = k.view(&format!("/v1/dead-letters/{id}")).await;
    assert_eq!(
        (
            one["reason_code"].as_str(),
            one["message_id"].as_str(),
            one["state"].as_str()
        ),
        (
            Some("mapping_error"),
            Some("msg-unknown-facility"),
            Some("open")
        )
    );

    // The viewer is refused the payload, and the refusal is no read.
    let r = k
        .get(&format!("/v1/dead-letters/{id}/payload"), Some(VIEWER))
        .await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(k.app.store().audit_log(10).await.expect("audit").is_empty());
    let r = k
        .get("/v1/dead-letters/999999/payload", Some(OPERATOR))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    let r = k
        .get(&format!("/v1/dead-letters/{id}/payload"), Some(OPERATOR))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let p = r.json();
    assert_eq!(p["id"], id);
    assert_eq!(p["encoding"], "utf8");
    assert_eq!(
        p["payload"].as_str().map(str::as_bytes),
        Some(raw.as_slice()),
        "the raw body, byte for byte"
    );
    let audit = k.app.store().audit_log(10).await.expect("audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    let (at, actor, action, target, _) = &audit[0];
    assert_eq!(
        (actor.as_str(), action.as_str(), target.as_str()),
        (
            "ops-juma",
            "dead_letter.read_payload",
            format!("dead_letter:{id}").as_str()
        )
    );
    assert!((kiungo::store::now_ms() - at).abs() < 60_000, "at {at}");

    let p = k
        .get(&format!("/v1/dead-letters/{id2}/payload"), Some(OPERATOR))
        .await
        .json();
    assert_eq!(p["encoding"], "base64");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(p["payload"].as_str().expect("base64 text"))
        .expect("base64");
    assert_eq!(decoded, binary);

    // Replay (parks again: the facility is still unknown) and discard.
    let r = k
        .post(
            &format!("/v1/dead-letters/{id}/replay"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["results"][0]["replay"]["result"], "parked_again");
    let r = k
        .post(
            &format!("/v1/dead-letters/{id2}/discard"),
            Some(OPERATOR),
            None,
        )
        .await;
    assert_eq!(r.json(), json!({"discarded": 1}));
    // A discarded letter's payload is gone.
    let p = k
        .get(&format!("/v1/dead-letters/{id2}/payload"), Some(OPERATOR))
        .await
        .json();
    assert_eq!(
        (p["encoding"].as_str(), &p["payload"]),
        (Some("none"), &Value::Null)
    );

    let audit = k.app.store().audit_log(10).await.expect("audit");
    let rows: Vec<(&str, &str, &str)> = audit
        .iter()
        .map(|(_, actor, action, target, _)| (actor.as_str(), action.as_str(), target.as_str()))
        .collect();
    let (t1, t2) = (format!("dead_letter:{id}"), format!("dead_letter:{id2}"));
    assert_eq!(
        rows,
        vec![
            ("ops-juma", "dead_letter.read_payload", t2.as_str()),
            ("ops-juma", "dead_letter.discard", t2.as_str()),
            ("ops-juma", "dead_letter.replay", t1.as_str()),
            ("ops-juma", "dead_letter.read_payload", t2.as_str()),
            ("ops-juma", "dead_letter.read_payload", t1.as_str()),
        ],
        "newest first"
    );
    // The same over HTTP, for viewers.
    let over_http = k.view("/v1/audit?limit=3").await;
    let list = over_http["audit"].as_array().expect("array");
    assert_eq!(list.len(), 3, "{over_http}");
    assert_eq!(
        (&list[1]["actor"], &list[1]["action"], &list[1]["target"]),
        (
            &json!("ops-juma"),
            &json!("dead_letter.discard"),
            &json!(t2)
        )
    );
    assert!(list[0]["at_ms"].as_i64().is_some());
    let open = k.view("/v1/dead-letters").await;
    let open: Vec<&Value> = open["dead_letters"]
        .as_array()
        .expect("array")
        .iter()
        .collect();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(
        (&open[0]["id"], &open[0]["replay_count"]),
        (&json!(id), &json!(1))
    );
    k.stop().await;
}

// ---------------------------------------------------------------------
// Summary, flows, mappings
// ---------------------------------------------------------------------

fn ingest_counts(summary: &Value) -> BTreeMap<String, i64> {
    summary["ingest"]
        .as_object()
        .expect("ingest counters")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().expect("count")))
        .collect()
}

async fn summary_flows_and_mappings(backend: Backend) {
    let k = start(backend, PLAIN).await;
    let before = k.view("/v1/summary").await;
    let b = ingest_counts(&before);

    assert_eq!(k.ingest("cht", visit(), None).await.status, 202);
    assert_eq!(
        k.ingest("cht", visit(), None).await.json()["status"],
        "duplicate"
    );
    let r = k
        .ingest(
            "commcare",
            fixture("commcare-immunization/fixtures/newborn-fixed-bcg-opv0.json"),
            None,
        )
        .await;
    assert_eq!(
        (r.status, r.json()["status"].as_str()),
        (202, Some("stored")),
        "{}",
        r.text
    );
    assert_eq!(k.ingest("cht", unknown_facility(), None).await.status, 422);
    assert_eq!(k.ingest("cht", b"[1,".to_vec(), None).await.status, 400);

    let after = k.view("/v1/summary").await;
    let a = ingest_counts(&after);
    let delta = |key: &str| a.get(key).copied().unwrap_or(0) - b.get(key).copied().unwrap_or(0);
    assert_eq!(
        ["received", "stored", "duplicate", "replaced", "parked"].map(|key| (key, delta(key))),
        [
            ("received", 5),
            ("stored", 2),
            ("duplicate", 1),
            ("replaced", 0),
            ("parked", 2)
        ],
        "{before}\n{after}"
    );
    assert_eq!(after["store"]["events_live"], 2, "{after}");
    assert_eq!(after["store"]["dead_letters_open"], 2, "{after}");
    let reasons: BTreeSet<(String, String, i64)> = after["dead_letters_by_reason"]
        .as_array()
        .expect("reasons")
        .iter()
        .map(|r| {
            (
                r["stage"].as_str().unwrap_or_default().to_owned(),
                r["reason_code"].as_str().unwrap_or_default().to_owned(),
                r["count"].as_i64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        BTreeSet::from([
            ("ingest".into(), "mapping_error".into(), 1),
            ("ingest".into(), "not_json".into(), 1),
        ])
    );
    assert!(after["uptime_s"].as_f64().is_some() && after["now_ms"].as_i64().is_some());
    for d in ["fhir", "dhis2"] {
        assert!(after["delivery"][d]["delivered"].is_u64(), "{after}");
    }

    let flows = k.view("/v1/flows").await;
    let flows: BTreeMap<(String, Option<String>), &Value> = flows["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .map(|f| {
            (
                (
                    f["source"].as_str().unwrap_or_default().to_owned(),
                    f["mapping"].as_str().map(str::to_owned),
                ),
                f,
            )
        })
        .collect();
    let cht = flows
        .get(&("cht".into(), Some("cht-anc-visit".into())))
        .unwrap_or_else(|| panic!("cht flow in {flows:?}"));
    assert_eq!(
        (&cht["events"], &cht["dead_letters_open"]),
        (&json!(1), &json!(1))
    );
    assert!(cht["last_received_ms"].as_i64().is_some_and(|t| t > 0));
    let commcare = flows
        .get(&("commcare".into(), Some("commcare-immunization".into())))
        .unwrap_or_else(|| panic!("commcare flow in {flows:?}"));
    assert_eq!(
        (&commcare["events"], &commcare["dead_letters_open"]),
        (&json!(1), &json!(0))
    );
    // The non-JSON message has no mapping: a flow of its own, no events.
    let unmapped = flows
        .get(&("cht".into(), None))
        .unwrap_or_else(|| panic!("unmapped cht flow in {flows:?}"));
    assert_eq!(
        (&unmapped["events"], &unmapped["dead_letters_open"]),
        (&json!(0), &json!(1))
    );
    assert_eq!(flows.len(), 3, "{flows:?}");

    let mappings = k.view("/v1/mappings").await;
    let got: BTreeMap<String, (i64, String, String)> = mappings["mappings"]
        .as_array()
        .expect("mappings")
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap_or_default().to_owned(),
                (
                    m["version"].as_i64().unwrap_or(-1),
                    m["source"].as_str().unwrap_or_default().to_owned(),
                    m["file"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect();
    let want: BTreeMap<String, (i64, String, String)> = [
        ("cht-anc-visit", "cht", "anc-visit.yaml"),
        ("commcare-immunization", "commcare", "immunization.yaml"),
        (
            "inhouse-nutrition-growth",
            "inhouse",
            "growth-monitoring.yaml",
        ),
        ("kobo-malaria-rdt", "kobo", "malaria-rdt.yaml"),
        ("odk-central-household-visit", "odk", "household-visit.yaml"),
        (
            "opensrp-birth-registration",
            "opensrp",
            "birth-registration.yaml",
        ),
        (
            "opensrp-growth-monitoring",
            "opensrp",
            "growth-monitoring.yaml",
        ),
        ("opensrp-vaccination", "opensrp", "vaccination.yaml"),
    ]
    .into_iter()
    .map(|(id, source, file)| (id.to_owned(), (1, source.to_owned(), file.to_owned())))
    .collect();
    assert_eq!(got, want);
    k.stop().await;
}

// ---------------------------------------------------------------------
// Event status
// ---------------------------------------------------------------------

async fn event_status(backend: Backend) {
    let k = start(backend, PLAIN).await;
    let r = k.get(&format!("/v1/events/{VISIT_ID}"), Some(APP)).await;
    assert_eq!(r.status, 404, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "not_found");

    assert_eq!(
        k.ingest("cht", visit(), Some("msg-visit")).await.status,
        202
    );
    let r = k.get(&format!("/v1/events/{VISIT_ID}"), Some(APP)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_no_personal_data("event status", &r.text);
    let body = r.json();
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{body}");
    let e = &events[0];
    assert_eq!(
        (
            e["source"].as_str(),
            e["event_id"].as_str(),
            e["state"].as_str(),
            e["mapping"].as_str()
        ),
        (
            Some("cht"),
            Some(VISIT_ID),
            Some("live"),
            Some("cht-anc-visit")
        )
    );
    assert!(e["received_at"].as_i64().is_some(), "{e}");
    let dests: BTreeMap<&str, &Value> = e["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .map(|d| (d["destination"].as_str().unwrap_or_default(), d))
        .collect();
    // No destination configured: both wait in the store.
    assert_eq!(
        dests.keys().copied().collect::<Vec<_>>(),
        vec!["dhis2", "fhir"],
        "{e}"
    );
    assert_eq!(
        (&dests["fhir"]["status"], &dests["fhir"]["count"]),
        (&json!("pending"), &json!(0))
    );
    assert_eq!(dests["dhis2"]["status"], "pending");
    assert!(
        dests["dhis2"]["count"].as_i64().is_some_and(|n| n >= 1),
        "{e}"
    );
    assert_eq!(e["dead_letters"], json!([]));

    // An app token limited to another source does not see the event.
    let r = k
        .get(&format!("/v1/events/{VISIT_ID}"), Some(COMMCARE_APP))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // Narrowed by source.
    assert_eq!(
        k.get(&format!("/v1/events/{VISIT_ID}?source=cht"), Some(APP))
            .await
            .status,
        200
    );
    let r = k
        .get(&format!("/v1/events/{VISIT_ID}?source=commcare"), Some(APP))
        .await;
    assert_eq!(r.status, 404, "{}", r.text);

    // A message parked before its event was stored, found by its message id.
    let r = k
        .ingest("cht", unknown_facility(), Some("msg-unknown-facility"))
        .await;
    let dl = r.json()["dead_letter_id"].as_i64().expect("id");
    let r = k.get("/v1/events/msg-unknown-facility", Some(APP)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_no_personal_data("parked event status", &r.text);
    let body = r.json();
    let e = &body["events"][0];
    assert_eq!(
        (e["source"].as_str(), e["state"].as_str()),
        (Some("cht"), Some("parked")),
        "{body}"
    );
    assert_eq!(e["destinations"], json!([]));
    let letters = e["dead_letters"].as_array().expect("dead letters");
    assert_eq!(letters.len(), 1, "{body}");
    assert_eq!(
        (
            &letters[0]["id"],
            &letters[0]["stage"],
            &letters[0]["reason_code"],
            &letters[0]["state"]
        ),
        (
            &json!(dl),
            &json!("ingest"),
            &json!("mapping_error"),
            &json!("open")
        )
    );
    assert!(letters[0].get("payload").is_none());
    k.stop().await;
}

/// An app knows its submission by the event id it put in it (`_id` for
/// CHT), not by a transport id. A mapping error is raised after the
/// mapping has read the event id, so the dead letter can name it; asked
/// by that id, the status must show the parked event, not "no event has
/// reached Kiungo".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_event_is_found_by_its_event_id() {
    let k = start(Backend::Sqlite, PLAIN).await;
    let r = k.ingest("cht", unknown_facility(), None).await;
    assert_eq!(r.status, 422, "{}", r.text);
    let dl = r.json()["dead_letter_id"].as_i64().expect("id");
    let d = k
        .app
        .store()
        .dead_letter(dl)
        .await
        .expect("get")
        .expect("found");
    let r = k
        .get(&format!("/v1/events/{UNKNOWN_FACILITY_ID}"), Some(APP))
        .await;
    assert_eq!(
        r.status, 200,
        "GET /v1/events/{UNKNOWN_FACILITY_ID} for an event parked with a mapping error \
         (dead letter {dl}: event_id {:?}, reason {:?}): {}",
        d.event_id, d.reason, r.text
    );
    let body = r.json();
    assert_eq!(body["events"][0]["state"], "parked", "{body}");
    assert_eq!(body["events"][0]["dead_letters"][0]["id"], dl, "{body}");
    k.stop().await;
}

/// A mapping error raised before the event id is known (here: a `match`
/// rule that fails on an event whose `reported_date` is text) names no
/// event. The dead letter must not record the error message's placeholder
/// `(no id)` as the event id: every such message would share that
/// "event", `GET /v1/events/(no id)` would list them all, and their status
/// messages to apps would carry it as `event_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapping_error_before_the_event_id_names_no_event() {
    // The cht pack with a `match` that does arithmetic on the event.
    let packs_dir = tempfile::tempdir().expect("dir");
    let pack = packs_dir.path().join("cht-anc");
    std::fs::create_dir(&pack).expect("dir");
    std::fs::create_dir(pack.join("fixtures")).expect("dir");
    let src = packs().join("cht-anc");
    for f in std::fs::read_dir(src.join("fixtures")).expect("fixtures") {
        let f = f.expect("entry").file_name();
        std::fs::copy(
            src.join("fixtures").join(&f),
            pack.join("fixtures").join(&f),
        )
        .expect("copy");
    }
    for f in ["anc-visit.yaml", "facilities.csv"] {
        std::fs::copy(src.join(f), pack.join(f)).expect("copy");
    }
    let yaml = std::fs::read_to_string(pack.join("anc-visit.yaml")).expect("read");
    let strict = yaml.replace(
        "match: event.type == 'data_record' and event.form == 'pregnancy_home_visit'",
        "match: event.type == 'data_record' and event.form == 'pregnancy_home_visit' \
         and event.reported_date + 0 > 0",
    );
    assert_ne!(strict, yaml, "the match line changed");
    std::fs::write(pack.join("anc-visit.yaml"), strict).expect("write");

    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let mut config = Config::default();
    config.mappings = packs_dir.path().to_owned();
    config.store = db.config.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.http.ingest.auth = kiungo::ingest::IngestAuth::None;
    let app = Application::build(config).await.expect("start");

    let mut v: Value = serde_json::from_slice(&visit()).expect("json");
    v["reported_date"] = json!("yesterday");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/events/cht", app.http_addr()))
        .header("Content-Type", "application/json")
        .body(serde_json::to_vec(&v).expect("bytes"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "mapping_error", "{body}");
    let dl = body["dead_letter_id"].as_i64().expect("id");
    let d = app
        .store()
        .dead_letter(dl)
        .await
        .expect("get")
        .expect("found");
    assert_eq!(
        d.event_id, None,
        "no event id is known (reason: {}); the dead letter names none",
        d.reason
    );
    assert!(
        app.store()
            .event_status("(no id)", None)
            .await
            .expect("status")
            .is_empty(),
        "`(no id)` is no event"
    );
    app.run_until(async {}).await;
}

// ---------------------------------------------------------------------
// Destinations (FHIR on wiremock)
// ---------------------------------------------------------------------

/// A transaction-response bundle the FHIR client accepts.
const FHIR_OK: &str = r#"{"resourceType":"Bundle","type":"transaction-response","entry":[
  {"response":{"status":"201 Created","location":"Patient/p1/_history/1"}},
  {"response":{"status":"201 Created","location":"Encounter/e1/_history/1"}},
  {"response":{"status":"201 Created","location":"Observation/o1/_history/1"}},
  {"response":{"status":"201 Created","location":"Observation/o2/_history/1"}}]}"#;

/// A 503 whose diagnostics quote the match URL with the woman's id, as
/// HAPI does; what Kiungo records must not.
fn fhir_503() -> ResponseTemplate {
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": "transient",
            "diagnostics": "HAPI-1234: database busy while matching \
                \"Patient?identifier=https://cht.moh.gov.sl/patient|bf3b7049-219d-44ef-a2a4-1647b75157e1\" \
                (Patient?name=Aminata+Test-Kamara&birthdate=1998-06-05)"
        }]
    });
    ResponseTemplate::new(503)
        .set_body_raw(outcome.to_string().into_bytes(), "application/fhir+json")
}

fn fhir_ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(FHIR_OK.as_bytes().to_vec(), "application/fhir+json")
}

fn destination<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["destinations"]
        .as_array()
        .expect("destinations")
        .iter()
        .find(|d| d["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

async fn fhir_status(k: &Kiungo) -> Value {
    let body = k
        .get(&format!("/v1/events/{VISIT_ID}"), Some(APP))
        .await
        .json();
    body["events"][0]["destinations"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["destination"] == "fhir"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The FHIR server answers 503 until the test lets it answer 200:
/// `/v1/destinations` shows the error (without the payload values the
/// server quoted), the circuit opening, then the success; the event's
/// status goes from retrying to delivered; the summary and `/metrics`
/// count it.
async fn destination_health_and_delivery(backend: Backend) {
    let server = MockServer::start().await;
    let failing = Mock::given(method("POST"))
        .respond_with(fhir_503())
        .mount_as_scoped(&server)
        .await;
    let fhir_url = format!("{}/fhir", server.uri());
    let k = start(
        backend,
        Setup {
            tokens: true,
            open_ingest: false,
            fhir: Some(&fhir_url),
        },
    )
    .await;
    let before = k.view("/v1/summary").await;
    let initial = k.view("/v1/destinations").await;
    let fhir = destination(&initial, "fhir");
    assert_eq!(fhir["configured"], true, "{initial}");
    assert_eq!(
        destination(&initial, "dhis2")["configured"],
        false,
        "{initial}"
    );

    assert_eq!(k.ingest("cht", visit(), None).await.status, 202);
    let failed = eventually(
        "the FHIR error recorded",
        Duration::from_secs(15),
        || async {
            let list = k.view("/v1/destinations").await;
            let fhir = destination(&list, "fhir").clone();
            if fhir["last_error"].is_object() && fhir["circuit"] == "open" {
                Ok(fhir)
            } else {
                Err(list.to_string())
            }
        },
    )
    .await;
    let message = failed["last_error"]["message"].as_str().expect("message");
    // The server's own words are kept (so the check below has something
    // to look at); what it quoted from the bundle is not.
    assert!(
        message.contains("503") && message.contains("HAPI-1234"),
        "{message}"
    );
    assert_no_personal_data("destinations.fhir.last_error", message);
    assert!(failed["last_error"]["at_ms"].as_i64().is_some(), "{failed}");
    assert_eq!(failed["last_success_ms"], Value::Null, "{failed}");
    assert_eq!(
        failed["pending"].as_i64().unwrap_or(0) + failed["retrying"].as_i64().unwrap_or(0),
        1,
        "{failed}"
    );
    assert_eq!(failed["parked"], 0);
    let status = fhir_status(&k).await;
    assert_eq!(status["status"], "retrying", "{status}");
    assert!(status["count"].as_i64().is_some_and(|n| n >= 2), "{status}");
    assert_no_personal_data("event status last_error", &status.to_string());
    let metrics = k.get("/metrics", None).await.text;
    assert_eq!(
        metric(&metrics, "kiungo_circuit_state", &[("destination", "fhir")]),
        Some(2.0),
        "open is 2"
    );
    assert!(
        metric(
            &metrics,
            "kiungo_deliveries_total",
            &[("destination", "fhir"), ("result", "retried")]
        )
        .is_some_and(|n| n >= 2.0),
        "{metrics}"
    );

    drop(failing);
    Mock::given(method("POST"))
        .respond_with(fhir_ok())
        .mount(&server)
        .await;
    let delivered = eventually("delivered", Duration::from_secs(15), || async {
        let s = fhir_status(&k).await;
        if s["status"] == "delivered" {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert!(delivered["delivered_at"].as_i64().is_some(), "{delivered}");
    let list = k.view("/v1/destinations").await;
    let fhir = destination(&list, "fhir");
    assert!(fhir["last_success_ms"].as_i64().is_some(), "{list}");
    assert_eq!(fhir["circuit"], "closed", "{list}");
    assert_eq!(
        (&fhir["pending"], &fhir["retrying"], &fhir["parked"]),
        (&json!(0), &json!(0), &json!(0)),
        "{list}"
    );
    // The last error stays on record, still without payload values.
    assert_no_personal_data("destinations after recovery", &list.to_string());

    let after = k.view("/v1/summary").await;
    let d = |s: &Value, r: &str| s["delivery"]["fhir"][r].as_i64().unwrap_or(0);
    assert_eq!(
        d(&after, "delivered") - d(&before, "delivered"),
        1,
        "{after}"
    );
    assert!(d(&after, "retried") - d(&before, "retried") >= 2, "{after}");
    let metrics = k.get("/metrics", None).await.text;
    assert_eq!(
        metric(&metrics, "kiungo_circuit_state", &[("destination", "fhir")]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "kiungo_deliveries_total",
            &[
                ("destination", "fhir"),
                ("source", "cht"),
                ("mapping", "cht-anc-visit"),
                ("result", "delivered")
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    k.stop().await;
}

// ---------------------------------------------------------------------
// /metrics
// ---------------------------------------------------------------------

/// One sample line of the exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn parse_metrics(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (head, value) = line.rsplit_once(' ').expect("sample line");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in `{line}`")),
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut s = inner;
                while let Some((key, after)) = s.split_once("=\"") {
                    let mut val = String::new();
                    let mut chars = after.char_indices();
                    let mut end = after.len();
                    while let Some((i, c)) = chars.next() {
                        match c {
                            '\\' => {
                                if let Some((_, n)) = chars.next() {
                                    val.push(n);
                                }
                            }
                            '"' => {
                                end = i + 1;
                                break;
                            }
                            c => val.push(c),
                        }
                    }
                    labels.insert(key.trim_start_matches(',').to_owned(), val);
                    s = &after[end..];
                }
                (name.to_owned(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum of the samples named `name` whose labels include `labels`;
/// `None` when there is none.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = parse_metrics(text)
        .into_iter()
        .filter(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_exposition() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(fhir_ok())
        .mount(&server)
        .await;
    let fhir_url = format!("{}/fhir", server.uri());
    let k = start(
        Backend::Sqlite,
        Setup {
            tokens: true,
            open_ingest: false,
            fhir: Some(&fhir_url),
        },
    )
    .await;
    assert_eq!(k.ingest("cht", visit(), None).await.status, 202);
    assert_eq!(k.ingest("cht", b"nope".to_vec(), None).await.status, 400);
    // Sources nobody declared: refused before the body (404), never a
    // label value.
    for weird in ["weird-source-7f3e", "evil%22%7Dsource%0Ainjected"] {
        let r = k.ingest(weird, br#"{"a": 1}"#.to_vec(), None).await;
        assert_eq!(r.status, 404, "{weird}: {}", r.text);
    }
    eventually("delivered", Duration::from_secs(15), || async {
        let s = fhir_status(&k).await;
        if s["status"] == "delivered" {
            Ok(())
        } else {
            Err(s.to_string())
        }
    })
    .await;

    let r = k.get("/metrics", None).await;
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = &r.text;
    assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with # EOF");
    for family in [
        "kiungo_events",
        "kiungo_deliveries",
        "kiungo_delivery_latency_seconds",
        "kiungo_backlog",
        "kiungo_circuit_state",
        "kiungo_dead_letters_open",
        "kiungo_messages_consumed",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "no TYPE line for {family}:\n{text}"
        );
    }
    let m = |name: &str, labels: &[(&str, &str)]| metric(text, name, labels);
    assert_eq!(
        m(
            "kiungo_events_total",
            &[
                ("source", "cht"),
                ("mapping", "cht-anc-visit"),
                ("outcome", "stored")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(
            "kiungo_events_total",
            &[("source", "cht"), ("outcome", "parked")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "kiungo_deliveries_total",
            &[
                ("destination", "fhir"),
                ("source", "cht"),
                ("result", "delivered")
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(
            "kiungo_delivery_latency_seconds_bucket",
            &[("destination", "fhir"), ("le", "+Inf")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m(
            "kiungo_delivery_latency_seconds_count",
            &[("destination", "fhir")]
        ),
        Some(1.0)
    );
    for state in ["pending", "retrying", "delivering"] {
        assert_eq!(
            m(
                "kiungo_backlog",
                &[("destination", "fhir"), ("state", state)]
            ),
            Some(0.0),
            "fhir {state}"
        );
    }
    // Nothing pushes to DHIS2 here: its contributions wait.
    assert!(
        m(
            "kiungo_backlog",
            &[("destination", "dhis2"), ("state", "pending")]
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert_eq!(
        m("kiungo_circuit_state", &[("destination", "fhir")]),
        Some(0.0)
    );
    assert_eq!(m("kiungo_dead_letters_open", &[]), Some(1.0));

    // The undeclared sources.
    assert!(
        !text.contains("weird") && !text.contains("evil") && !text.contains("injected"),
        "an undeclared source name reached a label:\n{text}"
    );
    // Refused before they are read, they are not counted at all.
    assert_eq!(
        m(
            "kiungo_messages_consumed_total",
            &[("source", "other"), ("transport", "http")]
        ),
        None,
        "{text}"
    );
    // Every label value is a declared source, `other`, or empty.
    let declared = ["cht", "commcare", "kobo", "inhouse", "other", "", "dhis2"];
    for s in parse_metrics(text) {
        if let Some(source) = s.labels.get("source") {
            assert!(declared.contains(&source.as_str()), "{s:?}");
        }
    }
    k.stop().await;
}

/// The mapping label is the other label a client can reach: HTTP ingest
/// takes `X-Kiungo-Mapping` (and AMQP a routing header) from the request.
/// A mapping id that is not loaded is client text, and must not become a
/// label value either (the metrics promise declared names only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeclared_mapping_names_are_not_label_values() {
    let k = start(Backend::Sqlite, PLAIN).await;
    let r = k
        .send(
            k.http
                .post(format!("{}/v1/events/cht", k.base))
                .header("X-Kiungo-Mapping", "client-chosen-mapping-5e2a")
                .header("Content-Type", "application/json")
                .body(visit()),
            Some(APP),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.text);
    assert_eq!(r.json()["error"]["code"], "unknown_mapping");
    let text = k.get("/metrics", None).await.text;
    let leaked: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("client-chosen-mapping"))
        .collect();
    assert!(
        leaked.is_empty(),
        "a client-chosen mapping name became a label value: {leaked:#?}"
    );
    assert_eq!(
        metric(
            &text,
            "kiungo_events_total",
            &[("source", "cht"), ("outcome", "parked")]
        ),
        Some(1.0),
        "the parked event is still counted: {text}"
    );
    k.stop().await;
}

// ---------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------

/// Sources that register routes.
const ROUTE_SOURCES: [(&str, &str); 6] = [
    ("admin/mod.rs", include_str!("../src/admin/mod.rs")),
    (
        "admin/dead_letters.rs",
        include_str!("../src/admin/dead_letters.rs"),
    ),
    ("admin/views.rs", include_str!("../src/admin/views.rs")),
    ("admin/events.rs", include_str!("../src/admin/events.rs")),
    ("admin/auth.rs", include_str!("../src/admin/auth.rs")),
    ("ingest/http.rs", include_str!("../src/ingest/http.rs")),
];

/// `(method, path)` of every `.route("/v1/…", web::<method>()…)` in the
/// sources.
fn registered_routes() -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (_, src) in ROUTE_SOURCES {
        let mut rest = src;
        while let Some(i) = rest.find("route(") {
            rest = &rest[i + "route(".len()..];
            let Some(after_quote) = rest.trim_start().strip_prefix('"') else {
                continue;
            };
            let Some((path, tail)) = after_quote.split_once('"') else {
                continue;
            };
            let next = tail.find("route(").unwrap_or(tail.len());
            let window = &tail[..next];
            let Some(w) = window.find("web::") else {
                continue;
            };
            let method: String = window[w + "web::".len()..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            if path.starts_with("/v1/") {
                out.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

/// Every `/v1/` route with the role it needs (`None`: public).
const ROLES: [(&str, &str, Option<&str>); 17] = [
    ("POST", "/v1/events/{source}", Some("app")),
    ("GET", "/v1/openapi.json", None),
    ("GET", "/v1/events/{id}", Some("app")),
    ("GET", "/v1/whoami", Some("app")),
    ("GET", "/v1/summary", Some("viewer")),
    ("GET", "/v1/flows", Some("viewer")),
    ("GET", "/v1/destinations", Some("viewer")),
    ("GET", "/v1/mappings", Some("viewer")),
    ("GET", "/v1/preflight", Some("viewer")),
    ("GET", "/v1/outbox", Some("viewer")),
    ("GET", "/v1/audit", Some("viewer")),
    ("GET", "/v1/dead-letters", Some("viewer")),
    ("GET", "/v1/dead-letters/{id}", Some("viewer")),
    ("POST", "/v1/dead-letters/replay", Some("operator")),
    ("GET", "/v1/dead-letters/{id}/payload", Some("operator")),
    ("POST", "/v1/dead-letters/{id}/replay", Some("operator")),
    ("POST", "/v1/dead-letters/{id}/discard", Some("operator")),
];

/// `/v1/events/{id}` and `/v1/events/{source}` are one templated path.
fn template(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            c => out.push(c),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_v1_route() {
    let routes = registered_routes();
    // The scan must see at least the routes known when this was written.
    for (m, p, _) in ROLES {
        assert!(
            routes.contains(&(m.to_owned(), p.to_owned())),
            "the route scan missed {m} {p}: {routes:?}"
        );
    }

    let k = start(Backend::Sqlite, PLAIN).await;
    let r = k.get("/v1/openapi.json", None).await;
    assert_eq!(r.status, 200);
    let doc = r.json();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(
        version.starts_with("3."),
        "`openapi` is `{version}` in {doc}"
    );
    assert!(doc["info"]["title"].is_string(), "info.title");
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    let mut documented: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for (p, item) in &paths {
        documented.entry(template(p)).or_default().push(item);
    }
    let mut missing = Vec::new();
    for (m, p) in &routes {
        let op = documented
            .get(&template(p))
            .and_then(|items| items.iter().find_map(|item| item.get(m.to_lowercase())));
        match op {
            Some(op) if op.get("responses").is_some_and(Value::is_object) => {}
            Some(_) => missing.push(format!("{m} {p} (no responses)")),
            None => missing.push(format!("{m} {p}")),
        }
    }
    assert!(
        missing.is_empty(),
        "not in /v1/openapi.json paths: {missing:?} (documented: {:?})",
        paths.keys().collect::<Vec<_>>()
    );
    // What the document says each route needs is what the server enforces
    // (the `auth_matrix` test): the role, bearer security, 401 and 403.
    let mut wrong = Vec::new();
    for (m, p, role) in ROLES {
        let Some(op) = documented
            .get(&template(p))
            .and_then(|items| items.iter().find_map(|item| item.get(m.to_lowercase())))
        else {
            continue;
        };
        let documented_role = op.get("x-kiungo-role").and_then(Value::as_str);
        let security = op.get("security").or_else(|| doc.get("security"));
        let bearer = security.and_then(Value::as_array).is_some_and(|s| {
            s.iter()
                .any(|req| req.as_object().is_some_and(|o| !o.is_empty()))
        });
        let responses = &op["responses"];
        let ok = match role {
            Some(role) => {
                documented_role == Some(role)
                    && bearer
                    && responses.get("401").is_some()
                    && responses.get("403").is_some()
            }
            None => !bearer,
        };
        if !ok {
            wrong.push(format!(
                "{m} {p}: needs {role:?}, documented x-kiungo-role {documented_role:?}, \
                 bearer security {bearer}, responses {:?}",
                responses.as_object().map(|r| r.keys().collect::<Vec<_>>())
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    k.stop().await;
}

kiungo::on_both_backends!(
    payloads_only_for_operators_and_audited,
    summary_flows_and_mappings,
    event_status,
    destination_health_and_delivery,
);
