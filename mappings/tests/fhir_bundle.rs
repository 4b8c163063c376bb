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
