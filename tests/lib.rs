//! Kiungo's end-to-end tests. They live under `tests/tests/` and run
//! against real parts: the shipped mapping packs now, and (as the ingest and
//! delivery issues land) RabbitMQ, PostgreSQL and the FHIR/DHIS2 simulators.

pub mod harness;
pub mod workload;
