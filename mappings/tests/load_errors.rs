//! Every class of mapping problem is refused at load with its file, line,
//! field and a message that says what is wrong.

use std::path::{Path, PathBuf};

use kiungo_mappings::{LoadError, LoadOptions, MappingSet};

/// A minimal valid mapping; tests break one thing at a time.
const GOOD: &str = r#"id: demo
version: 1
description: demo mapping
source: demo
event_id: event.id
let:
  day: event.date | date
fhir:
  - name: patient
    resource:
      resourceType: Patient
      gender: =event.sex
dhis2:
  - name: visits
    data_element: fbfJHSPpUQD
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: day }
    aggregation: count
tests:
  - name: one
    event: { id: e1, date: "2024-03-15", sex: female }
    expect:
      event_id: e1
      fhir:
        - fullUrl: urn:uuid:599392ae-c4ec-59c8-90c8-8c6fd91cbe68
          resource: { resourceType: Patient, id: 599392ae-c4ec-59c8-90c8-8c6fd91cbe68, gender: female }
          request: { method: PUT, url: Patient/599392ae-c4ec-59c8-90c8-8c6fd91cbe68 }
      dhis2:
        - { rule: visits, dataElement: fbfJHSPpUQD, period: "202403", orgUnit: DiszpKrYNg8, categoryOptionCombo: HllvX50cXC0, attributeOptionCombo: HllvX50cXC0, value: 1, aggregation: count, date: "2024-03-15" }
"#;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write mapping");
    path
}

/// Loads `text` as `m.yaml` in a fresh directory and returns the errors.
fn errors_of(text: &str) -> (tempfile::TempDir, Vec<LoadError>) {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.yaml", text);
    let errs = match MappingSet::load_dir(dir.path(), LoadOptions::default()) {
        Ok(_) => Vec::new(),
        Err(e) => e.0,
    };
    (dir, errs)
}

/// Asserts exactly one error, at `line`, on `field`, containing `needle`.
fn assert_one(text: &str, line: u64, field: &str, needle: &str) {
    let (dir, errs) = errors_of(text);
    assert_eq!(errs.len(), 1, "expected one error, got: {errs:#?}");
    let e = &errs[0];
    assert_eq!(e.file, dir.path().join("m.yaml"), "{e}");
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.field, field, "{e}");
    assert!(
        e.message.contains(needle),
        "message `{}` lacks `{needle}`",
        e.message
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:{line}", e.file.display())),
        "{shown}"
    );
}

#[test]
fn a_misspelt_key_names_its_field_path_and_its_place_once() {
    let text = GOOD.replace(
        "    org_unit: DiszpKrYNg8",
        "    org_unit: DiszpKrYNg8\n    category_optoin_combo: x",
    );
    let (_dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let e = &errs[0];
    assert_eq!(
        (e.line, e.field.as_str()),
        (Some(17), "dhis2[0].category_optoin_combo"),
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.contains(
            ":17:5: dhis2[0].category_optoin_combo: unknown field `category_optoin_combo`"
        ),
        "{shown}"
    );
    assert!(
        !shown.contains("at line"),
        "the place is printed once: {shown}"
    );
}

#[test]
fn the_good_mapping_loads_and_its_test_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.yaml", GOOD);
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let reports = set.run_tests();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].failures.is_empty(), "{:#?}", reports[0].failures);
    assert_eq!(reports[0].run, 1);
}

#[test]
fn hidden_folders_are_skipped_as_in_a_configmap_volume() {
    // A ConfigMap volume: the files live in `..2026_11_25/`, `..data` links
    // to it, and the visible names link into `..data`.
    let dir = tempfile::tempdir().expect("tempdir");
    let hidden = dir.path().join("..2026_11_25");
    std::fs::create_dir(&hidden).expect("mkdir");
    write(&hidden, "m.yaml", GOOD);
    std::os::unix::fs::symlink(&hidden, dir.path().join("..data")).expect("link");
    std::os::unix::fs::symlink(dir.path().join("..data/m.yaml"), dir.path().join("m.yaml"))
        .expect("link");
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads once");
    assert_eq!(set.mappings().len(), 1);
}

#[test]
fn unknown_key_at_top_level() {
    let text = GOOD.replace("source: demo\n", "source: demo\nsorce: typo\n");
    let (_dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, Some(5));
    assert!(errs[0].message.contains("sorce"), "{}", errs[0].message);
}

#[test]
fn unknown_key_inside_a_dhis2_rule() {
    let text = GOOD.replace(
        "    aggregation: count\n",
        "    aggregation: count\n    agregation: sum\n",
    );
    let (_dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].line, Some(19));
    assert!(
        errs[0].message.contains("agregation"),
        "{}",
        errs[0].message
    );
}

#[test]
fn expression_that_does_not_parse() {
    let text = GOOD.replace("day: event.date | date", "day: event.date | date(");
    assert_one(&text, 7, "let.day", "syntax error");
}

#[test]
fn template_expression_that_does_not_parse() {
    let text = GOOD.replace("gender: =event.sex", "gender: =event.sex ==");
    assert_one(&text, 12, "fhir[0].resource.gender", "syntax error");
}

