//! W3C trace context end to end: an event sent over HTTP with a
//! `traceparent` is delivered to the FHIR server with a child of it (same
//! trace id, a new parent id); an event without one gets a new trace that
//! is forwarded all the same.

use std::path::Path;
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;

mod support;

/// The app token that posts the events.
const APP_TOKEN: &str = "trace-test-cht-app-token-3e9a1c7b5d2f4a6e8c0b";
const INCOMING: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_reaches_the_fhir_server_as_a_child() {
    kiungo::tls::install_crypto_provider();
    let fhir = support::fhir_accepting_every_transaction().await;
    let dir = tempfile::tempdir().expect("dir");
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
    std::fs::write(
        dir.path().join("key"),
        "kiungo-trace-test-pseudonym-key-0123456789",
    )
    .expect("key");
    let file = dir.path().join("k.yaml");
    std::fs::write(
        &file,
        format!(
            "mappings: {}\npseudonym_key_file: key\nstore: {{url: 'sqlite:{}'}}\nhttp: {{listen: '127.0.0.1:0'}}\n\
             admin: {{tokens: [{{name: cht-app, role: app, sha256: {}}}]}}\n\
             destinations:\n  fhir:\n    server: {{base_url: '{}'}}\n",
            packs.display(),
            dir.path().join("k.db").display(),
            kiungo::admin::token_hash_hex(APP_TOKEN),
            fhir.uri()
        ),
    )
    .expect("config");
    let app = Application::build(Config::load(&file).expect("config"))
        .await
        .expect("start");
    let client = reqwest::Client::new();
    let post = |fixture: &str, traceparent: Option<&str>| {
        let mut req = client
            .post(format!("http://{}/v1/events/cht", app.http_addr()))
            .bearer_auth(APP_TOKEN)
            .header("Content-Type", "application/json")
            .body(std::fs::read(packs.join(fixture)).expect("fixture"));
        if let Some(tp) = traceparent {
            req = req.header("traceparent", tp);
        }
        req.send()
    };
    let r = post("cht-anc/fixtures/anc-visit-1-facility.json", Some(INCOMING))
        .await
        .expect("post");
    assert_eq!(r.status(), 202);
    let r = post("cht-anc/fixtures/anc-visit-3-outreach-no-vitals.json", None)
        .await
        .expect("post");
    assert_eq!(r.status(), 202);

    let start = Instant::now();
    let requests = loop {
        let got = fhir.received_requests().await.unwrap_or_default();
        if got.len() >= 2 {
            break got;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "FHIR server got {} requests",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let sent: Vec<String> = requests
        .iter()
        .map(|r| {
            r.headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .expect("every delivery carries a traceparent")
                .to_owned()
        })
        .collect();
    for tp in &sent {
        assert!(kiungo::trace::parse(tp).is_some(), "valid: {tp}");
        assert_ne!(tp, INCOMING, "a child, not the app's own span");
    }
    let children: Vec<&String> = sent
        .iter()
        .filter(|tp| kiungo::trace::trace_id(tp) == kiungo::trace::trace_id(INCOMING))
        .collect();
    assert_eq!(
        children.len(),
        1,
        "one delivery continues the app's trace: {sent:?}"
    );
    assert!(children[0].ends_with("-01"), "sampled flag kept");
    app.run_until(async {}).await;
}
