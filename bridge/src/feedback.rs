//! Feedback to apps: after an event is delivered to a destination or
//! parked, a status message goes to a RabbitMQ exchange, so that an app
//! can mark a submission as synced or show the health worker what to fix.
//!
//! The outcomes are read from the store (see `store/feedback.rs`) and
//! marked only after the broker confirmed their messages: a broker that is
//! down delays feedback, it never loses it. Delivery to apps is at least
//! once; `status_id` (also the AMQP `message_id`) deduplicates.
//!
//! Routing key: `<source>.<destination>.<status>`, e.g.
//! `cht.fhir.delivered` or `commcare.ingest.parked`; an app binds
//! `<its source>.#`. Body:
//!
//! ```json
//! {"status_id": "fhir:42:delivered", "event_id": "...", "source": "cht",
//!  "message_id": null, "mapping": "cht-anc", "destination": "fhir",
//!  "status": "delivered", "reason_code": null, "reason": null,
//!  "dead_letter_id": null, "at_ms": 1764000000000}
//! ```
//!
//! Reasons are the dead letter's reason: they name fields, lines and
//! codes, never values from the payload.

use std::time::Duration;

use kiungo_connectors::rabbitmq::{ConfirmedPublisher, Outgoing};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::store::Store;

/// `feedback:` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// The exchange status messages go to.
    pub exchange: String,
    /// Declare the exchange (durable, topic) at start. Turn off when the
    /// broker's operators declare it and Kiungo may not.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Broker URL; defaults to `rabbitmq.url` (`KIUNGO_AMQP_URL`).
    #[serde(default)]
    pub url: Option<String>,
    /// Statuses read and published per round.
    #[serde(default = "default_batch")]
    pub batch: i64,
    /// Pause between rounds when nothing is waiting.
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
}

const fn yes() -> bool {
    true
}
const fn default_batch() -> i64 {
    500
}
const fn default_interval() -> Duration {
    Duration::from_secs(1)
}

impl FeedbackConfig {
    /// Problems with the values, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.exchange.trim().is_empty() {
            p.push("feedback.exchange: must not be empty".into());
        }
        if !(1..=10_000).contains(&self.batch) {
            p.push("feedback.batch: must be between 1 and 10000".into());
        }
        if self.interval.is_zero() {
            p.push("feedback.interval: must be more than 0".into());
        }
        p
    }
}

/// Publishes statuses until `shutdown` turns true.
pub async fn run(
    config: FeedbackConfig,
    url: String,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut publisher: Option<ConfirmedPublisher> = None;
    let mut backoff = Duration::from_millis(500);
    let m = crate::metrics::metrics();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wait = match round(&config, &url, &store, &mut publisher).await {
            Ok(n) => {
                backoff = Duration::from_millis(500);
                if n > 0 {
                    Duration::ZERO
                } else {
                    config.interval
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "feedback: cannot publish status messages; will retry");
                m.feedback
                    .get_or_create(&crate::metrics::ResultLabels {
                        result: "failed".into(),
                    })
                    .inc();
                if let Some(p) = publisher.take() {
                    p.close().await;
                }
                let w = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                w
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
    if let Some(p) = publisher {
        p.close().await;
    }
}

/// One round: read, publish, mark. Returns how many were published.
async fn round(
    config: &FeedbackConfig,
    url: &str,
    store: &Store,
    publisher: &mut Option<ConfirmedPublisher>,
) -> Result<usize, String> {
    let pending = store
        .pending_statuses(config.batch)
        .await
        .map_err(|e| format!("store: {e}"))?;
    if pending.is_empty() {
        return Ok(0);
    }
    if publisher.as_ref().is_none_or(|p| !p.is_connected()) {
        let p = ConfirmedPublisher::connect(url, &config.exchange, config.declare)
            .await
            .map_err(|e| format!("broker: {e}"))?;
        info!(exchange = %config.exchange, "feedback publisher connected");
        *publisher = Some(p);
    }
    let Some(p) = publisher.as_ref() else {
        return Ok(0);
    };
    let outgoing: Vec<Outgoing> = pending
        .iter()
        .map(|s| Outgoing {
            routing_key: format!("{}.{}.{}", routing_word(&s.source), s.destination, s.status),
            body: serde_json::to_vec(s).unwrap_or_default(),
            message_id: s.status_id.clone(),
            timestamp: u64::try_from(s.at_ms / 1000).unwrap_or_default(),
        })
        .collect();
    let acked = p
        .publish(&outgoing)
        .await
        .map_err(|e| format!("broker: {e}"))?;
    let mut done = Vec::new();
    let mut nacked = 0;
    for (s, ok) in pending.iter().zip(&acked) {
        if *ok {
            if !done.contains(&s.origin) {
                done.push(s.origin.clone());
            }
        } else {
            nacked += 1;
        }
    }
    // A dead letter told to several events is marked only when all of its
    // messages were confirmed.
    done.retain(|o| {
        pending
            .iter()
            .zip(&acked)
            .all(|(s, ok)| s.origin != *o || *ok)
    });
    store
        .mark_statuses(&done)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let m = crate::metrics::metrics();
    let published = acked.iter().filter(|a| **a).count();
    m.feedback
        .get_or_create(&crate::metrics::ResultLabels {
            result: "published".into(),
        })
        .inc_by(published as u64);
    debug!(published, "feedback published");
    if nacked > 0 {
        return Err(format!("the broker refused {nacked} status messages"));
    }
    Ok(published)
}

/// A source name as one word of a routing key (dots would split it).
fn routing_word(source: &str) -> String {
    source.replace(['.', '#', '*'], "_")
}
