//! Conversions checked against dates DHIS2 and the calendars' almanacs give.

use super::*;

/// A date in a calendar and its Gregorian day, as `(y, m, d)` pairs.
type Pair = ((i64, i64, i64), (i32, u32, u32));

fn g(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
}

fn cd(year: i64, month: i64, day: i64) -> CalendarDate {
    CalendarDate { year, month, day }
}

/// Ethiopian dates and their Gregorian days.
///
/// Origins: `EthiopianCalendarTest.testIsoStartOfYear` in dhis2-core
/// (1 Meskerem 2007 = 11 September 2014); the published Ethiopian new years
/// (Enkutatash: 11 September, 12 September when the next Gregorian year is
/// a leap year; 1 Meskerem 2000, the Ethiopian millennium, = 12 September
/// 2007); the Pagume days before them; and `EthiopianCalendarTest.testPlusDays`
/// (1 Meskerem 2006 + 43 days = 14 Tikimt 2006, + 65 days = 6 Hidar 2006).
const ETHIOPIAN: [Pair; 26] = [
    ((2007, 1, 1), (2014, 9, 11)),
    ((2000, 1, 1), (2007, 9, 12)),
    ((1999, 1, 1), (2006, 9, 11)),
    ((2001, 1, 1), (2008, 9, 11)),
    ((2004, 1, 1), (2011, 9, 12)),
    ((2005, 1, 1), (2012, 9, 11)),
    ((2006, 1, 1), (2013, 9, 11)),
    ((2008, 1, 1), (2015, 9, 12)),
    ((2009, 1, 1), (2016, 9, 11)),
    ((2012, 1, 1), (2019, 9, 12)),
    ((2013, 1, 1), (2020, 9, 11)),
    ((2014, 1, 1), (2021, 9, 11)),
    ((2015, 1, 1), (2022, 9, 11)),
    ((2016, 1, 1), (2023, 9, 12)),
    ((2017, 1, 1), (2024, 9, 11)),
    ((2018, 1, 1), (2025, 9, 11)),
    // The last day of Nehase (month 12) and Pagume before a new year.
    ((2015, 12, 30), (2023, 9, 5)),
    ((2015, 13, 1), (2023, 9, 6)),
    ((2015, 13, 6), (2023, 9, 11)),
    ((2016, 13, 5), (2024, 9, 10)),
    ((2016, 12, 30), (2024, 9, 5)),
    // EthiopianCalendarTest.testPlusDays, from 1 Meskerem 2006.
    ((2006, 2, 14), (2013, 10, 24)),
    ((2006, 3, 6), (2013, 11, 15)),
    // Month boundaries inside a year: 30 days each.
    ((2016, 4, 30), (2024, 1, 9)),
    ((2016, 5, 1), (2024, 1, 10)),
    ((2016, 7, 1), (2024, 3, 10)),
];

/// Nepali (Bikram Sambat) dates and their Gregorian days.
///
/// Origins: `NepaliCalendarTest.testToIso`/`testFromIso` in dhis2-core
/// (1 Baisakh 2071 = 14 April 2014), `NepaliCalendarTest.testIsoDates`
/// (1 Baisakh 2082 = 14 April 2025, a Monday starting `2082W1`), DHIS2's
/// anchor (1 Baisakh 2000 = 14 April 1943, `NepaliCalendar.START_ISO`), and
/// the published Nepali new years (Baisakh 1) 2070–2082.
const NEPALI: [Pair; 23] = [
    ((2071, 1, 1), (2014, 4, 14)),
    ((2082, 1, 1), (2025, 4, 14)),
    ((2000, 1, 1), (1943, 4, 14)),
    ((2070, 1, 1), (2013, 4, 14)),
    ((2072, 1, 1), (2015, 4, 14)),
    ((2073, 1, 1), (2016, 4, 13)),
    ((2074, 1, 1), (2017, 4, 14)),
    ((2075, 1, 1), (2018, 4, 14)),
    ((2076, 1, 1), (2019, 4, 14)),
    ((2077, 1, 1), (2020, 4, 13)),
    ((2078, 1, 1), (2021, 4, 14)),
    ((2079, 1, 1), (2022, 4, 14)),
    ((2080, 1, 1), (2023, 4, 14)),
    ((2081, 1, 1), (2024, 4, 13)),
    // Last days before new years: Chaitra has 30 days in 2080, 31 in 2081.
    ((2080, 12, 30), (2024, 4, 12)),
    ((2081, 12, 31), (2025, 4, 13)),
    // A 32-day month (Shrawan 2081) and the day after it.
    ((2081, 4, 1), (2024, 7, 16)),
    ((2081, 4, 32), (2024, 8, 16)),
    ((2081, 5, 1), (2024, 8, 17)),
    // A 29-day month (Poush 2081) and the day after it.
    ((2081, 9, 29), (2025, 1, 13)),
    ((2081, 10, 1), (2025, 1, 14)),
    // NepaliCalendarTest.testIsoDates: inside the weeks it names.
    ((2080, 1, 11), (2023, 4, 24)),
    ((2081, 1, 10), (2024, 4, 22)),
];

