//! One hostile message must not stop, crash or tamper with a flow
//! (issue 13), on both backends alike:
//! - text PostgreSQL cannot hold (U+0000 in ids, sources, message ids,
//!   header values, reasons) never reaches a statement: an event whose
//!   ids carry it is parked as `invalid_text`, other text is escaped, and
//!   the raw payload is kept as bytes;
//! - an event the database refuses for any other reason is isolated and
//!   parked as `store_refused` (a minimal dead letter if even the full
//!   one is refused) while the rest of its batch commits, and the
//!   committer moves on; so is one whose conflict (a unique violation,
//!   otherwise a race retried until it clears) never clears;
//! - over HTTP, a NUL `_id` or a `%00` in the source is answered with its
//!   dead letter, and the next event is stored (not a 503).

use std::time::Duration;

mod support;

use kiungo::app::Application;
use kiungo::config::Config;
use kiungo::ingest::{BatchConfig, Committer, Done, Work};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetter, Ingest, Outcome, Rejection, Store};
use kiungo_mappings::MappingSet;
use serde_json::{Value, json};
use sqlx::Connection;
use support::{cht_ingest, packs, packs_dir};

/// The operator token that posts the HTTP events.
const OPERATOR: &str = "hostile-input-test-operator-token-5b8d2e7f1a4c9e3b";

/// A CHT visit (at the fixture's own location, `facility`) as event
/// `id`, replacing `replaces`.
fn cht_visit(id: &str, replaces: &str) -> Value {
    support::cht_visit(id, "facility", replaces)
}

/// An event from the `cht.events` queue as message `m-1`, mapped by the
/// shipped packs.
fn ingest(set: &MappingSet, payload: &Value) -> Ingest {
    Ingest {
        queue: Some("cht.events".into()),
        message_id: Some("m-1".into()),
        ..cht_ingest(set, payload, None)
    }
}

fn not_json(bytes: &[u8]) -> Ingest {
    Ingest {
        source: "cht".into(),
        queue: Some("cht.events".into()),
        message_id: Some("p-1".into()),
        version_ts: None,
        received_at: kiungo::store::now_ms(),
        payload: bytes.to_vec(),
        headers: None,
        result: Err(Rejection {
            code: "not_json".into(),
            reason: "body is not JSON: expected value at line 1 column 1".into(),
            mapping: None,
            event_id: None,
            detail: None,
        }),
    }
}

async fn open(backend: Backend) -> (ScratchDb, Store) {
    let db = ScratchDb::new(backend).await.expect("scratch db");
    let store = Store::open(&db.config).await.expect("open");
    (db, store)
}

