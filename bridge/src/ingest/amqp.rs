//! From AMQP deliveries to committer work: route, map, hand over.

use std::sync::Arc;

use kiungo_connectors::rabbitmq::SourceMessage;
use kiungo_mappings::MappingSet;
use tokio::sync::mpsc;

use super::committer::{CommitterHandle, Done, Work};
use super::prepare::{Limits, Origin, prepare_received};
use crate::store::Rejection;

/// Maps deliveries in arrival order and queues them for commit. Ends when
/// the source stops.
pub async fn run_mapper(
    set: Arc<MappingSet>,
    limits: Limits,
    mut rx: mpsc::Receiver<SourceMessage>,
    committer: CommitterHandle,
) {
    while let Some(mut msg) = rx.recv().await {
        let route = if msg.overflow {
            Err(String::new())
        } else {
            msg.queue.route_for(&msg.routing_key, &msg.headers)
        };
        let origin = Origin {
            source: msg.queue.source.clone(),
            queue: Some(msg.queue.name.clone()),
            message_id: msg.message_id.clone(),
            timestamp_ms: msg.timestamp_ms,
            headers: Some(msg.headers.clone()),
            route,
        };
        let body = std::mem::take(&mut msg.body);
        let kept = body.len();
        let (mut ingest, span) = prepare_received(&set, origin, body, limits);
        if msg.overflow {
            ingest.result = Err(parked_by_broker(&msg, kept));
        } else if !msg.unreadable.is_empty() {
            ingest.result = Err(Rejection {
                code: "amqp_unparseable".into(),
                reason: format!(
                    "message {}: its AMQP properties are refused ({})",
                    msg.message_id.as_deref().unwrap_or("(no message id)"),
                    kiungo_connectors::rabbitmq::raw::describe_problems(&msg.unreadable)
                ),
                detail: None,
                mapping: None,
                event_id: None,
            });
        } else if msg.body_size > limits.max_bytes as u64 {
            // The source kept only the body's first bytes: park those and
            // the size, never the whole body.
            ingest.result = Err(Rejection {
                code: "too_large".into(),
                reason: format!(
                    "message {}: body is {} bytes, over the limit of {} bytes (the first {kept} bytes are kept)",
                    msg.message_id.as_deref().unwrap_or("(no message id)"),
                    msg.body_size,
                    limits.max_bytes
                ),
                detail: None,
                mapping: None,
                event_id: None,
            });
        }
        if committer
            .send(Work {
                ingest,
                done: Done::Amqp(Box::new(msg)),
                span,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Why the broker moved a message to the parking queue: its properties
/// cannot be read by the client library (`amqp_unparseable`), or it was
/// delivered `delivery_limit` times without an ack (`delivery_limit`).
fn parked_by_broker(msg: &SourceMessage, kept: usize) -> Rejection {
    let id = msg.message_id.as_deref().unwrap_or("(no message id)");
    let size = if msg.body_size > kept as u64 {
        format!("; body is {} bytes, the first {kept} kept", msg.body_size)
    } else {
        String::new()
    };
    if msg.unreadable.is_empty() {
        Rejection {
            code: "delivery_limit".into(),
            reason: format!(
                "message {id}: delivered more than {} times from queue `{}` without being acknowledged \
                 (the process died while handling it?); the broker moved it to `{}`{size}",
                msg.queue.delivery_limit,
                msg.queue.name,
                msg.queue.overflow_queue()
            ),
            detail: None,
            mapping: None,
            event_id: None,
        }
    } else {
        Rejection {
            code: "amqp_unparseable".into(),
            reason: format!(
                "message {id}: the AMQP client cannot read its properties ({}); it dropped the connection \
                 on each of {} deliveries from queue `{}` until the broker moved the message to `{}`{size}",
                kiungo_connectors::rabbitmq::raw::describe_problems(&msg.unreadable),
                msg.queue.delivery_limit,
                msg.queue.name,
                msg.queue.overflow_queue()
            ),
            detail: None,
            mapping: None,
            event_id: None,
        }
    }
}
