//! End-to-end ingest against the real RabbitMQ and PostgreSQL (and
//! SQLite): 10,000 events with duplicates, edits and poison; SIGKILLs of
//! the `kiungo` process mid-run; the broker dropping every connection
//! mid-run; poison of every class. Each test runs on both store backends,
//! in a vhost and database of its own.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::store::{Backend, DeadLetterFilter, Store, StoreConfig};
use kiungo_tests::harness::{Isolated, KiungoProcess, publish, queue_for, wait_for_store};
use kiungo_tests::workload::{
    Expected, Mix, Workload, expected, generate_with, load_mappings, packs_dir,
};

const SOURCES: [&str; 4] = ["cht", "commcare", "kobo", "inhouse"];
const KEY: &str = "kiungo-e2e-test-pseudonym-key-0123456789abcdef";

/// Writes a config for `kiungo run` into `dir` and returns its path.
fn write_config(
    dir: &Path,
    store: &StoreConfig,
    amqp_url: &str,
    prefix: &str,
    extra_queues: &str,
) -> PathBuf {
    let key_file = dir.join("pseudonym.key");
    std::fs::write(&key_file, KEY).expect("key file");
    let mut queues = String::new();
    for s in SOURCES {
        queues.push_str(&format!(
            "    - {{name: {}, source: {s}}}\n",
            queue_for(prefix, s)
        ));
    }
    queues.push_str(extra_queues);
    let yaml = format!(
        "mappings: {mappings}\n\
         pseudonym_key_file: {key}\n\
         store:\n  url: {url}\n\
         rabbitmq:\n  url: {amqp_url}\n  prefetch: 500\n  max_message_bytes: 65536\n  reconnect_min: 100ms\n  reconnect_max: 2s\n  queues:\n{queues}\
         http:\n  listen: 127.0.0.1:0\n\
         ingest:\n  max_events: 500\n  max_wait: 5ms\n",
        mappings = packs_dir().display(),
        key = key_file.display(),
        url = store.url,
    );
    let file = dir.join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    file
}

fn workload(n: usize, seed: u64, poison: f64) -> (Workload, Expected) {
    let mappings = load_mappings(&packs_dir()).expect("mappings");
    let w = generate_with(
        &mappings,
        n,
        seed,
        Mix {
            duplicates: 0.1,
            edits: 0.1,
            poison,
        },
    )
    .expect("workload");
    let e = expected(&w, &mappings).expect("expected");
    (w, e)
}

