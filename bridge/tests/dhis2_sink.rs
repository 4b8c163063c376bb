//! The DHIS2 sink against a wiremock DHIS2: conflicts the server reports
//! without positions (servers before 2.38) are attributed by sending the
//! values one by one; only the refused one is parked.

use kiungo::delivery::Dhis2Destination;
use kiungo::delivery::sinks::Dhis2Sink;
use kiungo_connectors::auth::{AuthConfig, SecretRef};
use kiungo_connectors::dhis2::{Dhis2Client, Dhis2Config};
use serde_json::json;
use wiremock::matchers::{body_string_contains, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

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