#[test]
fn ethiopian_dates_match_dhis2_and_almanac() {
    for ((y, m, d), (gy, gm, gd)) in ETHIOPIAN {
        let greg = g(gy, gm, gd);
        assert_eq!(
            Calendar::Ethiopian.from_gregorian(greg),
            Ok(cd(y, m, d)),
            "{greg}"
        );
        assert_eq!(
            Calendar::Ethiopian.to_gregorian(cd(y, m, d)),
            Some(greg),
            "{y}-{m}-{d}"
        );
    }
}

#[test]
fn nepali_dates_match_dhis2_and_almanac() {
    for ((y, m, d), (gy, gm, gd)) in NEPALI {
        let greg = g(gy, gm, gd);
        assert_eq!(
            Calendar::Nepali.from_gregorian(greg),
            Ok(cd(y, m, d)),
            "{greg}"
        );
        assert_eq!(
            Calendar::Nepali.to_gregorian(cd(y, m, d)),
            Some(greg),
            "{y}-{m}-{d}"
        );
    }
}

#[test]
fn nepali_table_years_add_up() {
    for (i, row) in NEPALI_YEARS.iter().enumerate() {
        let sum: u16 = row[1..].iter().sum();
        assert_eq!(sum, row[0], "year {}", NEPALI_FIRST_YEAR + i as i64);
        assert!(row[1..].iter().all(|d| (29..=32).contains(d)));
    }
}

#[test]
fn nepali_out_of_range_is_a_clear_error() {
    let (first, last) = nepali_range();
    assert_eq!(first, g(1913, 4, 13));
    assert_eq!(last, g(2044, 4, 15));
    assert!(Calendar::Nepali.from_gregorian(first).is_ok());
    assert!(Calendar::Nepali.from_gregorian(last).is_ok());
    for date in [
        first.pred_opt().expect("day"),
        last.succ_opt().expect("day"),
        NaiveDate::MIN,
        NaiveDate::MAX,
    ] {
        let err = Calendar::Nepali
            .from_gregorian(date)
            .expect_err("out of range");
        let text = err.to_string();
        assert!(text.contains(&date.to_string()), "{text}");
        assert!(
            text.contains("1913-04-13") && text.contains("2044-04-15"),
            "{text}"
        );
        assert!(!err.is_retryable());
    }
}

#[test]
fn every_day_round_trips() {
    // Day by day over the Nepali table's whole range (and the same span in
    // the other calendars): consecutive days, no gaps, no panics.
    let (first, last) = nepali_range();
    for cal in Calendar::ALL {
        let mut prev: Option<CalendarDate> = None;
        let mut day = first;
        while day <= last {
            let c = cal.from_gregorian(day).expect("in range");
            assert_eq!(cal.to_gregorian(c), Some(day), "{cal} {day}");
            if let Some(p) = prev {
                assert!(p < c, "{cal} {day}");
            }
            prev = Some(c);
            day = day.succ_opt().expect("day");
        }
    }
}

#[test]
fn ethiopian_extreme_dates_do_not_panic() {
    for date in [NaiveDate::MIN, NaiveDate::MAX, g(1, 1, 1)] {
        let c = Calendar::Ethiopian.from_gregorian(date).expect("total");
        assert_eq!(Calendar::Ethiopian.to_gregorian(c), Some(date));
    }
}

#[test]
fn names_parse_and_unknown_is_refused() {
    for cal in Calendar::ALL {
        assert_eq!(cal.name().parse::<Calendar>(), Ok(cal));
    }
    assert_eq!(Calendar::default(), Calendar::Iso8601);
    let err = "gregorian".parse::<Calendar>().expect_err("unknown");
    assert!(err.to_string().contains("iso8601, ethiopian, nepali"));
}

