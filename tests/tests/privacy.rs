//! No personal data leaks: events whose names, phone numbers and national
//! ids are replaced by marker values go through the real `kiungo` binary
//! (debug-level JSON logs, RabbitMQ and HTTP ingest, FHIR and DHIS2
//! simulators that fail a third of their requests, mapping errors, bodies
//! that are not JSON, feedback messages to apps). Afterwards the markers
//! appear nowhere an operator or an app reads without asking for a
//! payload: not in the logs, not in `/metrics`, not in the admin API's
//! viewer routes, not in dead-letter reasons, not in event status, not in
//! status messages. As a control, they do reach the FHIR server (where
//! client data belongs), so the test sees them when they leak.
//!
//! Besides names and phone numbers, every field of every pack's fixtures
//! is replaced by a marker in turn (one event per field: lookup misses,
//! dates that are not dates, codes FHIR refuses, values DHIS2 refuses),
//! and a FHIR server in front of the simulator refuses one patient with a
//! message quoting the patient's name and phone number, as real servers
//! do. Operators still read the values: the parked payloads and the
//! lookup miss's detail hold them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kiungo::admin::token_hash_hex;
use kiungo::sandbox::{Faults, Sandbox, SandboxConfig};
use kiungo::store::{Backend, DeadLetterFilter, Store};
use kiungo_tests::harness::{Isolated, KiungoProcess, publish, queue_for, wait_ready};
use kiungo_tests::workload::{Kind, Message, Mix, generate_with, load_mappings, packs_dir};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

const SOURCES: [&str; 6] = ["cht", "commcare", "kobo", "inhouse", "opensrp", "odk"];
const NAME: &str = "Zawadi Kiungomarker";
const PHONE: &str = "+254700999111";
const NIN: &str = "NINMARKER-0077";
/// Fragments that must not appear anywhere (a name cut in half, a phone
/// number without its prefix).
const NEEDLES: [&str; 4] = ["Kiungomarker", "700999111", "NINMARKER", "Zawadi"];
const VIEWER: &str = "privacy-viewer-token-0123456789abcdef";
/// The Kobo app's token, for HTTP ingest.
const KOBO_APP: &str = "privacy-kobo-app-token-0123456789abcdef";

/// The value every fixture field takes in turn.
const FIELD_MARKER: &str = "Zawadi Kiungomarker +254700999111";
/// The patient name the FHIR server in front of the simulator refuses,
/// quoting it.
const QUOTED: &str = "Aminata Kiungomarker-Quote";

/// Each pack's folder and the source its mappings read.
const PACKS: [(&str, &str); 6] = [
    ("cht-anc", "cht"),
    ("commcare-immunization", "commcare"),
    ("kobo-malaria-rdt", "kobo"),
    ("inhouse-nutrition", "inhouse"),
    ("opensrp-core", "opensrp"),
    ("odk-central-household", "odk"),
];

/// JSON pointers of every leaf (scalar) of `v`.
fn leaves(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, x) in map {
                let k = k.replace('~', "~0").replace('/', "~1");
                leaves(x, format!("{at}/{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, x) in items.iter().enumerate() {
                leaves(x, format!("{at}/{i}"), out);
            }
        }
        _ => out.push(at),
    }
}

/// The event id a mapping gives `payload` (or names in its error): the
/// fields holding it are ids, not personal data, and are kept.
fn event_id_of(
    mappings: &kiungo_mappings::MappingSet,
    source: &str,
    payload: &Value,
) -> Option<String> {
    use kiungo_mappings::MapError;
    let event = kiungo_mappings::Event {
        source: source.into(),
        message_id: None,
        payload: std::sync::Arc::new(payload.clone()),
    };
    match mappings.map(&event) {
        Ok(m) => Some(m.event_id),
        Err(
            MapError::Field { event, .. }
            | MapError::InvalidFhir { event, .. }
            | MapError::Refused { event, .. },
        ) if event != "(no id)" => Some(event),
        Err(_) => None,
    }
}

