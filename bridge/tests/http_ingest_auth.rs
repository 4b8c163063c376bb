//! Who may write over `POST /v1/events/{source}`, and what a hostile or
//! broken client can no longer do (issue 13, "Anyone can write data"):
//! write without a token, replace or withdraw another source's events,
//! post cross-site as `text/plain`, store bodies to a source no mapping
//! reads, send faster than its token's rate, or hold a connection and its
//! memory with a body that never finishes.
//!
//! Each test starts a real `Application` (HTTP only, SQLite, port 0). No
//! test depends on the machine's speed: the rate limits refill so slowly
//! that they cannot refill during a test, and the stalled-body test waits
//! for the outcome with a generous deadline.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use kiungo::admin::Role;
use kiungo::admin::auth::TokenConfig;
use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::ingest::IngestAuth;
use kiungo::store::Backend;
use kiungo::store::scratch::ScratchDb;
use serde_json::{Value, json};
use support::{cht_visit, packs_dir};

const OPERATOR: &str = "ingest-auth-test-operator-token-4f2a9c7e1b3d5a6c";
const VIEWER: &str = "ingest-auth-test-viewer-token-8d6b4f2a0c9e7d5b";
/// An app token for CHT's events only.
const CHT_APP: &str = "ingest-auth-test-cht-app-token-1a3c5e7f9b2d4f6a";
/// An app token for Kobo's events only.
const KOBO_APP: &str = "ingest-auth-test-kobo-app-token-7e5c3a1f9d7b5e3c";
/// Another CHT app token, for the per-token limits.
const CHT_APP_2: &str = "ingest-auth-test-cht-app-2-token-0b2d4f6a8c1e3a5c";

/// The visit fixture's event id.
const VISIT_ID: &str = "0b3a8f6e-1d2c-4e5f-9a7b-6c5d4e3f2a10";

const JSON: (&str, &str) = ("Content-Type", "application/json");

fn token(name: &str, role: Role, secret: &str, sources: Option<&[&str]>) -> TokenConfig {
    TokenConfig {
        name: name.into(),
        role,
        sha256: Some(kiungo::admin::token_hash_hex(secret)),
        token: None,
        sources: sources.map(|s| s.iter().map(|x| (*x).to_owned()).collect()),
    }
}

fn visit() -> Vec<u8> {
    std::fs::read(packs_dir().join("cht-anc/fixtures/anc-visit-1-facility.json")).expect("fixture")
}

/// A config with the test tokens; `tune` changes it before the start.
async fn start(tune: impl FnOnce(&mut Config)) -> (ScratchDb, Application) {
    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let mut config = Config::default();
    config.mappings = packs_dir();
    config.store = db.config.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.http.max_body_bytes = 32 * 1024;
    config.admin.tokens = vec![
        token("ops-juma", Role::Operator, OPERATOR, None),
        token("viewer-amina", Role::Viewer, VIEWER, None),
        token("cht-app", Role::App, CHT_APP, Some(&["cht"])),
        token("kobo-app", Role::App, KOBO_APP, Some(&["kobo"])),
        token("cht-app-2", Role::App, CHT_APP_2, Some(&["cht"])),
    ];
    tune(&mut config);
    let app = Application::build(config).await.expect("start");
    (db, app)
}

/// One answer: status, headers, JSON body.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(
    app: &Application,
    source: &str,
    token: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/events/{source}", app.http_addr()))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("HTTP {status}: answer is not JSON ({e}): {text}"));
    Answer {
        status,
        headers,
        body,
    }
}

fn code(a: &Answer) -> &str {
    a.body["error"]["code"].as_str().unwrap_or_default()
}

fn message(a: &Answer) -> &str {
    a.body["error"]["message"].as_str().unwrap_or_default()
}

