//! The completeness pass (`destinations.dhis2.completeness`, off when
//! absent): once a period has ended plus a data set's grace, register the
//! set complete with DHIS2 (`completeDataSetRegistrations`) for each org
//! unit and attribute option combo where DHIS2 holds values of the set
//! from Kiungo, once; undo the registration when all of them are
//! withdrawn. See
//! `docs/dhis2-completeness.md`.
//!
//! The data set's period type and data elements come from DHIS2
//! (`GET /api/dataSets/{id}`), refreshed every `metadata_refresh`: the
//! ministry maintains them there, and a list in Kiungo's config would fall
//! behind the day a data element is added to the set. Requests go behind
//! the DHIS2 circuit breaker the value pushes use, failures are retried on
//! the destination's retry schedule, and a registration DHIS2 refuses is
//! parked as a DHIS2 dead letter with DHIS2's code and message.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use kiungo_mappings::PeriodType;
use kiungo_mappings::period::Calendar;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::circuit::{Circuit, CircuitState};
use super::retry::{Clock, NextStep, RetryParams, jitter_unit};
use super::warn_limit::{failure_class, limiter};
use super::{PassReport, SinkFailure};
use crate::store::{
    ClaimedCompleteness, CompletenessKey, CompletenessResult, CompletenessTarget, Store, StoreError,
};

/// One entry of `destinations.dhis2.completeness`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletenessConfig {
    /// The data set (UID) to register complete.
    pub data_set: String,
    /// How long after a period ends its registrations wait, for late
    /// events and edits (e.g. `2d`). Registrations after the data set's
    /// `timelyDays` count as late in DHIS2's timeliness reports.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

/// The longest grace accepted.
const MAX_GRACE: Duration = Duration::from_secs(366 * 24 * 3600);

/// A DHIS2 UID: 11 letters and digits, the first a letter.
fn is_uid(s: &str) -> bool {
    s.len() == 11
        && s.chars().all(|c| c.is_ascii_alphanumeric())
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
}

/// Problems with `destinations.dhis2.completeness` (at `at`), each naming
/// its entry and field.
pub fn problems(entries: &[CompletenessConfig], at: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, e) in entries.iter().enumerate() {
        let here = format!("{at}[{i}]");
        if !is_uid(&e.data_set) {
            out.push(format!(
                "{here}.data_set: `{}` is not a DHIS2 UID (11 letters and digits, the first a letter)",
                e.data_set
            ));
        } else if !seen.insert(e.data_set.as_str()) {
            out.push(format!("{here}.data_set: `{}` is listed twice", e.data_set));
        }
        if e.grace > MAX_GRACE {
            out.push(format!("{here}.grace: at most 366d"));
        }
    }
    out
}

/// A data set as the pass needs it, from DHIS2's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataSetMeta {
    /// Its period type.
    pub period_type: PeriodType,
    /// Its data elements as mappings may write them: each UID, and
    /// `code:CODE` for those with a code.
    pub data_elements: Vec<String>,
}

/// What DHIS2 said about one registration or undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompletionAnswer {
    /// Done.
    Done,
    /// Refused: DHIS2's code (or ours) and message.
    Refused {
        /// Code.
        code: String,
        /// Message, cut of anything but the identifiers Kiungo sent.
        message: String,
    },
}

/// Where registrations go: DHIS2 (or a fake in tests).
pub trait CompletenessDestination: Send + Sync + 'static {
    /// The data set's period type and data elements. A data set DHIS2
    /// does not have is a permanent failure.
    fn data_set(&self, id: &str) -> impl Future<Output = Result<DataSetMeta, SinkFailure>> + Send;
    /// Registers the data set complete for the period, org unit and
    /// attribute option combo.
    fn register(
        &self,
        key: &CompletenessKey,
    ) -> impl Future<Output = Result<CompletionAnswer, SinkFailure>> + Send;
    /// Undoes that registration.
    fn undo(
        &self,
        key: &CompletenessKey,
    ) -> impl Future<Output = Result<CompletionAnswer, SinkFailure>> + Send;
}

/// A configured data set whose metadata DHIS2 gave.
#[derive(Debug, Clone)]
struct KnownSet {
    period_type: PeriodType,
    grace_ms: i64,
    /// As written: UIDs and `code:CODE`.
    elements: Vec<String>,
    lookup: BTreeSet<String>,
}

/// The configured data sets' metadata as last fetched.
#[derive(Debug, Default)]
pub struct DataSetCache(Mutex<Option<Fetched>>);

#[derive(Debug, Clone)]
struct Fetched {
    at: i64,
    /// Data set → its metadata, `None` when DHIS2 refused it (unknown
    /// data set, unknown period type).
    sets: BTreeMap<String, Option<KnownSet>>,
}

