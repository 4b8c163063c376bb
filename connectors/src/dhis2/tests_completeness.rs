//! Contract tests of completeness registration against DHIS2 2.38–2.41
//! answer shapes.

use wiremock::matchers::{body_json, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::tests::{client, json};
use super::*;
use crate::retry::Retryable;

const OK_240: &str = include_str!("../../tests/fixtures/dhis2-complete-registration-200-2.40.json");
const CONFLICT_241: &str =
    include_str!("../../tests/fixtures/dhis2-complete-registration-409-2.41.json");

fn registration(aoc: &str) -> Registration {
    Registration {
        data_set: "BfMAe6Itzgt".into(),
        period: "202401".into(),
        organisation_unit: "DiszpKrYNg8".into(),
        attribute_option_combo: aoc.into(),
        completed: true,
    }
}

#[tokio::test]
async fn a_registration_is_posted_in_the_2_38_shape_and_imported() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(body_json(
            serde_json::json!({"completeDataSetRegistrations": [{
                "dataSet": "BfMAe6Itzgt",
                "period": "202401",
                "organisationUnit": "DiszpKrYNg8",
                "attributeOptionCombo": "HllvX50cXC0",
                "completed": true,
            }]}),
        ))
        .respond_with(json(200, OK_240))
        .expect(1)
        .mount(&server)
        .await;
    let outcome = client(&server)
        .register_completion(&[registration("HllvX50cXC0")])
        .await
        .expect("answer");
    assert_eq!(outcome.status, ImportStatus::Success);
    assert_eq!(outcome.imported, 1);
    assert!(outcome.conflicts.is_empty());
}

#[tokio::test]
async fn a_409_conflict_is_an_answer_with_dhis2s_message() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .respond_with(json(409, CONFLICT_241))
        .mount(&server)
        .await;
    let outcome = client(&server)
        .register_completion(&[registration("HllvX50cXC0")])
        .await
        .expect("a conflict is an answer, not an error");
    assert_eq!(outcome.status, ImportStatus::Warning);
    assert_eq!((outcome.imported, outcome.ignored), (0, 1));
    assert_eq!(outcome.conflicts.len(), 1);
    assert_eq!(outcome.conflicts[0].object, "DiszpKrYNg8");
    assert!(outcome.conflicts[0].value.contains("is not assigned"));
}

#[tokio::test]
async fn nothing_to_register_sends_nothing() {
    let server = MockServer::start().await;
    let outcome = client(&server)
        .register_completion(&[])
        .await
        .expect("nothing");
    assert_eq!(outcome.imported, 0);
    assert!(
        server
            .received_requests()
            .await
            .expect("recorded")
            .is_empty()
    );
}

#[tokio::test]
async fn a_503_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/api/completeDataSetRegistrations"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "30"))
        .mount(&server)
        .await;
    let e = client(&server)
        .register_completion(&[registration("HllvX50cXC0")])
        .await
        .expect_err("503");
    assert!(e.is_retryable());
    assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(30)));
}

#[tokio::test]
async fn an_undo_deletes_with_ds_pe_ou_and_takes_204() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(query_param("ds", "BfMAe6Itzgt"))
        .and(query_param("pe", "202401"))
        .and(query_param("ou", "DiszpKrYNg8"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .undo_completion("BfMAe6Itzgt", "202401", "DiszpKrYNg8", None)
        .await
        .expect("undone");
    // The default combo: neither `cc` nor `cp` (DHIS2 falls back to it).
    let received = server.received_requests().await.expect("recorded");
    let query = received[0].url.query().unwrap_or_default().to_owned();
    assert!(!query.contains("cc=") && !query.contains("cp="), "{query}");
}

/// DHIS2 2.38–2.41's `DELETE` takes no attribute option combo UID: the
/// combo is named by its category combo (`cc`) and its category options
/// (`cp`, joined by `;`), as `InputUtils.getAttributeOptionCombo` reads
/// them.
#[tokio::test]
async fn an_undo_of_another_combo_names_its_category_combo_and_options() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .and(query_param("ds", "Lpw6GcnTrmS"))
        .and(query_param("pe", "202401"))
        .and(query_param("ou", "DiszpKrYNg8"))
        .and(query_param("cc", "WBW7RjsApsv"))
        .and(query_param("cp", "Fc9gK0xnqGx;Zq3WTjpkeJx"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&server)
        .await;
    let attribute = crate::dhis2::AttributeOptions {
        category_combo: "WBW7RjsApsv".into(),
        category_options: vec!["Fc9gK0xnqGx".into(), "Zq3WTjpkeJx".into()],
    };
    client(&server)
        .undo_completion("Lpw6GcnTrmS", "202401", "DiszpKrYNg8", Some(&attribute))
        .await
        .expect("undone");
}

/// An attribute option combo's category combo and options, by UID or
/// code, from `/api/categoryOptionCombos`; `None` when DHIS2 has none.
#[tokio::test]
async fn an_attribute_combos_options_are_read_from_dhis2() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "id:in:[AocProjectA]"))
        .and(query_param(
            "fields",
            "id,code,categoryCombo[id],categoryOptions[id]",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "categoryOptionCombos": [{"id": "AocProjectA", "categoryCombo": {"id": "WBW7RjsApsv"},
                "categoryOptions": [{"id": "Zq3WTjpkeJx"}, {"id": "Fc9gK0xnqGx"}]}]
        })))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/categoryOptionCombos"))
        .and(query_param("filter", "id:in:[NoSuchCombo]"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"categoryOptionCombos": []})),
        )
        .mount(&server)
        .await;
    let c = client(&server);
    assert_eq!(
        c.attribute_options("AocProjectA").await.expect("answer"),
        Some(crate::dhis2::AttributeOptions {
            category_combo: "WBW7RjsApsv".into(),
            category_options: vec!["Fc9gK0xnqGx".into(), "Zq3WTjpkeJx".into()],
        })
    );
    assert_eq!(
        c.attribute_options("NoSuchCombo").await.expect("answer"),
        None
    );
}

#[tokio::test]
async fn a_refused_undo_is_permanent_with_dhis2s_message() {
    let server = MockServer::start().await;
    Mock::given(method("DELETE"))
        .and(path("/api/completeDataSetRegistrations"))
        .respond_with(json(
            409,
            r#"{"httpStatus":"Conflict","httpStatusCode":409,"status":"ERROR","message":"Period not valid: `2024W70`"}"#,
        ))
        .mount(&server)
        .await;
    let e = client(&server)
        .undo_completion("BfMAe6Itzgt", "2024W70", "DiszpKrYNg8", None)
        .await
        .expect_err("409");
    assert!(!e.is_retryable(), "{e}");
    assert!(e.to_string().contains("Period not valid"), "{e}");
}