/// Without a token, with an unknown one or with a viewer's, nothing is
/// written; an app token allowed on the source, or an operator's, writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_needs_an_app_or_operator_token() {
    let (_db, app) = start(|_| {}).await;

    let a = post(&app, "cht", None, visit(), &[JSON]).await;
    assert_eq!((a.status, code(&a)), (401, "unauthorized"), "{}", a.body);
    assert!(message(&a).contains("Authorization"), "{}", a.body);
    assert!(
        a.headers
            .get("www-authenticate")
            .is_some_and(|v| v.to_str().unwrap_or_default().starts_with("Bearer")),
        "{:?}",
        a.headers
    );
    let a = post(
        &app,
        "cht",
        Some("not-a-token-anyone-issued"),
        visit(),
        &[JSON],
    )
    .await;
    assert_eq!((a.status, code(&a)), (401, "unauthorized"), "{}", a.body);
    assert!(message(&a).contains("unknown token"), "{}", a.body);
    let a = post(&app, "cht", Some(VIEWER), visit(), &[JSON]).await;
    assert_eq!((a.status, code(&a)), (403, "forbidden"), "{}", a.body);
    assert!(message(&a).contains("viewer"), "{}", a.body);
    let a = post(&app, "cht", Some(KOBO_APP), visit(), &[JSON]).await;
    assert_eq!((a.status, code(&a)), (403, "forbidden"), "{}", a.body);
    assert!(message(&a).contains("`cht`"), "{}", a.body);

    let stats = app.store().stats().await.expect("stats");
    assert_eq!(
        (stats.events_live, stats.dead_letters_open),
        (0, 0),
        "a refused request leaves nothing in the store"
    );

    let a = post(&app, "cht", Some(CHT_APP), visit(), &[JSON]).await;
    assert_eq!((a.status, &a.body["status"]), (202, &json!("stored")));
    let a = post(&app, "cht", Some(OPERATOR), visit(), &[JSON]).await;
    assert_eq!((a.status, &a.body["status"]), (202, &json!("duplicate")));
    app.run_until(async {}).await;
}

/// The reproduction: a caller replaced a legitimate event by its id, and
/// withdrew another through `deprecatedID` (its DHIS2 contributions went
/// 1 → 0). An edit or a `replaces` changes only events of the source it is
/// posted to (events are keyed by source and id), so a caller not allowed
/// on that source is refused before anything is read; posted to its own
/// source, the same payload touches only that source's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_replaces_need_the_source_of_the_event_they_change() {
    let (_db, app) = start(|_| {}).await;
    let original = serde_json::to_vec(&cht_visit(VISIT_ID, "facility", "")).expect("bytes");
    let a = post(&app, "cht", Some(CHT_APP), original, &[JSON]).await;
    assert_eq!((a.status, &a.body["status"]), (202, &json!("stored")));
    let before = app.store().stats().await.expect("stats");
    let totals = app.store().dhis2_totals().await.expect("totals");
    assert!(before.contributions >= 1, "{before:?}");

    // Same id, new payload (an edit), and a new event replacing it.
    let edit = serde_json::to_vec(&cht_visit(VISIT_ID, "outreach", "")).expect("bytes");
    let replace =
        serde_json::to_vec(&cht_visit("attacker-1", "outreach", VISIT_ID)).expect("bytes");
    for body in [&edit, &replace] {
        for caller in [None, Some(KOBO_APP), Some(VIEWER)] {
            let a = post(&app, "cht", caller, body.clone(), &[JSON]).await;
            assert!(
                matches!(a.status, 401 | 403),
                "{caller:?} changed a cht event: HTTP {} {}",
                a.status,
                a.body
            );
        }
        // Allowed on kobo, posted to kobo: cht's event is out of reach.
        let a = post(&app, "kobo", Some(KOBO_APP), body.clone(), &[JSON]).await;
        assert_ne!(a.status, 202, "{}", a.body);
    }
    let after = app.store().stats().await.expect("stats");
    assert_eq!(
        (
            after.events_live,
            after.events_superseded,
            after.contributions
        ),
        (
            before.events_live,
            before.events_superseded,
            before.contributions
        ),
        "the cht event is untouched"
    );
    assert_eq!(app.store().dhis2_totals().await.expect("totals"), totals);

    // Its own app may replace it.
    let a = post(&app, "cht", Some(CHT_APP), replace, &[JSON]).await;
    assert_eq!(
        (a.status, &a.body["status"]),
        (202, &json!("stored")),
        "{}",
        a.body
    );
    let after = app.store().stats().await.expect("stats");
    assert_eq!(after.events_superseded, 1, "{after:?}");
    app.run_until(async {}).await;
}

