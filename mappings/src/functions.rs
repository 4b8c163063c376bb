//! Functions and filters mappings can call.
//!
//! | name | use |
//! |---|---|
//! | `date(v, format=, offset=)` | a calendar date `YYYY-MM-DD` from ISO text, RFC 3339, epoch milliseconds or a `format` |
//! | `datetime(v, format=, offset=)` | an RFC 3339 date-time (FHIR `dateTime`/`instant`) |
//! | `period(v, type)` | the DHIS2 period id of type `type` containing date `v` |
//! | `age(birth, at, unit='years')` | whole years, months or days between two dates |
//! | `uuid5(name, namespace=)` | a deterministic UUID (Kiungo's namespace by default) |
//! | `lookup(table, key, default)` | a row or value of a lookup table; fails on a miss without `default` |
//! | `pseudonym(v, purpose='')` | hex HMAC-SHA256 of `v` under the deployment's key |
//! | `squish(s)` | trims and collapses inner whitespace |
//! | `digits(s)` | keeps only ASCII digits |
//! | `number(v)` | a number from a number or numeric text |
//! | `coalesce(a, b, ...)` | the first argument that is defined, not none and not empty |
//!
//! Dates: numbers are epoch milliseconds when their magnitude is at least
//! 10^11, else epoch seconds; date-times without an offset are taken in
//! `offset` (default UTC). `date` keeps the calendar date as written in the
//! value's own offset: a visit at 00:30+03:00 happened on that local day.

use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone};
use hmac::{Hmac, KeyInit, Mac};
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use sha2::Sha256;

use crate::context::{RUNTIME, Runtime};
use crate::error::EventValues;
use crate::period::PeriodType;
use crate::table::Table;

/// Kiungo's UUIDv5 namespace: `uuid5(NAMESPACE_URL, "https://kiungo.org/ns/v1")`.
pub(crate) static KIUNGO_NS: LazyLock<uuid::Uuid> =
    LazyLock::new(|| uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, b"https://kiungo.org/ns/v1"));

pub(crate) fn register(env: &mut Environment<'static>) {
    macro_rules! function_and_filter {
        ($($name:literal => $f:path),* $(,)?) => {
            $(
                env.add_function($name, $f);
                env.add_filter($name, $f);
            )*
        };
    }
    function_and_filter! {
        "date" => date,
        "datetime" => datetime,
        "period" => period,
        "age" => age,
        "uuid5" => uuid5,
        "pseudonym" => pseudonym,
        "squish" => squish,
        "digits" => digits,
        "number" => number,
    }
    env.add_function("lookup", lookup);
    env.add_function("coalesce", coalesce);
    env.add_function("fail", fail);
}

/// `fail('reason')`: refuses the event with the mapping author's reason
/// (checked to be a literal when the expression compiles).
fn fail(reason: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, "refused")
        .with_source(crate::error::Refusal(reason)))
}

/// Percent-encodes the characters never valid in a URL query (spaces,
/// `+`, `#`, quotes, non-ASCII, controls) in a whole query, keeping its
/// `&`, `=` and `%XX` escapes: `identifier=sys|NGE-CHW07+0412` searches
/// for the `+`, not a space.
pub(crate) fn encode_query(query: &str) -> String {
    encode(query, |b| {
        b.is_ascii_alphanumeric() || b"-._~!$&'()*,;=:@/?|%".contains(&b)
    })
}

/// Percent-encodes one search parameter value: everything but letters,
/// digits, `-._~` and the characters FHIR search syntax gives a meaning
/// to in a value (`|` between system and code, `:` and `/` of URLs, `,`).
pub(crate) fn encode_query_value(value: &str) -> String {
    encode(value, |b| {
        b.is_ascii_alphanumeric() || b"-._~|:/,".contains(&b)
    })
}

