//! DHIS2 period types and period identifiers.
//!
//! DHIS2 stores aggregate data against a *period*, named by an identifier
//! such as `2024W7`, `202403` or `2024NovQ2`. This module computes those
//! identifiers the way DHIS2 2.38–2.41 does on the ISO 8601 (Gregorian)
//! calendar, and recognises them again:
//!
//! - [`PeriodType::period_id`] gives the id of the period containing a date
//!   (DHIS2's `PeriodType.createPeriod(date).getIsoDate()`);
//! - [`PeriodType::parse_id`] recognises an id and gives its type and first
//!   and last day (DHIS2's `PeriodType.getPeriodFromIsoString`).
//!
//! | type | format | example | covers |
//! | --- | --- | --- | --- |
//! | `Daily` | `yyyyMMdd` | `20040315` | 15 March 2004 |
//! | `Weekly` | `yyyyWn` | `2004W10` | ISO week 10 of 2004, Monday–Sunday |
//! | `WeeklyWednesday` | `yyyyWedWn` | `2015WedW5` | week 5 of 2015, Wednesday–Tuesday |
//! | `WeeklyThursday` | `yyyyThuWn` | `2015ThuW6` | week 6 of 2015, Thursday–Wednesday |
//! | `WeeklySaturday` | `yyyySatWn` | `2015SatW7` | week 7 of 2015, Saturday–Friday |
//! | `WeeklySunday` | `yyyySunWn` | `2015SunW8` | week 8 of 2015, Sunday–Saturday |
//! | `BiWeekly` | `yyyyBiWn` | `2015BiW1` | ISO weeks 1–2 of 2015 |
//! | `Monthly` | `yyyyMM` | `200403` | March 2004 |
//! | `BiMonthly` | `yyyyMMB` | `200401B` | January–February 2004 |
//! | `Quarterly` | `yyyyQn` | `2004Q1` | January–March 2004 |
//! | `QuarterlyNov` | `yyyyNovQn` | `2004NovQ1` | November 2003–January 2004 |
//! | `SixMonthly` | `yyyySn` | `2004S1` | January–June 2004 |
//! | `SixMonthlyApril` | `yyyyAprilSn` | `2004AprilS1` | April–September 2004 |
//! | `SixMonthlyNov` | `yyyyNovSn` | `2004NovS1` | November 2003–April 2004 |
//! | `Yearly` | `yyyy` | `2004` | 2004 |
//! | `FinancialApril` | `yyyyApril` | `2004April` | April 2004–March 2005 |
//! | `FinancialJuly` | `yyyyJuly` | `2004July` | July 2004–June 2005 |
//! | `FinancialOct` | `yyyyOct` | `2004Oct` | October 2004–September 2005 |
//! | `FinancialNov` | `yyyyNov` | `2004Nov` | November 2003–October 2004 |
//!
//! The three November types name the year they *end* in, unlike April, July
//! and October, which name the year they start in. This follows DHIS2's
//! source (`QuarterlyNovemberPeriodType`, `SixMonthlyNovemberPeriodType` and
//! `FinancialNovemberPeriodType` all print `startYear + 1` for a period
//! starting in November, and `DateUnitPeriodTypeParser` reads `yyyyNov…` back
//! as starting in November of `yyyy - 1`). Beware tables that show
//! `2004NovS1` as November 2004–April 2005: DHIS2 writes and reads it as
//! November 2003–April 2004.
//!
//! Weeks follow `java.time.temporal.WeekFields.of(firstDay, 4)`, as DHIS2's
//! `WeeklyAbstractPeriodType.getIsoDate` does: a week belongs to the year
//! holding at least four of its days, so the week-based year of an id can
//! differ from the calendar year of some of its days (29 December 2014 is in
//! `2015W1`; 1 January 2016 is in `2015W53`). Week numbers are not padded.
//!
//! Every function here is total: none panics, whatever the date or string.
//!
//! ## Non-Gregorian system calendars
//!
//! A DHIS2 server whose system calendar is `ethiopian` or `nepali` names
//! its periods in that calendar: [`PeriodType::period_id_in`] converts the
//! date with [`Calendar`] first. Daily ids are `yyyyMMdd` of the calendar's
//! date; the month-based types (monthly up to the financial years) count
//! the calendar's months exactly as above (`200901` is Meskerem 2009 on an
//! Ethiopian server, `2009Q1` its first three months, `2009July` the year
//! from its seventh month), as DHIS2's `createPeriod(date, calendar)` does
//! with the calendar's `DateTimeUnit`. Nepali weeks follow DHIS2's own
//! rule (`NepaliCalendar.week`, see `nepali_weeks.rs`). Ethiopian weeks
//! and bi-weeks in either calendar are refused
//! ([`CalendarError::Unsupported`]): DHIS2's `EthiopianCalendar` day
//! arithmetic skips Pagume (`plusDays`/`minusDays` count 360-day years)
//! and numbers weeks with Joda's Ethiopic week year, which is not
//! reproduced here. [`PeriodType::parse_id_in`] recognises the ids a
//! calendar has.

pub mod calendar;
mod nepali_weeks;

pub use calendar::{Calendar, CalendarDate, CalendarError, UnknownCalendar};

use std::fmt;
use std::str::FromStr;

use chrono::{Datelike, NaiveDate};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// DHIS2 period types.
///
/// The variant names are DHIS2's period type names; [`PeriodType::name`],
/// [`Display`](fmt::Display), [`FromStr`] and serde all use them exactly.
/// See the [module documentation](self) for the id format of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeriodType {
    /// One day: `yyyyMMdd`, e.g. `20040315`.
    Daily,
    /// ISO week, Monday to Sunday: `yyyyWn`, e.g. `2004W10`.
    Weekly,
    /// Week from Wednesday to Tuesday: `yyyyWedWn`, e.g. `2015WedW5`.
    WeeklyWednesday,
    /// Week from Thursday to Wednesday: `yyyyThuWn`, e.g. `2015ThuW6`.
    WeeklyThursday,
    /// Week from Saturday to Friday: `yyyySatWn`, e.g. `2015SatW7`.
    WeeklySaturday,
    /// Week from Sunday to Saturday: `yyyySunWn`, e.g. `2015SunW8`.
    WeeklySunday,
    /// Two ISO weeks, starting on the Monday of an odd ISO week:
    /// `yyyyBiWn`, e.g. `2015BiW1` (ISO weeks 1 and 2 of 2015).
    ///
    /// In a year with 53 ISO weeks, DHIS2 makes week 53 start `yyyyBiW27`,
    /// which, like every bi-week, lasts 14 days, so it overlaps the first
    /// week of `(yyyy+1)BiW1`. Dates in that overlap belong to `(yyyy+1)BiW1`
    /// ([`PeriodType::period_id`]), but [`PeriodType::parse_id`] gives
    /// `yyyyBiW27` DHIS2's 14-day range.
    BiWeekly,
    /// Calendar month: `yyyyMM`, e.g. `200403`.
    Monthly,
    /// Two months from January: `yyyyMMB`, where `MM` is the bi-month
    /// `01`–`06`, e.g. `200401B` (January–February 2004).
    BiMonthly,
    /// Calendar quarter: `yyyyQn`, e.g. `2004Q1` (January–March 2004).
    Quarterly,
    /// Quarter of a year starting in November, named by the year it ends in:
    /// `yyyyNovQn`, e.g. `2004NovQ1` (November 2003–January 2004), `2004NovQ2`
    /// (February–April 2004).
    QuarterlyNov,
    /// Half year from January: `yyyySn`, e.g. `2004S1` (January–June 2004).
    SixMonthly,
    /// Half year from April: `yyyyAprilSn`, e.g. `2004AprilS1` (April–September
    /// 2004) and `2004AprilS2` (October 2004–March 2005).
    SixMonthlyApril,
    /// Half year from November, named by the year it ends in: `yyyyNovSn`,
    /// e.g. `2004NovS1` (November 2003–April 2004) and `2004NovS2`
    /// (May–October 2004).
    SixMonthlyNov,
    /// Calendar year: `yyyy`, e.g. `2004`.
    Yearly,
    /// Financial year from April, named by its start year: `yyyyApril`,
    /// e.g. `2004April` (April 2004–March 2005).
    FinancialApril,
    /// Financial year from July, named by its start year: `yyyyJuly`,
    /// e.g. `2004July` (July 2004–June 2005).
    FinancialJuly,
    /// Financial year from October, named by its start year: `yyyyOct`,
    /// e.g. `2004Oct` (October 2004–September 2005).
    FinancialOct,
    /// Financial year from November, named by the year it ends in:
    /// `yyyyNov`, e.g. `2004Nov` (November 2003–October 2004).
    FinancialNov,
}

