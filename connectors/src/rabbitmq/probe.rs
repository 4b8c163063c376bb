//! Queue depth, for the queue-lag gauge: a passive declare reports how
//! many messages are ready in a queue without changing it.

use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties};

/// A connection that reads queue depths.
pub struct QueueProbe {
    conn: Connection,
    channel: Channel,
}

impl std::fmt::Debug for QueueProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueProbe").finish_non_exhaustive()
    }
}

impl QueueProbe {
    /// Connects.
    pub async fn connect(url: &str) -> Result<Self, lapin::Error> {
        let props =
            ConnectionProperties::default().with_connection_name(LongString::from("kiungo-probe"));
        let conn = Connection::connect(url, props).await?;
        let channel = conn.create_channel().await?;
        Ok(Self { conn, channel })
    }

    /// Whether the connection is still usable (a passive declare of a
    /// missing queue closes the channel).
    pub fn is_connected(&self) -> bool {
        self.conn.status().connected() && self.channel.status().connected()
    }

    /// Messages ready in `queue`.
    pub async fn ready(&self, queue: &str) -> Result<u32, lapin::Error> {
        let q = self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(q.message_count())
    }

    /// Closes the connection.
    pub async fn close(self) {
        let _ = self.conn.close(200, "done".into()).await;
    }
}
