//! Kiungo's connectors: where events come from and where outputs go.
//!
//! One folder per connector, the same files each time (`mod.rs`,
//! `config.rs`, ...):
//! - [`rabbitmq`]: the AMQP source (durable queues, manual acks after commit);
//! - [`fhir`]: the FHIR sink's client (transaction bundles to `[base]`);
//! - [`dhis2`]: the DHIS2 sink's client (`dataValueSets`, metadata preflight).
//!
//! Shared by the HTTP sinks:
//! - [`auth`]: secrets that never print, Basic / Bearer / DHIS2 ApiToken /
//!   OAuth2 client credentials;
//! - [`retry`]: how failures classify themselves ([`retry::Retryable`],
//!   `Retry-After`);
//! - [`ConfigError`]: why a sink's config cannot be used.

pub mod auth;
pub mod dhis2;
pub mod fhir;
mod http;
pub use http::{MIN_COMPRESSED_BODY, gunzip, gzip};
pub mod rabbitmq;
pub mod retry;

pub use http::ConfigError;
