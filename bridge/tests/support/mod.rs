//! Helpers the store-level tests share: the shipped packs, a CHT visit
//! built from the pack's fixture, and that visit mapped into an `Ingest`
//! as the committer receives it. Each test crate uses a part of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiungo::delivery::circuit::Circuit;
use kiungo::delivery::retry::{ManualClock, RetryParams};
use kiungo::delivery::{Dhis2Destination, Dhis2Worker};
use kiungo::store::{Ingest, Outputs, Rejection, Store};
use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};
use serde_json::{Value, json};

/// The shipped mapping packs' folder.
pub fn packs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

/// The shipped packs, with the test pseudonym key.
pub fn packs() -> MappingSet {
    MappingSet::load_dir(
        &packs_dir(),
        LoadOptions {
            pseudonym_key: Some(PseudonymKey::for_tests()),
            ..LoadOptions::default()
        },
    )
    .expect("packs load")
}

/// The CHT pack's first-visit fixture as event `id`, at `location`,
/// replacing `replaces` (empty: nothing).
pub fn cht_visit(id: &str, location: &str, replaces: &str) -> Value {
    let path = packs_dir().join("cht-anc/fixtures/anc-visit-1-facility.json");
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    v["_id"] = json!(id);
    v["fields"]["meta"]["instanceID"] = json!(format!("uuid:{id}"));
    v["fields"]["meta"]["deprecatedID"] = json!(replaces);
    v["fields"]["anc_visits"]["visit_location"] = json!(location);
    v
}

/// `payload` from the `cht` source, mapped by `set` (a mapping error
/// becomes the rejection the committer parks), with a publisher timestamp
/// `version_ts`, from queue `q` as message `m` with one header.
pub fn cht_ingest(set: &MappingSet, payload: &Value, version_ts: Option<i64>) -> Ingest {
    let result = set
        .map(&Event {
            source: "cht".into(),
            message_id: None,
            payload: Arc::new(payload.clone()),
        })
        .map(Outputs::from)
        .map_err(|e| Rejection {
            code: e.reason().into(),
            reason: e.to_string(),
            mapping: None,
            event_id: None,
            detail: None,
        });
    Ingest {
        source: "cht".into(),
        queue: Some("q".into()),
        message_id: Some("m".into()),
        version_ts,
        received_at: kiungo::store::now_ms(),
        payload: serde_json::to_vec(payload).expect("bytes"),
        headers: Some(json!({"x-app": "cht"})),
        result,
    }
}

/// A DHIS2 worker on the clock moved by hand: 100 values a request, 2 s
/// settling, a 60 s lease, a circuit that opens after 100 failures.
pub fn dhis2_worker<D: Dhis2Destination>(
    store: &Store,
    destination: D,
    clock: &ManualClock,
    retry: RetryParams,
) -> Dhis2Worker<D> {
    Dhis2Worker {
        store: store.clone(),
        destination,
        retry,
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

/// Commits version `version` of event `id` of source `cht`, mapped by a
/// test mapping to `dhis2` alone (none: its earlier contributions are
/// withdrawn).
pub async fn commit_dhis2(
    store: &Store,
    id: &str,
    version: u32,
    dhis2: Vec<kiungo_mappings::Dhis2Contribution>,
) {
    let ingest = Ingest {
        source: "cht".into(),
        queue: None,
        message_id: None,
        version_ts: Some(i64::from(version)),
        received_at: kiungo::store::now_ms(),
        payload: format!(r#"{{"_id":"{id}","v":{version}}}"#).into_bytes(),
        headers: None,
        result: Ok(Outputs {
            mapping: "completeness-test".into(),
            mapping_version: 1,
            event_id: id.into(),
            replaces: None,
            bundle: None,
            dhis2,
            puts: vec![],
        }),
    };
    store.commit(&[ingest]).await.expect("commit");
}

/// A FHIR server (wiremock) answering every transaction `201 Created`
/// for up to eight entries.
pub async fn fhir_accepting_every_transaction() -> wiremock::MockServer {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let fhir = MockServer::start().await;
    let response = json!({
        "resourceType": "Bundle", "type": "transaction-response",
        "entry": (0..8).map(|i| json!({
            "response": {"status": "201 Created", "location": format!("Observation/{i}/_history/1")}
        })).collect::<Vec<_>>(),
    });
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(response.to_string().into_bytes(), "application/fhir+json"),
        )
        .mount(&fhir)
        .await;
    fhir
}

/// A pool on `db` with only the migrations named before `first_left_out`
/// (e.g. `"0013"`) run from the source tree: a store as an earlier
/// release left it, for rows to be written as that schema shaped them
/// before `Store::open` runs the rest.
pub async fn store_before_migration(
    db: &kiungo::store::scratch::ScratchDb,
    backend: kiungo::store::Backend,
    first_left_out: &str,
) -> sqlx::AnyPool {
    let folder = match backend {
        kiungo::store::Backend::Sqlite => "sqlite",
        kiungo::store::Backend::Postgres => "postgres",
    };
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(folder);
    let before = tempfile::tempdir().expect("dir");
    for entry in std::fs::read_dir(&source).expect("migrations") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        if name.as_str() < first_left_out {
            std::fs::copy(&path, before.path().join(&name)).expect("copy");
        }
    }
    sqlx::any::install_default_drivers();
    let url = match backend {
        kiungo::store::Backend::Sqlite => format!("{}?mode=rwc", db.config.url),
        kiungo::store::Backend::Postgres => db.config.url.clone(),
    };
    let pool = sqlx::AnyPool::connect(&url).await.expect("connect");
    sqlx::migrate::Migrator::new(before.path())
        .await
        .expect("migrator")
        .run(&pool)
        .await
        .expect("migrate");
    pool
}
