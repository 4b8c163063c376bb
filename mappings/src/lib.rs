//! Kiungo's mapping engine.
//!
//! A mapping is a YAML file, data and never code, that turns one kind of
//! mHealth app event (a CHT report, a CommCare form, a Kobo submission, ...)
//! into FHIR R4 transaction-bundle entries and DHIS2 aggregate contributions.
//!
//! The guarantees this crate gives the rest of Kiungo:
//! - **Checked at load.** [`MappingSet::load_dir`] rejects unknown keys,
//!   expressions that do not parse, references to undefined bindings or
//!   tables, invalid period types, malformed DHIS2 ids, duplicate mapping ids
//!   and FHIR resources that do not validate, each with file, line and field.
//!   Every mapping carries test cases, and loading runs them.
//! - **Deterministic.** Mapping the same event twice yields the same outputs,
//!   including the same resource ids (UUIDv5 from source, event id and
//!   resource name), so a replay never duplicates anything downstream.
//! - **Total.** [`MappingSet::map`] returns outputs or a [`MapError`] naming
//!   the mapping, the field and the event id; it never panics, whatever the
//!   input, and expression evaluation is bounded by a fuel limit.
//! - **Quiet about people.** Error messages name fields and ids, never the
//!   values of an event: those travel apart ([`MapError::values`]), for
//!   operators only; text made by others is cut by [`redact::external`].

mod constants;
mod context;
mod direct;
mod error;
mod event_fields;
mod expr;
mod functions;
mod include;
mod json;
mod mapping;
mod output;
pub mod period;
pub mod redact;
mod shared_lets;
mod spec;
pub mod static_refs;
mod table;
mod template;
mod testcase;
mod yaml_place;

pub use error::{LoadError, LoadErrors, MapError, TemplatePlace};
pub use event_fields::FieldReport;
pub use expr::PseudonymKey;
pub use mapping::{Event, LoadOptions, Mapping, MappingSet};
pub use output::{
    Aggregation, DEFAULT_COMBO, Dhis2Contribution, FhirEntry, FhirRequest, MappedEvent,
};
pub use period::PeriodType;
pub use testcase::{TestFailure, TestReport};