impl DataSetCache {
    fn get(&self) -> Option<Fetched> {
        self.0.lock().ok().and_then(|g| g.clone())
    }

    fn set(&self, fetched: Fetched) {
        if let Ok(mut g) = self.0.lock() {
            *g = Some(fetched);
        }
    }
}

/// The first instant after the period's last day (UTC midnight), in ms.
fn period_end_ms(last: NaiveDate) -> Option<i64> {
    Some(
        last.succ_opt()?
            .and_hms_opt(0, 0, 0)?
            .and_utc()
            .timestamp_millis(),
    )
}

/// When a period id's registrations are due in `calendar`: its end plus
/// `grace_ms`, and its type; `None` for an id the calendar has no period
/// for.
pub fn due_at(calendar: Calendar, period: &str, grace_ms: i64) -> Option<(PeriodType, i64)> {
    let (ty, _, last) = PeriodType::parse_id_in(calendar, period)?;
    Some((ty, period_end_ms(last)?.saturating_add(grace_ms)))
}

/// The pass.
#[derive(Debug)]
pub struct CompletenessWorker<D> {
    /// The store.
    pub store: Store,
    /// DHIS2.
    pub destination: D,
    /// The data sets to register, with their grace.
    pub data_sets: Vec<CompletenessConfig>,
    /// The server's calendar (period ids are in it).
    pub calendar: Calendar,
    /// The destination's retry policy.
    pub retry: RetryParams,
    /// The DHIS2 circuit breaker, shared with the value pushes.
    pub circuit: Arc<Circuit>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Rows claimed per pass (and five times as many notes taken).
    pub batch: i64,
    /// How long to wait before looking again while values of the set are
    /// still on their way to DHIS2.
    pub recheck: Duration,
    /// Claim lease.
    pub lease: Duration,
    /// How often the data sets' metadata is fetched again.
    pub metadata_refresh: Duration,
    /// Wait between passes when nothing is due.
    pub idle: Duration,
    /// The metadata as last fetched (start with the default).
    pub metadata: DataSetCache,
}

impl<D: CompletenessDestination> CompletenessWorker<D> {
    /// One pass: fetch the metadata when due, turn notes into rows, claim
    /// the rows due, register or undo what the values say.
    pub async fn run_once(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now_ms();
        // Only while the circuit is closed: after a cool-down the value
        // pushes send the one probe, and this pass follows their outcome.
        if self.circuit.state() != CircuitState::Closed {
            return Ok(PassReport {
                held: true,
                ..PassReport::default()
            });
        }
        let refresh = super::ms(self.metadata_refresh);
        let stale = self
            .metadata
            .get()
            .is_none_or(|f| now.saturating_sub(f.at) >= refresh);
        if stale {
            if let Err(f) = self.fetch_metadata(now).await {
                self.circuit.failure(now);
                if limiter()
                    .allow("dhis2", "completeness_metadata", now)
                    .is_some()
                {
                    warn!(destination = "dhis2", error = %f.message, "dhis2 completeness: cannot read the data sets; registrations wait");
                }
                return Ok(PassReport {
                    retried: 1,
                    ..PassReport::default()
                });
            }
            self.circuit.success();
        }
        let Some(fetched) = self.metadata.get() else {
            return Ok(PassReport::default());
        };
        let sets: BTreeMap<&str, &KnownSet> = fetched
            .sets
            .iter()
            .filter_map(|(id, s)| s.as_ref().map(|s| (id.as_str(), s)))
            .collect();

        let calendar = self.calendar;
        let drained = self
            .store
            .drain_completeness_changes(self.batch.saturating_mul(5), now, |change| {
                let Some((ty, _, last)) = PeriodType::parse_id_in(calendar, &change.period) else {
                    return Vec::new();
                };
                let Some(end) = period_end_ms(last) else {
                    return Vec::new();
                };
                sets.iter()
                    .filter(|(_, s)| s.period_type == ty && s.lookup.contains(&change.data_element))
                    .map(|(id, s)| CompletenessTarget {
                        data_set: (*id).to_owned(),
                        due_at: end.saturating_add(s.grace_ms),
                    })
                    .collect()
            })
            .await?;

        let claimed = self
            .store
            .claim_completeness(self.batch, now, super::ms(self.lease))
            .await?;
        let mut report = PassReport {
            claimed: drained + claimed.len(),
            ..PassReport::default()
        };
        if claimed.is_empty() {
            return Ok(report);
        }

        let mut down: Option<SinkFailure> = None;
        let mut results: Vec<(ClaimedCompleteness, CompletenessResult)> =
            Vec::with_capacity(claimed.len());
        for c in claimed {
            let result = match &down {
                // DHIS2 failed this pass: the rest is retried on the
                // schedule, as a failed push retries its whole batch.
                Some(f) => self.retry_result(&c, f, self.clock.now_ms()),
                // The value pushes opened the circuit meanwhile: due
                // again, claimed once it closes.
                None if self.circuit.state() != CircuitState::Closed => {
                    CompletenessResult::Postponed { until: now }
                }
                None => {
                    let (result, failure) = self.look_at(&c, &fetched, now).await?;
                    down = failure;
                    result
                }
            };
            results.push((c, result));
        }

        let m = crate::metrics::metrics();
        let now = self.clock.now_ms();
        let mut health = super::PassHealth::default();
        let mut sent = false;
        for (c, r) in &results {
            let label = match r {
                CompletenessResult::Registered => "registered",
                CompletenessResult::Undone => "undone",
                CompletenessResult::Retry { error, .. } => {
                    health.error = Some(error.clone());
                    report.retried += 1;
                    "retried"
                }
                CompletenessResult::Refused { code, message, .. } => {
                    health.error = Some(message.clone());
                    report.parked += 1;
                    m.park("dhis2", "", code);
                    "parked"
                }
                CompletenessResult::Settled | CompletenessResult::Postponed { .. } => continue,
            };
            sent = true;
            if matches!(
                r,
                CompletenessResult::Registered | CompletenessResult::Undone
            ) {
                report.delivered += 1;
                health.success_at = Some(now);
            }
            m.completeness(&c.key.data_set, label);
        }
        self.store.finish_completeness(&results, now).await?;
        warn_failures(&results, now);
        if sent {
            super::report_health(&self.store, "dhis2", &self.circuit, health, now).await;
        }
        Ok(report)
    }