/// A browser can post `text/plain`, form data or no type at all cross-site
/// without a preflight: only JSON types are read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_json_content_types_are_read() {
    let (_db, app) = start(|_| {}).await;
    for ct in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json; charset=latin1"),
        Some("application/jsonp"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = ct.map(|c| ("Content-Type", c)).into_iter().collect();
        let a = post(&app, "cht", Some(CHT_APP), visit(), &headers).await;
        assert_eq!(
            (a.status, code(&a)),
            (415, "unsupported_media_type"),
            "{ct:?}: {}",
            a.body
        );
        assert!(message(&a).contains("application/json"), "{}", a.body);
    }
    assert_eq!(app.store().stats().await.expect("stats").events_live, 0);
    for (ct, status) in [
        ("application/json", "stored"),
        ("Application/JSON; charset=UTF-8", "duplicate"),
        ("application/vnd.cht.event+json", "duplicate"),
        ("application/json;charset=\"utf-8\"", "duplicate"),
    ] {
        let a = post(&app, "cht", Some(CHT_APP), visit(), &[("Content-Type", ct)]).await;
        assert_eq!((a.status, &a.body["status"]), (202, &json!(status)), "{ct}");
    }
    app.run_until(async {}).await;
}

/// Writes `head` and `body` on a raw connection, then reads the answer
/// until the server closes or `deadline` passes.
fn raw_exchange(addr: SocketAddr, head: &str, body: &[u8], deadline: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    s.write_all(head.as_bytes()).expect("head");
    s.write_all(body).expect("body");
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut closed = false;
    while start.elapsed() < deadline {
        match s.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), closed)
}

/// A body to a source no mapping reads is answered 404 from its headers:
/// the body is never read (the client here never sends it) and nothing is
/// stored (it was: 47 MiB in a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_source_is_404_before_the_body() {
    let (_db, app) = start(|_| {}).await;
    let addr = app.http_addr();
    let head = format!(
        "POST /v1/events/no-such-app HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
    );
    let (answer, _) = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, &head, b"{\"a\": ", Duration::from_secs(30))
    })
    .await
    .expect("exchange");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer:?}");
    assert!(answer.contains("unknown_source"), "{answer:?}");

    // Whole bodies too, from any caller allowed to write.
    let a = post(
        &app,
        "no-such-app",
        Some(OPERATOR),
        vec![b' '; 30 * 1024],
        &[JSON],
    )
    .await;
    assert_eq!((a.status, code(&a)), (404, "unknown_source"), "{}", a.body);
    assert!(
        message(&a).contains("cht"),
        "names the known sources: {}",
        a.body
    );
    let stats = app.store().stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.dead_letters_open), (0, 0));
    app.run_until(async {}).await;
}

fn retry_after(a: &Answer) -> u64 {
    a.headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in {:?}", a.headers))
}

