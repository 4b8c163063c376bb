//! The DHIS2 sink against a wiremock DHIS2: conflicts the server reports
//! without positions (servers before 2.38) are attributed by sending the
//! values one by one; only the refused one is parked. A 409 WebMessage
//! without an import summary (E1111) is permanent for the values sent:
//! the offending ones are found (by the message's object, or by halving
//! the batch) and parked with DHIS2's code, the rest delivered.

use kiungo::delivery::Dhis2Destination;
use kiungo::delivery::sinks::Dhis2Sink;
use kiungo_connectors::auth::{AuthConfig, SecretRef};
use kiungo_connectors::dhis2::{Dhis2Client, Dhis2Config};
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const GOOD: &str = "fbfJHSPpUQD";
const BAD: &str = "Y53Jcc9LBYh";
const OU: &str = "DiszpKrYNg8";
const COMBO: &str = "HllvX50cXC0";

fn warning_without_indexes() -> serde_json::Value {
    json!({
        "httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
        "message": "One more conflicts encountered, please check import summary.",
        "response": {
            "responseType": "ImportSummary", "status": "WARNING",
            "importCount": {"imported": 1, "updated": 0, "ignored": 1, "deleted": 0},
            "conflicts": [{"object": BAD, "objects": {"dataElement": BAD},
                "value": "Value must be a boolean: `3`", "errorCode": "E7619", "property": "value"}],
            "dataSetComplete": "false"
        }
    })
}

fn success() -> serde_json::Value {
    json!({
        "httpStatus": "OK", "httpStatusCode": 200, "status": "OK", "message": "Import was successful.",
        "response": {"responseType": "ImportSummary", "status": "SUCCESS",
            "importCount": {"imported": 0, "updated": 0, "ignored": 1, "deleted": 0},
            "conflicts": [], "dataSetComplete": "false"}
    })
}

fn metadata(kind: &str, ids: &[&str]) -> serde_json::Value {
    let items: Vec<_> = ids
        .iter()
        .map(|id| json!({"id": id, "code": id, "name": id}))
        .collect();
    json!({ kind: items })
}

#[tokio::test]
async fn unattributed_conflicts_are_resolved_value_by_value() {
    kiungo::tls::install_crypto_provider();
    let server = MockServer::start().await;
    for (p, kind, ids) in [
        ("/api/dataElements", "dataElements", vec![GOOD, BAD]),
        ("/api/organisationUnits", "organisationUnits", vec![OU]),
        (
            "/api/categoryOptionCombos",
            "categoryOptionCombos",
            vec![COMBO],
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(metadata(kind, &ids)))
            .mount(&server)
            .await;
    }
    // Both values: a conflict without indexes.
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .and(body_string_contains(GOOD))
        .and(body_string_contains(BAD))
        .respond_with(ResponseTemplate::new(409).set_body_json(warning_without_indexes()))
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    // The bad one alone: refused.
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .and(body_string_contains(BAD))
        .respond_with(ResponseTemplate::new(409).set_body_json(warning_without_indexes()))
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    // The good one alone: stored.
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(ResponseTemplate::new(200).set_body_json(success()))
        .with_priority(3)
        .expect(1)
        .mount(&server)
        .await;

    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "district").expect("pw");
    let config = Dhis2Config::new(
        server.uri(),
        AuthConfig::Basic {
            username: "admin".into(),
            password: SecretRef {
                env: None,
                file: Some(pw),
            },
        },
    );
    let sink = Dhis2Sink::new(
        Dhis2Client::new(config).expect("client"),
        std::time::Duration::from_secs(3600),
    );
    let key = |de: &str| {
        (
            de.to_owned(),
            "202403".to_owned(),
            OU.to_owned(),
            COMBO.to_owned(),
            COMBO.to_owned(),
        )
    };
    let push = sink
        .push(&[(key(GOOD), "2".into()), (key(BAD), "3".into())])
        .await
        .expect("push");
    assert!(push.batch_rejected.is_none());
    assert_eq!(push.rejected.len(), 1, "{push:?}");
    let (code, message) = push.rejected.get(&1).expect("the second value is refused");
    assert_eq!(code, "E7619");
    assert!(message.contains("boolean"), "{message}");
}

