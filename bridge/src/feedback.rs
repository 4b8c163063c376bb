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

use crate::store::{StatusOrigin, Store};

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
    /// `KIUNGO_FEEDBACK_AMQP_URL` overrides it, to keep a password out of
    /// the file.
    #[serde(default)]
    pub url: Option<String>,
    /// Outcomes read per kind (delivered bundles, dead letters, DHIS2
    /// contributions) per round; a refused DHIS2 total adds one message per
    /// contributing event.
    #[serde(default = "default_batch")]
    pub batch: i64,
    /// Outcomes older than this are marked without a message: an app has
    /// long stopped waiting, and turning feedback on must not send a
    /// flood of old statuses.
    #[serde(default = "default_max_age", with = "humantime_serde")]
    pub max_age: Duration,
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
const fn default_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
/// How long one replica holds the publisher lease without renewing it.
const LEASE_MS: i64 = 30_000;
/// How long the broker may take to confirm a round.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

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

/// Publishes statuses until `shutdown` turns true. One replica at a time
/// publishes (a lease in the store, renewed every round); the others wait.
pub async fn run(
    config: FeedbackConfig,
    url: String,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) {
    let holder = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
    let mut publisher: Option<ConfirmedPublisher> = None;
    let mut backoff = Duration::from_millis(500);
    let m = crate::metrics::metrics();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = crate::store::now_ms();
        let wait = match store.try_lease("feedback", &holder, now, LEASE_MS).await {
            Ok(false) => config.interval.max(Duration::from_secs(1)),
            Err(e) => {
                warn!(error = %e, "feedback: cannot take the publisher lease; will retry");
                backoff
            }
            Ok(true) => {
                let round = round(&config, &url, &store, &mut publisher);
                let outcome = tokio::select! {
                    r = round => Some(r),
                    _ = shutdown.changed() => None,
                };
                match outcome {
                    None => break,
                    Some(Ok(n)) => {
                        backoff = Duration::from_millis(500);
                        if n > 0 {
                            Duration::ZERO
                        } else {
                            config.interval
                        }
                    }
                    Some(Err(e)) => {
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
                }
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
    let oldest =
        crate::store::now_ms() - i64::try_from(config.max_age.as_millis()).unwrap_or(i64::MAX);
    let (send, quiet): (Vec<_>, Vec<_>) = pending
        .into_iter()
        .partition(|s| s.publish && s.event_id.is_some() && s.at_ms >= oldest);
    let mut done: Vec<StatusOrigin> = Vec::new();
    let mut failed: Vec<StatusOrigin> = Vec::new();
    let mut published = 0;
    if !send.is_empty() {
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
        let m = crate::metrics::metrics();
        let outgoing: Vec<Outgoing> = send
            .iter()
            .map(|s| Outgoing {
                // Declared source names only: a client chooses the source
                // of HTTP ingest, and routing keys are short strings.
                routing_key: format!(
                    "{}.{}.{}",
                    routing_word(&m.source_label(&s.source)),
                    s.destination,
                    s.status
                ),
                body: serde_json::to_vec(s).unwrap_or_default(),
                message_id: s.status_id.clone(),
                timestamp: u64::try_from(s.at_ms / 1000).unwrap_or_default(),
            })
            .collect();
        let acked = tokio::time::timeout(CONFIRM_TIMEOUT, p.publish(&outgoing))
            .await
            .map_err(|_| format!("broker: no confirms within {CONFIRM_TIMEOUT:?}"))?
            .map_err(|e| format!("broker: {e}"))?;
        for (s, ok) in send.iter().zip(&acked) {
            if *ok {
                published += 1;
                done.push(s.origin.clone());
            } else {
                failed.push(s.origin.clone());
            }
        }
    }
    // An origin told to several events (a refused DHIS2 total) is marked
    // only when every one of its messages was confirmed.
    done.extend(quiet.into_iter().map(|s| s.origin));
    done.retain(|o| !failed.contains(o));
    done.dedup();
    store
        .mark_statuses(&done)
        .await
        .map_err(|e| format!("store: {e}"))?;
    crate::metrics::metrics()
        .feedback
        .get_or_create(&crate::metrics::ResultLabels {
            result: "published".into(),
        })
        .inc_by(published as u64);
    debug!(published, "feedback published");
    if !failed.is_empty() {
        return Err(format!(
            "the broker refused {} status messages",
            failed.len()
        ));
    }
    Ok(published.max(done.len()))
}

/// A source name as one word of a routing key (dots would split it).
fn routing_word(source: &str) -> String {
    source.replace(['.', '#', '*'], "_")
}