    /// Fetches every configured data set's metadata; a transient failure
    /// keeps what was known.
    async fn fetch_metadata(&self, now: i64) -> Result<(), SinkFailure> {
        let mut sets = BTreeMap::new();
        for entry in &self.data_sets {
            let known = match self.destination.data_set(&entry.data_set).await {
                Ok(meta) => {
                    let lookup = meta.data_elements.iter().cloned().collect();
                    Some(KnownSet {
                        period_type: meta.period_type,
                        grace_ms: super::ms(entry.grace),
                        elements: meta.data_elements,
                        lookup,
                    })
                }
                Err(f) if f.retryable => return Err(f),
                Err(f) => {
                    warn!(data_set = %entry.data_set, error = %f.message, "dhis2 completeness: data set refused; nothing is registered for it");
                    None
                }
            };
            sets.insert(entry.data_set.clone(), known);
        }
        let n = sets.values().filter(|s| s.is_some()).count();
        info!(data_sets = n, "dhis2 completeness: data sets read");
        self.metadata.set(Fetched { at: now, sets });
        Ok(())
    }

    /// What to do with one claimed row, and the failure that should hold
    /// the rest of the pass back, if there was one.
    async fn look_at(
        &self,
        c: &ClaimedCompleteness,
        fetched: &Fetched,
        now: i64,
    ) -> Result<(CompletenessResult, Option<SinkFailure>), StoreError> {
        let set = match fetched.sets.get(&c.key.data_set) {
            // No longer configured: left as it is.
            None => return Ok((CompletenessResult::Settled, None)),
            // DHIS2 refused the data set: looked at again after the next
            // metadata refresh.
            Some(None) => {
                let until = now.saturating_add(super::ms(self.metadata_refresh));
                return Ok((CompletenessResult::Postponed { until }, None));
            }
            Some(Some(set)) => set,
        };
        let values = self
            .store
            .completeness_values(&set.elements, &c.key)
            .await?;
        if values.in_flight {
            let until = now.saturating_add(super::ms(self.recheck));
            return Ok((CompletenessResult::Postponed { until }, None));
        }
        let undo = match (values.held, c.registered) {
            (true, false) if now < c.due_at => {
                return Ok((CompletenessResult::Postponed { until: c.due_at }, None));
            }
            (true, false) => false,
            (false, true) => true,
            _ => return Ok((CompletenessResult::Settled, None)),
        };
        let started = std::time::Instant::now();
        let answer = if undo {
            self.destination.undo(&c.key).await
        } else {
            self.destination.register(&c.key).await
        };
        crate::metrics::metrics().observe_request("dhis2", started.elapsed().as_secs_f64());
        Ok(match answer {
            Ok(CompletionAnswer::Done) => {
                self.circuit.success();
                let r = if undo {
                    CompletenessResult::Undone
                } else {
                    CompletenessResult::Registered
                };
                (r, None)
            }
            Ok(CompletionAnswer::Refused { code, message }) => {
                self.circuit.success();
                (
                    CompletenessResult::Refused {
                        code,
                        message,
                        undo,
                    },
                    None,
                )
            }
            Err(f) if f.retryable => {
                let now = self.clock.now_ms();
                self.circuit.failure(now);
                (self.retry_result(c, &f, now), Some(f))
            }
            Err(f) => {
                self.circuit.success();
                (
                    CompletenessResult::Refused {
                        code: "dhis2_rejected".into(),
                        message: f.message,
                        undo,
                    },
                    None,
                )
            }
        })
    }

