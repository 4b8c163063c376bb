//! Publishing with publisher confirms: each message counts as sent only
//! once the broker has confirmed it (written to disk for a persistent
//! message on a durable queue). Used for the status messages Kiungo sends
//! back to apps.

use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Routing key.
    pub routing_key: String,
    /// Body (JSON).
    pub body: Vec<u8>,
    /// AMQP `message_id`: a stable id consumers deduplicate on.
    pub message_id: String,
    /// AMQP `timestamp` (seconds).
    pub timestamp: u64,
}

/// A confirmed-publish channel to one exchange.
pub struct ConfirmedPublisher {
    conn: Connection,
    channel: Channel,
    exchange: String,
}

impl std::fmt::Debug for ConfirmedPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfirmedPublisher")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl ConfirmedPublisher {
    /// Connects, enables confirms and, when `declare` is set, declares
    /// `exchange` as a durable topic exchange.
    pub async fn connect(url: &str, exchange: &str, declare: bool) -> Result<Self, lapin::Error> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from("kiungo-feedback"));
        let conn = Connection::connect(url, props).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if declare {
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    ExchangeDeclareOptions {
                        durable: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(Self {
            conn,
            channel,
            exchange: exchange.to_owned(),
        })
    }

    /// Whether the connection is still usable.
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Publishes every message (persistent, JSON) and waits for the
    /// broker's confirms: `true` for each message the broker acked. An
    /// error means the channel failed; no message counts as sent then.
    pub async fn publish(&self, messages: &[Outgoing]) -> Result<Vec<bool>, lapin::Error> {
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            // AMQP short strings hold 255 bytes; lapin panics beyond.
            if m.routing_key.len() > 255 || m.message_id.len() > 255 {
                return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Error,
                    "routing key or message id longer than 255 bytes",
                )));
            }
            let props = BasicProperties::default()
                .with_message_id(m.message_id.as_str().into())
                .with_timestamp(m.timestamp)
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_app_id("kiungo".into());
            confirms.push(
                self.channel
                    .basic_publish(
                        self.exchange.as_str().into(),
                        m.routing_key.as_str().into(),
                        BasicPublishOptions::default(),
                        &m.body,
                        props,
                    )
                    .await?,
            );
        }
        join_all(confirms)
            .await
            .into_iter()
            .map(|c| c.map(|c| c.is_ack()))
            .collect()
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "kiungo shutting down".into()).await;
    }
}