/// The error of parsing a string that is not a DHIS2 period type name.
///
/// Holds the string that was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown period type `{0}`; expected one of: Daily, Weekly, WeeklyWednesday, \
     WeeklyThursday, WeeklySaturday, WeeklySunday, BiWeekly, Monthly, BiMonthly, Quarterly, \
     QuarterlyNov, SixMonthly, SixMonthlyApril, SixMonthlyNov, Yearly, FinancialApril, \
     FinancialJuly, FinancialOct, FinancialNov"
)]
pub struct UnknownPeriodType(pub String);

/// How a period type cuts time into periods.
enum Shape {
    /// One day per period.
    Day,
    /// Weeks starting on the given weekday (Monday = 0 … Sunday = 6).
    Week {
        /// First day of the week, Monday = 0.
        first_day: i64,
        /// What goes between the year and the week number.
        infix: &'static str,
    },
    /// Two ISO weeks, starting on the Monday of an odd ISO week.
    BiWeek,
    /// `len` months at a time, numbered within a labelled year whose first
    /// period starts `offset` months after January of the label year
    /// (negative: before it).
    Months {
        /// Months per period; divides 12.
        len: i64,
        /// Start of the label year's first period, in months from January
        /// of the label year.
        offset: i64,
    },
}

impl PeriodType {
    /// All period types, from the shortest to the longest, in the order
    /// DHIS2 lists them.
    pub const ALL: [PeriodType; 19] = [
        PeriodType::Daily,
        PeriodType::Weekly,
        PeriodType::WeeklyWednesday,
        PeriodType::WeeklyThursday,
        PeriodType::WeeklySaturday,
        PeriodType::WeeklySunday,
        PeriodType::BiWeekly,
        PeriodType::Monthly,
        PeriodType::BiMonthly,
        PeriodType::Quarterly,
        PeriodType::QuarterlyNov,
        PeriodType::SixMonthly,
        PeriodType::SixMonthlyApril,
        PeriodType::SixMonthlyNov,
        PeriodType::Yearly,
        PeriodType::FinancialApril,
        PeriodType::FinancialJuly,
        PeriodType::FinancialOct,
        PeriodType::FinancialNov,
    ];

