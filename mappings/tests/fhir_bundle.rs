//! Issue 15: checks that need the whole bundle, made at map time. Ignored
//! until the exact R4 checker lands (step 3 of issue 15); fails today.

use kiungo_mappings::{Event, LoadOptions, MappingSet};

#[test]
fn a_urn_uuid_reference_to_no_entry_of_the_bundle_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("m.yaml"),
        r#"id: demo
version: 1
description: demo
source: demo
event_id: event.id
fhir:
  - name: obs
    resource:
      resourceType: Observation
      status: final
      code: { text: weight }
      subject: { reference: "urn:uuid:0b3a8f6e-0000-5000-8000-000000000000" }
tests:
  - name: t
    event: { id: e0 }
    expect_error: "urn:uuid"
"#,
    )
    .expect("write");
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let err = set
        .map(&Event {
            source: "demo".into(),
            message_id: None,
            payload: std::sync::Arc::new(serde_json::json!({"id": "e1"})),
        })
        .expect_err("dangling reference");
    let text = err.to_string();
    assert!(text.contains("Observation.subject"), "{text}");
    assert!(text.contains("no entry"), "{text}");
}

/// A template whose literal parts are checked at load; what its
/// expressions give is checked per event.
const VITALS: &str = r#"id: vitals
version: 1
description: demo
source: demo
event_id: event.id
fhir:
  - name: patient
    method: create
    if_none_exist: "'identifier=' ~ event.id"
    resource:
      resourceType: Patient
      identifier: [ { system: "https://x.org/p", value: =event.id } ]
  - name: weight
    resource:
      resourceType: Observation
      status: =event.status
      code: { coding: [ { system: http://loinc.org, code: 29463-7, display: Body weight } ] }
      subject: { reference: =refs.patient }
      encounter: { reference: "=event.encounter | default(none)" }
      effectiveDateTime: =event.date
      valueQuantity: { value: =event.kg, unit: kg, system: http://unitsofmeasure.org, code: kg }
      valueString: "=event.note | default(none)"
tests:
  - name: t
    event: { id: e0, status: final, date: "2024-05-14", kg: 8.6 }
    expect_error: "never matches"
"#;

#[test]
fn what_expressions_give_is_still_checked_per_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("m.yaml"), VITALS).expect("write");
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let map = |payload: serde_json::Value| {
        set.map(&Event {
            source: "demo".into(),
            message_id: None,
            payload: std::sync::Arc::new(payload),
        })
    };
    let good = serde_json::json!({"id": "e1", "status": "final", "date": "2024-05-14", "kg": 8.6});
    let mapped = map(good.clone()).expect("a valid event maps");
    assert_eq!(mapped.fhir.len(), 2);
    let refused = |change: serde_json::Value, needle: &str| {
        let mut payload = good.clone();
        if let (Some(p), Some(c)) = (payload.as_object_mut(), change.as_object()) {
            for (k, v) in c {
                p.insert(k.clone(), v.clone());
            }
        }
        let err = map(payload).expect_err(needle);
        let text = err.to_string();
        assert!(text.contains(needle), "`{text}` lacks `{needle}`");
        assert!(!text.contains("heavy"), "the value is quoted: {text}");
    };
    // A primitive's format, inside an object whose other parts are literal.
    refused(
        serde_json::json!({"kg": "heavy"}),
        "invalid Observation at `Observation.value[x].value`: expected a decimal (a JSON number), found a string",
    );
    // A code on a required binding.
    refused(
        serde_json::json!({"status": "heavy"}),
        "invalid Observation at `Observation.status`: found a code not in the required value set",
    );
    // A required element the expression leaves out.
    refused(
        serde_json::json!({"status": null}),
        "invalid Observation at `Observation.status`: missing required element",
    );
    // One type per choice, when an expression adds the second.
    refused(
        serde_json::json!({"note": "heavy"}),
        "invalid Observation at `Observation.value[x]`: a choice element takes one type",
    );
    // A date that is no calendar date.
    refused(
        serde_json::json!({"date": "2024-02-30"}),
        "invalid Observation at `Observation.effective[x]`",
    );
    // A urn:uuid reference to no entry of the bundle, and a reference to a
    // resource type the element does not allow.
    refused(
        serde_json::json!({"encounter": "urn:uuid:0b3a8f6e-0000-5000-8000-000000000000"}),
        "invalid Observation at `Observation.encounter`: a urn:uuid reference to no entry of the bundle",
    );
    refused(
        serde_json::json!({"encounter": "Patient/p1"}),
        "invalid Observation at `Observation.encounter`: found a reference to a Patient, expected Encounter",
    );
}
