//! FHIR R4 primitive types: the JSON kind each takes and its format, as
//! the official regexes (`data/r4.json`, `primitives`) state it, written
//! out by hand (a test compares them with the regexes) and with real
//! calendar dates (`2018-02-30` matches the date regex but is no date).

use serde_json::Value;

/// A FHIR primitive type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs, reason = "the FHIR type names")]
pub enum Primitive {
    Base64Binary,
    Boolean,
    Canonical,
    Code,
    Date,
    DateTime,
    Decimal,
    Id,
    Instant,
    Integer,
    Markdown,
    Oid,
    PositiveInt,
    String,
    Time,
    UnsignedInt,
    Uri,
    Url,
    Uuid,
    Xhtml,
}

impl Primitive {
    /// The primitive type of this FHIR name.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "base64Binary" => Self::Base64Binary,
            "boolean" => Self::Boolean,
            "canonical" => Self::Canonical,
            "code" => Self::Code,
            "date" => Self::Date,
            "dateTime" => Self::DateTime,
            "decimal" => Self::Decimal,
            "id" => Self::Id,
            "instant" => Self::Instant,
            "integer" => Self::Integer,
            "markdown" => Self::Markdown,
            "oid" => Self::Oid,
            "positiveInt" => Self::PositiveInt,
            "string" => Self::String,
            "time" => Self::Time,
            "unsignedInt" => Self::UnsignedInt,
            "uri" => Self::Uri,
            "url" => Self::Url,
            "uuid" => Self::Uuid,
            "xhtml" => Self::Xhtml,
            _ => return None,
        })
    }

    /// The FHIR name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Base64Binary => "base64Binary",
            Self::Boolean => "boolean",
            Self::Canonical => "canonical",
            Self::Code => "code",
            Self::Date => "date",
            Self::DateTime => "dateTime",
            Self::Decimal => "decimal",
            Self::Id => "id",
            Self::Instant => "instant",
            Self::Integer => "integer",
            Self::Markdown => "markdown",
            Self::Oid => "oid",
            Self::PositiveInt => "positiveInt",
            Self::String => "string",
            Self::Time => "time",
            Self::UnsignedInt => "unsignedInt",
            Self::Uri => "uri",
            Self::Url => "url",
            Self::Uuid => "uuid",
            Self::Xhtml => "xhtml",
        }
    }

    /// Checks a JSON value; the error says what was expected and what kind
    /// of value was found, never the value.
    pub fn check(self, value: &Value) -> Result<(), String> {
        match (self, value) {
            (Self::Boolean, Value::Bool(_)) => Ok(()),
            (Self::Decimal, Value::Number(_)) => Ok(()),
            (Self::Integer, Value::Number(n)) => match n.as_i64() {
                Some(i) if i32::try_from(i).is_ok() => Ok(()),
                _ => Err(self.expected("a 32-bit integer", "another number")),
            },
            (Self::PositiveInt, Value::Number(n)) => match n.as_u64() {
                Some(i) if i >= 1 && i32::try_from(i).is_ok() => Ok(()),
                _ => Err(self.expected("an integer from 1", "another number")),
            },
            (Self::UnsignedInt, Value::Number(n)) => match n.as_u64() {
                Some(i) if i32::try_from(i).is_ok() => Ok(()),
                _ => Err(self.expected("an integer from 0", "another number")),
            },
            (
                Self::Boolean
                | Self::Decimal
                | Self::Integer
                | Self::PositiveInt
                | Self::UnsignedInt,
                other,
            ) => Err(self.expected(self.json_kind(), kind_of(other))),
            (_, Value::String(s)) => {
                if self.matches(s) {
                    Ok(())
                } else {
                    Err(format!(
                        "expected a {} ({}), found text that is not one",
                        self.name(),
                        self.format()
                    ))
                }
            }
            (_, other) => Err(self.expected("a JSON string", kind_of(other))),
        }
    }

    fn expected(self, what: &str, found: &str) -> String {
        format!("expected a {} ({what}), found {found}", self.name())
    }

    const fn json_kind(self) -> &'static str {
        match self {
            Self::Boolean => "true or false",
            Self::Decimal | Self::Integer | Self::PositiveInt | Self::UnsignedInt => {
                "a JSON number"
            }
            _ => "a JSON string",
        }
    }

    /// The format, for messages.
    const fn format(self) -> &'static str {
        match self {
            Self::Date => "YYYY, YYYY-MM or YYYY-MM-DD, a real date",
            Self::DateTime => "a date, or YYYY-MM-DDThh:mm:ss with a time zone",
            Self::Instant => "YYYY-MM-DDThh:mm:ss with a time zone",
            Self::Time => "hh:mm:ss",
            Self::Id => "1 to 64 of A-Z a-z 0-9 - .",
            Self::Code => "no leading, trailing or double whitespace",
            Self::Oid => "urn:oid:…",
            Self::Uuid => "urn:uuid: and a lowercase UUID",
            Self::Uri | Self::Url | Self::Canonical => "no whitespace",
            Self::Base64Binary => "base64",
            _ => "not empty",
        }
    }

    /// Whether a string value has this type's format.
    pub fn matches(self, s: &str) -> bool {
        match self {
            Self::String | Self::Markdown => !s.is_empty() && has_non_space(s),
            Self::Xhtml => !s.is_empty(),
            Self::Code => is_code(s),
            Self::Id => (1..=64).contains(&s.len()) && s.bytes().all(is_id_byte),
            Self::Uri | Self::Url | Self::Canonical => !s.is_empty() && no_space(s),
            Self::Oid => is_oid(s),
            Self::Uuid => s.strip_prefix("urn:uuid:").is_some_and(is_uuid),
            Self::Base64Binary => is_base64(s),
            Self::Date => date(s.as_bytes()) == Some(s.len()),
            Self::DateTime => date_time(s.as_bytes(), false),
            Self::Instant => date_time(s.as_bytes(), true),
            Self::Time => time(s.as_bytes()) == Some(s.len()),
            Self::Boolean
            | Self::Decimal
            | Self::Integer
            | Self::PositiveInt
            | Self::UnsignedInt => false,
        }
    }
}

