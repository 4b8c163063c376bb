//! The DHIS2 client against a mock server.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use wiremock::matchers::{basic_auth, body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;
use crate::auth::{AuthConfig, secret_file};
use crate::retry::Retryable;

const SUCCESS: &str = include_str!("../../tests/fixtures/dhis2-datavaluesets-200-success.json");
const WARNING: &str = include_str!("../../tests/fixtures/dhis2-datavaluesets-409-warning.json");
const ERROR_E7600: &str =
    include_str!("../../tests/fixtures/dhis2-datavaluesets-409-error-e7600.json");
const BARE_WARNING: &str =
    include_str!("../../tests/fixtures/dhis2-datavaluesets-37-bare-warning.json");
const E1111: &str = include_str!("../../tests/fixtures/dhis2-409-e1111.json");
/// A DHIS2 personal access token of the documented shape (the contract
/// test files share it, with [`client`] and [`json`]).
pub(super) const PAT: &str = "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814092";

fn api_token() -> AuthConfig {
    AuthConfig::ApiToken {
        token: secret_file(PAT),
    }
}

/// A client of `server` with [`PAT`].
pub(super) fn client(server: &MockServer) -> Dhis2Client {
    Dhis2Client::new(Dhis2Config::new(server.uri(), api_token())).expect("client")
}

/// An answer with a JSON body.
pub(super) fn json(status: u16, body: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_raw(body.as_bytes().to_vec(), "application/json")
}

fn value(de: &str, period: &str, ou: &str, v: &str) -> DataValue {
    DataValue {
        data_element: de.into(),
        period: period.into(),
        org_unit: ou.into(),
        category_option_combo: "HllvX50cXC0".into(),
        attribute_option_combo: "HllvX50cXC0".into(),
        value: v.into(),
    }
}

/// Three values; in the WARNING fixture the second has a bad period and
/// the third an unknown org unit.
fn values() -> Vec<DataValue> {
    vec![
        value("fbfJHSPpUQD", "202401", "DiszpKrYNg8", "12"),
        value("fbfJHSPpUQD", "2024-13", "DiszpKrYNg8", "3"),
        value("fbfJHSPpUQD", "202401", "NoSuchOrgU1", "5"),
    ]
}

async fn post(server: &MockServer, status: u16, body: &str) -> Result<ImportOutcome, Dhis2Error> {
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(status, body))
        .mount(server)
        .await;
    client(server).post_data_values(&values(), None).await
}

#[tokio::test]
async fn success_posts_values_with_the_api_token() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .and(query_param("importStrategy", "CREATE_AND_UPDATE"))
        .and(header("authorization", format!("ApiToken {PAT}").as_str()))
        .and(header("content-type", "application/json"))
        .and(header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"))
        .and(body_json(serde_json::json!({"dataValues": [
            {"dataElement": "fbfJHSPpUQD", "period": "202401", "orgUnit": "DiszpKrYNg8",
             "categoryOptionCombo": "HllvX50cXC0", "attributeOptionCombo": "HllvX50cXC0", "value": "12"},
            {"dataElement": "fbfJHSPpUQD", "period": "2024-13", "orgUnit": "DiszpKrYNg8",
             "categoryOptionCombo": "HllvX50cXC0", "attributeOptionCombo": "HllvX50cXC0", "value": "3"},
            {"dataElement": "fbfJHSPpUQD", "period": "202401", "orgUnit": "NoSuchOrgU1",
             "categoryOptionCombo": "HllvX50cXC0", "attributeOptionCombo": "HllvX50cXC0", "value": "5"},
        ]})))
        .respond_with(json(200, SUCCESS))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = client(&server)
        .post_data_values(
            &values(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        )
        .await
        .expect("imported");
    assert_eq!(outcome.status, ImportStatus::Success);
    assert_eq!(
        (
            outcome.imported,
            outcome.updated,
            outcome.ignored,
            outcome.deleted
        ),
        (2, 1, 0, 0)
    );
    assert_eq!(
        outcome.description.as_deref(),
        Some("Import process completed successfully")
    );
    assert!(outcome.conflicts.is_empty() && outcome.rejected(3).is_empty());
    assert!(!outcome.is_batch_rejected());
}

#[tokio::test]
async fn an_empty_push_sends_nothing() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(json(200, SUCCESS))
        .expect(0)
        .mount(&server)
        .await;
    let outcome = client(&server)
        .post_data_values(&[], None)
        .await
        .expect("nothing to do");
    assert_eq!(outcome, ImportOutcome::default());
}

