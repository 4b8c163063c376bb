//! End-to-end: AMQP messages the client library cannot read, or that are
//! far over the size limit, against the real RabbitMQ (issue 13). Frames
//! `lapin` cannot publish are sent with Kiungo's tolerant raw client.
//!
//! - Properties that are not UTF-8 (`message_id`, a header key,
//!   `content_type`) and a header table nested 18,000 deep: each is parked
//!   as `amqp_unparseable` after the quorum queue's delivery limit, the
//!   process survives, another queue keeps flowing, SIGTERM completes.
//! - On a classic queue (no delivery limit) the same message wedges the
//!   queue: `/healthz` fails, the other queue keeps flowing, SIGTERM
//!   completes.
//! - A 10 MiB message over a 64 KiB limit is parked with its size and
//!   its first 16 KiB only.
//! - A queue that exists as classic while the config says quorum: the
//!   error names the queue and the way out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::store::{Backend, DeadLetter, DeadLetterFilter, Store, StoreConfig};
use kiungo_connectors::rabbitmq::raw::{FieldTableWriter, RawConnection};
use kiungo_tests::harness::{Isolated, KiungoProcess, wait_ready};
use kiungo_tests::workload::packs_dir;

const KEY: &str = "kiungo-e2e-test-pseudonym-key-0123456789abcdef";
const DEADLINE: Duration = Duration::from_secs(180);

const CONTENT_TYPE: u16 = 0x8000;
const HEADERS: u16 = 0x2000;
const DELIVERY_MODE: u16 = 0x1000;
const MESSAGE_ID: u16 = 0x0080;

fn fixture(pack: &str, name: &str) -> Vec<u8> {
    std::fs::read(packs_dir().join(pack).join("fixtures").join(name)).expect("fixture")
}

/// A config with queue `<prefix>.cht` (source cht) and `<prefix>.commcare`
/// (source commcare), `queue_extra` added to the cht queue's entry.
fn write_config(
    dir: &Path,
    store: &StoreConfig,
    amqp_url: &str,
    prefix: &str,
    queue_extra: &str,
    port: u16,
) -> PathBuf {
    let key_file = dir.join("pseudonym.key");
    std::fs::write(&key_file, KEY).expect("key file");
    let yaml = format!(
        "mappings: {mappings}\n\
         pseudonym_key_file: {key}\n\
         store:\n  url: {url}\n\
         rabbitmq:\n  url: {amqp_url}\n  prefetch: 50\n  max_message_bytes: 65536\n  reconnect_min: 100ms\n  reconnect_max: 1s\n  queues:\n\
         \x20   - {{name: {prefix}.cht, source: cht{queue_extra}}}\n\
         \x20   - {{name: {prefix}.commcare, source: commcare}}\n\
         http:\n  listen: 127.0.0.1:{port}\n\
         ingest:\n  max_events: 100\n  max_wait: 5ms\n",
        mappings = packs_dir().display(),
        key = key_file.display(),
        url = store.url,
    );
    let file = dir.join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    file
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `GET path` on 127.0.0.1:port: the status code.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace().nth(1)?.parse().ok()
}

/// A message with these properties, published raw to `queue`.
async fn publish_raw(url: &str, queue: &str, flags: u16, props: &FieldTableWriter, body: &[u8]) {
    let mut c = RawConnection::connect(url, "kiungo-test-raw")
        .await
        .expect("raw connect");
    c.publish_raw("", queue, flags, props.bytes(), body)
        .await
        .expect("raw publish");
    c.close().await;
}

/// A well-formed persistent message with `message_id`.
async fn publish_ok(url: &str, queue: &str, id: &str, body: &[u8]) {
    let props = FieldTableWriter::new().raw(&[2]).shortstr(id.as_bytes());
    publish_raw(url, queue, DELIVERY_MODE | MESSAGE_ID, &props, body).await;
}

/// `body` with `n` spaces after it: the same event, another payload (dead
/// letters are fingerprinted by payload).
fn variant(body: &[u8], n: usize) -> Vec<u8> {
    let mut b = body.to_vec();
    b.resize(body.len() + n, b' ');
    b
}

