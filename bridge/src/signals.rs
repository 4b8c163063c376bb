//! Log signals an operations team reads at the default level (`info`).
//!
//! **Every failure class has a WARN line** naming where (source or
//! destination), the reason code and how many failed since the last line
//! of that class: events parked at ingest (per source and reason), FHIR
//! bundles retried (per HTTP status or `transport`) or parked (per reason
//! code and status), a destination's circuit opening; DHIS2 has its own in
//! `delivery::dhis2_worker`. The lines are rate-limited per key and reason
//! by `delivery::warn_limit` (one a minute), on the caller's clock so that
//! tests move time by hand. Lines carry codes, config names and counts,
//! never event values nor server text.
//!
//! **A periodic INFO summary** ([`summary_loop`], `log.summary_interval`)
//! reports what happened since the last one (events ingested and parked,
//! FHIR bundles delivered, retried and parked, DHIS2 values pushed, retried
//! and parked) from the running totals in [`crate::metrics`], and the
//! backlog from gauges that are already there: the store backlog as last
//! read for `/metrics` (the summary never counts tables itself) and each
//! queue's ready messages from the queue-depth probe.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::delivery::circuit::CircuitState;
use crate::delivery::warn_limit::{WarnLimiter, limiter};

/// Failures counted between two WARN lines, per key and reason, and the
/// circuits' last states.
#[derive(Debug, Default)]
pub struct Signals {
    /// A limiter of its own (tests); the process's otherwise.
    own: Option<WarnLimiter>,
    pending: Mutex<HashMap<(String, String), u64>>,
    circuits: Mutex<HashMap<String, &'static str>>,
}

/// What happened to FHIR bundles that were not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FhirFailure<'a> {
    /// A transient failure: the bundle stays in the outbox.
    Retried,
    /// A permanent one: the bundle is parked.
    Parked {
        /// The server's answer as a class: `http_422`, or `transport`
        /// when no status came with it.
        status: &'a str,
    },
}

impl Signals {
    /// Signals with a limiter of their own, one line per `interval_ms`
    /// per key and reason (the process uses [`signals()`]).
    pub fn new(interval_ms: i64) -> Self {
        Self {
            own: Some(WarnLimiter::new(interval_ms)),
            ..Self::default()
        }
    }

    fn limiter(&self) -> &WarnLimiter {
        self.own.as_ref().unwrap_or_else(|| limiter())
    }

    /// Adds `n` failures of `key` and `reason`; `Some(count)` when a line
    /// may go out at `now_ms`, with the failures since the last one.
    pub fn tally(&self, key: &str, reason: &str, n: u64, now_ms: i64) -> Option<u64> {
        let Ok(mut pending) = self.pending.lock() else {
            return Some(n);
        };
        let entry = (key.to_owned(), reason.to_owned());
        *pending.entry(entry.clone()).or_default() += n;
        self.limiter().allow(key, reason, now_ms)?;
        pending.remove(&entry)
    }

    /// `n` events of `source` (a metrics label: a configured name or
    /// `other`) parked at ingest for `reason`.
    pub fn parked_at_ingest(&self, source: &str, reason: &str, n: u64, now_ms: i64) {
        if let Some(count) = self.tally(&format!("ingest:{source}"), reason, n, now_ms) {
            warn!(
                stage = "ingest",
                source,
                reason,
                count,
                "events parked at ingest (count since the last line for this source and reason)"
            );
        }
    }

    /// `n` FHIR bundles that failed with `reason` (a reason code, or the
    /// HTTP class `http_503` / `transport` of a transient failure).
    pub fn fhir_failed(&self, kind: FhirFailure<'_>, reason: &str, n: u64, now_ms: i64) {
        let (key, tallied) = match kind {
            FhirFailure::Retried => ("fhir:retried", reason.to_owned()),
            FhirFailure::Parked { status } => ("fhir:parked", format!("{reason}/{status}")),
        };
        let Some(count) = self.tally(key, &tallied, n, now_ms) else {
            return;
        };
        match kind {
            FhirFailure::Retried => warn!(
                destination = "fhir",
                reason,
                count,
                "fhir delivery failed; the bundles will be retried (count since the last line for this reason)"
            ),
            FhirFailure::Parked { status } => warn!(
                destination = "fhir",
                reason,
                status,
                count,
                "fhir server refused bundles; parked (count since the last line for this reason)"
            ),
        }
    }