#[tokio::test]
async fn a_409_warning_is_a_partial_success_with_each_rejected_value() {
    let server = MockServer::start().await;
    let outcome = post(&server, 409, WARNING)
        .await
        .expect("a 409 summary is an answer");
    assert_eq!(outcome.status, ImportStatus::Warning);
    assert_eq!((outcome.imported, outcome.ignored), (1, 2));
    assert!(!outcome.is_batch_rejected());
    assert_eq!(outcome.rejected_indexes, vec![1, 2]);
    let rejected = outcome.rejected(3);
    assert_eq!(rejected.len(), 2);
    let (i, c) = rejected[0];
    assert_eq!(i, 1);
    assert_eq!(c.error_code.as_deref(), Some("E7611"));
    assert_eq!(c.property.as_deref(), Some("period"));
    assert_eq!(c.value, "Period not valid: `2024-13`");
    assert_eq!(c.objects.get("period").map(String::as_str), Some("2024-13"));
    let (i, c) = rejected[1];
    assert_eq!(i, 2);
    assert_eq!(c.error_code.as_deref(), Some("E7612"));
    assert_eq!(c.property.as_deref(), Some("orgUnit"));
    assert_eq!(c.object, "NoSuchOrgU1");
    assert_eq!(
        c.objects.get("organisationUnit").map(String::as_str),
        Some("NoSuchOrgU1")
    );
    assert!(outcome.unexplained_rejections(3).is_empty());
    // Indexes beyond what was sent are not reported.
    assert_eq!(outcome.rejected(2).len(), 1);
}

#[tokio::test]
async fn a_409_error_rejects_the_whole_batch() {
    let server = MockServer::start().await;
    let outcome = post(&server, 409, ERROR_E7600)
        .await
        .expect("a 409 summary is an answer");
    assert_eq!(outcome.status, ImportStatus::Error);
    assert!(outcome.is_batch_rejected());
    assert!(outcome.rejected(3).is_empty());
    let c = outcome.batch_conflict().expect("says why");
    assert_eq!(c.error_code.as_deref(), Some("E7600"));
    assert_eq!(
        c.value,
        "Data set not found or not accessible: `NoDataSet01`"
    );
    assert_eq!(
        outcome.description.as_deref(),
        Some("Import process was aborted")
    );
}

#[test]
fn a_dataset_level_conflict_rejects_the_batch_whatever_the_status() {
    let outcome = ImportOutcome {
        status: ImportStatus::Warning,
        conflicts: vec![Conflict {
            error_code: Some("E7603".into()),
            ..Conflict::default()
        }],
        ..ImportOutcome::default()
    };
    assert!(outcome.is_batch_rejected());
    let per_value = ImportOutcome {
        status: ImportStatus::Warning,
        conflicts: vec![Conflict {
            error_code: Some("E7612".into()),
            ..Conflict::default()
        }],
        ..ImportOutcome::default()
    };
    assert!(!per_value.is_batch_rejected());
}

#[tokio::test]
async fn a_pre_2_38_bare_summary_at_200_is_read() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/37/dataValueSets"))
        .respond_with(json(200, BARE_WARNING))
        .expect(1)
        .mount(&server)
        .await;
    let mut config = Dhis2Config::new(format!("{}/", server.uri()), api_token());
    config.api_version = Some(37);
    let outcome = Dhis2Client::new(config)
        .expect("client")
        .post_data_values(&values(), None)
        .await
        .expect("summary");
    assert_eq!(outcome.status, ImportStatus::Warning);
    assert_eq!(
        (outcome.imported, outcome.updated, outcome.ignored),
        (1, 1, 1)
    );
    let rejected = outcome.rejected(3);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].0, 2);
    assert_eq!(rejected[0].1.error_code.as_deref(), Some("E7619"));
}

