//! Fuzz target for DHIS2's answers to a `dataValueSets` import
//! ([`super::import_summary::parse_import_response`]): import summaries
//! bare and wrapped (2.38+ WebMessage), error WebMessages, proxies' pages,
//! any bytes.
//!
//! Invariants: nothing panics; an outcome's rejected and unexplained
//! positions stay within the values sent; an error names the HTTP status;
//! after the redaction policy ([`kiungo_mappings::redact::external`],
//! applied where the sink takes DHIS2's text in) no marker value from the
//! body is left, whether DHIS2 quoted it in a message or it sat in a field
//! of the wrong type. Run longer: `BOLERO_RANDOM_TEST_TIME_MS=600000 cargo
//! test --release -p kiungo-connectors dhis2::fuzz`.

use kiungo_fuzz_input::{CI_TIME, Input, MARKER_NAME, MARKER_PHONE, leaks};
use kiungo_mappings::redact::external;
use serde_json::{Value, json};

use super::import_summary::parse_import_response;

/// A DHIS2 message: fixed words, or a value quoted as DHIS2 quotes them.
fn message(input: &mut Input<'_>) -> Value {
    let value = input.pick(&[MARKER_NAME, MARKER_PHONE, "2024-13"]);
    match input.below(4) {
        0 => json!(format!("Period not valid: `{value}`")),
        1 => json!(format!("Data value is not numeric: '{value}'")),
        2 => json!("Category option combo not found or not accessible"),
        _ => Value::Null,
    }
}

/// Anything, or a marker in a place that wants another type (a status, a
/// count, an index): serde's messages quote what they refuse.
fn odd(input: &mut Input<'_>) -> Value {
    match input.below(4) {
        0 => json!(MARKER_NAME),
        1 => json!([MARKER_PHONE]),
        _ => input.json(2),
    }
}

fn summary(input: &mut Input<'_>) -> Value {
    let conflicts: Vec<Value> = (0..input.below(5))
        .map(|_| {
            json!({
                "object": input.pick(&["DiXDJq6Nt7W", MARKER_NAME, ""]),
                "objects": {"dataElement": "DiXDJq6Nt7W", "x": odd(input)},
                "value": message(input),
                "errorCode": input.pick(&["E7600", "E7619", "E7633"]),
                "property": "value",
                "indexes": if input.one_in(4) { odd(input) } else { json!([input.below(8), 1000]) },
            })
        })
        .collect();
    let mut s = json!({
        "responseType": "ImportSummary",
        "status": input.pick(&["SUCCESS", "WARNING", "ERROR", "OK", "success", MARKER_NAME]),
        "description": message(input),
        "importCount": {"imported": input.below(3), "updated": 0, "ignored": input.below(3), "deleted": 0},
        "conflicts": conflicts,
        "rejectedIndexes": [input.below(10)],
        "dataSetComplete": "false",
    });
    if input.one_in(3) {
        let fields = [
            "status",
            "importCount",
            "conflicts",
            "rejectedIndexes",
            "description",
        ];
        let field = input.pick(&fields);
        s[field] = odd(input);
    }
    s
}

fn body(input: &mut Input<'_>) -> (String, bool) {
    let json = match input.below(6) {
        0 => summary(input),
        1 => json!({
            "httpStatus": "Conflict", "httpStatusCode": 409, "status": "WARNING",
            "message": "One more conflicts encountered, please check import summary.",
            "response": summary(input),
        }),
        2 => json!({
            "httpStatus": "Conflict", "httpStatusCode": 409, "status": "ERROR",
            "message": message(input), "errorCode": input.pick(&["E1111", "E7600"]),
        }),
        3 => {
            let mut v = summary(input);
            input.mutate(&mut v, 4);
            return (v.to_string(), false);
        }
        4 => return (String::from_utf8_lossy(input.rest()).into_owned(), false),
        _ => json!({"message": message(input), "trace": MARKER_PHONE}),
    };
    (json.to_string(), true)
}

#[test]
fn dhis2_import_answers() {
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let mut input = Input::new(bytes);
            let status = input.pick(&[200, 201, 409, 400, 401, 500, 502, 503]);
            let n_values = input.below(12);
            let (body, checked) = body(&mut input);
            match parse_import_response(status, &body, None) {
                Ok(outcome) => {
                    assert!(status == 409 || (200..300).contains(&status));
                    for (i, _) in outcome.rejected(n_values) {
                        assert!(i < n_values, "rejected position {i} of {n_values}");
                    }
                    for i in outcome.unexplained_rejections(n_values) {
                        assert!(i < n_values, "unexplained position {i} of {n_values}");
                    }
                    let _ = (outcome.is_batch_rejected(), outcome.batch_conflict());
                }
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&status.to_string()),
                        "names the status: {text}"
                    );
                    if checked {
                        let left = leaks(&external(&text));
                        assert!(left.is_empty(), "{left:?} left in {:?}", external(&text));
                    }
                }
            }
        });
}