    /// The DHIS2 name of this period type, e.g. `"WeeklyWednesday"`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            PeriodType::Daily => "Daily",
            PeriodType::Weekly => "Weekly",
            PeriodType::WeeklyWednesday => "WeeklyWednesday",
            PeriodType::WeeklyThursday => "WeeklyThursday",
            PeriodType::WeeklySaturday => "WeeklySaturday",
            PeriodType::WeeklySunday => "WeeklySunday",
            PeriodType::BiWeekly => "BiWeekly",
            PeriodType::Monthly => "Monthly",
            PeriodType::BiMonthly => "BiMonthly",
            PeriodType::Quarterly => "Quarterly",
            PeriodType::QuarterlyNov => "QuarterlyNov",
            PeriodType::SixMonthly => "SixMonthly",
            PeriodType::SixMonthlyApril => "SixMonthlyApril",
            PeriodType::SixMonthlyNov => "SixMonthlyNov",
            PeriodType::Yearly => "Yearly",
            PeriodType::FinancialApril => "FinancialApril",
            PeriodType::FinancialJuly => "FinancialJuly",
            PeriodType::FinancialOct => "FinancialOct",
            PeriodType::FinancialNov => "FinancialNov",
        }
    }

    /// How this type cuts time into periods.
    ///
    /// The month offsets restate DHIS2's `createPeriod` and `getIsoDate` of
    /// each type (e.g. `SixMonthlyAprilPeriodType`: April of the label year;
    /// `QuarterlyNovemberPeriodType`: November of the year before the label).
    fn shape(self) -> Shape {
        match self {
            PeriodType::Daily => Shape::Day,
            PeriodType::Weekly => Shape::Week {
                first_day: 0,
                infix: "W",
            },
            PeriodType::WeeklyWednesday => Shape::Week {
                first_day: 2,
                infix: "WedW",
            },
            PeriodType::WeeklyThursday => Shape::Week {
                first_day: 3,
                infix: "ThuW",
            },
            PeriodType::WeeklySaturday => Shape::Week {
                first_day: 5,
                infix: "SatW",
            },
            PeriodType::WeeklySunday => Shape::Week {
                first_day: 6,
                infix: "SunW",
            },
            PeriodType::BiWeekly => Shape::BiWeek,
            PeriodType::Monthly => Shape::Months { len: 1, offset: 0 },
            PeriodType::BiMonthly => Shape::Months { len: 2, offset: 0 },
            PeriodType::Quarterly => Shape::Months { len: 3, offset: 0 },
            PeriodType::QuarterlyNov => Shape::Months { len: 3, offset: -2 },
            PeriodType::SixMonthly => Shape::Months { len: 6, offset: 0 },
            PeriodType::SixMonthlyApril => Shape::Months { len: 6, offset: 3 },
            PeriodType::SixMonthlyNov => Shape::Months { len: 6, offset: -2 },
            PeriodType::Yearly => Shape::Months { len: 12, offset: 0 },
            PeriodType::FinancialApril => Shape::Months { len: 12, offset: 3 },
            PeriodType::FinancialJuly => Shape::Months { len: 12, offset: 6 },
            PeriodType::FinancialOct => Shape::Months { len: 12, offset: 9 },
            PeriodType::FinancialNov => Shape::Months {
                len: 12,
                offset: -2,
            },
        }
    }

    /// Formats period `n` (1-based) of label year `year` of a month-based type.
    fn format_months(self, year: i64, n: i64) -> String {
        match self {
            PeriodType::Monthly => format!("{year}{n:02}"),
            PeriodType::BiMonthly => format!("{year}{n:02}B"),
            PeriodType::Quarterly => format!("{year}Q{n}"),
            PeriodType::QuarterlyNov => format!("{year}NovQ{n}"),
            PeriodType::SixMonthly => format!("{year}S{n}"),
            PeriodType::SixMonthlyApril => format!("{year}AprilS{n}"),
            PeriodType::SixMonthlyNov => format!("{year}NovS{n}"),
            PeriodType::FinancialApril => format!("{year}April"),
            PeriodType::FinancialJuly => format!("{year}July"),
            PeriodType::FinancialOct => format!("{year}Oct"),
            PeriodType::FinancialNov => format!("{year}Nov"),
            // Yearly, and the day and week types, which never get here.
            _ => format!("{year}"),
        }
    }

    /// The DHIS2 id of the period of this type that contains `date`.
    ///
    /// ```
    /// use chrono::NaiveDate;
    /// use kiungo_mappings::PeriodType;
    ///
    /// let d = NaiveDate::from_ymd_opt(2014, 12, 29).ok_or("bad date")?;
    /// assert_eq!(PeriodType::Weekly.period_id(d), "2015W1");
    /// assert_eq!(PeriodType::Monthly.period_id(d), "201412");
    /// assert_eq!(PeriodType::FinancialNov.period_id(d), "2015Nov");
    /// # Ok::<(), &str>(())
    /// ```
    ///
    /// Years are printed without padding, as DHIS2 does, so ids of dates
    /// outside the years 1000–9999 have no four-digit year and
    /// [`PeriodType::parse_id`] does not read them back.
    #[must_use]
    pub fn period_id(self, date: NaiveDate) -> String {
        let year = i64::from(date.year());
        let month = i64::from(date.month());
        match self.shape() {
            Shape::Day => format!("{year}{month:02}{:02}", date.day()),
            Shape::Week { first_day, infix } => {
                let (week_year, week) = week_of(epoch_day(date), first_day);
                format!("{week_year}{infix}{week}")
            }
            Shape::BiWeek => {
                // BiWeeklyAbstractPeriodType: the period starts on the Monday
                // of the odd ISO week at or before the date, and is numbered
                // `isoWeek(start) / 2 + 1` in the ISO week-based year of its
                // start, which is `(isoWeek(date) + 1) / 2`.
                let (week_year, week) = week_of(epoch_day(date), 0);
                format!("{week_year}BiW{}", (week + 1) / 2)
            }
            Shape::Months { len, offset } => {
                let relative = year * 12 + (month - 1) - offset;
                let label_year = relative.div_euclid(12);
                let n = relative.rem_euclid(12) / len + 1;
                self.format_months(label_year, n)
            }
        }
    }

    /// The DHIS2 id of the period of this type that contains `date`
    /// (Gregorian) on a server whose system calendar is `calendar`.
    ///
    /// ```
    /// use chrono::NaiveDate;
    /// use kiungo_mappings::PeriodType;
    /// use kiungo_mappings::period::Calendar;
    ///
    /// // 11 September 2016 is 1 Meskerem 2009 in the Ethiopian calendar.
    /// let d = NaiveDate::from_ymd_opt(2016, 9, 11).ok_or("bad date")?;
    /// assert_eq!(PeriodType::Monthly.period_id_in(Calendar::Ethiopian, d), Ok("200901".into()));
    /// assert_eq!(PeriodType::Monthly.period_id_in(Calendar::Iso8601, d), Ok("201609".into()));
    /// # Ok::<(), &str>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CalendarError`] when the date has no DHIS2 period in the calendar:
    /// a Nepali date outside DHIS2's table, an Ethiopian date in Pagume, or
    /// a week type on a non-ISO calendar.
    pub fn period_id_in(
        self,
        calendar: Calendar,
        date: NaiveDate,
    ) -> Result<String, CalendarError> {
        if calendar == Calendar::Iso8601 {
            return Ok(self.period_id(date));
        }
        let shape = self.shape();
        if let (Calendar::Nepali, Shape::Week { first_day, infix }) = (calendar, &shape) {
            return nepali_weeks::week_id(date, *first_day, infix).map(|(_, id)| id);
        }
        if matches!(shape, Shape::Week { .. } | Shape::BiWeek) {
            return Err(CalendarError::Unsupported {
                calendar,
                period_type: self.name(),
            });
        }
        let c = calendar.from_gregorian(date)?;
        if c.month > 12 {
            return Err(CalendarError::Pagume { date, year: c.year });
        }
        Ok(match shape {
            Shape::Months { len, offset } => {
                let relative = c.year * 12 + (c.month - 1) - offset;
                self.format_months(relative.div_euclid(12), relative.rem_euclid(12) / len + 1)
            }
            _ => format!("{}{:02}{:02}", c.year, c.month, c.day),
        })
    }

    /// Recognises a DHIS2 period id, giving its type and its first and last
    /// day (both inclusive), or `None` if `id` is not a valid period id of
    /// one of the 19 types.
    ///
    /// ```
    /// use chrono::NaiveDate;
    /// use kiungo_mappings::PeriodType;
    ///
    /// let (ty, first, last) = PeriodType::parse_id("2004NovQ1").ok_or("not an id")?;
    /// assert_eq!(ty, PeriodType::QuarterlyNov);
    /// assert_eq!(first, NaiveDate::from_ymd_opt(2003, 11, 1).ok_or("bad date")?);
    /// assert_eq!(last, NaiveDate::from_ymd_opt(2004, 1, 31).ok_or("bad date")?);
    /// assert_eq!(PeriodType::parse_id("2024W54"), None);
    /// # Ok::<(), &str>(())
    /// ```
    ///
    /// The year must have four digits. Besides the canonical ids that
    /// [`PeriodType::period_id`] produces, this accepts what DHIS2's
    /// `DateUnitType` patterns accept: `yyyy-MM-dd` for a day, `yyyy-MM` for
    /// a month, and week numbers of two digits with a leading zero
    /// (`2024W05`). Feed the first day back to [`PeriodType::period_id`] for
    /// the canonical id.
    ///
    /// Invalid ids give `None`: month 13, 30 February, quarter 5, half-year 3,
    /// bi-month 7, week 0, week 53 of a year with 52 weeks of that type, and
    /// bi-week 27 of a year with 52 ISO weeks. DHIS2's own parser is looser
    /// and stricter in places for week 53 and bi-week 27 (it checks against
    /// the ISO weeks of the week-year holding 1 January, so it takes `2021W53`
    /// as `2022W1` and refuses `2025SunW53`); here exactly the week ids that
    /// [`PeriodType::period_id`] can produce are accepted.
    #[must_use]
    pub fn parse_id(id: &str) -> Option<(PeriodType, NaiveDate, NaiveDate)> {
        let year_digits = id.get(..4)?;
        let rest = id.get(4..)?;
        let year = digits(year_digits, 4, 4)?;
        let (ty, number) = split_rest(rest)?;
        let (first, last) = match (ty.shape(), number) {
            (Shape::Day, Number::Day(month, day)) => {
                let date = NaiveDate::from_ymd_opt(
                    i32::try_from(year).ok()?,
                    u32::try_from(month).ok()?,
                    u32::try_from(day).ok()?,
                )?;
                (date, date)
            }
            (Shape::Week { first_day, .. }, Number::Of(week)) => {
                if !(1..=weeks_in_year(year, first_day)).contains(&week) {
                    return None;
                }
                let start = first_week_start(year, first_day) + 7 * (week - 1);
                (from_epoch_day(start)?, from_epoch_day(start + 6)?)
            }
            (Shape::BiWeek, Number::Of(biweek)) => {
                // DateUnitPeriodTypeParser: bi-week n starts on the Monday of
                // ISO week 2n - 1 and lasts two weeks.
                let week = 2 * biweek - 1;
                if biweek < 1 || week > weeks_in_year(year, 0) {
                    return None;
                }
                let start = first_week_start(year, 0) + 7 * (week - 1);
                (from_epoch_day(start)?, from_epoch_day(start + 13)?)
            }
            (Shape::Months { len, offset }, Number::Of(n)) => {
                if !(1..=12 / len).contains(&n) {
                    return None;
                }
                let start_month = year * 12 + offset + (n - 1) * len;
                let first = from_epoch_day(month_start(start_month))?;
                let last = from_epoch_day(month_start(start_month + len) - 1)?;
                (first, last)
            }
            _ => return None,
        };
        Some((ty, first, last))
    }

    /// Recognises a period id of a server whose system calendar is
    /// `calendar`, giving its type and its first and last Gregorian day
    /// (both inclusive), or `None` if no such period exists there.
    ///
    /// With `iso8601` this is [`PeriodType::parse_id`]. Elsewhere the day
    /// and month-based types are read in the calendar's own months (`200913`
    /// is no Ethiopian period: DHIS2 puts Pagume in none; `20790332` exists
    /// on a Nepali server because Ashadh 2079 has 32 days); week types are
    /// not recognised there, as [`PeriodType::period_id_in`] refuses them.
    ///
    /// ```
    /// use chrono::NaiveDate;
    /// use kiungo_mappings::PeriodType;
    /// use kiungo_mappings::period::Calendar;
    ///
    /// let (ty, first, last) =
    ///     PeriodType::parse_id_in(Calendar::Ethiopian, "200901").ok_or("not an id")?;
    /// assert_eq!(ty, PeriodType::Monthly);
    /// assert_eq!(first, NaiveDate::from_ymd_opt(2016, 9, 11).ok_or("bad date")?);
    /// assert_eq!(last, NaiveDate::from_ymd_opt(2016, 10, 10).ok_or("bad date")?);
    /// assert_eq!(PeriodType::parse_id_in(Calendar::Ethiopian, "20091301"), None);
    /// # Ok::<(), &str>(())
    /// ```
    #[must_use]
    pub fn parse_id_in(calendar: Calendar, id: &str) -> Option<(PeriodType, NaiveDate, NaiveDate)> {
        if calendar == Calendar::Iso8601 {
            return Self::parse_id(id);
        }
        let year = digits(id.get(..4)?, 4, 4)?;
        let (ty, number) = split_rest(id.get(4..)?)?;
        let date = |year: i64, month: i64, day: i64| {
            calendar.to_gregorian(CalendarDate { year, month, day })
        };
        let (first, last) = match (ty.shape(), number) {
            (Shape::Day, Number::Day(month, day)) => {
                let d = date(year, month, day).filter(|_| month <= 12)?;
                (d, d)
            }
            (Shape::Week { first_day, infix }, Number::Of(week))
                if calendar == Calendar::Nepali =>
            {
                nepali_weeks::parse_week(id, year, week, first_day, infix)?
            }
            (Shape::Months { len, offset }, Number::Of(n)) => {
                if !(1..=12 / len).contains(&n) {
                    return None;
                }
                let start = year * 12 + offset + (n - 1) * len;
                let end = start + len - 1;
                let (end_year, end_month) = (end.div_euclid(12), end.rem_euclid(12) + 1);
                let first = date(start.div_euclid(12), start.rem_euclid(12) + 1, 1)?;
                let last = date(
                    end_year,
                    end_month,
                    calendar.days_in_month(end_year, end_month)?,
                )?;
                (first, last)
            }
            _ => return None,
        };
        Some((ty, first, last))
    }
}

