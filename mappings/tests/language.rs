//! The language additions of issue 15: `for_each`, `fail`/`assert`, one
//! entry per resource id, URL-encoded `ifNoneExist`, shared files, and a
//! `validate` that checks each test case can run. Every error is asserted
//! with its located message.

use std::path::{Path, PathBuf};

use kiungo_mappings::{Event, LoadError, LoadOptions, MapError, MappingSet};
use serde_json::{Value, json};

/// A mapping over an OpenSRP-shaped event with an `obs` array; `RULES`
/// is replaced by each test's rules.
const BASE: &str = r#"id: demo
version: 1
description: demo mapping
source: demo
event_id: event.id
let:
  day: event.date | date
RULES
tests:
  - name: placeholder
    event: { id: e0, date: "2024-03-15", obs: [] }
    expect_error: "x"
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

fn load(rules: &str) -> (tempfile::TempDir, Result<MappingSet, Vec<LoadError>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.yaml", &BASE.replace("RULES", rules));
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).map_err(|e| e.0);
    (dir, set)
}

fn set(rules: &str) -> (tempfile::TempDir, MappingSet) {
    let (dir, set) = load(rules);
    (dir, set.expect("loads"))
}

fn event(payload: Value) -> Event {
    Event {
        source: "demo".into(),
        message_id: Some("m-1".into()),
        payload: std::sync::Arc::new(payload),
    }
}

fn vaccines() -> Value {
    json!({
        "id": "e1", "date": "2024-03-15",
        "obs": [
            {"fieldCode": "bcg", "values": ["2024-03-15"]},
            {"fieldCode": "weight", "values": ["8.6"]},
            {"fieldCode": "opv_0", "values": ["2024-03-14"]}
        ]
    })
}

const IMMUNIZATIONS: &str = r#"fhir:
  - name: imm
    for_each: event.obs
    when: item.fieldCode in ['bcg', 'opv_0']
    id: "'imm/' ~ event.id ~ '/' ~ item.fieldCode"
    resource:
      resourceType: Immunization
      status: completed
      vaccineCode: { text: =item.fieldCode }
      patient: { reference: Patient/p1 }
      occurrenceDateTime: =item['values'][0]
      note: [ { text: ="item " ~ index } ]
"#;

#[test]
fn for_each_makes_one_resource_per_item_with_item_index_and_when() {
    let (_d, set) = set(IMMUNIZATIONS);
    let out = set.map(&event(vaccines())).expect("maps");
    let imm: Vec<&Value> = out
        .fhir
        .iter()
        .filter(|e| e.resource["resourceType"] == "Immunization")
        .map(|e| &e.resource)
        .collect();
    assert_eq!(imm.len(), 2, "the weight is skipped by `when`");
    assert_eq!(imm[0]["vaccineCode"]["text"], "bcg");
    assert_eq!(imm[0]["note"][0]["text"], "item 0");
    assert_eq!(imm[1]["vaccineCode"]["text"], "opv_0");
    assert_eq!(imm[1]["note"][0]["text"], "item 2");
    assert_eq!(imm[1]["occurrenceDateTime"], "2024-03-14");
    // Ids come from the item, not its position: reordering keeps them.
    let mut reordered = vaccines();
    reordered["obs"].as_array_mut().expect("array").reverse();
    let again = set.map(&event(reordered)).expect("maps");
    let ids = |o: &kiungo_mappings::MappedEvent| {
        let mut v: Vec<String> = o.fhir.iter().map(|e| e.full_url.clone()).collect();
        v.sort();
        v
    };
    assert_eq!(ids(&out), ids(&again));
}

