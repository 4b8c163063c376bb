//! End-to-end tests of both simulators over HTTP.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use serde_json::{Value, json};

use super::{Faults, Outage, Sandbox, SandboxConfig};

const ANC1: &str = "fbfJHSPpUQD"; // ANC 1st visit, NUMBER, Fixed/Outreach
const FIXED: &str = "pq2XI5kz2BY";
const OUTREACH: &str = "PT59n8BQbqM";
const BCG: &str = "s46m5MS0hxu"; // BCG doses given, INTEGER, Location and age group
const NGELEHUN: &str = "DiszpKrYNg8";
const DOCS_PAT: &str = "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092";

fn client() -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::new()
}

async fn fetch(url: String) -> reqwest::Result<reqwest::Response> {
    client().get(url).send().await
}

async fn start() -> Sandbox {
    Sandbox::start(SandboxConfig::for_test()).await.unwrap()
}

fn dv(de: &str, pe: &str, ou: &str, coc: &str, value: &str) -> Value {
    json!({"dataElement": de, "period": pe, "orgUnit": ou, "categoryOptionCombo": coc, "value": value})
}

async fn post_dvs(sb: &Sandbox, path: &str, body: &Value) -> (u16, Value) {
    let response = client()
        .post(format!("{}{path}", sb.dhis2_url()))
        .basic_auth("admin", Some("district"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn get_json(url: String) -> (u16, Value) {
    let response = client()
        .get(url)
        .basic_auth("admin", Some("district"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn stored_values(sb: &Sandbox) -> Value {
    get_json(format!("{}/sandbox/values", sb.dhis2_url()))
        .await
        .1
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[tokio::test]
async fn dhis2_clean_import_is_200_success_and_stored() {
    let sb = start().await;
    let body = json!({"dataValues": [
        dv(ANC1, "202401", NGELEHUN, FIXED, "12"),
        dv(ANC1, "2024-01", NGELEHUN, OUTREACH, "3"),
    ]});
    let (status, msg) = post_dvs(&sb, "/api/dataValueSets", &body).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&msg),
        [
            "httpStatus",
            "httpStatusCode",
            "status",
            "message",
            "response"
        ]
    );
    assert_eq!(msg["httpStatus"], "OK");
    assert_eq!(msg["status"], "OK");
    assert_eq!(msg["message"], "Import was successful.");
    let summary = &msg["response"];
    assert_eq!(
        keys(summary),
        [
            "responseType",
            "status",
            "importOptions",
            "description",
            "importCount",
            "conflicts",
            "rejectedIndexes",
            "dataSetComplete"
        ]
    );
    assert_eq!(summary["status"], "SUCCESS");
    assert_eq!(
        summary["importCount"],
        json!({"imported": 2, "updated": 0, "ignored": 0, "deleted": 0})
    );
    assert_eq!(summary["conflicts"], json!([]));
    assert_eq!(summary["rejectedIndexes"], json!([]));

    let values = stored_values(&sb).await;
    assert_eq!(values["total"], 2);
    // `2024-01` was stored under its canonical id.
    let (status, one) = get_json(format!(
        "{}/api/dataValues?de={ANC1}&pe=202401&ou={NGELEHUN}&co={OUTREACH}",
        sb.dhis2_url()
    ))
    .await;
    assert_eq!((status, one), (200, json!(["3"])));
    let (_, set) = get_json(format!(
        "{}/api/dataValueSets?dataSet=QX4ZTUbOt3a&period=202401&orgUnit={NGELEHUN}",
        sb.dhis2_url()
    ))
    .await;
    assert_eq!(set["dataValues"].as_array().unwrap().len(), 2);
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_conflicts_are_409_warning_merged_and_the_rest_is_stored() {
    let sb = start().await;
    let body = json!({"dataValues": [
        dv(ANC1, "202401", NGELEHUN, FIXED, "12"),
        dv(ANC1, "2024M01", NGELEHUN, FIXED, "1"),
        dv(ANC1, "202401", "XXXXXXXXXXX", FIXED, "1"),
        dv(ANC1, "2024M01", NGELEHUN, OUTREACH, "1"),
        dv(BCG, "202401", NGELEHUN, "Prlt0C1RF0s", "4"),
        dv(BCG, "202401", NGELEHUN, "psbwp3CQEhs", "4.5"),
        dv(BCG, "202401", NGELEHUN, FIXED, "4"),
    ]});
    let (status, msg) = post_dvs(&sb, "/api/dataValueSets", &body).await;
    assert_eq!(status, 409);
    assert_eq!(msg["httpStatus"], "Conflict");
    assert_eq!(msg["status"], "WARNING");
    assert_eq!(
        msg["message"],
        "One more conflicts encountered, please check import summary."
    );
    let summary = &msg["response"];
    assert_eq!(summary["status"], "WARNING");
    assert_eq!(
        summary["importCount"],
        json!({"imported": 2, "updated": 0, "ignored": 5, "deleted": 0})
    );
    assert_eq!(summary["rejectedIndexes"], json!([1, 2, 3, 5, 6]));
    let conflicts = summary["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 4, "{conflicts:#?}");
    assert_eq!(
        conflicts[0],
        json!({"object": "2024M01", "objects": {"period": "2024M01"},
               "value": "Period not valid: `2024M01`", "errorCode": "E7611",
               "property": "period", "indexes": [1, 3]})
    );
    assert_eq!(
        conflicts[1],
        json!({"object": "XXXXXXXXXXX", "objects": {"organisationUnit": "XXXXXXXXXXX"},
               "value": "Organisation unit not found or not accessible: `XXXXXXXXXXX`",
               "errorCode": "E7612", "property": "orgUnit", "indexes": [2]})
    );
    assert_eq!(conflicts[2]["errorCode"], "E7619");
    assert_eq!(conflicts[2]["indexes"], json!([5]));
    assert_eq!(conflicts[2]["objects"]["value"], "value_not_integer");
    assert_eq!(conflicts[3]["errorCode"], "E7634");
    assert_eq!(
        conflicts[3]["objects"],
        json!({"categoryOptionCombo": FIXED, "dataElement": BCG})
    );

    let values = stored_values(&sb).await;
    assert_eq!(values["total"], 2);
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_replays_are_ignored_changes_updated_empties_deleted() {
    let sb = start().await;
    let first = json!({"dataValues": [
        dv(ANC1, "202402", NGELEHUN, FIXED, "7"),
        dv(ANC1, "202402", NGELEHUN, OUTREACH, "2"),
    ]});
    assert_eq!(post_dvs(&sb, "/api/dataValueSets", &first).await.0, 200);
    let (status, again) = post_dvs(&sb, "/api/dataValueSets", &first).await;
    assert_eq!(status, 200);
    assert_eq!(
        again["response"]["importCount"],
        json!({"imported": 0, "updated": 0, "ignored": 2, "deleted": 0})
    );

    let changed = json!({"dataValues": [
        dv(ANC1, "202402", NGELEHUN, FIXED, "8"),
        dv(ANC1, "202402", NGELEHUN, OUTREACH, "2"),
    ]});
    let (_, msg) = post_dvs(&sb, "/api/dataValueSets", &changed).await;
    assert_eq!(
        msg["response"]["importCount"],
        json!({"imported": 0, "updated": 1, "ignored": 1, "deleted": 0})
    );

    let empty = json!({"dataValues": [dv(ANC1, "202402", NGELEHUN, OUTREACH, "")]});
    let (_, msg) = post_dvs(&sb, "/api/dataValueSets", &empty).await;
    assert_eq!(
        msg["response"]["importCount"],
        json!({"imported": 0, "updated": 0, "ignored": 0, "deleted": 1})
    );

    let values = stored_values(&sb).await;
    assert_eq!(values["total"], 1);
    assert_eq!(values["dataValues"][0]["value"], "8");
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_data_set_level_error_aborts_everything() {
    let sb = start().await;
    let body =
        json!({"dataSet": "XXXXXXXXXXX", "dataValues": [dv(ANC1, "202401", NGELEHUN, FIXED, "1")]});
    let (status, msg) = post_dvs(&sb, "/api/dataValueSets", &body).await;
    assert_eq!(status, 409);
    assert_eq!(msg["status"], "ERROR");
    assert_eq!(
        msg["message"],
        "An error occurred, please check import summary."
    );
    let summary = &msg["response"];
    assert_eq!(summary["status"], "ERROR");
    assert_eq!(summary["description"], "Import process was aborted");
    assert_eq!(
        summary["importCount"],
        json!({"imported": 0, "updated": 0, "ignored": 0, "deleted": 0})
    );
    assert_eq!(
        summary["conflicts"],
        json!([{"object": "XXXXXXXXXXX", "objects": {"dataSet": "XXXXXXXXXXX"},
                "value": "Data set not found or not accessible: `XXXXXXXXXXX`",
                "errorCode": "E7600", "property": "dataSet"}])
    );
    assert_eq!(stored_values(&sb).await["total"], 0);

    // Malformed JSON: 409 ERROR "The import process failed: ...".
    let response = client()
        .post(format!("{}/api/dataValueSets", sb.dhis2_url()))
        .basic_auth("admin", Some("district"))
        .header("Content-Type", "application/json")
        .body("{\"dataValues\": [")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    let msg: Value = response.json().await.unwrap();
    assert_eq!(msg["status"], "ERROR");
    let description = msg["response"]["description"].as_str().unwrap();
    assert!(
        description.starts_with("The import process failed: "),
        "{description}"
    );
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_api_37_returns_the_bare_summary_with_200() {
    let sb = start().await;
    let body = json!({"dataValues": [
        dv(ANC1, "202401", NGELEHUN, FIXED, "12"),
        dv("XXXXXXXXXXX", "202401", NGELEHUN, FIXED, "1"),
    ]});
    let (status, summary) = post_dvs(&sb, "/api/37/dataValueSets", &body).await;
    assert_eq!(status, 200);
    assert_eq!(summary["responseType"], "ImportSummary");
    assert_eq!(summary["status"], "WARNING");
    assert_eq!(summary["conflicts"][0]["errorCode"], "E7610");
    assert_eq!(summary["conflicts"][0]["indexes"], json!([1]));
    assert!(summary.get("httpStatus").is_none());
    // A versioned path >= 38 keeps the wrapper.
    let (status, msg) = post_dvs(&sb, "/api/40/dataValueSets", &body).await;
    assert_eq!((status, msg["status"].clone()), (409, json!("WARNING")));
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_auth_basic_and_pat() {
    let sb = start().await;
    let url = format!("{}/api/dataValueSets", sb.dhis2_url());
    let body = json!({"dataValues": [dv(ANC1, "202401", NGELEHUN, FIXED, "1")]});
    let client = client();
    let send = |auth: Option<String>| {
        let mut request = client.post(&url).json(&body);
        if let Some(a) = auth {
            request = request.header("Authorization", a);
        }
        request.send()
    };
    let bad_pat = send(Some(
        "ApiToken d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814093".into(),
    ))
    .await
    .unwrap();
    assert_eq!(bad_pat.status().as_u16(), 401);
    let msg: Value = bad_pat.json().await.unwrap();
    assert_eq!(
        msg,
        json!({"httpStatus": "Unauthorized", "httpStatusCode": 401, "status": "ERROR",
               "message": "The API token does not exists."})
    );
    let none = send(None).await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(
        none.json::<Value>().await.unwrap()["message"],
        "Unauthorized"
    );
    let wrong = send(Some("Basic YWRtaW46d3Jvbmc=".into())).await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert_eq!(stored_values(&sb).await["total"], 0);

    let good = send(Some(format!("ApiToken {DOCS_PAT}"))).await.unwrap();
    assert_eq!(good.status().as_u16(), 200);
    assert_eq!(stored_values(&sb).await["total"], 1);
    sb.stop().await;
}

#[tokio::test]
async fn dhis2_metadata_filters() {
    let sb = start().await;
    let base = sb.dhis2_url();
    let (status, des) = get_json(format!(
        "{base}/api/dataElements?filter=id:in:[{ANC1},{BCG}]&fields=id,code,name&paging=false"
    ))
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        des,
        json!({"dataElements": [
            {"id": ANC1, "code": "DE_359596", "name": "ANC 1st visit"},
            {"id": BCG, "code": "DE_359706", "name": "BCG doses given"},
        ]})
    );
    let (_, by_code) = get_json(format!(
        "{base}/api/dataElements?filter=code:in:[DE_359596,NOPE]&paging=false"
    ))
    .await;
    assert_eq!(
        by_code["dataElements"],
        json!([{"id": ANC1, "code": "DE_359596", "name": "ANC 1st visit"}])
    );
    let (_, ous) = get_json(format!(
        "{base}/api/organisationUnits?filter=id:in:[{NGELEHUN},XXXXXXXXXXX]&fields=id,name&paging=false"
    ))
    .await;
    assert_eq!(
        ous,
        json!({"organisationUnits": [{"id": NGELEHUN, "name": "Ngelehun CHC"}]})
    );
    let (_, cocs) = get_json(format!(
        "{base}/api/categoryOptionCombos?filter=id:in:[{FIXED},{OUTREACH}]&fields=id,name&paging=false"
    ))
    .await;
    let mut names: Vec<&str> = cocs["categoryOptionCombos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["Fixed", "Outreach"]);
    // Paged by default.
    let (_, paged) = get_json(format!("{base}/api/dataElements?fields=id")).await;
    assert_eq!(paged["pager"]["pageSize"], 50);
    assert_eq!(paged["dataElements"].as_array().unwrap().len(), 50);
    sb.stop().await;
}

// ---------------------------------------------------------------------------
// FHIR

const PATIENT_SYSTEM: &str = "https://cht.moh.gov.sl/patient";
const ENCOUNTER_ID: &str = "afdfae92-cc27-5d05-add5-6cfd83494507";

fn anc_bundle(encounter_status: &str) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7f8ce29c-750a-57b6-972d-c73284488646",
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": PATIENT_SYSTEM, "value": "bf3b7049"}],
                    "gender": "female"
                },
                "request": {"method": "POST", "url": "Patient",
                            "ifNoneExist": format!("identifier={PATIENT_SYSTEM}|bf3b7049")}
            },
            {
                "fullUrl": format!("urn:uuid:{ENCOUNTER_ID}"),
                "resource": {
                    "resourceType": "Encounter",
                    "id": ENCOUNTER_ID,
                    "status": encounter_status,
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                    "subject": {"reference": "urn:uuid:7f8ce29c-750a-57b6-972d-c73284488646"}
                },
                "request": {"method": "PUT", "url": format!("Encounter/{ENCOUNTER_ID}")}
            }
        ]
    })
}

async fn post_bundle(sb: &Sandbox, bundle: &Value) -> reqwest::Response {
    client()
        .post(sb.fhir_url())
        .header("Content-Type", "application/fhir+json")
        .body(bundle.to_string())
        .send()
        .await
        .unwrap()
}

async fn resources(sb: &Sandbox) -> Value {
    fetch(format!("{}/sandbox/resources", sb.fhir_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn fhir_conditional_create_once_then_200_and_references_rewritten() {
    let sb = start().await;
    let response = post_bundle(&sb, &anc_bundle("finished")).await;
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["type"], "transaction-response");
    let entries = body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(
        entries[1]["response"]["location"],
        format!("Encounter/{ENCOUNTER_ID}/_history/1")
    );
    assert_eq!(entries[1]["response"]["etag"], "W/\"1\"");
    let patient_location = entries[0]["response"]["location"]
        .as_str()
        .unwrap()
        .to_owned();
    let patient_ref = patient_location.trim_end_matches("/_history/1").to_owned();
    assert!(patient_ref.starts_with("Patient/"), "{patient_ref}");

    let encounter: Value = fetch(format!("{}/Encounter/{ENCOUNTER_ID}", sb.fhir_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(encounter["subject"]["reference"], patient_ref.as_str());
    assert_eq!(encounter["meta"]["versionId"], "1");

    // Replay: the patient matches (200), the encounter is unchanged.
    let body: Value = post_bundle(&sb, &anc_bundle("finished"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(
        body["entry"][0]["response"]["location"],
        patient_location.as_str()
    );
    assert_eq!(body["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(body["entry"][1]["response"]["etag"], "W/\"1\"");
    let all = resources(&sb).await;
    assert_eq!(all["counts"], json!({"Encounter": 1, "Patient": 1}));

    // Search by identifier finds the one patient.
    let found: Value = fetch(format!(
        "{}/Patient?identifier={PATIENT_SYSTEM}%7Cbf3b7049",
        sb.fhir_url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(found["type"], "searchset");
    assert_eq!(found["total"], 1);
    sb.stop().await;
}

#[tokio::test]
async fn fhir_put_update_increments_version() {
    let sb = start().await;
    post_bundle(&sb, &anc_bundle("in-progress")).await;
    let body: Value = post_bundle(&sb, &anc_bundle("finished"))
        .await
        .json()
        .await
        .unwrap();
    let response = &body["entry"][1]["response"];
    assert_eq!(response["status"], "200 OK");
    assert_eq!(
        response["location"],
        format!("Encounter/{ENCOUNTER_ID}/_history/2")
    );
    assert_eq!(response["etag"], "W/\"2\"");
    let read = fetch(format!("{}/Encounter/{ENCOUNTER_ID}", sb.fhir_url()))
        .await
        .unwrap();
    assert_eq!(read.headers()["ETag"], "W/\"2\"");
    let encounter: Value = read.json().await.unwrap();
    assert_eq!(encounter["status"], "finished");
    assert_eq!(encounter["meta"]["versionId"], "2");
    sb.stop().await;
}

#[tokio::test]
async fn fhir_multiple_matches_fail_the_whole_transaction_with_412() {
    let sb = start().await;
    let twins = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "a", "identifier": [{"system": PATIENT_SYSTEM, "value": "bf3b7049"}]},
         "request": {"method": "PUT", "url": "Patient/a"}},
        {"resource": {"resourceType": "Patient", "id": "b", "identifier": [{"system": PATIENT_SYSTEM, "value": "bf3b7049"}]},
         "request": {"method": "PUT", "url": "Patient/b"}},
    ]});
    assert_eq!(post_bundle(&sb, &twins).await.status().as_u16(), 200);
    let response = post_bundle(&sb, &anc_bundle("finished")).await;
    assert_eq!(response.status().as_u16(), 412);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "multiple-matches");
    // The encounter (a plain PUT in the same bundle) was not stored.
    assert_eq!(resources(&sb).await["counts"], json!({"Patient": 2}));
    sb.stop().await;
}

#[tokio::test]
async fn fhir_invalid_input_is_400_operation_outcome() {
    let sb = start().await;
    for (bundle, needle) in [
        (json!({"resourceType": "Patient"}), "expected a Bundle"),
        (
            json!({"resourceType": "Bundle", "type": "collection"}),
            "only transaction",
        ),
        (
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"gender": "female"}, "request": {"method": "POST", "url": "Patient"}}]}),
            "no resourceType",
        ),
        (
            json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                {"resource": {"resourceType": "Encounter", "subject": {"reference": "urn:uuid:nowhere"}},
                 "request": {"method": "POST", "url": "Encounter"}}]}),
            "placeholder",
        ),
    ] {
        let response = post_bundle(&sb, &bundle).await;
        assert_eq!(response.status().as_u16(), 400, "{bundle}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        let diagnostics = outcome["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.contains(needle), "{diagnostics}");
    }
    assert_eq!(resources(&sb).await["total"], 0);
    sb.stop().await;
}

#[tokio::test]
async fn fhir_bearer_token_is_required_when_configured() {
    let mut config = SandboxConfig::for_test();
    config.fhir.bearer_token = Some("s3cret".into());
    let sb = Sandbox::start(config).await.unwrap();
    let response = post_bundle(&sb, &anc_bundle("finished")).await;
    assert_eq!(response.status().as_u16(), 401);
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "login");
    let ok = client()
        .post(sb.fhir_url())
        .bearer_auth("s3cret")
        .header("Content-Type", "application/fhir+json")
        .body(anc_bundle("finished").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(resources(&sb).await["total"], 2);
    sb.stop().await;
}

// ---------------------------------------------------------------------------
// Faults

#[tokio::test]
async fn faults_error_rate_one_gives_5xx_and_stores_nothing() {
    let mut config = SandboxConfig::for_test();
    let faults = Faults {
        error_rate: 1.0,
        seed: 7,
        ..Faults::default()
    };
    config.fhir.faults = faults.clone();
    config.dhis2.faults = faults;
    let sb = Sandbox::start(config).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..8 {
        let response = post_bundle(&sb, &anc_bundle("finished")).await;
        let status = response.status().as_u16();
        assert!(status == 503 || status == 500, "{status}");
        let outcome: Value = response.json().await.unwrap();
        assert_eq!(outcome["resourceType"], "OperationOutcome");
        seen.push(status);
        let (status, msg) = post_dvs(
            &sb,
            "/api/dataValueSets",
            &json!({"dataValues": [dv(ANC1, "202401", NGELEHUN, FIXED, "1")]}),
        )
        .await;
        assert!(status == 503 || status == 500, "{status}");
        assert_eq!(msg["httpStatusCode"], status);
    }
    assert!(seen.contains(&503), "{seen:?}");
    assert_eq!(resources(&sb).await["total"], 0);
    assert_eq!(stored_values(&sb).await["total"], 0);
    sb.stop().await;
}

#[tokio::test]
async fn faults_throttle_gives_429_with_retry_after() {
    let mut config = SandboxConfig::for_test();
    config.fhir.faults = Faults {
        throttle_rate: 1.0,
        retry_after_secs: Some(3),
        ..Faults::default()
    };
    let sb = Sandbox::start(config).await.unwrap();
    let response = post_bundle(&sb, &anc_bundle("finished")).await;
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers()["Retry-After"], "3");
    let outcome: Value = response.json().await.unwrap();
    assert_eq!(outcome["issue"][0]["code"], "throttled");
    assert_eq!(resources(&sb).await["total"], 0);
    sb.stop().await;
}

