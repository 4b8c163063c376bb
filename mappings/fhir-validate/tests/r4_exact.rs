//! Issue 15's reproductions: what the R4B round trip misses or misplaces,
//! and what an exact FHIR R4 (4.0.1) check must refuse, naming the FHIR
//! path. Each is ignored until the StructureDefinition-driven checker
//! lands (step 3 of issue 15); each fails on the round trip today (run
//! them with `cargo nextest run -p kiungo-fhir-validate --run-ignored all`).

use serde_json::{Value, json};

fn immunization() -> Value {
    json!({
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "19"}]},
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2024-05-14"
    })
}

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-05-14",
        "valueQuantity": {"value": 8.6, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
}

/// Asserts the resource is refused with a message naming `path`, and
/// never quoting `secret` (a value from the event).
#[track_caller]
fn refused_at(resource: &Value, path: &str, secret: &str) {
    let err = kiungo_fhir_validate::validate(resource).expect_err("must be refused");
    let text = err.to_string();
    assert!(text.contains(path), "`{text}` does not name `{path}`");
    assert!(!text.contains(secret), "`{text}` quotes the value");
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

#[test]
fn bad_status_codes_on_required_bindings() {
    refused_at(
        &with(immunization(), "status", json!("bogus")),
        "Immunization.status",
        "bogus",
    );
    let dispense = json!({"resourceType": "MedicationDispense", "status": "bogus",
        "medicationCodeableConcept": {"text": "AL"}});
    refused_at(&dispense, "MedicationDispense.status", "bogus");
    let condition = json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "bogus"}]}});
    refused_at(&condition, "Condition.clinicalStatus", "bogus");
}

#[test]
fn extension_with_only_its_url() {
    let patient = json!({"resourceType": "Patient", "extension": [{"url": "https://x.org/ext"}]});
    refused_at(&patient, "Patient.extension", "x.org");
}

#[test]
fn quantity_code_without_system() {
    let mut obs = observation();
    obs["valueQuantity"]
        .as_object_mut()
        .expect("object")
        .remove("system");
    refused_at(&obs, "Observation.value[x]", "kg");
}

#[test]
fn value_together_with_data_absent_reason() {
    let obs = with(
        observation(),
        "dataAbsentReason",
        json!({"text": "not asked"}),
    );
    refused_at(&obs, "Observation.dataAbsentReason", "not asked");
}

#[test]
fn period_ending_before_it_starts() {
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "period": {"start": "2024-05-14", "end": "2024-05-13"}});
    refused_at(&enc, "Encounter.period", "2024-05-13");
}

#[test]
fn reference_to_the_wrong_target_type() {
    let imm = with(
        immunization(),
        "patient",
        json!({"reference": "Observation/o1"}),
    );
    refused_at(&imm, "Immunization.patient", "o1");
}

#[test]
fn bad_ids_in_references_and_resources() {
    let imm = with(
        immunization(),
        "patient",
        json!({"reference": "Patient/a b"}),
    );
    refused_at(&imm, "Immunization.patient", "a b");
    let patient = json!({"resourceType": "Patient", "id": "a b"});
    refused_at(&patient, "Patient.id", "a b");
}

#[test]
fn r4b_only_elements_are_refused_and_r4_ones_accepted() {
    let obs = observation();
    let mut r4b = obs.clone();
    r4b.as_object_mut().expect("object").remove("valueQuantity");
    r4b["valueCodeableReference"] = json!({"concept": {"text": "x"}});
    refused_at(&r4b, "Observation.valueCodeableReference", "\"x\"");
    let meta = json!({"resourceType": "Patient", "extension": [{"url": "https://x.org/m", "valueMeta": {"versionId": "1"}}]});
    assert_eq!(kiungo_fhir_validate::validate(&meta), Ok(()));
}

#[test]
fn messages_point_at_the_element_at_fault() {
    // A misspelt choice element: named, with the nearest valid name.
    let mut imm = immunization();
    let date = imm["occurrenceDateTime"].take();
    imm.as_object_mut()
        .expect("object")
        .remove("occurrenceDateTime");
    imm["occurenceDateTime"] = date;
    let err = kiungo_fhir_validate::validate(&imm).expect_err("misspelt");
    assert!(err.to_string().contains("occurenceDateTime"), "{err}");
    assert!(err.to_string().contains("occurrenceDateTime"), "{err}");
    // An impossible date: the element, not `vaccineCode`.
    refused_at(
        &with(immunization(), "occurrenceDateTime", json!("2018-02-30")),
        "Immunization.occurrence[x]",
        "2018-02-30",
    );
    // A number left as text: the element and the type expected.
    let mut obs = observation();
    obs["valueQuantity"]["value"] = json!("8.6");
    refused_at(&obs, "Observation.value[x]", "8.6");
    // A missing required element: named as missing, not `id`.
    let mut obs = observation();
    obs.as_object_mut().expect("object").remove("status");
    refused_at(&obs, "Observation.status", "final");
}
