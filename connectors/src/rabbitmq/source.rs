//! The consume loop: connect, declare, consume, hand over; on any loss,
//! back off with jitter and do it again.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::select_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::config::{QueueConfig, QueueKind, RabbitConfig};
use super::headers::field_table_to_json;

/// Numbers channels across sessions, so that acks never mix them up.
static CHANNELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// One delivered message, not yet acknowledged.
#[derive(Debug)]
pub struct SourceMessage {
    /// The queue config it came from.
    pub queue: Arc<QueueConfig>,
    /// Whether it came from the queue's overflow queue: the broker's
    /// delivery limit tripped, and it is to be parked as is.
    pub overflow: bool,
    /// The routing key it was published with.
    pub routing_key: String,
    /// AMQP `message_id`.
    pub message_id: Option<String>,
    /// AMQP `timestamp` (POSIX seconds) in milliseconds.
    pub timestamp_ms: Option<i64>,
    /// AMQP headers as a JSON object.
    pub headers: serde_json::Value,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// The body.
    pub body: Vec<u8>,
    /// Identifies the channel it came on, unique for the life of the
    /// process (a reconnect opens new channels with new numbers).
    pub channel: u64,
    /// The delivery tag on that channel.
    pub delivery_tag: u64,
    acker: lapin::Acker,
}

impl SourceMessage {
    /// Acknowledges the message. Call only after its outputs committed. An
    /// error means the channel is gone (the broker will redeliver, and the
    /// store will recognise the redelivery).
    pub async fn ack(&self) -> Result<(), lapin::Error> {
        self.acker.ack(BasicAckOptions::default()).await.map(|_| ())
    }

    /// Acknowledges this message and every earlier one on its channel
    /// (`multiple`): one frame for a whole committed batch. Call only when
    /// every earlier delivery of the channel is committed too.
    pub async fn ack_up_to(&self) -> Result<(), lapin::Error> {
        self.acker
            .ack(BasicAckOptions { multiple: true })
            .await
            .map(|_| ())
    }
}

/// The source's connection state, for readiness and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Consuming now.
    pub connected: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Why the last session ended (no credentials in it).
    pub last_error: Option<String>,
}

/// Consumes until `shutdown` turns true, reconnecting as needed. Returns
/// the live connection, if any, so that the caller can finish acking the
/// messages in flight before dropping it.
pub async fn run(
    config: RabbitConfig,
    tx: mpsc::Sender<SourceMessage>,
    state: watch::Sender<SourceState>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Connection> {
    let queues: Vec<Arc<QueueConfig>> = config.queues.iter().cloned().map(Arc::new).collect();
    let mut delay = config.reconnect_min;
    loop {
        if *shutdown.borrow() {
            return None;
        }
        match session(&config, &queues, &tx, &state, &mut shutdown).await {
            Ok(conn) => return conn,
            Err(e) => {
                let message = e.to_string();
                let was_connected = state.borrow().connected;
                state.send_modify(|s| {
                    s.connected = false;
                    s.last_error = Some(message.clone());
                });
                if was_connected {
                    delay = config.reconnect_min;
                }
                let wait = jitter(delay);
                warn!(error = %message, retry_in_ms = wait.as_millis() as u64, "rabbitmq session ended; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => return None,
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
        }
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error(
        "declaring queue `{queue}`: {error} (does it exist with other arguments, e.g. classic vs quorum?)"
    )]
    Declare { queue: String, error: lapin::Error },
    #[error("consumer stream ended: the broker closed the channel or connection")]
    StreamEnded,
    #[error("the pipeline stopped")]
    PipelineGone,
}

async fn session(
    config: &RabbitConfig,
    queues: &[Arc<QueueConfig>],
    tx: &mpsc::Sender<SourceMessage>,
    state: &watch::Sender<SourceState>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<Connection>, SessionError> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(format!("kiungo@{}", hostname())));
    let conn = Connection::connect(&config.url, props).await?;
    let mut streams = Vec::new();
    for q in queues {
        let channel = conn.create_channel().await?;
        let channel_no = CHANNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        declare(&channel, q).await?;
        let mut names = vec![(q.name.clone(), false)];
        if q.kind == QueueKind::Quorum {
            names.push((q.overflow_queue(), true));
        }
        for (name, overflow) in names {
            let consumer = channel
                .basic_consume(
                    name.as_str().into(),
                    ShortString::from(format!("kiungo-{name}")),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let q = q.clone();
            streams.push(
                consumer
                    .map(move |d| (q.clone(), overflow, channel_no, d))
                    .boxed(),
            );
        }
    }
    state.send_modify(|s| {
        s.connected = true;
        s.connects += 1;
    });
    info!(
        queues = queues.len(),
        prefetch = config.prefetch,
        "rabbitmq connected; consuming"
    );
    let mut all = select_all(streams);
    loop {
        tokio::select! {
            next = all.next() => match next {
                None => return Err(SessionError::StreamEnded),
                Some((_, _, _, Err(e))) => return Err(e.into()),
                Some((queue, overflow, channel, Ok(d))) => {
                    let headers = d.properties.headers().as_ref().map(field_table_to_json)
                        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
                    let msg = SourceMessage {
                        queue,
                        overflow,
                        routing_key: d.routing_key.as_str().to_owned(),
                        message_id: d.properties.message_id().as_ref().map(|m| m.as_str().to_owned()),
                        timestamp_ms: d.properties.timestamp().and_then(|t| i64::try_from(t).ok()).map(|t| t.saturating_mul(1000)),
                        headers,
                        redelivered: d.redelivered,
                        body: d.data,
                        channel,
                        delivery_tag: d.delivery_tag,
                        acker: d.acker,
                    };
                    if tx.send(msg).await.is_err() {
                        return Err(SessionError::PipelineGone);
                    }
                }
            },
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    state.send_modify(|s| s.connected = false);
                    return Ok(Some(conn));
                }
            }
        }
    }
}

async fn declare(channel: &lapin::Channel, q: &QueueConfig) -> Result<(), SessionError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut args = FieldTable::default();
    if q.kind == QueueKind::Quorum {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongInt(i32::try_from(q.delivery_limit).unwrap_or(i32::MAX)),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(q.overflow_queue())),
        );
        let mut overflow_args = FieldTable::default();
        overflow_args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
        channel
            .queue_declare(q.overflow_queue().as_str().into(), options, overflow_args)
            .await
            .map_err(|error| SessionError::Declare {
                queue: q.overflow_queue(),
                error,
            })?;
    }
    channel
        .queue_declare(q.name.as_str().into(), options, args)
        .await
        .map_err(|error| SessionError::Declare {
            queue: q.name.clone(),
            error,
        })?;
    if let Some(bind) = &q.bind {
        channel
            .exchange_declare(
                bind.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        for key in &bind.routing_keys {
            channel
                .queue_bind(
                    q.name.as_str().into(),
                    bind.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
    }
    Ok(())
}

/// Full jitter: a uniform wait in `[0, delay]`, from the clock's nanoseconds
/// (no need for a random-number crate: replicas only need to differ).
fn jitter(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    let frac = (x % 10_000) as f64 / 10_000.0;
    delay.mul_f64(frac).max(Duration::from_millis(10))
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_the_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(2));
            assert!(d <= Duration::from_secs(2) && d >= Duration::from_millis(10));
        }
    }
}
