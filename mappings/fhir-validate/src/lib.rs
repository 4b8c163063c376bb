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
//! Resources made from templates are checked through a [`Plan`]: the
//! template's literal parts once, when it is made, and each resource only
//! where an expression put something, plus the rules that span an object
//! (`plan.rs`).
//!
//! Errors name the FHIR path (`Immunization.occurrence[x]`), what was
//! found and what was expected, never the value: resources carry personal
//! data, and errors end up in logs and dead-letter lists.

mod check;
mod plan;
pub mod primitive;
mod tables;

use serde_json::Value;

use check::{Checker, Frame, Sink};
pub use plan::{Node, Plan, Shape};

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
            Some(t) if !allows(self.targets, t) => {
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

/// Whether a Reference whose allowed targets are `targets` (empty: any)
/// may point at a `t`.
fn allows(targets: &[Box<str>], t: &str) -> bool {
    targets.is_empty() || targets.iter().any(|x| **x == *t)
}

/// A `urn:uuid` reference found by [`Plan::check`]: what [`UrnRef`]
/// holds without its text and path, so that finding one allocates
/// nothing. When one does not resolve, [`validate_in_bundle`] and
/// [`UrnRef::resolve`] give the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Urn {
    /// The lowercase UUID after `urn:uuid:`.
    uuid: [u8; 36],
    targets: &'static [Box<str>],
}

impl Urn {
    /// From a UUID already checked (`primitive::is_uuid`).
    pub(crate) fn new(uuid: &str, targets: &'static [Box<str>]) -> Self {
        let mut bytes = [0u8; 36];
        for (b, c) in bytes.iter_mut().zip(uuid.bytes()) {
            *b = c;
        }
        Self {
            uuid: bytes,
            targets,
        }
    }

    /// Whether `full_url` (`urn:uuid:…`) is the one this reference names.
    pub fn names(&self, full_url: &str) -> bool {
        full_url
            .strip_prefix("urn:uuid:")
            .is_some_and(|u| u.as_bytes() == self.uuid)
    }

    /// Whether the reference resolves to a bundle entry of this resource
    /// type (`None`: no entry has its `fullUrl`), as [`UrnRef::resolve`]
    /// decides.
    pub fn resolves(&self, entry_type: Option<&str>) -> bool {
        entry_type.is_some_and(|t| allows(self.targets, t))
    }
}

/// Checks one FHIR resource given as JSON; `urn:uuid` references are
/// checked for form only.
///
/// Returns the first problem found.
pub fn validate(resource: &Value) -> Result<(), FhirError> {
    run(resource, Sink::None)
}

/// Checks one resource of a bundle, adding its `urn:uuid` references to
/// `urns` for the caller to resolve with [`UrnRef::resolve`].
pub fn validate_in_bundle(resource: &Value, urns: &mut Vec<UrnRef>) -> Result<(), FhirError> {
    run(resource, Sink::Refs(urns))
}

fn run(resource: &Value, urns: Sink<'_>) -> Result<(), FhirError> {
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
