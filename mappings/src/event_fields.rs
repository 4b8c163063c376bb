//! The event fields a mapping reads, checked against its test events, for
//! `kiungo mappings validate`.
//!
//! An expression reading a misspelt field of the event
//! (`event.fields.anc_visitz`) compiles, and fails only when an event
//! arrives. A mapping's test events are real-shaped payloads of the events
//! it maps, so every `event.` path its expressions read is looked for in
//! them ([`MappingSet::check_event_fields`]):
//!
//! - a path that no test event has, while one of them has a close name at
//!   the same level (edit distance 1 or 2, by the name's length, or the
//!   same name but for case, `_` and `-`), is an **error**: a likely
//!   misspelling;
//! - a path that no test event has, with no close name, is a **warning**:
//!   an optional field (guarded with `is defined` or `default`), or a
//!   fixture to add.
//!
//! A path is found when any test event has it; through an array, when any
//! of its items has it. Only `.name` steps are followed (a subscript such
//! as `event.form['@name']` ends the path), a name read from text or a
//! number (a method such as `.split`) is not checked, and neither are
//! `item.` paths nor `let` bindings: they are not read from the event
//! directly. Messages name keys, never values; a key that does not look
//! like a field name (it may be data) is never suggested.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use crate::error::LoadError;
use crate::expr::Expr;
use crate::mapping::MappingSet;

/// One place where an expression of a mapping reads a field of the event.
#[derive(Debug, Clone)]
pub(crate) struct EventRead {
    /// The file of the expression: the mapping's or a shared file's.
    file: PathBuf,
    /// 1-based line of the expression.
    line: u64,
    /// 1-based column of the expression's node.
    column: u64,
    /// Dotted path of the field in the mapping file, e.g. `dhis2[0].when`.
    field: String,
    /// The path as the expression reads it, e.g. `event.fields.anc_visit`.
    path: String,
}

impl EventRead {
    /// The event paths `e` reads, at `column` of its line in `file`.
    pub(crate) fn of(e: &Expr, file: &Path, field: &str, column: u64) -> Vec<Self> {
        Self::from_paths(e.nested_variables(), file, field, e.line, column)
    }

    /// The `event.` paths among `paths` (an expression's nested
    /// variables), at one place.
    pub(crate) fn from_paths(
        paths: Vec<String>,
        file: &Path,
        field: &str,
        line: u64,
        column: u64,
    ) -> Vec<Self> {
        paths
            .into_iter()
            .filter(|p| p.starts_with("event."))
            .map(|path| Self {
                file: file.to_path_buf(),
                line,
                column,
                field: field.to_owned(),
                path,
            })
            .collect()
    }
}

/// What comparing the event fields each mapping reads with its test
/// events found.
#[derive(Debug, Default)]
pub struct FieldReport {
    /// Fields no test event has while one has a close name (likely
    /// misspellings); they fail `kiungo mappings validate`.
    pub errors: Vec<LoadError>,
    /// Fields no test event has, with no close name (optional fields, or
    /// fixtures to add); shown, not failing.
    pub warnings: Vec<LoadError>,
    /// Mappings whose fields were not checked (none of their test events
    /// is one they take), one note each.
    pub unchecked: Vec<LoadError>,
}

/// Where a path leaves every test event: the path up to and including the
/// missing name, and the names found at that level.
struct Missing {
    /// Number of names after `event` up to the missing one.
    depth: usize,
    /// The keys the test events have at that level.
    keys: BTreeSet<String>,
}

