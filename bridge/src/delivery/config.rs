//! `destinations:` in the config file: each server's connection settings
//! (owned by its connector) and how Kiungo delivers to it.

use std::time::Duration;

use kiungo_connectors::dhis2::Dhis2Config;
use kiungo_connectors::fhir::FhirConfig;
use serde::Deserialize;

use super::retry::RetryParams;

/// Where outputs go. Without a destination, its outputs wait in the store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsConfig {
    /// The FHIR server.
    #[serde(default)]
    pub fhir: Option<FhirDestinationConfig>,
    /// The DHIS2 instance.
    #[serde(default)]
    pub dhis2: Option<Dhis2DestinationConfig>,
}

/// `destinations.fhir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirDestinationConfig {
    /// Server URL, auth and timeouts.
    pub server: FhirConfig,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryParams,
    /// Circuit breaker.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// Bundles claimed and sent concurrently per pass (the most requests
    /// in flight to the server at once).
    #[serde(default = "default_fhir_batch")]
    pub concurrency: i64,
    /// Events sent in one transaction (1, the default: each event's
    /// bundle alone). More makes fewer, larger requests for a slow or
    /// metered link: an entry several events share (a Patient matched by
    /// identifier) is sent once, entries that touch the same resource
    /// differently never share a transaction, and a transaction the
    /// server refuses is sent again event by event, so that only the
    /// refused event is parked. The server sees one request per
    /// transaction; an event's `traceparent` travels only with the first
    /// event of its transaction.
    #[serde(default = "default_events_per_transaction")]
    pub events_per_transaction: usize,
    /// How long a claimed bundle is held before another worker (or
    /// replica) may take it over; longer than the request timeout.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// How a resource that an edit, a replacement or a re-mapping no
    /// longer produces leaves the server: `delete` (the default) or
    /// `entered-in-error` (an update of its status, for registries that
    /// forbid deletes; types without such a status are deleted).
    #[serde(default)]
    pub withdraw: super::withdrawal::WithdrawMode,
}

/// `destinations.dhis2`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhis2DestinationConfig {
    /// Instance URL, auth, timeouts and batch size.
    pub server: Dhis2Config,
    /// Retry policy.
    #[serde(default)]
    pub retry: RetryParams,
    /// Circuit breaker.
    #[serde(default)]
    pub circuit: CircuitConfig,
    /// A changed total is pushed once it has not changed for this long,
    /// so that a burst of events goes out as one value.
    #[serde(default = "default_push_delay", with = "humantime_serde")]
    pub push_delay: Duration,
    /// While changes keep coming (a backlog draining), a total is pushed
    /// at the latest this long after its first change: each total goes
    /// out about once per `max_push_delay`, not once per `push_delay`.
    /// Equal to `push_delay`, it means "`push_delay` after the first
    /// change" whatever comes after.
    #[serde(default = "default_max_push_delay", with = "humantime_serde")]
    pub max_push_delay: Duration,
    /// Claim lease.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Check at start, in the background: the credentials, the server's
    /// version and calendar, every reference the mappings name statically
    /// (exists, in a data set of the rule's period type assigned to the
    /// org unit, option combo of the data element's category combo), and
    /// every reference in stored values (resolving `code:` references).
    /// Problems are logged and shown at `/v1/preflight`.
    #[serde(default = "default_true")]
    pub preflight: bool,
    /// Every this long, every total is pushed again, so that a value
    /// changed in DHIS2 by hand is set back to what the events say.
    #[serde(default = "default_resync", with = "humantime_serde")]
    pub resync_interval: Duration,
    /// How often the preflight cache is refreshed.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub metadata_refresh: Duration,
    /// The server's system calendar (`calendar` in `/api/system/info`):
    /// `iso8601` (default), `ethiopian` or `nepali`. Period ids are
    /// computed in it from each event's own date when the event is mapped
    /// and stored (never at delivery or replay); any other name (DHIS2's
    /// `coptic`, `islamic`, `persian`, `thai`, `julian`) is refused when the
    /// config loads.
    #[serde(default)]
    pub calendar: kiungo_mappings::period::Calendar,
    /// Reconcile some data sets on a schedule (reading only) and export
    /// `kiungo_dhis2_drift_values{data_set}`. Off when absent.
    #[serde(default)]
    pub reconcile: Option<crate::reconcile::schedule::ReconcileSchedule>,
    /// Register data set completeness with DHIS2: for each listed data
    /// set, once a period has ended plus its `grace`, each org unit where
    /// DHIS2 holds values of the set from Kiungo is registered complete,
    /// once; undone if all its values are withdrawn. Off when absent
    /// (`docs/dhis2-completeness.md` says when to turn it on).
    #[serde(default)]
    pub completeness: Vec<super::completeness::CompletenessConfig>,
}

/// `circuit:` of a destination.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitConfig {
    /// Consecutive transient failures that open the circuit.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long it stays open before one probe.
    #[serde(default = "default_cool_down", with = "humantime_serde")]
    pub cool_down: Duration,
}

