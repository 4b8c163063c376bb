//! Several events in one FHIR transaction: fewer, larger requests for a
//! national server behind a slow or metered link.
//!
//! Claimed bundles are grouped (in claim order) into transactions of up
//! to `events_per_transaction` events. An entry that two events of a
//! group produce identically (the same Patient, created by conditional
//! create) is sent once. Two entries that would touch the same thing in
//! different ways (the same `fullUrl`, the same `METHOD url`, or two
//! conditional creates with the same criteria but different content)
//! never share a transaction: a server refuses a transaction that names a
//! resource twice, and their order inside one would not be defined, so
//! the later event goes to another group.

use std::collections::HashMap;

use serde_json::Value;

/// A transaction built from several events' bundles.
#[derive(Debug, Clone, PartialEq)]
pub struct Combined {
    /// The transaction bundle to send (JSON).
    pub bundle: String,
    /// Per event of the group, in order: the positions in the combined
    /// bundle of its entries (a deduplicated entry's position is shared).
    pub positions: Vec<Vec<usize>>,
}

/// An event's entries, parsed once for grouping.
#[derive(Debug)]
pub struct Parsed {
    entries: Vec<Value>,
}

/// Parses one event's transaction bundle; `None` if it is not a bundle
/// with an `entry` array (it is then sent alone, as before).
pub fn parse(bundle: &str) -> Option<Parsed> {
    let v: Value = serde_json::from_str(bundle).ok()?;
    if v.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return None;
    }
    let entries = v.get("entry")?.as_array()?.clone();
    Some(Parsed { entries })
}

/// What an entry touches: its `fullUrl`, its `METHOD url`, and for a
/// conditional create its type and criteria.
fn keys(entry: &Value) -> Vec<String> {
    let mut out = Vec::with_capacity(3);
    if let Some(u) = entry.get("fullUrl").and_then(Value::as_str) {
        out.push(format!("fullUrl {u}"));
    }
    let request = entry.get("request");
    let method = request
        .and_then(|r| r.get("method"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let url = request
        .and_then(|r| r.get("url"))
        .and_then(Value::as_str)
        .unwrap_or("");
    match request
        .and_then(|r| r.get("ifNoneExist"))
        .and_then(Value::as_str)
    {
        Some(criteria) => out.push(format!("create {url}?{criteria}")),
        // A plain POST creates a new resource each time: no key.
        None if method != "POST" => out.push(format!("{method} {url}")),
        None => {}
    }
    out
}

/// One group being filled.
#[derive(Default)]
struct Group {
    members: Vec<usize>,
    /// Key -> the entry that holds it.
    keys: HashMap<String, Value>,
}

impl Group {
    /// Whether `entries` can join: every key they share with the group
    /// belongs to an identical entry.
    fn accepts(&self, entries: &[Value]) -> bool {
        entries.iter().all(|e| {
            keys(e)
                .iter()
                .all(|k| self.keys.get(k).is_none_or(|held| held == e))
        })
    }

    fn add(&mut self, index: usize, entries: &[Value]) {
        self.members.push(index);
        for e in entries {
            for k in keys(e) {
                self.keys.entry(k).or_insert_with(|| e.clone());
            }
        }
    }
}

/// Groups events (by index into `parsed`, in order) into transactions of
/// at most `per` events. An event that cannot be parsed is a group of its
/// own.
pub fn group(parsed: &[Option<Parsed>], per: usize) -> Vec<Vec<usize>> {
    let per = per.max(1);
    let mut groups: Vec<Group> = Vec::new();
    let mut alone: Vec<Vec<usize>> = Vec::new();
    for (i, p) in parsed.iter().enumerate() {
        let Some(p) = p else {
            alone.push(vec![i]);
            continue;
        };
        match groups
            .iter_mut()
            .find(|g| g.members.len() < per && g.accepts(&p.entries))
        {
            Some(g) => g.add(i, &p.entries),
            None => {
                let mut g = Group::default();
                g.add(i, &p.entries);
                groups.push(g);
            }
        }
    }
    groups.into_iter().map(|g| g.members).chain(alone).collect()
}

/// Builds one transaction from the events of a group, each entry that
/// several events produce identically sent once.
pub fn combine(members: &[&Parsed]) -> Combined {
    let mut entries: Vec<Value> = Vec::new();
    let mut positions = Vec::with_capacity(members.len());
    for p in members {
        let mut mine = Vec::with_capacity(p.entries.len());
        for e in &p.entries {
            let at = match entries.iter().position(|x| x == e) {
                Some(at) => at,
                None => {
                    entries.push(e.clone());
                    entries.len() - 1
                }
            };
            mine.push(at);
        }
        positions.push(mine);
    }
    let bundle = serde_json::json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": entries,
    })
    .to_string();
    Combined { bundle, positions }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bundle(entries: Value) -> String {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
    }

    fn patient(mrn: &str, name: &str) -> Value {
        json!({
            "fullUrl": format!("urn:uuid:p-{mrn}"),
            "resource": {"resourceType": "Patient", "name": [{"text": name}]},
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier=x|{mrn}")}
        })
    }

    fn observation(id: &str, value: &str, subject: &str) -> Value {
        json!({
            "fullUrl": format!("urn:uuid:{id}"),
            "resource": {"resourceType": "Observation", "id": id, "valueString": value,
                "subject": {"reference": format!("urn:uuid:p-{subject}")}},
            "request": {"method": "PUT", "url": format!("Observation/{id}")}
        })
    }

    #[test]
    fn shared_entries_are_sent_once_and_positions_map_back() {
        let a = bundle(json!([patient("1", "A"), observation("o1", "x", "1")]));
        let b = bundle(json!([patient("1", "A"), observation("o2", "y", "1")]));
        let parsed: Vec<_> = [a, b].iter().map(|s| parse(s)).collect();
        assert_eq!(group(&parsed, 8), vec![vec![0, 1]]);
        let members: Vec<&Parsed> = parsed.iter().flatten().collect();
        let c = combine(&members);
        assert_eq!(c.positions, vec![vec![0, 1], vec![0, 2]]);
        let v: Value = serde_json::from_str(&c.bundle).expect("json");
        assert_eq!(v["entry"].as_array().map(Vec::len), Some(3));
        assert_eq!(v["type"], "transaction");
    }

    #[test]
    fn conflicting_entries_go_to_separate_transactions() {
        // The same Observation with other content (an edit of a kobo
        // submission that keeps its ids), and the same Patient criteria
        // with other content: never in one transaction.
        let a = bundle(json!([patient("1", "A"), observation("o1", "x", "1")]));
        let b = bundle(json!([observation("o1", "changed", "1")]));
        let c = bundle(json!([patient("1", "A renamed")]));
        let d = bundle(json!([observation("o9", "z", "2")]));
        let parsed: Vec<_> = [a, b, c, d].iter().map(|s| parse(s)).collect();
        assert_eq!(group(&parsed, 8), vec![vec![0, 3], vec![1, 2]]);
    }

    #[test]
    fn groups_hold_at_most_per_events_and_unparsable_go_alone() {
        let one = |i: usize| bundle(json!([observation(&format!("o{i}"), "v", "1")]));
        let mut raw: Vec<String> = (0..5).map(one).collect();
        raw.push("not json".into());
        let parsed: Vec<_> = raw.iter().map(|s| parse(s)).collect();
        assert_eq!(
            group(&parsed, 2),
            vec![vec![0, 1], vec![2, 3], vec![4], vec![5]]
        );
        assert_eq!(group(&parsed, 1).len(), 6);
    }
}
