//! DHIS2 system calendars: Gregorian dates into the calendar of the server.
//!
//! A DHIS2 instance keeps its periods in its system calendar (`calendar` in
//! `/api/system/info`). An Ethiopian instance's `200901` is the first month
//! (Meskerem) of 2009 in the Ethiopian calendar, which began on 11 September
//! 2016, not January 2009. Events carry Gregorian dates; this module gives
//! the date in the server's calendar, from which
//! [`PeriodType::period_id_in`](crate::PeriodType::period_id_in) builds the
//! period id that server expects.
//!
//! Guarantee: every conversion is total. A date the calendar cannot place in
//! a DHIS2 period (outside the Nepali table, or in Pagume) is a
//! [`CalendarError`] naming the date and the reason, never a panic.
//!
//! - `iso8601`: the Gregorian calendar, unchanged.
//! - `ethiopian`: 12 months of 30 days and Pagume, 5 or 6 extra days at the
//!   end of the year (the year starts on 11 September, or 12 September
//!   before a Gregorian leap year). DHIS2's `EthiopianCalendar` refuses
//!   Pagume ("month must be between 1 and 12"), so no DHIS2 period contains
//!   those days; a contribution dated in Pagume is refused with that reason.
//! - `nepali`: Bikram Sambat, months of 29 to 32 days, from DHIS2's own
//!   table of month lengths (Bikram Sambat 1970–2100, i.e. 13 April 1913 to
//!   15 April 2044); dates outside it are refused.

mod nepali_table;

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use nepali_table::{FIRST_YEAR as NEPALI_FIRST_YEAR, NEPALI_YEARS};

/// The system calendar of a DHIS2 server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Calendar {
    /// Gregorian (DHIS2's `iso8601`, the default).
    #[default]
    Iso8601,
    /// Ethiopian (Amete Mihret era), as DHIS2's `ethiopian`.
    Ethiopian,
    /// Nepali (Bikram Sambat), as DHIS2's `nepali`.
    Nepali,
}

/// A date in some [`Calendar`]: year, month (1-based) and day (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CalendarDate {
    /// Year in the calendar's era.
    pub year: i64,
    /// Month, 1–12 (13 for Ethiopian Pagume).
    pub month: i64,
    /// Day of the month, from 1.
    pub day: i64,
}

/// A Gregorian date that has no place in a DHIS2 calendar's periods.
///
/// The text names the date (an event's date, not personal data) and why;
/// it never holds any other value of the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    /// The date lies outside the years the calendar's table covers.
    #[error(
        "date {date} is outside the {calendar} calendar's supported range \
         ({first} to {last})"
    )]
    OutOfRange {
        /// The calendar.
        calendar: Calendar,
        /// The Gregorian date given.
        date: NaiveDate,
        /// First supported Gregorian date.
        first: NaiveDate,
        /// Last supported Gregorian date.
        last: NaiveDate,
    },
    /// The date is in Ethiopian Pagume, which DHIS2 puts in no period.
    #[error(
        "date {date} falls in Pagume {year} (the 13th Ethiopian month), which DHIS2's \
         ethiopian calendar puts in no period"
    )]
    Pagume {
        /// The Gregorian date given.
        date: NaiveDate,
        /// Its Ethiopian year.
        year: i64,
    },
    /// The period type has no id in this calendar (here).
    #[error("period type {period_type} is not supported with the {calendar} calendar")]
    Unsupported {
        /// The calendar.
        calendar: Calendar,
        /// The period type's DHIS2 name.
        period_type: &'static str,
    },
}

impl CalendarError {
    /// Whether trying again later could help: never, the date and the
    /// calendar do not change; the contribution is parked with this reason.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        false
    }

    /// The reason without the date (which stays with an error's values):
    /// e.g. "the date falls in Pagume 2008 (the 13th Ethiopian month), …".
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            CalendarError::OutOfRange {
                calendar,
                first,
                last,
                ..
            } => format!(
                "the date is outside the {calendar} calendar's supported range ({first} to {last})"
            ),
            CalendarError::Pagume { year, .. } => format!(
                "the date falls in Pagume {year} (the 13th Ethiopian month), which DHIS2's \
                 ethiopian calendar puts in no period"
            ),
            CalendarError::Unsupported { .. } => self.to_string(),
        }
    }
}