#[test]
fn rejections_without_conflict_indexes_are_listed_apart() {
    // A pre-2.38 server: conflicts without indexes.
    let outcome = ImportOutcome {
        status: ImportStatus::Warning,
        conflicts: vec![Conflict {
            object: "NoSuchOrgU1".into(),
            value: "Org unit not found or not accessible".into(),
            ..Conflict::default()
        }],
        rejected_indexes: vec![2, 0, 7],
        ..ImportOutcome::default()
    };
    assert!(outcome.rejected(3).is_empty());
    assert_eq!(outcome.unexplained_rejections(3), vec![0, 2]);
}

#[tokio::test]
async fn a_409_web_message_without_summary_is_permanent() {
    let server = MockServer::start().await;
    let err = post(&server, 409, E1111).await.expect_err("no summary");
    assert!(!err.is_retryable());
    assert!(err.is_values_conflict(), "about the values, not the server");
    assert_eq!(
        err.to_string(),
        "dhis2 answered HTTP 409 Conflict: Category option not found or not accessible: `InvalidCategoryOption` (E1111)"
    );
    let Dhis2Error::Status {
        status, error_code, ..
    } = err
    else {
        panic!("not a status error")
    };
    assert_eq!((status, error_code.as_deref()), (409, Some("E1111")));
}

#[tokio::test]
async fn a_409_page_from_a_proxy_is_not_a_values_conflict() {
    let server = MockServer::start().await;
    let err = post(&server, 409, "<html><body>409 Conflict</body></html>")
        .await
        .expect_err("no summary");
    assert!(!err.is_values_conflict());
}

#[tokio::test]
async fn a_401_is_permanent_with_dhis2s_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(basic_auth("kiungo", "district"))
        .respond_with(json(
            401,
            r#"{"httpStatus":"Unauthorized","httpStatusCode":401,"status":"ERROR","message":"Account locked"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let auth = AuthConfig::Basic {
        username: "kiungo".into(),
        password: secret_file("district"),
    };
    let client = Dhis2Client::new(Dhis2Config::new(server.uri(), auth)).expect("client");
    let err = client
        .post_data_values(&values(), None)
        .await
        .expect_err("401");
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        "dhis2 answered HTTP 401 Unauthorized: Account locked"
    );
    assert!(!format!("{client:?}").contains("district"));
}

#[tokio::test]
async fn a_500_is_transient_then_the_retry_is_imported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_raw(
            "<html><body>Internal Server Error</body></html>",
            "text/html",
        ))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(json(200, SUCCESS))
        .mount(&server)
        .await;
    let client = client(&server);
    let err = client
        .post_data_values(&values(), None)
        .await
        .expect_err("500");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .contains("500 Internal Server Error: <html><body>Internal Server Error"),
        "{err}"
    );
    let outcome = client
        .post_data_values(&values(), None)
        .await
        .expect("imported");
    assert_eq!(outcome.status, ImportStatus::Success);
}