/// Metadata for `data_elements` and `combos`, and a sink on `server`.
async fn sink_on(server: &MockServer, data_elements: &[&str], combos: &[&str]) -> Dhis2Sink {
    kiungo::tls::install_crypto_provider();
    for (p, kind, ids) in [
        ("/api/dataElements", "dataElements", data_elements.to_vec()),
        ("/api/organisationUnits", "organisationUnits", vec![OU]),
        (
            "/api/categoryOptionCombos",
            "categoryOptionCombos",
            combos.to_vec(),
        ),
    ] {
        Mock::given(method("GET"))
            .and(path(p))
            .respond_with(ResponseTemplate::new(200).set_body_json(metadata(kind, &ids)))
            .mount(server)
            .await;
    }
    let dir = tempfile::tempdir().expect("dir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "district").expect("pw");
    let mut config = Dhis2Config::new(
        server.uri(),
        AuthConfig::Basic {
            username: "admin".into(),
            password: SecretRef {
                env: None,
                file: Some(pw),
            },
        },
    );
    config.batch_size = 100;
    // The client reads the password when it is built.
    Dhis2Sink::new(
        Dhis2Client::new(config).expect("client"),
        std::time::Duration::from_secs(3600),
    )
}

fn key_with(de: &str, coc: &str) -> kiungo::store::TotalKey {
    (
        de.to_owned(),
        "202403".to_owned(),
        OU.to_owned(),
        coc.to_owned(),
        COMBO.to_owned(),
    )
}

/// The bare pre-2.38 summary (`/api/37`): HTTP 200 whatever the outcome.
fn bare_warning_one_ignored() -> serde_json::Value {
    json!({
        "responseType": "ImportSummary", "status": "WARNING",
        "description": "Import process completed successfully",
        "importCount": {"imported": 0, "updated": 0, "ignored": 1, "deleted": 0},
        "conflicts": [{"object": "202403", "value": "Current date is past expiry days for period 202403 and data set: QX4ZTUbOt3a"}],
        "dataSetComplete": "false"
    })
}

/// Bug 1: one value, refused by a server that gives no positions, is
/// parked (it was recorded as delivered: the one-by-one attribution only
/// ran for more than one value).
#[tokio::test]
async fn a_single_value_refused_without_indexes_is_parked() {
    let server = MockServer::start().await;
    let sink = sink_on(&server, &[GOOD], &[COMBO]).await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(ResponseTemplate::new(200).set_body_json(bare_warning_one_ignored()))
        .expect(1)
        .mount(&server)
        .await;
    let push = sink
        .push(&[(key_with(GOOD, COMBO), "2".into())])
        .await
        .expect("push");
    assert!(push.batch_rejected.is_none());
    let (code, message) = push.rejected.get(&0).expect("the value is refused");
    assert_eq!(code, "dhis2_conflict");
    assert!(message.contains("past expiry days"), "{message}");
}

/// DHIS2 2.41's answer to a value naming a category option that does not
/// exist (captured; the contract notes, section 1).
fn e1111(object: &str) -> serde_json::Value {
    json!({
        "httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
        "message": format!("Category option not found or not accessible: `{object}`"),
        "errorCode": "E1111"
    })
}

const ALSO_GOOD: &str = "Jtf34kNZhzP";
const BAD_COMBO: &str = "PT59n8BQbqM";

/// Answers E1111 to any request with a value using `BAD_COMBO`, and a
/// success counting the values otherwise; counts the requests.
fn e1111_for_bad_combo(object: &'static str) -> impl Fn(&Request) -> ResponseTemplate {
    move |req: &Request| {
        let body = String::from_utf8_lossy(&req.body);
        if body.contains(BAD_COMBO) {
            ResponseTemplate::new(409).set_body_json(e1111(object))
        } else {
            let n = body.matches("dataElement").count();
            ResponseTemplate::new(200).set_body_json(json!({
                "httpStatus": "OK", "httpStatusCode": 200, "status": "OK",
                "message": "Import was successful.",
                "response": {"responseType": "ImportSummary", "status": "SUCCESS",
                    "importCount": {"imported": n, "updated": 0, "ignored": 0, "deleted": 0},
                    "conflicts": [], "dataSetComplete": "false"}
            }))
        }
    }
}

/// Bug 3: a 409 WebMessage without an import summary is permanent for
/// the values sent, not a destination problem: the sink finds the
/// offending value by halving the batch (the message names a category
/// option, which no value carries), parks it with DHIS2's code and
/// message, and delivers the others; nothing is retried.
#[tokio::test]
async fn a_409_web_message_parks_the_offending_values_found_by_halving() {
    let server = MockServer::start().await;
    let sink = sink_on(&server, &[GOOD, ALSO_GOOD, BAD], &[COMBO, BAD_COMBO]).await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(e1111_for_bad_combo("InvalidCategoryOption"))
        .mount(&server)
        .await;
    let values = vec![
        (key_with(GOOD, COMBO), "1".to_owned()),
        (key_with(ALSO_GOOD, COMBO), "2".to_owned()),
        (key_with(BAD, COMBO), "3".to_owned()),
        (key_with(GOOD, BAD_COMBO), "4".to_owned()),
    ];
    let push = sink
        .push(&values)
        .await
        .expect("a permanent answer, not an error");
    assert!(push.batch_rejected.is_none());
    assert_eq!(push.rejected.len(), 1, "{push:?}");
    let (code, message) = push.rejected.get(&3).expect("the value with the bad combo");
    assert_eq!(code, "E1111");
    assert!(message.contains("Category option not found"), "{message}");
    // The whole batch, its halves, the failing half's halves: 5 requests
    // (the metadata GETs aside).
    let posts = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 5);
}

