//! Conversions between event JSON and expression values.

use std::collections::BTreeMap;
use std::sync::Arc;

use minijinja::Value;
use minijinja::value::ValueKind;

/// Converts event JSON into an expression value. Numbers stay numbers.
pub(crate) fn to_value(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        serde_json::Value::Array(items) => Value::from(items.iter().map(to_value).collect::<Vec<_>>()),
        serde_json::Value::Object(map) => Value::from_object(
            map.iter()
                .map(|(k, v)| (Arc::<str>::from(k.as_str()), to_value(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

/// Converts an expression result into JSON. `None` means the value is
/// `none` (the key is to be omitted); undefined is an error.
pub(crate) fn from_value(value: &Value) -> Result<Option<serde_json::Value>, String> {
    match value.kind() {
        ValueKind::Undefined => Err("expression yields an undefined value (a missing field or binding; use `| default(none)` to omit it)".into()),
        ValueKind::None => Ok(None),
        _ => serde_json::to_value(value)
            .map(|v| if v.is_null() { None } else { Some(v) })
            .map_err(|e| format!("result cannot be represented as JSON: {e}")),
    }
}

/// Renders a scalar expression result as DHIS2 wants identifiers: a string.
pub(crate) fn scalar_string(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_nested_json_keeping_number_types() {
        let input = json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3, "d": 18446744073709551615u64}});
        let v = to_value(&input);
        let back = from_value(&v).expect("converts").expect("not none");
        assert_eq!(back["a"], json!([1, 2.5, "x", null, true]));
        assert_eq!(back["b"]["c"], json!(-3));
        assert_eq!(back["b"]["d"], json!(18446744073709551615u64));
    }

    #[test]
    fn undefined_is_an_error_and_none_is_omitted() {
        assert!(from_value(&Value::UNDEFINED).is_err());
        assert_eq!(from_value(&Value::from(())), Ok(None));
    }
}
