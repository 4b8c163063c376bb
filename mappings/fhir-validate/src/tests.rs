use serde_json::json;

use super::*;
use crate::primitive::Primitive;

#[test]
fn tables_load() {
    let t = tables::build(include_str!("../data/r4.json")).expect("tables");
    assert!(t.resource("Immunization").is_some());
    assert!(t.resource("Resource").is_none(), "abstract");
    assert!(t.resource("Quantity").is_none(), "a data type");
    assert!(t.types.len() > 600, "{}", t.types.len());
    // The hash index finds every key, and nothing else.
    for ty in &t.types {
        for k in &ty.keys {
            assert!(
                std::ptr::eq(ty.key(&k.json).expect("indexed"), k),
                "{}.{}",
                ty.name,
                k.json
            );
        }
        assert!(ty.key("notAnElement").is_none());
    }
}

#[test]
fn accepts_official_patient_example() {
    let patient = json!({
        "resourceType": "Patient",
        "id": "example",
        "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
        "active": true,
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]}
    });
    assert_eq!(validate(&patient), Ok(()));
}

#[test]
fn knows_r4_resource_types() {
    assert!(is_resource_type("QuestionnaireResponse"));
    assert!(is_resource_type("MedicationDispense"));
    assert!(!is_resource_type("Patinet"));
    assert!(!is_resource_type("DomainResource"));
    // R4B only.
    assert!(!is_resource_type("SubscriptionTopic"));
}

#[test]
fn unknown_element_with_path_and_suggestion() {
    let patient = json!({"resourceType": "Patient", "name": [{"famly": "Chalmers"}]});
    let err = validate(&patient).expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "invalid Patient at `Patient.name[0].famly`: unknown element `famly` in HumanName (did you mean `family`?)"
    );
}

#[test]
fn a_key_that_is_no_element_name_is_not_quoted() {
    let patient = json!({"resourceType": "Patient", "Marker Kamara": "x"});
    let err = validate(&patient).expect_err("unknown");
    assert_eq!(
        err.to_string(),
        "invalid Patient at `Patient.(not an element name)`: an unknown element whose key is not an element name in Patient"
    );
}

#[test]
fn cardinality_single_and_array() {
    let err = validate(&json!({"resourceType": "Patient", "gender": ["male"]})).expect_err("array");
    assert!(
        err.to_string()
            .contains("`Patient.gender`: expected a single value"),
        "{err}"
    );
    let err =
        validate(&json!({"resourceType": "Patient", "name": {"family": "X"}})).expect_err("single");
    assert!(
        err.to_string()
            .contains("`Patient.name`: expected an array (cardinality 0..*), found an object"),
        "{err}"
    );
    let err = validate(&json!({"resourceType": "Patient", "name": []})).expect_err("empty");
    assert!(err.to_string().contains("never empty"), "{err}");
    let err = validate(&json!({"resourceType": "Patient", "name": [{}]})).expect_err("ele-1");
    assert!(
        err.to_string()
            .contains("`Patient.name[0]`: an element needs a value or children (ele-1)"),
        "{err}"
    );
}

#[test]
fn bad_code_and_date_do_not_quote_the_value() {
    let err = validate(&json!({"resourceType": "Patient", "gender": "Marker Kamara"}))
        .expect_err("gender");
    let text = err.to_string();
    assert!(text.starts_with("invalid Patient at `Patient.gender`: found a code not in the required value set http://hl7.org/fhir/ValueSet/administrative-gender (female, male, other, unknown)"), "{text}");
    assert!(!text.contains("Marker"), "{text}");
    let err = validate(&json!({"resourceType": "Patient", "birthDate": "Marker Kamara"}))
        .expect_err("date");
    assert!(!err.to_string().contains("Marker"), "{err}");
    assert!(
        err.to_string()
            .contains("`Patient.birthDate`: expected a date"),
        "{err}"
    );
}

#[test]
fn choice_takes_one_type() {
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "valueString": "a", "valueBoolean": true});
    let err = validate(&obs).expect_err("two choices");
    assert!(
        err.to_string()
            .contains("`Observation.value[x]`: a choice element takes one type"),
        "{err}"
    );
}

#[test]
fn references_in_a_bundle_are_handed_back() {
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "subject": {"reference": "urn:uuid:0b3a8f6e-0000-5000-8000-000000000000"}});
    let mut urns = Vec::new();
    validate_in_bundle(&obs, &mut urns).expect("valid alone");
    assert_eq!(urns.len(), 1);
    let r = &urns[0];
    assert_eq!(r.path, "Observation.subject");
    assert_eq!(r.resolve(Some("Patient")), Ok(()));
    let err = r.resolve(Some("Medication")).expect_err("not a subject");
    assert!(
        err.to_string()
            .contains("expected Device or Group or Location or Patient"),
        "{err}"
    );
    let err = r.resolve(None).expect_err("dangling");
    assert!(err.to_string().contains("no entry of the bundle"), "{err}");
}

