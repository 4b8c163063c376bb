//! Kiungo's connectors: where events come from and where outputs go.
//!
//! One folder per connector, the same files each time (`mod.rs`,
//! `config.rs`, ...):
//! - [`rabbitmq`]: the AMQP source (durable queues, manual acks after commit);
//! - `fhir`: the FHIR transaction-bundle sink (delivery issue);
//! - `dhis2`: the DHIS2 `dataValueSets` sink (delivery issue).

pub mod rabbitmq;