/// Period ids per type, on dates at month and year boundaries.
#[test]
fn period_ids_in_calendars() {
    use crate::PeriodType as P;
    let eth = |ty: P, y, m, d| ty.period_id_in(Calendar::Ethiopian, g(y, m, d));
    let nep = |ty: P, y, m, d| ty.period_id_in(Calendar::Nepali, g(y, m, d));
    let ok = |s: &str| Ok(s.to_owned());
    // 11 September 2016 = 1 Meskerem 2009; 10 October 2016 = 30 Meskerem.
    assert_eq!(eth(P::Monthly, 2016, 9, 11), ok("200901"));
    assert_eq!(eth(P::Monthly, 2016, 10, 10), ok("200901"));
    assert_eq!(eth(P::Monthly, 2016, 10, 11), ok("200902"));
    assert_eq!(eth(P::Daily, 2016, 9, 11), ok("20090101"));
    assert_eq!(eth(P::BiMonthly, 2016, 11, 10), ok("200902B"));
    assert_eq!(eth(P::Quarterly, 2016, 12, 9), ok("2009Q1"));
    assert_eq!(eth(P::Quarterly, 2016, 12, 10), ok("2009Q2"));
    assert_eq!(eth(P::SixMonthly, 2017, 3, 10), ok("2009S2"));
    assert_eq!(eth(P::Yearly, 2016, 9, 11), ok("2009"));
    assert_eq!(
        eth(P::Yearly, 2016, 9, 10),
        Err(CalendarError::Pagume {
            date: g(2016, 9, 10),
            year: 2008
        })
    );
    // 5 September 2017 = 30 Nehase 2009, the last day DHIS2 places.
    assert_eq!(eth(P::Monthly, 2017, 9, 5), ok("200912"));
    assert_eq!(eth(P::FinancialJuly, 2017, 9, 5), ok("2009July"));
    assert_eq!(eth(P::FinancialJuly, 2017, 3, 9), ok("2008July"));
    assert_eq!(eth(P::FinancialNov, 2017, 7, 8), ok("2010Nov"));
    // Pagume 2009 (6–10 September 2017): no DHIS2 period.
    let pagume = eth(P::Monthly, 2017, 9, 6).expect_err("pagume");
    assert!(pagume.to_string().contains("2017-09-06"), "{pagume}");
    assert!(eth(P::Daily, 2017, 9, 10).is_err());
    assert_eq!(eth(P::Monthly, 2017, 9, 11), ok("201001"));
    // Ethiopian weeks and bi-weeks anywhere are refused, with the type named.
    let week = eth(P::Weekly, 2017, 1, 1).expect_err("weekly");
    assert!(week.to_string().contains("Weekly") && week.to_string().contains("ethiopian"));
    assert!(nep(P::BiWeekly, 2024, 1, 1).is_err());
    // Nepali: 13 April 2024 = 1 Baisakh 2081; Shrawan 2081 has 32 days.
    assert_eq!(nep(P::Monthly, 2024, 4, 12), ok("208012"));
    assert_eq!(nep(P::Yearly, 2024, 4, 12), ok("2080"));
    assert_eq!(nep(P::Monthly, 2024, 4, 13), ok("208101"));
    assert_eq!(nep(P::Yearly, 2024, 4, 13), ok("2081"));
    assert_eq!(nep(P::Daily, 2024, 8, 16), ok("20810432"));
    assert_eq!(nep(P::Monthly, 2024, 8, 16), ok("208104"));
    assert_eq!(nep(P::Monthly, 2024, 8, 17), ok("208105"));
    assert_eq!(nep(P::Quarterly, 2024, 8, 16), ok("2081Q2"));
    assert_eq!(nep(P::SixMonthlyApril, 2024, 8, 17), ok("2081AprilS1"));
    assert!(nep(P::Monthly, 2050, 1, 1).is_err());
    // ISO is the plain id.
    assert_eq!(
        P::Monthly.period_id_in(Calendar::Iso8601, g(2024, 4, 13)),
        ok("202404")
    );
    assert_eq!(
        P::Weekly.period_id_in(Calendar::Iso8601, g(2014, 12, 29)),
        ok("2015W1")
    );
}