fn parked(outcome: &Outcome) -> (i64, &str) {
    match outcome {
        Outcome::Parked {
            dead_letter_id,
            reason,
        } => (*dead_letter_id, reason.as_str()),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

async fn letter(store: &Store, id: i64) -> DeadLetter {
    store
        .dead_letter(id)
        .await
        .expect("read")
        .expect("dead letter exists")
}

/// No text column of a dead letter holds a NUL.
fn no_nul(dl: &DeadLetter) {
    let texts = [
        Some(&dl.source),
        dl.queue.as_ref(),
        dl.message_id.as_ref(),
        dl.event_id.as_ref(),
        dl.mapping.as_ref(),
        Some(&dl.reason_code),
        Some(&dl.reason),
        dl.headers.as_ref(),
    ];
    for t in texts.into_iter().flatten() {
        assert!(!t.contains('\0'), "NUL stored in {dl:?}");
    }
}

/// `_id` and `deprecatedID` (the id the event replaces) carrying a NUL:
/// parked as `invalid_text` naming the field, never quoting it; the rest
/// of the batch commits; the same message again is the same dead letter.
async fn nul_in_event_ids_is_parked(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let bad = ingest(&set, &cht_visit("x\0y", ""));
    let bad_replaces = ingest(&set, &cht_visit("r1", "uuid:old\0"));
    let good = ingest(&set, &cht_visit("ok-1", ""));
    assert!(bad.result.is_ok(), "the mapping accepts the id: {bad:?}");
    let out = store
        .commit(&[bad.clone(), good, bad_replaces.clone()])
        .await
        .expect("commit");
    assert_eq!(out[1], Outcome::Stored);
    let (id, reason) = parked(&out[0]);
    assert_eq!(reason, "invalid_text");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(dl.reason_code, "invalid_text");
    assert_eq!(dl.source, "cht");
    assert_eq!(dl.event_id.as_deref(), Some("x\\u0000y"));
    assert_eq!(dl.message_id.as_deref(), Some("m-1"));
    assert_eq!(dl.mapping.as_deref(), Some("cht-anc-visit"));
    assert!(dl.reason.contains("event id"), "{}", dl.reason);
    assert!(!dl.reason.contains("x\\u0000y"), "no data in the reason");
    assert_eq!(dl.payload.as_deref(), Some(bad.payload.as_slice()));
    assert_eq!(dl.headers.as_deref(), Some(r#"{"x-app":"cht"}"#));

    let (id, reason) = parked(&out[2]);
    assert_eq!(reason, "invalid_text");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(dl.event_id.as_deref(), Some("r1"));
    assert!(dl.reason.contains("replaces"), "{}", dl.reason);

    let again = store.commit(&[bad]).await.expect("commit");
    assert_eq!(again[0], out[0], "a redelivery is counted, not duplicated");
    let stats = store.stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.dead_letters_open), (1, 2));
}

/// A source (the HTTP path) or a message id with a NUL: a mapped event is
/// parked as `invalid_text`; a rejected one keeps its own reason code;
/// both with the text escaped.
async fn nul_in_source_and_message_id_is_parked(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let mut in_source = ingest(&set, &cht_visit("s-1", ""));
    in_source.source = "ch\0t".into();
    let mut in_message_id = ingest(&set, &cht_visit("s-2", ""));
    in_message_id.message_id = Some("m\0".into());
    let mut rejected = not_json(b"{oops");
    rejected.source = "x\0y".into();
    rejected.message_id = Some("\0".into());
    let out = store
        .commit(&[in_source.clone(), in_message_id, rejected.clone()])
        .await
        .expect("commit");

    let (id, reason) = parked(&out[0]);
    assert_eq!(reason, "invalid_text");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(dl.source, "ch\\u0000t");
    assert_eq!(dl.event_id.as_deref(), Some("s-1"));
    assert!(dl.reason.contains("source"), "{}", dl.reason);
    assert_eq!(dl.payload.as_deref(), Some(in_source.payload.as_slice()));

    let (id, reason) = parked(&out[1]);
    assert_eq!(reason, "invalid_text");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(dl.message_id.as_deref(), Some("m\\u0000"));
    assert!(dl.reason.contains("message id"), "{}", dl.reason);

    let (id, reason) = parked(&out[2]);
    assert_eq!(reason, "not_json", "a rejection keeps its reason");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(
        (dl.source.as_str(), dl.message_id.as_deref()),
        ("x\\u0000y", Some("\\u0000"))
    );
    assert!(
        dl.reason
            .starts_with("body is not JSON: expected value at line 1 column 1"),
        "{}",
        dl.reason
    );
    assert_eq!(dl.payload.as_deref(), Some(&b"{oops"[..]));
    assert_eq!(store.stats().await.expect("stats").events_live, 0);
}

/// NUL in header keys and values (including `traceparent`, which is
/// stored with the FHIR bundle) and in a rejection's reason, mapping and
/// event id: the event is stored, the rejection parked with its own code,
/// the text escaped and the headers kept as they came (JSON text).
async fn nul_in_headers_and_reasons_is_escaped(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let headers = json!({"x-\0": "a\0b", "traceparent": "00-\0", "n": [{"k": "\0"}]});
    let mut event = ingest(&set, &cht_visit("h-1", ""));
    event.headers = Some(headers.clone());
    let mut rejected = not_json(b"{nope");
    rejected.headers = Some(headers.clone());
    rejected.result = Err(Rejection {
        code: "mapping_error".into(),
        reason: "mapping `m\0`, field `value`: `a\0b` is not a number".into(),
        mapping: Some("m\0".into()),
        event_id: Some("e\0".into()),
        detail: None,
    });
    let out = store.commit(&[event, rejected]).await.expect("commit");
    assert_eq!(out[0], Outcome::Stored);
    let (id, reason) = parked(&out[1]);
    assert_eq!(reason, "mapping_error");
    let dl = letter(&store, id).await;
    no_nul(&dl);
    assert_eq!(
        dl.reason,
        "mapping `m\\u0000`, field `value`: `a\\u0000b` is not a number"
    );
    assert_eq!(dl.mapping.as_deref(), Some("m\\u0000"));
    assert_eq!(dl.event_id.as_deref(), Some("e\\u0000"));
    let stored: Value =
        serde_json::from_str(dl.headers.as_deref().expect("headers")).expect("json");
    assert_eq!(stored, headers, "headers are kept as they came");
    assert_eq!(store.stats().await.expect("stats").outbox_pending, 1);
}

/// Makes the database itself refuse rows whose event id is `poison`: in
/// `events`, and in `dead_letters` too when `dead_letters_too`. This
/// stands for any refusal the screen does not foresee.
async fn refuse_poison(db: &ScratchDb, backend: Backend, dead_letters_too: bool) {
    let mut tables = vec!["events"];
    if dead_letters_too {
        tables.push("dead_letters");
    }
    match backend {
        Backend::Sqlite => {
            let path = db.config.url.trim_start_matches("sqlite:");
            let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{path}"))
                .await
                .expect("connect");
            for t in tables {
                let sql = format!(
                    "CREATE TRIGGER refuse_poison_{t} BEFORE INSERT ON {t} \
                     WHEN NEW.event_id = 'poison' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
                );
                sqlx::raw_sql(&sql)
                    .execute(&mut conn)
                    .await
                    .expect("trigger");
            }
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.config.url)
                .await
                .expect("connect");
            sqlx::raw_sql(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
                 BEGIN IF NEW.event_id = 'poison' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                 RETURN NEW; END $$",
            )
            .execute(&mut conn)
            .await
            .expect("function");
            for t in tables {
                let sql = format!(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON {t} \
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                );
                sqlx::raw_sql(&sql)
                    .execute(&mut conn)
                    .await
                    .expect("trigger");
            }
        }
    }
}

/// Sends the events to a committer in one go (they commit as one batch)
/// and waits for every outcome, failing if the committer is wedged.
async fn through_committer(store: &Store, events: Vec<Ingest>) -> Vec<Outcome> {
    let (handle, task) = Committer::spawn(
        store.clone(),
        BatchConfig {
            max_events: 100,
            max_wait: Duration::from_millis(200),
        },
        None,
    );
    let mut waits = Vec::new();
    for ingest in events {
        let (tx, rx) = tokio::sync::oneshot::channel();
        handle
            .send(Work {
                ingest,
                done: Done::Http(tx),
                span: kiungo::telemetry::Span::none(),
            })
            .await
            .expect("committer running");
        waits.push(rx);
    }
    let mut out = Vec::new();
    for rx in waits {
        out.push(
            tokio::time::timeout(Duration::from_secs(20), rx)
                .await
                .expect("the committer answers: it is not wedged")
                .expect("outcome"),
        );
    }
    drop(handle);
    task.await.expect("committer ends");
    out
}

/// The database refuses one event of a batch: it is parked as
/// `store_refused` with its ids and payload, and the others commit.
async fn a_refused_event_is_isolated(backend: Backend) {
    let set = packs();
    let (db, store) = open(backend).await;
    refuse_poison(&db, backend, false).await;
    let poison = ingest(&set, &cht_visit("poison", ""));
    let out = through_committer(
        &store,
        vec![
            ingest(&set, &cht_visit("a", "")),
            poison.clone(),
            ingest(&set, &cht_visit("b", "")),
        ],
    )
    .await;
    assert_eq!((&out[0], &out[2]), (&Outcome::Stored, &Outcome::Stored));
    let (id, reason) = parked(&out[1]);
    assert_eq!(reason, "store_refused");
    let dl = letter(&store, id).await;
    assert_eq!(dl.reason_code, "store_refused");
    assert_eq!(
        (
            dl.source.as_str(),
            dl.event_id.as_deref(),
            dl.message_id.as_deref()
        ),
        ("cht", Some("poison"), Some("m-1"))
    );
    assert_eq!(dl.payload.as_deref(), Some(poison.payload.as_slice()));
    // And the committer carries on.
    let out = through_committer(&store, vec![ingest(&set, &cht_visit("c", ""))]).await;
    assert_eq!(out, vec![Outcome::Stored]);
    assert_eq!(store.stats().await.expect("stats").events_live, 3);
}

/// The database refuses the event and its dead letter: a minimal dead
/// letter (ids replaced by placeholders, the payload kept as bytes) is
/// parked instead of retrying forever.
async fn a_refused_dead_letter_is_parked_minimal(backend: Backend) {
    let set = packs();
    let (db, store) = open(backend).await;
    refuse_poison(&db, backend, true).await;
    let poison = ingest(&set, &cht_visit("poison", ""));
    let out = through_committer(
        &store,
        vec![poison.clone(), ingest(&set, &cht_visit("a", ""))],
    )
    .await;
    assert_eq!(out[1], Outcome::Stored);
    let (id, reason) = parked(&out[0]);
    assert_eq!(reason, "store_refused");
    let dl = letter(&store, id).await;
    assert_eq!(dl.reason_code, "store_refused");
    assert_eq!(dl.event_id, None);
    assert_eq!(dl.message_id, None);
    assert_eq!(dl.mapping, None);
    assert!(dl.reason.contains("ids were replaced"), "{}", dl.reason);
    assert_eq!(dl.payload.as_deref(), Some(poison.payload.as_slice()));
    // The same message again is the same dead letter.
    let again = through_committer(&store, vec![poison]).await;
    assert_eq!(again[0], out[0]);
}

/// An event whose outputs collide with themselves (two contributions
/// under one rule): PostgreSQL calls it a unique violation, which is
/// otherwise a race retried until it clears, SQLite a constraint failure.
/// On both it is parked as `store_refused` after a few tries.
async fn a_conflict_that_never_clears_is_isolated(backend: Backend) {
    let set = packs();
    let (_db, store) = open(backend).await;
    let mut twice = ingest(&set, &cht_visit("twice", ""));
    let Ok(outputs) = &mut twice.result else {
        panic!("{twice:?}")
    };
    let first = outputs.dhis2.first().expect("a DHIS2 contribution").clone();
    outputs.dhis2.push(first);
    let out = through_committer(&store, vec![twice, ingest(&set, &cht_visit("a", ""))]).await;
    assert_eq!(out[1], Outcome::Stored);
    let (id, reason) = parked(&out[0]);
    assert_eq!(reason, "store_refused");
    let dl = letter(&store, id).await;
    assert_eq!(dl.event_id.as_deref(), Some("twice"));
    assert_eq!(store.stats().await.expect("stats").events_live, 1);
}

async fn start(backend: Backend) -> (ScratchDb, Application) {
    kiungo::tls::install_crypto_provider();
    let db = ScratchDb::new(backend).await.expect("db");
    let mut config = Config::default();
    config.mappings = packs_dir();
    config.store = db.config.clone();
    config.http.listen = "127.0.0.1:0".into();
    config.http.commit_timeout = Duration::from_secs(10);
    config.admin.tokens = vec![kiungo::admin::auth::TokenConfig {
        name: "ops".into(),
        role: kiungo::admin::Role::Operator,
        sha256: Some(kiungo::admin::token_hash_hex(OPERATOR)),
        token: None,
        sources: None,
    }];
    let app = Application::build(config).await.expect("start");
    (db, app)
}

async fn post(app: &Application, source: &str, body: &Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/events/{source}", app.http_addr()))
        .bearer_auth(OPERATOR)
        .json(body)
        .send()
        .await
        .expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("json body"))
}