/// The error of parsing a string that is not a supported calendar name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown calendar `{0}`; expected one of: iso8601, ethiopian, nepali")]
pub struct UnknownCalendar(pub String);

/// Days from 0001-01-01 (CE day 1) of the Ethiopian epoch, 1 Meskerem 1
/// (29 August 8 Julian = 27 August 8 proleptic Gregorian).
const ETHIOPIAN_EPOCH_CE: i64 = 2_796;

impl Calendar {
    /// All supported calendars.
    pub const ALL: [Calendar; 3] = [Calendar::Iso8601, Calendar::Ethiopian, Calendar::Nepali];

    /// DHIS2's name of the calendar: `iso8601`, `ethiopian` or `nepali`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Calendar::Iso8601 => "iso8601",
            Calendar::Ethiopian => "ethiopian",
            Calendar::Nepali => "nepali",
        }
    }

    /// The date `date` (Gregorian) in this calendar.
    ///
    /// Ethiopian Pagume comes back as month 13, which period ids refuse;
    /// Nepali dates outside DHIS2's table are [`CalendarError::OutOfRange`].
    ///
    /// ```
    /// use chrono::NaiveDate;
    /// use kiungo_mappings::period::{Calendar, CalendarDate};
    ///
    /// let d = NaiveDate::from_ymd_opt(2014, 9, 11).ok_or("bad date")?;
    /// let e = Calendar::Ethiopian.from_gregorian(d).map_err(|_| "no date")?;
    /// assert_eq!(e, CalendarDate { year: 2007, month: 1, day: 1 });
    /// # Ok::<(), &str>(())
    /// ```
    pub fn from_gregorian(self, date: NaiveDate) -> Result<CalendarDate, CalendarError> {
        match self {
            Calendar::Iso8601 => Ok(CalendarDate {
                year: i64::from(date.year()),
                month: i64::from(date.month()),
                day: i64::from(date.day()),
            }),
            Calendar::Ethiopian => Ok(ethiopian_from_ce(ce_day(date))),
            Calendar::Nepali => nepali_from_ce(ce_day(date)).ok_or_else(|| {
                let (first, last) = nepali_range();
                CalendarError::OutOfRange {
                    calendar: self,
                    date,
                    first,
                    last,
                }
            }),
        }
    }

    /// Days in month `month` (1–12) of `year`, or `None` for a month that
    /// does not exist (13 and over; a Nepali year outside DHIS2's table).
    /// Ethiopian months have 30 days; Pagume is no month here, as in DHIS2.
    #[must_use]
    pub fn days_in_month(self, year: i64, month: i64) -> Option<i64> {
        if !(1..=12).contains(&month) {
            return None;
        }
        match self {
            Calendar::Iso8601 => {
                let y = i32::try_from(year).ok()?;
                let m = u32::try_from(month).ok()?;
                let first = NaiveDate::from_ymd_opt(y, m, 1)?;
                let next = if m == 12 {
                    NaiveDate::from_ymd_opt(y.checked_add(1)?, 1, 1)?
                } else {
                    NaiveDate::from_ymd_opt(y, m + 1, 1)?
                };
                Some((next - first).num_days())
            }
            Calendar::Ethiopian => Some(30),
            Calendar::Nepali => nepali_month_days(year, month),
        }
    }

    /// The Gregorian date of `date` in this calendar, or `None` if there is
    /// no such day (month 13 but in Ethiopian Pagume, day 31 of a 30-day
    /// month, a Nepali year outside the table).
    #[must_use]
    pub fn to_gregorian(self, date: CalendarDate) -> Option<NaiveDate> {
        let CalendarDate { year, month, day } = date;
        match self {
            Calendar::Iso8601 => NaiveDate::from_ymd_opt(
                i32::try_from(year).ok()?,
                u32::try_from(month).ok()?,
                u32::try_from(day).ok()?,
            ),
            Calendar::Ethiopian => {
                let pagume = if year.rem_euclid(4) == 3 { 6 } else { 5 };
                let days = if month == 13 { pagume } else { 30 };
                if !(1..=13).contains(&month) || !(1..=days).contains(&day) {
                    return None;
                }
                let ce = ETHIOPIAN_EPOCH_CE
                    + 365 * (year - 1)
                    + year.div_euclid(4)
                    + 30 * (month - 1)
                    + day
                    - 1;
                from_ce_day(ce)
            }
            Calendar::Nepali => {
                let days = nepali_month_days(year, month)?;
                if !(1..=days).contains(&day) {
                    return None;
                }
                let mut ce = nepali_first_ce();
                for y in NEPALI_FIRST_YEAR..year {
                    ce += i64::from(nepali_year(y)?[0]);
                }
                for m in 1..month {
                    ce += nepali_month_days(year, m)?;
                }
                from_ce_day(ce + day - 1)
            }
        }
    }
}

