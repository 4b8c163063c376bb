//! Mapping events: every failure is a typed error naming the mapping, the
//! field and the event id, never a panic, and never a personal value.

use std::path::Path;

use kiungo_mappings::{Event, LoadOptions, MapError, MappingSet};
use proptest::prelude::*;
use serde_json::{Value, json};

const DEMO: &str = r#"id: demo
version: 1
description: demo mapping
source: demo
match: event.kind == 'visit'
event_id: event.id
let:
  day: event.date | date
fhir:
  - name: patient
    resource:
      resourceType: Patient
      name: [ { text: =event.name } ]
      gender: =event.sex
dhis2:
  - name: weight
    data_element: =event.de
    org_unit: DiszpKrYNg8
    period: { type: Weekly, date: day }
    value: =event.weight
    aggregation: sum
tests:
  - name: one
    event: { kind: visit, id: e1, date: "2024-03-15", sex: female, name: Test, de: fbfJHSPpUQD, weight: 3 }
    expect_error: "never matches"
"#;

fn demo_set(extra: &[(&str, &str)]) -> (tempfile::TempDir, MappingSet) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("demo.yaml"), DEMO).expect("write");
    for (name, text) in extra {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    (dir, set)
}

fn event(payload: Value) -> Event {
    Event {
        source: "demo".into(),
        message_id: Some("msg-7".into()),
        payload: std::sync::Arc::new(payload),
    }
}

fn good() -> Value {
    json!({"kind": "visit", "id": "e1", "date": "2024-03-15", "sex": "female", "name": "Marker Kamara", "de": "fbfJHSPpUQD", "weight": 3})
}

#[test]
fn a_valid_event_maps() {
    let (_d, set) = demo_set(&[]);
    let out = set.map(&event(good())).expect("maps");
    assert_eq!(out.event_id, "e1");
    assert_eq!(out.dhis2[0].period, "2024W11");
    assert_eq!(out.dhis2[0].value, json!(3));
    assert_eq!(out.fhir[0].resource["gender"], json!("female"));
}

#[test]
fn no_mapping_for_the_source_or_the_kind() {
    let (_d, set) = demo_set(&[]);
    let mut e = event(good());
    e.source = "odk".into();
    let err = set.map(&e).expect_err("no mapping");
    assert_eq!(
        err.to_string(),
        "no mapping matches event msg-7 from source `odk`"
    );
    let mut p = good();
    p["kind"] = json!("referral");
    let err = set.map(&event(p)).expect_err("no mapping");
    assert!(matches!(err, MapError::NoMapping { .. }), "{err}");
    assert_eq!(err.reason(), "no_mapping");
    assert!(!err.is_retryable());
}

#[test]
fn several_matching_mappings_are_ambiguous() {
    let twin = DEMO.replace("id: demo\n", "id: demo-twin\n");
    let (_d, set) = demo_set(&[("twin.yaml", &twin)]);
    let err = set.map(&event(good())).expect_err("ambiguous");
    assert_eq!(
        err.to_string(),
        "event msg-7 from source `demo` matches several mappings: demo, demo-twin"
    );
}

#[test]
fn no_event_id_anywhere() {
    let (_d, set) = demo_set(&[]);
    let mut p = good();
    p["id"] = Value::Null;
    let mut e = event(p.clone());
    // The message id stands in for a missing payload id...
    assert_eq!(set.map(&e).expect("maps").event_id, "msg-7");
    // ...and without either the event is refused.
    e.message_id = None;
    let err = set.map(&e).expect_err("no id");
    assert!(matches!(err, MapError::NoEventId { .. }), "{err}");
}

