//! A binding named like one of Kiungo's functions shadows the function
//! for what reads it after it, as it did before bindings were shared
//! between rules and worked out at load: an event gives the same result
//! whichever of those paths its values take.

use std::path::Path;
use std::sync::Arc;

use kiungo_mappings::{Event, LoadOptions, MapError, MappingSet};
use serde_json::json;

/// A mapping-level binding `lookup` (from the event) before a binding
/// that calls `lookup(places, ...)`: that call is of the binding.
const CONSTANT: &str = r#"id: shadow-constant
version: 1
description: a mapping binding named like a function
source: constant
event_id: event.id
tables:
  places: { rows: [ { code: a, org: OrgUnitAAA1 } ], value: org }
let:
  lookup: event.text
  org: lookup(places, 'a', 'none')
fhir:
  - name: place
    resource:
      resourceType: Location
      name: =org
tests:
  - name: the binding is called
    event: { id: e0, text: t }
    expect_error: "not callable"
"#;

/// Two rules with the same list and bindings calling `lookup`, and
/// between them a rule binding `lookup` per item: the later rule's call
/// is of that binding.
const SHARED: &str = r#"id: shadow-shared
version: 1
description: a rule binding named like a function
source: shared
event_id: event.id
tables:
  places: { rows: [ { code: a, org: OrgUnitAAA1 } ], value: org }
fhir:
  - name: first
    for_each: event.items
    let:
      org: lookup(places, item.code, 'none')
    resource:
      resourceType: Location
      name: =org
  - name: binds
    for_each: event.items
    let:
      lookup: item.code
    resource:
      resourceType: Location
      name: =lookup
  - name: second
    for_each: event.items
    let:
      org: lookup(places, item.code, 'none')
    resource:
      resourceType: Location
      name: =org
tests:
  - name: the binding is called
    event: { id: e0, items: [ { code: a } ] }
    expect_error: "not callable"
"#;

/// A binding `date` of a field the event may lack (its value is then
/// undefined) before a binding that calls `date(...)`.
const UNDEFINED: &str = r#"id: shadow-undefined
version: 1
description: a binding named like a function, of a missing field
source: undefined
event_id: event.id
let:
  date: event.maybe
  day: date(event.day)
fhir:
  - name: day
    resource:
      resourceType: Location
      name: =day
tests:
  - name: the binding is called
    event: { id: e0, day: "2024-01-02" }
    expect_error: "not callable"
"#;

fn set() -> (tempfile::TempDir, MappingSet) {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in [
        ("constant.yaml", CONSTANT),
        ("shared.yaml", SHARED),
        ("undefined.yaml", UNDEFINED),
    ] {
        std::fs::write(Path::new(dir.path()).join(name), text).expect("write");
    }
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    (dir, set)
}

fn event(source: &str, payload: serde_json::Value) -> Event {
    Event {
        source: source.into(),
        message_id: Some("m".into()),
        payload: Arc::new(payload),
    }
}

/// Maps `payload` from `source` and asserts that it fails "not callable"
/// at `place` (the field that called the binding).
fn fails_not_callable_at(source: &str, payload: serde_json::Value, place: &str) {
    let (_dir, set) = set();
    let e: MapError = set
        .map(&event(source, payload))
        .expect_err("a binding is not callable");
    let text = format!("{e}");
    assert!(
        text.contains(place) && text.contains("not callable"),
        "{text}"
    );
}

/// `org` calls the binding `lookup` (text): the event fails, it is not
/// made the load-time constant `OrgUnitAAA1`.
#[test]
fn a_mapping_binding_named_lookup_is_what_a_later_binding_calls() {
    fails_not_callable_at(
        "constant",
        json!({"id": "e1", "text": "from the event"}),
        "let.org",
    );
}

/// The rule `second` calls the binding `binds` left (text) and fails; it
/// does not take the values `first` worked out.
#[test]
fn a_rule_binding_named_lookup_is_what_a_later_rule_calls() {
    fails_not_callable_at(
        "shared",
        json!({"id": "e1", "items": [{"code": "a"}]}),
        "fhir[2]",
    );
}

/// `day` calls the binding `date`, undefined when the event lacks
/// `maybe`: the event fails, as the VM says, rather than `date` being
/// called as the function.
#[test]
fn an_undefined_binding_named_date_is_what_a_later_binding_calls() {
    fails_not_callable_at(
        "undefined",
        json!({"id": "e1", "day": "2024-01-02"}),
        "let.day",
    );
}
