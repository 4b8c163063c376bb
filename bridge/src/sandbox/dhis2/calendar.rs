//! The simulator's system calendar (`kiungo sandbox --calendar`): the
//! name `/api/system/info` reports, and which period ids exist.
//!
//! Guarantee: the simulator knows the same periods Kiungo computes. A
//! period id is valid exactly when the project's period module
//! ([`kiungo_mappings::period`]) recognises it in this calendar, and is
//! stored under the id that module gives back for the period's first
//! day; there is no second calendar here. So on an `ethiopian` server
//! `200912` (Nehase 2009) exists and `200913` (Pagume, which DHIS2's
//! `EthiopianCalendar` puts in no period) does not; on a `nepali` server
//! `20790332` exists (Ashadh 2079 has 32 days) and `20790432` does not
//! (Shrawan 2079 has 31).
//!
//! `iso8601` and `gregorian` name the same periods (DHIS2 reports
//! whichever the instance was set up with); both read ids with the
//! simulator's original parser, which also takes DHIS2's loose forms
//! (`2024-01`, `2024W05`).

use std::fmt;
use std::str::FromStr;

use kiungo_mappings::PeriodType;
use kiungo_mappings::period::Calendar;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::normalize_period;

/// The system calendar the DHIS2 simulator runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SystemCalendar {
    /// `iso8601`, DHIS2's default (Gregorian).
    #[default]
    Iso8601,
    /// `gregorian`: the same periods as `iso8601`, under the other name.
    Gregorian,
    /// `ethiopian`.
    Ethiopian,
    /// `nepali` (Bikram Sambat).
    Nepali,
}

/// The error of parsing a name that is not a calendar the simulator runs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown calendar `{0}`; expected one of: iso8601, gregorian, ethiopian, nepali")]
pub struct UnknownSystemCalendar(pub String);

impl SystemCalendar {
    /// Every calendar the simulator runs.
    pub const ALL: [SystemCalendar; 4] = [
        SystemCalendar::Iso8601,
        SystemCalendar::Gregorian,
        SystemCalendar::Ethiopian,
        SystemCalendar::Nepali,
    ];

    /// DHIS2's name, as `/api/system/info` reports it.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            SystemCalendar::Iso8601 => "iso8601",
            SystemCalendar::Gregorian => "gregorian",
            SystemCalendar::Ethiopian => "ethiopian",
            SystemCalendar::Nepali => "nepali",
        }
    }

    /// The calendar whose periods this one names.
    #[must_use]
    pub fn periods(self) -> Calendar {
        match self {
            SystemCalendar::Iso8601 | SystemCalendar::Gregorian => Calendar::Iso8601,
            SystemCalendar::Ethiopian => Calendar::Ethiopian,
            SystemCalendar::Nepali => Calendar::Nepali,
        }
    }

    /// The canonical id of period `pe` in this calendar, or `None` when no
    /// such period exists here (what DHIS2 answers with E7611 on import).
    #[must_use]
    pub fn canonical_period(self, pe: &str) -> Option<String> {
        let calendar = self.periods();
        if calendar == Calendar::Iso8601 {
            return normalize_period(pe);
        }
        let (ty, first, _) = PeriodType::parse_id_in(calendar, pe)?;
        ty.period_id_in(calendar, first).ok()
    }
}

impl fmt::Display for SystemCalendar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SystemCalendar {
    type Err = UnknownSystemCalendar;

    /// Parses `iso8601`, `gregorian`, `ethiopian` or `nepali`, exactly.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SystemCalendar::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownSystemCalendar(s.to_owned()))
    }
}

impl Serialize for SystemCalendar {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for SystemCalendar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::SystemCalendar::{Ethiopian, Gregorian, Iso8601, Nepali};
    use super::*;

    #[test]
    fn ethiopian_periods_are_those_of_the_period_module() {
        for (pe, want) in [
            ("200901", Some("200901")),
            ("200912", Some("200912")),
            ("20091230", Some("20091230")),
            ("2009Q4", Some("2009Q4")),
            ("2009", Some("2009")),
            ("2009July", Some("2009July")),
            // Pagume is in no DHIS2 period; there is no month 14.
            ("200913", None),
            ("20091301", None),
            ("200914", None),
            ("20090231", None),
            // Weeks are not reproduced on Ethiopian servers.
            ("2009W1", None),
        ] {
            assert_eq!(Ethiopian.canonical_period(pe).as_deref(), want, "{pe}");
        }
    }

    #[test]
    fn nepali_days_follow_the_month_lengths() {
        // Ashadh 2079 has 32 days, Baisakh and Shrawan 2079 31.
        assert_eq!(
            Nepali.canonical_period("20790332").as_deref(),
            Some("20790332")
        );
        assert_eq!(Nepali.canonical_period("20790131"), Some("20790131".into()));
        assert_eq!(Nepali.canonical_period("20790132"), None);
        assert_eq!(Nepali.canonical_period("20790432"), None);
        assert_eq!(Nepali.canonical_period("207913"), None);
        assert_eq!(Nepali.canonical_period("207912"), Some("207912".into()));
    }

    #[test]
    fn gregorian_and_iso8601_read_the_same_ids() {
        for c in [Iso8601, Gregorian] {
            assert_eq!(c.canonical_period("2024-01").as_deref(), Some("202401"));
            assert_eq!(c.canonical_period("202413"), None);
            assert_eq!(c.canonical_period("20240230"), None);
            assert_eq!(c.periods(), Calendar::Iso8601);
        }
        // 30 February is no Gregorian day but is an Ethiopian one.
        assert_eq!(
            Ethiopian.canonical_period("20160230").as_deref(),
            Some("20160230")
        );
    }

    #[test]
    fn names_round_trip() {
        for c in SystemCalendar::ALL {
            assert_eq!(c.name().parse::<SystemCalendar>(), Ok(c));
        }
        assert!("coptic".parse::<SystemCalendar>().is_err());
    }
}
