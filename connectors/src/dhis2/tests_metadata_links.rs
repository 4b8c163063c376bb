//! The static preflight's DHIS2 calls against a mock server answering
//! as DHIS2 2.40 does: `/api/me`, `/api/system/info`, and the batched
//! metadata look-ups of [`Dhis2Client::metadata_links`].

use std::collections::BTreeSet;

use serde_json::json;
use wiremock::matchers::{header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::tests::{PAT, client};
use super::*;
use crate::retry::Retryable;

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

fn list(key: &str, items: serde_json::Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({ key: items }))
}

/// `/api/system/info` as 2.40.3 sends it (trimmed of the fields Kiungo
/// does not read), with the token.
#[tokio::test]
async fn system_info_reads_version_and_calendar() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/system/info"))
        .and(header("authorization", format!("ApiToken {PAT}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "contextPath": "https://dhis2.example.org", "calendar": "ethiopian",
            "dateFormat": "yyyy-mm-dd", "serverDate": "2024-03-28T10:38:56.478",
            "serverTimeZoneId": "Africa/Addis_Ababa", "version": "2.40.3",
            "revision": "9a4dd1b", "buildTime": "2024-02-27T13:47:35.000",
            "systemName": "DHIS 2", "isMetadataVersionEnabled": true
        })))
        .expect(1)
        .mount(&server)
        .await;
    let info = client(&server).system_info().await.expect("info");
    assert_eq!(info.version.as_deref(), Some("2.40.3"));
    assert_eq!(info.calendar.as_deref(), Some("ethiopian"));
}

/// A rejected token: `/api/me` answers 401 with DHIS2's WebMessage, a
/// permanent error that names it.
#[tokio::test]
async fn me_with_a_rejected_token_is_a_permanent_401() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/me"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({
            "httpStatus": "Unauthorized", "httpStatusCode": 401, "status": "ERROR",
            "message": "The API token does not exists."
        })))
        .mount(&server)
        .await;
    let err = client(&server).me().await.expect_err("401");
    assert!(!err.is_retryable());
    assert!(
        matches!(err, Dhis2Error::Status { status: 401, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("The API token does not exists."),
        "{err}"
    );

    let ok = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/me"))
        .and(query_param("fields", "id,username"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"id": "xE7jOejl9FI", "username": "kiungo"})),
        )
        .mount(&ok)
        .await;
    let me = client(&ok).me().await.expect("me");
    assert_eq!(
        (me.id.as_str(), me.username.as_deref()),
        ("xE7jOejl9FI", Some("kiungo"))
    );
}

