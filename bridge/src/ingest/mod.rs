//! The ingest pipeline: a message arrives (AMQP or HTTP), is mapped, and
//! is committed to the store with others in one transaction; only then is
//! it acknowledged (AMQP) or answered 202 (HTTP).
//!
//! ```text
//! rabbitmq source ──► mapper task ──┐
//!                                   ├──► committer ──► store.commit(batch) ──► ack / 202
//! POST /v1/events/{source} ─────────┘
//! ```
//!
//! Nothing is dropped: a message that cannot be mapped goes through the
//! same commit as a dead letter, with its reason, and is acknowledged only
//! then. When the store is down, the committer retries the batch with
//! backoff and holds the messages unacknowledged; the broker stops sending
//! at the prefetch limit, so memory stays bounded.

mod amqp;
pub mod auth;
mod committer;
pub mod content_type;
#[cfg(test)]
mod fuzz;
pub mod http;
mod http_config;
mod prepare;
pub mod rate_limit;
pub mod refusal;

pub use amqp::run_mapper;
pub use committer::{BatchConfig, Committer, CommitterHandle, Counters, Done, Work};
pub use http_config::{HttpIngestConfig, IngestAuth};
pub use prepare::{Limits, Origin, prepare, prepare_received};
pub use rate_limit::RateLimitConfig;
