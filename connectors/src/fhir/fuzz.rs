//! Fuzz target for what a FHIR server answers a transaction with
//! ([`super::response::read_answer`]): transaction-response bundles,
//! OperationOutcomes, other resources, pages from proxies, any bytes.
//!
//! Invariants: nothing panics; a 2xx is delivered only with a
//! transaction-response bundle, one entry read per entry sent back; an
//! error names the HTTP status and is one bounded line per issue; after
//! the redaction policy ([`kiungo_mappings::redact::external`], applied
//! where the sinks take the text in) no marker value from the body is
//! left, wherever the body carried it: in resources, or quoted in the
//! server's own messages. Run longer: `BOLERO_RANDOM_TEST_TIME_MS=600000
//! cargo test --release -p kiungo-connectors fhir::fuzz`.

use kiungo_fuzz_input::{CI_TIME, Input, MARKER_NAME, MARKER_PHONE, leaks};
use kiungo_mappings::redact::external;
use serde_json::{Value, json};

use super::response::{FhirError, read_answer};
use crate::retry::Retryable;

/// A server message: fixed words, or a value quoted as servers quote
/// them (HAPI: `'…'`, the validator: `` `…` ``, French servers: `«…»`).
fn message(input: &mut Input<'_>) -> Value {
    let quotes = [("'", "'"), ("\"", "\""), ("`", "`"), ("«", "»"), ("“", "”")];
    let (open, close) = input.pick(&quotes);
    let value = input.pick(&[MARKER_NAME, MARKER_PHONE, "male"]);
    match input.below(4) {
        0 => json!(format!("Patient {open}{value}{close} already exists")),
        1 => json!(format!(
            "Failed to CREATE resource with match URL \"Patient?identifier=x|{value}\""
        )),
        2 => json!("HAPI-0450: Failed to parse request body"),
        _ => Value::Null,
    }
}

fn resource_type(input: &mut Input<'_>) -> &'static str {
    input.pick(&[
        "Patient",
        "Bundle",
        "OperationOutcome",
        "Observation",
        "Parameters",
    ])
}

/// A body as a FHIR server (or something in front of it) might answer.
fn body(input: &mut Input<'_>) -> (String, bool) {
    let json = match input.below(6) {
        0 => {
            let entries: Vec<Value> = (0..input.below(5))
                .map(|_| {
                    let status = input.pick(&["201 Created", "200 OK", "DELETE", "", "412", "2000 x"]);
                    json!({
                        "response": {
                            "status": status,
                            "location": input.pick(&["Patient/1/_history/2", "urn:uuid:x", "http://h/fhir/Observation/a", ""]),
                            "etag": "W/\"1\"",
                            "outcome": {"resourceType": "OperationOutcome", "issue": [{"diagnostics": message(input)}]},
                        },
                        "resource": {"resourceType": "Patient", "name": [{"text": MARKER_NAME}], "telecom": [{"value": MARKER_PHONE}], "extra": input.json(2)},
                    })
                })
                .collect();
            json!({
                "resourceType": "Bundle",
                "type": input.pick(&["transaction-response", "batch-response", "searchset"]),
                "entry": entries,
            })
        }
        1 => {
            let issues: Vec<Value> = (0..input.below(8))
                .map(|_| {
                    json!({
                        "severity": input.pick(&["error", "fatal", "warning"]),
                        "code": input.pick(&["invalid", "multiple-matches", "processing"]),
                        "diagnostics": message(input),
                        "details": {"text": message(input), "coding": [{"display": MARKER_NAME}]},
                        "expression": [input.pick(&["Patient.name[0]", "Bundle.entry[2].resource"])],
                        "extension": input.json(2),
                    })
                })
                .collect();
            json!({"resourceType": "OperationOutcome", "issue": issues, "text": {"div": MARKER_NAME}})
        }
        2 => json!({
            "resourceType": resource_type(input),
            "name": [{"given": [MARKER_NAME]}],
            "identifier": [{"value": MARKER_PHONE}],
            "type": input.pick(&["transaction-response", "collection"]),
        }),
        3 => {
            let mut v = json!({"resourceType": "Bundle", "type": "transaction-response", "entry": [
                {"response": {"status": "201 Created", "location": "Patient/p1/_history/1"},
                 "resource": {"resourceType": "Patient", "name": [{"text": MARKER_NAME}]}}
            ]});
            input.mutate(&mut v, 4);
            return (v.to_string(), false);
        }
        4 => return (String::from_utf8_lossy(input.rest()).into_owned(), false),
        _ => json!({"issue": input.json(3), "detail": MARKER_PHONE}),
    };
    (json.to_string(), true)
}

#[test]
fn fhir_transaction_answers() {
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let mut input = Input::new(bytes);
            let status = input.pick(&[
                200, 201, 202, 204, 400, 404, 409, 412, 422, 429, 500, 503, 301,
            ]);
            let media = input.pick(&["application/fhir+json", "application/json", "text/html", ""]);
            let (body, checked) = body(&mut input);
            match read_answer(status, media, &body, None) {
                Ok(response) => {
                    assert!((200..300).contains(&status), "delivered on HTTP {status}");
                    let sent: Value =
                        serde_json::from_str(&body).expect("a delivered answer is JSON");
                    assert_eq!(sent["resourceType"], "Bundle");
                    assert_eq!(sent["type"], "transaction-response");
                    let n = sent["entry"].as_array().map_or(0, Vec::len);
                    assert_eq!(response.entries.len(), n, "one entry read per entry");
                    for e in &response.entries {
                        assert!(e.status == 0 || (100..1000).contains(&e.status));
                    }
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&status.to_string()),
                        "names the status: {text}"
                    );
                    if matches!(e, FhirError::UnexpectedResponse { .. }) {
                        assert!(!e.is_retryable());
                    }
                    if checked {
                        let left = leaks(&external(&text));
                        assert!(left.is_empty(), "{left:?} left in {:?}", external(&text));
                    }
                }
            }
        });
}