/// Over HTTP: the NUL `_id` and the `%00` source are answered with their
/// dead letters, and the events after them are stored.
async fn http_nul_does_not_wedge_ingest(backend: Backend) {
    let (_db, app) = start(backend).await;
    let (status, body) = post(&app, "cht", &cht_visit("x\0y", "")).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_text");
    assert!(body["dead_letter_id"].as_i64().is_some(), "{body}");

    let (status, body) = post(&app, "cht", &cht_visit("after-1", "")).await;
    assert_eq!((status, &body["status"]), (202, &json!("stored")), "{body}");

    // A source no mapping reads is refused before its body (404).
    let (status, body) = post(&app, "x%00y", &cht_visit("p-1", "")).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (404, &json!("unknown_source")),
        "{body}"
    );

    let (status, body) = post(&app, "cht", &cht_visit("after-2", "")).await;
    assert_eq!((status, &body["status"]), (202, &json!("stored")), "{body}");
    let stats = app.store().stats().await.expect("stats");
    assert_eq!((stats.events_live, stats.dead_letters_open), (2, 1));
    app.run_until(async {}).await;
}

kiungo::on_both_backends!(
    nul_in_event_ids_is_parked,
    nul_in_source_and_message_id_is_parked,
    nul_in_headers_and_reasons_is_escaped,
    a_refused_event_is_isolated,
    a_refused_dead_letter_is_parked_minimal,
    a_conflict_that_never_clears_is_isolated,
    http_nul_does_not_wedge_ingest,
);
