//! What Kiungo's fuzz targets share: a cursor that draws values from the
//! fuzzer's bytes ([`Input`]), JSON built or mutated from it, the marker
//! values that stand for personal data, and how long each target runs.
//!
//! The targets themselves live beside the code they test (`fuzz.rs` in
//! `bridge/src/ingest/`, `connectors/src/{rabbitmq,fhir,dhis2}/`,
//! `mappings/tests/fuzz_packs.rs`); `docs/security.md` lists them and the
//! commands that run them for longer. Every draw is total: once the bytes
//! run out, each draw returns its smallest value, so any byte string is a
//! valid input and libFuzzer's mutations stay meaningful.

use std::time::Duration;

use serde_json::{Map, Value, json};

/// A personal-data stand-in: a name, as the privacy tests use.
pub const MARKER_NAME: &str = "Zawadi Fuzzmarker";
/// A personal-data stand-in: a phone number.
pub const MARKER_PHONE: &str = "+254700999111";
/// What must never appear in text that leaves the process: parts of the
/// markers above.
pub const NEEDLES: [&str; 3] = ["Fuzzmarker", "700999111", "Zawadi"];

/// The needles `text` contains.
pub fn leaks(text: &str) -> Vec<&'static str> {
    NEEDLES.into_iter().filter(|n| text.contains(n)).collect()
}

/// How long one fuzz target runs under `cargo test` unless
/// `BOLERO_RANDOM_TEST_TIME_MS` or `BOLERO_RANDOM_ITERATIONS` say
/// otherwise: short enough for CI (a few seconds for all of them).
pub const CI_TIME: Duration = Duration::from_millis(1500);

/// Draws values from the fuzzer's bytes.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    /// A cursor over `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// Whether every byte was drawn.
    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes not drawn yet, all of them.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// One byte (0 when none are left).
    pub fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }

    /// Eight bytes (zeros past the end).
    pub fn eight(&mut self) -> [u8; 8] {
        let mut b = [0u8; 8];
        for x in &mut b {
            *x = self.byte();
        }
        b
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        let v = if n <= 256 {
            usize::from(self.byte())
        } else {
            usize::from(u16::from_le_bytes([self.byte(), self.byte()]))
        };
        v % n
    }

    /// `true` with probability about `1/n`.
    pub fn one_in(&mut self, n: u8) -> bool {
        n > 0 && self.byte().is_multiple_of(n)
    }

    /// One of `items` (the first when none are left).
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    /// Up to `max` bytes, their count drawn first.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.bytes.len());
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        head
    }

    /// A short string: often a marker or a text that trips parsers
    /// (quotes, NUL, control characters, long digit runs, non-ASCII),
    /// otherwise the next bytes as lossy UTF-8.
    pub fn text(&mut self) -> String {
        const SPECIAL: [&str; 16] = [
            MARKER_NAME,
            MARKER_PHONE,
            "",
            "x\u{0}y",
            "'Zawadi Fuzzmarker'",
            "«Fuzzmarker»",
            "\u{1b}[31m",
            "2024-02-30",
            "9999-99-99T99:99:99Z",
            "-1",
            "1e309",
            "NaN",
            "\u{202e}\u{fffd}",
            "{{ x }}",
            "Patient/../../x",
            "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        ];
        if self.one_in(3) {
            return self.pick(&SPECIAL).to_owned();
        }
        String::from_utf8_lossy(self.bytes(24)).into_owned()
    }

    /// A JSON value at most `depth` levels deep, with markers among its
    /// strings.
    pub fn json(&mut self, depth: usize) -> Value {
        let kinds = if depth == 0 { 5 } else { 7 };
        match self.below(kinds) {
            0 => Value::Null,
            1 => json!(self.byte().is_multiple_of(2)),
            2 => {
                let raw = i64::from_le_bytes(self.eight());
                let small = i64::from(self.byte());
                json!(self.pick(&[raw, 0, -1, small, i64::MAX, i64::MIN]))
            }
            3 => {
                let raw = f64::from_bits(u64::from_le_bytes(self.eight()));
                serde_json::Number::from_f64(raw).map_or(json!(0.5), Value::Number)
            }
            4 => json!(self.text()),
            5 => {
                let n = self.below(5);
                Value::Array((0..n).map(|_| self.json(depth - 1)).collect())
            }
            _ => {
                let n = self.below(6);
                let mut map = Map::new();
                for _ in 0..n {
                    let key = self.text();
                    map.insert(key, self.json(depth - 1));
                }
                Value::Object(map)
            }
        }
    }

    /// Applies up to `max` mutations to `value`: replaces a leaf or a
    /// subtree by drawn JSON (often a marker), removes a key, turns a
    /// value into another type, or nests it deeper.
    pub fn mutate(&mut self, value: &mut Value, max: usize) {
        let n = 1 + self.below(max);
        for _ in 0..n {
            if self.is_empty() {
                return;
            }
            let mut paths = Vec::new();
            paths_of(value, &mut Vec::new(), &mut paths);
            let path = &paths[self.below(paths.len())];
            let Some(target) = at_mut(value, path) else {
                continue;
            };
            match self.below(6) {
                0 => *target = json!(self.pick(&[MARKER_NAME, MARKER_PHONE])),
                1 => *target = self.json(2),
                2 => {
                    if let Value::Object(map) = target {
                        let keys: Vec<String> = map.keys().cloned().collect();
                        if !keys.is_empty() {
                            map.shift_remove(&keys[self.below(keys.len())]);
                        }
                    } else {
                        *target = Value::Null;
                    }
                }
                3 => {
                    *target = match target.take() {
                        Value::String(s) => s.parse::<f64>().map_or(json!([s]), |f| json!(f)),
                        Value::Number(n) => json!(n.to_string()),
                        Value::Bool(b) => json!(if b { "yes" } else { "no" }),
                        Value::Array(mut a) => a.pop().unwrap_or(Value::Null),
                        Value::Object(m) => Value::Array(m.into_iter().map(|(_, v)| v).collect()),
                        Value::Null => json!(""),
                    }
                }
                4 => {
                    let inner = target.take();
                    *target = json!({ "value": inner });
                }
                _ => *target = json!(self.text()),
            }
        }
    }
}

/// Every path in `value` (the root included), as keys and indexes.
fn paths_of(value: &Value, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(at.clone());
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                at.push(Step::Key(k.clone()));
                paths_of(v, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                at.push(Step::Index(i));
                paths_of(v, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn at_mut<'v>(mut value: &'v mut Value, path: &[Step]) -> Option<&'v mut Value> {
    for step in path {
        value = match step {
            Step::Key(k) => value.get_mut(k.as_str())?,
            Step::Index(i) => value.get_mut(*i)?,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_total_and_mutations_change_things() {
        let mut empty = Input::new(&[]);
        assert_eq!(empty.byte(), 0);
        assert_eq!(empty.below(7), 0);
        assert_eq!(empty.json(3), Value::Null);
        let bytes: Vec<u8> = (0..=255).cycle().take(4096).collect();
        let mut input = Input::new(&bytes);
        let original = json!({"a": {"b": [1, 2, "c"]}, "d": "e"});
        let mut changed = 0;
        for _ in 0..50 {
            let mut v = original.clone();
            input.mutate(&mut v, 3);
            changed += usize::from(v != original);
        }
        assert!(changed > 25, "{changed}");
        assert_eq!(leaks("call +254700999111"), vec!["700999111"]);
    }
}