/// One message per leaf of every pack fixture, that leaf replaced by
/// [`FIELD_MARKER`]; the event id fields keep a unique id.
fn every_field_marked(mappings: &kiungo_mappings::MappingSet) -> Vec<Message> {
    let mut out = Vec::new();
    for (pack, source) in PACKS {
        let dir = packs_dir().join(pack).join("fixtures");
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures")
            .map(|e| e.expect("entry").path())
            .filter(|p| {
                p.extension().is_some_and(|e| e == "json")
                    && !p.to_string_lossy().ends_with(".expected.json")
            })
            .collect();
        files.sort();
        for file in files {
            let original: Value =
                serde_json::from_slice(&std::fs::read(&file).expect("fixture")).expect("json");
            let id = event_id_of(mappings, source, &original);
            let mut paths = Vec::new();
            leaves(&original, String::new(), &mut paths);
            for path in paths {
                let n = out.len();
                let mut v = original.clone();
                let leaf = v.pointer_mut(&path).expect("leaf");
                if let (Some(id), Some(text)) = (&id, leaf.as_str())
                    && text.contains(id.as_str())
                {
                    continue;
                }
                *leaf = FIELD_MARKER.into();
                // A unique event per field: every id field gets a suffix.
                if let Some(id) = &id {
                    let mut ids = Vec::new();
                    leaves(&v, String::new(), &mut ids);
                    for p in ids {
                        if let Some(x) = v.pointer_mut(&p)
                            && let Some(text) = x.as_str()
                            && text.contains(id.as_str())
                        {
                            *x = text.replace(id.as_str(), &format!("{id}-pf{n}")).into();
                        }
                    }
                }
                out.push(Message {
                    source: source.into(),
                    message_id: format!("privacy-field-{n}"),
                    body: v.to_string().into_bytes(),
                    kind: Kind::Original,
                    key: None,
                    timestamp: 1_700_000_000 + n as u64,
                });
            }
        }
    }
    out
}

/// A FHIR server in front of the simulator that refuses a transaction
/// naming [`QUOTED`] with a message quoting the patient's name and phone
/// number (as servers quote what they refuse), and passes everything else
/// on. Returns its base URL.
fn quoting_fhir_proxy(upstream: String) -> String {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    async fn handle(
        req: HttpRequest,
        body: web::Bytes,
        upstream: web::Data<String>,
    ) -> HttpResponse {
        if body.windows(QUOTED.len()).any(|w| w == QUOTED.as_bytes()) {
            return HttpResponse::UnprocessableEntity()
                .content_type("application/fhir+json")
                .body(
                    serde_json::json!({
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "business-rule",
                            "diagnostics": format!("HAPI-0999: Patient '{QUOTED}' (phone {PHONE}) is a duplicate of «{NAME}»")}]
                    })
                    .to_string(),
                );
        }
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let mut forward = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(req.method().as_str().as_bytes()).expect("method"),
                format!("{}{path}", upstream.trim_end_matches('/')),
            )
            .body(body.to_vec());
        for (name, value) in req.headers() {
            if name != "host" && name != "content-length" {
                forward = forward.header(name.as_str(), value.as_bytes());
            }
        }
        match forward.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let media = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/fhir+json")
                    .to_owned();
                let retry_after = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let bytes = r.bytes().await.unwrap_or_default();
                let mut out = HttpResponse::build(
                    actix_web::http::StatusCode::from_u16(status).expect("status"),
                );
                out.content_type(media);
                if let Some(ra) = retry_after {
                    out.insert_header(("Retry-After", ra));
                }
                out.body(bytes)
            }
            Err(_) => HttpResponse::BadGateway().finish(),
        }
    }
    let data = web::Data::new(upstream);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .default_service(web::to(handle))
    })
    .workers(1)
    .bind(("127.0.0.1", 0))
    .expect("bind");
    let addr = server.addrs()[0];
    tokio::spawn(server.run());
    format!("http://{addr}")
}

