//! Data set completeness against DHIS2's own answers: the sink behind
//! the completeness pass against a wiremock DHIS2 in the 2.38–2.41
//! shapes (and `/api/37`'s bare summary), and the whole path, values and
//! registrations, against the sandbox DHIS2, which keeps them (both
//! backends).

mod support;

use std::sync::Arc;
use std::time::Duration;

use kiungo::delivery::circuit::Circuit;
use kiungo::delivery::completeness::CompletenessConfig;
use kiungo::delivery::retry::{ManualClock, RetryParams};
use kiungo::delivery::sinks::Dhis2Sink;
use kiungo::delivery::{
    CompletenessDestination, CompletenessWorker, CompletionAnswer, DataSetCache, Dhis2Worker,
};
use kiungo::sandbox::{Sandbox, SandboxConfig};
use kiungo::store::scratch::ScratchDb;
use kiungo::store::{Backend, CompletenessKey, Store};
use kiungo_connectors::auth::{AuthConfig, SecretRef};
use kiungo_connectors::dhis2::{Dhis2Client, Dhis2Config};
use kiungo_mappings::period::Calendar;
use kiungo_mappings::{Aggregation, Dhis2Contribution, PeriodType};
use serde_json::{Value, json};
use wiremock::matchers::{body_string_contains, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Reproductive Health (monthly) and Child Health; two of Reproductive
/// Health's data elements (ANC 1st visit, ANC 4th or more, the latter
/// written by its code), on "Fixed/Outreach"; Ngelehun CHC and another
/// facility.
const REPRODUCTIVE: &str = "QX4ZTUbOt3a";
const CHILD_HEALTH: &str = "BfMAe6Itzgt";
const ANC1: &str = "fbfJHSPpUQD";
const ANC4_CODE: &str = "code:DE_359599";
const FIXED: &str = "pq2XI5kz2BY";
const NGELEHUN: &str = "DiszpKrYNg8";
const OTHER: &str = "aQoqXL4cZaF";
const PERIOD: &str = "202401";
/// The "Target vs Result" attribute category combo (Sierra Leone demo),
/// its two options, and the option combo of each (UIDs made up for the
/// tests; the demo lists none).
const TARGET_RESULT: &str = "WBW7RjsApsv";
const TARGET_OPTION: &str = "STgy27fGvaU";
const RESULT_OPTION: &str = "JvIqWKLPPkt";
const TARGET: &str = "TgtResAoc01";
const RESULT: &str = "TgtResAoc02";

fn client(uri: &str, api_version: Option<u16>) -> Dhis2Client {
    kiungo::tls::install_crypto_provider();
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "district").expect("pw");
    let mut config = Dhis2Config::new(
        uri,
        AuthConfig::Basic {
            username: "admin".into(),
            password: SecretRef {
                env: None,
                file: Some(pw),
            },
        },
    );
    config.api_version = api_version;
    // The client reads the password when it is built.
    Dhis2Client::new(config).expect("client")
}

fn sink(uri: &str, api_version: Option<u16>) -> Dhis2Sink {
    Dhis2Sink::new(client(uri, api_version), Duration::from_secs(3600))
}

fn key(org_unit: &str) -> CompletenessKey {
    key_for(org_unit, "HllvX50cXC0")
}

/// The key of `org_unit`'s registration under attribute option combo
/// `aoc` (as a mapping wrote it).
fn key_for(org_unit: &str, aoc: &str) -> CompletenessKey {
    CompletenessKey {
        data_set: REPRODUCTIVE.into(),
        period: PERIOD.into(),
        org_unit: org_unit.into(),
        attribute_option_combo: aoc.into(),
    }
}

fn json_body(status: u16, body: &Value) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(body)
}

/// 2.38–2.41: the ImportSummary in a WebMessage, 200 on success.
fn imported() -> Value {
    json!({
        "httpStatus": "OK", "httpStatusCode": 200, "status": "OK", "message": "Import was successful.",
        "response": {"responseType": "ImportSummary", "status": "SUCCESS",
            "description": "Import process completed successfully",
            "importCount": {"imported": 1, "updated": 0, "ignored": 0, "deleted": 0},
            "conflicts": [], "dataSetComplete": "false"}
    })
}

