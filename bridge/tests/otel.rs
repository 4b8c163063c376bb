//! OpenTelemetry span export against a collector stand-in (a wiremock
//! server taking `POST /v1/traces`, whose bodies are decoded as OTLP
//! protobuf): events published over AMQP and posted over HTTP with a
//! known `traceparent`, and one without, yield `ingest`, `map`, `commit`
//! and `deliver` spans in the app's trace (none for a trace the app did
//! not sample), and the FHIR server's request is a child of the exported
//! `deliver` span; `kiungo run` exports when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set and sends nothing when it is not.
#![cfg(feature = "otel")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::telemetry::OtlpSettings;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

mod support;

/// The app token that posts the events.
const APP_TOKEN: &str = "otel-test-cht-app-token-5b8d2e4f6a1c3e7b9d0f";
/// The app's span over HTTP and over AMQP.
const HTTP_PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const AMQP_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// An app's span it chose not to sample (flags `00`).
const UNSAMPLED_PARENT: &str = "00-5e1c0ffee0ddba11cafe000000000042-1122334455667788-00";
/// Generous: the test waits for conditions, never for a time.
const DEADLINE: Duration = Duration::from_secs(60);

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

/// A CHT ANC fixture as event `id` (its `_id`), so that each test event
/// is a new one.
fn event(fixture: &str, id: &str) -> Vec<u8> {
    let path = packs().join("cht-anc/fixtures").join(fixture);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
    v["_id"] = id.into();
    serde_json::to_vec(&v).expect("json")
}

/// The collector stand-in, on `listener` (any free port when `None`).
async fn collector(listener: Option<std::net::TcpListener>) -> MockServer {
    let builder = MockServer::builder();
    let server = match listener {
        Some(l) => builder.listener(l).start().await,
        None => builder.start().await,
    };
    Mock::given(method("POST"))
        .and(path("/v1/traces"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            ExportTraceServiceRequest::default().encode_to_vec(),
            "application/x-protobuf",
        ))
        .mount(&server)
        .await;
    server
}

/// Writes the config: SQLite in `dir`, HTTP on `listen`, the FHIR
/// server, and `extra` YAML.
fn write_config(dir: &Path, listen: &str, fhir: &MockServer, extra: &str) -> PathBuf {
    std::fs::write(dir.join("key"), "kiungo-otel-test-pseudonym-key-0123456789").expect("key");
    let file = dir.join("k.yaml");
    std::fs::write(
        &file,
        format!(
            "mappings: {}\npseudonym_key_file: key\nstore: {{url: 'sqlite:{}'}}\nhttp: {{listen: '{listen}'}}\n\
             admin: {{tokens: [{{name: cht-app, role: app, sha256: {}}}]}}\n\
             destinations:\n  fhir:\n    server: {{base_url: '{}'}}\n{extra}",
            packs().display(),
            dir.join("k.db").display(),
            kiungo::admin::token_hash_hex(APP_TOKEN),
            fhir.uri()
        ),
    )
    .expect("config");
    file
}

/// POSTs `body` as a CHT event, with `traceparent` if given.
async fn post(addr: &str, body: Vec<u8>, traceparent: Option<&str>) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{addr}/v1/events/cht"))
        .bearer_auth(APP_TOKEN)
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.expect("post");
    assert_eq!(r.status(), 202, "{:?}", r.text().await);
}

/// The FHIR server's requests once there are `n`.
async fn fhir_requests(fhir: &MockServer, n: usize) -> Vec<Request> {
    let start = Instant::now();
    loop {
        let got = fhir.received_requests().await.unwrap_or_default();
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "FHIR server got {} of {n} requests",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `traceparent` of each FHIR request.
fn sent_traceparents(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            r.headers
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .expect("every delivery carries a traceparent")
                .to_owned()
        })
        .collect()
}

/// One exported span, ids in hex.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace: String,
    id: String,
    parent: String,
    attributes: BTreeMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Every span the collector received, and the service names.
async fn exported(collector: &MockServer) -> (Vec<Exported>, Vec<String>) {
    let mut spans = Vec::new();
    let mut services = Vec::new();
    for r in collector.received_requests().await.unwrap_or_default() {
        assert_eq!(r.url.path(), "/v1/traces");
        assert_eq!(
            r.headers.get("content-type").and_then(|v| v.to_str().ok()),
            Some("application/x-protobuf")
        );
        let req = ExportTraceServiceRequest::decode(r.body.as_slice()).expect("OTLP protobuf");
        for rs in req.resource_spans {
            for kv in rs.resource.iter().flat_map(|r| &r.attributes) {
                if kv.key == "service.name"
                    && let Some(AnyValue::StringValue(s)) =
                        kv.value.as_ref().and_then(|v| v.value.clone())
                {
                    services.push(s);
                }
            }
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                let attributes = span
                    .attributes
                    .iter()
                    .map(|kv| {
                        let v = match kv.value.as_ref().and_then(|v| v.value.clone()) {
                            Some(AnyValue::StringValue(s)) => s,
                            Some(AnyValue::IntValue(i)) => i.to_string(),
                            other => format!("{other:?}"),
                        };
                        (kv.key.clone(), v)
                    })
                    .collect();
                spans.push(Exported {
                    name: span.name,
                    trace: hex(&span.trace_id),
                    id: hex(&span.span_id),
                    parent: hex(&span.parent_span_id),
                    attributes,
                });
            }
        }
    }
    (spans, services)
}

