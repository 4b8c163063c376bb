//! Reconciliation end to end: Kiungo's totals pushed by the real DHIS2
//! worker into the sandbox DHIS2 (which keeps its values), edited there
//! "by hand", read back and compared, then repaired through the worker;
//! the store reads on both backends.

use std::sync::Arc;
use std::time::Duration;

use kiungo::delivery::Dhis2Worker;
use kiungo::delivery::circuit::Circuit;
use kiungo::delivery::retry::{Clock, ManualClock, RetryParams};
use kiungo::delivery::sinks::Dhis2Sink;
use kiungo::reconcile::{DriftKind, Report, Request, reconcile};
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, Ingest, Outputs, Store, TotalKey};
use kiungo_connectors::auth::{AuthConfig, SecretRef};
use kiungo_connectors::dhis2::{DataValue, Dhis2Client, Dhis2Config};
use kiungo_mappings::{Aggregation, Dhis2Contribution};

/// Child Health (Sierra Leone demo), and four of its data elements (all
/// on "Location and age group"); Ngelehun CHC; "Outreach, <1y".
const CHILD_HEALTH: &str = "BfMAe6Itzgt";
const BCG: &str = "s46m5MS0hxu";
const DE_23: &str = "fClA2Erf6IO";
const OPV: &str = "pnL2VG8Bn7N";
const BY_HAND: &str = "ca8lfO062zg";
const NGELEHUN: &str = "DiszpKrYNg8";
const OUTREACH_UNDER_1: &str = "V6L425pT3A0";
const DEFAULT: &str = "HllvX50cXC0";
const PERIOD: &str = "202401";

const RETRY: RetryParams = RetryParams {
    base_delay: Duration::from_secs(1),
    max_delay: Duration::from_secs(8),
    max_age: Duration::from_secs(600),
};

fn contribution(de: &str, value: i64) -> Dhis2Contribution {
    Dhis2Contribution {
        rule: format!("rule-{de}"),
        data_element: de.into(),
        period: PERIOD.into(),
        org_unit: NGELEHUN.into(),
        category_option_combo: OUTREACH_UNDER_1.into(),
        attribute_option_combo: DEFAULT.into(),
        value: value.into(),
        aggregation: Aggregation::Sum,
        date: "2024-01-15".into(),
    }
}

/// One event contributing to BCG (by UID), DE_23 (by code) and OPV.
async fn commit(store: &Store, id: &str) {
    let ingest = Ingest {
        source: "cht".into(),
        queue: None,
        message_id: None,
        version_ts: None,
        received_at: kiungo::store::now_ms(),
        payload: br#"{"_id":"x"}"#.to_vec(),
        headers: None,
        result: Ok(Outputs {
            mapping: "reconcile-test".into(),
            mapping_version: 1,
            event_id: id.into(),
            replaces: None,
            bundle: None,
            dhis2: vec![
                contribution(BCG, 2),
                contribution("code:DE_23", 1),
                contribution(OPV, 3),
            ],
            puts: vec![],
        }),
    };
    store.commit(&[ingest]).await.expect("commit");
}

fn client(sandbox: &Sandbox, dir: &tempfile::TempDir) -> Dhis2Client {
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "district").expect("pw");
    let config = Dhis2Config::new(
        sandbox.dhis2_url(),
        AuthConfig::Basic {
            username: "admin".into(),
            password: SecretRef {
                env: None,
                file: Some(pw),
            },
        },
    );
    Dhis2Client::new(config).expect("client")
}

fn worker(store: &Store, sink: Dhis2Sink, clock: &ManualClock) -> Dhis2Worker<Dhis2Sink> {
    Dhis2Worker {
        store: store.clone(),
        destination: sink,
        retry: RETRY,
        circuit: Arc::new(Circuit::new(100, Duration::from_secs(30))),
        clock: Arc::new(clock.clone()),
        batch: 100,
        delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
        lease: Duration::from_secs(60),
        idle: Duration::from_millis(10),
        completeness: false,
    }
}

/// Runs the worker with the clock moved past the settle time of
/// everything stored so far.
async fn push(w: &Dhis2Worker<Dhis2Sink>, clock: &ManualClock) -> (usize, usize) {
    let behind = kiungo::store::now_ms() - clock.now_ms();
    clock.advance(Duration::from_millis(behind.max(0).unsigned_abs() + 3_000));
    let r = w.run_once().await.expect("pass");
    (r.delivered, r.parked)
}

fn value(de: &str, coc: &str, v: &str) -> DataValue {
    DataValue {
        data_element: de.into(),
        period: PERIOD.into(),
        org_unit: NGELEHUN.into(),
        category_option_combo: coc.into(),
        attribute_option_combo: DEFAULT.into(),
        value: v.into(),
    }
}

fn summary(r: &Report) -> [usize; 4] {
    [
        r.matching,
        r.count(DriftKind::Missing),
        r.count(DriftKind::Different),
        r.count(DriftKind::NotFromKiungo),
    ]
}

