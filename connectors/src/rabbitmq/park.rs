//! The parking-queue reader: a quorum queue dead-letters a message that
//! was delivered more than `delivery_limit` times without an ack (it
//! killed the connection or the process each time) into
//! `<queue>.overflow`. This task reads that queue with the tolerant
//! client ([`super::raw`]), one message at a time, hands each to the
//! pipeline to be parked (`amqp_unparseable` when `lapin` cannot read its
//! properties, `delivery_limit` otherwise) and acks it once its dead
//! letter is committed. At most `max_message_bytes` of a body is held.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::config::{QueueConfig, RabbitConfig};
use super::raw::{RawConnection, RawError};
use super::source::{
    Acker, OVERSIZED_PREFIX, RawAck, SourceMessage, jitter, next_channel, wait_true,
};

/// How often an empty parking queue is looked at again.
const POLL: Duration = Duration::from_secs(5);
/// Longest wait for the broker's answers while connecting.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, once shutdown began, a handed-over message may wait for its
/// ack before the connection closes (it is then redelivered later).
const ACK_GRACE: Duration = Duration::from_secs(30);

/// Reads `queue`'s parking queue until shutdown.
pub(super) async fn run(
    config: Arc<RabbitConfig>,
    queue: Arc<QueueConfig>,
    tx: mpsc::Sender<SourceMessage>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = config.reconnect_min;
    loop {
        if *shutdown.borrow() {
            return;
        }
        match session(&config, &queue, &tx, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                let wait = jitter(delay).max(config.reconnect_min);
                if e.is_retryable() {
                    debug!(queue = %queue.overflow_queue(), error = %e, "parking-queue reader: retrying");
                } else {
                    warn!(queue = %queue.overflow_queue(), error = %e, "parking-queue reader failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wait_true(&mut shutdown) => return,
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
        }
    }
}

async fn session(
    config: &RabbitConfig,
    queue: &Arc<QueueConfig>,
    tx: &mpsc::Sender<SourceMessage>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), RawError> {
    let name = queue.overflow_queue();
    let label = format!("kiungo parking {name}");
    let connect = RawConnection::connect(&config.url, &label);
    let mut conn = tokio::select! {
        c = tokio::time::timeout(CONNECT_TIMEOUT, connect) => c.map_err(|_| {
            RawError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting"))
        })??,
        () = wait_true(shutdown) => return Ok(()),
    };
    let channel = next_channel();
    let keep = config.max_message_bytes;
    loop {
        let Some(mut raw) = conn.get(&name, keep).await? else {
            tokio::select! {
                () = tokio::time::sleep(POLL) => continue,
                () = wait_true(shutdown) => {
                    conn.close().await;
                    return Ok(());
                }
            }
        };
        if raw.body_size > keep as u64 {
            raw.body.truncate(OVERSIZED_PREFIX.min(keep));
            raw.body.shrink_to_fit();
        }
        let (acks, mut ack_rx) = mpsc::channel::<RawAck>(1);
        let msg = SourceMessage {
            queue: queue.clone(),
            overflow: true,
            routing_key: raw.routing_key,
            message_id: raw.message_id,
            timestamp_ms: raw
                .timestamp
                .and_then(|t| i64::try_from(t).ok())
                .map(|t| t.saturating_mul(1000)),
            headers: raw.headers,
            redelivered: raw.redelivered,
            body: raw.body,
            body_size: raw.body_size,
            unreadable: raw.problems,
            channel,
            delivery_tag: raw.delivery_tag,
            acker: Acker::Raw(acks),
        };
        if tx.send(msg).await.is_err() {
            conn.close().await;
            return Ok(());
        }
        let grace = async {
            wait_true(shutdown).await;
            tokio::time::sleep(ACK_GRACE).await;
        };
        let request = tokio::select! {
            r = ack_rx.recv() => r,
            () = grace => None,
        };
        let Some(request) = request else {
            // Dropped unacknowledged: the broker gets it back on close.
            conn.close().await;
            return Err(RawError::Protocol(
                "a parked message was not acknowledged; it stays in the parking queue".into(),
            ));
        };
        let sent = conn.ack(request.delivery_tag, false).await;
        let _ = request.done.send(sent.is_ok());
        sent?;
    }
}