    /// A destination's circuit as a pass left it: a WARN line when it
    /// opens (rate-limited, with how often it opened since the last line),
    /// an INFO line when it closes again.
    pub fn circuit(&self, destination: &str, state: CircuitState, now_ms: i64) {
        let now = state.as_str();
        let before = match self.circuits.lock() {
            Ok(mut c) => c.insert(destination.to_owned(), now).unwrap_or("closed"),
            Err(_) => return,
        };
        if before == now {
            return;
        }
        match state {
            CircuitState::Open { until_ms } => {
                if let Some(count) =
                    self.tally(&format!("circuit:{destination}"), "open", 1, now_ms)
                {
                    warn!(
                        destination,
                        reason = "circuit_open",
                        count,
                        probe_in_ms = until_ms.saturating_sub(now_ms).max(0),
                        "circuit open: nothing is sent to the destination until a probe succeeds \
                         (count: openings since the last line)"
                    );
                }
            }
            CircuitState::Closed => {
                info!(destination, "circuit closed: the destination answers again");
            }
            CircuitState::HalfOpen => {}
        }
    }
}

/// The process's signals.
pub fn signals() -> &'static Signals {
    static SIGNALS: OnceLock<Signals> = OnceLock::new();
    SIGNALS.get_or_init(Signals::default)
}

/// `log:` in the config.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// How often the INFO summary line is written (default `1m`; `0s`
    /// turns it off).
    #[serde(default = "default_summary_interval", with = "humantime_serde")]
    pub summary_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            summary_interval: default_summary_interval(),
        }
    }
}

const fn default_summary_interval() -> Duration {
    Duration::from_secs(60)
}

/// The running totals a summary reports, as differences between two
/// readings of [`crate::metrics::Metrics::totals`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events committed (any outcome).
    pub ingested: u64,
    /// Of those, parked.
    pub parked: u64,
    /// FHIR bundles delivered.
    pub fhir_delivered: u64,
    /// FHIR bundles retried.
    pub fhir_retried: u64,
    /// FHIR bundles parked.
    pub fhir_parked: u64,
    /// DHIS2 values pushed.
    pub dhis2_pushed: u64,
    /// DHIS2 values retried.
    pub dhis2_retried: u64,
    /// DHIS2 values parked.
    pub dhis2_parked: u64,
}

impl Summary {
    /// What changed between two readings of the running totals.
    pub fn between(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Self {
        let d = |key: &str| {
            after
                .get(key)
                .copied()
                .unwrap_or(0)
                .saturating_sub(before.get(key).copied().unwrap_or(0))
        };
        Self {
            ingested: d("ingest.received"),
            parked: d("ingest.parked"),
            fhir_delivered: d("fhir.delivered"),
            fhir_retried: d("fhir.retried"),
            fhir_parked: d("fhir.parked"),
            dhis2_pushed: d("dhis2.delivered"),
            dhis2_retried: d("dhis2.retried"),
            dhis2_parked: d("dhis2.parked"),
        }
    }
}

/// Backlog as the existing gauges last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backlog {
    /// FHIR bundles waiting (pending, retrying, delivering), if `/metrics`
    /// has read the store's backlog since the start.
    pub fhir: Option<i64>,
    /// DHIS2 totals waiting, likewise.
    pub dhis2: Option<i64>,
    /// Messages ready in the consumed queues, from the queue-depth probe.
    pub queue_ready: i64,
}

/// Reads the backlog gauges without creating any.
pub fn backlog_from_gauges(queues: &[String]) -> Backlog {
    use crate::metrics::{BacklogLabels, QueueLabels};
    let m = crate::metrics::metrics();
    let sum = |destination: &str, states: &[&str]| {
        let mut seen = false;
        let mut total = 0;
        for state in states {
            let labels = BacklogLabels {
                destination: destination.to_owned(),
                state: (*state).to_owned(),
            };
            if let Some(g) = m.backlog.get(&labels) {
                seen = true;
                total += g.get();
            }
        }
        seen.then_some(total)
    };
    Backlog {
        fhir: sum("fhir", &["pending", "retrying", "delivering"]),
        dhis2: sum("dhis2", &["pending", "retrying"]),
        queue_ready: queues
            .iter()
            .filter_map(|q| m.queue_ready.get(&QueueLabels { queue: q.clone() }))
            .map(|g| g.get())
            .sum(),
    }
}