/// 10,000 events, of which 10% duplicates, 10% edits or replacements and
/// 2% poison: the store ends with exactly the expected live events,
/// versions, withdrawals, DHIS2 totals and dead letters, and the queues are
/// empty.
async fn ten_thousand_events_exactly_once(backend: Backend) {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(backend).await.expect("isolated");
    let (w, e) = workload(10_000, 7, 0.02);
    let config = Config::load(&write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        "",
    ))
    .expect("config");
    let app = Application::build(config).await.expect("start");
    publish(&vhost.url(), &prefix, &w.messages)
        .await
        .expect("publish");
    wait_for_store(app.store(), &w, &e, Duration::from_secs(240))
        .await
        .expect("store");
    let counters = app.counters();
    // Acks follow the commit; give the last ones a moment.
    for _ in 0..50 {
        let depths: Vec<_> = SOURCES
            .iter()
            .map(|s| vhost.queue_depth(&queue_for(&prefix, s)).expect("depth"))
            .collect();
        if depths.iter().all(|d| *d == (0, 0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in SOURCES {
        assert_eq!(
            vhost.queue_depth(&queue_for(&prefix, s)).expect("depth"),
            (0, 0),
            "queue {s} drained"
        );
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(counters.committed.load(Relaxed), w.messages.len() as u64);
    assert_eq!(counters.ack_failures.load(Relaxed), 0);
    assert!(
        counters.batches.load(Relaxed) < w.messages.len() as u64 / 5,
        "group commit batches events"
    );
    app.run_until(async {}).await;
}

/// The `kiungo` process is SIGKILLed three times while 10,000 events
/// arrive, and restarted each time: nothing is lost, nothing doubled.
async fn sigkill_loses_and_doubles_nothing(backend: Backend) {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(backend).await.expect("isolated");
    let (w, e) = workload(10_000, 11, 0.02);
    let config = write_config(dir.path(), &db.config, &vhost.url(), &prefix, "");
    let log = dir.path().join("kiungo.log");
    let mut kiungo = KiungoProcess::start(&config, &log).expect("start");
    let store = Store::open(&db.config).await.expect("store");

    let url = vhost.url();
    let (first, rest) = w.messages.split_at(w.messages.len() / 2);
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let p = prefix.clone();
    let publisher = tokio::spawn(async move {
        publish(&url, &p, &first).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
        publish(&url, &p, &rest).await
    });
    let mut kills = 0;
    let mut last = 0;
    let (mut seen, mut changed) = (0, std::time::Instant::now());
    // Kill whenever a good share more has been committed since the last
    // kill, so that each kill lands mid-stream. On a slow machine the
    // whole workload may be stored before the third kill is due: once
    // everything is published and the count has not moved for 30 s, the
    // kills so far must do (the loop used to wait for it forever).
    while kills < 3 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let n = store.count_events().await.expect("count");
        if n != seen {
            (seen, changed) = (n, std::time::Instant::now());
        }
        if n >= last + 1_500 {
            kiungo.kill_and_restart().expect("kill and restart");
            kills += 1;
            last = n;
        } else if publisher.is_finished() && changed.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    assert!(kills > 0, "no kill landed mid-stream ({seen} events stored)");
    publisher.await.expect("join").expect("publish");
    let result = wait_for_store(&store, &w, &e, Duration::from_secs(240)).await;
    let status = kiungo.stop().expect("stop");
    if let Err(err) = result {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        panic!(
            "{err}\n--- kiungo log (tail) ---\n{}",
            log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
        );
    }
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let dead = store
        .dead_letters(&DeadLetterFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .expect("dlq");
    let redelivered_poison: i64 = dead.iter().map(|d| d.seen_count - 1).sum();
    eprintln!(
        "kills: {kills}; poison messages redelivered after a kill and recognised: {redelivered_poison}"
    );
}

/// The broker closes every connection of the vhost twice mid-run (as a
/// broker restart or network cut would): the source reconnects, the
/// unacknowledged messages are redelivered, and the store recognises them.
async fn broker_connection_loss_recovers(backend: Backend) {
    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(backend).await.expect("isolated");
    let (w, e) = workload(10_000, 13, 0.01);
    publish(&vhost.url(), &prefix, &w.messages)
        .await
        .expect("publish");
    let config = Config::load(&write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        "",
    ))
    .expect("config");
    let app = Application::build(config).await.expect("start");
    let mut closes = 0;
    let mut last = 0;
    while closes < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = app.store().count_events().await.expect("count");
        if n >= last + 2_000 && app.source_state().connected {
            vhost.close_connections().expect("close connections");
            closes += 1;
            last = n;
        }
    }
    wait_for_store(app.store(), &w, &e, Duration::from_secs(240))
        .await
        .expect("store");
    let state = app.source_state();
    assert!(
        state.connects >= 3,
        "reconnected after each loss: {state:?}"
    );
    assert!(state.last_error.is_some());
    app.run_until(async {}).await;
}

/// Poison of every class lands in the dead-letter table with its reason,
/// raw payload and headers, is acknowledged, and good events behind it
/// keep flowing.
async fn poison_of_every_class_is_parked(backend: Backend) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable};
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let Isolated {
        vhost,
        db,
        dir,
        prefix,
    } = Isolated::new(backend).await.expect("isolated");
    let (w, e) = workload(600, 17, 0.15);
    let routed = format!("{prefix}.routed");
    let by_header = format!("{prefix}.by-header");
    let quorum = format!("{prefix}.quorum");
    let extra = format!(
        "    - name: {routed}\n      source: kobo\n      route: {{routing_key: {{kobo.rdt: kobo-malaria-rdt}}}}\n      bind: {{exchange: {prefix}.x, routing_keys: ['kobo.#']}}\n\
         \x20   - {{name: {by_header}, source: cht, route: {{header: x-kiungo-mapping}}}}\n\
         \x20   - {{name: {quorum}, source: cht, kind: quorum, delivery_limit: 3}}\n"
    );
    let config = Config::load(&write_config(
        dir.path(),
        &db.config,
        &vhost.url(),
        &prefix,
        &extra,
    ))
    .expect("config");
    let app = Application::build(config).await.expect("start");
    // The exchange and its binding exist once the source has declared its
    // topology (it connects in the background): publishing to the
    // exchange earlier finds no exchange, or no binding.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !app.source_state().connected {
        assert!(
            std::time::Instant::now() < deadline,
            "source not connected: {:?}",
            app.source_state()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Poison from the workload (not JSON, no mapping, mapping error)
    // interleaved with good events.
    publish(&vhost.url(), &prefix, &w.messages)
        .await
        .expect("publish");

    // The other classes, published by hand.
    let conn = Connection::connect(&vhost.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let good_rdt =
        std::fs::read(packs_dir().join("kobo-malaria-rdt/fixtures/rdt-negative-adult.json"))
            .expect("fixture");
    let mut headers = FieldTable::default();
    headers.insert(
        "x-kiungo-mapping".into(),
        AMQPValue::LongString("no-such-mapping".into()),
    );
    headers.insert(
        "x-app-version".into(),
        AMQPValue::LongString("2.3.1".into()),
    );
    let too_large = format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000)).into_bytes();
    let sends: Vec<(String, String, Vec<u8>, BasicProperties)> = vec![
        // too large for max_message_bytes (64 KiB)
        (
            "".into(),
            queue_for(&prefix, "cht"),
            too_large,
            BasicProperties::default().with_message_id("big-1".into()),
        ),
        // routing key with no route
        (
            format!("{prefix}.x"),
            "kobo.unknown".into(),
            good_rdt.clone(),
            BasicProperties::default().with_message_id("route-1".into()),
        ),
        // routed by key: stored
        (
            format!("{prefix}.x"),
            "kobo.rdt".into(),
            good_rdt.clone(),
            BasicProperties::default().with_message_id("route-2".into()),
        ),
        // header names a mapping that is not loaded
        (
            "".into(),
            by_header.clone(),
            good_rdt.clone(),
            BasicProperties::default()
                .with_message_id("hdr-1".into())
                .with_headers(headers),
        ),
        // what the broker dead-letters past a quorum queue's delivery limit
        (
            "".into(),
            format!("{quorum}.overflow"),
            b"{\"crashed\": true}".to_vec(),
            BasicProperties::default().with_message_id("limit-1".into()),
        ),
    ];
    for (exchange, key, body, props) in sends {
        ch.basic_publish(
            exchange.as_str().into(),
            key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    }
    conn.close(200, "done".into()).await.expect("close");

    // Everything from the workload, plus the stored routed RDT.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let reasons = ["too_large", "no_route", "unknown_mapping", "delivery_limit"];
    loop {
        let dead = app
            .store()
            .dead_letters(&DeadLetterFilter {
                limit: Some(100_000),
                ..Default::default()
            })
            .await
            .expect("dlq");
        let all_there = reasons
            .iter()
            .all(|r| dead.iter().any(|d| d.reason_code == *r));
        let live = app.store().stats().await.expect("stats").events_live as usize;
        if all_there && live == e.events.len() + 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out: {:?} live {live}",
            dead.iter().map(|d| &d.reason_code).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let dead = app
        .store()
        .dead_letters(&DeadLetterFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .expect("dlq");
    let by = |code: &str| {
        dead.iter()
            .find(|d| d.reason_code == code)
            .unwrap_or_else(|| panic!("no {code}"))
    };
    assert!(
        by("too_large")
            .reason
            .contains("over the limit of 65536 bytes"),
        "{}",
        by("too_large").reason
    );
    assert!(
        by("no_route").reason.contains("`kobo.unknown`"),
        "{}",
        by("no_route").reason
    );
    assert!(
        by("unknown_mapping").reason.contains("`no-such-mapping`"),
        "{}",
        by("unknown_mapping").reason
    );
    assert!(
        by("delivery_limit")
            .reason
            .contains("delivered more than 3 times"),
        "{}",
        by("delivery_limit").reason
    );
    for class in ["not_json", "no_mapping", "mapping_error"] {
        let d = by(class);
        assert!(!d.reason.is_empty());
        let full = app
            .store()
            .dead_letter(d.id)
            .await
            .expect("get")
            .expect("found");
        assert!(
            full.payload.as_ref().is_some_and(|p| !p.is_empty()),
            "{class} keeps its payload"
        );
    }
    let hdr = app
        .store()
        .dead_letter(by("unknown_mapping").id)
        .await
        .expect("get")
        .expect("found");
    assert!(
        hdr.headers
            .as_deref()
            .unwrap_or("")
            .contains("\"x-app-version\":\"2.3.1\""),
        "{:?}",
        hdr.headers
    );
    assert_eq!(hdr.payload.as_deref(), Some(good_rdt.as_slice()));
    // The queues empty: poison was acknowledged, not requeued. The ack of
    // the last message may still be on its way when its dead letter is
    // visible, so wait for the broker to count it.
    let started = std::time::Instant::now();
    for q in [
        queue_for(&prefix, "cht"),
        routed,
        by_header,
        format!("{quorum}.overflow"),
    ] {
        loop {
            let depth = vhost.queue_depth(&q).expect("depth");
            if depth == (0, 0) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "queue {q} still holds {depth:?} (ready, unacked)"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!(
        "queues empty {:?} after the dead letters",
        started.elapsed()
    );
    let again = app
        .store()
        .dead_letters(&DeadLetterFilter {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .expect("dlq");
    assert_eq!(again.len(), dead.len(), "nothing was parked twice");
    app.run_until(async {}).await;
}

kiungo::on_both_backends!(
    ten_thousand_events_exactly_once,
    sigkill_loses_and_doubles_nothing,
    broker_connection_loss_recovers,
    poison_of_every_class_is_parked,
);