async fn reconcile_finds_hand_edits_and_repair_restores_kiungos_totals(backend: Backend) {
    kiungo::tls::install_crypto_provider();
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    let clock = ManualClock::at(kiungo::store::now_ms());
    commit(&store, "e1").await;
    commit(&store, "e2").await;
    let w = worker(
        &store,
        Dhis2Sink::new(client(&sandbox, &dir), Duration::from_secs(3600)),
        &clock,
    );
    assert_eq!(push(&w, &clock).await, (3, 0), "BCG 4, DE_23 2, OPV 6");

    let request = Request {
        data_set: CHILD_HEALTH.into(),
        period: PERIOD.into(),
        org_unit: None,
        children: false,
    };
    let reader = client(&sandbox, &dir);
    let clean = reconcile(&reader, &store, &request)
        .await
        .expect("reconcile");
    assert_eq!(summary(&clean), [3, 0, 0, 0], "{clean:?}");

    // By hand in DHIS2: DE_23 edited, OPV deleted (a lost push), a value
    // Kiungo never produces entered.
    let by_hand = reader
        .post_data_values(
            &[
                value(DE_23, OUTREACH_UNDER_1, "5"),
                value(OPV, OUTREACH_UNDER_1, ""),
                value(BY_HAND, OUTREACH_UNDER_1, "9"),
            ],
            None,
        )
        .await
        .expect("edit by hand");
    assert!(by_hand.conflicts.is_empty(), "{by_hand:?}");

    let drift = reconcile(&reader, &store, &request)
        .await
        .expect("reconcile");
    assert_eq!(summary(&drift), [1, 1, 1, 1], "{drift:?}");
    let row = |kind| {
        drift
            .drift
            .iter()
            .find(|d| d.kind == kind)
            .map(|d| (d.data_element.clone(), d.kiungo.clone(), d.dhis2.clone()))
    };
    assert_eq!(
        row(DriftKind::Missing),
        Some((OPV.into(), "6".into(), None))
    );
    assert_eq!(
        row(DriftKind::Different),
        Some((DE_23.into(), "2".into(), Some("5".into())))
    );
    assert_eq!(
        row(DriftKind::NotFromKiungo),
        Some((BY_HAND.into(), String::new(), Some("9".into())))
    );
    // Repair marks the totals as the mappings wrote them (DE_23 by code).
    let keys = drift.repairable();
    let key = |de: &str| -> TotalKey {
        (
            de.into(),
            PERIOD.into(),
            NGELEHUN.into(),
            OUTREACH_UNDER_1.into(),
            DEFAULT.into(),
        )
    };
    assert_eq!(keys, vec![key(OPV), key("code:DE_23")]);
    store
        .repair_totals(&keys, "ops@moh", "dhis2:BfMAe6Itzgt:202401", clock.now_ms())
        .await
        .expect("repair");
    let audit = store.audit_log(10).await.expect("audit");
    assert!(
        audit.iter().any(
            |(_, actor, action, _, _)| action == "dhis2.reconcile_repair" && actor == "ops@moh"
        ),
        "{audit:?}"
    );
    assert_eq!(push(&w, &clock).await, (2, 0));

    let after = reconcile(&reader, &store, &request)
        .await
        .expect("reconcile");
    assert_eq!(summary(&after), [3, 0, 0, 1], "{after:?}");
    // The value entered by hand is still there, untouched.
    let held = sandbox.dhis2_values();
    let hand = held["dataValues"]
        .as_array()
        .expect("values")
        .iter()
        .find(|v| v["dataElement"] == BY_HAND)
        .cloned()
        .expect("hand value kept");
    assert_eq!(hand["value"], "9");
    sandbox.stop().await;
}

async fn one_org_unit_and_nothing_stored(backend: Backend) {
    kiungo::tls::install_crypto_provider();
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    commit(&store, "e1").await;
    let reader = client(&sandbox, &dir);
    // Another org unit: Kiungo's totals at Ngelehun are out of scope.
    let other = Request {
        data_set: CHILD_HEALTH.into(),
        period: PERIOD.into(),
        org_unit: Some("O6uvpzGd5pu".into()),
        children: false,
    };
    let r = reconcile(&reader, &store, &other).await.expect("reconcile");
    assert_eq!(summary(&r), [0, 0, 0, 0], "{r:?}");
    // Ngelehun, never pushed: all three missing.
    let here = Request {
        org_unit: Some(NGELEHUN.into()),
        ..other
    };
    let r = reconcile(&reader, &store, &here).await.expect("reconcile");
    assert_eq!(summary(&r), [0, 3, 0, 0], "{r:?}");
    // An unknown data set is DHIS2's 404, named.
    let bad = Request {
        data_set: "NoSuchSet01".into(),
        ..here
    };
    let e = reconcile(&reader, &store, &bad).await.expect_err("404");
    assert!(e.to_string().contains("NoSuchSet01"), "{e}");
    sandbox.stop().await;
}

