//! Prometheus metrics, served at `/metrics` in the OpenMetrics text format.
//!
//! One registry per process ([`metrics()`]): the pipeline's parts count
//! into it wherever they are, the way the `tracing` subscriber is global.
//! Each replica reports its own work; sum over pods in queries.
//!
//! **Label values never carry personal data**: they are source names from
//! the config or the mappings, mapping ids, destination names and stable
//! reason codes. A source name that no queue or mapping declares (HTTP
//! ingest takes it from the URL path) is reported as `other`, and so is a
//! mapping id that no loaded mapping has (a route header can name any), so
//! a client cannot put arbitrary text into a label.
//!
//! Gauges that describe the store (outbox backlog, oldest pending age,
//! open dead letters, totals waiting) are read from the store at scrape
//! time, so they are right across replicas; see [`crate::admin`].

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `{source, transport}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumedLabels {
    /// Source app.
    pub source: String,
    /// `amqp` or `http`.
    pub transport: String,
}

/// `{source, mapping, outcome}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IngestLabels {
    /// Source app.
    pub source: String,
    /// Mapping id, empty when none applied.
    pub mapping: String,
    /// `stored`, `replaced`, `duplicate`, `stale`, `superseded`, `parked`.
    pub outcome: String,
}

/// `{stage, source, reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParkedLabels {
    /// `ingest`, `fhir` or `dhis2`.
    pub stage: String,
    /// Source app; for DHIS2 totals the one source behind the total,
    /// `mixed` when several contributed, empty for a withdrawn total.
    pub source: String,
    /// Stable reason code.
    pub reason: String,
}

/// `{destination, source, mapping, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `fhir` or `dhis2`.
    pub destination: String,
    /// Source app; for DHIS2 totals the one source behind the total,
    /// `mixed` when several contributed, empty for a withdrawn total.
    pub source: String,
    /// Mapping id; for DHIS2 totals as the source (`mixed`, or empty).
    pub mapping: String,
    /// `delivered`, `retried` or `parked`.
    pub result: String,
}

/// `{destination}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    /// `fhir`, `dhis2` or `feedback`.
    pub destination: String,
}

/// `{destination, state}` for the store gauges.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BacklogLabels {
    /// `fhir` or `dhis2`.
    pub destination: String,
    /// Row state (`pending`, `delivering`, `retrying`, ...).
    pub state: String,
}

/// `{queue}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Queue name from the config.
    pub queue: String,
}

/// `{data_set}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataSetLabels {
    /// A DHIS2 data set UID from `destinations.dhis2.reconcile.data_sets`.
    pub data_set: String,
}

/// `{data_set, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CompletenessLabels {
    /// A DHIS2 data set UID from `destinations.dhis2.completeness`.
    pub data_set: String,
    /// `registered`, `undone`, `retried` or `parked`.
    pub result: String,
}

/// `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `published` or `failed`.
    pub result: String,
}

/// `{result}` of exported spans.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpanLabels {
    /// `exported`, `failed` (the collector refused or was unreachable) or
    /// `dropped` (the export queue was full).
    pub result: String,
}