/// Bug 3: when the message names an object the values carry (here the
/// category option combo's UID), the values with it are parked at once
/// and the rest sent in one request, with DHIS2's object kept (a UID
/// Kiungo sent is metadata, not personal data).
#[tokio::test]
async fn a_409_web_message_naming_an_object_parks_the_values_with_it() {
    let server = MockServer::start().await;
    let sink = sink_on(&server, &[GOOD, ALSO_GOOD, BAD], &[COMBO, BAD_COMBO]).await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(e1111_for_bad_combo(BAD_COMBO))
        .mount(&server)
        .await;
    let values = vec![
        (key_with(GOOD, BAD_COMBO), "1".to_owned()),
        (key_with(ALSO_GOOD, COMBO), "2".to_owned()),
        (key_with(BAD, COMBO), "3".to_owned()),
        (key_with(ALSO_GOOD, BAD_COMBO), "4".to_owned()),
    ];
    let push = sink.push(&values).await.expect("a permanent answer");
    let mut refused: Vec<usize> = push.rejected.keys().copied().collect();
    refused.sort_unstable();
    assert_eq!(refused, vec![0, 3]);
    let (code, message) = &push.rejected[&0];
    assert_eq!(code, "E1111");
    assert!(message.contains(BAD_COMBO), "{message}");
    let posts = server
        .received_requests()
        .await
        .expect("recorded")
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .count();
    assert_eq!(posts, 2, "the batch, then the values without the object");
}

/// Bug 3, what the worker does with it: the values are parked with E1111
/// at once (not retried until `max_age` as `dhis2_retries_exhausted`),
/// and the circuit breaker stays closed.
#[tokio::test]
async fn a_409_web_message_is_not_a_sink_failure() {
    let server = MockServer::start().await;
    let sink = sink_on(&server, &[GOOD], &[COMBO, BAD_COMBO]).await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(e1111_for_bad_combo("InvalidCategoryOption"))
        .mount(&server)
        .await;
    let push = sink
        .push(&[(key_with(GOOD, BAD_COMBO), "1".to_owned())])
        .await
        .expect("parked, not failed: a failure would be retried and count on the breaker");
    assert_eq!(push.rejected[&0].0, "E1111");
}

/// A 409 that is not DHIS2's WebMessage (a proxy's page) is still a
/// destination problem: retried.
#[tokio::test]
async fn a_409_from_a_proxy_is_still_retried() {
    let server = MockServer::start().await;
    let sink = sink_on(&server, &[GOOD], &[COMBO]).await;
    Mock::given(method("POST"))
        .and(path("/api/dataValueSets"))
        .respond_with(ResponseTemplate::new(409).set_body_string("<html>Conflict</html>"))
        .mount(&server)
        .await;
    let failure = sink
        .push(&[(key_with(GOOD, COMBO), "1".to_owned())])
        .await
        .expect_err("a destination problem");
    assert!(failure.retryable, "{failure:?}");
}
