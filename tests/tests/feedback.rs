//! Status messages back to apps, against the real RabbitMQ (a vhost per
//! test) and the FHIR simulator: Kiungo consumes the apps' queues,
//! delivers to FHIR and publishes, on the `feedback.exchange`, one
//! `delivered` message per bundle the FHIR server took and one `parked`
//! message per message it could not take; the store marks them only
//! once the broker confirmed them, so nothing repeats once they are out
//! and nothing is lost when the broker drops the connection mid-run.
//! Both store backends.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::{Backend, DeadLetterFilter};
use kiungo_tests::harness::{Isolated, Publisher, queue_for};
use kiungo_tests::workload::{Kind, Message, packs_dir};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::{Value, json};

/// Values of the fixtures that identify people: never in a status message.
const PERSONAL: [&str; 4] = [
    "Aminata",
    "Test-Kamara",
    "+23276000222",
    "bf3b7049-219d-44ef-a2a4-1647b75157e1",
];

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(packs_dir().join(rel)).expect("fixture")
}

fn message(source: &str, message_id: &str, body: Vec<u8>) -> Message {
    Message {
        source: source.to_owned(),
        message_id: message_id.to_owned(),
        body,
        kind: Kind::Original,
        key: None,
        timestamp: 1_710_000_000,
    }
}

/// One status message as the test's queue received it.
#[derive(Debug, Clone)]
struct Received {
    routing_key: String,
    message_id: Option<String>,
    app_id: Option<String>,
    persistent: bool,
    body: Value,
}

/// A durable queue bound with `#` to the status exchange, consumed with
/// manual acks and reconnects (the outage test closes every connection
/// of the vhost, this one's too; unacked messages come again).
struct StatusQueue {
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

async fn declare(url: &str, exchange: &str, queue: &str) -> lapin::Result<lapin::Channel> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    // As Kiungo declares it: durable topic.
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(ch)
}

async fn consume(
    ch: lapin::Channel,
    queue: &str,
    into: &Mutex<Vec<Received>>,
) -> lapin::Result<()> {
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "feedback-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while let Some(d) = consumer.next().await {
        let d = d?;
        let body = serde_json::from_slice(&d.data).unwrap_or_else(
            |e| json!({"not_json": e.to_string(), "raw": String::from_utf8_lossy(&d.data)}),
        );
        let r = Received {
            routing_key: d.routing_key.as_str().to_owned(),
            message_id: d
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            app_id: d
                .properties
                .app_id()
                .as_ref()
                .map(|m| m.as_str().to_owned()),
            persistent: *d.properties.delivery_mode() == Some(2),
            body,
        };
        // Acked after it is recorded: a drop before the ack redelivers.
        into.lock().expect("lock").push(r);
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    Ok(())
}