/// `GET /v1/reconciliation` on the running service: viewers only, the
/// query checked, the report as JSON with a hand-entered value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_route_reports_for_viewers() {
    const VIEWER: &str = "reconcile-test-viewer-token-7d3f9b1c5e2a8f4d6b0c";
    kiungo::tls::install_crypto_provider();
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let reader = client(&sandbox, &dir);
    reader
        .post_data_values(&[value(BY_HAND, OUTREACH_UNDER_1, "9")], None)
        .await
        .expect("entered by hand");
    let yaml = format!(
        "mappings: '{}'\nstore:\n  url: '{}'\nhttp:\n  listen: 127.0.0.1:0\n\
         admin:\n  tokens:\n    - {{name: viewer-amina, role: viewer, sha256: {}}}\n\
         destinations:\n  dhis2:\n    server:\n      base_url: '{}'\n\
         \x20     auth: {{type: basic, username: admin, password: {{file: '{}'}}}}\n",
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../mappings/packs")
            .display(),
        db.config.url,
        kiungo::admin::token_hash_hex(VIEWER),
        sandbox.dhis2_url(),
        dir.path().join("pw").display(),
    );
    let file = dir.path().join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    let config = kiungo::config::Config::load(&file).expect("config loads");
    let app = kiungo::app::Application::build(config)
        .await
        .expect("start");
    let base = format!("http://{}/v1/reconciliation", app.http_addr());
    let http = reqwest::Client::new();
    let get = |query: &str, token: Option<&str>| {
        let mut req = http.get(format!("{base}?{query}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let r = req.send().await.expect("send");
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let query = format!("data_set={CHILD_HEALTH}&period={PERIOD}&org_unit={NGELEHUN}");
    assert_eq!(get(&query, None).await.0, 401);
    let (status, report) = get(&query, Some(VIEWER)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["not_from_kiungo"], 1, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["drift"][0]["data_element"], BY_HAND);
    assert_eq!(report["drift"][0]["dhis2"], "9");
    let (status, error) = get(&format!("data_set=x&period={PERIOD}"), Some(VIEWER)).await;
    assert_eq!(status, 400);
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("data_set:")),
        "{error}"
    );
    let (status, _) = get(
        &format!("data_set=NoSuchSet01&period={PERIOD}&org_unit={NGELEHUN}"),
        Some(VIEWER),
    )
    .await;
    assert_eq!(status, 502);
    app.run_until(async {}).await;
    sandbox.stop().await;
}

/// `kiungo dhis2 reconcile` as an operator runs it: CSV out, exit code 1
/// on drift, `--repair` audited with `--actor`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_csv_and_repairs() {
    kiungo::tls::install_crypto_provider();
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    let db = ScratchDb::new(Backend::Sqlite).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    commit(&store, "e1").await;
    let reader = client(&sandbox, &dir);
    reader
        .post_data_values(&[value(BY_HAND, OUTREACH_UNDER_1, "9")], None)
        .await
        .expect("entered by hand");
    let yaml = format!(
        "store:\n  url: '{}'\ndestinations:\n  dhis2:\n    server:\n      base_url: '{}'\n\
         \x20     auth: {{type: basic, username: admin, password: {{file: '{}'}}}}\n",
        db.config.url,
        sandbox.dhis2_url(),
        dir.path().join("pw").display(),
    );
    let file = dir.path().join("kiungo.yaml");
    std::fs::write(&file, yaml).expect("config");
    let run = |extra: &'static [&'static str]| {
        let file = file.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_kiungo"))
                .arg("dhis2")
                .arg("--config")
                .arg(&file)
                .args([
                    "--actor",
                    "ops-juma",
                    "reconcile",
                    "--data-set",
                    CHILD_HEALTH,
                ])
                .args(["--period", PERIOD, "--format", "csv"])
                .args(extra)
                .output()
                .expect("runs")
        })
    };
    let out = run(&[]).await.expect("joined");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "kind,data_element,period,org_unit,category_option_combo,attribute_option_combo,kiungo,dhis2"
    );
    assert_eq!(lines.len(), 5, "{stdout}");
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("missing,")).count(),
        3
    );
    assert!(
        lines.contains(
            &format!(
                "not_from_kiungo,{BY_HAND},{PERIOD},{NGELEHUN},{OUTREACH_UNDER_1},{DEFAULT},,9"
            )
            .as_str()
        )
    );
    assert!(
        store.audit_log(10).await.expect("audit").is_empty(),
        "reading only"
    );

    let out = run(&["--repair"]).await.expect("joined");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("3 total(s) marked for a push"), "{stderr}");
    let audit = store.audit_log(10).await.expect("audit");
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(
        (
            audit[0].1.as_str(),
            audit[0].2.as_str(),
            audit[0].3.as_str()
        ),
        (
            "ops-juma",
            "dhis2.reconcile_repair",
            "dhis2:BfMAe6Itzgt:202401"
        )
    );
    sandbox.stop().await;
}

kiungo::on_both_backends!(
    reconcile_finds_hand_edits_and_repair_restores_kiungos_totals,
    one_org_unit_and_nothing_stored,
);