#[test]
fn a_missing_field_names_mapping_field_line_and_event() {
    let (_d, set) = demo_set(&[]);
    let mut p = good();
    p.as_object_mut().expect("object").remove("date");
    let err = set.map(&event(p)).expect_err("no date");
    match &err {
        MapError::Field {
            mapping,
            field,
            line,
            event,
            ..
        } => {
            // The event id does not need the `let` bindings, so it is known when they fail.
            assert_eq!(
                (mapping.as_str(), field.as_str(), *line, event.as_str()),
                ("demo", "let.day", 8, "e1")
            );
        }
        other => panic!("wrong error {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("mapping `demo` field `let.day` (line 8), event e1: "),
        "{err}"
    );
    // The missing key is named (the mapping's text, not the event's).
    assert!(
        err.to_string()
            .contains("undefined value: `event.date` (`event` has no key `date`)"),
        "{err}"
    );
}

#[test]
fn an_invalid_fhir_value_from_the_event_is_refused_without_leaking_it() {
    let (_d, set) = demo_set(&[]);
    let mut p = good();
    p["sex"] = json!("Marker Kamara");
    let err = set.map(&event(p)).expect_err("invalid gender");
    assert!(matches!(err, MapError::InvalidFhir { .. }), "{err}");
    // Located at the rule (file and line), the FHIR path, what was found
    // and what was expected; never the value.
    let text = err.to_string();
    assert!(text.contains("resource `patient` ("), "{text}");
    assert!(text.contains("demo.yaml, line 10), event e1: invalid Patient at `Patient.gender`: found a code not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender (female, male, other, unknown)"), "{text}");
    assert!(!text.contains("Marker"), "{text}");
    assert_eq!(err.reason(), "invalid_fhir");
}

#[test]
fn dhis2_values_and_ids_are_checked() {
    let (_d, set) = demo_set(&[]);
    let mut p = good();
    p["weight"] = json!("3 kg");
    let err = set.map(&event(p)).expect_err("text value");
    assert!(
        err.to_string()
            .contains("field `dhis2[0].value` (line 20), event e1: `sum` needs a number"),
        "{err}"
    );
    let mut p = good();
    p["de"] = json!("not-a-uid");
    let err = set.map(&event(p)).expect_err("bad uid");
    assert!(
        err.to_string().contains("field `dhis2[0].data_element`"),
        "{err}"
    );
    assert!(err.to_string().contains("not a DHIS2 UID"), "{err}");
}

#[test]
fn errors_never_carry_personal_values() {
    let (_d, set) = demo_set(&[]);
    // Every way to break the event while it carries a marker name.
    let breakers = [
        ("sex", json!("MARKER-NAME-4711")),
        ("date", json!("MARKER-NAME-4711")),
        ("weight", json!("MARKER-NAME-4711")),
        ("name", json!({"MARKER-NAME-4711": 1})),
        ("date", json!(["MARKER-NAME-4711"])),
    ];
    for (key, bad) in breakers {
        let mut p = good();
        p[key] = bad;
        if let Err(e) = set.map(&event(p)) {
            assert!(!e.to_string().contains("MARKER"), "{e}");
        }
    }
}

const LOOKUP: &str = r#"id: lookup-demo
version: 1
description: lookups
source: clinic
event_id: event.id
tables:
  facilities:
    key: code
    value: uid
    rows:
      - {code: kenema, uid: DiszpKrYNg8}
dhis2:
  - name: visits
    data_element: =event.de
    org_unit: =lookup(facilities, event.facility)
    period: { type: Monthly, date: event.date }
    aggregation: count
tests:
  - name: miss
    event: { id: e1, facility: bo, date: "2024-03-15", de: fbfJHSPpUQD }
    expect_error: "lookup: the key is not in table `facilities`"
"#;

/// A lookup miss and an id taken from the event name the field and the
/// table, never the value; the value travels apart, for operators.
#[test]
fn values_travel_apart_from_the_message() {
    let (_d, set) = demo_set(&[("lookup.yaml", LOOKUP)]);
    let marker = "Zawadi Kiungomarker +254700999111";
    let clinic = |payload: Value| Event {
        source: "clinic".into(),
        message_id: Some("msg-8".into()),
        payload: std::sync::Arc::new(payload),
    };
    let miss = set
        .map(&clinic(
            json!({"id": "e2", "facility": marker, "date": "2024-03-15", "de": "fbfJHSPpUQD"}),
        ))
        .expect_err("lookup miss");
    assert_eq!(
        miss.to_string(),
        "mapping `lookup-demo` field `dhis2[0].org_unit` (line 15), event e2: \
         invalid operation: lookup: the key is not in table `facilities` (1 rows)"
    );
    assert_eq!(miss.values(), [format!("lookup key `{marker}`")]);
    assert!(
        miss.with_values().contains(marker),
        "{}",
        miss.with_values()
    );

    let bad_id = set
        .map(&clinic(
            json!({"id": "e3", "facility": "kenema", "date": "2024-03-15", "de": marker}),
        ))
        .expect_err("not a uid");
    assert!(!bad_id.to_string().contains("Kiungomarker"), "{bad_id}");
    assert!(bad_id.to_string().contains("not a DHIS2 UID"), "{bad_id}");
    assert_eq!(bad_id.values(), [format!("id `{marker}`")]);

    let (_d, demo) = demo_set(&[]);
    let mut p = good();
    p["sex"] = json!(marker);
    let fhir = demo.map(&event(p)).expect_err("invalid gender");
    assert!(!fhir.to_string().contains("Kiungomarker"), "{fhir}");
}

fn packs_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/packs/cht-anc"))
}