fn encode(text: &str, keep: impl Fn(u8) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if keep(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An error whose text Kiungo made without the event's values (the
/// [`EventValues`] source says so).
fn invalid(msg: impl Into<String>) -> Error {
    invalid_with(msg, Vec::new())
}

/// An error made without the event's values, carrying the values involved
/// apart, for operators.
fn invalid_with(msg: impl Into<String>, values: Vec<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into()).with_source(EventValues(values))
}

/// A parsed instant or date, with the offset it was written in.
enum When {
    Date(NaiveDate),
    Instant(DateTime<FixedOffset>),
}

fn parse_offset(kwargs: &Kwargs) -> Result<FixedOffset, Error> {
    match kwargs.get::<Option<&str>>("offset")? {
        None => FixedOffset::east_opt(0).ok_or_else(|| invalid("offset out of range")),
        Some(text) => DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{text}"))
            .map(|d| *d.offset())
            .map_err(|_| invalid(format!("offset `{text}` is not like +03:00 or Z"))),
    }
}

fn parse_when(value: &Value, kwargs: &Kwargs) -> Result<When, Error> {
    let offset = parse_offset(kwargs)?;
    let format: Option<&str> = kwargs.get("format")?;
    match value.kind() {
        ValueKind::Number => {
            let n =
                f64::try_from(value.clone()).map_err(|_| invalid("date is not a finite number"))?;
            if !n.is_finite() {
                return Err(invalid("date is not a finite number"));
            }
            let millis = if n.abs() >= 1e11 { n } else { n * 1000.0 };
            #[allow(
                clippy::cast_possible_truncation,
                reason = "range-checked by timestamp_millis_opt"
            )]
            let dt = offset
                .timestamp_millis_opt(millis as i64)
                .single()
                .ok_or_else(|| invalid("epoch timestamp out of range"))?;
            Ok(When::Instant(dt))
        }
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default().trim();
            if let Some(format) = format {
                if let Ok(dt) = DateTime::parse_from_str(text, format) {
                    return Ok(When::Instant(dt));
                }
                if let Ok(naive) = NaiveDateTime::parse_from_str(text, format) {
                    return naive_instant(naive, offset);
                }
                return NaiveDate::parse_from_str(text, format)
                    .map(When::Date)
                    .map_err(|_| invalid(format!("date text does not match format `{format}`")));
            }
            // Plain dates are the commonest shape: try them before the
            // date-time formats, whose parsers are far slower to fail.
            if text.len() == 10
                && let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            {
                return Ok(When::Date(d));
            }
            if let Ok(dt) = DateTime::parse_from_rfc3339(text) {
                return Ok(When::Instant(dt));
            }
            for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%d %H:%M:%S%.f%z"] {
                if let Ok(dt) = DateTime::parse_from_str(text, f) {
                    return Ok(When::Instant(dt));
                }
            }
            for f in [
                "%Y-%m-%dT%H:%M:%S%.f",
                "%Y-%m-%d %H:%M:%S%.f",
                "%Y-%m-%dT%H:%M",
            ] {
                if let Ok(naive) = NaiveDateTime::parse_from_str(text, f) {
                    return naive_instant(naive, offset);
                }
            }
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .map(When::Date)
                .map_err(|_| {
                    invalid("text is not a date (expected ISO 8601 / RFC 3339, or pass format=)")
                })
        }
        ValueKind::Undefined => Err(Error::new(
            ErrorKind::UndefinedError,
            "date of an undefined value",
        )),
        ValueKind::None => Err(invalid("date of none")),
        other => Err(invalid(format!("cannot read a date from a {other}"))),
    }
}

fn naive_instant(naive: NaiveDateTime, offset: FixedOffset) -> Result<When, Error> {
    offset
        .from_local_datetime(&naive)
        .single()
        .map(When::Instant)
        .ok_or_else(|| invalid("date-time out of range"))
}

fn to_date(value: &Value, kwargs: &Kwargs) -> Result<NaiveDate, Error> {
    Ok(match parse_when(value, kwargs)? {
        When::Date(d) => d,
        When::Instant(dt) => dt.date_naive(),
    })
}

/// `YYYY-MM-DD`, without parsing a format string per call.
pub(crate) fn iso_date(d: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day())
}

/// The calendar date of a value, read as `date()` reads it.
pub(crate) fn date_of(value: &Value) -> Result<NaiveDate, String> {
    to_date(
        value,
        &Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
    )
    .map_err(|e| e.detail().map_or_else(|| e.to_string(), str::to_owned))
}

