//! Kiungo's connectors: where events come from and where outputs go.
//!
//! One folder per connector, the same files each time (`mod.rs`,
//! `config.rs`, `service.rs`, ...). The ingest and delivery issues fill them:
//! - `rabbitmq`: the AMQP source (durable queues, manual acks after commit);
//! - `fhir`: the FHIR transaction-bundle sink;
//! - `dhis2`: the DHIS2 `dataValueSets` sink.
//!
//! Nothing is implemented here yet: this crate only reserves the layout so
//! that the workspace builds as it will be shipped.
