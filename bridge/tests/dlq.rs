//! `kiungo dlq list|show|replay|discard` against a real SQLite store: a
//! message parked because no mapping handled it is replayed once the
//! mapping exists; another is discarded; both actions are audited.

use std::path::Path;
use std::process::Command;

use kiungo::ingest::{Limits, Origin, prepare};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetterFilter, Ingest, Rejection, Store};

mod support;

fn kiungo(config: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kiungo"))
        .args(["dlq", "--config"])
        .arg(config)
        .args(["--actor", "ops-amina"])
        .args(args)
        .output()
        .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A config file for the `kiungo dlq` commands: the shipped packs and
/// the scratch store.
fn config_for(db: &ScratchDb) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("kiungo.yaml");
    std::fs::write(
        &config,
        format!(
            "mappings: {}\nstore:\n  url: {}\n",
            support::packs_dir().display(),
            db.config.url
        ),
    )
    .expect("config");
    (dir, config)
}

fn parked(payload: Vec<u8>, code: &str) -> Ingest {
    Ingest {
        source: "cht".into(),
        queue: Some("kiungo.cht".into()),
        message_id: Some(format!("m-{code}")),
        version_ts: None,
        received_at: kiungo::store::now_ms(),
        payload,
        headers: Some(serde_json::json!({"x-app": "cht"})),
        result: Err(Rejection {
            code: code.into(),
            reason: format!("parked for the test: {code}"),
            mapping: None,
            event_id: None,
            detail: None,
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_show_replay_discard() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
    let good =
        std::fs::read(packs.join("cht-anc/fixtures/anc-visit-1-facility.json")).expect("fixture");
    // As if it had arrived before the CHT mapping was deployed.
    store
        .commit(&[
            parked(good, "no_mapping"),
            parked(b"{oops".to_vec(), "not_json"),
        ])
        .await
        .expect("commit");
    let (_dir, config) = config_for(&db);

    let (code, out, err) = kiungo(&config, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no_mapping") && out.contains("not_json") && out.contains("2 dead letter(s)"),
        "{out}"
    );
    let (_, out, _) = kiungo(&config, &["list", "--reason", "not_json"]);
    assert!(out.contains("1 dead letter(s)"), "{out}");

    let list = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list");
    let id_of = |code: &str| {
        list.iter()
            .find(|d| d.reason_code == code)
            .map(|d| d.id)
            .expect("present")
    };
    let (code, out, _) = kiungo(&config, &["show", &id_of("no_mapping").to_string()]);
    assert_eq!(code, 0);
    assert!(
        out.contains("\"pregnancy_home_visit\"") && out.contains("\"x-app\": \"cht\""),
        "payload and headers shown: {out}"
    );

    let (code, out, err) = kiungo(&config, &["replay", &id_of("no_mapping").to_string()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("\"result\":\"ingested\"") && out.contains("\"status\":\"stored\""),
        "{out}"
    );
    assert_eq!(store.stats().await.expect("stats").events_live, 1);

    // Replaying the unparseable one parks it again: exit 1, still open.
    let (code, out, _) = kiungo(&config, &["replay", &id_of("not_json").to_string()]);
    assert_eq!(code, 1);
    assert!(out.contains("parked_again"), "{out}");
    let (code, out, _) = kiungo(&config, &["discard", &id_of("not_json").to_string()]);
    assert_eq!(code, 0);
    assert!(out.contains("1 of 1 discarded"), "{out}");
    let discarded = store
        .dead_letter(id_of("not_json"))
        .await
        .expect("get")
        .expect("found");
    assert_eq!(discarded.state, "discarded");
    assert!(
        discarded.payload.is_none(),
        "a discarded payload is dropped"
    );

    let (_, out, _) = kiungo(&config, &["list"]);
    assert!(out.contains("0 dead letter(s)"), "{out}");
    let audit = store.audit_log(10).await.expect("audit");
    let actions: Vec<(&str, &str)> = audit.iter().map(|a| (a.1.as_str(), a.2.as_str())).collect();
    assert_eq!(
        actions,
        vec![
            ("ops-amina", "dead_letter.discard"),
            ("ops-amina", "dead_letter.replay"),
            ("ops-amina", "dead_letter.replay"),
            // `show` printed a payload: audited like the admin API's
            // payload route.
            ("ops-amina", "dead_letter.read_payload"),
        ]
    );
}

const MARKER: &str = "Zawadi Kiungomarker +254700999111";

/// A lookup miss on a marker value: the reason (read by viewers, apps and
/// logs) names field and table, never the value; the value is kept beside
/// the payload for operators, and dropped with it on discard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_miss_reason_never_quotes_the_value() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    let set = support::packs();
    let visit = support::cht_visit("privacy-lookup", MARKER, "");
    let origin = Origin {
        source: "cht".into(),
        queue: None,
        message_id: Some("m-lookup".into()),
        timestamp_ms: None,
        headers: None,
        route: Ok(None),
    };
    let ing = prepare(
        &set,
        origin,
        serde_json::to_vec(&visit).expect("bytes"),
        Limits { max_bytes: 1 << 20 },
    );
    store.commit(&[ing]).await.expect("commit");
    let list = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list");
    assert_eq!(list.len(), 1, "{list:?}");
    let d = &list[0];
    assert_eq!(d.reason_code, "mapping_error");
    assert!(
        d.reason.contains("the key is not in table `"),
        "{}",
        d.reason
    );
    assert!(
        !d.reason.contains("Kiungomarker") && !d.reason.contains("700999111"),
        "{}",
        d.reason
    );
    assert!(d.detail.is_none(), "lists carry no detail");
    let full = store.dead_letter(d.id).await.expect("get").expect("found");
    assert!(
        full.detail.as_deref().is_some_and(|v| v.contains(MARKER)),
        "operators see the value: {:?}",
        full.detail
    );
    store
        .discard_dead_letters(&[d.id], "ops", kiungo::store::now_ms())
        .await
        .expect("discard");
    let gone = store.dead_letter(d.id).await.expect("get").expect("found");
    assert!(gone.detail.is_none() && gone.payload.is_none());
}

/// The same message parked again after a discard reopens its dead letter
/// with the payload (the discard dropped it): an operator can replay it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discarded_letter_reopens_with_its_payload() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    store
        .commit(&[parked(b"{oops".to_vec(), "not_json")])
        .await
        .expect("commit");
    let id = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list")[0]
        .id;
    store
        .discard_dead_letters(&[id], "ops", kiungo::store::now_ms())
        .await
        .expect("discard");
    store
        .commit(&[parked(b"{oops".to_vec(), "not_json")])
        .await
        .expect("again");
    let d = store.dead_letter(id).await.expect("get").expect("found");
    assert_eq!((d.state.as_str(), d.seen_count), ("open", 2));
    assert_eq!(
        d.payload.as_deref(),
        Some(&b"{oops"[..]),
        "reopened with its payload"
    );
    assert!(d.headers.is_some(), "and its headers");
}

/// `dlq list` prints what messages carried (sources, reasons): terminal
/// control sequences in them are shown escaped, never sent to the terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_escapes_control_characters() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    let mut hostile = parked(b"{oops".to_vec(), "not_json");
    hostile.source = "ch\x1b]0;pwned\x07t".into();
    if let Err(r) = hostile.result.as_mut() {
        r.reason = "body is not JSON \x1b[2J\x1b[31mred\r\nforged line".into();
        r.mapping = Some("m\x1b[0m".into());
    }
    store.commit(&[hostile]).await.expect("commit");
    let (_dir, config) = config_for(&db);
    let (code, out, err) = kiungo(&config, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.chars().any(|c| c.is_control() && c != '\n'),
        "control characters reach the terminal: {out:?}"
    );
    assert_eq!(out.lines().count(), 3, "no forged line: {out}");
    assert!(out.contains("\\u{1b}[31mred"), "shown escaped: {out}");
}

/// Retention purges the client data of resolved dead letters on the
/// schedule of delivered events; open ones keep theirs for a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_resolved_dead_letters() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    store
        .commit(&[
            parked(b"{resolved".to_vec(), "not_json"),
            parked(b"{open".to_vec(), "no_route"),
        ])
        .await
        .expect("commit");
    let list = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list");
    let id_of = |code: &str| list.iter().find(|d| d.reason_code == code).map(|d| d.id);
    let (resolved, open) = (
        id_of("not_json").expect("one"),
        id_of("no_route").expect("two"),
    );
    let t = kiungo::store::now_ms();
    store
        .mark_replayed(resolved, true, "ops", "replayed", t)
        .await
        .expect("replayed");
    let day = std::time::Duration::from_secs(86_400);
    let early = store.purge_delivered(day, t + 1_000).await.expect("purge");
    assert_eq!(early.dead_letters, 0, "not before the retention period");
    let report = store
        .purge_delivered(day, t + 86_400_000 + 1)
        .await
        .expect("purge");
    assert_eq!(report.dead_letters, 1);
    let gone = store
        .dead_letter(resolved)
        .await
        .expect("get")
        .expect("found");
    assert!(gone.payload.is_none() && gone.headers.is_none(), "{gone:?}");
    let kept = store.dead_letter(open).await.expect("get").expect("found");
    assert_eq!(kept.payload.as_deref(), Some(&b"{open"[..]));
}