/// Every metric of the process.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    known_sources: RwLock<HashSet<String>>,
    known_mappings: RwLock<HashSet<String>>,
    totals: Mutex<BTreeMap<String, u64>>,
    /// Messages taken off a queue or an HTTP request.
    pub consumed: Family<ConsumedLabels, Counter>,
    /// Events committed, by what the store did with them.
    pub ingested: Family<IngestLabels, Counter>,
    /// Dead letters parked.
    pub parked: Family<ParkedLabels, Counter>,
    /// Delivery results (FHIR bundles, DHIS2 data values).
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// From receipt of an event to its delivery, seconds.
    pub delivery_latency: Family<DestinationLabels, Histogram>,
    /// Time of one request to a destination, seconds.
    pub request_duration: Family<DestinationLabels, Histogram>,
    /// Circuit state: 0 closed, 1 half-open, 2 open.
    pub circuit: Family<DestinationLabels, Gauge>,
    /// Store backlog per destination and state (set at scrape time).
    pub backlog: Family<BacklogLabels, Gauge>,
    /// Age of the oldest undelivered item, seconds (set at scrape time).
    pub oldest_pending: Family<DestinationLabels, Gauge>,
    /// Open dead letters (set at scrape time).
    pub dead_letters_open: Gauge,
    /// Messages ready in each consumed queue, from the broker (queue lag).
    pub queue_ready: Family<QueueLabels, Gauge>,
    /// Status messages to apps, by result.
    pub feedback: Family<ResultLabels, Counter>,
    /// Status messages waiting to be published (set at scrape time).
    pub feedback_pending: Gauge,
    /// Keys where DHIS2 and Kiungo differ, per data set, as the last
    /// scheduled reconciliation found them.
    pub dhis2_drift: Family<DataSetLabels, Gauge>,
    /// Data set completeness registrations and undos, by data set and
    /// result.
    pub dhis2_completeness: Family<CompletenessLabels, Counter>,
    /// OpenTelemetry spans by what became of them (only with export on).
    pub otel_spans: Family<SpanLabels, Counter>,
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
        3600.0, 21600.0, 86400.0,
    ]
    .into_iter()
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("kiungo");
        let consumed = Family::<ConsumedLabels, Counter>::default();
        registry.register(
            "messages_consumed",
            "Messages taken from a queue or an HTTP request",
            consumed.clone(),
        );
        let ingested = Family::<IngestLabels, Counter>::default();
        registry.register(
            "events",
            "Events committed to the store, by outcome (stored, replaced, duplicate, stale, superseded, parked)",
            ingested.clone(),
        );
        let parked = Family::<ParkedLabels, Counter>::default();
        registry.register(
            "dead_letters",
            "Dead letters parked, by stage and reason code",
            parked.clone(),
        );
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery results: FHIR bundles and DHIS2 data values delivered, retried or parked",
            deliveries.clone(),
        );
        let delivery_latency = Family::<DestinationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "delivery_latency_seconds",
            "From receipt of an event (FHIR) or the change of a total (DHIS2) to its delivery",
            delivery_latency.clone(),
        );
        let request_duration = Family::<DestinationLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(latency_buckets())) as fn() -> Histogram,
        );
        registry.register(
            "destination_request_seconds",
            "Duration of one request to a destination",
            request_duration.clone(),
        );
        let circuit = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "Circuit breaker per destination: 0 closed, 1 half-open, 2 open",
            circuit.clone(),
        );
        let backlog = Family::<BacklogLabels, Gauge>::default();
        registry.register(
            "backlog",
            "Items in the store waiting for a destination, by state",
            backlog.clone(),
        );
        let oldest_pending = Family::<DestinationLabels, Gauge>::default();
        registry.register(
            "oldest_pending_seconds",
            "Age of the oldest item not yet delivered to a destination",
            oldest_pending.clone(),
        );
        let dead_letters_open = Gauge::default();
        registry.register(
            "dead_letters_open",
            "Dead letters waiting for an operator",
            dead_letters_open.clone(),
        );
        let queue_ready = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "queue_ready_messages",
            "Messages ready in a consumed queue, as the broker last reported (queue lag)",
            queue_ready.clone(),
        );
        let feedback = Family::<ResultLabels, Counter>::default();
        registry.register(
            "feedback_messages",
            "Status messages to apps, published (confirmed by the broker) or failed",
            feedback.clone(),
        );
        let feedback_pending = Gauge::default();
        registry.register(
            "feedback_pending",
            "Status messages waiting to be published",
            feedback_pending.clone(),
        );
        let dhis2_drift = Family::<DataSetLabels, Gauge>::default();
        registry.register(
            "dhis2_drift_values",
            "Values where DHIS2 differs from Kiungo's totals (missing, different, not from Kiungo) in the last scheduled reconciliation, per data set",
            dhis2_drift.clone(),
        );
        let dhis2_completeness = Family::<CompletenessLabels, Counter>::default();
        registry.register(
            "dhis2_completeness",
            "Data set completeness registrations (registered, undone) and failures (retried, parked), per data set",
            dhis2_completeness.clone(),
        );
        let otel_spans = Family::<SpanLabels, Counter>::default();
        registry.register(
            "otel_spans",
            "OpenTelemetry spans exported, failed (the collector refused or was unreachable) or dropped (the export queue was full)",
            otel_spans.clone(),
        );
        Self {
            registry,
            known_sources: RwLock::new(HashSet::new()),
            known_mappings: RwLock::new(HashSet::new()),
            totals: Mutex::new(BTreeMap::new()),
            consumed,
            ingested,
            parked,
            deliveries,
            delivery_latency,
            request_duration,
            circuit,
            backlog,
            oldest_pending,
            dead_letters_open,
            queue_ready,
            feedback,
            feedback_pending,
            dhis2_drift,
            dhis2_completeness,
            otel_spans,
        }
    }

    /// Counts `n` spans with `result` (`kiungo_otel_spans_total{result}`).
    pub fn otel_span(&self, result: &str, n: u64) {
        self.otel_spans
            .get_or_create(&SpanLabels {
                result: result.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts one completeness result
    /// (`kiungo_dhis2_completeness_total{data_set,result}`).
    pub fn completeness(&self, data_set: &str, result: &str) {
        self.dhis2_completeness
            .get_or_create(&CompletenessLabels {
                data_set: data_set.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Sets `kiungo_dhis2_drift_values{data_set}`.
    pub fn set_dhis2_drift(&self, data_set: &str, values: i64) {
        self.dhis2_drift
            .get_or_create(&DataSetLabels {
                data_set: data_set.to_owned(),
            })
            .set(values);
    }

    /// Declares source names that may appear as label values (from the
    /// queues and the mappings).
    pub fn know_sources<I: IntoIterator<Item = String>>(&self, sources: I) {
        if let Ok(mut known) = self.known_sources.write() {
            known.extend(sources);
        }
    }

    /// The label value of a source: itself when declared, else `other`.
    pub fn source_label(&self, source: &str) -> String {
        if source == crate::store::MIXED {
            return source.to_owned();
        }
        match self.known_sources.read() {
            Ok(known) if known.contains(source) => source.to_owned(),
            _ => "other".to_owned(),
        }
    }

    /// Declares mapping ids that may appear as label values (the loaded
    /// mappings; a route can name any id, loaded or not).
    pub fn know_mappings<I: IntoIterator<Item = String>>(&self, ids: I) {
        if let Ok(mut known) = self.known_mappings.write() {
            known.extend(ids);
        }
    }

    /// The label value of a mapping id: itself when loaded, `other` for
    /// any other non-empty id.
    pub fn mapping_label(&self, mapping: &str) -> String {
        if mapping.is_empty() || mapping == crate::store::MIXED {
            return mapping.to_owned();
        }
        match self.known_mappings.read() {
            Ok(known) if known.contains(mapping) => mapping.to_owned(),
            _ => "other".to_owned(),
        }
    }

    /// Counts one delivery result.
    pub fn delivery(&self, destination: &str, source: &str, mapping: &str, result: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                destination: destination.to_owned(),
                source: if source.is_empty() {
                    String::new()
                } else {
                    self.source_label(source)
                },
                mapping: self.mapping_label(mapping),
                result: result.to_owned(),
            })
            .inc();
        self.add_total(&format!("{destination}.{result}"), 1);
    }

    /// Counts one dead letter.
    pub fn park(&self, stage: &str, source: &str, reason: &str) {
        self.park_many(stage, source, reason, 1);
    }

    /// Counts `n` dead letters of one stage, source and reason.
    pub fn park_many(&self, stage: &str, source: &str, reason: &str, n: u64) {
        self.parked
            .get_or_create(&ParkedLabels {
                stage: stage.to_owned(),
                source: if source.is_empty() {
                    String::new()
                } else {
                    self.source_label(source)
                },
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    /// Observes a latency in seconds.
    pub fn observe_latency(&self, destination: &str, seconds: f64) {
        self.delivery_latency
            .get_or_create(&DestinationLabels {
                destination: destination.to_owned(),
            })
            .observe(seconds.max(0.0));
    }

    /// Observes one request's duration.
    pub fn observe_request(&self, destination: &str, seconds: f64) {
        self.request_duration
            .get_or_create(&DestinationLabels {
                destination: destination.to_owned(),
            })
            .observe(seconds.max(0.0));
    }

    /// Sets a destination's circuit gauge.
    pub fn set_circuit(&self, destination: &str, state: crate::delivery::circuit::CircuitState) {
        use crate::delivery::circuit::CircuitState as C;
        let v = match state {
            C::Closed => 0,
            C::HalfOpen => 1,
            C::Open { .. } => 2,
        };
        self.circuit
            .get_or_create(&DestinationLabels {
                destination: destination.to_owned(),
            })
            .set(v);
    }

    /// Adds `n` to a running total the admin summary reports
    /// (`ingest.stored`, `fhir.delivered`, ...): label families cannot be
    /// read back, so the summary keeps its own unlabelled sums.
    pub fn add_total(&self, key: &str, n: u64) {
        if n == 0 {
            return;
        }
        if let Ok(mut totals) = self.totals.lock() {
            *totals.entry(key.to_owned()).or_default() += n;
        }
    }

    /// The running totals since the process started.
    pub fn totals(&self) -> BTreeMap<String, u64> {
        self.totals.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The exposition text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Arc<Metrics> {
    static METRICS: OnceLock<Arc<Metrics>> = OnceLock::new();
    METRICS.get_or_init(|| Arc::new(Metrics::new()))
}