    /// The retry schedule's answer to a transient failure.
    fn retry_result(
        &self,
        c: &ClaimedCompleteness,
        f: &SinkFailure,
        now: i64,
    ) -> CompletenessResult {
        let attempt = u32::try_from(c.attempts + 1).unwrap_or(u32::MAX);
        let first = c.failing_since.unwrap_or(now);
        match self
            .retry
            .next(attempt, first, now, f.retry_after, jitter_unit())
        {
            NextStep::RetryAt(at) => CompletenessResult::Retry {
                next_attempt_at: at,
                error: f.message.clone(),
            },
            NextStep::GiveUp => CompletenessResult::Refused {
                code: "dhis2_retries_exhausted".into(),
                message: format!("gave up after {attempt} attempts: {}", f.message),
                undo: c.registered,
            },
        }
    }

    /// Runs passes until `shutdown` turns true.
    pub async fn run(&self, shutdown: watch::Receiver<bool>) {
        super::run_passes(
            "dhis2_completeness",
            || self.run_once(),
            self.idle,
            None,
            shutdown,
        )
        .await;
    }
}

/// One WARN line per failure class of a pass, rate-limited like the
/// value pushes' (messages are the redacted ones stored as reasons).
fn warn_failures(results: &[(ClaimedCompleteness, CompletenessResult)], now: i64) {
    let mut classes: BTreeMap<(&'static str, String), (usize, &str)> = BTreeMap::new();
    for (_, r) in results {
        let (kind, reason, message) = match r {
            CompletenessResult::Retry { error, .. } => {
                ("retried", failure_class(error), error.as_str())
            }
            CompletenessResult::Refused { code, message, .. } => {
                ("parked", code.clone(), message.as_str())
            }
            _ => continue,
        };
        classes.entry((kind, reason)).or_insert((0, message)).0 += 1;
    }
    for ((kind, reason), (registrations, message)) in classes {
        let Some(suppressed) = limiter().allow("dhis2", &format!("completeness_{reason}"), now)
        else {
            continue;
        };
        if kind == "retried" {
            warn!(destination = "dhis2", %reason, registrations, suppressed, error = %message, "dhis2 completeness registration failed; will be retried");
        } else {
            warn!(destination = "dhis2", %reason, registrations, suppressed, error = %message, "dhis2 refused a completeness registration; parked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(data_set: &str, grace: &str) -> CompletenessConfig {
        CompletenessConfig {
            data_set: data_set.into(),
            grace: humantime::parse_duration(grace).expect("duration"),
        }
    }

    #[test]
    fn problems_name_the_entry_and_field() {
        let entries = [
            entry("QX4ZTUbOt3a", "2d"),
            entry("not-a-uid", "1d"),
            entry("QX4ZTUbOt3a", "400d"),
        ];
        assert_eq!(
            problems(&entries, "destinations.dhis2.completeness"),
            vec![
                "destinations.dhis2.completeness[1].data_set: `not-a-uid` is not a DHIS2 UID (11 letters and digits, the first a letter)",
                "destinations.dhis2.completeness[2].data_set: `QX4ZTUbOt3a` is listed twice",
                "destinations.dhis2.completeness[2].grace: at most 366d",
            ]
        );
        assert!(problems(&entries[..1], "x").is_empty());
    }

    #[test]
    fn a_period_is_due_after_its_last_day_plus_the_grace() {
        let day = 24 * 3600 * 1000;
        let march_2024 = NaiveDate::from_ymd_opt(2024, 4, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
            .expect("date");
        assert_eq!(
            due_at(Calendar::Iso8601, "202403", 2 * day),
            Some((PeriodType::Monthly, march_2024 + 2 * day))
        );
        // ISO week 13 of 2024 ends on Sunday 31 March.
        assert_eq!(
            due_at(Calendar::Iso8601, "2024W13", 0),
            Some((PeriodType::Weekly, march_2024))
        );
        // Meskerem 2017 (Ethiopian) ends on 10 October 2024.
        let oct_11 = NaiveDate::from_ymd_opt(2024, 10, 11)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc().timestamp_millis())
            .expect("date");
        assert_eq!(
            due_at(Calendar::Ethiopian, "201701", 0),
            Some((PeriodType::Monthly, oct_11))
        );
        assert_eq!(due_at(Calendar::Iso8601, "202413", 0), None);
    }
}