/// 2.41: a refused registration, 409 WARNING with DHIS2's conflict.
fn not_assigned(ou: &str) -> Value {
    json!({
        "httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
        "message": "One more conflicts encountered, please check import summary.",
        "response": {"responseType": "ImportSummary", "status": "WARNING",
            "description": "Import process completed successfully",
            "importCount": {"imported": 0, "updated": 0, "ignored": 1, "deleted": 0},
            "conflicts": [{"object": ou, "objects": {"organisationUnit": ou},
                "value": format!("Data set: `{REPRODUCTIVE}` is not assigned to organisation unit: `{ou}`")}],
            "dataSetComplete": "false"}
    })
}

#[tokio::test]
async fn a_data_set_gives_its_period_type_and_elements_by_uid_and_code() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/api/dataSets/{CHILD_HEALTH}")))
        .and(query_param(
            "fields",
            "id,periodType,dataSetElements[dataElement[id,code]]",
        ))
        .respond_with(json_body(
            200,
            &json!({"id": CHILD_HEALTH, "periodType": "Monthly", "dataSetElements": [
                {"dataElement": {"id": ANC1, "code": "DE_359596"}},
                {"dataElement": {"id": "cYeuwXTCPkU"}}
            ]}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets/NoSuchSet01"))
        .respond_with(json_body(
            404,
            &json!({"httpStatus": "Not Found", "httpStatusCode": 404, "status": "ERROR",
                "message": "DataSet with id NoSuchSet01 could not be found."}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets/Weird000001"))
        .respond_with(json_body(
            200,
            &json!({"id": "Weird000001", "periodType": "Fortnightly", "dataSetElements": []}),
        ))
        .mount(&server)
        .await;
    let s = sink(&server.uri(), None);
    let meta = s.data_set(CHILD_HEALTH).await.expect("data set");
    assert_eq!(meta.period_type, PeriodType::Monthly);
    assert_eq!(
        meta.data_elements,
        vec!["code:DE_359596", ANC1, "cYeuwXTCPkU"]
    );
    let missing = s.data_set("NoSuchSet01").await.expect_err("404");
    assert!(!missing.retryable, "{missing:?}");
    assert!(missing.message.contains("NoSuchSet01"), "{missing:?}");
    let weird = s.data_set("Weird000001").await.expect_err("period type");
    assert!(!weird.retryable, "{weird:?}");
    assert!(weird.message.contains("Fortnightly"), "{weird:?}");
}

#[tokio::test]
async fn a_registration_is_done_on_200_and_refused_on_a_409_conflict() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(body_string_contains(NGELEHUN))
        .and(body_string_contains(
            "\"attributeOptionCombo\":\"HllvX50cXC0\"",
        ))
        .respond_with(json_body(200, &imported()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(body_string_contains(OTHER))
        .respond_with(json_body(409, &not_assigned(OTHER)))
        .expect(1)
        .mount(&server)
        .await;
    let s = sink(&server.uri(), None);
    assert_eq!(
        s.register(&key(NGELEHUN)).await.expect("answer"),
        CompletionAnswer::Done
    );
    assert_eq!(
        s.register(&key(OTHER))
            .await
            .expect("a conflict is an answer"),
        CompletionAnswer::Refused {
            code: "dhis2_conflict".into(),
            message: format!(
                "Data set: `{REPRODUCTIVE}` is not assigned to organisation unit: `{OTHER}`"
            ),
        },
        "DHIS2's words, with the identifiers Kiungo sent"
    );
}

#[tokio::test]
async fn api_37s_bare_summary_with_a_conflict_is_a_refusal() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/37/completeDataSetRegistrations"))
        .respond_with(json_body(
            200,
            &json!({"responseType": "ImportSummary", "status": "WARNING",
                "description": "Import process completed successfully",
                "importCount": {"imported": 0, "updated": 0, "ignored": 1, "deleted": 0},
                "conflicts": [{"object": PERIOD,
                    "value": format!("Current date is past expiry days for period {PERIOD} and data set: {REPRODUCTIVE}")}],
                "dataSetComplete": "false"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let answer = sink(&server.uri(), Some(37))
        .register(&key(NGELEHUN))
        .await
        .expect("answer");
    let CompletionAnswer::Refused { code, message } = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(code, "dhis2_conflict");
    assert!(message.contains("past expiry days"), "{message}");
}

#[tokio::test]
async fn failures_to_get_an_answer_are_retryable_and_code_org_units_resolve() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .and(query_param("filter", "code:in:[OU_278371]"))
        .respond_with(json_body(
            200,
            &json!({"organisationUnits": [{"id": NGELEHUN, "code": "OU_278371", "name": "Ngelehun CHC"}]}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(body_string_contains(NGELEHUN))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "30"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .and(query_param("filter", "code:in:[OU_GONE]"))
        .respond_with(json_body(200, &json!({"organisationUnits": []})))
        .mount(&server)
        .await;
    let s = sink(&server.uri(), None);
    let failure = s.register(&key("code:OU_278371")).await.expect_err("503");
    assert!(failure.retryable, "{failure:?}");
    assert_eq!(failure.retry_after, Some(Duration::from_secs(30)));
    assert_eq!(
        s.register(&key("code:OU_GONE")).await.expect("answer"),
        CompletionAnswer::Refused {
            code: "unknown_reference".into(),
            message: "org unit `code:OU_GONE` not found in DHIS2".into(),
        }
    );
}

#[tokio::test]
async fn an_undo_deletes_and_a_409_web_message_is_a_refusal() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(query_param("ds", REPRODUCTIVE))
        .and(query_param("pe", PERIOD))
        .and(query_param("ou", NGELEHUN))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(query_param("ou", OTHER))
        .respond_with(json_body(
            409,
            &json!({"httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
                "message": format!("Data set {REPRODUCTIVE} is locked for period {PERIOD} and org unit `{OTHER}`"),
                "errorCode": "E2021"}),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let s = sink(&server.uri(), None);
    assert_eq!(
        s.undo(&key(NGELEHUN)).await.expect("undone"),
        CompletionAnswer::Done
    );
    let answer = s.undo(&key(OTHER)).await.expect("a refusal is an answer");
    let CompletionAnswer::Refused { code, message } = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(code, "E2021");
    assert!(message.contains(&format!("`{OTHER}`")), "{message}");
}

/// The registration of another attribute option combo carries its UID
/// (resolved from `code:` as for values); its undo cannot (DHIS2
/// 2.38–2.41's `DELETE` takes no combo UID): the combo's category combo
/// and options are read from DHIS2 and sent as `cc` and `cp`. A combo
/// DHIS2 does not have is a refusal.
#[tokio::test]
async fn another_attribute_option_combo_is_registered_by_uid_and_undone_by_cc_and_cp() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "code:in:[TARGET]"))
        .respond_with(json_body(
            200,
            &json!({"categoryOptionCombos": [{"id": TARGET, "code": "TARGET", "name": "Target"}]}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(body_string_contains(format!(
            "\"organisationUnit\":\"{NGELEHUN}\",\"attributeOptionCombo\":\"{TARGET}\",\"completed\":true"
        )))
        .respond_with(json_body(200, &imported()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", format!("id:in:[{TARGET}]")))
        .and(query_param(
            "fields",
            "id,code,categoryCombo[id],categoryOptions[id]",
        ))
        .respond_with(json_body(
            200,
            &json!({"categoryOptionCombos": [{"id": TARGET, "code": "TARGET",
                "categoryCombo": {"id": TARGET_RESULT}, "categoryOptions": [{"id": TARGET_OPTION}]}]}),
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "id:in:[GoneAoc0001]"))
        .respond_with(json_body(200, &json!({"categoryOptionCombos": []})))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(query_param("ds", REPRODUCTIVE))
        .and(query_param("pe", PERIOD))
        .and(query_param("ou", NGELEHUN))
        .and(query_param("cc", TARGET_RESULT))
        .and(query_param("cp", TARGET_OPTION))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let s = sink(&server.uri(), None);
    assert_eq!(
        s.register(&key_for(NGELEHUN, "code:TARGET"))
            .await
            .expect("answer"),
        CompletionAnswer::Done
    );
    assert_eq!(
        s.undo(&key_for(NGELEHUN, "code:TARGET"))
            .await
            .expect("answer"),
        CompletionAnswer::Done
    );
    assert_eq!(
        s.undo(&key_for(NGELEHUN, "GoneAoc0001"))
            .await
            .expect("a refusal is an answer"),
        CompletionAnswer::Refused {
            code: "unknown_reference".into(),
            message: "attribute option combo `GoneAoc0001` not found in DHIS2".into(),
        }
    );
    // No DELETE without its combo's cc and cp: the default's would undo
    // another registration.
    let deletes = server
        .received_requests()
        .await
        .expect("recorded")
        .into_iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .count();
    assert_eq!(deletes, 1);
}

fn contribution(de: &str, ou: &str) -> Dhis2Contribution {
    contribution_for(de, ou, "HllvX50cXC0")
}

/// A value under attribute option combo `aoc`.
fn contribution_for(de: &str, ou: &str, aoc: &str) -> Dhis2Contribution {
    Dhis2Contribution {
        rule: format!("rule-{de}"),
        data_element: de.into(),
        period: PERIOD.into(),
        org_unit: ou.into(),
        category_option_combo: FIXED.into(),
        attribute_option_combo: aoc.into(),
        value: 1.into(),
        aggregation: Aggregation::Count,
        date: "2024-01-15".into(),
    }
}

async fn commit(store: &Store, id: &str, version: u32, dhis2: Vec<Dhis2Contribution>) {
    support::commit_dhis2(store, id, version, dhis2).await;
}

/// What the sandbox DHIS2 holds as registered: `(data set, period, org
/// unit)`.
async fn registrations(sandbox: &Sandbox) -> Vec<(String, String, String)> {
    registrations_by_combo(sandbox)
        .await
        .into_iter()
        .map(|(ds, pe, ou, _)| (ds, pe, ou))
        .collect()
}

/// What the sandbox DHIS2 holds as registered: `(data set, period, org
/// unit, attribute option combo)`, sorted.
async fn registrations_by_combo(sandbox: &Sandbox) -> Vec<(String, String, String, String)> {
    let url = format!("{}/sandbox/registrations", sandbox.dhis2_url());
    let doc: Value = reqwest::get(url)
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    doc["completeDataSetRegistrations"]
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (
                f("dataSet"),
                f("period"),
                f("organisationUnit"),
                f("attributeOptionCombo"),
            )
        })
        .collect()
}

/// The value worker and the completeness pass against the sandbox, on a
/// new store and a clock moved by hand.
async fn workers(
    sandbox: &Sandbox,
    backend: Backend,
) -> (
    Store,
    ScratchDb,
    ManualClock,
    Dhis2Worker<Dhis2Sink>,
    CompletenessWorker<Dhis2Sink>,
) {
    let db = ScratchDb::new(backend).await.expect("db");
    let store = Store::open(&db.config).await.expect("open");
    let clock = ManualClock::at(kiungo::store::now_ms() + 60_000);
    let circuit = Arc::new(Circuit::new(5, Duration::from_secs(30)));
    let retry = RetryParams::for_test();
    let values = Dhis2Worker {
        store: store.clone(),
        destination: sink(&sandbox.dhis2_url(), None),
        retry,
        circuit: circuit.clone(),
        clock: Arc::new(clock.clone()),
        batch: 100,
        delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(2),
        lease: Duration::from_secs(60),
        idle: Duration::from_millis(10),
        completeness: true,
    };
    let pass = CompletenessWorker {
        store: store.clone(),
        destination: sink(&sandbox.dhis2_url(), None),
        data_sets: vec![CompletenessConfig {
            data_set: REPRODUCTIVE.into(),
            grace: Duration::from_secs(2 * 24 * 3600),
        }],
        calendar: Calendar::Iso8601,
        retry,
        circuit,
        clock: Arc::new(clock.clone()),
        batch: 100,
        recheck: Duration::from_secs(30),
        lease: Duration::from_secs(60),
        metadata_refresh: Duration::from_secs(3600),
        idle: Duration::from_millis(10),
        metadata: DataSetCache::default(),
    };
    (store, db, clock, values, pass)
}

async fn registrations_land_in_the_sandbox_and_are_undone(backend: Backend) {
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let (store, _db, clock, values, pass) = workers(&sandbox, backend).await;
    let push = || async {
        clock.advance(Duration::from_secs(3));
        values.run_once().await.expect("values pass")
    };

    commit(&store, "e1", 1, vec![contribution(ANC1, NGELEHUN)]).await;
    commit(&store, "e2", 1, vec![contribution(ANC4_CODE, OTHER)]).await;
    let pushed = push().await;
    assert_eq!((pushed.delivered, pushed.parked), (2, 0), "{pushed:?}");
    let r = pass.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked, r.retried), (2, 0, 0), "{r:?}");
    let mut want = vec![
        (
            REPRODUCTIVE.to_owned(),
            PERIOD.to_owned(),
            NGELEHUN.to_owned(),
        ),
        (REPRODUCTIVE.to_owned(), PERIOD.to_owned(), OTHER.to_owned()),
    ];
    want.sort();
    let mut got = registrations(&sandbox).await;
    got.sort();
    assert_eq!(got, want);

    // All of Ngelehun's values withdrawn: its registration is undone in
    // DHIS2; the other stays.
    commit(&store, "e1", 2, vec![]).await;
    assert_eq!(push().await.delivered, 1, "the deletion");
    let r = pass.run_once().await.expect("pass");
    assert_eq!(r.delivered, 1, "{r:?}");
    assert_eq!(
        registrations(&sandbox).await,
        vec![(REPRODUCTIVE.to_owned(), PERIOD.to_owned(), OTHER.to_owned())]
    );
    assert_eq!(pass.run_once().await.expect("pass").claimed, 0);
    sandbox.stop().await;
}

/// One org unit reporting under two attribute option combos ("Target"
/// and "Result" of "Target vs Result", known to the sandbox with their
/// category options): two registrations in the sandbox, each with its
/// combo; withdrawing Target's values undoes Target's alone (the sandbox
/// finds it by the `cc` and `cp` DHIS2 takes).
async fn each_attribute_option_combo_is_registered_in_the_sandbox(backend: Backend) {
    let dir = tempfile::tempdir().expect("dir");
    let mut metadata: Value =
        serde_json::from_str(kiungo::sandbox::DEFAULT_METADATA).expect("metadata");
    metadata["attributeOptionCombos"] = json!([
        {"id": TARGET, "name": "Target", "categoryCombo": {"id": TARGET_RESULT},
            "categoryOptions": [TARGET_OPTION]},
        {"id": RESULT, "name": "Result", "categoryCombo": {"id": TARGET_RESULT},
            "categoryOptions": [RESULT_OPTION]}
    ]);
    let metadata_file = dir.path().join("metadata.json");
    std::fs::write(&metadata_file, metadata.to_string()).expect("metadata");
    let mut config = SandboxConfig::for_test();
    config.dhis2.metadata = Some(metadata_file);
    let sandbox = Sandbox::start(config).await.expect("sandbox");
    let (store, _db, clock, values, pass) = workers(&sandbox, backend).await;
    let push = || async {
        clock.advance(Duration::from_secs(3));
        values.run_once().await.expect("values pass")
    };

    commit(
        &store,
        "t1",
        1,
        vec![contribution_for(ANC1, NGELEHUN, TARGET)],
    )
    .await;
    commit(
        &store,
        "r1",
        1,
        vec![contribution_for(ANC4_CODE, NGELEHUN, RESULT)],
    )
    .await;
    let pushed = push().await;
    assert_eq!((pushed.delivered, pushed.parked), (2, 0), "{pushed:?}");
    let r = pass.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked, r.retried), (2, 0, 0), "{r:?}");
    let held = |aoc: &str| {
        (
            REPRODUCTIVE.to_owned(),
            PERIOD.to_owned(),
            NGELEHUN.to_owned(),
            aoc.to_owned(),
        )
    };
    let mut got = registrations_by_combo(&sandbox).await;
    got.sort();
    assert_eq!(got, vec![held(TARGET), held(RESULT)]);

    commit(&store, "t1", 2, vec![]).await;
    assert_eq!(push().await.delivered, 1, "the deletion");
    let r = pass.run_once().await.expect("pass");
    assert_eq!((r.delivered, r.parked), (1, 0), "{r:?}");
    assert_eq!(registrations_by_combo(&sandbox).await, vec![held(RESULT)]);
    assert_eq!(pass.run_once().await.expect("pass").claimed, 0);
    sandbox.stop().await;
}

/// Waits for `done` to hold, up to a generous deadline.
async fn eventually<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Start-up runs the pass only when `completeness` is configured: with
/// it, a value for an ended period leads to its registration in the
/// sandbox; without it, the value pushes note nothing.
async fn start_up_runs_the_pass_only_when_configured(backend: Backend) {
    let sandbox = Sandbox::start(SandboxConfig::for_test())
        .await
        .expect("sandbox");
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("pw"), "district").expect("pw");
    for configured in [true, false] {
        let db = ScratchDb::new(backend).await.expect("db");
        let store = Store::open(&db.config).await.expect("open");
        let completeness = if configured {
            format!("  completeness: [{{data_set: {REPRODUCTIVE}, grace: 1h}}]\n")
        } else {
            String::new()
        };
        let yaml = format!(
            "dhis2:\n  server:\n    base_url: '{}'\n    auth: {{type: basic, username: admin, password: {{file: '{}'}}}}\n  push_delay: 100ms\n  max_push_delay: 100ms\n{completeness}",
            sandbox.dhis2_url(),
            dir.path().join("pw").display()
        );
        let config: kiungo::delivery::config::DestinationsConfig =
            serde_saphyr::from_str(&yaml).expect("config");
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let (shutdown, rx) = tokio::sync::watch::channel(false);
        let mappings = kiungo_mappings::MappingSet::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs"),
            kiungo_mappings::LoadOptions {
                pseudonym_key: Some(kiungo_mappings::PseudonymKey::for_tests()),
                ..kiungo_mappings::LoadOptions::default()
            },
        )
        .expect("packs load");
        let tasks = kiungo::delivery::start(&config, &mappings, &store, &rx, Arc::default())
            .expect("start");
        let ou = if configured { NGELEHUN } else { OTHER };
        commit(&store, "e1", 1, vec![contribution(ANC1, ou)]).await;
        if configured {
            eventually("the registration lands", || async {
                registrations(&sandbox).await.contains(&(
                    REPRODUCTIVE.to_owned(),
                    PERIOD.to_owned(),
                    NGELEHUN.to_owned(),
                ))
            })
            .await;
        } else {
            eventually("the value is pushed", || async {
                !store.dhis2_pushed().await.expect("pushed").is_empty()
            })
            .await;
            assert_eq!(store.completeness_changes_waiting().await.expect("n"), 0);
            assert!(
                store
                    .completeness_rows(REPRODUCTIVE)
                    .await
                    .expect("rows")
                    .is_empty()
            );
        }
        shutdown.send(true).expect("shutdown");
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(30), t)
                .await
                .expect("stops")
                .expect("task");
        }
    }
    assert_eq!(
        registrations(&sandbox).await,
        vec![(
            REPRODUCTIVE.to_owned(),
            PERIOD.to_owned(),
            NGELEHUN.to_owned()
        )]
    );
    sandbox.stop().await;
}

kiungo::on_both_backends!(
    registrations_land_in_the_sandbox_and_are_undone,
    each_attribute_option_combo_is_registered_in_the_sandbox,
    start_up_runs_the_pass_only_when_configured,
);
