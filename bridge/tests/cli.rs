//! The `kiungo` command line, run as a process.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn kiungo(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiungo"))
        .args(args)
        .output()
        .expect("run kiungo")
}

fn packs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../mappings/packs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn validate_accepts_the_shipped_packs() {
    let out = kiungo(&["mappings", "validate", packs().to_str().expect("path")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}{stderr}");
    // Every event field the packs read is in their fixtures, or optional.
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("note:"), "{stderr}");
    for id in [
        "cht-anc-visit",
        "commcare-immunization",
        "kobo-malaria-rdt",
        "inhouse-nutrition-growth",
        "opensrp-vaccination",
        "odk-central-household-visit",
    ] {
        assert!(
            stdout.contains(&format!("ok  {id} v")),
            "{id} missing from:\n{stdout}"
        );
    }
}

/// A pack whose mapping reads `read` in a `when` that hides it from its
/// test cases; its test event has `anc_visit`, never `anc_visitz` nor
/// `nickname`. Returns the directory and the mapping file.
fn pack_reading(read: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("anc.yaml");
    let lines = [
        "id: anc",
        "version: 1",
        "description: d",
        "source: cht",
        "match: event.form == 'visit'",
        "event_id: event._id",
        "fhir:",
        "  - name: patient",
        &format!("    when: {read}"),
        "    resource:",
        "      resourceType: Patient",
        "      gender: =event.fields.sex",
        "tests:",
        "  - name: a visit",
        "    event: visit.json",
        "    expect: { event_id: v1 }",
        "",
    ];
    std::fs::write(&file, lines.join("\n")).expect("write mapping");
    std::fs::write(
        dir.path().join("visit.json"),
        r#"{ "_id": "v1", "form": "visit", "fields": { "anc_visit": "Wanjiru-secret", "sex": "other" } }"#,
    )
    .expect("write event");
    (dir, file)
}

