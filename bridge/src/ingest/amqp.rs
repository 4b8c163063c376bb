//! From AMQP deliveries to committer work: route, map, hand over.

use std::sync::Arc;

use kiungo_connectors::rabbitmq::SourceMessage;
use kiungo_mappings::MappingSet;
use tokio::sync::mpsc;

use super::committer::{CommitterHandle, Done, Work};
use super::prepare::{Limits, Origin, prepare};
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
        let mut ingest = prepare(&set, origin, body, limits);
        if msg.overflow {
            ingest.result = Err(Rejection {
                code: "delivery_limit".into(),
                reason: format!(
                    "message {}: delivered more than {} times from queue `{}` without being acknowledged \
                     (the process died while handling it?); the broker moved it to `{}`",
                    msg.message_id.as_deref().unwrap_or("(no message id)"),
                    msg.queue.delivery_limit,
                    msg.queue.name,
                    msg.queue.overflow_queue()
                ),
                mapping: None,
                event_id: None,
                detail: None,
            });
        }
        if committer
            .send(Work {
                ingest,
                done: Done::Amqp(Box::new(msg)),
            })
            .await
            .is_err()
        {
            return;
        }
    }
}
