//! The consume loop: connect, declare, consume, hand over; on any loss,
//! back off with jitter and do it again.

use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::config::{QueueConfig, QueueKind, RabbitConfig};
use super::headers::field_table_to_json;

/// Numbers channels across sessions, so that acks never mix them up.
static CHANNELS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Bytes of an oversized body kept for its dead letter (at most
/// `max_message_bytes`).
pub const OVERSIZED_PREFIX: usize = 16 * 1024;

/// One delivered message, not yet acknowledged.
#[derive(Debug)]
pub struct SourceMessage {
    /// The queue config it came from.
    pub queue: Arc<QueueConfig>,
    /// Whether it came from the queue's parking queue: the broker's
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
    /// The body, or only its first [`OVERSIZED_PREFIX`] bytes when it is
    /// larger than `max_message_bytes` (see `body_size`).
    pub body: Vec<u8>,
    /// The body's full size in bytes.
    pub body_size: u64,
    /// Why this message's properties cannot be read (parking queue: what
    /// made the client library drop the connection) or are refused
    /// (headers nested deeper than the limit): each problem found, empty
    /// when none. Such a message is parked as `amqp_unparseable`.
    pub unreadable: Vec<String>,
    /// Identifies the channel it came on, unique for the life of the
    /// process (a reconnect opens new channels with new numbers).
    pub channel: u64,
    /// The delivery tag on that channel.
    pub delivery_tag: u64,
    pub(super) acker: Acker,
}

/// How a message is acknowledged: on its `lapin` channel, or through the
/// parking-queue reader that holds its connection.
#[derive(Debug)]
pub(super) enum Acker {
    Lapin(lapin::Acker),
    Raw(mpsc::Sender<RawAck>),
}

/// An ack request to the parking-queue reader, answered once sent.
#[derive(Debug)]
pub(super) struct RawAck {
    pub(super) delivery_tag: u64,
    pub(super) done: tokio::sync::oneshot::Sender<bool>,
}

fn gone() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
        lapin::ChannelState::Closed,
        "the parking-queue connection is gone",
    ))
}

impl SourceMessage {
    /// Acknowledges the message. Call only after its outputs committed. An
    /// error means the channel is gone (the broker will redeliver, and the
    /// store will recognise the redelivery).
    pub async fn ack(&self) -> Result<(), lapin::Error> {
        self.ack_with(false).await
    }

    /// Acknowledges this message and every earlier one on its channel
    /// (`multiple`): one frame for a whole committed batch. Call only when
    /// every earlier delivery of the channel is committed too.
    pub async fn ack_up_to(&self) -> Result<(), lapin::Error> {
        self.ack_with(true).await
    }

    async fn ack_with(&self, multiple: bool) -> Result<(), lapin::Error> {
        match &self.acker {
            Acker::Lapin(a) => a.ack(BasicAckOptions { multiple }).await.map(|_| ()),
            Acker::Raw(tx) => {
                let (done, answer) = tokio::sync::oneshot::channel();
                tx.send(RawAck {
                    delivery_tag: self.delivery_tag,
                    done,
                })
                .await
                .map_err(|_| gone())?;
                match answer.await {
                    Ok(true) => Ok(()),
                    _ => Err(gone()),
                }
            }
        }
    }
}

/// The source's connection state, for readiness, liveness and the
/// dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    /// Consuming every queue now.
    pub connected: bool,
    /// Successful connections so far (all queues).
    pub connects: u64,
    /// Why the last session of any queue ended (no credentials in it).
    pub last_error: Option<String>,
    /// Each queue's own state (one connection per queue).
    pub queues: BTreeMap<String, QueueState>,
}

/// One queue's consumer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueState {
    /// Consuming now.
    pub connected: bool,
    /// Sessions in a row that the client library ended because it could
    /// not read a frame the broker sent (a message it cannot parse), with
    /// no healthy minute in between.
    pub unreadable_in_a_row: u32,
    /// The queue is wedged: a message the client cannot read keeps coming
    /// back (more often than the broker's delivery limit allows), so that
    /// nothing behind it is consumed. `/healthz` fails.
    pub wedged: bool,
    /// Why the last session ended.
    pub last_error: Option<String>,
}

impl SourceState {
    /// Queues that are wedged.
    pub fn wedged(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, q)| q.wedged)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// A session lasting this long without trouble clears a queue's count of