#[test]
fn validate_fails_on_a_misspelt_event_field_naming_its_place_and_the_field_meant() {
    // Issue 17: guarded with `is defined`, the misspelling hid from the test.
    let (dir, file) = pack_reading("event.fields.anc_visitz is defined");
    let out = kiungo(&["mappings", "validate", dir.path().to_str().expect("path")]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: {}:9:11: fhir[0].when: `event.fields.anc_visitz`: no test event has \
             `anc_visitz` under `event.fields`; did you mean `event.fields.anc_visit`?",
            file.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem(s) found"), "{stderr}");
    assert!(!stderr.contains("secret"), "a value is shown: {stderr}");
    assert!(
        !text(&out.stdout).contains("valid"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn validate_warns_of_an_optional_event_field_no_test_event_has_and_succeeds() {
    let (dir, file) = pack_reading("event.fields.nickname is defined");
    let out = kiungo(&["mappings", "validate", dir.path().to_str().expect("path")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: {}:9:11: fhir[0].when: `event.fields.nickname`: no test event has \
             `nickname` under `event.fields`",
            file.display()
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    assert!(!stderr.contains("secret"), "a value is shown: {stderr}");
    assert!(
        stdout.contains("1 mapping(s) valid, 1 warning(s): event fields no test event has"),
        "{stdout}"
    );
}

#[test]
fn test_runs_every_pack_test_case() {
    let out = kiungo(&["mappings", "test", packs().to_str().expect("path")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let last = stdout.lines().last().expect("summary");
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert!(passed >= 16, "{last}");
}

#[test]
fn validate_reports_every_problem_with_its_location_and_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("bad.yaml"),
        "id: bad\nversion: 1\ndescription: d\nsource: s\nfhir:\n  - name: p\n    resource:\n      resourceType: Patient\n      gender: =event.sex ==\ndhis2:\n  - name: c\n    data_element: fbfJHSPpUQD\n    org_unit: DiszpKrYNg8\n    period: { type: Montly, date: event.d }\n    aggregation: count\ntests:\n  - name: t\n    event: {}\n    expect_error: x\n",
    )
    .expect("write");
    let out = kiungo(&["mappings", "validate", dir.path().to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("bad.yaml:9:"), "{stderr}");
    assert!(
        stderr.contains("fhir[0].resource.gender: syntax error"),
        "{stderr}"
    );
    assert!(stderr.contains("bad.yaml:14:"), "{stderr}");
    assert!(
        stderr.contains("dhis2[0].period.type: unknown period type `Montly`"),
        "{stderr}"
    );
    assert!(stderr.contains("2 problem(s) found"), "{stderr}");
}

#[test]
fn validate_puts_a_misspelt_fhir_element_on_its_own_line() {
    // Issue 17: the rule starts at line 6, the misspelt element is on line 16.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("imm.yaml"),
        "id: imm\nversion: 1\ndescription: d\nsource: s\nfhir:\n  - name: shot\n    resource:\n      resourceType: Immunization\n      status: completed\n      vaccineCode:\n        coding:\n          - system: http://hl7.org/fhir/sid/cvx\n            code: \"19\"\n      patient: { reference: Patient/p1 }\n      primarySource: true\n      occurenceDateTime: =event.date\ntests:\n  - name: t\n    event: {}\n    expect_error: x\n",
    )
    .expect("write");
    let out = kiungo(&["mappings", "validate", dir.path().to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let file = dir.path().join("imm.yaml");
    assert!(
        stderr.contains(&format!(
            "error: {}:16:7: fhir[0].resource.occurenceDateTime: invalid Immunization at \
             `Immunization.occurenceDateTime`: unknown element `occurenceDateTime` in \
             Immunization (did you mean `occurrenceDateTime`?)",
            file.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("1 problem(s) found"), "{stderr}");
}

#[test]
fn test_shows_a_diff_and_fails_on_a_wrong_expectation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pack = packs().join("cht-anc");
    for entry in std::fs::read_dir(&pack).expect("pack") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().expect("name"))).expect("copy");
        }
    }
    std::fs::create_dir(dir.path().join("fixtures")).expect("mkdir");
    for entry in std::fs::read_dir(pack.join("fixtures")).expect("fixtures") {
        let path = entry.expect("entry").path();
        let mut body = std::fs::read_to_string(&path).expect("read");
        if path.ends_with("anc-visit-1-facility.expected.json") {
            body = body.replace("\"period\": \"202403\"", "\"period\": \"202404\"");
        }
        std::fs::write(
            dir.path()
                .join("fixtures")
                .join(path.file_name().expect("name")),
            body,
        )
        .expect("write");
    }
    let out = kiungo(&["mappings", "test", dir.path().to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("FAIL cht-anc-visit: 3/4 test(s) passed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("-      \"period\": \"202404\","),
        "{stdout}"
    );
    assert!(
        stdout.contains("+      \"period\": \"202403\","),
        "{stdout}"
    );
    assert!(stdout.contains("3 passed, 1 failed"), "{stdout}");
}

#[test]
fn map_prints_what_one_event_yields() {
    let pack = packs().join("cht-anc");
    let out = kiungo(&[
        "map",
        "--mapping",
        pack.join("anc-visit.yaml").to_str().expect("path"),
        pack.join("fixtures/anc-visit-1-facility.json")
            .to_str()
            .expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(pack.join("fixtures/anc-visit-1-facility.expected.json"))
            .expect("read"),
    )
    .expect("json");
    assert_eq!(json, expected);
}

#[test]
fn map_explains_a_bad_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = dir.path().join("e.json");
    std::fs::write(&event, "{not json").expect("write");
    let pack = packs().join("cht-anc");
    let out = kiungo(&[
        "map",
        "--mapping",
        pack.join("anc-visit.yaml").to_str().expect("path"),
        event.to_str().expect("path"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("e.json: not JSON"), "{stderr}");
}