#[test]
fn reference_to_an_undefined_binding() {
    let text = GOOD.replace("date: day }", "date: visit_day }");
    assert_one(
        &text,
        17,
        "dhis2[0].period.date",
        "undefined name `visit_day`",
    );
}

#[test]
fn binding_used_before_it_is_defined() {
    let text = GOOD.replace(
        "  day: event.date | date\n",
        "  first: day\n  day: event.date | date\n",
    );
    assert_one(&text, 7, "let.first", "undefined name `day`");
}

#[test]
fn reference_to_an_undefined_table() {
    let text = GOOD.replace(
        "org_unit: DiszpKrYNg8",
        "org_unit: =lookup(facilities, event.fac)",
    );
    assert_one(
        &text,
        16,
        "dhis2[0].org_unit",
        "undefined name `facilities`",
    );
}

#[test]
fn reference_to_an_unknown_resource() {
    let text = GOOD.replace("gender: =event.sex", "gender: =event.sex\n      link: [ { other: { reference: =refs.mother } , type: seealso } ]");
    let (_dir, errs) = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.message.contains("`refs.mother` names no resource")),
        "{errs:#?}"
    );
}

#[test]
fn invalid_fhir_element_is_refused_at_load() {
    // A literal element the type does not define: at its own line (13),
    // not the rule's (9), with the template field and the FHIR path.
    let text = GOOD.replace(
        "gender: =event.sex",
        "gender: =event.sex\n      birthdate: '2020-01-01'",
    );
    assert_one(
        &text,
        13,
        "fhir[0].resource.birthdate",
        "invalid Patient at `Patient.birthdate`: unknown element `birthdate` in Patient (did you mean `birthDate`?)",
    );
}

#[test]
fn invalid_fhir_code_from_a_test_event_is_refused_at_load() {
    // The expression's result for the test event is not in the value set:
    // found by running the test, located at the expression's key.
    let text = GOOD.replace("sex: female }", "sex: girl }");
    assert_one(
        &text,
        12,
        "fhir[0].resource.gender",
        "produces invalid FHIR for test `one`: invalid Patient at `Patient.gender`",
    );
}

/// Issue 17: an Immunization rule starting at line 30 whose misspelt
/// element is on line 40.
const IMMUNIZATION: &str = r#"id: demo
version: 1
description: demo mapping
source: demo
event_id: event.id
let:
  day: event.date | date
dhis2:
  - name: visits
    data_element: fbfJHSPpUQD
    org_unit: DiszpKrYNg8
    period: { type: Monthly, date: day }
    aggregation: count
tests:
  - name: one
    event: { id: e1, date: "2024-03-15" }
    expect:
      event_id: e1
      dhis2:
        - { rule: visits, dataElement: fbfJHSPpUQD, period: "202403", orgUnit: DiszpKrYNg8, categoryOptionCombo: HllvX50cXC0, attributeOptionCombo: HllvX50cXC0, value: 1, aggregation: count, date: "2024-03-15" }
# Padding, so that the rule starts at line 30.
#
#
#
#
#
#
#
fhir:
  - name: shot
    resource:
      resourceType: Immunization
      status: completed
      vaccineCode:
        coding:
          - system: http://hl7.org/fhir/sid/cvx
            code: "19"
      patient: { reference: Patient/p1 }
      primarySource: true
      occurenceDateTime: =day
"#;

#[test]
fn a_misspelt_fhir_element_is_located_on_its_own_line() {
    let rule = IMMUNIZATION
        .lines()
        .position(|l| l.contains("- name: shot"))
        .map(|i| i + 1);
    assert_eq!(rule, Some(30), "the rule starts at line 30");
    let (dir, errs) = errors_of(IMMUNIZATION);
    // Found when the template is checked, before any test event runs (the
    // missing occurrence[x] would be the test's problem once it is fixed).
    let e = errs
        .iter()
        .find(|e| e.message.contains("occurenceDateTime"))
        .unwrap_or_else(|| panic!("{errs:#?}"));
    assert_eq!(e.file, dir.path().join("m.yaml"));
    assert_eq!(
        (e.line, e.column, e.field.as_str()),
        (Some(40), Some(7), "fhir[0].resource.occurenceDateTime"),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "{}:40:7: fhir[0].resource.occurenceDateTime: invalid Immunization at \
             `Immunization.occurenceDateTime`: unknown element `occurenceDateTime` in \
             Immunization (did you mean `occurrenceDateTime`?)",
            dir.path().join("m.yaml").display()
        )
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
}