#[tokio::test]
async fn faults_outage_opened_and_closed_at_runtime() {
    let sb = start().await;
    let client = client();
    let outage = Faults {
        outage: Some(Outage {
            start_offset: std::time::Duration::ZERO,
            duration: std::time::Duration::from_secs(3600),
        }),
        ..Faults::default()
    };
    for url in [sb.fhir_url(), sb.dhis2_url()] {
        let set = client
            .post(format!("{url}/sandbox/faults"))
            .json(&outage)
            .send()
            .await
            .unwrap();
        assert_eq!(set.status().as_u16(), 200);
    }
    let body = json!({"dataValues": [dv(ANC1, "202401", NGELEHUN, FIXED, "1")]});
    let response = post_bundle(&sb, &anc_bundle("finished")).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("Retry-After"));
    assert_eq!(post_dvs(&sb, "/api/dataValueSets", &body).await.0, 503);
    assert_eq!(resources(&sb).await["total"], 0);
    assert_eq!(stored_values(&sb).await["total"], 0);

    // Unknown fields in the faults document are refused.
    let refused = client
        .post(format!("{}/sandbox/faults", sb.fhir_url()))
        .json(&json!({"eror_rate": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);

    for url in [sb.fhir_url(), sb.dhis2_url()] {
        let cleared = client
            .post(format!("{url}/sandbox/faults"))
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(cleared.status().as_u16(), 200);
    }
    assert_eq!(
        post_bundle(&sb, &anc_bundle("finished"))
            .await
            .status()
            .as_u16(),
        200
    );
    assert_eq!(post_dvs(&sb, "/api/dataValueSets", &body).await.0, 200);
    assert_eq!(resources(&sb).await["total"], 2);
    assert_eq!(stored_values(&sb).await["total"], 1);
    sb.stop().await;
}

// ---------------------------------------------------------------------------
// Overlap detector

/// A bundle that only shares the conditionally created patient with
/// [`anc_bundle`]: another event of the same patient.
fn other_visit_bundle() -> Value {
    let mut b = anc_bundle("finished");
    let other = "0c8d7b0a-5a43-5bd4-9a54-0e6f1d2c3b4a";
    b["entry"][1]["fullUrl"] = json!(format!("urn:uuid:{other}"));
    b["entry"][1]["resource"]["id"] = json!(other);
    b["entry"][1]["request"]["url"] = json!(format!("Encounter/{other}"));
    b
}

/// Posts two bundles at the same time; both must succeed.
async fn post_both(sb: &Sandbox, a: &Value, b: &Value) {
    let (a, b) = tokio::join!(post_bundle(sb, a), post_bundle(sb, b));
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
}

#[tokio::test]
async fn fhir_overlap_detector_counts_the_same_bundle_or_resource_in_flight_twice() {
    let mut config = SandboxConfig::for_test();
    config.fhir.faults = Faults {
        latency: std::time::Duration::from_millis(300),
        ..Faults::default()
    };
    let sb = Sandbox::start(config).await.unwrap();
    let (finished, cancelled, other) = (
        anc_bundle("finished"),
        anc_bundle("cancelled"),
        other_visit_bundle(),
    );

    // One after the other: no overlap.
    for _ in 0..2 {
        assert_eq!(post_bundle(&sb, &finished).await.status().as_u16(), 200);
    }
    let o = sb.fhir_overlaps();
    assert_eq!(
        (o["overlaps"].clone(), o["requests"].clone()),
        (json!(0), json!(2)),
        "{o}"
    );

    // Two events of the same patient at once: not the same identity.
    post_both(&sb, &finished, &other).await;
    let o = sb.fhir_overlaps();
    assert_eq!(o["overlaps"], 0, "{o}");
    assert_eq!(o["max_in_flight"], 2, "{o}");

    // The same bundle twice at once (a double claim).
    post_both(&sb, &finished, &finished).await;
    let o = sb.fhir_overlaps();
    assert_eq!(o["same_bundle"], 1, "{o}");
    assert_eq!(o["same_resource"], 0, "{o}");

    // Two versions of one event at once: the same Encounter.
    post_both(&sb, &finished, &cancelled).await;
    let o = sb.fhir_overlaps();
    assert_eq!(o["same_resource"], 1, "{o}");
    assert_eq!(
        o["examples"][1],
        json!(format!("Encounter/{ENCOUNTER_ID}")),
        "{o}"
    );
    assert_eq!(
        (o["overlaps"].clone(), o["in_flight"].clone()),
        (json!(2), json!(0)),
        "{o}"
    );

    // Over HTTP too; a reset starts the counts again.
    let (status, body) = get_json(format!("{}/sandbox/overlaps", sb.fhir_url())).await;
    assert_eq!((status, body["overlaps"].clone()), (200, json!(2)));
    client()
        .post(format!("{}/sandbox/reset", sb.fhir_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(sb.fhir_overlaps()["overlaps"], 0);
    sb.stop().await;
}

/// A newcomer's demo: every shipped pack's fixtures, mapped, land in the
/// sandbox DHIS2 without a conflict (every data element, category option
/// combo and org unit they produce is in its metadata).
#[tokio::test]
async fn every_shipped_pack_lands_in_the_sandbox_dhis2() {
    use kiungo_mappings::{Event, LoadOptions, MappingSet, PseudonymKey};
    let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs");
    let sb = start().await;
    let mut checked = Vec::new();
    for pack in std::fs::read_dir(&packs).unwrap() {
        let dir = pack.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let set = MappingSet::load_dir(
            &dir,
            LoadOptions {
                pseudonym_key: Some(PseudonymKey::for_tests()),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let sources: Vec<String> = set.mappings().iter().map(|m| m.source.clone()).collect();
        let mut values = Vec::new();
        for fixture in std::fs::read_dir(dir.join("fixtures")).unwrap() {
            let path = fixture.unwrap().path();
            let name = path.to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            // Only fixtures that map (those with an expected output).
            if stem.ends_with(".expected")
                || !std::path::Path::new(&format!("{stem}.expected.json")).exists()
            {
                continue;
            }
            let payload: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            let mapped = sources
                .iter()
                .find_map(|source| {
                    set.map(&Event {
                        source: source.clone(),
                        message_id: Some("m-1".into()),
                        payload: std::sync::Arc::new(payload.clone()),
                    })
                    .ok()
                })
                .unwrap_or_else(|| panic!("{name} maps"));
            for mut c in mapped.dhis2 {
                // As the sink's preflight does: `code:X` resolved through
                // the metadata API.
                if let Some(code) = c.data_element.strip_prefix("code:") {
                    let (_, found) = get_json(format!(
                        "{}/api/dataElements?filter=code:in:[{code}]&fields=id,code&paging=false",
                        sb.dhis2_url()
                    ))
                    .await;
                    c.data_element = found["dataElements"][0]["id"]
                        .as_str()
                        .unwrap_or_else(|| {
                            panic!("{name}: no data element with code {code}: {found}")
                        })
                        .to_owned();
                }
                let value = match &c.value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                values.push(json!({
                    "dataElement": c.data_element, "period": c.period, "orgUnit": c.org_unit,
                    "categoryOptionCombo": c.category_option_combo,
                    "attributeOptionCombo": c.attribute_option_combo, "value": value,
                }));
            }
        }
        let pack_name = dir.file_name().unwrap().to_string_lossy().into_owned();
        if values.is_empty() {
            continue;
        }
        let (status, msg) =
            post_dvs(&sb, "/api/dataValueSets", &json!({ "dataValues": values })).await;
        assert_eq!(status, 200, "pack {pack_name}: {msg:#}");
        checked.push(pack_name);
    }
    checked.sort();
    assert_eq!(
        checked,
        [
            "cht-anc",
            "commcare-immunization",
            "inhouse-nutrition",
            "kobo-malaria-rdt",
            "odk-central-household",
            "opensrp-core"
        ],
        "every pack sends DHIS2 values"
    );
}
