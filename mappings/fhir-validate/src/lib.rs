//! Exact check of FHIR R4 (4.0.1) resources, from tables generated from the
//! official StructureDefinitions and ValueSets (`data/README.md`).
//!
//! A resource passes when every key is an element its type defines (with
//! the `[x]` choices spelt out), every element has its cardinality (single
//! value or array, required elements present), every primitive its JSON
//! kind and format (real calendar dates, ids, codes, URIs, …), every code
//! on a required binding is in the value set, every reference names a
//! resource type the element allows (and a valid id), and the core
//! invariants servers enforce hold (ele-1, ext-1, qty-3, per-1, obs-6).
//! `urn:uuid` references are handed back to the caller, who knows the
//! bundle ([`validate_in_bundle`], [`UrnRef::resolve`]).
//!
//! Errors name the FHIR path (`Immunization.occurrence[x]`), what was
//! found and what was expected, never the value: resources carry personal
//! data, and errors end up in logs and dead-letter lists.

mod check;
pub mod primitive;
mod tables;

use serde_json::Value;

use check::{Checker, Frame};

/// Why a resource is not valid FHIR R4.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirError {
    /// The value is not a JSON object with a known `resourceType`.
    #[error("not a FHIR resource: {0}")]
    NotAResource(String),
    /// An element is not valid.
    #[error("invalid {resource_type} at `{path}`: {message}")]
    Invalid {
        /// The `resourceType` of the resource.
        resource_type: String,
        /// The FHIR path of the element at fault, e.g.
        /// `Immunization.performer[0].actor` or `Observation.value[x].value`.
        path: String,
        /// What was found and what was expected, without the value.
        message: String,
    },
}

/// A `urn:uuid` reference in a resource, to be resolved against the
/// bundle's `fullUrl`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrnRef {
    /// The reference, `urn:uuid:…`.
    pub reference: String,
    /// The FHIR path of the Reference element.
    pub path: String,
    /// The referring resource's type.
    pub resource_type: String,
    targets: &'static [Box<str>],
}

impl UrnRef {
    /// Checks the reference against the resource type of the bundle entry
    /// whose `fullUrl` it is (`None`: no entry has it).
    pub fn resolve(&self, entry_type: Option<&str>) -> Result<(), FhirError> {
        let message = match entry_type {
            None => "a urn:uuid reference to no entry of the bundle".to_owned(),
            Some(t) if !self.targets.is_empty() && !self.targets.iter().any(|x| **x == *t) => {
                format!(
                    "found a urn:uuid reference to a {t} entry, expected {}",
                    self.targets.join(" or ")
                )
            }
            Some(_) => return Ok(()),
        };
        Err(FhirError::Invalid {
            resource_type: self.resource_type.clone(),
            path: self.path.clone(),
            message,
        })
    }
}

/// Checks one FHIR resource given as JSON; `urn:uuid` references are
/// checked for form only.
///
/// Returns the first problem found.
pub fn validate(resource: &Value) -> Result<(), FhirError> {
    run(resource, None)
}

/// Checks one resource of a bundle, adding its `urn:uuid` references to
/// `urns` for the caller to resolve with [`UrnRef::resolve`].
pub fn validate_in_bundle(resource: &Value, urns: &mut Vec<UrnRef>) -> Result<(), FhirError> {
    run(resource, Some(urns))
}

fn run(resource: &Value, urns: Option<&mut Vec<UrnRef>>) -> Result<(), FhirError> {
    let Value::Object(obj) = resource else {
        return Err(FhirError::NotAResource("expected a JSON object".into()));
    };
    let name = match obj.get("resourceType") {
        Some(Value::String(t)) => t,
        Some(_) => {
            return Err(FhirError::NotAResource(
                "`resourceType` is not a string".into(),
            ));
        }
        None => return Err(FhirError::NotAResource("missing `resourceType`".into())),
    };
    let t = tables::tables();
    let Some(ty) = t.resource(name) else {
        return Err(FhirError::NotAResource(
            "`resourceType` is not an R4 resource type".into(),
        ));
    };
    let mut checker = Checker {
        t,
        resource_type: &ty.name,
        urns,
    };
    checker.resource(ty, obj, &Frame::root(&ty.name))
}

/// Whether `name` is a concrete FHIR R4 resource type.
pub fn is_resource_type(name: &str) -> bool {
    tables::tables().resource(name).is_some()
}

#[cfg(test)]
mod tests;