/// Writes one summary line.
pub fn log_summary(interval: Duration, s: &Summary, b: &Backlog, wedged: &[String]) {
    let interval_s = interval.as_secs();
    let wedged = wedged.join(",");
    match (b.fhir, b.dhis2) {
        (Some(fhir_backlog), Some(dhis2_backlog)) => info!(
            interval_s,
            ingested = s.ingested,
            parked = s.parked,
            fhir_delivered = s.fhir_delivered,
            fhir_retried = s.fhir_retried,
            fhir_parked = s.fhir_parked,
            dhis2_pushed = s.dhis2_pushed,
            dhis2_retried = s.dhis2_retried,
            dhis2_parked = s.dhis2_parked,
            fhir_backlog,
            dhis2_backlog,
            queue_ready = b.queue_ready,
            wedged_queues = %wedged,
            "summary"
        ),
        _ => info!(
            interval_s,
            ingested = s.ingested,
            parked = s.parked,
            fhir_delivered = s.fhir_delivered,
            fhir_retried = s.fhir_retried,
            fhir_parked = s.fhir_parked,
            dhis2_pushed = s.dhis2_pushed,
            dhis2_retried = s.dhis2_retried,
            dhis2_parked = s.dhis2_parked,
            queue_ready = b.queue_ready,
            wedged_queues = %wedged,
            "summary"
        ),
    }
}

/// Writes the summary every `interval` until `shutdown` turns true.
/// `queues` are the consumed queues (for the queue-depth gauge), `source`
/// the RabbitMQ source's state (for wedged queues).
pub async fn summary_loop(
    interval: Duration,
    queues: Vec<String>,
    source: Option<watch::Receiver<kiungo_connectors::rabbitmq::SourceState>>,
    mut shutdown: watch::Receiver<bool>,
) {
    if interval.is_zero() {
        return;
    }
    let m = crate::metrics::metrics();
    let mut before = m.totals();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let after = m.totals();
        let wedged = source
            .as_ref()
            .map(|s| s.borrow().wedged())
            .unwrap_or_default();
        log_summary(
            interval,
            &Summary::between(&before, &after),
            &backlog_from_gauges(&queues),
            &wedged,
        );
        before = after;
    }
}

