//! RabbitMQ source (AMQP 0.9.1, `lapin`).
//!
//! **The guarantee**: this module never acknowledges a message on its own.
//! It hands each delivery to the pipeline with its [`Acker`](lapin::Acker);
//! the pipeline acks only after the event's outputs, or its dead letter,
//! are committed. Nothing is ever requeued hot: a message that cannot be
//! processed is parked by the pipeline and then acked. If the connection
//! drops, unacked messages return to the queue and are redelivered after
//! the reconnect; the store recognises them.

mod config;
#[cfg(test)]
mod fuzz;
mod headers;
mod park;
mod probe;
mod publisher;
pub mod raw;
mod source;

pub use config::{Binding, QueueConfig, QueueKind, RabbitConfig, Route};
pub use headers::field_table_to_json;
pub use probe::QueueProbe;
pub use publisher::{ConfirmedPublisher, Outgoing};
pub use source::{OVERSIZED_PREFIX, QueueState, SourceMessage, SourceState, queue_arguments, run};
