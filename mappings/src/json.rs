//! Conversions between event JSON and expression values.

use std::sync::{Arc, Mutex};

use minijinja::Value;
use minijinja::value::{Enumerator, Object, ObjectRepr, ValueKind};

/// Wraps an event payload for expressions without converting it: only the
/// paths an expression reads are turned into values. Payloads carry base64
/// images and long histories that no mapping reads.
pub(crate) fn lazy(root: Arc<serde_json::Value>) -> Value {
    node(&root, &root, Vec::new())
}

/// A segment of the path from the payload root to a node.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(Arc<str>),
    Index(usize),
}

/// How many children a node keeps ([`JsonNode::read`]). Mappings read a
/// few named children of each object, which fit; a list or object walked
/// whole (`x in event.list`, a filter over it, its conversion to JSON)
/// keeps no more than this, so that finding a kept child stays a short
/// scan rather than one that grows with every item read (quadratic in the
/// payload's size) and the kept values stay few.
const KEEP: usize = 32;

/// An object or array inside a payload, addressed by its path.
///
/// What an expression reads under it is kept (`read`, up to [`KEEP`]
/// children): a payload is read by a few dozen expressions per event,
/// most through the same few objects (`event.fields.…`), and each child
/// is then found and made once per event rather than once per read.
#[derive(Debug)]
struct JsonNode {
    root: Arc<serde_json::Value>,
    path: Box<[Seg]>,
    read: Mutex<Vec<(Seg, Value)>>,
}

impl JsonNode {
    fn resolve(&self) -> Option<&serde_json::Value> {
        let mut at = &*self.root;
        for seg in &self.path {
            at = match seg {
                Seg::Key(k) => at.get(&**k)?,
                Seg::Index(i) => at.get(*i)?,
            };
        }
        Some(at)
    }

    /// A child read before.
    fn known(&self, found: impl Fn(&Seg) -> bool) -> Option<Value> {
        let read = self.read.lock().ok()?;
        read.iter().find(|(s, _)| found(s)).map(|(_, v)| v.clone())
    }

    /// The child `seg` of `child`'s JSON, kept for later reads.
    fn keep(&self, child: &serde_json::Value, seg: Seg) -> Value {
        let value = match child {
            // Only an object or array needs its path (most reads are of
            // scalars).
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                let mut path = Vec::with_capacity(self.path.len() + 1);
                path.extend(self.path.iter().cloned());
                path.push(seg.clone());
                node(&self.root, child, path)
            }
            leaf => scalar(leaf),
        };
        if let Ok(mut read) = self.read.lock()
            && read.len() < KEEP
        {
            read.push((seg, value.clone()));
        }
        value
    }
}

/// A value for `json`, which sits at `path` under `root`.
fn node(root: &Arc<serde_json::Value>, json: &serde_json::Value, path: Vec<Seg>) -> Value {
    match json {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            Value::from_object(JsonNode {
                root: root.clone(),
                path: path.into_boxed_slice(),
                read: Mutex::new(Vec::new()),
            })
        }
        leaf => scalar(leaf),
    }
}