/// What kind of JSON value this is, for messages.
pub(crate) const fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Whether an ASCII byte is whitespace as `\s` and [`char::is_whitespace`]
/// take it (with the vertical tab, which `u8::is_ascii_whitespace` leaves
/// out).
const fn ascii_space(b: u8) -> bool {
    matches!(b, b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ')
}

/// `[ \r\n\t\S]+`: any text but one with other whitespace. ASCII text, the
/// usual case, is read byte by byte.
fn has_non_space(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii() && b != 0x0B && b != 0x0C)
        || s.chars()
            .all(|c| !c.is_whitespace() || matches!(c, ' ' | '\r' | '\n' | '\t'))
}

/// `\S*`: no whitespace.
fn no_space(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii() && !ascii_space(b)) || !s.chars().any(char::is_whitespace)
}

/// `[^\s]+(\s[^\s]+)*`.
fn is_code(s: &str) -> bool {
    let mut prev_space = true;
    if s.is_ascii() {
        for b in s.bytes() {
            let space = ascii_space(b);
            if space && prev_space {
                return false;
            }
            prev_space = space;
        }
        return !s.is_empty() && !prev_space;
    }
    for c in s.chars() {
        let space = c.is_whitespace();
        if space && prev_space {
            return false;
        }
        prev_space = space;
    }
    !s.is_empty() && !prev_space
}

const fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'.'
}

