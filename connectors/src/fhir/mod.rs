//! FHIR sink: posts transaction bundles to a FHIR R4 server.
//!
//! **The guarantee**: a transaction is all or nothing on the server, so a
//! bundle is either delivered (a `transaction-response` came back) or
//! not; every failure says whether sending the same bundle again can help
//! ([`Retryable`](crate::retry::Retryable)). Error messages carry the HTTP
//! status and the server's OperationOutcome, never the bundle or any
//! resource in it (personal data).

mod client;
mod config;
#[cfg(test)]
mod fuzz;
mod response;
#[cfg(test)]
mod tests;

pub use client::FhirClient;
pub use config::FhirConfig;
pub use response::{EntryResponse, FhirError, Issue, TransactionResponse};