/// The four messages of the issue that `lapin` cannot read, bodies
/// `variant(body, 0..4)` in this order.
async fn publish_unreadable(url: &str, queue: &str, body: &[u8]) {
    // message_id not UTF-8
    let p = FieldTableWriter::new().raw(&[2]).shortstr(b"bad-\xff-id");
    publish_raw(
        url,
        queue,
        DELIVERY_MODE | MESSAGE_ID,
        &p,
        &variant(body, 0),
    )
    .await;
    // a header key not UTF-8
    let headers = FieldTableWriter::new().entry_str(b"k\xffey", b"v");
    let p = FieldTableWriter::new()
        .longstr(headers.bytes())
        .raw(&[2])
        .shortstr(b"bad-header-key");
    publish_raw(
        url,
        queue,
        HEADERS | DELIVERY_MODE | MESSAGE_ID,
        &p,
        &variant(body, 1),
    )
    .await;
    // content_type not UTF-8
    let p = FieldTableWriter::new()
        .shortstr(b"application/\xfejson")
        .raw(&[2])
        .shortstr(b"bad-content-type");
    publish_raw(
        url,
        queue,
        CONTENT_TYPE | DELIVERY_MODE | MESSAGE_ID,
        &p,
        &variant(body, 2),
    )
    .await;
    // a header table nested 18,000 deep (126 KB, within a 128 KiB frame)
    let p = FieldTableWriter::new()
        .longstr(FieldTableWriter::nested(18_000).bytes())
        .raw(&[2])
        .shortstr(b"deep-headers");
    publish_raw(
        url,
        queue,
        HEADERS | DELIVERY_MODE | MESSAGE_ID,
        &p,
        &variant(body, 3),
    )
    .await;
}

/// The dead letters with this reason, payloads included.
async fn dead_letters(store: &Store, reason: &str) -> Vec<DeadLetter> {
    let list = store
        .dead_letters(&DeadLetterFilter {
            reason_code: Some(reason.into()),
            limit: Some(1000),
            ..DeadLetterFilter::default()
        })
        .await
        .unwrap_or_default();
    let mut out = Vec::new();
    for d in list {
        if let Ok(Some(full)) = store.dead_letter(d.id).await {
            out.push(full);
        }
    }
    out
}

async fn live_events(store: &Store, source: &str) -> usize {
    store
        .events()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|e| e.source == source && e.state == "live")
        .count()
}

