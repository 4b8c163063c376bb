//! Contract tests of the read-back (reconciliation) against DHIS2
//! 2.38–2.41 answer shapes.

use std::time::Duration;

use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer};

use super::tests::{client, json};
use super::*;
use crate::retry::Retryable;

const ONE_OU: &str = include_str!("../../tests/fixtures/dhis2-datavaluesets-get-2.40-one-ou.json");
const MANY_OU: &str =
    include_str!("../../tests/fixtures/dhis2-datavaluesets-get-2.41-many-ou.json");
const EMPTY: &str = include_str!("../../tests/fixtures/dhis2-datavaluesets-get-2.38-empty.json");
const ELEMENTS: &str = include_str!("../../tests/fixtures/dhis2-dataset-elements-2.40.json");

fn units(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("OrgUnit{i:04}")).collect()
}

#[tokio::test]
async fn a_data_set_is_read_with_its_period_type_and_element_codes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets/BfMAe6Itzgt"))
        .and(query_param(
            "fields",
            "id,periodType,dataSetElements[dataElement[id,code]]",
        ))
        .respond_with(json(200, ELEMENTS))
        .expect(1)
        .mount(&server)
        .await;
    let info = client(&server)
        .data_set("BfMAe6Itzgt")
        .await
        .expect("data set");
    assert_eq!(info.period_type.as_deref(), Some("Monthly"));
    assert_eq!(
        info.elements,
        vec![
            DataSetElement {
                id: "fbfJHSPpUQD".into(),
                code: Some("DE_359596".into())
            },
            DataSetElement {
                id: "cYeuwXTCPkU".into(),
                code: None
            },
        ]
    );
}

#[tokio::test]
async fn values_of_one_org_unit_are_read_including_ones_entered_by_hand() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .and(query_param("dataSet", "BfMAe6Itzgt"))
        .and(query_param("period", "202401"))
        .and(query_param("orgUnit", "DiszpKrYNg8"))
        .and(query_param("children", "false"))
        .and(header("accept-encoding", "gzip"))
        .respond_with(json(200, ONE_OU))
        .expect(1)
        .mount(&server)
        .await;
    let ous = vec!["DiszpKrYNg8".to_owned()];
    let values = client(&server)
        .read_data_values(ReadRequest {
            data_set: "BfMAe6Itzgt",
            period: "202401",
            org_units: &ous,
            children: false,
        })
        .await
        .expect("values");
    assert_eq!(values.len(), 2);
    assert_eq!(values[0].value.as_deref(), Some("12"));
    assert_eq!(values[1].data_element, "cYeuwXTCPkU");
    assert_eq!(values[1].value.as_deref(), Some("7"));
    assert_eq!(
        values[1].category_option_combo.as_deref(),
        Some("HllvX50cXC0")
    );
}

#[tokio::test]
async fn an_empty_answer_is_no_values() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(200, EMPTY))
        .mount(&server)
        .await;
    let ous = units(1);
    let values = client(&server)
        .read_data_values(ReadRequest {
            data_set: "BfMAe6Itzgt",
            period: "202401",
            org_units: &ous,
            children: true,
        })
        .await
        .expect("values");
    assert!(values.is_empty());
}

#[tokio::test]
async fn org_units_are_read_in_batches_one_request_each() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(200, MANY_OU))
        .expect(3)
        .mount(&server)
        .await;
    let ous = units(2 * ORG_UNITS_PER_READ + 1);
    let values = client(&server)
        .read_data_values(ReadRequest {
            data_set: "BfMAe6Itzgt",
            period: "202401",
            org_units: &ous,
            children: false,
        })
        .await
        .expect("values");
    assert_eq!(values.len(), 3, "one value per answer");
    let requests = server.received_requests().await.expect("recorded");
    let named: Vec<usize> = requests
        .iter()
        .map(|r| r.url.query_pairs().filter(|(k, _)| k == "orgUnit").count())
        .collect();
    assert_eq!(named, vec![ORG_UNITS_PER_READ, ORG_UNITS_PER_READ, 1]);
}

#[tokio::test]
async fn a_429_is_waited_out_then_read() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(429, "{}").insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(200, MANY_OU))
        .mount(&server)
        .await;
    let ous = units(1);
    let values = client(&server)
        .read_data_values(ReadRequest {
            data_set: "BfMAe6Itzgt",
            period: "202401",
            org_units: &ous,
            children: false,
        })
        .await
        .expect("values after the 429");
    assert_eq!(values.len(), 1);
    assert_eq!(server.received_requests().await.expect("recorded").len(), 2);
}

#[tokio::test]
async fn errors_classify() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataValueSets"))
        .respond_with(json(
            409,
            r#"{"httpStatus":"Conflict","httpStatusCode":409,"status":"ERROR","message":"Data set not found or not accessible: `Nope1234567`","errorCode":"E2002"}"#,
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets/Nope1234567"))
        .respond_with(json(200, "not json"))
        .mount(&server)
        .await;
    let ous = units(1);
    let c = client(&server);
    let e = c
        .read_data_values(ReadRequest {
            data_set: "Nope1234567",
            period: "202401",
            org_units: &ous,
            children: false,
        })
        .await
        .expect_err("409");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("E2002"), "{e}");
    let e = c.data_set("Nope1234567").await.expect_err("bad body");
    assert!(!e.is_retryable());
    assert_eq!(e.retry_after(), None::<Duration>);
}

/// A subtree is read page by page as DHIS2 2.38–2.41 page metadata lists
/// (`pager.pageCount`), filtered by the org unit's id in each path.
#[tokio::test]
async fn an_org_unit_subtree_is_read_page_by_page() {
    let server = MockServer::start().await;
    let ids = |range: std::ops::Range<usize>| -> Vec<serde_json::Value> {
        range
            .map(|i| serde_json::json!({ "id": format!("OuChild{i:04}") }))
            .collect()
    };
    for (page, list) in [("1", ids(0..1000)), ("2", ids(1000..1002))] {
        let mut units = list;
        if page == "1" {
            units[0] = serde_json::json!({ "id": "O6uvpzGd5pu" });
        }
        let body = serde_json::json!({
            "pager": { "page": page.parse::<u64>().expect("page"), "pageCount": 2, "total": 1002, "pageSize": 1000 },
            "organisationUnits": units,
        });
        Mock::given(method("GET"))
            .and(path("/api/organisationUnits"))
            .and(query_param("filter", "path:like:O6uvpzGd5pu"))
            .and(query_param("fields", "id"))
            .and(query_param("pageSize", "1000"))
            .and(query_param("page", page))
            .respond_with(json(200, &body.to_string()))
            .expect(1)
            .mount(&server)
            .await;
    }
    let subtree = client(&server)
        .org_unit_subtree("O6uvpzGd5pu")
        .await
        .expect("subtree");
    assert_eq!(subtree.len(), 1002);
    assert_eq!(subtree[0], "O6uvpzGd5pu");
    assert_eq!(subtree[1001], "OuChild1001");
}

/// An org unit DHIS2 does not list (a leaf the filter missed, or none at
/// all) still stands for itself.
#[tokio::test]
async fn an_org_unit_with_an_empty_answer_is_its_own_subtree() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .respond_with(json(200, r#"{"organisationUnits": []}"#))
        .expect(1)
        .mount(&server)
        .await;
    let subtree = client(&server)
        .org_unit_subtree("DiszpKrYNg8")
        .await
        .expect("subtree");
    assert_eq!(subtree, vec!["DiszpKrYNg8".to_owned()]);
}
