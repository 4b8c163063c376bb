//! `POST /v1/events/{source}` against a running `Application` (HTTP only,
//! SQLite): 202 only after the commit, the status of each outcome, and a
//! clear JSON error for every bad input, whose event is parked.

use std::path::{Path, PathBuf};

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::store::Backend;
use kiungo::store::scratch::ScratchDb;
use serde_json::{Value, json};

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(packs().join(rel)).expect("fixture")
}

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

const OPERATOR: &str = "operator-token-for-tests-0123456789";
const VIEWER: &str = "viewer-token-for-tests-0123456789";

async fn start() -> (ScratchDb, Application) {
    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let mut config = Config::default();
    config.mappings = packs();
    config.store = db.config.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.http.max_body_bytes = 32 * 1024;
    config.admin.tokens = vec![
        kiungo::admin::auth::TokenConfig {
            name: "ops-juma".into(),
            role: kiungo::admin::Role::Operator,
            sha256: Some(kiungo::admin::token_hash_hex(OPERATOR)),
            token: None,
            sources: None,
        },
        kiungo::admin::auth::TokenConfig {
            name: "viewer-amina".into(),
            role: kiungo::admin::Role::Viewer,
            sha256: Some(kiungo::admin::token_hash_hex(VIEWER)),
            token: None,
            sources: None,
        },
    ];
    let app = Application::build(config).await.expect("start");
    (db, app)
}

async fn post(
    app: &Application,
    source: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{}/v1/events/{source}", app.http_addr()))
        .bearer_auth(OPERATOR)
        .header("Content-Type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_and_errors() {
    let (_db, app) = start().await;
    let visit = fixture("cht-anc/fixtures/anc-visit-1-facility.json");

    let (status, body) = post(&app, "cht", visit.clone(), &[("X-Message-Id", "m-1")]).await;
    assert_eq!(
        (status, &body),
        (
            202,
            &json!({"event_id": "0b3a8f6e-1d2c-4e5f-9a7b-6c5d4e3f2a10", "status": "stored"})
        )
    );
    // 202 means committed: the store has it already.
    assert_eq!(app.store().stats().await.expect("stats").events_live, 1);

    let (status, body) = post(&app, "cht", visit.clone(), &[]).await;
    assert_eq!((status, body["status"].as_str()), (202, Some("duplicate")));

    let mut edited: Value = serde_json::from_slice(&visit).expect("json");
    edited["fields"]["anc_visits"]["visit_location"] = json!("outreach");
    let (status, body) = post(
        &app,
        "cht",
        serde_json::to_vec(&edited).expect("bytes"),
        &[],
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (202, Some("replaced")));

    let (status, body) = post(
        &app,
        "cht",
        b"{\"_id\": ".to_vec(),
        &[("X-Message-Id", "m-2")],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "not_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("message m-2: body is not JSON")
    );
    assert!(body["dead_letter_id"].as_i64().is_some());

    let (status, body) = post(
        &app,
        "cht",
        fixture("cht-anc/fixtures/anc-visit-unknown-facility.json"),
        &[],
    )
    .await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "mapping_error");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("mapping `cht-anc-visit`") && message.contains("(line "),
        "{message}"
    );

    let (status, body) = post(
        &app,
        "cht",
        fixture("cht-anc/fixtures/other-form.json"),
        &[],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("no_mapping"))
    );

    let (status, body) = post(
        &app,
        "cht",
        visit.clone(),
        &[("X-Kiungo-Mapping", "kobo-malaria-rdt")],
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("unknown_mapping"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("which is for source `kobo`")
    );

    let (status, body) = post(&app, "cht", vec![b' '; 40 * 1024], &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("too_large"))
    );

    let stats = app.store().stats().await.expect("stats");
    assert_eq!(
        stats.dead_letters_open, 4,
        "not_json, mapping_error, no_mapping, unknown_mapping parked"
    );

    let ready = reqwest::get(format!("http://{}/readyz", app.http_addr()))
        .await
        .expect("readyz");
    assert_eq!(ready.status().as_u16(), 200);
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["broker"], "not configured");
    app.run_until(async {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_over_the_admin_api() {
    let (_db, app) = start().await;
    let base = format!("http://{}", app.http_addr());
    let (status, body) = post(
        &app,
        "cht",
        fixture("cht-anc/fixtures/anc-visit-unknown-facility.json"),
        &[],
    )
    .await;
    assert_eq!(status, 422);
    let id = body["dead_letter_id"].as_i64().expect("id");
    let (_, body) = post(&app, "cht", b"not json".to_vec(), &[]).await;
    let id2 = body["dead_letter_id"].as_i64().expect("id");

    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{base}/v1/dead-letters?reason=mapping_error"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    let items = list["dead_letters"].as_array().expect("array");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], id);
    assert!(items[0].get("payload").is_none(), "no payloads over HTTP");
    let one: Value = client
        .get(format!("{base}/v1/dead-letters/{id}"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(one["reason_code"], "mapping_error");
    assert!(one.get("payload").is_none());
    let missing = client
        .get(format!("{base}/v1/dead-letters/999999"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("get");
    assert_eq!(missing.status().as_u16(), 404);

    // Replaying the unknown facility parks it again; discarding the other
    // closes it; both are audited with the actor.
    let r: Value = client
        .post(format!("{base}/v1/dead-letters/{id}/replay"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(r["results"][0]["replay"]["result"], "parked_again");
    let d: Value = client
        .post(format!("{base}/v1/dead-letters/{id2}/discard"))
        .bearer_auth(OPERATOR)
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("json");
    assert_eq!(d["discarded"], 1);
    let open: Value = client
        .get(format!("{base}/v1/dead-letters"))
        .bearer_auth(VIEWER)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(open["dead_letters"].as_array().expect("array").len(), 1);
    let audit = app.store().audit_log(10).await.expect("audit");
    assert_eq!(audit.iter().filter(|a| a.1 == "ops-juma").count(), 2);
    app.run_until(async {}).await;
}