/// Replaces names, phone numbers and national ids in a payload by markers.
fn mark(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, x) in map.iter_mut() {
                let key = k.to_ascii_lowercase();
                let leaf = key.rsplit('/').next().unwrap_or(&key).to_owned();
                if x.is_string() {
                    if leaf.contains("phone") {
                        *x = PHONE.into();
                    } else if leaf.contains("national_id") {
                        *x = NIN.into();
                    } else if (leaf == "name" || leaf.ends_with("_name")) && !leaf.contains("user")
                    {
                        *x = NAME.into();
                    }
                } else {
                    mark(x);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(mark),
        _ => {}
    }
}

fn leaks(text: &str) -> Vec<&'static str> {
    NEEDLES.into_iter().filter(|n| text.contains(n)).collect()
}

/// GETs `url` with `token`: it must answer, and without a marker.
async fn clean_get(http: &reqwest::Client, url: &str, token: &str) -> String {
    let r = http.get(url).bearer_auth(token).send().await.expect("get");
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let text = r.text().await.expect("text");
    assert_eq!(leaks(&text), Vec::<&str>::new(), "{url} leaks: {text}");
    text
}

fn faults(error_rate: f64) -> Faults {
    Faults {
        error_rate,
        throttle_rate: 0.1,
        retry_after_secs: Some(1),
        latency: Duration::ZERO,
        outage: None,
        seed: 5,
    }
}

