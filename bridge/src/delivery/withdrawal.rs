//! How resources an edit no longer produces are withdrawn at a FHIR
//! server: the entries added to the new version's transaction.
//!
//! `DELETE` (the default) for resources Kiungo wrote with `PUT` at its own
//! ids; or, where a registry forbids deletes, an update of the resource as
//! it was placed with its status set to `entered-in-error`, for every type
//! whose status (or verification status) has that code. A type without
//! one is deleted all the same. Conditional creates (a Patient matched by
//! identifier) are shared by many events and never withdrawn.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::store::OutboxItem;

/// `destinations.fhir.withdraw`: how a resource an edit no longer produces
/// leaves the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WithdrawMode {
    /// `DELETE Type/id`.
    #[default]
    Delete,
    /// `PUT Type/id` with `status: entered-in-error` (or the type's
    /// verification status), `DELETE` for types without such a status.
    EnteredInError,
}

/// Where a resource type records that it was entered in error.
enum Marker {
    /// `status: entered-in-error`.
    Status,
    /// `verificationStatus` coded in `system`, and `clinicalStatus`
    /// removed (FHIR R4 invariants con-5, ait-1).
    Verification(&'static str),
    /// `lifecycleStatus: entered-in-error` (Goal).
    Lifecycle,
}

/// FHIR R4 resource types whose status value set holds
/// `entered-in-error`, as the R4 (4.0.1) StructureDefinitions bind them.
fn marker(resource_type: &str) -> Option<Marker> {
    const STATUS: &[&str] = &[
        "Observation",
        "Encounter",
        "Immunization",
        "MedicationDispense",
        "MedicationRequest",
        "MedicationAdministration",
        "MedicationStatement",
        "Procedure",
        "DiagnosticReport",
        "ServiceRequest",
        "CarePlan",
        "CareTeam",
        "Composition",
        "DocumentReference",
        "QuestionnaireResponse",
        "EpisodeOfCare",
        "Flag",
        "Appointment",
        "Task",
        "Specimen",
        "Communication",
        "ImmunizationRecommendation",
        "RiskAssessment",
        "ClinicalImpression",
        "FamilyMemberHistory",
        "DetectedIssue",
        "NutritionOrder",
        "Consent",
    ];
    match resource_type {
        "Condition" => Some(Marker::Verification(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        )),
        "AllergyIntolerance" => Some(Marker::Verification(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        )),
        "Goal" => Some(Marker::Lifecycle),
        t if STATUS.contains(&t) => Some(Marker::Status),
        _ => None,
    }
}

/// The resource marked `entered-in-error`, or `None` when its type has no
/// such status (it is deleted instead).
pub fn mark_entered_in_error(resource: &Value) -> Option<Value> {
    let ty = resource.get("resourceType")?.as_str()?;
    let mut marked = resource.clone();
    let obj = marked.as_object_mut()?;
    match marker(ty)? {
        Marker::Status => {
            obj.insert("status".into(), json!("entered-in-error"));
        }
        Marker::Lifecycle => {
            obj.insert("lifecycleStatus".into(), json!("entered-in-error"));
        }
        Marker::Verification(system) => {
            obj.remove("clinicalStatus");
            obj.insert(
                "verificationStatus".into(),
                json!({"coding": [{"system": system, "code": "entered-in-error"}]}),
            );
        }
    }
    Some(marked)
}

/// For a destination that withdraws by `entered-in-error`: each resource
/// the bundle places with `PUT`, marked, to be kept with its placement.
pub fn marked_bodies(bundle: &str) -> Vec<(String, String)> {
    let Ok(parsed) = serde_json::from_str::<Value>(bundle) else {
        return Vec::new();
    };
    let Some(entries) = parsed.get("entry").and_then(Value::as_array) else {
        return Vec::new();
    };
    entries
        .iter()
        .filter_map(|e| {
            let request = e.get("request")?;
            if request.get("method")?.as_str()? != "PUT" {
                return None;
            }
            let url = request.get("url")?.as_str()?;
            let marked = mark_entered_in_error(e.get("resource")?)?;
            Some((url.to_owned(), marked.to_string()))
        })
        .collect()
}

/// The bundle to send for `item`: its own, with an entry per resource it
/// withdraws (`None` when it withdraws nothing: send it as stored).
pub fn with_withdrawals(item: &OutboxItem) -> Option<String> {
    let mut withdrawals = item.withdrawals().peekable();
    withdrawals.peek()?;
    let mut bundle: Value = serde_json::from_str(&item.bundle).ok()?;
    let extra: Vec<Value> = withdrawals
        .map(|p| {
            let body = p
                .body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok());
            match body {
                Some(resource) => json!({
                    "resource": resource,
                    "request": {"method": "PUT", "url": p.resource},
                }),
                None => json!({"request": {"method": "DELETE", "url": p.resource}}),
            }
        })
        .collect();
    let entries = bundle.as_object_mut()?.entry("entry").or_insert(json!([]));
    entries.as_array_mut()?.extend(extra);
    Some(bundle.to_string())
}

/// Whether a stored bundle has no entries (an edit's that only withdraws).
pub fn is_empty(bundle: &str) -> bool {
    bundle.len() < 128
        && serde_json::from_str::<Value>(bundle)
            .ok()
            .and_then(|b| b.get("entry").and_then(Value::as_array).map(Vec::is_empty))
            .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_verification_statuses_are_marked() {
        let obs = json!({"resourceType": "Observation", "id": "o", "status": "final"});
        assert_eq!(
            mark_entered_in_error(&obs).expect("marked")["status"],
            "entered-in-error"
        );
        let cond = json!({"resourceType": "Condition", "id": "c",
            "clinicalStatus": {"coding": [{"code": "active"}]}});
        let marked = mark_entered_in_error(&cond).expect("marked");
        assert!(marked.get("clinicalStatus").is_none());
        assert_eq!(
            marked["verificationStatus"]["coding"][0]["code"],
            "entered-in-error"
        );
        let patient = json!({"resourceType": "Patient", "id": "p"});
        assert!(mark_entered_in_error(&patient).is_none());
    }

    #[test]
    fn only_put_entries_are_kept_marked() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Encounter", "id": "e", "status": "finished"},
             "request": {"method": "PUT", "url": "Encounter/e"}},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=x"}},
        ]});
        let bodies = marked_bodies(&bundle.to_string());
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].0, "Encounter/e");
        assert!(bodies[0].1.contains("entered-in-error"));
    }

    #[test]
    fn empty_bundles_are_recognised() {
        assert!(is_empty(
            r#"{"resourceType":"Bundle","type":"transaction","entry":[]}"#
        ));
        assert!(!is_empty(
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{}]}"#
        ));
    }
}