/// `[A-Za-z0-9\-\.]{1,64}`: a resource id.
pub(crate) fn is_id(s: &str) -> bool {
    Primitive::Id.matches(s)
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`.
fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    if !matches!(parts.next(), Some("0" | "1" | "2")) {
        return false;
    }
    let mut n = 0;
    for p in parts {
        n += 1;
        let ok = p == "0"
            || (p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() && !p.starts_with('0'));
        if !ok {
            return false;
        }
    }
    n > 0
}

/// A lowercase UUID, 8-4-4-4-12.
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// `(\s*([0-9a-zA-Z\+/=]){4}\s*)+`.
fn is_base64(s: &str) -> bool {
    let mut n = 0usize;
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=' {
            n += 1;
        } else if !b.is_ascii_whitespace() || !n.is_multiple_of(4) {
            // Whitespace only between groups of four.
            return false;
        }
    }
    n > 0 && n.is_multiple_of(4)
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let part = b.get(at..at + n)?;
    part.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

const fn leap(y: u32) -> bool {
    (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400)
}

/// A date prefix `YYYY(-MM(-DD)?)?`, the date real; returns its length.
fn date(b: &[u8]) -> Option<usize> {
    let y = digits(b, 0, 4)?;
    if y == 0 {
        return None;
    }
    if b.get(4) != Some(&b'-') {
        return Some(4);
    }
    let m = digits(b, 5, 2)?;
    if !(1..=12).contains(&m) {
        return None;
    }
    if b.get(7) != Some(&b'-') {
        return Some(7);
    }
    let d = digits(b, 8, 2)?;
    let days = match m {
        2 if leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&d).then_some(10)
}

/// `hh:mm:ss(.f+)?`; returns its length.
fn time(b: &[u8]) -> Option<usize> {
    let h = digits(b, 0, 2)?;
    let m = digits(b, 3, 2)?;
    let s = digits(b, 6, 2)?;
    if b.get(2) != Some(&b':') || b.get(5) != Some(&b':') || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let mut len = 8;
    if b.get(8) == Some(&b'.') {
        let frac = b
            .get(9..)?
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        if frac == 0 {
            return None;
        }
        len = 9 + frac;
    }
    Some(len)
}

/// `Z` or `±hh:mm` up to 14:00, exactly the rest of `b`.
fn zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', ..] if b.len() == 6 => {
            let (Some(h), Some(m)) = (digits(b, 1, 2), digits(b, 4, 2)) else {
                return false;
            };
            b.get(3) == Some(&b':') && ((h <= 13 && m <= 59) || (h == 14 && m == 0))
        }
        _ => false,
    }
}

/// A dateTime (partial dates allowed unless `instant`; a time needs a
/// full date and a zone).
fn date_time(b: &[u8], instant: bool) -> bool {
    let Some(d) = date(b) else {
        return false;
    };
    if d == b.len() {
        return !instant;
    }
    if d != 10 || b.get(10) != Some(&b'T') {
        return false;
    }
    let rest = b.get(11..).unwrap_or_default();
    match time(rest) {
        Some(t) => zone(rest.get(t..).unwrap_or_default()),
        None => false,
    }
}

/// A dateTime as the seconds since 0000-01-01 in UTC, when it has a time.
pub(crate) fn utc_seconds(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !date_time(b, true) {
        return None;
    }
    let y = i64::from(digits(b, 0, 4)?);
    let m = i64::from(digits(b, 5, 2)?);
    let d = i64::from(digits(b, 8, 2)?);
    let (hh, mm, ss) = (
        i64::from(digits(b, 11, 2)?),
        i64::from(digits(b, 14, 2)?),
        i64::from(digits(b, 17, 2)?),
    );
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe;
    let tz = b
        .iter()
        .rposition(|&c| c == b'+' || c == b'-' || c == b'Z')?;
    let offset = match b.get(tz) {
        Some(b'Z') => 0,
        Some(sign) => {
            let secs =
                i64::from(digits(b, tz + 1, 2)?) * 3600 + i64::from(digits(b, tz + 4, 2)?) * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        None => return None,
    };
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_real_dates() {
        for ok in ["2024", "2024-02", "2024-02-29", "2000-02-29", "1999-12-31"] {
            assert!(Primitive::Date.matches(ok), "{ok}");
        }
        for bad in [
            "2018-02-30",
            "1900-02-29",
            "2024-13",
            "2024-1-01",
            "0000",
            "24-01-01",
            "2024-04-31",
            "2024-05-14T10:00:00Z",
            "",
        ] {
            assert!(!Primitive::Date.matches(bad), "{bad}");
        }
    }

    #[test]
    fn date_times_need_a_zone_with_a_time() {
        for ok in [
            "2024",
            "2024-05-14",
            "2024-05-14T10:00:00Z",
            "2024-05-14T10:00:00.123+03:00",
            "2024-05-14T23:59:60-14:00",
        ] {
            assert!(Primitive::DateTime.matches(ok), "{ok}");
        }
        for bad in [
            "2024-05-14T10:00:00",
            "2024-05-14T10:00Z",
            "2024-05T10:00:00Z",
            "2024-05-14T24:00:00Z",
            "2024-05-14T10:00:00+14:30",
            "2024-05-14 10:00:00Z",
            "2024-05-14T10:00:00.Z",
        ] {
            assert!(!Primitive::DateTime.matches(bad), "{bad}");
        }
        assert!(!Primitive::Instant.matches("2024-05-14"));
        assert!(Primitive::Instant.matches("2024-05-14T10:00:00Z"));
    }

    #[test]
    fn utc_seconds_orders_across_zones() {
        let a = utc_seconds("2024-05-14T10:00:00+03:00");
        let b = utc_seconds("2024-05-14T08:00:00Z");
        assert!(a < b, "{a:?} {b:?}");
        assert_eq!(
            utc_seconds("2024-03-01T00:00:00Z")
                .zip(utc_seconds("2024-02-29T00:00:00Z"))
                .map(|(x, y)| x - y),
            Some(86_400)
        );
    }

    #[test]
    fn json_kinds() {
        use serde_json::json;
        assert!(Primitive::Decimal.check(&json!(8.6)).is_ok());
        let err = Primitive::Decimal.check(&json!("8.6")).expect_err("text");
        assert!(err.contains("found a string"), "{err}");
        assert!(!err.contains("8.6"), "{err}");
        assert!(Primitive::PositiveInt.check(&json!(0)).is_err());
        assert!(Primitive::UnsignedInt.check(&json!(0)).is_ok());
        assert!(Primitive::Integer.check(&json!(1.5)).is_err());
        assert!(Primitive::Boolean.check(&json!("true")).is_err());
        assert!(Primitive::Code.check(&json!(" x")).is_err());
        assert!(Primitive::Code.check(&json!("a b")).is_ok());
        assert!(Primitive::Code.check(&json!("a  b")).is_err());
        assert!(Primitive::Id.check(&json!("a b")).is_err());
        assert!(Primitive::String.check(&json!("")).is_err());
        assert!(Primitive::Uri.check(&json!("http://x y")).is_err());
    }
}