/// The log filter: `RUST_LOG` (default `info`), with `sqlx` at `warn`
/// unless `RUST_LOG` names it (at `debug` its statements drown the rest).
pub fn filter_directives(rust_log: Option<&str>) -> String {
    let base = rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .unwrap_or("info");
    if base.contains("sqlx") {
        base.to_owned()
    } else {
        format!("{base},sqlx=warn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::retry::{Clock, ManualClock};
    use std::io::Write;
    use std::sync::Arc;

    /// A writer the test reads back: every line the subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut b) = self.0.lock() {
                b.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = self
                .0
                .lock()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            text.lines()
                .map(|l| serde_json::from_str(l).expect("json log line"))
                .collect()
        }
    }

    /// Runs `f` with JSON logs at the default level going to the buffer.
    fn capture(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter_directives(None)))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        out.lines()
    }

    fn warns(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
        lines.iter().filter(|l| l["level"] == "WARN").collect()
    }

    const MARKERS: [&str; 2] = ["Wanjiku Kamau", "+254712345678"];

    #[test]
    fn one_warn_per_window_per_class_with_the_count_since_the_last() {
        let clock = ManualClock::at(1_000_000);
        let s = Signals::new(60_000);
        let lines = capture(|| {
            // First window: one line for each class, at its first failure.
            s.parked_at_ingest("cht", "mapping_error", 3, clock.now_ms());
            s.parked_at_ingest("cht", "mapping_error", 2, clock.now_ms());
            s.parked_at_ingest("kobo", "not_json", 1, clock.now_ms());
            s.fhir_failed(FhirFailure::Retried, "http_503", 4, clock.now_ms());
            s.fhir_failed(
                FhirFailure::Parked { status: "http_422" },
                "fhir_rejected",
                1,
                clock.now_ms(),
            );
            clock.advance(Duration::from_secs(30));
            s.parked_at_ingest("cht", "mapping_error", 5, clock.now_ms());
            s.fhir_failed(FhirFailure::Retried, "http_503", 6, clock.now_ms());
            // Next window: the counts left out arrive with the next line.
            clock.advance(Duration::from_secs(30));
            s.parked_at_ingest("cht", "mapping_error", 1, clock.now_ms());
            s.fhir_failed(FhirFailure::Retried, "http_503", 1, clock.now_ms());
        });
        let w = warns(&lines);
        let got: Vec<(String, String, u64)> = w
            .iter()
            .map(|l| {
                let f = &l["fields"];
                let at = f["source"]
                    .as_str()
                    .or_else(|| f["destination"].as_str())
                    .unwrap_or_default();
                (
                    at.to_owned(),
                    f["reason"].as_str().unwrap_or_default().to_owned(),
                    f["count"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        let want = |a: &str, r: &str, n: u64| (a.to_owned(), r.to_owned(), n);
        assert_eq!(
            got,
            vec![
                want("cht", "mapping_error", 3),
                want("kobo", "not_json", 1),
                want("fhir", "http_503", 4),
                want("fhir", "fhir_rejected", 1),
                want("cht", "mapping_error", 2 + 5 + 1),
                want("fhir", "http_503", 6 + 1),
            ]
        );
        for l in &lines {
            let text = l.to_string();
            for m in MARKERS {
                assert!(!text.contains(m), "{text}");
            }
        }
    }

    #[test]
    fn circuit_open_warns_once_per_window_and_closing_is_told() {
        let clock = ManualClock::at(5_000_000);
        let s = Signals::new(60_000);
        let lines = capture(|| {
            let open = |c: &ManualClock| CircuitState::Open {
                until_ms: c.now_ms() + 10_000,
            };
            s.circuit("fhir", CircuitState::Closed, clock.now_ms());
            s.circuit("fhir", open(&clock), clock.now_ms());
            s.circuit("fhir", open(&clock), clock.now_ms()); // unchanged
            clock.advance(Duration::from_secs(10));
            s.circuit("fhir", CircuitState::HalfOpen, clock.now_ms());
            s.circuit("fhir", open(&clock), clock.now_ms()); // probe failed: left out
            clock.advance(Duration::from_secs(60));
            s.circuit("fhir", CircuitState::HalfOpen, clock.now_ms());
            s.circuit("fhir", open(&clock), clock.now_ms());
            s.circuit("fhir", CircuitState::Closed, clock.now_ms());
        });
        let w = warns(&lines);
        let counts: Vec<u64> = w
            .iter()
            .map(|l| l["fields"]["count"].as_u64().unwrap_or(0))
            .collect();
        assert_eq!(counts, vec![1, 2], "{lines:?}");
        assert!(w.iter().all(|l| l["fields"]["reason"] == "circuit_open"));
        let closed = lines
            .iter()
            .filter(|l| l["level"] == "INFO" && l["fields"]["destination"] == "fhir")
            .count();
        assert_eq!(closed, 1, "{lines:?}");
    }

    #[test]
    fn the_summary_reports_differences_and_backlog() {
        let before: BTreeMap<String, u64> = [("ingest.received", 10), ("fhir.delivered", 4)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        let after: BTreeMap<String, u64> = [
            ("ingest.received", 25),
            ("ingest.parked", 2),
            ("fhir.delivered", 9),
            ("fhir.retried", 3),
            ("dhis2.delivered", 7),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let s = Summary::between(&before, &after);
        assert_eq!(
            s,
            Summary {
                ingested: 15,
                parked: 2,
                fhir_delivered: 5,
                fhir_retried: 3,
                dhis2_pushed: 7,
                ..Summary::default()
            }
        );
        let lines = capture(|| {
            log_summary(
                Duration::from_secs(60),
                &s,
                &Backlog {
                    fhir: Some(12),
                    dhis2: Some(3),
                    queue_ready: 40,
                },
                &["kiungo.cht".to_owned()],
            );
        });
        assert_eq!(lines.len(), 1);
        let f = &lines[0]["fields"];
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(f["message"], "summary");
        assert_eq!(f["ingested"], 15);
        assert_eq!(f["fhir_backlog"], 12);
        assert_eq!(f["dhis2_pushed"], 7);
        assert_eq!(f["queue_ready"], 40);
        assert_eq!(f["wedged_queues"], "kiungo.cht");
    }

    #[test]
    fn sqlx_stays_at_warn_unless_named() {
        assert_eq!(filter_directives(None), "info,sqlx=warn");
        assert_eq!(filter_directives(Some("debug")), "debug,sqlx=warn");
        assert_eq!(
            filter_directives(Some("debug,sqlx=debug")),
            "debug,sqlx=debug"
        );
        assert_eq!(filter_directives(Some("  ")), "info,sqlx=warn");
    }
}
