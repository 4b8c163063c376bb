//! AMQP header tables as JSON, for dead letters and routing.
//!
//! Header tables can nest as deep as a frame allows (about 18,000 levels
//! in a 128 KiB frame): conversion stops at [`MAX_HEADER_DEPTH`], and a
//! deep table is dropped on a thread with a stack sized for it, so that
//! no recursion here can overflow a worker thread's stack.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Map, Value, json};

use super::raw::MAX_HEADER_DEPTH;

/// Converts a header table to a JSON object. Byte arrays that are not
/// UTF-8 become arrays of numbers; decimals become numbers; tables or
/// arrays nested deeper than [`MAX_HEADER_DEPTH`] become a note.
pub fn field_table_to_json(table: &FieldTable) -> Value {
    table_json(table, 1)
}

fn table_json(table: &FieldTable, depth: usize) -> Value {
    if depth > MAX_HEADER_DEPTH {
        return json!(format!(
            "(nested deeper than {MAX_HEADER_DEPTH} levels: not converted)"
        ));
    }
    let mut map = Map::new();
    for (k, v) in table.inner() {
        map.insert(k.as_str().to_owned(), value(v, depth));
    }
    Value::Object(map)
}

/// How deep tables and arrays nest in `table` (1 for a flat table),
/// counted with a loop, not recursion.
pub(super) fn nesting(table: &FieldTable) -> usize {
    let mut deepest = 1;
    let mut todo: Vec<(&AMQPValue, usize)> = table.inner().values().map(|v| (v, 2)).collect();
    while let Some((v, depth)) = todo.pop() {
        match v {
            AMQPValue::FieldTable(t) => {
                deepest = deepest.max(depth);
                todo.extend(t.inner().values().map(|v| (v, depth + 1)));
            }
            AMQPValue::FieldArray(a) => {
                deepest = deepest.max(depth);
                todo.extend(a.as_slice().iter().map(|v| (v, depth + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// Drops a delivery's properties; a deeply nested header table is dropped
/// on a thread of its own with a large stack (dropping recurses once per
/// level).
pub(super) fn drop_flat(properties: BasicProperties) {
    let deep = properties
        .headers()
        .as_ref()
        .is_some_and(|h| nesting(h) > 256);
    if deep {
        let spawned = std::thread::Builder::new()
            .name("kiungo-drop-headers".into())
            .stack_size(256 * 1024 * 1024)
            .spawn(move || drop(properties));
        if let Ok(handle) = spawned {
            let _ = handle.join();
        }
    }
}

fn value(v: &AMQPValue, depth: usize) -> Value {
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
        AMQPValue::FieldArray(_) if depth >= MAX_HEADER_DEPTH => json!(format!(
            "(nested deeper than {MAX_HEADER_DEPTH} levels: not converted)"
        )),
        AMQPValue::FieldArray(a) => {
            Value::Array(a.as_slice().iter().map(|v| value(v, depth + 1)).collect())
        }
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => table_json(t, depth + 1),
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
        assert_eq!(nesting(&t), 3);
    }

    #[test]
    fn deep_tables_are_cut() {
        let mut t = FieldTable::default();
        for _ in 0..40 {
            let mut outer = FieldTable::default();
            outer.insert(ShortString::from("n"), AMQPValue::FieldTable(t));
            t = outer;
        }
        assert_eq!(nesting(&t), 41);
        let mut v = &field_table_to_json(&t);
        for _ in 0..MAX_HEADER_DEPTH {
            v = &v["n"];
        }
        assert!(
            v.as_str().is_some_and(|s| s.contains("not converted")),
            "{v}"
        );
    }
}
