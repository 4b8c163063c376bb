//! Week ids on a DHIS2 server whose system calendar is `nepali`.
//!
//! DHIS2 numbers such weeks with its own rule, not ISO 8601's, and this
//! module restates it (dhis2-core, `dhis-api`):
//!
//! - `WeeklyAbstractPeriodType.createPeriod` moves the date back to the
//!   period type's first day of the week (`adjustToStartOfWeek`), and the
//!   period's id comes from that first day (`getIsoDate(Period)` reads the
//!   start date back into the system calendar);
//! - `WeeklyAbstractPeriodType.getIsoDate` on a non-ISO calendar takes
//!   `calendar.week(start)` and the start's year, plus one when the week is
//!   1 and the start lies in the year's last month;
//! - `NepaliCalendar.week` is `(10 + dayOfYear - isoWeekday) / 7`, with 0
//!   becoming 52 and anything over 52 becoming 1.
//!
//! So a Nepali year has weeks 1 to 52 only, and a week type whose first day
//! falls on 1 Baisakh can get week 52 of the new year (DHIS2 gives
//! `2082SunW52` to the Sunday week starting 1 Baisakh 2082 when that is a
//! Sunday): ids are reproduced as DHIS2 makes them, quirks included.
//! Vectors: `NepaliCalendarTest.testIsoDates` (`2081W1` = 15–21 April 2024,
//! `2080W52` = 8–14 April 2024, `2080W2` = 24–30 April 2023, `2081W2` =
//! 22–28 April 2024, `2082W1` = 14–20 April 2025).

use chrono::{Datelike, Duration, NaiveDate};

use super::{Calendar, CalendarError};

/// Weeks DHIS2 gives a Nepali year (`NepaliCalendar.DEFAULT_WEEKS_IN_YEAR`).
const WEEKS_IN_YEAR: i64 = 52;

/// The first day of the week (`first_day`: Monday = 0 … Sunday = 6) that
/// holds `date`, and DHIS2's id of that week: `{year}{infix}{week}`.
pub(super) fn week_id(
    date: NaiveDate,
    first_day: i64,
    infix: &str,
) -> Result<(NaiveDate, String), CalendarError> {
    let weekday = i64::from(date.weekday().num_days_from_monday());
    let start = date - Duration::days((weekday - first_day).rem_euclid(7));
    let c = Calendar::Nepali.from_gregorian(start)?;
    let mut day_of_year = c.day;
    for m in 1..c.month {
        day_of_year += Calendar::Nepali.days_in_month(c.year, m).unwrap_or(0);
    }
    // `isoWeekday(start)` is the type's first day, Monday = 1.
    let mut week = (10 + day_of_year - (first_day + 1)) / 7;
    if week < 1 {
        week = WEEKS_IN_YEAR;
    } else if week > WEEKS_IN_YEAR {
        week = 1;
    }
    let year = if week == 1 && c.month == 12 {
        c.year + 1
    } else {
        c.year
    };
    Ok((start, format!("{year}{infix}{week}")))
}

/// The first and last day of week id `id` (already split into `year` and
/// `week`), or `None` if DHIS2 gives no Nepali week that id.
pub(super) fn parse_week(
    id: &str,
    year: i64,
    week: i64,
    first_day: i64,
    infix: &str,
) -> Option<(NaiveDate, NaiveDate)> {
    if !(1..=WEEKS_IN_YEAR).contains(&week) {
        return None;
    }
    let first = Calendar::Nepali.to_gregorian(super::CalendarDate {
        year,
        month: 1,
        day: 1,
    })?;
    // The week lies within a few days of the year's start plus 7·(week−1)
    // (week 52 can also name the year's very first week, see above).
    let candidates = [first + Duration::days(7 * (week - 1)), first];
    candidates.into_iter().find_map(|around| {
        (-14..=14).find_map(|shift| {
            let day = around + Duration::days(shift);
            let weekday = i64::from(day.weekday().num_days_from_monday());
            if weekday != first_day {
                return None;
            }
            let (start, got) = week_id(day, first_day, infix).ok()?;
            (got == id).then(|| (start, start + Duration::days(6)))
        })
    })
}