/// The one span named `name` in `trace`.
fn one<'a>(spans: &'a [Exported], trace: &str, name: &str) -> &'a Exported {
    let found: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.trace == trace && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} span in trace {trace}: {spans:#?}"
    );
    found[0]
}

/// The trace of an event: `ingest` (child of `app_parent`, or a root),
/// `map` and `commit` under it, `deliver` under the event's stored
/// `traceparent`, and the FHIR request a child of `deliver`.
fn check_trace(spans: &[Exported], sent: &[String], trace: &str, app_parent: Option<&str>) {
    let ingest = one(spans, trace, "ingest");
    assert_eq!(ingest.parent, app_parent.unwrap_or(""), "ingest's parent");
    assert_eq!(ingest.attributes["kiungo.source"], "cht");
    assert_eq!(ingest.attributes["kiungo.mapping"], "cht-anc-visit");
    assert_eq!(ingest.attributes["kiungo.outcome"], "stored");
    let map = one(spans, trace, "map");
    assert_eq!(map.parent, ingest.id, "map is a child of ingest");
    assert_eq!(map.attributes["kiungo.mapping"], "cht-anc-visit");
    let commit = one(spans, trace, "commit");
    assert_eq!(commit.parent, ingest.id, "commit is a child of ingest");
    assert_eq!(commit.attributes["kiungo.outcome"], "stored");
    let deliver = one(spans, trace, "deliver");
    // The stored traceparent: the app's span, or (a trace Kiungo
    // started) the ingest span.
    assert_eq!(
        deliver.parent,
        app_parent.unwrap_or(&ingest.id),
        "deliver's parent"
    );
    assert_eq!(deliver.attributes["kiungo.destination"], "fhir");
    assert_eq!(deliver.attributes["kiungo.outcome"], "delivered");
    let expected = format!("00-{trace}-{}-01", deliver.id);
    assert!(
        sent.contains(&expected),
        "the FHIR request of trace {trace} names the deliver span {}: {sent:?}",
        deliver.id
    );
}