fn cht_fixture() -> Value {
    let text = std::fs::read_to_string(packs_dir().join("fixtures/anc-visit-1-facility.json"))
        .expect("fixture");
    serde_json::from_str(&text).expect("json")
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[a-z0-9:_ -]{0,12}".prop_map(Value::from),
        Just(json!("pregnancy_home_visit")),
        Just(json!("data_record")),
        Just(json!("2024-02-29")),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    "[a-z_]{1,8}".boxed(),
                    Just("form".to_owned()).boxed(),
                    Just("type".to_owned()).boxed(),
                    Just("fields".to_owned()).boxed(),
                    Just("_id".to_owned()).boxed(),
                    Just("reported_date".to_owned()).boxed(),
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Replaces the value at a pseudo-random path of `v` with `with`.
fn mutate(v: &mut Value, path: &[usize], with: Value) {
    let Some((&first, rest)) = path.split_first() else {
        *v = with;
        return;
    };
    match v {
        Value::Object(map) if !map.is_empty() => {
            let key = map
                .keys()
                .nth(first % map.len())
                .cloned()
                .unwrap_or_default();
            if let Some(child) = map.get_mut(&key) {
                if rest.is_empty() || !(child.is_object() || child.is_array()) {
                    *child = with;
                } else {
                    mutate(child, rest, with);
                }
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let n = items.len();
            mutate(&mut items[first % n], rest, with);
        }
        _ => *v = with,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Arbitrary JSON never panics the engine.
    #[test]
    fn arbitrary_events_never_panic(payload in arb_json(), with_id in any::<bool>()) {
        let set = MappingSet::load_dir(packs_dir(), LoadOptions::default()).expect("pack loads");
        let e = Event { source: "cht".into(), message_id: with_id.then(|| "m".to_owned()), payload: std::sync::Arc::new(payload) };
        let _ = set.map(&e);
    }

    /// A real event with one value anywhere replaced by anything either
    /// maps or fails with a typed error naming the mapping.
    #[test]
    fn mutated_real_events_map_or_fail_cleanly(path in prop::collection::vec(any::<usize>(), 1..6), with in arb_json()) {
        let set = MappingSet::load_dir(packs_dir(), LoadOptions::default()).expect("pack loads");
        let mut payload = cht_fixture();
        mutate(&mut payload, &path, with);
        match set.map(&Event { source: "cht".into(), message_id: None, payload: std::sync::Arc::new(payload) }) {
            Ok(out) => prop_assert_eq!(out.mapping, "cht-anc-visit"),
            Err(MapError::NoMapping { .. }) => {}
            Err(e) => prop_assert!(e.to_string().contains("cht-anc-visit"), "{}", e),
        }
    }
}

/// The service shares one mapping set across worker threads.
#[test]
fn mapping_sets_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<MappingSet>();
    let (_d, set) = demo_set(&[]);
    let set = std::sync::Arc::new(set);
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let set = set.clone();
            std::thread::spawn(move || set.map(&event(good())).map(|m| m.event_id))
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().expect("thread"), Ok("e1".to_owned()));
    }
}