/// `dlq replay` without the pseudonym key refuses an event whose mapping
/// calls pseudonym() (it would only be parked again) and says the key is
/// missing; with the key, the same dead letter is ingested. `dlq list`
/// refuses an unknown stage, naming the valid ones, and shows when each
/// letter was parked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_without_the_key_says_so_and_list_checks_its_stage() {
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("store");
    let kobo = std::fs::read(
        support::packs_dir().join("kobo-malaria-rdt/fixtures/rdt-negative-adult.json"),
    )
    .expect("fixture");
    let mut letter = parked(kobo, "no_mapping");
    letter.source = "kobo".into();
    letter.queue = Some("kiungo.kobo".into());
    store.commit(&[letter]).await.expect("commit");
    let (_dir, config) = config_for(&db);
    let id = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list")[0]
        .id
        .to_string();
    let replay = |key: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiungo"));
        cmd.args(["dlq", "--config"])
            .arg(&config)
            .args(["--actor", "ops-amina", "replay", &id])
            .env_remove("KIUNGO_PSEUDONYM_KEY");
        if let Some(k) = key {
            cmd.env("KIUNGO_PSEUDONYM_KEY", k);
        }
        let out = cmd.output().expect("runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = replay(None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("no pseudonym key is set") && err.contains("KIUNGO_PSEUDONYM_KEY"),
        "{err}"
    );
    let still = store
        .dead_letters(&DeadLetterFilter::default())
        .await
        .expect("list");
    assert_eq!(
        (
            still.len(),
            still[0].reason_code.as_str(),
            still[0].replay_count
        ),
        (1, "no_mapping", 0),
        "not replayed, not parked again"
    );
    let (code, out, err) = replay(Some("a-test-key-of-at-least-16-bytes"));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"result\":\"ingested\""), "{out}");

    let (code, out, err) = kiungo(&config, &["list", "--stage", "foo"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.contains("--stage foo: unknown stage (one of: ingest, fhir, dhis2)"),
        "{err}"
    );
    let (code, out, _) = kiungo(&config, &["list", "--state", "all"]);
    assert_eq!(code, 0);
    assert!(out.contains("parked (UTC)"), "{out}");
    let year = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    assert!(out.contains(&year[..4]), "a time column: {out}");
}