/// Days of month `month` of Bikram Sambat year `year`, per DHIS2's table.
fn nepali_month_days(year: i64, month: i64) -> Option<i64> {
    let row = nepali_year(year)?;
    let m = usize::try_from(month)
        .ok()
        .filter(|m| (1..=12).contains(m))?;
    Some(i64::from(row[m]))
}

fn nepali_year(year: i64) -> Option<&'static [u16; 13]> {
    let i = usize::try_from(year - NEPALI_FIRST_YEAR).ok()?;
    NEPALI_YEARS.get(i)
}

/// CE day of 1 Baisakh of the table's first year: DHIS2 anchors 1 Baisakh
/// 2000 at 14 April 1943 and counts the table back from there.
fn nepali_first_ce() -> i64 {
    // 1943-04-14 as days from CE (0001-01-01 is day 1).
    const ANCHOR_CE: i64 = 709_404;
    let before: i64 = NEPALI_YEARS
        .iter()
        .take(usize::try_from(2000 - NEPALI_FIRST_YEAR).unwrap_or(0))
        .map(|row| i64::from(row[0]))
        .sum();
    ANCHOR_CE - before
}

/// The first and last Gregorian days the Nepali table covers.
fn nepali_range() -> (NaiveDate, NaiveDate) {
    let first = nepali_first_ce();
    let total: i64 = NEPALI_YEARS.iter().map(|row| i64::from(row[0])).sum();
    (
        from_ce_day(first).unwrap_or(NaiveDate::MIN),
        from_ce_day(first + total - 1).unwrap_or(NaiveDate::MAX),
    )
}

fn nepali_from_ce(ce: i64) -> Option<CalendarDate> {
    let mut rest = ce - nepali_first_ce();
    if rest < 0 {
        return None;
    }
    for (year, row) in (NEPALI_FIRST_YEAR..).zip(NEPALI_YEARS.iter()) {
        if rest >= i64::from(row[0]) {
            rest -= i64::from(row[0]);
            continue;
        }
        for (month, &len) in (1..).zip(row[1..].iter()) {
            if rest < i64::from(len) {
                return Some(CalendarDate {
                    year,
                    month,
                    day: rest + 1,
                });
            }
            rest -= i64::from(len);
        }
        return None;
    }
    None
}

fn ethiopian_from_ce(ce: i64) -> CalendarDate {
    // Years of 365 days, and 366 when `year % 4 == 3` (Pagume 6 ends
    // them): `before(year) = 365 * (year - 1) + year / 4` days precede a
    // year, so the year of day `n` is `(4n + 1463) / 1461`.
    let n = ce - ETHIOPIAN_EPOCH_CE;
    let year = (4 * n + 1463).div_euclid(1461);
    let day_of_year = n - (365 * (year - 1) + year.div_euclid(4));
    CalendarDate {
        year,
        month: day_of_year / 30 + 1,
        day: day_of_year % 30 + 1,
    }
}

fn ce_day(date: NaiveDate) -> i64 {
    i64::from(date.num_days_from_ce())
}

fn from_ce_day(ce: i64) -> Option<NaiveDate> {
    NaiveDate::from_num_days_from_ce_opt(i32::try_from(ce).ok()?)
}

impl fmt::Display for Calendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Calendar {
    type Err = UnknownCalendar;

    /// Parses `iso8601`, `ethiopian` or `nepali`, exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Calendar::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCalendar(s.to_owned()))
    }
}

impl Serialize for Calendar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Calendar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