#[test]
fn for_each_without_id_derives_each_id_from_the_item() {
    let rules = r#"fhir:
  - name: obs
    for_each: event.obs
    resource:
      resourceType: Observation
      status: final
      code: { text: =item.fieldCode }
"#;
    let (_d, set) = set(rules);
    let out = set.map(&event(vaccines())).expect("maps");
    assert_eq!(out.fhir.len(), 3);
    let mut reordered = vaccines();
    reordered["obs"].as_array_mut().expect("array").swap(0, 2);
    let again = set.map(&event(reordered)).expect("maps");
    let find = |o: &kiungo_mappings::MappedEvent, code: &str| {
        o.fhir
            .iter()
            .find(|e| e.resource["code"]["text"] == code)
            .map(|e| e.full_url.clone())
    };
    assert_eq!(find(&out, "bcg"), find(&again, "bcg"));
    assert_ne!(find(&out, "bcg"), find(&out, "opv_0"));
}

#[test]
fn refs_of_a_for_each_rule_is_the_list_of_its_references() {
    let rules = r#"fhir:
  - name: obs
    for_each: event.obs
    resource:
      resourceType: Observation
      status: final
      code: { text: =item.fieldCode }
  - name: panel
    resource:
      resourceType: Observation
      status: final
      code: { text: panel }
      hasMember:
        - reference: =refs.obs[0]
        - reference: =refs.obs[2]
"#;
    let (_d, set) = set(rules);
    let out = set.map(&event(vaccines())).expect("maps");
    let panel = &out.fhir[3].resource;
    assert_eq!(
        panel["hasMember"][0]["reference"],
        format!(
            "Observation/{}",
            out.fhir[0].resource["id"].as_str().expect("id")
        )
    );
}

#[test]
fn for_each_over_something_else_than_a_list_is_a_located_error() {
    let rules = r#"fhir:
  - name: obs
    for_each: event.date
    resource:
      resourceType: Observation
      status: final
      code: { text: x }
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("not a list");
    assert!(
        err.to_string()
            .starts_with("mapping `demo` field `fhir[0].for_each` (line 10), event e1: "),
        "{err}"
    );
    assert!(err.to_string().contains("needs a list"), "{err}");
}

#[test]
fn item_is_not_in_scope_outside_for_each() {
    let rules = r#"fhir:
  - name: obs
    resource:
      resourceType: Observation
      status: final
      code: { text: =item.fieldCode }
"#;
    let (dir, set) = load(rules);
    let errs = set.expect_err("item undefined");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, dir.path().join("m.yaml"));
    assert_eq!(errs[0].line, Some(13));
    assert_eq!(errs[0].field, "fhir[0].resource.code.text");
    assert!(
        errs[0].message.contains("undefined name `item`"),
        "{errs:#?}"
    );
}

#[test]
fn dhis2_for_each_counts_each_item_under_its_key() {
    let rules = r#"dhis2:
  - name: doses
    for_each: event.obs
    key: item.fieldCode
    when: item.fieldCode != 'weight'
    data_element: =('s46m5MS0hxu' if item.fieldCode == 'bcg' else 'x3Do5e7g4Qo')
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: "item['values'][0]" }
    aggregation: count
"#;
    let (_d, set) = set(rules);
    let out = set.map(&event(vaccines())).expect("maps");
    let rules: Vec<&str> = out.dhis2.iter().map(|c| c.rule.as_str()).collect();
    assert_eq!(rules, ["doses[bcg]", "doses[opv_0]"]);
    assert_eq!(out.dhis2[1].data_element, "x3Do5e7g4Qo");
}

#[test]
fn dhis2_for_each_items_with_one_key_are_refused() {
    let rules = r#"dhis2:
  - name: doses
    for_each: event.obs
    key: "'same'"
    data_element: s46m5MS0hxu
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: day }
    value: 1
    aggregation: sum
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("one key");
    let text = err.to_string();
    assert!(
        text.starts_with("mapping `demo` field `dhis2[0]` (line 9), event e1: "),
        "{text}"
    );
    assert!(
        text.contains("`dhis2[0]` (`doses`, line 9, item 1) gives a contribution the same name as `dhis2[0]` (`doses`, line 9, item 0)"),
        "{text}"
    );
}