impl StatusQueue {
    async fn start(url: String, exchange: String, queue: String) -> Self {
        let first = declare(&url, &exchange, &queue).await.expect("declare");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut ch = Some(first);
            loop {
                let channel = match ch.take() {
                    Some(c) => Ok(c),
                    None => declare(&url, &exchange, &queue).await,
                };
                if let Ok(c) = channel {
                    let _ = consume(c, &queue, &sink).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { received, task }
    }

    fn snapshot(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for StatusQueue {
    fn drop(&mut self) {
        self.task.abort();
    }
}

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

/// A TCP proxy for the feedback connection only (`feedback.url`), so
/// that a cut can land while status messages wait for their confirms:
/// `hold` drops what the client sends (publishes that never reach the
/// broker, as on a dead network path), `cut` closes every proxied
/// connection. Plain threads: nothing here needs the runtime.
struct Proxy {
    port: u16,
    state: Arc<ProxyState>,
}

#[derive(Default)]
struct ProxyState {
    hold: std::sync::atomic::AtomicBool,
    held_bytes: std::sync::atomic::AtomicUsize,
    connections: Mutex<Vec<std::net::TcpStream>>,
}

impl Proxy {
    fn start(upstream: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ProxyState::default());
        let st = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(broker) = std::net::TcpStream::connect(upstream) else {
                    continue;
                };
                if let (Ok(c), Ok(b)) = (client.try_clone(), broker.try_clone()) {
                    st.connections.lock().expect("lock").extend([c, b]);
                }
                for (from, to, held) in [(&client, &broker, true), (&broker, &client, false)] {
                    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let st = st.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        use std::sync::atomic::Ordering;
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if held && st.hold.load(Ordering::SeqCst) {
                                st.held_bytes.fetch_add(n, Ordering::SeqCst);
                                continue;
                            }
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Self { port, state }
    }

    fn hold(&self, on: bool) {
        self.state
            .hold
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    fn held_bytes(&self) -> usize {
        self.state
            .held_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every connection made so far.
    fn cut(&self) {
        for s in self.state.connections.lock().expect("lock").drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A running Kiungo with a FHIR simulator, feedback on, and the test's
/// status queue.
struct Rig {
    iso: Isolated,
    proxy: Option<Proxy>,
    sandbox: Sandbox,
    app: Application,
    statuses: StatusQueue,
}

async fn rig(backend: Backend, proxied: bool) -> Rig {
    kiungo::tls::install_crypto_provider();
    let iso = Isolated::new(backend).await.expect("isolated");
    let proxy = proxied.then(|| Proxy::start("127.0.0.1:5672"));
    let feedback_url = match &proxy {
        Some(p) => format!(
            "\n  url: 'amqp://guest:guest@127.0.0.1:{}/{}'",
            p.port, iso.vhost.name
        ),
        None => String::new(),
    };
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let exchange = format!("{}.status", iso.prefix);
    let statuses = StatusQueue::start(
        iso.vhost.url(),
        exchange.clone(),
        format!("{}.status-test", iso.prefix),
    )
    .await;
    let yaml = format!(
        "mappings: '{mappings}'\nstore:\n  url: '{store}'\n\
         rabbitmq:\n  url: '{amqp}'\n  reconnect_min: 100ms\n  reconnect_max: 1s\n  queues:\n\
         \x20   - {{name: {q_cht}, source: cht}}\n\
         \x20   - {{name: {q_commcare}, source: commcare}}\n\
         http:\n  listen: 127.0.0.1:0\n\
         ingest:\n  max_wait: 5ms\n\
         destinations:\n  fhir:\n    server: {{base_url: '{fhir}', timeout: 5s}}\n\
         \x20   retry: {{base_delay: 100ms, max_delay: 1s, max_age: 10m}}\n    lease: 30s\n\
         feedback:\n  exchange: '{exchange}'\n  interval: 100ms{feedback_url}\n",
        mappings = packs_dir().display(),
        store = iso.db.config.url,
        amqp = iso.vhost.url(),
        q_cht = queue_for(&iso.prefix, "cht"),
        q_commcare = queue_for(&iso.prefix, "commcare"),
        fhir = sandbox.fhir_url(),
    );
    let file = iso.dir.path().join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    let app = Application::build(Config::load(&file).expect("config loads"))
        .await
        .expect("start");
    Rig {
        iso,
        proxy,
        sandbox,
        app,
        statuses,
    }
}

impl Rig {
    async fn publish(&self, messages: &[Message]) {
        let p = Publisher::connect(&self.iso.vhost.url(), &self.iso.prefix)
            .await
            .expect("publisher");
        p.send(messages).await.expect("publish");
        p.close().await.expect("close");
    }

    /// The open dead letter of each parked message id.
    async fn dead_letter_ids(&self) -> BTreeMap<String, i64> {
        self.app
            .store()
            .dead_letters(&DeadLetterFilter {
                limit: Some(10_000),
                ..DeadLetterFilter::default()
            })
            .await
            .expect("dead letters")
            .into_iter()
            .filter_map(|d| Some((d.message_id?, d.id)))
            .collect()
    }

    async fn stop(self) {
        self.app.run_until(async {}).await;
        self.sandbox.stop().await;
        drop(self.statuses);
        drop(self.iso);
    }
}

/// What the status messages must say, by what they are about: the event
/// id of a delivered event, the message id of a parked message.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Expect {
    Delivered {
        source: &'static str,
        event_id: String,
        mapping: &'static str,
    },
    Parked {
        message_id: String,
        reason_code: &'static str,
    },
}

/// Checks one status message against the contract; returns what it is
/// about.
fn check(r: &Received, dead_letters: &BTreeMap<String, i64>) -> Result<Expect, String> {
    let b = &r.body;
    let s = |k: &str| b[k].as_str().map(str::to_owned);
    let status_id = s("status_id").ok_or(format!("no status_id: {b}"))?;
    if r.message_id.as_deref() != Some(status_id.as_str()) {
        return Err(format!(
            "AMQP message_id {:?} is not the status_id: {b}",
            r.message_id
        ));
    }
    if !r.persistent || r.app_id.as_deref() != Some("kiungo") {
        return Err(format!("not persistent or app_id not kiungo: {r:?}"));
    }
    if b["at_ms"].as_i64().is_none_or(|t| t <= 0) {
        return Err(format!("no at_ms: {b}"));
    }
    let text = b.to_string();
    if let Some(p) = PERSONAL.iter().find(|p| text.contains(**p)) {
        return Err(format!("quotes `{p}` from the payload: {b}"));
    }
    let source = s("source").unwrap_or_default();
    match (s("destination").as_deref(), s("status").as_deref()) {
        (Some("fhir"), Some("delivered")) => {
            let want_key = format!("{source}.fhir.delivered");
            if r.routing_key != want_key {
                return Err(format!("routing key {} for {b}", r.routing_key));
            }
            // `fhir:<outbox id>:<delivered at>`: a bundle delivered again
            // after a replay is a new status.
            let parts: Vec<&str> = status_id.split(':').collect();
            let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
            if !(parts.len() == 3 && parts[0] == "fhir" && numeric(parts[1]) && numeric(parts[2])) {
                return Err(format!("status_id {status_id}"));
            }
            if b["at_ms"].as_i64().map(|t| t.to_string()).as_deref() != Some(parts[2]) {
                return Err(format!("status_id {status_id} and at_ms disagree: {b}"));
            }
            if !(b["reason_code"].is_null() && b["dead_letter_id"].is_null()) {
                return Err(format!("a delivered status with a reason: {b}"));
            }
            let (source, mapping) = match source.as_str() {
                "cht" => ("cht", "cht-anc-visit"),
                "commcare" => ("commcare", "commcare-immunization"),
                other => return Err(format!("source {other}: {b}")),
            };
            if s("mapping").as_deref() != Some(mapping) {
                return Err(format!("mapping: {b}"));
            }
            Ok(Expect::Delivered {
                source,
                event_id: s("event_id").ok_or(format!("no event_id: {b}"))?,
                mapping,
            })
        }
        (Some("ingest"), Some("parked")) => {
            if r.routing_key != format!("{source}.ingest.parked") {
                return Err(format!("routing key {} for {b}", r.routing_key));
            }
            let message_id = s("message_id").ok_or(format!("no message_id: {b}"))?;
            let id = b["dead_letter_id"]
                .as_i64()
                .ok_or(format!("no dead_letter_id: {b}"))?;
            if dead_letters.get(&message_id) != Some(&id) {
                return Err(format!(
                    "dead_letter_id {id} is not the dead letter of {message_id} ({dead_letters:?})"
                ));
            }
            if status_id != format!("dead-letter:{id}:1") {
                return Err(format!("status_id {status_id}"));
            }
            if s("reason").is_none_or(|r| r.is_empty()) {
                return Err(format!("no reason: {b}"));
            }
            // The app finds its submission by an id it knows.
            if b["event_id"].is_null() {
                return Err(format!("no event_id: {b}"));
            }
            let reason_code = match s("reason_code").as_deref() {
                Some("mapping_error") => "mapping_error",
                Some("not_json") => "not_json",
                other => return Err(format!("reason_code {other:?}: {b}")),
            };
            Ok(Expect::Parked {
                message_id,
                reason_code,
            })
        }
        _ => Err(format!("unexpected status message {} {b}", r.routing_key)),
    }
}

/// Waits until every expected status arrived (at least once) and the store
/// has nothing left to publish; returns the messages.
async fn until_all_arrived(rig: &Rig, want: &BTreeSet<Expect>, timeout: Duration) -> Vec<Received> {
    eventually("every status message", timeout, || async {
        let got = rig.statuses.snapshot();
        let dead_letters = rig.dead_letter_ids().await;
        let mut seen = BTreeSet::new();
        for r in &got {
            match check(r, &dead_letters) {
                Ok(e) => {
                    seen.insert(e);
                }
                // Its dead letter may not be visible yet: look again.
                Err(e) => return Err(e),
            }
        }
        let missing: Vec<_> = want.difference(&seen).collect();
        let extra: Vec<_> = seen.difference(want).collect();
        if !extra.is_empty() {
            return Err(format!("unexpected statuses: {extra:?}"));
        }
        if !missing.is_empty() {
            return Err(format!(
                "{} missing, e.g. {:?}",
                missing.len(),
                &missing[..missing.len().min(3)]
            ));
        }
        let pending = rig
            .app
            .store()
            .pending_status_count()
            .await
            .map_err(|e| e.to_string())?;
        if pending > 0 {
            return Err(format!("{pending} statuses not marked published"));
        }
        Ok(got)
    })
    .await
}

fn metric(name_and_labels: &str) -> Option<f64> {
    kiungo::metrics::metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
}

/// Good events of two sources are delivered and told `delivered`; a
/// mapping error and a non-JSON message are told `parked` with their dead
/// letter; once the broker confirmed them nothing is published again.
async fn delivered_and_parked_statuses_once(backend: Backend) {
    let rig = rig(backend, false).await;
    let good = [
        (
            "cht",
            "cht-anc/fixtures/anc-visit-1-facility.json",
            "0b3a8f6e-1d2c-4e5f-9a7b-6c5d4e3f2a10",
        ),
        (
            "cht",
            "cht-anc/fixtures/anc-visit-3-outreach-no-vitals.json",
            "6e2d1c0b-9a8f-4e7d-b6c5-a4b3c2d1e0f9",
        ),
        (
            "commcare",
            "commcare-immunization/fixtures/newborn-fixed-bcg-opv0.json",
            "a1c3e5f7-2b4d-4e6f-8a0c-1e3f5a7c9b2d",
        ),
        (
            "commcare",
            "commcare-immunization/fixtures/infant-outreach-penta1-opv1-pcv1.json",
            "c7e9a1b3-5d2f-4a6c-8e0b-3d5f7a9c1e4b",
        ),
    ];
    let mut messages = Vec::new();
    let mut want = BTreeSet::new();
    for (i, (source, file, event_id)) in good.iter().enumerate() {
        messages.push(message(source, &format!("good-{i}"), fixture(file)));
        want.insert(Expect::Delivered {
            source,
            event_id: (*event_id).to_owned(),
            mapping: if *source == "cht" {
                "cht-anc-visit"
            } else {
                "commcare-immunization"
            },
        });
    }
    messages.push(message(
        "cht",
        "bad-mapping",
        fixture("cht-anc/fixtures/anc-visit-unknown-facility.json"),
    ));
    messages.push(message("cht", "bad-json", b"{\"_id\": \"half".to_vec()));
    want.insert(Expect::Parked {
        message_id: "bad-mapping".into(),
        reason_code: "mapping_error",
    });
    want.insert(Expect::Parked {
        message_id: "bad-json".into(),
        reason_code: "not_json",
    });
    rig.publish(&messages).await;

    let got = until_all_arrived(&rig, &want, Duration::from_secs(20)).await;
    // Marked published: a few rounds later nothing came again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let after = rig.statuses.snapshot();
    let ids: Vec<String> = after
        .iter()
        .map(|r| r.body["status_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let distinct: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(
        (after.len(), distinct.len()),
        (want.len(), want.len()),
        "each status exactly once: {ids:?}"
    );
    assert_eq!(
        after.len(),
        got.len(),
        "nothing published after they were marked"
    );
    assert_eq!(
        rig.app.store().pending_status_count().await.expect("count"),
        0
    );
    // The mapping error names the event the app knows (its `_id`); the
    // non-JSON message has none, and the app's message id stands in.
    let event_of = |message_id: &str| {
        after
            .iter()
            .find(|r| r.body["message_id"] == message_id)
            .map(|r| r.body["event_id"].clone())
    };
    assert_eq!(
        event_of("bad-mapping"),
        Some(json!("9c8b7a6f-5e4d-4c3b-a2a1-0f9e8d7c6b5a"))
    );
    assert_eq!(event_of("bad-json"), Some(json!("bad-json")));
    assert_eq!(
        metric("kiungo_feedback_messages_total{result=\"published\"}"),
        Some(want.len() as f64)
    );
    rig.stop().await;
}

fn visit_variant(n: usize) -> (String, Vec<u8>) {
    let mut v: Value =
        serde_json::from_slice(&fixture("cht-anc/fixtures/anc-visit-1-facility.json"))
            .expect("json");
    let id = format!("outage-visit-{n:04}-{}", uuid::Uuid::new_v4().simple());
    v["_id"] = json!(id);
    let patient = uuid::Uuid::new_v4().to_string();
    v["fields"]["patient_uuid"] = json!(patient);
    v["fields"]["inputs"]["contact"]["_id"] = json!(patient);
    (id, serde_json::to_vec(&v).expect("bytes"))
}

/// How long the outage test waits for each step: generous, so that a
/// machine busy with other work (a full suite beside a build) only makes
/// it slower; each wait returns as soon as its condition holds.
const SLOW_MACHINE: Duration = Duration::from_secs(90);

/// The feedback connection is cut while status messages wait for their
/// confirms, and later the broker drops every connection of the vhost
/// again while statuses flow: every status still arrives (at least once),
/// and the store ends with nothing unpublished.
///
/// The feedback connection runs through [`Proxy`]: while it holds, the
/// publishes of a round never reach the broker and no confirm comes back;
/// then `rabbitmqctl close_all_connections` closes the connection at the
/// broker and the proxy cuts the client's side. A publisher that marked
/// what it had sent (rather than what the broker confirmed) would lose
/// exactly those statuses.
async fn no_status_lost_when_the_broker_drops_connections(backend: Backend) {
    let rig = rig(backend, true).await;
    let proxy = rig.proxy.as_ref().expect("proxy");
    let mut want = BTreeSet::new();
    let mut batches: Vec<Vec<Message>> = Vec::new();
    for b in 0..3 {
        let mut batch = Vec::new();
        for i in 0..60 {
            let (id, body) = visit_variant(b * 100 + i);
            batch.push(message("cht", &format!("outage-{b}-{i}"), body));
            want.insert(Expect::Delivered {
                source: "cht",
                event_id: id,
                mapping: "cht-anc-visit",
            });
        }
        for i in 0..2 {
            let id = format!("outage-bad-{b}-{i}");
            batch.push(message(
                "cht",
                &id,
                format!("not json {b} {i}").into_bytes(),
            ));
            want.insert(Expect::Parked {
                message_id: id,
                reason_code: "not_json",
            });
        }
        batches.push(batch);
    }
    let started = Instant::now();
    let failed = || metric("kiungo_feedback_messages_total{result=\"failed\"}").unwrap_or(0.0);

    // Batch 1 flows normally.
    rig.publish(&batches[0]).await;
    eventually("batch 1 statuses", SLOW_MACHINE, || async {
        let n = rig.statuses.snapshot().len();
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} received"))
        }
    })
    .await;
    let before_cut = rig.statuses.snapshot().len();
    let failed_before = failed();

    // Batch 2 while the path to the broker swallows the publishes.
    proxy.hold(true);
    rig.publish(&batches[1]).await;
    // A round's publishes (a status message is a few hundred bytes of
    // frames; a heartbeat 8): the round now waits for confirms that
    // cannot come.
    eventually("publishes in flight", SLOW_MACHINE, || async {
        let held = proxy.held_bytes();
        if held >= 300 {
            Ok(())
        } else {
            Err(format!("{held} bytes held"))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Published, unconfirmed: nothing may count as sent yet.
    assert!(
        rig.app.store().pending_status_count().await.expect("count") > 0,
        "statuses whose publishes never reached the broker are still pending"
    );
    rig.iso
        .vhost
        .close_connections()
        .expect("close connections");
    proxy.cut();
    proxy.hold(false);
    eventually("the cut round fails", SLOW_MACHINE, || async {
        let f = failed();
        if f > failed_before {
            Ok(())
        } else {
            Err(format!("failed rounds: {f}"))
        }
    })
    .await;
    assert!(
        rig.statuses.snapshot().len() >= before_cut,
        "nothing taken back from the status queue"
    );

    // Batch 3, and every connection dropped once more while it flows.
    rig.publish(&batches[2]).await;
    let seen = rig.statuses.snapshot().len();
    eventually("batch 3 statuses flowing", SLOW_MACHINE, || async {
        let n = rig.statuses.snapshot().len();
        if n >= seen + 10 {
            Ok(())
        } else {
            Err(format!("{n} received"))
        }
    })
    .await;
    rig.iso
        .vhost
        .close_connections()
        .expect("close connections");

    let got = until_all_arrived(&rig, &want, SLOW_MACHINE).await;
    // Repeats are allowed (at least once), but a repeat is the same message.
    let mut by_id: BTreeMap<String, &Value> = BTreeMap::new();
    for r in &got {
        let id = r.body["status_id"].as_str().unwrap_or_default().to_owned();
        if let Some(first) = by_id.get(&id) {
            assert_eq!(*first, &r.body, "a repeat of {id} differs");
        } else {
            by_id.insert(id, &r.body);
        }
    }
    assert_eq!(by_id.len(), want.len(), "one status id per outcome");
    eprintln!(
        "{} statuses, {} messages received in {:?}; {} bytes of publishes swallowed; \
         feedback rounds failed: {}",
        want.len(),
        got.len(),
        started.elapsed(),
        proxy.held_bytes(),
        failed()
    );
    rig.stop().await;
}

kiungo::on_both_backends!(
    delivered_and_parked_statuses_once,
    no_status_lost_when_the_broker_drops_connections,
);