#[tokio::test]
async fn a_429_honours_retry_after_in_seconds_and_as_a_date() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(90));
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", at.as_str()))
        .mount(&server)
        .await;
    let client = client(&server);
    let err = client
        .post_data_values(&values(), None)
        .await
        .expect_err("429");
    assert!(err.is_retryable());
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    let err = client
        .post_data_values(&values(), None)
        .await
        .expect_err("429");
    assert!(err.is_retryable());
    let wait = err.retry_after().expect("a date");
    assert!(
        wait > Duration::from_secs(80) && wait <= Duration::from_secs(90),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_200_without_summary_is_permanent() {
    let server = MockServer::start().await;
    let async_job = r#"{"httpStatus":"OK","httpStatusCode":200,"status":"OK","message":"Initiated dataValueImport","response":{"name":"dataValueImport","id":"YR1UxOUXmzT","jobType":"DATAVALUE_IMPORT"}}"#;
    let err = post(&server, 200, async_job).await.expect_err("no summary");
    assert!(!err.is_retryable());
    assert!(
        err.to_string().contains("Initiated dataValueImport"),
        "{err}"
    );
}

#[test]
fn config_checks() {
    let c: Dhis2Config = serde_saphyr::from_str(
        "base_url: https://dhis2.example.org\nauth: {type: api_token, token: {file: /run/secrets/pat}}\n",
    )
    .expect("parses");
    assert_eq!((c.batch_size, c.api_version), (1000, None));
    let err =
        serde_saphyr::from_str::<Dhis2Config>("base_url: x\nauth: {type: none}\nbatchsize: 5\n")
            .expect_err("typo");
    assert!(err.to_string().contains("batchsize"), "{err}");

    let err =
        Dhis2Client::new(Dhis2Config::new("https://x", AuthConfig::None)).expect_err("no auth");
    assert_eq!(
        err.to_string(),
        "auth.type: dhis2 does not support `none` (use one of: basic, api_token)"
    );

    let bad = "d2pat_5xVA12xyUbWNedQxy4ohH77WlxRGVvZZ1151814093";
    let auth = AuthConfig::ApiToken {
        token: secret_file(bad),
    };
    let err = Dhis2Client::new(Dhis2Config::new("https://x", auth)).expect_err("bad checksum");
    let msg = err.to_string();
    assert!(
        msg.starts_with("auth.token: not a DHIS2 personal access token: checksum"),
        "{msg}"
    );
    assert!(!msg.contains("5xVA12"), "{msg}");
}

// Preflight.

fn objects(key: &str, list: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({ key: list }))
}