#[test]
fn two_rules_with_one_resource_id_are_refused_naming_both() {
    let rules = r#"fhir:
  - name: dose1
    id: "'imm/' ~ event.id"
    resource: { resourceType: Immunization, status: completed, vaccineCode: { text: a }, patient: { reference: Patient/p }, occurrenceDateTime: "2024-03-15" }
  - name: dose2
    id: "'imm/' ~ event.id"
    resource: { resourceType: Immunization, status: completed, vaccineCode: { text: b }, patient: { reference: Patient/p }, occurrenceDateTime: "2024-03-15" }
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("same id");
    let text = err.to_string();
    assert!(
        text.starts_with("mapping `demo` field `fhir[1].id` (line 13), event e1: "),
        "{text}"
    );
    assert!(
        text.contains("`fhir[1]` (`dose2`, line 12) produces the same Immunization as `fhir[0]` (`dose1`, line 9)"),
        "{text}"
    );
}

#[test]
fn two_items_with_one_resource_id_are_refused_naming_both() {
    let rules = r#"fhir:
  - name: imm
    for_each: event.obs
    id: "'imm/' ~ event.id"
    resource:
      resourceType: Observation
      status: final
      code: { text: =item.fieldCode }
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("same id");
    assert!(
        err.to_string()
            .contains("`fhir[0]` (`imm`, line 9, item 1) produces the same Observation as `fhir[0]` (`imm`, line 9, item 0)"),
        "{err}"
    );
}

#[test]
fn two_rules_counting_one_event_in_one_total_are_refused() {
    let rules = r#"dhis2:
  - name: bcg_a
    data_element: s46m5MS0hxu
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: day }
    aggregation: count
  - name: bcg_b
    data_element: s46m5MS0hxu
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: day }
    aggregation: count
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("double count");
    let text = err.to_string();
    assert!(
        text.starts_with("mapping `demo` field `dhis2[1]` (line 14), event e1: "),
        "{text}"
    );
    assert!(
        text.contains(
            "`dhis2[1]` (`bcg_b`, line 14) and `dhis2[0]` (`bcg_a`, line 9) count this event twice"
        ),
        "{text}"
    );
}

#[test]
fn fail_refuses_the_event_with_the_authors_reason() {
    // The binding joins the base mapping's `let` block (line 7).
    let rules = r#"fhir:
  - name: obs
    resource: { resourceType: Observation, status: final, code: { text: =vaccine } }
"#;
    let text = BASE.replace("RULES", rules).replace(
        "  day: event.date | date\n",
        "  vaccine: \"event.obs[0].fieldCode if event.obs else fail('an immunisation event without obs')\"\n  day: event.date | date\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.yaml", &text);
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let err = set
        .map(&event(json!({"id": "e9", "date": "2024-03-15", "obs": []})))
        .expect_err("refused");
    assert!(matches!(err, MapError::Refused { .. }), "{err:?}");
    assert_eq!(err.reason(), "refused");
    assert_eq!(
        err.to_string(),
        "mapping `demo` field `let.vaccine` (line 7), event e9: refused: an immunisation event without obs"
    );
}

#[test]
fn fail_with_a_reason_built_from_the_event_is_a_load_error() {
    let rules = r#"fhir:
  - name: obs
    resource: { resourceType: Observation, status: final, code: { text: "=event.x or fail('no x for ' ~ event.id)" } }
"#;
    let (dir, set) = load(rules);
    let errs = set.expect_err("not literal");
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, dir.path().join("m.yaml"));
    assert_eq!(errs[0].line, Some(10));
    assert_eq!(errs[0].field, "fhir[0].resource.code.text");
    assert!(
        errs[0].message.contains("`fail` takes one literal reason"),
        "{errs:#?}"
    );
}

