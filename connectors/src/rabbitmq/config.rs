//! `rabbitmq:` in the config file.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Where and how to consume.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    /// `amqp://user:pass@host:5672/vhost` or `amqps://…` (TLS). The vhost
    /// is URL-encoded: `%2f` is `/`.
    pub url: String,
    /// Unacknowledged messages the broker may send per queue. Larger hides
    /// store latency; each one is held in memory.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// Bodies larger than this are parked as `too_large`, unread.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// First wait before reconnecting after the broker or network went away;
    /// doubles up to `reconnect_max`, with full jitter.
    #[serde(default = "default_reconnect_min", with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// The queues to consume.
    pub queues: Vec<QueueConfig>,
}

/// One queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Queue name; declared durable if missing.
    pub name: String,
    /// The source app whose events the queue carries (a mapping's `source`).
    pub source: String,
    /// Quorum (the default) or classic queue. Must match how the queue
    /// already exists (the broker refuses a declaration with other
    /// arguments; see docs/deploy.md to move a classic queue). Only a
    /// quorum queue is protected against messages the client library
    /// cannot read.
    #[serde(default)]
    pub kind: QueueKind,
    /// Quorum queues only: deliveries of one message before the broker
    /// moves it to the parking queue `<name>.overflow`, which Kiungo reads
    /// with a tolerant client and parks as `amqp_unparseable` (properties
    /// the client library cannot parse: it drops the connection on them)
    /// or `delivery_limit` (the process died on it). Kiungo parks other
    /// poison messages itself, so this only trips on those.
    #[serde(default = "default_delivery_limit")]
    pub delivery_limit: u32,
    /// How a message finds its mapping.
    #[serde(default)]
    pub route: Route,
    /// Optionally declare an exchange and bind the queue to it.
    #[serde(default)]
    pub bind: Option<Binding>,
}

/// Queue type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    /// Classic durable queue: no delivery limit, so a message the client
    /// library cannot read blocks the queue (`/healthz` then fails).
    Classic,
    /// Replicated quorum queue (RabbitMQ 3.8+) with a delivery limit and
    /// a parking queue: the default.
    #[default]
    Quorum,
}

/// How a message is routed to a mapping.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Route {
    /// The `match` rules of the source's mappings decide.
    #[default]
    Match,
    /// The routing key names the mapping: routing key → mapping id. A
    /// routing key not listed is parked as `no_route`.
    RoutingKey(BTreeMap<String, String>),
    /// This AMQP header carries the mapping id. A message without it is
    /// parked as `no_route`.
    Header(String),
}

/// An exchange to declare and bind the queue to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    /// Exchange name (declared durable, type topic).
    pub exchange: String,
    /// Binding keys (`#` for everything).
    pub routing_keys: Vec<String>,
}

const fn default_prefetch() -> u16 {
    500
}
const fn default_max_message_bytes() -> usize {
    4 * 1024 * 1024
}
const fn default_reconnect_min() -> Duration {
    Duration::from_millis(200)
}
const fn default_reconnect_max() -> Duration {
    Duration::from_secs(30)
}
const fn default_delivery_limit() -> u32 {
    20
}

impl RabbitConfig {
    /// Problems that make the config unusable, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !(self.url.starts_with("amqp://") || self.url.starts_with("amqps://")) {
            out.push("rabbitmq.url: expected amqp://… or amqps://…".to_owned());
        }
        if self.prefetch == 0 {
            out.push("rabbitmq.prefetch: must be at least 1".to_owned());
        }
        if self.reconnect_min > self.reconnect_max {
            out.push("rabbitmq.reconnect_min: longer than reconnect_max".to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, q) in self.queues.iter().enumerate() {
            if q.name.trim().is_empty() {
                out.push(format!("rabbitmq.queues[{i}].name: empty"));
            }
            if !seen.insert(q.name.as_str()) {
                out.push(format!(
                    "rabbitmq.queues[{i}].name: `{}` listed twice",
                    q.name
                ));
            }
            if q.kind == QueueKind::Quorum && q.delivery_limit == 0 {
                out.push(format!(
                    "rabbitmq.queues[{i}].delivery_limit: must be at least 1"
                ));
            }
        }
        if self.queues.is_empty() {
            out.push("rabbitmq.queues: no queue to consume".to_owned());
        }
        out
    }
}

impl QueueConfig {
    /// Name of the queue a quorum queue dead-letters to past its delivery
    /// limit.
    pub fn overflow_queue(&self) -> String {
        format!("{}.overflow", self.name)
    }

    /// Which mapping a message goes to: `Ok(None)` lets the `match` rules
    /// decide; `Err` says why there is no route.
    pub fn route_for(
        &self,
        routing_key: &str,
        headers: &serde_json::Value,
    ) -> Result<Option<String>, String> {
        match &self.route {
            Route::Match => Ok(None),
            Route::RoutingKey(map) => map.get(routing_key).cloned().map(Some).ok_or_else(|| {
                format!(
                    "routing key `{routing_key}` names no mapping in queue `{}` (route.routing_key lists: {})",
                    self.name,
                    map.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            }),
            Route::Header(name) => match headers.get(name).and_then(serde_json::Value::as_str) {
                Some(id) => Ok(Some(id.to_owned())),
                None => Err(format!(
                    "message has no text header `{name}` naming its mapping (queue `{}` routes by header)",
                    self.name
                )),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<RabbitConfig, serde_saphyr::Error> {
        serde_saphyr::from_str(yaml)
    }

    #[test]
    fn routes_parse_and_resolve() {
        let c = parse(
            "url: amqp://127.0.0.1\nqueues:\n  - {name: a, source: cht}\n  - name: b\n    source: kobo\n    kind: quorum\n    route: {routing_key: {rdt: kobo-malaria-rdt}}\n  - {name: c, source: x, route: {header: x-kiungo-mapping}}\n",
        )
        .expect("parses");
        assert!(c.problems().is_empty());
        assert_eq!(c.prefetch, 500);
        let h = serde_json::json!({"x-kiungo-mapping": "m1"});
        assert_eq!(c.queues[0].route_for("anything", &h), Ok(None));
        assert_eq!(
            c.queues[1].route_for("rdt", &h),
            Ok(Some("kobo-malaria-rdt".into()))
        );
        let err = c.queues[1].route_for("other", &h).expect_err("unknown key");
        assert!(err.contains("`other`") && err.contains("rdt"), "{err}");
        assert_eq!(c.queues[2].route_for("", &h), Ok(Some("m1".into())));
        assert!(c.queues[2].route_for("", &serde_json::json!({})).is_err());
        assert_eq!(c.queues[1].overflow_queue(), "b.overflow");
    }

    #[test]
    fn unknown_fields_and_bad_values_are_reported() {
        let err = parse("url: amqp://x\nqueues: []\nprefech: 5\n").expect_err("typo");
        assert!(err.to_string().contains("prefech"), "{err}");
        let c = parse(
            "url: http://x\nprefetch: 0\nqueues: [{name: a, source: s}, {name: a, source: s}]\n",
        )
        .expect("parses");
        let p = c.problems();
        assert_eq!(p.len(), 3, "{p:?}");
    }
}