fn date(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let d = to_date(value, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(Value::from(iso_date(d)))
}

fn datetime(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let when = parse_when(value, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(Value::from(match when {
        When::Date(d) => iso_date(d),
        When::Instant(dt) => dt.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }))
}

fn period(value: &Value, period_type: &str, kwargs: Kwargs) -> Result<Value, Error> {
    let ptype: PeriodType = period_type
        .parse()
        .map_err(|e: crate::period::UnknownPeriodType| invalid(e.to_string()))?;
    let d = to_date(value, &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(Value::from(ptype.period_id(d)))
}

fn age(birth: &Value, at: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let unit: Option<&str> = kwargs.get("unit")?;
    let birth = to_date(birth, &kwargs)?;
    let at = to_date(at, &kwargs)?;
    kwargs.assert_all_used()?;
    if at < birth {
        return Err(invalid("age: the birth date is after the reference date"));
    }
    let n: i64 = match unit.unwrap_or("years") {
        "days" => (at - birth).num_days(),
        "months" => {
            let whole = i64::from(at.year() - birth.year()) * 12 + i64::from(at.month())
                - i64::from(birth.month());
            if at.day() < birth.day() {
                whole - 1
            } else {
                whole
            }
        }
        "years" => i64::from(at.years_since(birth).unwrap_or(0)),
        other => {
            return Err(invalid(format!(
                "age: unit `{other}` is not years, months or days"
            )));
        }
    };
    Ok(Value::from(n))
}

fn text_of(value: &Value, what: &str) -> Result<String, Error> {
    match value.kind() {
        ValueKind::String => Ok(value.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number | ValueKind::Bool => Ok(value.to_string()),
        ValueKind::Undefined => Err(Error::new(
            ErrorKind::UndefinedError,
            format!("{what} of an undefined value"),
        )),
        ValueKind::None => Err(invalid(format!("{what} of none"))),
        other => Err(invalid(format!(
            "{what} needs text or a number, not a {other}"
        ))),
    }
}

fn uuid5(name: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ns = match kwargs.get::<Option<&str>>("namespace")? {
        None => *KIUNGO_NS,
        Some(text) => {
            uuid::Uuid::parse_str(text).map_err(|_| invalid("uuid5: namespace is not a UUID"))?
        }
    };
    kwargs.assert_all_used()?;
    let name = text_of(name, "uuid5")?;
    Ok(Value::from(
        uuid::Uuid::new_v5(&ns, name.as_bytes()).to_string(),
    ))
}

fn pseudonym(state: &State, value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let purpose: Option<&str> = kwargs.get("purpose")?;
    kwargs.assert_all_used()?;
    let runtime = state.lookup(RUNTIME);
    let key = runtime
        .as_ref()
        .and_then(|r| r.downcast_object_ref::<Runtime>())
        .and_then(|r| r.pseudonym_key.clone())
        .ok_or_else(|| invalid("pseudonym: no key configured (set KIUNGO_PSEUDONYM_KEY)"))?;
    let text = text_of(value, "pseudonym")?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key.0)
        .map_err(|_| invalid("pseudonym: unusable key"))?;
    mac.update(purpose.unwrap_or("").as_bytes());
    mac.update(&[0x1f]);
    mac.update(text.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Value::from(hex))
}

fn squish(value: &Value) -> Result<Value, Error> {
    let text = text_of(value, "squish")?;
    Ok(Value::from(
        text.split_whitespace().collect::<Vec<_>>().join(" "),
    ))
}

fn digits(value: &Value) -> Result<Value, Error> {
    let text = text_of(value, "digits")?;
    Ok(Value::from(
        text.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>(),
    ))
}

fn number(value: &Value) -> Result<Value, Error> {
    match value.kind() {
        ValueKind::Number => Ok(value.clone()),
        ValueKind::String => {
            let text = value.as_str().unwrap_or_default().trim();
            if let Ok(i) = text.parse::<i64>() {
                return Ok(Value::from(i));
            }
            match text.parse::<f64>() {
                Ok(f) if f.is_finite() => Ok(Value::from(f)),
                _ => Err(invalid("number: text is not a number")),
            }
        }
        ValueKind::Undefined => Err(Error::new(
            ErrorKind::UndefinedError,
            "number of an undefined value",
        )),
        other => Err(invalid(format!(
            "number: cannot read a number from a {other}"
        ))),
    }
}

fn lookup(table: &Value, key: &Value, default: Option<Value>) -> Result<Value, Error> {
    let table: Arc<Table> = table.downcast_object::<Table>().ok_or_else(|| {
        invalid("lookup: the first argument must be a table declared under `tables:`")
    })?;
    let key = match text_of(key, "lookup") {
        Ok(k) => k,
        Err(e) => return default.ok_or(e),
    };
    match (table.get(&key), default) {
        (Some(v), _) => Ok(v),
        (None, Some(d)) => Ok(d),
        (None, None) => Err(invalid_with(
            format!(
                "lookup: the key is not in table `{}` ({} rows)",
                table.name,
                table.len()
            ),
            vec![format!("lookup key `{key}`")],
        )),
    }
}

fn coalesce(args: minijinja::value::Rest<Value>) -> Value {
    args.iter()
        .find(|v| !(v.is_undefined() || v.is_none() || v.as_str() == Some("")))
        .cloned()
        .unwrap_or(Value::from(()))
}

/// Kiungo's functions that [`crate::direct`] calls without the VM: each
/// reads its arguments alone, no engine state, so calling it here gives
/// what the VM's call gives.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Direct {
    Date,
    Datetime,
    Period,
    Age,
    Uuid5,
    Squish,
    Digits,
    Number,
    Lookup,
    Coalesce,
}

impl Direct {
    /// The function applied as the filter `name` to `args` values (its
    /// operand and its positional arguments).
    pub(crate) fn filter(name: &str, args: usize) -> Option<Self> {
        Some(match (name, args) {
            ("date", 1) => Self::Date,
            ("datetime", 1) => Self::Datetime,
            ("period", 2) => Self::Period,
            ("age", 2) => Self::Age,
            ("uuid5", 1) => Self::Uuid5,
            ("squish", 1) => Self::Squish,
            ("digits", 1) => Self::Digits,
            ("number", 1) => Self::Number,
            _ => return None,
        })
    }

    /// The function `name` called with `args` positional arguments.
    pub(crate) fn function(name: &str, args: usize) -> Option<Self> {
        match (name, args) {
            ("lookup", 2 | 3) => Some(Self::Lookup),
            ("coalesce", _) => Some(Self::Coalesce),
            _ => Self::filter(name, args),
        }
    }

    /// Whether undefined arguments are passed (else the VM takes them).
    pub(crate) fn takes_undefined(self) -> bool {
        matches!(self, Self::Coalesce)
    }

    /// Whether the function takes keyword arguments.
    pub(crate) fn takes_kwargs(self) -> bool {
        matches!(
            self,
            Self::Date | Self::Datetime | Self::Period | Self::Age | Self::Uuid5
        )
    }

    /// The function's value; `None` on an error (the VM then says it) or
    /// arguments the VM would read differently.
    pub(crate) fn call(self, args: &[Value], kwargs: Vec<(&str, Value)>) -> Option<Value> {
        let kw = || Kwargs::from_iter(kwargs.iter().map(|(k, v)| (*k, v.clone())));
        match (self, args) {
            (Self::Date, [v]) => date(v, kw()).ok(),
            (Self::Datetime, [v]) => datetime(v, kw()).ok(),
            (Self::Period, [v, t]) => period(v, t.as_str()?, kw()).ok(),
            (Self::Age, [birth, at]) => age(birth, at, kw()).ok(),
            (Self::Uuid5, [v]) => uuid5(v, kw()).ok(),
            (Self::Squish, [v]) => squish(v).ok(),
            (Self::Digits, [v]) => digits(v).ok(),
            (Self::Number, [v]) => number(v).ok(),
            (Self::Lookup, [table, key]) => lookup(table, key, None).ok(),
            (Self::Lookup, [table, key, default]) if !default.is_none() => {
                lookup(table, key, Some(default.clone())).ok()
            }
            (Self::Coalesce, args) => Some(coalesce(minijinja::value::Rest(args.to_vec()))),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::context::Scope;
    use crate::expr::{Expr, PseudonymKey};

    use super::*;

    fn eval(src: &str, event: serde_json::Value) -> Result<serde_json::Value, String> {
        let mut vars = HashMap::new();
        vars.insert(Arc::from("event"), crate::json::lazy(Arc::new(event)));
        vars.insert(
            Arc::from(RUNTIME),
            Value::from_object(Runtime {
                pseudonym_key: Some(PseudonymKey::for_tests()),
            }),
        );
        let scope = Value::from_dyn_object(Scope::new(vars));
        let e = Expr::compile(src, "f".into(), 1)?;
        let v = e.eval(&scope).map_err(|f| f.message)?;
        Ok(crate::json::from_value(&v)?.unwrap_or(serde_json::Value::Null))
    }

    #[test]
    fn dates_from_every_shape_apps_send() {
        let ev = serde_json::json!({
            "cht": 1631313478618i64, "secs": 1631313478, "kobo": "2021-10-26T09:35:48.316+03:00",
            "late": "2021-10-26T23:30:00-02:00", "plain": "2021-10-26", "odk": "2018-01-01T00:00:00.000Z",
            "naive": "2021-10-26 08:00:00", "sl": "26/10/2021"
        });
        assert_eq!(
            eval("event.cht | date", ev.clone()),
            Ok("2021-09-10".into())
        );
        assert_eq!(
            eval("event.secs | date", ev.clone()),
            Ok("2021-09-10".into())
        );
        assert_eq!(
            eval("event.cht | datetime", ev.clone()),
            Ok("2021-09-10T22:37:58.618Z".into())
        );
        assert_eq!(
            eval("event.kobo | date", ev.clone()),
            Ok("2021-10-26".into())
        );
        assert_eq!(
            eval("event.late | date", ev.clone()),
            Ok("2021-10-26".into())
        );
        assert_eq!(
            eval("event.plain | datetime", ev.clone()),
            Ok("2021-10-26".into())
        );
        assert_eq!(
            eval("event.odk | datetime", ev.clone()),
            Ok("2018-01-01T00:00:00Z".into())
        );
        assert_eq!(
            eval("event.naive | datetime(offset='+03:00')", ev.clone()),
            Ok("2021-10-26T08:00:00+03:00".into())
        );
        assert_eq!(
            eval("date(event.sl, format='%d/%m/%Y')", ev.clone()),
            Ok("2021-10-26".into())
        );
        let err = eval("event.sl | date", ev).expect_err("ambiguous");
        assert!(err.contains("not a date"), "{err}");
    }

    #[test]
    fn periods_and_ages() {
        let ev = serde_json::json!({"d": "2024-03-15", "dob": "1984-06-05"});
        assert_eq!(
            eval("event.d | period('Monthly')", ev.clone()),
            Ok("202403".into())
        );
        assert_eq!(
            eval("event.d | period('Quarterly')", ev.clone()),
            Ok("2024Q1".into())
        );
        assert!(
            eval("event.d | period('Montly')", ev.clone())
                .expect_err("bad type")
                .contains("Montly")
        );
        assert_eq!(eval("age(event.dob, event.d)", ev.clone()), Ok(39.into()));
        assert_eq!(
            eval("age(event.dob, event.d, unit='months')", ev.clone()),
            Ok((39 * 12 + 9).into())
        );
        assert_eq!(
            eval("age('2024-02-29', '2025-02-28', unit='days')", ev.clone()),
            Ok(365.into())
        );
        assert!(eval("age(event.d, event.dob)", ev).is_err());
    }

    #[test]
    fn uuid5_is_deterministic_and_namespaced() {
        let a = eval("uuid5('cht/abc')", serde_json::json!({})).expect("uuid");
        let b = eval("uuid5('cht/abc')", serde_json::json!({})).expect("uuid");
        let c = eval("uuid5('cht/abd')", serde_json::json!({})).expect("uuid");
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            serde_json::json!(uuid::Uuid::new_v5(&KIUNGO_NS, b"cht/abc").to_string())
        );
    }

    #[test]
    fn pseudonym_is_keyed_and_purpose_bound() {
        let p1 = eval("pseudonym('+13125551222')", serde_json::json!({})).expect("p");
        let p2 = eval(
            "pseudonym('+13125551222', purpose='phone')",
            serde_json::json!({}),
        )
        .expect("p");
        assert_ne!(p1, p2);
        assert_eq!(p1.as_str().map(str::len), Some(64));
        assert!(!p1.as_str().unwrap_or_default().contains("5551222"));
    }

    #[test]
    fn strings_numbers_coalesce() {
        let ev = serde_json::json!({"a": "  Blue   Tree \t HC ", "p": "+232 (76) 123-456", "n": "12.5", "e": ""});
        assert_eq!(
            eval("event.a | squish", ev.clone()),
            Ok("Blue Tree HC".into())
        );
        assert_eq!(
            eval("event.p | digits", ev.clone()),
            Ok("23276123456".into())
        );
        assert_eq!(eval("event.n | number", ev.clone()), Ok(12.5.into()));
        assert_eq!(eval("'7' | number", ev.clone()), Ok(7.into()));
        assert_eq!(
            eval("coalesce(event.e, event.missing, 'x')", ev.clone()),
            Ok("x".into())
        );
        assert!(eval("'abc' | number", ev).is_err());
    }
}