/// unreadable frames.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Consumes until `shutdown` turns true, each queue on a connection of its
/// own (one message that breaks a connection stops only its queue), and
/// each quorum queue's parking queue through the tolerant reader.
/// Returns the live connections so that the caller can finish acking the
/// messages in flight before closing them.
pub async fn run(
    config: RabbitConfig,
    tx: mpsc::Sender<SourceMessage>,
    state: watch::Sender<SourceState>,
    shutdown: watch::Receiver<bool>,
) -> Vec<Connection> {
    let config = Arc::new(config);
    state.send_modify(|s| {
        for q in &config.queues {
            s.queues.insert(q.name.clone(), QueueState::default());
        }
    });
    let mut consumers = Vec::new();
    let mut parkers = Vec::new();
    for q in config.queues.iter().cloned().map(Arc::new) {
        if q.kind == QueueKind::Quorum {
            parkers.push(tokio::spawn(super::park::run(
                config.clone(),
                q.clone(),
                tx.clone(),
                shutdown.clone(),
            )));
        }
        consumers.push(tokio::spawn(queue_loop(
            config.clone(),
            q,
            tx.clone(),
            state.clone(),
            shutdown.clone(),
        )));
    }
    drop(tx);
    let mut out = Vec::new();
    for c in consumers {
        if let Ok(Some(conn)) = c.await {
            out.push(conn);
        }
    }
    for p in parkers {
        let _ = p.await;
    }
    out
}