/// One request per kind (and per codes), with the fields the checks
/// need, in 2.40's shapes; the data sets asked for are those of the data
/// elements found.
#[tokio::test]
async fn metadata_links_batches_each_kind_and_reads_the_2_40_shapes() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataElements"))
        .and(query_param("filter", "id:in:[NoSuchDE001,fbfJHSPpUQD]"))
        .and(query_param(
            "fields",
            "id,code,name,categoryCombo[id],dataSetElements[dataSet[id]]",
        ))
        .and(query_param("paging", "false"))
        .respond_with(list(
            "dataElements",
            json!([{"id": "fbfJHSPpUQD", "code": "DE_22", "name": "ANC 1st visit",
                "categoryCombo": {"id": "KYYSTxeVw28"},
                "dataSetElements": [{"dataSet": {"id": "QX4ZTUbOt3a"}}, {"dataSet": {"id": "BfMAe6Itzgt"}}]}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataElements"))
        .and(query_param("filter", "code:in:[MAL_RDT_TESTED]"))
        .respond_with(list(
            "dataElements",
            json!([{"id": "KgMalRdtTst", "code": "MAL_RDT_TESTED", "name": "Malaria RDT tested",
                "categoryCombo": {"id": "bjDvmb4bfuf"}, "dataSetElements": []}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .and(query_param("filter", "id:in:[DiszpKrYNg8,NoSuchOU001]"))
        .and(query_param("fields", "id,code,name,dataSets[id]"))
        .respond_with(list(
            "organisationUnits",
            json!([{"id": "DiszpKrYNg8", "code": "OU_559", "name": "Ngelehun CHC",
                "dataSets": [{"id": "QX4ZTUbOt3a"}, {"id": "aLpVgfXiz0f"}]}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "id:in:[HllvX50cXC0,TgtResAoc01,pq2XI5kz2BY]"))
        .and(query_param("fields", "id,code,name,categoryCombo[id]"))
        .respond_with(list(
            "categoryOptionCombos",
            json!([{"id": "HllvX50cXC0", "code": "default", "name": "default", "categoryCombo": {"id": "bjDvmb4bfuf"}},
                   {"id": "TgtResAoc01", "name": "Target", "categoryCombo": {"id": "WBW7RjsApsv"}},
                   {"id": "pq2XI5kz2BY", "name": "Fixed", "categoryCombo": {"id": "KYYSTxeVw28"}}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets"))
        .and(query_param("filter", "id:in:[BfMAe6Itzgt,QX4ZTUbOt3a]"))
        .and(query_param("fields", "id,name,periodType,categoryCombo[id]"))
        .respond_with(list(
            "dataSets",
            json!([{"id": "QX4ZTUbOt3a", "name": "Reproductive Health", "periodType": "Monthly", "categoryCombo": {"id": "bjDvmb4bfuf"}},
                   {"id": "BfMAe6Itzgt", "name": "Child Health", "periodType": "Monthly", "categoryCombo": {"id": "bjDvmb4bfuf"}}]),
        ))
        .expect(1)
        .mount(&server)
        .await;

    let refs = References {
        data_elements: set(&["fbfJHSPpUQD", "NoSuchDE001", "code:MAL_RDT_TESTED"]),
        org_units: set(&["DiszpKrYNg8", "NoSuchOU001"]),
        category_option_combos: set(&["pq2XI5kz2BY", "HllvX50cXC0"]),
        attribute_option_combos: set(&["HllvX50cXC0", "TgtResAoc01"]),
    };
    let links = client(&server).metadata_links(&refs).await.expect("links");

    let anc = &links.data_elements["fbfJHSPpUQD"];
    assert_eq!(anc.category_combo.as_deref(), Some("KYYSTxeVw28"));
    assert_eq!(anc.data_sets, set(&["BfMAe6Itzgt", "QX4ZTUbOt3a"]));
    assert_eq!(links.data_elements["code:MAL_RDT_TESTED"].id, "KgMalRdtTst");
    assert!(!links.data_elements.contains_key("NoSuchDE001"));
    assert_eq!(
        links.org_units["DiszpKrYNg8"].data_sets,
        set(&["QX4ZTUbOt3a", "aLpVgfXiz0f"])
    );
    assert!(!links.org_units.contains_key("NoSuchOU001"));
    assert_eq!(
        links.option_combos["pq2XI5kz2BY"].category_combo.as_deref(),
        Some("KYYSTxeVw28")
    );
    assert_eq!(
        links.data_sets["BfMAe6Itzgt"].period_type.as_deref(),
        Some("Monthly")
    );
    assert_eq!(links.data_sets.len(), 2);
    // What the attribute option combo check compares: an attribute
    // combo's category combo, and each data set's.
    assert_eq!(
        links.option_combos["TgtResAoc01"].category_combo.as_deref(),
        Some("WBW7RjsApsv")
    );
    assert_eq!(
        links.data_sets["QX4ZTUbOt3a"].category_combo.as_deref(),
        Some("bjDvmb4bfuf")
    );
}

/// The completeness grace check reads `timelyDays` (2.40: an integer)
/// of the configured data sets in one request; one DHIS2 does not know is
/// absent.
#[tokio::test]
async fn data_set_timeliness_reads_timely_days() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/dataSets"))
        .and(query_param(
            "filter",
            "id:in:[BfMAe6Itzgt,NoSuchSet01,QX4ZTUbOt3a]",
        ))
        .and(query_param("fields", "id,name,timelyDays"))
        .and(query_param("paging", "false"))
        .respond_with(list(
            "dataSets",
            json!([{"id": "QX4ZTUbOt3a", "name": "Reproductive Health", "timelyDays": 10},
                   {"id": "BfMAe6Itzgt", "name": "Child Health", "timelyDays": 0}]),
        ))
        .expect(1)
        .mount(&server)
        .await;
    let sets = client(&server)
        .data_set_timeliness(&set(&["QX4ZTUbOt3a", "BfMAe6Itzgt", "NoSuchSet01"]))
        .await
        .expect("timeliness");
    assert_eq!(sets["QX4ZTUbOt3a"].timely_days, Some(10));
    assert_eq!(
        sets["QX4ZTUbOt3a"].name.as_deref(),
        Some("Reproductive Health")
    );
    assert_eq!(sets["BfMAe6Itzgt"].timely_days, Some(0));
    assert!(!sets.contains_key("NoSuchSet01"));
}

/// 250 org units: three requests of at most 100 ids each.
#[tokio::test]
async fn metadata_links_asks_for_at_most_100_ids_at_a_time() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/organisationUnits"))
        .respond_with(list("organisationUnits", json!([])))
        .expect(3)
        .mount(&server)
        .await;
    let refs = References {
        org_units: (0..250).map(|i| format!("OrgUnit{i:04}")).collect(),
        ..References::default()
    };
    let links = client(&server).metadata_links(&refs).await.expect("links");
    assert!(links.org_units.is_empty());
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

/// A 503 while looking up is transient, for the retry schedule.
#[tokio::test]
async fn metadata_links_errors_classify() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let refs = References {
        data_elements: set(&["fbfJHSPpUQD"]),
        ..References::default()
    };
    let err = client(&server)
        .metadata_links(&refs)
        .await
        .expect_err("503");
    assert!(err.is_retryable(), "{err}");
}
