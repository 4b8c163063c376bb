//! Kiungo's service core: the command line, and (as later issues land) the
//! durable store, the ingest pipeline, delivery workers and the admin API.
//!
//! The path of one event is described in `ARCHITECTURE.md`.

pub mod admin;
pub mod app;
pub mod cli;
pub mod config;
pub mod config_check;
pub mod delivery;
pub mod dlq;
pub mod dlq_cli;
pub mod feedback;
pub mod ingest;
pub mod memory_budget;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod sandbox;
pub mod signals;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod yaml_problems;
