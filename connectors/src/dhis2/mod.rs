//! DHIS2 sink: pushes aggregate data values to `/api/dataValueSets`, and
//! checks beforehand that the metadata they name exists.
//!
//! **The guarantee**: an answer DHIS2 gave about the values is never an
//! `Err`. An import summary (HTTP 200, or 409 from 2.38 on) comes back as
//! an [`ImportOutcome`] saying which values were stored and which were
//! rejected, with DHIS2's message for each; a 409 WARNING is a partial
//! success, not a reason to resend the batch. Only failures to get such
//! an answer are [`Dhis2Error`]s, each classified
//! ([`Retryable`](crate::retry::Retryable)).

mod client;
mod completeness;
mod config;
#[cfg(test)]
mod fuzz;
mod import_summary;
mod metadata;
mod metadata_links;
mod read_back;
mod system;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_completeness;
#[cfg(test)]
mod tests_metadata_links;
#[cfg(test)]
mod tests_read_back;

pub use client::{DataValue, Dhis2Client};
pub use completeness::Registration;
pub use config::Dhis2Config;
pub use import_summary::{Conflict, Dhis2Error, ImportOutcome, ImportStatus};
pub use metadata::{MissingReference, PreflightReport, ReferenceKind, References};
pub use metadata_links::{
    AttributeOptions, DataElementLinks, DataSetLinks, DataSetTimeliness, MetadataLinks,
    OptionComboLinks, OrgUnitLinks,
};
pub use read_back::{
    DataSetElement, MAX_POLITE_WAIT, ORG_UNITS_PER_READ, ReadRequest, StoredValue,
};
pub use system::{Me, SystemInfo};