/// Each token has its own request and byte buckets; past them, 429 with
/// `Retry-After`. The buckets refill at one request (or byte) in 1,000 s,
/// so nothing refills during the test whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_token_is_rate_limited_with_429_and_retry_after() {
    let (_db, app) = start(|c| {
        let r = &mut c.http.ingest.rate_limit;
        r.requests_per_second = 0.001;
        r.request_burst = 3;
        r.bytes_per_second = 0.001;
        r.byte_burst = 64 * 1024;
    })
    .await;
    for i in 0..3 {
        let a = post(&app, "cht", Some(CHT_APP), visit(), &[JSON]).await;
        assert_eq!(a.status, 202, "request {i}: {}", a.body);
    }
    let a = post(&app, "cht", Some(CHT_APP), visit(), &[JSON]).await;
    assert_eq!((a.status, code(&a)), (429, "rate_limited"), "{}", a.body);
    assert!(retry_after(&a) >= 1, "{:?}", a.headers);
    assert!(message(&a).contains("requests"), "{}", a.body);

    // Another token is not held back by the first one's rate; its bytes
    // run out after two 30 KiB bodies.
    let mut padded = visit();
    padded.extend(std::iter::repeat_n(b' ', 30 * 1024 - padded.len()));
    for i in 0..2 {
        let a = post(&app, "cht", Some(CHT_APP_2), padded.clone(), &[JSON]).await;
        assert_eq!(a.status, 202, "request {i}: {}", a.body);
    }
    let a = post(&app, "cht", Some(CHT_APP_2), padded, &[JSON]).await;
    assert_eq!((a.status, code(&a)), (429, "rate_limited"), "{}", a.body);
    assert!(message(&a).contains("bytes"), "{}", a.body);
    assert!(retry_after(&a) >= 1);
    app.run_until(async {}).await;
}

/// With `auth: none` (local trials) anyone writes, limited per client
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auth_anyone_writes_limited_per_address() {
    let (_db, app) = start(|c| {
        c.http.ingest.auth = IngestAuth::None;
        c.admin.tokens.clear();
        c.http.ingest.rate_limit.requests_per_second = 0.001;
        c.http.ingest.rate_limit.request_burst = 2;
    })
    .await;
    let a = post(&app, "cht", None, visit(), &[JSON]).await;
    assert_eq!((a.status, &a.body["status"]), (202, &json!("stored")));
    let a = post(&app, "cht", Some("whatever"), visit(), &[JSON]).await;
    assert_eq!((a.status, &a.body["status"]), (202, &json!("duplicate")));
    let a = post(&app, "cht", None, visit(), &[JSON]).await;
    assert_eq!((a.status, code(&a)), (429, "rate_limited"), "{}", a.body);
    // Still not a place for unknown sources or other types.
    let a = post(&app, "nope", None, visit(), &[JSON]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    app.run_until(async {}).await;
}

/// A client that sends its headers and part of its body, then stalls, is
/// answered 408 (or cut off) once `body_timeout` passes, and its
/// connection closed, so that its buffer is freed. The deadline here is
/// generous: the outcome is asserted, not the timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_dropped_after_the_body_timeout() {
    let (_db, app) = start(|c| c.http.ingest.body_timeout = Duration::from_secs(1)).await;
    let addr = app.http_addr();
    let head = format!(
        "POST /v1/events/cht HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {CHT_APP}\r\n\
         Content-Type: application/json\r\nContent-Length: 20000\r\n\r\n"
    );
    let (answer, closed) = tokio::task::spawn_blocking(move || {
        raw_exchange(addr, &head, &[b' '; 1000], Duration::from_secs(60))
    })
    .await
    .expect("exchange");
    assert!(
        answer.starts_with("HTTP/1.1 408") || (answer.is_empty() && closed),
        "a stalled upload was neither answered 408 nor closed: {answer:?}"
    );
    assert!(closed, "the connection stays open after: {answer:?}");
    if !answer.is_empty() {
        assert!(answer.contains("body_timeout"), "{answer:?}");
    }
    // The service still answers.
    let a = post(&app, "cht", Some(CHT_APP), visit(), &[JSON]).await;
    assert_eq!(a.status, 202, "{}", a.body);
    app.run_until(async {}).await;
}
