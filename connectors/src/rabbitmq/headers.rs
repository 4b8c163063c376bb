//! AMQP header tables as JSON, for dead letters and routing.

use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

/// Converts a header table to a JSON object. Byte arrays that are not
/// UTF-8 become arrays of numbers; decimals become numbers.
pub fn field_table_to_json(table: &FieldTable) -> Value {
    let mut map = Map::new();
    for (k, v) in table.inner() {
        map.insert(k.as_str().to_owned(), value(v));
    }
    Value::Object(map)
}

fn value(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(n) => json!(n),
        AMQPValue::ShortShortUInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::ShortUInt(n) => json!(n),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongUInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::Float(n) => json!(n),
        AMQPValue::Double(n) => json!(n),
        AMQPValue::DecimalValue(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json!(text),
            Err(_) => json!(s.as_bytes()),
        },
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => field_table_to_json(t),
        AMQPValue::ByteArray(b) => match std::str::from_utf8(b.as_slice()) {
            Ok(text) => json!(text),
            Err(_) => json!(b.as_slice()),
        },
        AMQPValue::Void => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    #[test]
    fn nested_headers_convert() {
        let mut inner = FieldTable::default();
        inner.insert(ShortString::from("n"), AMQPValue::LongInt(3));
        let mut t = FieldTable::default();
        t.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-abc-def-01".into()),
        );
        t.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(inner)])),
        );
        t.insert("flag".into(), AMQPValue::Boolean(true));
        assert_eq!(
            field_table_to_json(&t),
            json!({"flag": true, "traceparent": "00-abc-def-01", "x-death": [{"n": 3}]})
        );
    }
}
