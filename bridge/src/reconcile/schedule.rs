//! The scheduled reconciliation (`destinations.dhis2.reconcile`, off by
//! default): every `every`, the last `periods` periods of each listed data
//! set are reconciled (reading only: nothing is repaired) and the drift
//! is exported as `kiungo_dhis2_drift_values{data_set}`.

use std::time::Duration;

use chrono::NaiveDate;
use kiungo_connectors::dhis2::Dhis2Client;
use kiungo_mappings::PeriodType;
use kiungo_mappings::period::Calendar;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{info, warn};

use super::compare::DriftKind;
use super::run::{Request, reconcile};
use crate::store::Store;

/// `destinations.dhis2.reconcile`: reconcile some data sets on a
/// schedule and export the drift as a gauge. Off when absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSchedule {
    /// How often, e.g. `24h`. Each run reads every listed data set's
    /// values for `periods` periods from DHIS2: keep it rare on a shared
    /// server.
    #[serde(with = "humantime_serde")]
    pub every: Duration,
    /// How many periods, the current one included, back from today.
    #[serde(default = "default_periods")]
    pub periods: u32,
    /// The data sets (UIDs) to reconcile.
    pub data_sets: Vec<String>,
}

const fn default_periods() -> u32 {
    3
}

impl ReconcileSchedule {
    /// Problems with the values, each naming its field.
    pub fn problems(&self, at: &str) -> Vec<String> {
        let mut out = Vec::new();
        if self.every < Duration::from_secs(60) {
            out.push(format!("{at}.every: must be at least 1m"));
        }
        if self.periods == 0 || self.periods > 24 {
            out.push(format!("{at}.periods: must be between 1 and 24"));
        }
        if self.data_sets.is_empty() {
            out.push(format!("{at}.data_sets: name at least one data set"));
        }
        out
    }
}

/// The ids of the `n` periods of `period_type` up to the one holding
/// `today`, newest first, in `calendar` (through the period API, so that
/// non-ISO calendars are handled where they are). Days with no period in
/// the calendar (Ethiopian Pagume) are stepped over.
pub fn last_periods(
    period_type: PeriodType,
    calendar: Calendar,
    today: NaiveDate,
    n: usize,
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut day = today;
    // A financial year is the longest period: 366 days a step at most.
    for _ in 0..(n * 370) {
        if out.len() == n {
            break;
        }
        if let Ok(id) = period_type.period_id_in(calendar, day)
            && out.last() != Some(&id)
        {
            out.push(id);
        }
        match day.pred_opt() {
            Some(d) => day = d,
            None => break,
        }
    }
    out
}

/// Runs the schedule until `shutdown`.
pub async fn run(
    client: Dhis2Client,
    store: Store,
    schedule: ReconcileSchedule,
    calendar: Calendar,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(schedule.every) => {}
            _ = shutdown.changed() => return,
        }
        for data_set in &schedule.data_sets {
            if *shutdown.borrow() {
                return;
            }
            match run_one(&client, &store, data_set, &schedule, calendar).await {
                Ok(drift) => {
                    crate::metrics::metrics().set_dhis2_drift(data_set, drift);
                    info!(data_set, drift, "dhis2 reconciliation");
                }
                Err(error) => warn!(data_set, %error, "dhis2 reconciliation failed; next time"),
            }
        }
    }
}

/// Reconciles one data set's last periods: the number of keys that
/// differ (missing, different, not from Kiungo).
async fn run_one(
    client: &Dhis2Client,
    store: &Store,
    data_set: &str,
    schedule: &ReconcileSchedule,
    calendar: Calendar,
) -> Result<i64, String> {
    let info = client
        .data_set(data_set)
        .await
        .map_err(|e| crate::delivery::sinks::redact(&e.to_string()))?;
    let period_type: PeriodType = info
        .period_type
        .as_deref()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("data set {data_set}: {e}"))?;
    let today = chrono::Utc::now().date_naive();
    let periods = last_periods(period_type, calendar, today, schedule.periods as usize);
    let mut drift = 0i64;
    for period in periods {
        let request = Request {
            data_set: data_set.to_owned(),
            period,
            org_unit: None,
            children: false,
        };
        let report = reconcile(client, store, &request)
            .await
            .map_err(|e| crate::delivery::sinks::redact(&e.to_string()))?;
        drift += DriftKind::ALL
            .iter()
            .filter(|k| k.is_drift())
            .map(|k| i64::try_from(report.count(*k)).unwrap_or(i64::MAX))
            .sum::<i64>();
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    #[test]
    fn last_periods_walk_back_across_years() {
        assert_eq!(
            last_periods(PeriodType::Monthly, Calendar::Iso8601, day(2024, 2, 10), 3),
            vec!["202402", "202401", "202312"]
        );
        assert_eq!(
            last_periods(PeriodType::Quarterly, Calendar::Iso8601, day(2024, 1, 1), 2),
            vec!["2024Q1", "2023Q4"]
        );
        assert_eq!(
            last_periods(PeriodType::Yearly, Calendar::Iso8601, day(2024, 6, 1), 2),
            vec!["2024", "2023"]
        );
    }

    #[test]
    fn last_periods_follow_the_calendar() {
        // 11 September 2016 is 1 Meskerem 2009 EC; the day before is in
        // Pagume 2008, which has no monthly period: stepped over to
        // Nehase 2008 (month 12).
        assert_eq!(
            last_periods(
                PeriodType::Monthly,
                Calendar::Ethiopian,
                day(2016, 9, 11),
                2
            ),
            vec!["200901", "200812"]
        );
    }

    #[test]
    fn schedule_values_are_checked() {
        let s = ReconcileSchedule {
            every: Duration::from_secs(1),
            periods: 0,
            data_sets: vec![],
        };
        assert_eq!(s.problems("destinations.dhis2.reconcile").len(), 3);
    }
}