/// Nepali weeks as DHIS2 numbers them: every vector of dhis2-core's
/// `NepaliCalendarTest.testIsoDates` (a date inside the week, the id and
/// the week's Gregorian first and last day), then the same week from each
/// of its days, and the rule's quirks at the year's turn.
#[test]
fn nepali_weeks_match_dhis2() {
    use crate::PeriodType as P;
    let vectors = [
        // (Nepali date given to createPeriod, id, first day, last day)
        ((2081, 1, 3), "2081W1", g(2024, 4, 15), g(2024, 4, 21)),
        ((2080, 12, 26), "2080W52", g(2024, 4, 8), g(2024, 4, 14)),
        ((2080, 1, 11), "2080W2", g(2023, 4, 24), g(2023, 4, 30)),
        ((2081, 1, 10), "2081W2", g(2024, 4, 22), g(2024, 4, 28)),
        ((2082, 1, 1), "2082W1", g(2025, 4, 14), g(2025, 4, 20)),
    ];
    for ((y, m, d), id, first, last) in vectors {
        let date = Calendar::Nepali
            .to_gregorian(cd(y, m, d))
            .expect("a Nepali date");
        for day in 0..7 {
            let inside = first + chrono::Duration::days(day);
            assert_eq!(
                P::Weekly.period_id_in(Calendar::Nepali, inside),
                Ok(id.to_owned()),
                "{inside}"
            );
        }
        assert_eq!(
            P::Weekly.period_id_in(Calendar::Nepali, date),
            Ok(id.to_owned())
        );
        assert_eq!(
            P::parse_id_in(Calendar::Nepali, id),
            Some((P::Weekly, first, last)),
            "{id}"
        );
    }
    // 1 Baisakh 2081 (13 April 2024) is a Saturday: the Saturday week that
    // starts on it has day of year 1, so (10 + 1 - 6) / 7 = 0 gives week 52
    // of 2081, as DHIS2 numbers it; the Sunday week starting the next day
    // is (10 + 2 - 7) / 7 = 0, week 52 too; the week after, 1.
    assert_eq!(
        P::WeeklySaturday.period_id_in(Calendar::Nepali, g(2024, 4, 13)),
        Ok("2081SatW52".into())
    );
    assert_eq!(
        P::WeeklySunday.period_id_in(Calendar::Nepali, g(2024, 4, 14)),
        Ok("2081SunW52".into())
    );
    assert_eq!(
        P::WeeklySunday.period_id_in(Calendar::Nepali, g(2024, 4, 21)),
        Ok("2081SunW1".into())
    );
    // Week 53 never exists on a Nepali server.
    assert_eq!(P::parse_id_in(Calendar::Nepali, "2081W53"), None);
}

/// Period ids that exist, or not, on a server of each calendar.
#[test]
fn period_ids_exist_per_calendar() {
    use crate::PeriodType as P;
    let parse = |c, id| P::parse_id_in(c, id);
    // Ethiopian: months of 30 days, no 13th month, Pagume in no period.
    assert_eq!(
        parse(Calendar::Ethiopian, "20090130"),
        Some((P::Daily, g(2016, 10, 10), g(2016, 10, 10)))
    );
    assert_eq!(parse(Calendar::Ethiopian, "20090131"), None);
    assert_eq!(parse(Calendar::Ethiopian, "20091301"), None);
    assert_eq!(parse(Calendar::Ethiopian, "200913"), None);
    assert_eq!(
        parse(Calendar::Ethiopian, "2009"),
        Some((P::Yearly, g(2016, 9, 11), g(2017, 9, 5)))
    );
    assert_eq!(parse(Calendar::Ethiopian, "2009W1"), None);
    // 30 February is fine in Ethiopia: Tir and Yekatit have 30 days.
    assert!(parse(Calendar::Ethiopian, "20090630").is_some());
    assert_eq!(parse(Calendar::Iso8601, "20240230"), None);
    // Nepali: Shrawan 2081 has 32 days, Poush 2081 has 29.
    assert_eq!(
        parse(Calendar::Nepali, "208104"),
        Some((P::Monthly, g(2024, 7, 16), g(2024, 8, 16)))
    );
    assert!(parse(Calendar::Nepali, "20810432").is_some());
    assert_eq!(parse(Calendar::Nepali, "20810433"), None);
    assert!(parse(Calendar::Nepali, "20810929").is_some());
    assert_eq!(parse(Calendar::Nepali, "20810930"), None);
    assert_eq!(parse(Calendar::Nepali, "2101"), None);
    // Every id a date gets in a calendar is one that calendar has.
    for c in [Calendar::Ethiopian, Calendar::Nepali] {
        let mut day = g(2020, 1, 1);
        while day < g(2026, 1, 1) {
            for ty in P::ALL {
                if let Ok(id) = ty.period_id_in(c, day) {
                    let (_, first, last) = P::parse_id_in(c, &id)
                        .unwrap_or_else(|| panic!("{c} {id} of {day} not recognised"));
                    // DHIS2's Nepali rule can give two weeks one id
                    // (Chaitra's last week wraps to week 1 of the next
                    // year, as does Baisakh's first full week): the id
                    // still exists; only other types must contain the day.
                    let week = matches!(ty.name(), n if n.starts_with("Weekly"));
                    assert!(
                        week || (first <= day && day <= last),
                        "{c} {id}: {first}..{last} lacks {day}"
                    );
                }
            }
            day += chrono::Duration::days(1);
        }
    }
}