#[tokio::test]
async fn preflight_reports_missing_references_and_resolves_codes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataElements"))
        .and(query_param("filter", "id:in:[NoSuchDE001,fbfJHSPpUQD]"))
        .and(query_param("fields", "id,code,name,categoryCombo[id]"))
        .and(query_param("paging", "false"))
        .respond_with(objects(
            "dataElements",
            serde_json::json!([{"id": "fbfJHSPpUQD", "code": "DE_22", "name": "ANC 1st visit", "categoryCombo": {"id": "KYYSTxeVw28"}}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataElements"))
        .and(query_param("filter", "code:in:[DE_359596]"))
        .respond_with(objects(
            "dataElements",
            serde_json::json!([{"id": "cYeuwXTCPkU", "code": "DE_359596", "name": "ANC 2nd visit", "categoryCombo": {"id": "KYYSTxeVw28"}}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .and(query_param("filter", "code:in:[OU_278371,OU_MISSING]"))
        .respond_with(objects(
            "organisationUnits",
            serde_json::json!([{"id": "DiszpKrYNg8", "code": "OU_278371", "name": "Ngelehun CHC"}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    // COCs and AOCs share one lookup.
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "id:in:[HllvX50cXC0,NoSuchAOC01,pq2XI5kz2BY]"))
        .respond_with(objects(
            "categoryOptionCombos",
            serde_json::json!([{"id": "HllvX50cXC0", "name": "default"}, {"id": "pq2XI5kz2BY", "name": "Fixed"}]),
        ))
        .expect(1)
        .mount(&server)
        .await;

    let refs = References {
        data_elements: set(&["fbfJHSPpUQD", "NoSuchDE001", "code:DE_359596"]),
        org_units: set(&["code:OU_278371", "code:OU_MISSING"]),
        category_option_combos: set(&["pq2XI5kz2BY", "HllvX50cXC0"]),
        attribute_option_combos: set(&["HllvX50cXC0", "NoSuchAOC01"]),
    };
    let report = client(&server)
        .check_references(&refs)
        .await
        .expect("preflight");

    let missing: Vec<String> = report.missing.iter().map(ToString::to_string).collect();
    assert_eq!(
        missing,
        [
            "data element `NoSuchDE001` not found",
            "org unit `code:OU_MISSING` not found",
            "attribute option combo `NoSuchAOC01` not found",
        ]
    );
    assert!(!report.is_complete());
    assert_eq!(
        report.resolve(ReferenceKind::DataElement, "code:DE_359596"),
        Some("cYeuwXTCPkU")
    );
    assert_eq!(
        report.resolve(ReferenceKind::DataElement, "fbfJHSPpUQD"),
        Some("fbfJHSPpUQD")
    );
    assert_eq!(
        report.resolve(ReferenceKind::OrgUnit, "code:OU_278371"),
        Some("DiszpKrYNg8")
    );
    assert_eq!(
        report.resolve(ReferenceKind::OrgUnit, "code:OU_MISSING"),
        None
    );
    assert_eq!(
        report.resolve(ReferenceKind::AttributeOptionCombo, "HllvX50cXC0"),
        Some("HllvX50cXC0")
    );
    assert_eq!(
        report.resolve(ReferenceKind::CategoryOptionCombo, "NoSuchAOC01"),
        None
    );
    assert_eq!(
        report
            .category_combos
            .get("cYeuwXTCPkU")
            .map(String::as_str),
        Some("KYYSTxeVw28")
    );
}

#[tokio::test]
async fn preflight_asks_for_at_most_100_ids_at_a_time() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .respond_with(objects("organisationUnits", serde_json::json!([])))
        .expect(3)
        .mount(&server)
        .await;
    let refs = References {
        org_units: (0..250).map(|i| format!("OrgUnit{i:04}")).collect(),
        ..References::default()
    };
    let report = client(&server)
        .check_references(&refs)
        .await
        .expect("preflight");
    assert_eq!(report.missing.len(), 250);
    for request in server.received_requests().await.expect("recorded") {
        let filter = request
            .url
            .query_pairs()
            .find(|(k, _)| k == "filter")
            .map(|(_, v)| v.into_owned())
            .expect("filter");
        assert!(filter.split(',').count() <= 100, "{filter}");
    }
}

#[tokio::test]
async fn preflight_errors_classify() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(json(
            403,
            r#"{"httpStatus":"Forbidden","httpStatusCode":403,"status":"ERROR","message":"You don't have the proper permissions to read objects of this type."}"#,
        ))
        .mount(&server)
        .await;
    let refs = References {
        data_elements: set(&["fbfJHSPpUQD"]),
        ..References::default()
    };
    let err = client(&server)
        .check_references(&refs)
        .await
        .expect_err("403");
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .contains("403 Forbidden: You don't have the proper permissions"),
        "{err}"
    );
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `n` values for distinct org units: a body well past 1 KiB.
fn many_values(n: usize) -> Vec<DataValue> {
    (0..n)
        .map(|i| value("fbfJHSPpUQD", "202401", &format!("OrgUnit{i:04}"), "7"))
        .collect()
}

#[tokio::test]
async fn large_pushes_go_gzipped_and_small_ones_plain() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(200, SUCCESS))
        .mount(&server)
        .await;
    let c = client(&server);
    let many = many_values(50);
    c.post_data_values(&many, None).await.expect("imported");
    c.post_data_values(&values(), None).await.expect("imported");

    let requests = server.received_requests().await.expect("recorded");
    let plain = serde_json::to_vec(&serde_json::json!({ "dataValues": many })).expect("json");
    let big = &requests[0];
    assert_eq!(
        big.headers.get("content-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
    assert_eq!(crate::gunzip(&big.body, 1 << 20).expect("gzip"), plain);
    assert!(
        big.body.len() * 5 < plain.len(),
        "{} bytes on the wire for {}",
        big.body.len(),
        plain.len()
    );
    assert!(requests[1].headers.get("content-encoding").is_none());
    let small: serde_json::Value = serde_json::from_slice(&requests[1].body).expect("plain json");
    assert_eq!(small["dataValues"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_415_for_gzip_falls_back_to_plain_without_parking() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(header("content-encoding", "gzip"))
        .respond_with(json(
            415,
            r#"{"httpStatus":"Unsupported Media Type","httpStatusCode":415,"status":"ERROR","message":"Content encoding 'gzip' not supported"}"#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(json(200, SUCCESS))
        .expect(2)
        .mount(&server)
        .await;
    let c = client(&server);
    let outcome = c
        .post_data_values(&many_values(50), None)
        .await
        .expect("imported by the plain resend");
    assert_eq!(outcome.status, ImportStatus::Success);
    assert!(!c.compression.is_enabled());
    c.post_data_values(&many_values(50), None)
        .await
        .expect("plain from then on");
}