#[test]
fn assert_refuses_the_event_with_its_message() {
    let rules = r#"assert:
  - that: event.obs | length <= 2
    message: more than two observations in one visit
fhir:
  - name: obs
    resource: { resourceType: Observation, status: final, code: { text: x } }
"#;
    let (_d, set) = set(rules);
    let err = set.map(&event(vaccines())).expect_err("three obs");
    assert_eq!(
        err.to_string(),
        "mapping `demo` field `assert[0]` (line 9), event e1: refused: more than two observations in one visit"
    );
    assert_eq!(err.reason(), "refused");
}

#[test]
fn if_none_exist_values_are_url_encoded() {
    let rules = r#"fhir:
  - name: whole
    method: create
    if_none_exist: "'identifier=https://x.org/id|' ~ event.code"
    resource: { resourceType: Patient, gender: female }
  - name: params
    method: create
    if_none_exist:
      identifier: "'https://x.org/id|' ~ event.code"
      name: event.name
    resource: { resourceType: Patient, gender: male }
"#;
    let (_d, set) = set(rules);
    let out = set
        .map(&event(
            json!({"id": "e1", "date": "2024-03-15", "code": "NGE-CHW07+0412 #2", "name": "a&b=c"}),
        ))
        .expect("maps");
    assert_eq!(
        out.fhir[0].request.if_none_exist.as_deref(),
        Some("identifier=https://x.org/id|NGE-CHW07%2B0412%20%232")
    );
    assert_eq!(
        out.fhir[1].request.if_none_exist.as_deref(),
        Some("identifier=https://x.org/id|NGE-CHW07%2B0412%20%232&name=a%26b%3Dc")
    );
}

#[test]
fn shared_rules_lets_and_tables_are_included() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(
        dir.path(),
        "common.shared.yaml",
        r#"description: the child, shared by every mapping of the pack
tables:
  sexes: { rows: [ { code: F, fhir: female }, { code: M, fhir: male } ], value: fhir }
let:
  child_id: event.child
fhir:
  - name: patient
    id: "'child/' ~ child_id"
    resource:
      resourceType: Patient
      gender: =lookup(sexes, event.sex)
"#,
    );
    let mapping = BASE.replace(
        "RULES",
        r#"include: [common.shared.yaml]
fhir:
  - name: weight
    resource:
      resourceType: Observation
      status: final
      code: { text: weight }
      subject: { reference: =refs.patient }
"#,
    );
    write(dir.path(), "a.yaml", &mapping);
    write(
        dir.path(),
        "b.yaml",
        &mapping
            .replace("id: demo", "id: demo-b")
            .replace("source: demo", "source: other"),
    );
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    assert_eq!(set.mappings().len(), 2, "the shared file is no mapping");
    let out = set
        .map(&event(
            json!({"id": "e1", "date": "2024-03-15", "child": "c7", "sex": "F"}),
        ))
        .expect("maps");
    assert_eq!(out.fhir[0].resource["gender"], "female");
    assert_eq!(
        out.fhir[1].resource["subject"]["reference"],
        format!(
            "Patient/{}",
            out.fhir[0].resource["id"].as_str().expect("id")
        )
    );
}