impl MappingSet {
    /// Checks every `event.` path each mapping's expressions read against
    /// the mapping's test events (those it takes: its source, its `match`
    /// holds), as the module documentation describes. Nothing is mapped;
    /// only key names are compared and shown.
    pub fn check_event_fields(&self) -> FieldReport {
        let mut report = FieldReport::default();
        for m in self.mappings() {
            let events: Vec<&serde_json::Value> = m
                .tests
                .iter()
                .filter(|tc| self.takes_for_test(m, &tc.event))
                .map(|tc| &*tc.event.payload)
                .collect();
            if events.is_empty() {
                report.unchecked.push(LoadError {
                    file: m.file.clone(),
                    line: None,
                    column: None,
                    field: String::new(),
                    message: format!(
                        "mapping `{}`: event fields not checked: none of its test cases has an \
                         event it takes (add one whose event it maps)",
                        m.id
                    ),
                });
                continue;
            }
            let mut seen = HashSet::new();
            let mut reads: Vec<&EventRead> = m.event_reads.iter().collect();
            reads.sort_by(|a, b| {
                (&a.file, a.line, a.column, &a.path).cmp(&(&b.file, b.line, b.column, &b.path))
            });
            for read in reads {
                let names: Vec<&str> = read.path.split('.').skip(1).collect();
                let Some(missing) = find_missing(&names, &events) else {
                    continue;
                };
                let upto = names.get(..missing.depth).unwrap_or(&names);
                let Some((name, parents)) = upto.split_last() else {
                    continue;
                };
                if !seen.insert((&read.file, read.line, read.column, upto.join("."))) {
                    continue;
                }
                let parent = std::iter::once("event")
                    .chain(parents.iter().copied())
                    .collect::<Vec<_>>()
                    .join(".");
                let mut message = format!(
                    "`{}`: no test event has `{name}` under `{parent}`",
                    read.path
                );
                let error = LoadError {
                    file: read.file.clone(),
                    line: Some(read.line),
                    column: Some(read.column),
                    field: read.field.clone(),
                    message: String::new(),
                };
                let near = closest(name, &missing.keys);
                match near.as_slice() {
                    [] => {
                        message.push_str(
                            " (fine for an optional field read with `is defined` or `default`; \
                             otherwise add a test event that has it)",
                        );
                        report.warnings.push(LoadError { message, ..error });
                    }
                    keys => {
                        let meant: Vec<String> = keys
                            .iter()
                            .map(|k| format!("`{parent}{}`", step(k)))
                            .collect();
                        message.push_str(&format!(
                            "; did you mean {}? (if both are real fields, add a test event that \
                             has this one)",
                            meant.join(" or ")
                        ));
                        report.errors.push(LoadError { message, ..error });
                    }
                }
            }
        }
        report
    }
}

/// Where the path `names` (after `event`) leaves every one of `events`,
/// or `None` when some event has it, or when it reaches a value that is
/// neither an object nor an array (text, a number, null: what follows may
/// be a method, and cannot be told from a key).
fn find_missing(names: &[&str], events: &[&serde_json::Value]) -> Option<Missing> {
    let mut level: Vec<&serde_json::Value> = events.to_vec();
    for (i, name) in names.iter().enumerate() {
        let objects = objects_in(&level);
        if objects.is_empty() {
            return None;
        }
        let next: Vec<&serde_json::Value> = objects.iter().filter_map(|o| o.get(*name)).collect();
        if next.is_empty() {
            return Some(Missing {
                depth: i + 1,
                keys: objects.iter().flat_map(|o| o.keys().cloned()).collect(),
            });
        }
        level = next;
    }
    None
}

/// The objects among `values`, and among the items of their arrays
/// (nested arrays too).
fn objects_in<'a>(
    values: &[&'a serde_json::Value],
) -> Vec<&'a serde_json::Map<String, serde_json::Value>> {
    let mut out = Vec::new();
    let mut stack: Vec<&serde_json::Value> = values.iter().rev().copied().collect();
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(o) => out.push(o),
            serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
            _ => {}
        }
    }
    out
}

/// The keys of `keys` closest to `name` (all those as close as the
/// closest, at most [`MAX_SUGGESTIONS`], in name order), if close enough
/// to be the name meant: the same but for case, `_` and `-`, or within an
/// edit distance that grows with the name (none up to 3 characters, 1 up
/// to 6, else 2). Keys that do not look like field names are never
/// offered.
fn closest<'k>(name: &str, keys: &'k BTreeSet<String>) -> Vec<&'k str> {
    let folded = fold(name);
    let allowed = match name.chars().count() {
        0..=3 => 0,
        4..=6 => 1,
        _ => 2,
    };
    let near: Vec<(usize, &str)> = keys
        .iter()
        .filter(|k| name_like(k) && k.as_str() != name)
        .filter_map(|k| {
            let d = if fold(k) == folded {
                0
            } else {
                distance(name, k)
            };
            (d <= allowed).then_some((d, k.as_str()))
        })
        .collect();
    let Some(best) = near.iter().map(|(d, _)| *d).min() else {
        return Vec::new();
    };
    near.into_iter()
        .filter(|(d, _)| *d == best)
        .map(|(_, k)| k)
        .take(MAX_SUGGESTIONS)
        .collect()
}

