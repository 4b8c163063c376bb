//! The event fields a mapping reads are checked against its test events
//! (`MappingSet::check_event_fields`, for `kiungo mappings validate`): a
//! near miss of a field the test events have is an error naming its place
//! and the field meant, a field no test event has is a warning, and
//! values of the test events are never shown.

use std::path::{Path, PathBuf};

use kiungo_mappings::{FieldReport, LoadOptions, MappingSet};

/// A CHT-like visit mapping; `READ` is replaced by what a test reads.
const MAPPING: &str = r#"id: anc
version: 1
description: d
source: cht
match: event.form == 'visit'
event_id: event._id
fhir:
  - name: patient
    when: READ
    resource:
      resourceType: Patient
      gender: =event.fields.sex
tests:
  - name: a visit
    event: fixtures/visit.json
    expect: { event_id: v1 }
  - name: another form is not taken
    event: fixtures/other.json
    expect_error: no mapping matches
"#;

/// Visit fields whose values must never be shown.
const VISIT: &str = r#"{ "_id": "v1", "form": "visit",
  "fields": { "anc_visit": "Wanjiru-secret", "sex": "other",
              "obs": [ { "code": "w" }, { "code": "h", "value": "Njeri-secret" } ] } }"#;

/// Another form, which has the misspelt key: it must not count.
const OTHER: &str =
    r#"{ "_id": "o1", "form": "other", "fields": { "anc_visitz": 1, "nickname": "x" } }"#;

/// Writes a pack whose mapping reads `read` in its `when`; returns the
/// directory and the mapping file.
fn pack(read: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("anc.yaml");
    std::fs::write(&file, MAPPING.replace("READ", read)).expect("write mapping");
    std::fs::create_dir(dir.path().join("fixtures")).expect("mkdir");
    std::fs::write(dir.path().join("fixtures/visit.json"), VISIT).expect("write");
    std::fs::write(dir.path().join("fixtures/other.json"), OTHER).expect("write");
    (dir, file)
}

fn check(dir: &Path) -> FieldReport {
    MappingSet::load_dir(dir, LoadOptions::default())
        .expect("the pack loads")
        .check_event_fields()
}

#[test]
fn a_misspelt_event_field_is_an_error_at_its_place_with_the_field_meant() {
    let (dir, file) = pack("event.fields.anc_visitz is defined");
    let report = check(dir.path());
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    assert!(report.unchecked.is_empty(), "{:#?}", report.unchecked);
    assert_eq!(report.errors.len(), 1, "{:#?}", report.errors);
    let e = &report.errors[0];
    assert_eq!(e.file, file);
    assert_eq!((e.line, e.column), (Some(9), Some(11)), "{e}");
    assert_eq!(e.field, "fhir[0].when");
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:9:11: fhir[0].when: ", file.display())),
        "{shown}"
    );
    assert!(
        shown.contains(
            "`event.fields.anc_visitz`: no test event has `anc_visitz` under `event.fields`"
        ),
        "{shown}"
    );
    assert!(
        shown.contains("did you mean `event.fields.anc_visit`?"),
        "{shown}"
    );
    assert!(!shown.contains("secret"), "a value is shown: {shown}");
}

#[test]
fn a_field_differing_only_by_case_or_underscore_is_a_near_miss() {
    let (dir, _) = pack("event.fields.ancVisit is defined");
    let report = check(dir.path());
    assert_eq!(report.errors.len(), 1, "{:#?}", report);
    assert!(
        report.errors[0]
            .message
            .contains("did you mean `event.fields.anc_visit`?"),
        "{}",
        report.errors[0]
    );
}

#[test]
fn an_optional_field_no_test_event_has_is_a_warning() {
    let (dir, file) = pack("event.fields.nickname is defined");
    let report = check(dir.path());
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert_eq!(report.warnings.len(), 1, "{:#?}", report.warnings);
    let w = report.warnings[0].to_string();
    assert!(
        w.starts_with(&format!("{}:9:11: fhir[0].when: ", file.display())),
        "{w}"
    );
    assert!(
        w.contains("`event.fields.nickname`: no test event has `nickname` under `event.fields`"),
        "{w}"
    );
    assert!(!w.contains("did you mean"), "{w}");
}

