//! The completeness part of the static preflight: does each configured
//! `grace` leave its registrations on time?
//!
//! DHIS2 counts a completeness registration on time when it is dated at
//! most the data set's `timelyDays` after the period's last day (2.40's
//! completeness analytics table: `days(pe.enddate, cdr.date) <=
//! ds.timelydays`). Kiungo registers a period once it has ended (the day
//! after its last day) plus the `grace`, so the earliest registration is
//! `1 + floor(grace in days)` days after the last day: a grace of
//! `timelyDays` days or more makes every registration late, and
//! `timelyDays: 0` makes any registration late. That is a warning, not an
//! error: the registrations land, but the data set's timeliness reports
//! show every facility Kiungo feeds as late.

use std::collections::BTreeMap;
use std::time::Duration;

use kiungo_connectors::dhis2::DataSetTimeliness;

use super::completeness::CompletenessConfig;
use super::static_preflight::{Problem, ProblemKind, Severity};

const DAY: u64 = 24 * 3600;

/// The warnings of `entries` given the data sets' `timelyDays`
/// (`timeliness`, by UID). A data set DHIS2 did not answer for, or
/// without `timelyDays`, gives none here (the completeness pass reports a
/// data set it cannot read).
pub fn grace_problems(
    entries: &[CompletenessConfig],
    timeliness: &BTreeMap<String, DataSetTimeliness>,
) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(ds) = timeliness.get(&e.data_set) else {
            continue;
        };
        let Some(timely_days) = ds.timely_days.and_then(|d| u64::try_from(d).ok()) else {
            continue;
        };
        let earliest_days = 1 + e.grace.as_secs() / DAY;
        if earliest_days <= timely_days {
            continue;
        }
        let name = match &ds.name {
            Some(n) => format!("`{}` ({n})", ds.id),
            None => format!("`{}`", ds.id),
        };
        out.push(Problem {
            kind: ProblemKind::GraceAfterTimelyDays,
            severity: Severity::Warning,
            file: None,
            line: None,
            mapping: None,
            field: Some(format!("completeness[{i}].grace")),
            id: Some(ds.id.clone()),
            from: None,
            message: format!(
                "{} is not shorter than data set {name}'s timelyDays ({timely_days}): \
                 registrations go out {earliest_days} or more days after a period's last day, \
                 which DHIS2's timeliness reports count as late; shorten the grace below \
                 {timely_days}d or raise the data set's timelyDays",
                humantime::format_duration(Duration::from_secs(e.grace.as_secs()))
            ),
        });
    }
    out
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

    fn sets() -> BTreeMap<String, DataSetTimeliness> {
        [
            ("QX4ZTUbOt3a", Some("Reproductive Health"), Some(10)),
            ("BfMAe6Itzgt", None, Some(0)),
            ("pBOMPrpg1QX", None, None),
        ]
        .into_iter()
        .map(|(id, name, days)| {
            (
                id.to_owned(),
                DataSetTimeliness {
                    id: id.into(),
                    name: name.map(str::to_owned),
                    timely_days: days,
                },
            )
        })
        .collect()
    }

    fn warned(entries: &[CompletenessConfig]) -> Vec<(String, String)> {
        grace_problems(entries, &sets())
            .into_iter()
            .map(|p| {
                assert_eq!(p.severity, Severity::Warning);
                assert_eq!(p.kind, ProblemKind::GraceAfterTimelyDays);
                (p.field.unwrap_or_default(), p.id.unwrap_or_default())
            })
            .collect()
    }

    /// With `timelyDays: 10` the earliest registration after a grace of
    /// 9 days 23 hours is 10 days after the last day (on time); after 10
    /// days it is 11 (late).
    #[test]
    fn a_grace_of_timely_days_or_more_is_a_warning() {
        assert_eq!(warned(&[entry("QX4ZTUbOt3a", "9d 23h")]), []);
        assert_eq!(warned(&[entry("QX4ZTUbOt3a", "2d")]), []);
        assert_eq!(
            warned(&[entry("QX4ZTUbOt3a", "2d"), entry("QX4ZTUbOt3a", "10d")]),
            [("completeness[1].grace".into(), "QX4ZTUbOt3a".into())]
        );
    }

    #[test]
    fn timely_days_zero_makes_any_grace_late_and_unknown_sets_say_nothing() {
        assert_eq!(
            warned(&[entry("BfMAe6Itzgt", "0s")]),
            [("completeness[0].grace".into(), "BfMAe6Itzgt".into())]
        );
        assert_eq!(
            warned(&[entry("pBOMPrpg1QX", "300d"), entry("NoSuchSet01", "300d")]),
            []
        );
    }

    #[test]
    fn the_warning_names_the_entry_the_data_set_and_the_fix() {
        let p = grace_problems(&[entry("QX4ZTUbOt3a", "12d")], &sets());
        assert_eq!(
            p[0].to_string(),
            "destinations.dhis2.completeness[0].grace: warning: 12days is not shorter than \
             data set `QX4ZTUbOt3a` (Reproductive Health)'s timelyDays (10): registrations \
             go out 13 or more days after a period's last day, which DHIS2's timeliness \
             reports count as late; shorten the grace below 10d or raise the data set's \
             timelyDays"
        );
    }
}