/// At most this many equally close keys are suggested.
const MAX_SUGGESTIONS: usize = 3;

/// The name without case, `_` and `-`.
fn fold(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether a key looks like a field name (and not like data, such as an
/// id or a phone number used as a key).
fn name_like(key: &str) -> bool {
    key.len() <= 64
        && key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// How an expression reads `key`: `.key`, or `['key']` when it is not an
/// identifier.
fn step(key: &str) -> String {
    if key.contains('-') {
        format!("['{key}']")
    } else {
        format!(".{key}")
    }
}

/// Edit distance with adjacent transpositions (optimal string alignment),
/// for suggestions.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    let at = |i: usize, j: usize| i * width + j;
    for i in 0..=a.len() {
        if let Some(c) = d.get_mut(at(i, 0)) {
            *c = i;
        }
    }
    for j in 0..=b.len() {
        if let Some(c) = d.get_mut(at(0, j)) {
            *c = j;
        }
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let get = |i: usize, j: usize| d.get(at(i, j)).copied().unwrap_or(usize::MAX / 2);
            let same = a.get(i - 1) == b.get(j - 1);
            let mut best = (get(i - 1, j) + 1)
                .min(get(i, j - 1) + 1)
                .min(get(i - 1, j - 1) + usize::from(!same));
            if i > 1 && j > 1 && a.get(i - 1) == b.get(j - 2) && a.get(i - 2) == b.get(j - 1) {
                best = best.min(get(i - 2, j - 2) + 1);
            }
            if let Some(c) = d.get_mut(at(i, j)) {
                *c = best;
            }
        }
    }
    d.get(at(a.len(), b.len())).copied().unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn distance_counts_edits_and_swaps() {
        assert_eq!(distance("anc_visitz", "anc_visit"), 1);
        assert_eq!(distance("recieved", "received"), 1);
        assert_eq!(distance("sex", "age"), 3);
        assert_eq!(distance("age", "agee"), 1);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("weight", "weight"), 0);
    }

    #[test]
    fn close_names_are_suggested_far_ones_are_not() {
        let k = keys(&[
            "anc_visit",
            "patient_id",
            "patient_uuid",
            "sex",
            "Weight",
            "0712345678",
        ]);
        assert_eq!(closest("anc_visitz", &k), ["anc_visit"]);
        assert_eq!(closest("patientuuid", &k), ["patient_uuid"]);
        assert_eq!(closest("weight", &k), ["Weight"]);
        // Equally close keys are all offered.
        assert_eq!(closest("patient_uid", &k), ["patient_id", "patient_uuid"]);
        // Short names need an exact match but for case and `_`.
        assert!(closest("age", &k).is_empty());
        assert!(closest("nickname", &k).is_empty());
        // A key that looks like data is never offered.
        assert!(closest("0712345679", &k).is_empty());
    }

    #[test]
    fn paths_are_found_through_any_event_and_any_array_item() {
        let a = serde_json::json!({ "fields": { "obs": [ { "code": 1 }, { "value": 2 } ] } });
        let b = serde_json::json!({ "fields": { "extra": "x" } });
        let events = [&a, &b];
        assert!(find_missing(&["fields", "extra"], &events).is_none());
        assert!(find_missing(&["fields", "obs", "value"], &events).is_none());
        // A name read from text may be a method: not checked.
        assert!(find_missing(&["fields", "extra", "split"], &events).is_none());
        let miss = find_missing(&["fields", "obs", "valeu"], &events).expect("missing");
        assert_eq!(miss.depth, 3);
        assert_eq!(miss.keys, keys(&["code", "value"]));
        let miss = find_missing(&["feilds", "x"], &events).expect("missing");
        assert_eq!(miss.depth, 1);
        assert_eq!(miss.keys, keys(&["fields"]));
    }
}