/// Waits until nothing is pending, in flight, dirty or unpublished.
/// Fails only on a stall: when none of those counts changed for `stall`
/// (a loaded machine drains slowly, a stuck one does not drain at all),
/// or after 45 minutes in all.
async fn quiet(store: &Store, stall: Duration) {
    const CAP: Duration = Duration::from_secs(45 * 60);
    let start = Instant::now();
    // Outbox counts by state, dirty totals, unpublished statuses.
    type Counts = (Vec<(String, i64)>, i64, i64);
    let mut last: Option<Counts> = None;
    let mut changed = Instant::now();
    loop {
        let states: HashMap<String, i64> = store
            .outbox_states()
            .await
            .expect("outbox")
            .into_iter()
            .collect();
        let stats = store.stats().await.expect("stats");
        let busy = states.get("pending").copied().unwrap_or(0)
            + states.get("delivering").copied().unwrap_or(0);
        let unpublished = store.pending_status_count().await.expect("statuses");
        if busy == 0 && stats.dhis2_dirty == 0 && unpublished == 0 {
            return;
        }
        let mut sorted: Vec<(String, i64)> = states.clone().into_iter().collect();
        sorted.sort();
        let now = (sorted, stats.dhis2_dirty, unpublished);
        if last.as_ref() != Some(&now) {
            last = Some(now);
            changed = Instant::now();
        }
        assert!(
            changed.elapsed() < stall && start.elapsed() < CAP,
            "not quiet: nothing changed for {:?} ({:?} in all): outbox {states:?}, dirty totals {}, statuses {unpublished}",
            changed.elapsed(),
            start.elapsed(),
            stats.dhis2_dirty
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_personal_data_in_logs_metrics_errors_or_status() {
    kiungo::tls::install_crypto_provider();
    let iso = Isolated::new(Backend::Sqlite).await.expect("isolated");
    let dir = iso.dir.path();
    let mut sandbox_config = SandboxConfig::for_test();
    sandbox_config.fhir.faults = faults(0.3);
    sandbox_config.dhis2.faults = faults(0.3);
    let sandbox = Sandbox::start(sandbox_config).await.expect("sandbox");

    // Pack events with markers, and poison: bodies that are not JSON and
    // values that fail the mapping, both carrying markers.
    let mappings = load_mappings(&packs_dir()).expect("mappings");
    let w = generate_with(
        &mappings,
        400,
        7,
        Mix {
            duplicates: 0.05,
            edits: 0.1,
            poison: 0.05,
        },
    )
    .expect("workload");
    let mut messages: Vec<Message> = w
        .messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Ok(mut v) = serde_json::from_slice::<Value>(&m.body) {
                mark(&mut v);
                m.body = v.to_string().into_bytes();
            }
            m
        })
        .collect();
    let marked = messages
        .iter()
        .filter(|m| leaks(&String::from_utf8_lossy(&m.body)).len() > 1)
        .count();
    assert!(marked > 100, "only {marked} messages carry markers");
    let template = messages
        .iter()
        .find(|m| m.source == "cht" && m.kind == Kind::Original)
        .cloned()
        .expect("a cht event");
    let mut bad: Value = serde_json::from_slice(&template.body).expect("json");
    bad["_id"] = "privacy-bad-date".into();
    bad["fields"]["inputs"]["contact"]["date_of_birth"] = NAME.into();
    bad["fields"]["anc_visits"]["anc_visit_number"] = PHONE.into();
    for (i, body) in [
        bad.to_string().into_bytes(),
        format!("name={NAME}&phone={PHONE}").into_bytes(),
    ]
    .into_iter()
    .enumerate()
    {
        messages.push(Message {
            source: "cht".into(),
            message_id: format!("privacy-poison-{i}"),
            body,
            kind: Kind::Poison(kiungo_tests::workload::PoisonClass::MappingError),
            key: None,
            timestamp: template.timestamp + 10_000 + i as u64,
        });
    }

    // Every field of every fixture marked in turn, and one patient the
    // FHIR server refuses with a message quoting its name.
    let per_field = every_field_marked(&mappings);
    assert!(
        per_field.len() > 200,
        "only {} marked fields",
        per_field.len()
    );
    messages.extend(per_field.iter().cloned());
    let mut quoted: Value = serde_json::from_slice(&template.body).expect("json");
    quoted["_id"] = "privacy-quoted".into();
    let mut renamed = quoted.to_string();
    renamed = renamed.replace(NAME, QUOTED);
    assert!(renamed.contains(QUOTED), "the CHT template carries a name");
    messages.push(Message {
        source: "cht".into(),
        message_id: "privacy-quoted".into(),
        body: renamed.into_bytes(),
        kind: Kind::Original,
        key: None,
        timestamp: template.timestamp + 20_000,
    });
    let fhir_url = quoting_fhir_proxy(sandbox.fhir_url());

    // Kiungo: real binary, debug JSON logs, feedback to an exchange.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let exchange = format!("{}.status", iso.prefix);
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for(&iso.prefix, s)
        ));
    }
    std::fs::write(
        dir.join("pseudonym.key"),
        "kiungo-e2e-privacy-pseudonym-key-0123456789",
    )
    .expect("key");
    let yaml = format!(
        "mappings: {mappings}\npseudonym_key_file: pseudonym.key\nstore:\n  url: {store}\n\
         rabbitmq:\n  url: {amqp}\n  queues:\n{queues}\
         http:\n  listen: 127.0.0.1:{port}\n\
         admin:\n  tokens:\n    - {{name: privacy-viewer, role: viewer, sha256: {hash}}}\n\
         \x20   - {{name: privacy-kobo-app, role: app, sha256: {app_hash}, sources: [kobo]}}\n\
         feedback: {{exchange: {exchange}, interval: 100ms}}\n\
         destinations:\n\
         \x20 fhir:\n    server: {{base_url: '{fhir}', timeout: 10s, compress_requests: false}}\n\
         \x20   retry: {{base_delay: 50ms, max_delay: 1s, max_age: 10m}}\n\
         \x20   circuit: {{failures: 50, cool_down: 500ms}}\n\
         \x20 dhis2:\n    server:\n      base_url: '{dhis2}'\n      timeout: 10s\n\
         \x20     auth: {{type: basic, username: admin, password: {{file: pw}}}}\n\
         \x20   retry: {{base_delay: 50ms, max_delay: 1s, max_age: 10m}}\n\
         \x20   circuit: {{failures: 50, cool_down: 500ms}}\n    push_delay: 200ms\n",
        mappings = packs_dir().display(),
        store = iso.db.config.url,
        amqp = iso.vhost.url(),
        hash = token_hash_hex(VIEWER),
        app_hash = token_hash_hex(KOBO_APP),
        fhir = fhir_url,
        dhis2 = sandbox.dhis2_url(),
    );
    std::fs::write(dir.join("pw"), "district\n").expect("password");
    let config = dir.join("kiungo.yaml");
    std::fs::write(&config, yaml).expect("config");

    // An app's queue bound to the status exchange, before anything flows.
    let conn = lapin::Connection::connect(&iso.vhost.url(), lapin::ConnectionProperties::default())
        .await
        .expect("amqp");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("exchange");
    ch.queue_declare(
        "app-status".into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue");
    ch.queue_bind(
        "app-status".into(),
        exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");

    let log = dir.join("kiungo.log");
    let kiungo = KiungoProcess::start_with_env(
        &config,
        &log,
        &[("RUST_LOG", "debug"), ("KIUNGO_LOG_FORMAT", "json")],
    )
    .expect("start kiungo");
    wait_ready(port, kiungo_tests::harness::READY_DEADLINE)
        .await
        .expect("kiungo ready");
    publish(&iso.vhost.url(), &iso.prefix, &messages)
        .await
        .expect("publish");

    // The same over HTTP, with a traceparent, and a body that is not JSON.
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let over_http = messages
        .iter()
        .find(|m| m.source == "kobo" && m.kind == Kind::Original)
        .expect("a kobo event");
    let mut body: Value = serde_json::from_slice(&over_http.body).expect("json");
    body["_uuid"] = "privacy-http-event".into();
    let mut http_event = None;
    for b in [
        body.to_string().into_bytes(),
        format!("{{\"name\": \"{NAME}\", \"phone\": ").into_bytes(),
    ] {
        let r = http
            .post(format!("{base}/v1/events/kobo"))
            .bearer_auth(KOBO_APP)
            .header("Content-Type", "application/json")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .body(b)
            .send()
            .await
            .expect("post");
        let text = r.text().await.expect("body");
        assert_eq!(
            leaks(&text),
            Vec::<&str>::new(),
            "HTTP ingest answer: {text}"
        );
        if http_event.is_none() {
            let v: Value = serde_json::from_str(&text).expect("json answer");
            http_event = v["event_id"].as_str().map(str::to_owned);
        }
    }
    let http_event = http_event.expect("the HTTP event was accepted");

    // Everything consumed, delivered or parked, and told to the app.
    let store = Store::open(&iso.db.config).await.expect("store");
    let start = Instant::now();
    for s in SOURCES {
        loop {
            let (ready, unacked) = iso
                .vhost
                .queue_depth(&queue_for(&iso.prefix, s))
                .expect("depth");
            if ready + unacked == 0 {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "queue {s} not drained"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    quiet(&store, Duration::from_secs(180)).await;

    // Admin API, viewer routes.
    let mut seen = String::new();
    for path in [
        "/metrics".to_owned(),
        "/v1/summary".into(),
        "/v1/flows".into(),
        "/v1/destinations".into(),
        "/v1/mappings".into(),
        "/v1/outbox".into(),
        "/v1/audit".into(),
        "/v1/dead-letters?state=all&limit=10000".into(),
        "/v1/events/privacy-bad-date".into(),
        "/v1/events/privacy-poison-1".into(),
        format!("/v1/events/{http_event}"),
    ] {
        seen.push_str(&clean_get(&http, &format!("{base}{path}"), VIEWER).await);
    }
    assert!(seen.contains("kiungo_deliveries_total"), "metrics served");
    assert!(seen.contains("mapping_error"), "the bad event was parked");
    let letters = store
        .dead_letters(&DeadLetterFilter {
            limit: Some(100_000),
            ..DeadLetterFilter::default()
        })
        .await
        .expect("dead letters");
    assert!(
        letters.iter().any(|d| d.reason_code == "not_json"),
        "the non-JSON bodies were parked"
    );
    for d in &letters {
        let text = serde_json::to_string(d).expect("json");
        assert_eq!(
            leaks(&text),
            Vec::<&str>::new(),
            "dead letter {}: {text}",
            d.id
        );
        clean_get(&http, &format!("{base}/v1/dead-letters/{}", d.id), VIEWER).await;
    }

    // The per-field events, as a viewer and as the Kobo app (the app role
    // reads its own source's events).
    let events = store.events().await.expect("events");
    let marked_events: Vec<_> = events
        .iter()
        .filter(|e| e.event_id.contains("-pf"))
        .collect();
    assert!(
        marked_events.len() > 50,
        "only {} per-field events stored",
        marked_events.len()
    );
    for e in &marked_events {
        let mut callers = vec![VIEWER];
        if e.source == "kobo" {
            callers.push(KOBO_APP);
        }
        for token in callers {
            clean_get(&http, &format!("{base}/v1/events/{}", e.event_id), token).await;
        }
    }
    clean_get(&http, &format!("{base}/v1/events/{http_event}"), KOBO_APP).await;
    // The exits this run had to go through: a lookup miss (its value kept
    // for operators only) and the FHIR server's quoting refusal.
    let mut missed = Vec::new();
    for d in letters
        .iter()
        .filter(|d| d.reason.contains("the key is not in table"))
    {
        if let Some(detail) = store
            .dead_letter(d.id)
            .await
            .expect("letter")
            .and_then(|d| d.detail)
        {
            missed.push(detail);
        }
    }
    assert!(
        missed.iter().any(|m| m.contains(FIELD_MARKER)),
        "a marked lookup key was parked, and operators read it: {missed:?}"
    );
    let refused = letters
        .iter()
        .find(|d| d.stage == "fhir" && d.reason.contains("422"))
        .expect("the quoting FHIR refusal was parked");
    // Its bundle's last_error, in the event's status.
    let status = clean_get(&http, &format!("{base}/v1/events/privacy-quoted"), VIEWER).await;
    assert!(
        status.contains("is a duplicate of"),
        "last_error shown: {status}"
    );
    assert!(
        refused.reason.contains("is a duplicate of"),
        "{}",
        refused.reason
    );

    // Status messages to apps.
    let mut statuses = 0;
    while let Some(m) = ch
        .basic_get("app-status".into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        let text = String::from_utf8_lossy(&m.delivery.data).into_owned();
        assert_eq!(leaks(&text), Vec::<&str>::new(), "status message: {text}");
        statuses += 1;
    }
    assert!(statuses > 300, "only {statuses} status messages");

    // Logs: stop cleanly, then read every line.
    kiungo.stop().expect("stop");
    let logs = std::fs::read_to_string(&log).expect("log");
    let mut lines = 0;
    let mut traced = false;
    for line in logs.lines() {
        lines += 1;
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        traced |= line.contains("0af7651916cd43dd8448eb211c80319c");
        assert_eq!(leaks(line), Vec::<&str>::new(), "log line leaks: {v}");
    }
    assert!(lines > 50, "only {lines} log lines at debug level");
    assert!(traced, "the HTTP event's trace id appears in the logs");

    // Control: the markers are there to be leaked. They reached the FHIR
    // server (patient names; the packs map no phone numbers), and the
    // parked payloads hold them for operators.
    let resources = sandbox.fhir_resources().to_string();
    assert!(
        resources.contains(NAME),
        "the markers were not delivered: the test would not see a leak"
    );
    let mut in_payloads = String::new();
    for d in letters.iter().filter(|d| d.stage == "ingest") {
        if let Some(p) = store
            .dead_letter(d.id)
            .await
            .expect("letter")
            .and_then(|d| d.payload)
        {
            in_payloads.push_str(&String::from_utf8_lossy(&p));
        }
    }
    assert!(
        in_payloads.contains(PHONE) && in_payloads.contains(NAME),
        "parked payloads keep the markers for operators"
    );
    let _ = conn.close(200, "done".into()).await;
}