#[test]
fn errors_in_a_shared_file_are_located_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = write(
        dir.path(),
        "common.shared.yaml",
        r#"let:
  child_id: event.child
fhir:
  - name: patient
    resource:
      resourceType: Patient
      gender: =lookup(sexs, event.sex)
"#,
    );
    write(
        dir.path(),
        "a.yaml",
        &BASE.replace("RULES", "include: [common.shared.yaml]\n"),
    );
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("undefined table")
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, shared);
    assert_eq!(errs[0].line, Some(7));
    assert_eq!(errs[0].field, "fhir[0].resource.gender");
    assert!(
        errs[0].message.contains("undefined name `sexs`"),
        "{errs:#?}"
    );

    // A misspelt FHIR element in the shared file: in it, at its own line,
    // the field without the shared file's prefix.
    std::fs::write(
        &shared,
        "let:\n  child_id: event.child\nfhir:\n  - name: patient\n    resource:\n      resourceType: Patient\n      gender: unknown\n      birthdate: =event.date\n",
    )
    .expect("write");
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("misspelt element")
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        (&errs[0].file, errs[0].line, errs[0].field.as_str()),
        (&shared, Some(8), "fhir[0].resource.birthdate"),
        "{errs:#?}"
    );
    assert!(
        errs[0].message.contains("(did you mean `birthDate`?)"),
        "{errs:#?}"
    );

    // An unknown key in the shared file, and a shared file that is not
    // named as one.
    std::fs::write(&shared, "lets:\n  x: event.a\n").expect("write");
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("unknown key")
        .0;
    assert_eq!(errs[0].file, shared, "{errs:#?}");
    assert_eq!(errs[0].line, Some(1), "{errs:#?}");
    assert!(errs[0].message.contains("lets"), "{errs:#?}");
    write(
        dir.path(),
        "a.yaml",
        &BASE.replace("RULES", "include: [common.yaml]\n"),
    );
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("bad name")
        .0;
    assert_eq!(errs[0].field, "include[0]", "{errs:#?}");
    assert_eq!(errs[0].line, Some(8), "{errs:#?}");
}

#[test]
fn check_tests_finds_missing_expected_files_and_events_that_do_not_map() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = r#"id: demo
version: 1
description: demo mapping
source: demo
event_id: event.id
fhir:
  - name: patient
    resource: { resourceType: Patient, gender: =event.sex }
tests:
  - name: the expected file is missing
    event: { id: e1, sex: female }
    expect_file: fixtures/nowhere.expected.json
  - name: the event does not map
    event: { id: e2 }
    expect: { event_id: e2 }
  - name: an error is expected but the event maps
    event: { id: e3, sex: male }
    expect_error: "anything"
"#;
    let file = write(dir.path(), "m.yaml", text);
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let problems = set.check_tests();
    let brief: Vec<(Option<u64>, &str)> = problems
        .iter()
        .map(|e| (e.line, e.field.as_str()))
        .collect();
    assert_eq!(
        brief,
        [
            (Some(10), "tests[0].expect_file"),
            (Some(13), "tests[1].event"),
            (Some(16), "tests[2].expect_error")
        ],
        "{problems:#?}"
    );
    assert!(problems.iter().all(|e| e.file == file));
    assert!(problems[0].message.contains("cannot read"), "{problems:#?}");
    assert!(
        problems[1].message.contains("does not map"),
        "{problems:#?}"
    );
}

#[test]
fn the_opensrp_pack_passes_its_tests_and_names_one_child_once() {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("packs/opensrp-core");
    let set = MappingSet::load_dir(&pack, LoadOptions::default()).expect("loads");
    assert_eq!(set.mappings().len(), 3, "the shared files are no mappings");
    assert!(set.check_tests().is_empty(), "{:#?}", set.check_tests());
    for report in set.run_tests() {
        assert!(report.failures.is_empty(), "{:#?}", report.failures);
    }
    // The child is one Patient (one FHIR id) across the three event types.
    let child = |name: &str| {
        let text = std::fs::read_to_string(pack.join("fixtures").join(name)).expect("fixture");
        let out = set
            .map(&Event {
                source: "opensrp".into(),
                message_id: None,
                payload: std::sync::Arc::new(serde_json::from_str(&text).expect("json")),
            })
            .expect("maps");
        out.fhir
            .iter()
            .find(|e| e.resource["resourceType"] == "Patient")
            .map(|e| e.full_url.clone())
            .expect("a Patient")
    };
    let ids = [
        child("vaccination-bcg-opv0.json"),
        child("growth-weight.json"),
        child("birth-registration.json"),
    ];
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
}
