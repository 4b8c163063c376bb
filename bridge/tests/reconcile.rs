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
        circuit: Circuit::new(100, Duration::from_secs(30)),
        clock: Arc::new(clock.clone()),
        batch: 100,
        delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
        lease: Duration::from_secs(60),
        idle: Duration::from_millis(10),
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

kiungo::on_both_backends!(
    reconcile_finds_hand_edits_and_repair_restores_kiungos_totals,
    one_org_unit_and_nothing_stored,
);