impl fmt::Display for PeriodType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PeriodType {
    type Err = UnknownPeriodType;

    /// Parses a DHIS2 period type name, exactly and case-sensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeriodType::ALL
            .into_iter()
            .find(|ty| ty.name() == s)
            .ok_or_else(|| UnknownPeriodType(s.to_owned()))
    }
}

impl Serialize for PeriodType {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for PeriodType {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Reads a period type from its name.
        struct NameVisitor;

        impl Visitor<'_> for NameVisitor {
            type Value = PeriodType;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a DHIS2 period type name such as `Monthly`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PeriodType, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

/// The number part of a period id, after the year.
enum Number {
    /// Month and day of a daily id.
    Day(i64, i64),
    /// Week, bi-week, month, bi-month, quarter or half-year number; 1 for
    /// yearly and financial-year ids.
    Of(i64),
}

/// Ids of the form `yyyy` + prefix + digits + suffix, with the allowed
/// number of digits. The patterns are those of DHIS2's `DateUnitType`.
// Unverified: the `NovQ` pattern is inferred from `PeriodTypeEnum.ofIsoPeriod`
// (`~~~~NovQ~`) and the QUARTERLY_NOV branch of `DateUnitPeriodTypeParser`;
// the `DateUnitType` revisions read did not show its regex. Which 2.3x release
// first shipped QuarterlyNov was not checked against release tags either.
const NUMBERED: [(&str, &str, PeriodType, usize, usize); 14] = [
    ("", "", PeriodType::Monthly, 2, 2),
    ("-", "", PeriodType::Monthly, 2, 2),
    ("W", "", PeriodType::Weekly, 1, 2),
    ("WedW", "", PeriodType::WeeklyWednesday, 1, 2),
    ("ThuW", "", PeriodType::WeeklyThursday, 1, 2),
    ("SatW", "", PeriodType::WeeklySaturday, 1, 2),
    ("SunW", "", PeriodType::WeeklySunday, 1, 2),
    ("BiW", "", PeriodType::BiWeekly, 1, 2),
    ("", "B", PeriodType::BiMonthly, 2, 2),
    ("Q", "", PeriodType::Quarterly, 1, 1),
    ("NovQ", "", PeriodType::QuarterlyNov, 1, 1),
    ("S", "", PeriodType::SixMonthly, 1, 1),
    ("AprilS", "", PeriodType::SixMonthlyApril, 1, 1),
    ("NovS", "", PeriodType::SixMonthlyNov, 1, 1),
];

/// Ids of the form `yyyy` + a fixed suffix: one period per label year.
const YEARLY: [(&str, PeriodType); 5] = [
    ("", PeriodType::Yearly),
    ("April", PeriodType::FinancialApril),
    ("July", PeriodType::FinancialJuly),
    ("Oct", PeriodType::FinancialOct),
    ("Nov", PeriodType::FinancialNov),
];

/// Recognises what follows the year in a period id.
fn split_rest(rest: &str) -> Option<(PeriodType, Number)> {
    // Daily: `MMdd` or `-MM-dd`.
    // Unverified: `yyyy-MM-dd` is in the 2022 `DateUnitType` (copyright
    // 2004-2022) read for this, but was not checked against a 2.38 tag.
    if let Some(day) = digits(rest, 4, 4) {
        return Some((PeriodType::Daily, Number::Day(day / 100, day % 100)));
    }
    if let Some((month, day)) = rest.strip_prefix('-').and_then(|r| r.split_once('-')) {
        return Some((
            PeriodType::Daily,
            Number::Day(digits(month, 2, 2)?, digits(day, 2, 2)?),
        ));
    }
    if let Some((_, ty)) = YEARLY.iter().find(|(suffix, _)| *suffix == rest) {
        return Some((*ty, Number::Of(1)));
    }
    NUMBERED.iter().find_map(|&(prefix, suffix, ty, min, max)| {
        let number = rest.strip_prefix(prefix)?.strip_suffix(suffix)?;
        Some((ty, Number::Of(digits(number, min, max)?)))
    })
}

/// Parses `s` if it is `min` to `max` ASCII digits.
fn digits(s: &str, min: usize, max: usize) -> Option<i64> {
    if !(min..=max).contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

// ---------------------------------------------------------------------------
// Day arithmetic on plain integers, so that no date is ever out of range.
// Days are counted from 1970-01-01 in the proleptic Gregorian calendar.
// ---------------------------------------------------------------------------

/// Days from 1970-01-01 to the given civil date (month and day 1-based).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date (year, month, day; month and day 1-based) of a day
/// counted from 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Days from 1970-01-01 to `date`.
fn epoch_day(date: NaiveDate) -> i64 {
    days_from_civil(
        i64::from(date.year()),
        i64::from(date.month()),
        i64::from(date.day()),
    )
}

/// The date of a day counted from 1970-01-01, if chrono can represent it.
fn from_epoch_day(days: i64) -> Option<NaiveDate> {
    let (year, month, day) = civil_from_days(days);
    NaiveDate::from_ymd_opt(
        i32::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    )
}

/// The first day of a month given as `year * 12 + (month - 1)`.
fn month_start(month_index: i64) -> i64 {
    days_from_civil(
        month_index.div_euclid(12),
        month_index.rem_euclid(12) + 1,
        1,
    )
}

/// Day of the week, Monday = 0 … Sunday = 6 (1970-01-01 was a Thursday).
fn weekday(days: i64) -> i64 {
    (days + 3).rem_euclid(7)
}

/// The first day of the week (starting on `first_day`) containing `days`.
fn week_start(days: i64, first_day: i64) -> i64 {
    days - (weekday(days) - first_day).rem_euclid(7)
}

/// The week-based year and week number of a day, as
/// `WeekFields.of(firstDay, 4)` gives them: a week belongs to the year
/// holding at least 4 of its days, that is the year of its fourth day.
fn week_of(days: i64, first_day: i64) -> (i64, i64) {
    let fourth_day = week_start(days, first_day) + 3;
    let (year, _, _) = civil_from_days(fourth_day);
    let week = (fourth_day - days_from_civil(year, 1, 1)) / 7 + 1;
    (year, week)
}

/// The first day of week 1 of a week-based year. With a minimum of four
/// days in the first week, 4 January is always in week 1.
fn first_week_start(year: i64, first_day: i64) -> i64 {
    week_start(days_from_civil(year, 1, 4), first_day)
}

/// The number of weeks (52 or 53) of a week-based year.
///
/// DHIS2's parser checks week numbers against `Calendar.weeksInYear(year)`
/// instead: the number of ISO (Monday) weeks of the ISO week-based year that
/// 1 January falls in. That accepts ids DHIS2 never generates (e.g. `2021W53`,
/// which it then reads as the week of `2022W1`) and rejects some it does
/// generate (e.g. `2025SunW53`, 28 December 2025–3 January 2026). This module
/// checks against the weeks of the id's own type and year, so that every id
/// [`PeriodType::period_id`] produces parses back, and no other week does.
fn weeks_in_year(year: i64, first_day: i64) -> i64 {
    (first_week_start(year + 1, first_day) - first_week_start(year, first_day)) / 7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    fn id(ty: PeriodType, y: i32, m: u32, d: u32) -> String {
        ty.period_id(date(y, m, d))
    }

    fn range(id: &str) -> (PeriodType, NaiveDate, NaiveDate) {
        PeriodType::parse_id(id).unwrap_or_else(|| panic!("`{id}` should parse"))
    }

    #[test]
    fn names_round_trip() {
        for ty in PeriodType::ALL {
            assert_eq!(ty.name().parse::<PeriodType>(), Ok(ty));
            assert_eq!(ty.to_string(), ty.name());
        }
        let err = "monthly".parse::<PeriodType>().expect_err("case-sensitive");
        assert_eq!(err, UnknownPeriodType("monthly".to_owned()));
        let message = err.to_string();
        assert!(message.starts_with("unknown period type `monthly`; expected one of: Daily, "));
        for ty in PeriodType::ALL {
            assert!(message.contains(ty.name()), "message lists {ty}");
        }
        assert!("Weekly ".parse::<PeriodType>().is_err());
        assert!("FinancialSep".parse::<PeriodType>().is_err());
    }

    #[test]
    fn all_is_distinct() {
        for (i, a) in PeriodType::ALL.iter().enumerate() {
            for b in PeriodType::ALL.iter().skip(i + 1) {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn serde_uses_names() {
        for ty in PeriodType::ALL {
            let json = serde_json::to_string(&ty).expect("serialize");
            assert_eq!(json, format!("\"{}\"", ty.name()));
            let back: PeriodType = serde_json::from_str(&json).expect("deserialize");
            assert_eq!(back, ty);
        }
        let err = serde_json::from_str::<PeriodType>("\"Fortnightly\"").expect_err("unknown");
        assert!(
            err.to_string()
                .contains("unknown period type `Fortnightly`")
        );
        assert!(serde_json::from_str::<PeriodType>("3").is_err());
    }

    #[test]
    fn daily() {
        assert_eq!(id(PeriodType::Daily, 2004, 3, 15), "20040315");
        assert_eq!(id(PeriodType::Daily, 2024, 2, 29), "20240229");
        assert_eq!(
            range("20240229"),
            (PeriodType::Daily, date(2024, 2, 29), date(2024, 2, 29))
        );
        assert_eq!(
            range("2024-02-29"),
            (PeriodType::Daily, date(2024, 2, 29), date(2024, 2, 29))
        );
        assert_eq!(PeriodType::parse_id("20230229"), None);
        assert_eq!(PeriodType::parse_id("2024-2-29"), None);
    }

    #[test]
    fn weekly_iso() {
        let w = PeriodType::Weekly;
        // DHIS2 WeeklyPeriodTypeTest.
        assert_eq!(id(w, 2011, 1, 3), "2011W1");
        assert_eq!(id(w, 2012, 12, 31), "2013W1");
        assert_eq!(id(w, 2012, 12, 30), "2012W52");
        assert_eq!(id(w, 2009, 12, 29), "2009W53");
        assert_eq!(id(w, 2010, 1, 4), "2010W1");
        assert_eq!(range("2009W1").1, date(2008, 12, 29));
        assert_eq!(range("2011W11").1, date(2011, 3, 14));
        // Documentation example and the brief's example.
        assert_eq!(id(w, 2004, 3, 1), "2004W10");
        assert_eq!(id(w, 2014, 12, 29), "2015W1");
        assert_eq!(id(w, 2014, 12, 28), "2014W52");
        // 53-week years and their boundaries.
        assert_eq!(id(w, 2015, 12, 31), "2015W53");
        assert_eq!(id(w, 2016, 1, 1), "2015W53");
        assert_eq!(id(w, 2016, 1, 3), "2015W53");
        assert_eq!(id(w, 2016, 1, 4), "2016W1");
        assert_eq!(id(w, 2020, 12, 31), "2020W53");
        assert_eq!(id(w, 2021, 1, 1), "2020W53");
        assert_eq!(id(w, 2021, 1, 4), "2021W1");
        assert_eq!(id(w, 2024, 12, 31), "2025W1");
        assert_eq!(id(w, 2025, 1, 1), "2025W1");
        assert_eq!(range("2015W53"), (w, date(2015, 12, 28), date(2016, 1, 3)));
        assert_eq!(range("2020W53"), (w, date(2020, 12, 28), date(2021, 1, 3)));
        assert_eq!(range("2015W1"), (w, date(2014, 12, 29), date(2015, 1, 4)));
        assert_eq!(range("2024W5"), range("2024W05"));
        assert_eq!(PeriodType::parse_id("2021W53"), None);
        assert_eq!(PeriodType::parse_id("2024W53"), None);
        assert_eq!(PeriodType::parse_id("2024W0"), None);
        assert_eq!(PeriodType::parse_id("2024W100"), None);
    }

    #[test]
    fn weekly_other_start_days() {
        // Weeks belong to the year holding their fourth day: Saturday for
        // Wednesday weeks, Sunday for Thursday weeks, Tuesday for Saturday
        // weeks, Wednesday for Sunday weeks.
        let wed = PeriodType::WeeklyWednesday;
        assert_eq!(id(wed, 2014, 12, 31), "2015WedW1");
        assert_eq!(id(wed, 2015, 1, 28), "2015WedW5");
        assert_eq!(
            range("2015WedW5"),
            (wed, date(2015, 1, 28), date(2015, 2, 3))
        );
        assert_eq!(id(wed, 2022, 12, 31), "2022WedW53");
        assert_eq!(id(wed, 2023, 1, 1), "2022WedW53");
        assert_eq!(id(wed, 2023, 1, 4), "2023WedW1");
        assert_eq!(
            range("2022WedW53"),
            (wed, date(2022, 12, 28), date(2023, 1, 3))
        );
        assert_eq!(PeriodType::parse_id("2023WedW53"), None);

        let thu = PeriodType::WeeklyThursday;
        assert_eq!(id(thu, 2015, 2, 5), "2015ThuW6");
        assert_eq!(id(thu, 2023, 12, 31), "2023ThuW53");
        assert_eq!(id(thu, 2024, 1, 1), "2023ThuW53");
        assert_eq!(id(thu, 2024, 1, 4), "2024ThuW1");
        assert_eq!(
            range("2023ThuW53"),
            (thu, date(2023, 12, 28), date(2024, 1, 3))
        );
        assert_eq!(
            range("2015ThuW6"),
            (thu, date(2015, 2, 5), date(2015, 2, 11))
        );

        let sat = PeriodType::WeeklySaturday;
        assert_eq!(id(sat, 2015, 2, 14), "2015SatW7");
        assert_eq!(id(sat, 2024, 12, 31), "2024SatW53");
        assert_eq!(id(sat, 2025, 1, 1), "2024SatW53");
        assert_eq!(id(sat, 2025, 1, 4), "2025SatW1");
        assert_eq!(
            range("2024SatW53"),
            (sat, date(2024, 12, 28), date(2025, 1, 3))
        );
        assert_eq!(
            range("2015SatW7"),
            (sat, date(2015, 2, 14), date(2015, 2, 20))
        );

        let sun = PeriodType::WeeklySunday;
        assert_eq!(id(sun, 2015, 2, 22), "2015SunW8");
        assert_eq!(id(sun, 2025, 12, 28), "2025SunW53");
        assert_eq!(id(sun, 2025, 12, 31), "2025SunW53");
        assert_eq!(id(sun, 2026, 1, 1), "2025SunW53");
        assert_eq!(id(sun, 2026, 1, 4), "2026SunW1");
        assert_eq!(
            range("2025SunW53"),
            (sun, date(2025, 12, 28), date(2026, 1, 3))
        );
        assert_eq!(
            range("2015SunW8"),
            (sun, date(2015, 2, 22), date(2015, 2, 28))
        );
        assert_eq!(id(sun, 2024, 12, 31), "2025SunW1");
        assert_eq!(PeriodType::parse_id("2024SunW53"), None);
    }

    #[test]
    fn weekly_matches_chrono_iso_weeks() {
        let mut d = date(1999, 1, 1);
        while d <= date(2031, 12, 31) {
            let iso = d.iso_week();
            assert_eq!(
                PeriodType::Weekly.period_id(d),
                format!("{}W{}", iso.year(), iso.week())
            );
            d = d.succ_opt().expect("in range");
        }
    }

    #[test]
    fn bi_weekly() {
        let b = PeriodType::BiWeekly;
        // DHIS2 BiWeeklyPeriodTypeTest.
        assert_eq!(range("2018BiW1"), (b, date(2018, 1, 1), date(2018, 1, 14)));
        assert_eq!(id(b, 2018, 1, 8), "2018BiW1");
        assert_eq!(id(b, 2017, 12, 29), "2017BiW26");
        assert_eq!(
            range("2017BiW26"),
            (b, date(2017, 12, 18), date(2017, 12, 31))
        );
        assert_eq!(id(b, 2018, 1, 15), "2018BiW2");
        assert_eq!(id(b, 2010, 1, 1), "2009BiW27");
        assert_eq!(id(b, 2020, 1, 1), "2020BiW1");
        // Documentation example: weeks 1-2 of 2015.
        assert_eq!(
            range("2015BiW1"),
            (b, date(2014, 12, 29), date(2015, 1, 11))
        );
        // Week 53 starts bi-week 27, which DHIS2 makes 14 days long.
        assert_eq!(id(b, 2020, 12, 28), "2020BiW27");
        assert_eq!(id(b, 2021, 1, 3), "2020BiW27");
        assert_eq!(id(b, 2021, 1, 4), "2021BiW1");
        assert_eq!(
            range("2020BiW27"),
            (b, date(2020, 12, 28), date(2021, 1, 10))
        );
        assert_eq!(id(b, 2015, 12, 31), "2015BiW27");
        assert_eq!(
            range("2015BiW27"),
            (b, date(2015, 12, 28), date(2016, 1, 10))
        );
        assert_eq!(PeriodType::parse_id("2021BiW27"), None);
        assert_eq!(PeriodType::parse_id("2024BiW0"), None);
        assert_eq!(
            range("2024BiW26"),
            (b, date(2024, 12, 16), date(2024, 12, 29))
        );
        assert_eq!(id(b, 2024, 12, 31), "2025BiW1");
    }

    #[test]
    fn month_types() {
        assert_eq!(id(PeriodType::Monthly, 2004, 3, 15), "200403");
        assert_eq!(id(PeriodType::Monthly, 2024, 12, 31), "202412");
        assert_eq!(
            range("202402"),
            (PeriodType::Monthly, date(2024, 2, 1), date(2024, 2, 29))
        );
        assert_eq!(
            range("2023-02"),
            (PeriodType::Monthly, date(2023, 2, 1), date(2023, 2, 28))
        );

        assert_eq!(id(PeriodType::BiMonthly, 2004, 1, 1), "200401B");
        assert_eq!(id(PeriodType::BiMonthly, 2004, 4, 30), "200402B");
        assert_eq!(id(PeriodType::BiMonthly, 2004, 12, 31), "200406B");
        assert_eq!(
            range("200401B"),
            (PeriodType::BiMonthly, date(2004, 1, 1), date(2004, 2, 29))
        );
        assert_eq!(
            range("200406B"),
            (PeriodType::BiMonthly, date(2004, 11, 1), date(2004, 12, 31))
        );

        assert_eq!(id(PeriodType::Quarterly, 2004, 3, 31), "2004Q1");
        assert_eq!(id(PeriodType::Quarterly, 2004, 10, 1), "2004Q4");
        assert_eq!(
            range("2004Q2"),
            (PeriodType::Quarterly, date(2004, 4, 1), date(2004, 6, 30))
        );

        assert_eq!(id(PeriodType::SixMonthly, 2004, 6, 30), "2004S1");
        assert_eq!(id(PeriodType::SixMonthly, 2004, 7, 1), "2004S2");
        assert_eq!(
            range("2004S2"),
            (PeriodType::SixMonthly, date(2004, 7, 1), date(2004, 12, 31))
        );

        assert_eq!(id(PeriodType::SixMonthlyApril, 2004, 4, 1), "2004AprilS1");
        assert_eq!(id(PeriodType::SixMonthlyApril, 2004, 10, 1), "2004AprilS2");
        assert_eq!(id(PeriodType::SixMonthlyApril, 2005, 3, 31), "2004AprilS2");
        assert_eq!(
            range("2004AprilS1"),
            (
                PeriodType::SixMonthlyApril,
                date(2004, 4, 1),
                date(2004, 9, 30)
            )
        );
        assert_eq!(
            range("2004AprilS2"),
            (
                PeriodType::SixMonthlyApril,
                date(2004, 10, 1),
                date(2005, 3, 31)
            )
        );

        assert_eq!(id(PeriodType::Yearly, 2004, 12, 31), "2004");
        assert_eq!(
            range("2024"),
            (PeriodType::Yearly, date(2024, 1, 1), date(2024, 12, 31))
        );
    }

    #[test]
    fn november_types_name_their_end_year() {
        let q = PeriodType::QuarterlyNov;
        // DHIS2 QuarterlyNovemberPeriodTypeTest ranges.
        assert_eq!(id(q, 2009, 3, 15), "2009NovQ2");
        assert_eq!(range("2009NovQ2"), (q, date(2009, 2, 1), date(2009, 4, 30)));
        assert_eq!(id(q, 2009, 8, 15), "2009NovQ4");
        assert_eq!(
            range("2009NovQ4"),
            (q, date(2009, 8, 1), date(2009, 10, 31))
        );
        assert_eq!(id(q, 2014, 11, 20), "2015NovQ1");
        assert_eq!(
            range("2015NovQ1"),
            (q, date(2014, 11, 1), date(2015, 1, 31))
        );
        assert_eq!(id(q, 2003, 11, 1), "2004NovQ1");
        assert_eq!(id(q, 2003, 12, 31), "2004NovQ1");
        assert_eq!(id(q, 2004, 1, 31), "2004NovQ1");
        assert_eq!(id(q, 2004, 2, 1), "2004NovQ2");
        assert_eq!(id(q, 2004, 5, 1), "2004NovQ3");
        assert_eq!(id(q, 2004, 10, 31), "2004NovQ4");
        assert_eq!(range("2024NovQ2"), (q, date(2024, 2, 1), date(2024, 4, 30)));

        let s = PeriodType::SixMonthlyNov;
        // DHIS2 SixMonthlyNovemberPeriodTest: 2015NovS1 is Nov 2014-Apr 2015.
        assert_eq!(
            range("2015NovS1"),
            (s, date(2014, 11, 1), date(2015, 4, 30))
        );
        assert_eq!(
            range("2015NovS2"),
            (s, date(2015, 5, 1), date(2015, 10, 31))
        );
        assert_eq!(id(s, 2014, 11, 1), "2015NovS1");
        assert_eq!(id(s, 2015, 2, 1), "2015NovS1");
        assert_eq!(id(s, 2015, 4, 30), "2015NovS1");
        assert_eq!(id(s, 2015, 5, 1), "2015NovS2");
        assert_eq!(id(s, 2015, 10, 31), "2015NovS2");
        assert_eq!(id(s, 2015, 11, 1), "2016NovS1");

        let f = PeriodType::FinancialNov;
        // DHIS2 FinancialNovemberPeriodTypeTest ranges.
        assert_eq!(id(f, 2009, 2, 15), "2009Nov");
        assert_eq!(range("2009Nov"), (f, date(2008, 11, 1), date(2009, 10, 31)));
        assert_eq!(id(f, 2009, 11, 12), "2010Nov");
        assert_eq!(range("2010Nov"), (f, date(2009, 11, 1), date(2010, 10, 31)));
        assert_eq!(id(f, 2004, 10, 31), "2004Nov");
        assert_eq!(id(f, 2004, 11, 1), "2005Nov");
    }

    #[test]
    fn financial_years_name_their_start_year() {
        let a = PeriodType::FinancialApril;
        assert_eq!(id(a, 2004, 4, 1), "2004April");
        assert_eq!(id(a, 2005, 3, 31), "2004April");
        assert_eq!(id(a, 2024, 2, 29), "2023April");
        assert_eq!(range("2004April"), (a, date(2004, 4, 1), date(2005, 3, 31)));

        let j = PeriodType::FinancialJuly;
        assert_eq!(id(j, 2004, 7, 1), "2004July");
        assert_eq!(id(j, 2005, 6, 30), "2004July");
        assert_eq!(range("2004July"), (j, date(2004, 7, 1), date(2005, 6, 30)));

        let o = PeriodType::FinancialOct;
        assert_eq!(id(o, 2004, 10, 1), "2004Oct");
        assert_eq!(id(o, 2005, 9, 30), "2004Oct");
        assert_eq!(range("2004Oct"), (o, date(2004, 10, 1), date(2005, 9, 30)));
    }

    #[test]
    fn leap_day_in_every_type() {
        let leap = date(2024, 2, 29);
        let expected = [
            (PeriodType::Daily, "20240229"),
            (PeriodType::Weekly, "2024W9"),
            (PeriodType::WeeklyWednesday, "2024WedW9"),
            (PeriodType::WeeklyThursday, "2024ThuW9"),
            (PeriodType::WeeklySaturday, "2024SatW9"),
            (PeriodType::WeeklySunday, "2024SunW9"),
            (PeriodType::BiWeekly, "2024BiW5"),
            (PeriodType::Monthly, "202402"),
            (PeriodType::BiMonthly, "202401B"),
            (PeriodType::Quarterly, "2024Q1"),
            (PeriodType::QuarterlyNov, "2024NovQ2"),
            (PeriodType::SixMonthly, "2024S1"),
            (PeriodType::SixMonthlyApril, "2023AprilS2"),
            (PeriodType::SixMonthlyNov, "2024NovS1"),
            (PeriodType::Yearly, "2024"),
            (PeriodType::FinancialApril, "2023April"),
            (PeriodType::FinancialJuly, "2023July"),
            (PeriodType::FinancialOct, "2023Oct"),
            (PeriodType::FinancialNov, "2024Nov"),
        ];
        for (ty, want) in expected {
            assert_eq!(ty.period_id(leap), want, "{ty}");
            let (parsed, first, last) = range(want);
            assert_eq!(parsed, ty);
            assert!(
                first <= leap && leap <= last,
                "{want} contains the leap day"
            );
        }
    }

    #[test]
    fn rejects_invalid_ids() {
        for bad in [
            "2024W54",
            "202413",
            "2024Q5",
            "2024S3",
            "20240230",
            "2024BiW28",
            "2024Sep",
            "",
            "2024W",
            "2024W5a",
            "2024w5",
            "202400",
            "202407B",
            "202400B",
            "2024Q0",
            "2024NovQ5",
            "2024S0",
            "2024AprilS3",
            "2024NovS0",
            "2024april",
            "2024Jul",
            "2024October",
            "24W5",
            "02024",
            "12024W5",
            "+2024",
            "2024-13",
            "2024-00-10",
            "2024-1-10",
            "2024−01",
            "２０２４",
            "2024 ",
            " 2024",
            "2024WedW54",
            "2024MonW5",
            "2024FriW5",
        ] {
            assert_eq!(PeriodType::parse_id(bad), None, "`{bad}` should not parse");
        }
    }

    #[test]
    fn extreme_dates_do_not_panic() {
        for d in [
            NaiveDate::MIN,
            NaiveDate::MAX,
            date(0, 1, 1),
            date(-1, 12, 31),
        ] {
            for ty in PeriodType::ALL {
                let id = ty.period_id(d);
                assert!(!id.is_empty());
                let _ = PeriodType::parse_id(&id);
            }
        }
        let (ty, first, last) = range("0000W1");
        assert_eq!(ty, PeriodType::Weekly);
        assert_eq!((first.iso_week().year(), first.iso_week().week()), (0, 1));
        assert_eq!(first.weekday(), chrono::Weekday::Mon);
        assert_eq!(last, first + chrono::Days::new(6));
        assert_eq!(PeriodType::Weekly.period_id(first), "0W1");
        assert!(PeriodType::parse_id("9999BiW26").is_some());
        assert!(PeriodType::parse_id("9999NovQ1").is_some());
    }

    #[test]
    fn day_arithmetic_matches_chrono() {
        let mut d = date(1600, 1, 1);
        let mut n = epoch_day(d);
        assert_eq!(epoch_day(date(1970, 1, 1)), 0);
        while d <= date(2400, 12, 31) {
            assert_eq!(epoch_day(d), n);
            assert_eq!(from_epoch_day(n), Some(d));
            assert_eq!(weekday(n), i64::from(d.weekday().num_days_from_monday()));
            d = d.succ_opt().expect("in range");
            n += 1;
        }
    }

    /// For every type and every day of 2019–2026: the id of the day parses
    /// back to the same type and a range containing the day; consecutive
    /// periods meet without gap or overlap (but for DHIS2's 14-day bi-week
    /// 27, which overlaps the next year's bi-week 1 by one week); and each
    /// period's first day has the period's own id.
    #[test]
    fn round_trip_and_adjacency() {
        for ty in PeriodType::ALL {
            let mut d = date(2019, 1, 1);
            let mut previous: Option<(String, NaiveDate, NaiveDate)> = None;
            while d <= date(2026, 12, 31) {
                let id = ty.period_id(d);
                let (parsed, first, last) = range(&id);
                assert_eq!(parsed, ty, "{id}");
                assert!(
                    first <= d && d <= last,
                    "{id} ({first}..{last}) contains {d}"
                );
                assert_eq!(ty.period_id(first), id, "first day of {id}");
                match &previous {
                    Some((prev_id, prev_first, prev_last)) if *prev_id == id => {
                        assert_eq!((*prev_first, *prev_last), (first, last));
                    }
                    Some((prev_id, prev_first, prev_last)) => {
                        let next_day = prev_last.succ_opt().expect("in range");
                        if ty == PeriodType::BiWeekly && prev_id.ends_with("BiW27") {
                            assert_eq!(first, *prev_first + chrono::Days::new(7), "{prev_id}");
                            assert!(id.ends_with("BiW1"), "{id} follows {prev_id}");
                        } else {
                            assert_eq!(first, next_day, "{id} follows {prev_id}");
                        }
                        assert_eq!(first, d, "{id} starts when {prev_id} ends");
                    }
                    None => {}
                }
                previous = Some((id, first, last));
                d = d.succ_opt().expect("in range");
            }
        }
    }

    #[test]
    fn canonical_ids_have_no_padding_or_dashes() {
        for ty in PeriodType::ALL {
            let mut d = date(2019, 1, 1);
            while d <= date(2026, 12, 31) {
                let id = ty.period_id(d);
                assert!(!id.contains('-'), "{id}");
                if matches!(ty.shape(), Shape::Week { .. } | Shape::BiWeek) {
                    let number = id.trim_start_matches(|c: char| c.is_ascii_digit());
                    let number = number.trim_start_matches(|c: char| c.is_ascii_alphabetic());
                    assert!(!number.starts_with('0'), "{id}");
                }
                d = d.succ_opt().expect("in range");
            }
        }
    }
}