thread_local! {
    static LOG: std::cell::RefCell<Option<PathBuf>> = const { std::cell::RefCell::new(None) };
}

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        if start.elapsed() > DEADLINE {
            let log = LOG
                .with(|l| l.borrow().clone())
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "after {DEADLINE:?}: {what}\nkiungo log:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// SIGTERM, and the process exits cleanly within a minute.
fn stop_within_a_minute(kiungo: KiungoProcess) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(kiungo.stop().map(|s| s.success()));
    });
    let stopped = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("kiungo did not stop within 60 s of SIGTERM");
    assert!(stopped.expect("wait"), "kiungo exited with an error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_messages_are_parked_and_other_queues_flow() {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(Backend::Sqlite).await.expect("isolated");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        ", delivery_limit: 3",
        port,
    );
    let log = dir.path().join("kiungo.log");
    LOG.with(|l| *l.borrow_mut() = Some(log.clone()));
    let kiungo = KiungoProcess::start(&config, &log).expect("start");
    wait_ready(port, DEADLINE).await.expect("ready");
    let store = Store::open(&db.config).await.expect("store");
    let cht = format!("{prefix}.cht");
    let commcare = format!("{prefix}.commcare");
    let visit = fixture("cht-anc", "anc-visit-1-facility.json");
    publish_unreadable(&vhost.url(), &cht, &visit).await;
    // The other queue flows while the cht queue's connection keeps
    // breaking.
    publish_ok(
        &vhost.url(),
        &commcare,
        "cc-1",
        &fixture("commcare-immunization", "newborn-fixed-bcg-opv0.json"),
    )
    .await;
    until("the commcare event is stored", || async {
        live_events(&store, "commcare").await == 1
    })
    .await;
    until("four amqp_unparseable dead letters", || async {
        dead_letters(&store, "amqp_unparseable").await.len() == 4
    })
    .await;
    let parked = dead_letters(&store, "amqp_unparseable").await;
    let mut ids: Vec<String> = parked
        .iter()
        .map(|d| d.message_id.clone().unwrap_or_default())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "bad-content-type",
            "bad-header-key",
            "bad-\u{fffd}-id",
            "deep-headers"
        ]
    );
    for d in &parked {
        assert_eq!(d.source, "cht");
        assert!(
            (0..4).any(|n| d.payload.as_deref() == Some(variant(&visit, n).as_slice())),
            "{}",
            d.reason
        );
        assert!(
            d.reason.contains("cannot read") || d.reason.contains("refused"),
            "{}",
            d.reason
        );
    }
    let deep = parked
        .iter()
        .find(|d| d.message_id.as_deref() == Some("deep-headers"))
        .expect("deep");
    assert!(deep.reason.contains("18001 levels"), "{}", deep.reason);
    // After the poison, the cht queue flows again.
    publish_ok(&vhost.url(), &cht, "cht-1", &visit).await;
    until("the cht event is stored", || async {
        live_events(&store, "cht").await == 1
    })
    .await;
    until("queues and parking queue empty", || async {
        [cht.clone(), format!("{cht}.overflow"), commcare.clone()]
            .iter()
            .all(|q| vhost.queue_depth(q).ok() == Some((0, 0)))
    })
    .await;
    assert_eq!(http_status(port, "/healthz"), Some(200));
    stop_within_a_minute(kiungo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_on_a_classic_queue_fails_healthz() {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(Backend::Sqlite).await.expect("isolated");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        ", kind: classic",
        port,
    );
    let log = dir.path().join("kiungo.log");
    LOG.with(|l| *l.borrow_mut() = Some(log.clone()));
    let kiungo = KiungoProcess::start(&config, &log).expect("start");
    wait_ready(port, DEADLINE).await.expect("ready");
    assert_eq!(http_status(port, "/healthz"), Some(200));
    let store = Store::open(&db.config).await.expect("store");
    let cht = format!("{prefix}.cht");
    let p = FieldTableWriter::new().raw(&[2]).shortstr(b"bad-\xff-id");
    publish_raw(
        &vhost.url(),
        &cht,
        DELIVERY_MODE | MESSAGE_ID,
        &p,
        &fixture("cht-anc", "anc-visit-1-facility.json"),
    )
    .await;
    until("/healthz fails", || async {
        http_status(port, "/healthz") == Some(503)
    })
    .await;
    publish_ok(
        &vhost.url(),
        &format!("{prefix}.commcare"),
        "cc-1",
        &fixture("commcare-immunization", "newborn-fixed-bcg-opv0.json"),
    )
    .await;
    until("the commcare event is stored", || async {
        live_events(&store, "commcare").await == 1
    })
    .await;
    stop_within_a_minute(kiungo);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_keeps_a_prefix_and_its_size() {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(Backend::Sqlite).await.expect("isolated");
    let config = Config::load(&write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        "",
        0,
    ))
    .expect("config");
    let app = Application::build(config).await.expect("start");
    until("consuming", || async { app.source_state().connected }).await;
    let size = 10 * 1024 * 1024;
    let mut body = b"{\"big\": \"".to_vec();
    body.resize(size - 2, b'x');
    body.extend_from_slice(b"\"}");
    publish_ok(&vhost.url(), &format!("{prefix}.cht"), "big-1", &body).await;
    until("a too_large dead letter", || async {
        dead_letters(app.store(), "too_large").await.len() == 1
    })
    .await;
    let d = dead_letters(app.store(), "too_large").await.remove(0);
    let payload = d.payload.expect("payload");
    assert_eq!(payload.len(), 16 * 1024, "only the prefix is stored");
    assert_eq!(payload.as_slice(), &body[..16 * 1024]);
    assert!(d.reason.contains(&format!("{size} bytes")), "{}", d.reason);
    app.run_until(async {}).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_classic_queue_is_named_with_the_way_out() {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(Backend::Sqlite).await.expect("isolated");
    let mut c = RawConnection::connect(&vhost.url(), "kiungo-test-raw")
        .await
        .expect("raw connect");
    c.declare_queue(&format!("{prefix}.cht"), &[])
        .await
        .expect("declare classic");
    c.close().await;
    let config = Config::load(&write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        "",
        0,
    ))
    .expect("config");
    let app = Application::build(config).await.expect("start");
    let queue = format!("{prefix}.cht");
    until("the declaration error is reported", || async {
        app.source_state()
            .queues
            .get(&queue)
            .and_then(|q| q.last_error.clone())
            .is_some_and(|e| e.contains("PRECONDITION_FAILED") || e.contains("inequivalent"))
    })
    .await;
    let state = app.source_state();
    let error = state.queues[&queue].last_error.clone().unwrap_or_default();
    assert!(
        error.contains(&queue)
            && error.contains("kind: classic")
            && error.contains("docs/deploy.md"),
        "{error}"
    );
    // The other queue is consumed all the same.
    let commcare = format!("{prefix}.commcare");
    until("the other queue is consumed", || async {
        app.source_state()
            .queues
            .get(&commcare)
            .is_some_and(|q| q.connected)
    })
    .await;
    app.run_until(async {}).await;
}