#[test]
fn fields_the_test_events_have_pass_through_arrays_too() {
    let (dir, _) = pack("event.fields.obs.value is defined and event.fields.anc_visit is defined");
    let report = check(dir.path());
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
}

#[test]
fn a_misspelt_field_inside_an_array_item_is_caught() {
    let (dir, _) = pack("event.fields.obs.valeu is defined");
    let report = check(dir.path());
    assert_eq!(report.errors.len(), 1, "{:#?}", report);
    let e = report.errors[0].to_string();
    assert!(
        e.contains("no test event has `valeu` under `event.fields.obs`; did you mean `event.fields.obs.value`?"),
        "{e}"
    );
    assert!(!e.contains("secret"), "a value is shown: {e}");
}

#[test]
fn template_expressions_are_checked_at_their_own_node() {
    let (dir, file) = pack("true");
    let text = std::fs::read_to_string(&file)
        .expect("read")
        .replace("=event.fields.sex", "=event.fields.sexe");
    std::fs::write(&file, text).expect("write");
    let report = check(dir.path());
    assert_eq!(report.errors.len(), 1, "{:#?}", report);
    let e = &report.errors[0];
    assert_eq!((e.line, e.column), (Some(12), Some(15)), "{e}");
    assert_eq!(e.field, "fhir[0].resource.gender");
    assert!(
        e.message.contains("did you mean `event.fields.sex`?"),
        "{e}"
    );
}

#[test]
fn item_paths_of_a_for_each_rule_are_not_read_from_the_event() {
    let (dir, file) = pack("item.code is defined");
    let text = std::fs::read_to_string(&file).expect("read").replace(
        "    when: item.code",
        "    for_each: event.fields.obs\n    id: \"'p/' ~ item.code\"\n    when: item.code",
    );
    std::fs::write(&file, text).expect("write");
    let report = check(dir.path());
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
}

#[test]
fn a_shared_file_read_is_reported_in_the_shared_file() {
    let (dir, file) = pack("true");
    let shared = dir.path().join("common.shared.yaml");
    std::fs::write(
        &shared,
        "description: shared\nlet:\n  visit: event.fields.anc_vist\n",
    )
    .expect("write shared");
    let text = std::fs::read_to_string(&file).expect("read").replace(
        "event_id: event._id\n",
        "event_id: event._id\ninclude: [common.shared.yaml]\n",
    );
    std::fs::write(&file, text).expect("write");
    let report = check(dir.path());
    assert_eq!(report.errors.len(), 1, "{:#?}", report);
    let e = &report.errors[0];
    assert_eq!(e.file, shared);
    assert_eq!((e.line, e.column), (Some(3), Some(10)), "{e}");
    assert_eq!(e.field, "let.visit");
    assert!(
        e.message.contains("did you mean `event.fields.anc_visit`?"),
        "{e}"
    );
}

#[test]
fn a_mapping_that_takes_none_of_its_test_events_is_noted_unchecked() {
    let (dir, file) = pack("event.fields.anc_visitz is defined");
    std::fs::remove_file(dir.path().join("fixtures/visit.json")).expect("rm");
    std::fs::write(dir.path().join("fixtures/visit.json"), OTHER).expect("write");
    let text = std::fs::read_to_string(&file).expect("read").replace(
        "expect: { event_id: v1 }",
        "expect_error: no mapping matches",
    );
    std::fs::write(&file, text).expect("write");
    let report = check(dir.path());
    assert!(report.errors.is_empty(), "{:#?}", report.errors);
    assert!(report.warnings.is_empty(), "{:#?}", report.warnings);
    assert_eq!(report.unchecked.len(), 1, "{:#?}", report.unchecked);
    let n = report.unchecked[0].to_string();
    assert!(n.contains("mapping `anc`: event fields not checked"), "{n}");
}

#[test]
fn the_shipped_packs_read_no_misspelt_event_field() {
    let packs = Path::new(env!("CARGO_MANIFEST_DIR")).join("packs");
    let report = check(&packs);
    let shown = |list: &[kiungo_mappings::LoadError]| {
        list.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(report.errors.is_empty(), "{}", shown(&report.errors));
    assert!(report.unchecked.is_empty(), "{}", shown(&report.unchecked));
}