#[test]
fn conditional_and_absolute_references() {
    let imm = |r: &str| {
        json!({"resourceType": "Immunization", "status": "completed",
        "vaccineCode": {"text": "x"}, "occurrenceString": "last week", "patient": {"reference": r}})
    };
    assert_eq!(validate(&imm("Patient?identifier=a%7Cb")), Ok(()));
    assert_eq!(
        validate(&imm("https://shr.example.org/fhir/Patient/p1")),
        Ok(())
    );
    assert_eq!(validate(&imm("Patient/p1/_history/2")), Ok(()));
    assert!(validate(&imm("https://shr.example.org/fhir/Observation/p1")).is_err());
    assert!(validate(&imm("Observation?code=x")).is_err());
    assert!(validate(&imm("p1")).is_err());
}

#[test]
fn period_order_compares_like_values() {
    let enc = |s: &str, e: &str| {
        json!({"resourceType": "Encounter", "status": "finished",
        "class": {"code": "AMB"}, "period": {"start": s, "end": e}})
    };
    assert!(validate(&enc("2024-05-14T10:00:00+03:00", "2024-05-14T08:00:00Z")).is_ok());
    assert!(validate(&enc("2024-05-14T10:00:00Z", "2024-05-14T08:00:00+03:00")).is_err());
    assert!(validate(&enc("2024-05", "2024-04")).is_err());
    // Different precisions are not comparable (FHIRPath: empty).
    assert!(validate(&enc("2024-05-14", "2024-05")).is_ok());
}

#[test]
fn refuses_unknown_resource_types_and_non_objects() {
    assert!(matches!(
        validate(&json!({"resourceType": "Patinet"})),
        Err(FhirError::NotAResource(_))
    ));
    assert!(matches!(
        validate(&json!([1])),
        Err(FhirError::NotAResource(_))
    ));
    assert!(matches!(
        validate(&json!({"id": "x"})),
        Err(FhirError::NotAResource(_))
    ));
}

#[test]
fn contained_resources_are_checked_by_their_type() {
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "w"},
        "contained": [{"resourceType": "Patient", "id": "p", "gender": "bogus"}],
        "subject": {"reference": "#p"}});
    let err = validate(&obs).expect_err("contained");
    assert!(
        err.to_string()
            .contains("`Observation.contained[0](Patient).gender`"),
        "{err}"
    );
}

/// The hand-written formats agree with the official regexes (anchored) on
/// values around each format's edges; the regexes know no calendar, so
/// impossible dates are left out here and tested in `primitive`.
#[test]
fn primitive_formats_agree_with_the_official_regexes() {
    let data: Value = serde_json::from_str(include_str!("../data/r4.json")).expect("json");
    let samples = [
        " ",
        "a",
        "a b",
        "a  b",
        " a",
        "a ",
        "\t",
        "x\ny",
        "x\u{0B}y",
        "x\u{0C}y",
        "\u{0C}",
        "a \u{0B}b",
        "caf\u{e9}",
        "a\u{a0}b",
        "\u{a0}",
        "a\u{2003}",
        "x\u{85}y",
        "\u{2028}",
        "m\u{fc}ller m\u{fc}ller",
        "0",
        "1",
        "-1",
        "01",
        "1.5",
        "abc-DEF.09",
        "a/b",
        "http://x.org/a",
        "http://x y",
        "urn:oid:1.2.3",
        "urn:oid:1.02",
        "urn:oid:3.1",
        "urn:uuid:0b3a8f6e-0000-5000-8000-000000000000",
        "urn:uuid:0B3A8F6E-0000-5000-8000-000000000000",
        "2024",
        "2024-05",
        "2024-05-14",
        "2024-5-14",
        "2024-05-14T10:00:00Z",
        "2024-05-14T10:00:00",
        "2024-05-14T10:00:00.5+03:00",
        "2024-05-14T10:00Z",
        "10:00:00",
        "10:00",
        "24:00:00",
        "23:59:60.1",
        "QUJD",
        "QUJ",
        "QU JD",
        "true",
        "false",
        &"a".repeat(64),
        &"a".repeat(65),
    ];
    let mut compared = 0;
    for (name, rx) in data["primitives"].as_object().expect("primitives") {
        let (Some(p), Some(rx)) = (Primitive::from_name(name), rx.as_str()) else {
            continue;
        };
        if matches!(
            p,
            Primitive::Boolean
                | Primitive::Decimal
                | Primitive::Integer
                | Primitive::PositiveInt
                | Primitive::UnsignedInt
        ) {
            continue; // JSON numbers and booleans, not strings
        }
        let re = regex::Regex::new(&format!("^(?:{rx})$")).expect("regex");
        // FHIR JSON never has empty strings, whatever the regex (`\S*`).
        assert!(!p.matches(""), "{name} on an empty string");
        for s in samples.iter().filter(|s| !s.is_empty()) {
            assert_eq!(p.matches(s), re.is_match(s), "{name} on {s:?}");
            compared += 1;
        }
    }
    assert!(compared > 500, "{compared}");
}