/// A fresh channel number for a new session.
pub(super) fn next_channel() -> u64 {
    CHANNELS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One queue's connect–consume–reconnect loop.
async fn queue_loop(
    config: Arc<RabbitConfig>,
    queue: Arc<QueueConfig>,
    tx: mpsc::Sender<SourceMessage>,
    state: watch::Sender<SourceState>,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Connection> {
    let mut delay = config.reconnect_min;
    // A broker with a delivery limit moves an unreadable message away
    // after that many deliveries; a few more sessions lost to one means it
    // does not (a classic queue, or a broker that does not count them).
    let wedged_after = match queue.kind {
        QueueKind::Quorum => queue.delivery_limit.saturating_add(5),
        QueueKind::Classic => 5,
    };
    loop {
        if *shutdown.borrow() {
            return None;
        }
        let mut connected = false;
        let mut stop = shutdown.clone();
        let result = tokio::select! {
            // Biased: at shutdown a consuming session returns its
            // connection, for the acks still to come.
            biased;
            r = session(&config, &queue, &tx, &state, &mut shutdown, &mut connected) => r,
            // A session stuck connecting or declaring does not hold up
            // shutdown.
            () = wait_true(&mut stop) => return None,
        };
        match result {
            Ok(conn) => return conn,
            Err(e) => {
                let message = e.to_string();
                let unreadable = e.is_unreadable_frame();
                let mut wedged = false;
                state.send_modify(|s| {
                    s.last_error = Some(message.clone());
                    if let Some(q) = s.queues.get_mut(&queue.name) {
                        q.connected = false;
                        q.last_error = Some(message.clone());
                        if unreadable {
                            q.unreadable_in_a_row = q.unreadable_in_a_row.saturating_add(1);
                        } else if connected {
                            q.unreadable_in_a_row = 0;
                        }
                        q.wedged = q.unreadable_in_a_row >= wedged_after;
                        wedged = q.wedged;
                    }
                    s.connected = s.queues.values().all(|q| q.connected);
                });
                if connected {
                    delay = config.reconnect_min;
                }
                let wait = jitter(delay);
                if wedged {
                    error!(queue = %queue.name, error = %message, "a message the client cannot read keeps coming back and blocks the queue; /healthz fails");
                } else if e.is_permanent() {
                    error!(queue = %queue.name, error = %message, retry_in_ms = wait.as_millis() as u64, "rabbitmq session failed; this will not change until the config or the broker does");
                } else {
                    warn!(queue = %queue.name, error = %message, retry_in_ms = wait.as_millis() as u64, "rabbitmq session ended; reconnecting");
                }
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = wait_true(&mut shutdown) => return None,
                }
                delay = (delay * 2).min(config.reconnect_max);
            }
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
pub(super) async fn wait_true(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Amqp(#[from] lapin::Error),
    #[error("{}", declare_message(.queue, .error))]
    Declare { queue: String, error: lapin::Error },
    #[error("consumer stream ended: the broker closed the channel or connection")]
    StreamEnded,
    #[error("the pipeline stopped")]
    PipelineGone,
}

impl SessionError {
    /// The client library could not parse a frame the broker sent.
    fn is_unreadable_frame(&self) -> bool {
        match self {
            Self::Amqp(e) | Self::Declare { error: e, .. } => {
                matches!(e.kind(), lapin::ErrorKind::ParsingError(_))
            }
            Self::StreamEnded | Self::PipelineGone => false,
        }
    }

    /// Retrying cannot help until something changes (a queue declared
    /// with other arguments, missing rights).
    fn is_permanent(&self) -> bool {
        match self {
            Self::Declare { error, .. } => precondition_failed(error) || access_refused(error),
            Self::Amqp(e) => access_refused(e),
            Self::StreamEnded | Self::PipelineGone => false,
        }
    }
}

fn reply_code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

fn precondition_failed(e: &lapin::Error) -> bool {
    reply_code(e) == Some(406) || e.to_string().contains("PRECONDITION_FAILED")
}

fn access_refused(e: &lapin::Error) -> bool {
    reply_code(e) == Some(403) || e.to_string().contains("ACCESS_REFUSED")
}

fn declare_message(queue: &str, error: &lapin::Error) -> String {
    if precondition_failed(error) {
        format!(
            "declaring queue `{queue}`: the broker refuses ({error}): the queue exists with other arguments \
             (a classic queue, or another delivery limit). Set `kind: classic` on this queue in rabbitmq.queues \
             to consume it as it is (without the broker's poison-message guard), or move it to a quorum queue \
             (docs/deploy.md, \"Moving a classic queue to quorum\")"
        )
    } else {
        format!("declaring queue `{queue}`: {error}")
    }
}

async fn session(
    config: &RabbitConfig,
    q: &Arc<QueueConfig>,
    tx: &mpsc::Sender<SourceMessage>,
    state: &watch::Sender<SourceState>,
    shutdown: &mut watch::Receiver<bool>,
    connected: &mut bool,
) -> Result<Option<Connection>, SessionError> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(format!(
        "kiungo@{} {}",
        hostname(),
        q.name
    )));
    let conn = Connection::connect(&config.url, props).await?;
    *connected = true;
    let channel = conn.create_channel().await?;
    let channel_no = next_channel();
    channel
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await?;
    declare(&channel, q).await?;
    let mut consumer = channel
        .basic_consume(
            q.name.as_str().into(),
            ShortString::from(format!("kiungo-{}", q.name)),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    state.send_modify(|s| {
        s.connects += 1;
        if let Some(qs) = s.queues.get_mut(&q.name) {
            qs.connected = true;
        }
        s.connected = s.queues.values().all(|q| q.connected);
    });
    info!(queue = %q.name, prefetch = config.prefetch, "rabbitmq connected; consuming");
    let healthy = tokio::time::sleep(HEALTHY_AFTER);
    tokio::pin!(healthy);
    let mut cleared = false;
    loop {
        tokio::select! {
            next = consumer.next() => match next {
                None => return Err(SessionError::StreamEnded),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(d)) => {
                    let msg = to_message(config, q, channel_no, d);
                    if tx.send(msg).await.is_err() {
                        return Err(SessionError::PipelineGone);
                    }
                }
            },
            () = &mut healthy, if !cleared => {
                cleared = true;
                state.send_modify(|s| {
                    if let Some(qs) = s.queues.get_mut(&q.name) {
                        qs.unreadable_in_a_row = 0;
                        qs.wedged = false;
                    }
                });
            }
            _ = shutdown.changed() => {
                if *shutdown.borrow() {
                    state.send_modify(|s| {
                        if let Some(qs) = s.queues.get_mut(&q.name) {
                            qs.connected = false;
                        }
                        s.connected = false;
                    });
                    return Ok(Some(conn));
                }
            }
        }
    }
}

/// From a `lapin` delivery to a [`SourceMessage`]: an oversized body is
/// cut to its first bytes at once (the memory returns before the message
/// waits for the pipeline), the header table converted depth-limited.
fn to_message(
    config: &RabbitConfig,
    q: &Arc<QueueConfig>,
    channel: u64,
    d: lapin::message::Delivery,
) -> SourceMessage {
    let lapin::message::Delivery {
        delivery_tag,
        routing_key,
        redelivered,
        properties,
        mut data,
        acker,
        ..
    } = d;
    let body_size = data.len() as u64;
    if data.len() > config.max_message_bytes {
        data.truncate(OVERSIZED_PREFIX.min(config.max_message_bytes));
        data.shrink_to_fit();
    }
    let headers = properties
        .headers()
        .as_ref()
        .map(field_table_to_json)
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    let mut unreadable = Vec::new();
    if let Some(depth) = properties
        .headers()
        .as_ref()
        .map(super::headers::nesting)
        .filter(|d| *d > super::raw::MAX_HEADER_DEPTH)
    {
        unreadable.push(format!(
            "headers nested {depth} levels deep (more than {})",
            super::raw::MAX_HEADER_DEPTH
        ));
    }
    let msg = SourceMessage {
        queue: q.clone(),
        overflow: false,
        routing_key: routing_key.as_str().to_owned(),
        message_id: properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned()),
        timestamp_ms: properties
            .timestamp()
            .and_then(|t| i64::try_from(t).ok())
            .map(|t| t.saturating_mul(1000)),
        headers,
        redelivered,
        body: data,
        body_size,
        unreadable,
        channel,
        delivery_tag,
        acker: Acker::Lapin(acker),
    };
    super::headers::drop_flat(properties);
    msg
}

/// The arguments Kiungo declares `q` with: for a quorum queue
/// `x-queue-type: quorum`, `x-delivery-limit` and dead-lettering through
/// the default exchange to `<name>.overflow`; none for a classic queue.
/// Publishers that declare the queue too must use the same.
pub fn queue_arguments(q: &QueueConfig) -> FieldTable {
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
    }
    args
}

async fn declare(channel: &lapin::Channel, q: &QueueConfig) -> Result<(), SessionError> {
    let options = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let args = queue_arguments(q);
    if q.kind == QueueKind::Quorum {
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
pub(super) fn jitter(delay: Duration) -> Duration {
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
