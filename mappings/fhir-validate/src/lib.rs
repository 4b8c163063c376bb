//! Strict structural check of FHIR R4 resources.
//!
//! `fhir-sdk` ships no R4 models, but its R4B models cover the resources R4
//! servers accept for community and facility data (Patient, Encounter,
//! Observation, Immunization, Condition, MedicationDispense,
//! QuestionnaireResponse, ...). A resource passes when it deserializes into the
//! typed R4B model *and* serializing that model back loses nothing: the models
//! ignore unknown keys, so the round trip is what catches a misspelt field.
//!
//! This crate is isolated because the models take minutes and gigabytes to
//! compile; its API is small and non-generic so that it compiles once and is
//! cached by every crate that uses it.

use fhir_sdk::r4b::resources::Resource;
use serde_json::Value;

/// Why a resource is not valid FHIR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    /// The value is not a JSON object with a string `resourceType`.
    #[error("not a FHIR resource: {0}")]
    NotAResource(String),
    /// The typed model rejected the resource (wrong type, missing required
    /// element, bad code, bad date).
    #[error("invalid {resource_type}: {message}")]
    Invalid {
        /// The `resourceType` of the rejected resource.
        resource_type: String,
        /// The model's own message, naming the element.
        message: String,
    },
    /// The resource carries an element that FHIR does not define.
    #[error("invalid {resource_type}: unknown element `{path}`")]
    UnknownElement {
        /// The `resourceType` of the rejected resource.
        resource_type: String,
        /// Dotted path of the unknown element, e.g. `name[0].famly`.
        path: String,
    },
}

/// Checks one FHIR resource given as JSON.
///
/// Returns the first problem found; the message names the element at fault.
pub fn validate(resource: &Value) -> Result<(), FhirError> {
    let resource_type = match resource.get("resourceType") {
        Some(Value::String(t)) => t.clone(),
        Some(_) => {
            return Err(FhirError::NotAResource(
                "`resourceType` is not a string".into(),
            ));
        }
        None if resource.is_object() => {
            return Err(FhirError::NotAResource("missing `resourceType`".into()));
        }
        None => return Err(FhirError::NotAResource("expected a JSON object".into())),
    };
    let typed: Resource = match serde_path_to_error::deserialize(resource) {
        Ok(t) => t,
        Err(e) => {
            let mut message = describe(&e);
            if let Some(key) = culprit(resource) {
                message.push_str(&format!(" at `{key}`"));
            }
            return Err(FhirError::Invalid {
                resource_type,
                message,
            });
        }
    };
    let back = serde_json::to_value(&typed).map_err(|e| FhirError::Invalid {
        resource_type: resource_type.clone(),
        message: e.to_string(),
    })?;
    if let Some(path) = first_lost(resource, &back, &mut String::new()) {
        return Err(FhirError::UnknownElement {
            resource_type,
            path,
        });
    }
    Ok(())
}

/// A message naming the element at fault and what was expected, without
/// the offending value: resources carry personal data, and errors end up in
/// logs and dead-letter lists.
fn describe(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let inner = e.inner().to_string();
    let path = e.path().to_string();
    let what = if let Some(field) = inner.strip_prefix("missing field ") {
        format!("missing required element {field}")
    } else if let Some(expected) = inner.split(", expected ").nth(1) {
        format!("invalid value, expected {expected}")
    } else if inner.starts_with("no variant of enum") {
        // A choice element (`value[x]`, `occurrence[x]`): the type name is
        // the model's, e.g. `ImmunizationOccurrence`; keep it.
        inner
    } else {
        "invalid value".to_owned()
    };
    if path.is_empty() || path == "." {
        what
    } else {
        format!("{what} in `{path}`")
    }
}

/// The top-level element whose removal makes the resource deserialize, or
/// whose removal changes the failure to a missing required element: the
/// models' tagged enum loses the path, so find it by elimination. Runs only
/// on the error path.
fn culprit(resource: &Value) -> Option<String> {
    let map = resource.as_object()?;
    map.keys().filter(|k| *k != "resourceType").find_map(|key| {
        let mut without = map.clone();
        without.remove(key);
        match serde_json::from_value::<Resource>(Value::Object(without)) {
            Ok(_) => Some(key.clone()),
            Err(e) if e.to_string().starts_with("missing field") => Some(key.clone()),
            Err(_) => None,
        }
    })
}

/// Whether `name` is a FHIR resource type the models know.
pub fn is_resource_type(name: &str) -> bool {
    name.parse::<fhir_sdk::r4b::resources::ResourceType>()
        .is_ok()
}

/// Finds the first key of `input` that the round trip through the typed
/// model dropped.
fn first_lost(input: &Value, back: &Value, path: &mut String) -> Option<String> {
    match (input, back) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
                let found = match b.get(key) {
                    None => Some(path.clone()),
                    Some(other) => first_lost(value, other, path),
                };
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (Value::Array(a), Value::Array(b)) => {
            for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = first_lost(x, y, path);
                path.truncate(len);
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_official_patient_example() {
        let patient = json!({
            "resourceType": "Patient",
            "id": "example",
            "identifier": [{"use": "usual", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}],
            "active": true,
            "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
            "gender": "male",
            "birthDate": "1974-12-25"
        });
        assert_eq!(validate(&patient), Ok(()));
    }

    #[test]
    fn knows_resource_types() {
        assert!(is_resource_type("QuestionnaireResponse"));
        assert!(is_resource_type("MedicationDispense"));
        assert!(!is_resource_type("Patinet"));
    }

    #[test]
    fn rejects_unknown_element_with_path() {
        let patient = json!({"resourceType": "Patient", "name": [{"famly": "Chalmers"}]});
        assert_eq!(
            validate(&patient),
            Err(FhirError::UnknownElement {
                resource_type: "Patient".into(),
                path: "name[0].famly".into()
            })
        );
    }

    #[test]
    fn rejects_bad_code_and_missing_required() {
        let bad_gender = json!({"resourceType": "Patient", "gender": "Marker Kamara"});
        let err = validate(&bad_gender).expect_err("bad gender");
        assert!(matches!(err, FhirError::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains("Marker"), "{err}");
        assert!(err.to_string().ends_with("at `gender`"), "{err}");
        let bad_date = json!({"resourceType": "Patient", "birthDate": "Marker Kamara"});
        let err = validate(&bad_date).expect_err("bad date");
        assert!(!err.to_string().contains("Marker"), "{err}");
        // Observation.status and Observation.code are required (1..1).
        let no_status = json!({"resourceType": "Observation", "code": {"text": "weight"}});
        let err = validate(&no_status).expect_err("missing status");
        assert!(err.to_string().contains("status"), "{err}");
    }

    #[test]
    fn rejects_unknown_resource_type_and_non_objects() {
        assert!(matches!(
            validate(&json!({"resourceType": "Patinet"})),
            Err(FhirError::Invalid { .. })
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
}