#[test]
fn a_literal_fhir_error_is_refused_at_load_even_if_no_test_makes_the_resource() {
    // No test event makes the Immunization (`when` is false for all), so
    // only the load-time check of the literal parts can find these: a
    // code outside the required value set (line 34), a system that is no
    // URI (line 37), both at their keys, with the FHIR path.
    let text = IMMUNIZATION
        .replace(
            "  - name: shot\n",
            "  - name: shot\n    when: event.id == 'never'\n",
        )
        .replace("status: completed", "status: complete")
        .replace("system: http://hl7.org/fhir/sid/cvx", "system: not a uri")
        .replace("occurenceDateTime", "occurrenceDateTime");
    let (dir, errs) = errors_of(&text);
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    let file = dir.path().join("m.yaml").display().to_string();
    assert_eq!(
        shown,
        [
            format!(
                "{file}:34:7: fhir[0].resource.status: invalid Immunization at \
                 `Immunization.status`: found a code not in the required value set \
                 http://hl7.org/fhir/ValueSet/immunization-status (completed, entered-in-error, not-done)"
            ),
            format!(
                "{file}:37:13: fhir[0].resource.vaccineCode.coding[0].system: invalid \
                 Immunization at `Immunization.vaccineCode.coding[0].system`: expected a \
                 uri (no whitespace), found text that is not one"
            ),
        ],
        "{errs:#?}"
    );
}

#[test]
fn unknown_resource_type() {
    let text = GOOD.replace(
        "resourceType: Patient\n      gender",
        "resourceType: Patinet\n      gender",
    );
    let (_dir, errs) = errors_of(&text);
    assert!(
        errs.iter()
            .any(|e| e.line == Some(11) && e.field == "fhir[0].resource.resourceType"),
        "{errs:#?}"
    );
}

#[test]
fn invalid_period_type() {
    let text = GOOD.replace("type: Monthly", "type: Montly");
    assert_one(
        &text,
        17,
        "dhis2[0].period.type",
        "unknown period type `Montly`",
    );
}

#[test]
fn malformed_dhis2_uid() {
    let text = GOOD.replace("data_element: fbfJHSPpUQD", "data_element: fbfJHSPpUQ");
    assert_one(&text, 15, "dhis2[0].data_element", "not a DHIS2 UID");
}

#[test]
fn count_with_a_value_and_sum_without() {
    let text = GOOD.replace(
        "    aggregation: count\n",
        "    aggregation: count\n    value: 2\n",
    );
    assert_one(&text, 19, "dhis2[0].value", "takes no `value`");
    let text = GOOD.replace("aggregation: count", "aggregation: sum");
    assert_one(&text, 18, "dhis2[0].aggregation", "needs a `value`");
}

#[test]
fn a_mapping_without_tests_is_refused() {
    let text = &GOOD[..GOOD.find("tests:").expect("tests")];
    assert_one(text, 1, "", "at least one test case");
}

#[test]
fn duplicate_mapping_ids_across_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "a.yaml", GOOD);
    let b = write(dir.path(), "b.yaml", GOOD);
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("duplicate")
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, b);
    assert_eq!(errs[0].field, "id");
    assert!(
        errs[0].message.contains("duplicate mapping id `demo`"),
        "{}",
        errs[0].message
    );
    assert!(errs[0].message.contains("a.yaml"), "{}", errs[0].message);
}

#[test]
fn yaml_syntax_error_has_a_location() {
    let text = GOOD.replace(
        "period: { type: Monthly, date: day }",
        "period: { type: Monthly, date: day",
    );
    let (_dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].line.is_some(), "{errs:#?}");
}

#[test]
fn csv_table_with_a_duplicate_key_names_the_csv_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("fac.csv"),
        "code,org_unit\nA1,DiszpKrYNg8\nA1,mepHuAA9l51\n",
    )
    .expect("csv");
    let text = GOOD.replace(
        "let:\n",
        "tables:\n  fac: { csv: fac.csv, value: org_unit }\nlet:\n",
    );
    write(dir.path(), "m.yaml", &text);
    let errs = MappingSet::load_dir(dir.path(), LoadOptions::default())
        .expect_err("dup")
        .0;
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].message.contains("line 3: duplicate key `A1`"),
        "{}",
        errs[0].message
    );
    assert_eq!(errs[0].field, "tables.fac");
}

#[test]
fn missing_csv_table_names_the_file() {
    let text = GOOD.replace("let:\n", "tables:\n  fac: { csv: nowhere.csv }\nlet:\n");
    let (dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(errs[0].file, dir.path().join("nowhere.csv"));
    assert!(
        errs[0].message.contains("cannot read table"),
        "{}",
        errs[0].message
    );
}

#[test]
fn all_problems_of_a_file_are_reported_at_once() {
    let text = GOOD
        .replace("type: Monthly", "type: Montly")
        .replace("data_element: fbfJHSPpUQD", "data_element: nope")
        .replace("day: event.date | date", "day: event.date | date(");
    let (_dir, errs) = errors_of(&text);
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn failing_test_case_shows_a_readable_diff() {
    let text = GOOD.replace("value: 1, aggregation", "value: 2, aggregation");
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "m.yaml", &text);
    let set = MappingSet::load_dir(dir.path(), LoadOptions::default()).expect("loads");
    let reports = set.run_tests();
    let failure = &reports[0].failures[0];
    assert_eq!(failure.name, "one");
    assert!(
        failure.detail.contains("-      \"value\": 2,"),
        "{}",
        failure.detail
    );
    assert!(
        failure.detail.contains("+      \"value\": 1,"),
        "{}",
        failure.detail
    );
}
