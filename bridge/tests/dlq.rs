//! `kiungo dlq list|show|replay|discard` against a real SQLite store: a
//! message parked because no mapping handled it is replayed once the
//! mapping exists; another is discarded; both actions are audited.

use std::path::Path;
use std::process::Command;

use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, DeadLetterFilter, Ingest, Rejection, Store};

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
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("kiungo.yaml");
    std::fs::write(
        &config,
        format!(
            "mappings: {}\nstore:\n  url: {}\n",
            packs.display(),
            db.config.url
        ),
    )
    .expect("config");

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
            ("ops-amina", "dead_letter.replay")
        ]
    );
}