impl Object for JsonNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.resolve() {
            Some(serde_json::Value::Array(_)) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        if let Some(k) = key.as_str() {
            return self.get_value_by_str(k);
        }
        let i = usize::try_from(key.as_i64()?).ok()?;
        if let Some(v) = self.known(|s| *s == Seg::Index(i)) {
            return Some(v);
        }
        match self.resolve()? {
            serde_json::Value::Array(items) => Some(self.keep(items.get(i)?, Seg::Index(i))),
            _ => None,
        }
    }

    /// Attribute reads (`event.fields`), without making a key value first.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        if let Some(v) = self.known(|s| matches!(s, Seg::Key(k) if &**k == key)) {
            return Some(v);
        }
        match self.resolve()? {
            serde_json::Value::Object(map) => {
                Some(self.keep(map.get(key)?, Seg::Key(Arc::from(key))))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.resolve() {
            Some(serde_json::Value::Object(map)) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            Some(serde_json::Value::Array(items)) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.resolve() {
            Some(serde_json::Value::Object(map)) => Some(map.len()),
            Some(serde_json::Value::Array(items)) => Some(items.len()),
            _ => Some(0),
        }
    }
}

/// Converts a JSON scalar into an expression value. Numbers stay numbers;
/// objects and arrays are read through [`lazy`] instead.
fn scalar(json: &serde_json::Value) -> Value {
    match json {
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
        serde_json::Value::Null | serde_json::Value::Array(_) | serde_json::Value::Object(_) => {
            Value::from(())
        }
    }
}

/// Converts an expression result into JSON. `None` means the value is
/// `none` (the key is to be omitted); undefined is an error.
pub(crate) fn from_value(value: &Value) -> Result<Option<serde_json::Value>, String> {
    match value.kind() {
        ValueKind::Undefined => Err("expression yields an undefined value (a missing field or binding; use `| default(none)` to omit it)".into()),
        ValueKind::None => Ok(None),
        // The common leaves, without a trip through serde.
        ValueKind::String => Ok(value.as_str().map(|s| serde_json::Value::String(s.to_owned()))),
        ValueKind::Bool => Ok(Some(serde_json::Value::Bool(value.is_true()))),
        ValueKind::Number if value.as_i64().is_some() => Ok(value.as_i64().map(serde_json::Value::from)),
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
        let input =
            json!({"a": [1, 2.5, "x", null, true], "b": {"c": -3, "d": 18446744073709551615u64}});
        let v = lazy(Arc::new(input.clone()));
        let back = from_value(&v).expect("converts").expect("not none");
        assert_eq!(back["a"], json!([1, 2.5, "x", null, true]));
        assert_eq!(back["b"]["c"], json!(-3));
        assert_eq!(back["b"]["d"], json!(18446744073709551615u64));
    }

    #[test]
    fn lazy_payload_reads_like_the_converted_one() {
        let input = json!({"a": [1, {"b": "x"}], "c": {"d": 2.5, "e": null}, "f": "g"});
        let lazy = lazy(Arc::new(input.clone()));
        assert_eq!(from_value(&lazy).expect("converts"), Some(input.clone()));
        let a = lazy.get_attr("a").expect("a");
        assert_eq!(a.len(), Some(2));
        let b = a
            .get_item(&Value::from(1))
            .expect("item")
            .get_attr("b")
            .expect("b");
        assert_eq!(b.as_str(), Some("x"));
        assert!(lazy.get_attr("missing").expect("lookup").is_undefined());
        assert_eq!(lazy.kind(), ValueKind::Map);
        assert_eq!(a.kind(), ValueKind::Seq);
    }

    #[test]
    fn children_read_twice_read_the_same() {
        let input = json!({"a": {"b": [1, {"c": "x"}], "n": null}, "s": "t", "k": 2});
        let root = lazy(Arc::new(input));
        for _ in 0..2 {
            let a = root.get_attr("a").expect("a");
            let b = a.get_attr("b").expect("b");
            assert_eq!(b.get_item(&Value::from(0)).expect("0"), Value::from(1));
            let c = b.get_item(&Value::from(1)).expect("1").get_attr("c");
            assert_eq!(c.expect("c").as_str(), Some("x"));
            assert!(b.get_item(&Value::from(2)).expect("2").is_undefined());
            assert!(b.get_attr("c").expect("attr of a list").is_undefined());
            assert!(
                a.get_item(&Value::from(0))
                    .expect("index of a map")
                    .is_undefined()
            );
            assert!(a.get_attr("n").expect("n").is_none());
            assert_eq!(root.get_attr("s").expect("s").as_str(), Some("t"));
            assert_eq!(root.get_attr("k").expect("k"), Value::from(2));
        }
    }

    /// The children a node keeps for `value` (a payload's object or list).
    fn kept(value: &Value) -> usize {
        value
            .downcast_object_ref::<JsonNode>()
            .and_then(|n| n.read.lock().ok().map(|r| r.len()))
            .expect("a payload node")
    }

    /// Walking a long list or a wide object whole (as `in`, a filter or
    /// the conversion to JSON do) keeps at most `KEEP` children: a kept
    /// child is found by a scan of what was kept, which grew with every
    /// item read and made each walk quadratic in the payload's size (an
    /// 80 000-item list took half a minute per expression).
    #[test]
    fn walking_a_long_list_or_wide_object_keeps_few_children() {
        let n = 10_000;
        let items: Vec<serde_json::Value> = (0..n).map(|i| json!({ "i": i })).collect();
        let keys: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("k{i}"), json!([i]))).collect();
        let input = json!({"list": items, "obj": keys});
        let root = lazy(Arc::new(input.clone()));
        let list = root.get_attr("list").expect("list");
        let obj = root.get_attr("obj").expect("obj");
        for _ in 0..2 {
            assert_eq!(
                from_value(&list).expect("converts"),
                Some(input["list"].clone())
            );
            assert_eq!(
                from_value(&obj).expect("converts"),
                Some(input["obj"].clone())
            );
            let found = list
                .try_iter()
                .expect("iterates")
                .filter(|v| v.get_attr("i").ok() == Some(Value::from(n - 1)))
                .count();
            assert_eq!(found, 1);
        }
        assert_eq!(kept(&list), KEEP);
        assert_eq!(kept(&obj), KEEP);
        // Children read past the bound read as the kept ones do.
        let last = list.get_item(&Value::from(n - 1)).expect("last");
        assert_eq!(last.get_attr("i").expect("i"), Value::from(n - 1));
        let first = list.get_item(&Value::from(0)).expect("first");
        assert_eq!(first.get_attr("i").expect("i"), Value::from(0));
        let key = obj.get_attr(&format!("k{}", n - 1)).expect("key");
        assert_eq!(
            key.get_item(&Value::from(0)).expect("0"),
            Value::from(n - 1)
        );
    }

    #[test]
    fn undefined_is_an_error_and_none_is_omitted() {
        assert!(from_value(&Value::UNDEFINED).is_err());
        assert_eq!(from_value(&Value::from(())), Ok(None));
    }
}
