//! The official FHIR R4 examples the mapping packs are modelled on must pass.

use std::path::Path;

#[test]
fn official_r4_examples_validate() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/r4-examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read example");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        if let Err(e) = kiungo_fhir_validate::validate(&json) {
            panic!("{}: {e}", path.display());
        }
        checked += 1;
    }
    assert!(checked >= 9, "only {checked} examples found");
}

#[test]
fn misspelt_element_in_official_example_is_caught() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/r4-examples");
    let text = std::fs::read_to_string(dir.join("immunization-example.json")).expect("read");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    let date = json["occurrenceDateTime"].take();
    json.as_object_mut()
        .expect("object")
        .remove("occurrenceDateTime");
    json["occurenceDateTime"] = date;
    let err = kiungo_fhir_validate::validate(&json).expect_err("misspelt");
    // Named where it is, with the nearest valid name.
    assert_eq!(
        err.to_string(),
        "invalid Immunization at `Immunization.occurenceDateTime`: unknown element \
         `occurenceDateTime` in Immunization (did you mean `occurrenceDateTime`?)"
    );
}