impl Default for CircuitConfig {
    fn default() -> Self {
        Self {
            failures: default_failures(),
            cool_down: default_cool_down(),
        }
    }
}

const fn default_fhir_batch() -> i64 {
    32
}
const fn default_events_per_transaction() -> usize {
    1
}
const fn default_lease() -> Duration {
    Duration::from_secs(120)
}
const fn default_push_delay() -> Duration {
    Duration::from_secs(5)
}
const fn default_max_push_delay() -> Duration {
    Duration::from_secs(60)
}
const fn default_resync() -> Duration {
    Duration::from_secs(24 * 3600)
}
const fn default_true() -> bool {
    true
}
const fn default_refresh() -> Duration {
    Duration::from_secs(3600)
}
const fn default_failures() -> u32 {
    5
}
const fn default_cool_down() -> Duration {
    Duration::from_secs(30)
}

impl DestinationsConfig {
    /// Problems, each naming its field.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(f) = &self.fhir {
            out.extend(f.retry.problems("destinations.fhir.retry"));
            if f.concurrency < 1 {
                out.push("destinations.fhir.concurrency: must be at least 1".into());
            }
            if f.lease <= f.server.timeout {
                out.push("destinations.fhir.lease: must be longer than server.timeout".into());
            }
        }
        if let Some(d) = &self.dhis2 {
            out.extend(d.retry.problems("destinations.dhis2.retry"));
            if let Some(r) = &d.reconcile {
                out.extend(r.problems("destinations.dhis2.reconcile"));
            }
            out.extend(super::completeness::problems(
                &d.completeness,
                "destinations.dhis2.completeness",
            ));
            if d.lease <= d.server.timeout {
                out.push("destinations.dhis2.lease: must be longer than server.timeout".into());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhis2_with(calendar: &str) -> DestinationsConfig {
        serde_saphyr::from_str(&format!(
            "dhis2:\n  server: {{base_url: 'http://dhis2.example', auth: {{type: none}}}}\n  calendar: {calendar}\n"
        ))
        .expect("parses")
    }

    #[test]
    fn completeness_is_read_checked_and_refuses_unknown_fields() {
        let config: DestinationsConfig = serde_saphyr::from_str(
            "dhis2:\n  server: {base_url: 'http://dhis2.example', auth: {type: none}}\n  completeness:\n    - {data_set: QX4ZTUbOt3a, grace: 2d}\n    - {data_set: BfMAe6Itzgt, grace: 12h}\n",
        )
        .expect("parses");
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        let sets = config.dhis2.map(|d| d.completeness).unwrap_or_default();
        assert_eq!(sets.len(), 2);
        assert_eq!(sets[1].grace, Duration::from_secs(12 * 3600));

        let bad: DestinationsConfig = serde_saphyr::from_str(
            "dhis2:\n  server: {base_url: 'http://dhis2.example', auth: {type: none}}\n  completeness:\n    - {data_set: 'code:ANC', grace: 2d}\n",
        )
        .expect("parses");
        assert_eq!(
            bad.problems(),
            vec![
                "destinations.dhis2.completeness[0].data_set: `code:ANC` is not a DHIS2 UID (11 letters and digits, the first a letter)"
            ]
        );
        let err = serde_saphyr::from_str::<DestinationsConfig>(
            "dhis2:\n  server: {base_url: 'http://dhis2.example', auth: {type: none}}\n  completeness:\n    - {data_set: QX4ZTUbOt3a, grace: 2d, data_elements: [x]}\n",
        )
        .expect_err("unknown field");
        assert!(err.to_string().contains("data_elements"), "{err}");
        let err = serde_saphyr::from_str::<DestinationsConfig>(
            "dhis2:\n  server: {base_url: 'http://dhis2.example', auth: {type: none}}\n  completeness:\n    - {data_set: QX4ZTUbOt3a}\n",
        )
        .expect_err("grace is required");
        assert!(err.to_string().contains("grace"), "{err}");
    }

    #[test]
    fn supported_calendars_are_accepted_and_others_refused_by_name() {
        use kiungo_mappings::period::Calendar;
        for (name, calendar) in [
            ("iso8601", Calendar::Iso8601),
            ("ethiopian", Calendar::Ethiopian),
            ("nepali", Calendar::Nepali),
        ] {
            let config = dhis2_with(name);
            assert!(config.problems().is_empty(), "{name}");
            assert_eq!(config.dhis2.map(|d| d.calendar), Some(calendar));
        }
        let err = serde_saphyr::from_str::<DestinationsConfig>(
            "dhis2:\n  server: {base_url: 'http://dhis2.example', auth: {type: none}}\n  calendar: coptic\n",
        )
        .expect_err("coptic is not supported");
        assert!(
            err.to_string().contains("unknown calendar `coptic`"),
            "{err}"
        );
    }
}
