//! The log an operations team reads, at the default level, from a real
//! in-process Kiungo: events parked at ingest and a FHIR server answering
//! 503 each give a WARN line with where, the reason code and a count, the
//! circuit opening gives one, the INFO summary line appears, and no line
//! carries the events' personal data. (How often the WARN lines come, one
//! per window with the count since the last, is moved by a hand clock in
//! `kiungo::signals`'s unit tests; here only that they come.)

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const APP_TOKEN: &str = "log-signals-test-cht-app-token-8f2d6b1a9c4e7d3f";
const MARKERS: [&str; 2] = ["Wanjiku Kamau", "+254712345678"];

/// Every line the subscriber wrote.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<serde_json::Value> {
        let text = self
            .0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("json log line"))
            .collect()
    }
}

fn has(lines: &[serde_json::Value], level: &str, message_starts: &str) -> bool {
    lines.iter().any(|l| {
        l["level"] == level
            && l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(message_starts))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_warn_with_counts_and_the_summary_is_written() {
    kiungo::tls::install_crypto_provider();
    let out = Captured::default();
    let writer = out.clone();
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            kiungo::signals::filter_directives(None),
        ))
        .with_writer(move || writer.clone())
        .try_init()
        .expect("subscriber");

    let fhir = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&fhir)
        .await;
    let dir = tempfile::tempdir().expect("dir");
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
    std::fs::write(
        dir.path().join("key"),
        "kiungo-log-test-pseudonym-key-0123456789",
    )
    .expect("key");
    let file = dir.path().join("k.yaml");
    std::fs::write(
        &file,
        format!(
            "mappings: {}\npseudonym_key_file: key\nstore: {{url: 'sqlite:{}'}}\nhttp: {{listen: '127.0.0.1:0'}}\n\
             log: {{summary_interval: 1s}}\n\
             admin: {{tokens: [{{name: cht-app, role: app, sha256: {}}}]}}\n\
             destinations:\n  fhir:\n    server: {{base_url: '{}'}}\n    circuit: {{failures: 1, cool_down: 1h}}\n",
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
    let post = |body: Vec<u8>| {
        client
            .post(format!("http://{}/v1/events/cht", app.http_addr()))
            .bearer_auth(APP_TOKEN)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
    };
    // Three events parked at ingest (not JSON), each with personal data.
    for i in 0..3 {
        let r = post(
            format!(
                "{{\"name\": \"{}\", \"phone\": \"{}\", {i}",
                MARKERS[0], MARKERS[1]
            )
            .into_bytes(),
        )
        .await
        .expect("post");
        assert_eq!(r.status(), 400);
    }
    // One stored event, whose bundle the FHIR server refuses with 503.
    let r = post(
        std::fs::read(packs.join("cht-anc/fixtures/anc-visit-1-facility.json")).expect("fixture"),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 202);

    let start = Instant::now();
    let lines = loop {
        let lines = out.lines();
        let parked = lines.iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["source"] == "cht"
                && l["fields"]["reason"] == "not_json"
                && l["fields"]["count"].as_u64().is_some_and(|n| n >= 1)
        });
        let retried = lines.iter().any(|l| {
            l["level"] == "WARN"
                && l["fields"]["destination"] == "fhir"
                && l["fields"]["reason"] == "http_503"
                && l["fields"]["count"].as_u64().is_some_and(|n| n >= 1)
        });
        let circuit = lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["fields"]["reason"] == "circuit_open");
        let summary = lines.iter().any(|l| {
            l["level"] == "INFO"
                && l["fields"]["message"] == "summary"
                && l["fields"]["ingested"].as_u64().is_some_and(|n| n >= 1)
        });
        if parked && retried && circuit && summary {
            break lines;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "after 120 s: parked {parked}, retried {retried}, circuit {circuit}, summary {summary}; log:\n{}",
            lines
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(has(&lines, "WARN", "events parked at ingest"));
    let parked: u64 = lines
        .iter()
        .filter(|l| l["level"] == "WARN" && l["fields"]["reason"] == "not_json")
        .filter_map(|l| l["fields"]["count"].as_u64())
        .sum();
    assert!(
        (1..=3).contains(&parked),
        "counts add up to at most the 3 parked: {parked}"
    );
    for l in &lines {
        let text = l.to_string();
        for m in MARKERS {
            assert!(!text.contains(m), "log line leaks {m}: {text}");
        }
        assert!(
            l["target"].as_str().is_none_or(|t| !t.starts_with("sqlx")
                || l["level"] == "WARN"
                || l["level"] == "ERROR"),
            "sqlx below warn: {text}"
        );
    }
    app.run_until(async {}).await;
}