/// No attribute holds a value of the events' payloads.
fn check_no_payload_values(spans: &[Exported], payloads: &[Vec<u8>]) {
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) if s.len() >= 4 => out.push(s.clone()),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
            serde_json::Value::Object(o) => o.values().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut values = Vec::new();
    for p in payloads {
        strings(&serde_json::from_slice(p).expect("json"), &mut values);
    }
    for span in spans {
        for (key, value) in &span.attributes {
            assert!(
                !values.iter().any(|v| v == value),
                "span {} attribute {key} holds a payload value: {value}",
                span.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_continue_the_apps_trace_over_amqp_and_http() {
    use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    kiungo::tls::install_crypto_provider();
    let fhir = support::fhir_accepting_every_transaction().await;
    let collector = collector(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let queue = format!("kiungo-otel-test-{}", uuid::Uuid::new_v4());
    let file = write_config(
        dir.path(),
        "127.0.0.1:0",
        &fhir,
        &format!("rabbitmq:\n  url: '{amqp_url}'\n  queues: [{{name: '{queue}', source: cht}}]\n"),
    );
    let app = Application::build_traced(
        Config::load(&file).expect("config"),
        Some(OtlpSettings::for_endpoint(&collector.uri())),
    )
    .await
    .expect("start");

    // Over AMQP, with the app's traceparent in the headers.
    let conn = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .expect("rabbitmq");
    let channel = conn.create_channel().await.expect("channel");
    let queue_config = serde_json::from_value(serde_json::json!({"name": queue, "source": "cht"}))
        .expect("queue config");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            kiungo_connectors::rabbitmq::queue_arguments(&queue_config),
        )
        .await
        .expect("declare");
    let mut headers = FieldTable::default();
    headers.insert(
        "traceparent".into(),
        AMQPValue::LongString(AMQP_PARENT.into()),
    );
    let amqp_event = event("anc-visit-1-facility.json", "otel-amqp-1");
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &amqp_event,
            BasicProperties::default()
                .with_message_id("otel-amqp-1".into())
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(headers),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    // Over HTTP, with and without one.
    let addr = app.http_addr().to_string();
    let http_event = event("anc-visit-3-outreach-no-vitals.json", "otel-http-1");
    let bare_event = event("anc-visit-1-facility.json", "otel-http-2");
    post(&addr, http_event.clone(), Some(HTTP_PARENT)).await;
    post(&addr, bare_event.clone(), None).await;
    let unsampled_event = event("anc-visit-3-outreach-no-vitals.json", "otel-http-3");
    post(&addr, unsampled_event.clone(), Some(UNSAMPLED_PARENT)).await;

    let sent = sent_traceparents(&fhir_requests(&fhir, 4).await);
    // Shutdown exports what is queued.
    app.run_until(async {}).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;

    let (spans, services) = exported(&collector).await;
    assert!(
        !services.is_empty() && services.iter().all(|s| s == "kiungo"),
        "{services:?}"
    );
    let trace_of = |tp: &str| kiungo::trace::trace_id(tp).to_owned();
    let parent_of = |tp: &str| tp[36..52].to_owned();
    check_trace(
        &spans,
        &sent,
        &trace_of(AMQP_PARENT),
        Some(&parent_of(AMQP_PARENT)),
    );
    check_trace(
        &spans,
        &sent,
        &trace_of(HTTP_PARENT),
        Some(&parent_of(HTTP_PARENT)),
    );
    // Not sampled by the app: no span, and forwarded as without export
    // (a child, still not sampled).
    let unsampled = trace_of(UNSAMPLED_PARENT);
    assert!(
        spans.iter().all(|s| s.trace != unsampled),
        "spans of an unsampled trace: {spans:#?}"
    );
    let forwarded: Vec<&String> = sent.iter().filter(|tp| trace_of(tp) == unsampled).collect();
    assert_eq!(forwarded.len(), 1, "{sent:?}");
    assert!(forwarded[0].ends_with("-00"), "{sent:?}");
    assert_ne!(parent_of(forwarded[0]), parent_of(UNSAMPLED_PARENT));
    // The event without one: a trace Kiungo started at its ingest span.
    let other: Vec<&String> = sent
        .iter()
        .filter(|tp| {
            ![AMQP_PARENT, HTTP_PARENT, UNSAMPLED_PARENT]
                .iter()
                .any(|app| trace_of(app) == trace_of(tp))
        })
        .collect();
    assert_eq!(other.len(), 1, "{sent:?}");
    check_trace(&spans, &sent, &trace_of(other[0]), None);
    check_no_payload_values(
        &spans,
        &[amqp_event, http_event, bare_event, unsampled_event],
    );
}

/// A free local port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs `kiungo run` with the OpenTelemetry variables of the test
/// process removed and `otel_env` set, posts one event with a
/// `traceparent`, waits for its delivery, stops the process with
/// SIGTERM and returns the FHIR request's `traceparent`.
async fn run_binary(dir: &Path, fhir: &MockServer, otel_env: &[(&str, &str)]) -> String {
    kiungo::tls::install_crypto_provider();
    let port = free_port();
    let file = write_config(dir, &format!("127.0.0.1:{port}"), fhir, "");
    let log = dir.join("kiungo.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_kiungo"));
    command.args(["run", "--config"]).arg(&file);
    for (k, _) in std::env::vars() {
        if k.starts_with("OTEL_") {
            command.env_remove(k);
        }
    }
    command.envs(otel_env.iter().copied());
    let mut child = command
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("kiungo run");
    let addr = format!("127.0.0.1:{port}");
    let start = Instant::now();
    let client = reqwest::Client::new();
    while !client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            start.elapsed() < DEADLINE,
            "kiungo not ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    post(
        &addr,
        event("anc-visit-1-facility.json", "otel-run-1"),
        Some(HTTP_PARENT),
    )
    .await;
    let sent = sent_traceparents(&fhir_requests(fhir, 1).await);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "kiungo run: {status}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    sent[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiungo_run_exports_to_the_endpoint_in_the_environment() {
    let fhir = support::fhir_accepting_every_transaction().await;
    let collector = collector(None).await;
    let dir = tempfile::tempdir().expect("dir");
    let sent = run_binary(
        dir.path(),
        &fhir,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.uri()),
            ("OTEL_SERVICE_NAME", "kiungo-otel-test"),
        ],
    )
    .await;
    let (spans, services) = exported(&collector).await;
    assert!(
        !services.is_empty() && services.iter().all(|s| s == "kiungo-otel-test"),
        "{services:?}"
    );
    let trace = kiungo::trace::trace_id(HTTP_PARENT);
    for name in ["ingest", "map", "commit", "deliver"] {
        one(&spans, trace, name);
    }
    assert_eq!(&sent[36..52], one(&spans, trace, "deliver").id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiungo_run_without_the_variables_sends_nothing() {
    let fhir = support::fhir_accepting_every_transaction().await;
    // Where an exporter on by default would send: the OTLP/HTTP default
    // endpoint, localhost:4318.
    let default_port = std::net::TcpListener::bind("127.0.0.1:4318")
        .expect("port 4318 (the OTLP/HTTP default) must be free for this test");
    let at_default = collector(Some(default_port)).await;
    let dir = tempfile::tempdir().expect("dir");
    let sent = run_binary(
        dir.path(),
        &fhir,
        &[("OTEL_SERVICE_NAME", "kiungo-otel-test")],
    )
    .await;
    // Delivered as before: a child of the app's span, no span exported.
    assert_eq!(
        kiungo::trace::trace_id(&sent),
        kiungo::trace::trace_id(HTTP_PARENT)
    );
    assert_ne!(&sent[36..52], &HTTP_PARENT[36..52]);
    let got = at_default.received_requests().await.unwrap_or_default();
    assert!(got.is_empty(), "{} requests to localhost:4318", got.len());
}
