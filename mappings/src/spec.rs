//! The raw shape of a mapping file, as written in YAML.
//!
//! Every struct rejects unknown keys. Strings in templates (`fhir[].resource`
//! and the DHIS2 value fields) are literals unless they start with `=`, in
//! which case the rest is an expression (`==` escapes a literal `=`). Fields
//! documented as expressions (`match`, `let`, `event_id`, `replaces`, `when`,
//! `id`, `if_none_exist`, `period.date`) are always expressions.

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use crate::output::Aggregation;
use crate::period::PeriodType;

/// A mapping file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    /// Unique id across the loaded set, e.g. `cht-anc-visit`.
    pub(crate) id: Spanned<String>,
    /// Version of this mapping; bump it on every change of meaning.
    pub(crate) version: Spanned<u32>,
    /// What the mapping does, for people.
    pub(crate) description: String,
    /// The source app this mapping applies to (`cht`, `commcare`, `kobo`, ...).
    pub(crate) source: Spanned<String>,
    /// Expression selecting the events of this kind among the source's events.
    #[serde(default, rename = "match")]
    pub(crate) match_: Option<Spanned<String>>,
    /// Expression giving the event id; defaults to the message id.
    #[serde(default)]
    pub(crate) event_id: Option<Spanned<String>>,
    /// Expression giving the id of the event this one replaces (an edit).
    #[serde(default)]
    pub(crate) replaces: Option<Spanned<String>>,
    /// Shared files of the pack (`*.shared.yaml`, relative to this file)
    /// whose tables, `let` bindings and rules come before this file's own.
    #[serde(default)]
    pub(crate) include: Vec<Spanned<String>>,
    /// Bindings computed once per event, in order.
    #[serde(default, rename = "let")]
    pub(crate) lets: IndexMap<String, Spanned<String>>,
    /// Lookup tables.
    #[serde(default)]
    pub(crate) tables: IndexMap<String, Spanned<RawTable>>,
    /// Conditions every event must meet, checked after the `let` bindings;
    /// an event that fails one is refused with its message.
    #[serde(default)]
    pub(crate) assert: Vec<Spanned<RawAssert>>,
    /// FHIR resources to produce.
    #[serde(default)]
    pub(crate) fhir: Vec<Spanned<RawFhir>>,
    /// DHIS2 aggregate contributions to produce.
    #[serde(default)]
    pub(crate) dhis2: Vec<Spanned<RawDhis2>>,
    /// Test cases: fixture events with their exact expected outputs.
    #[serde(default)]
    pub(crate) tests: Vec<Spanned<RawTest>>,
}

/// A pack-level shared file (`*.shared.yaml`): tables, `let` bindings,
/// assertions and rules that several mappings of the pack include.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShared {
    /// What the shared parts are, for people.
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for people, read by serde only")]
    pub(crate) description: Option<String>,
    /// Bindings computed once per event, in order, before the including
    /// mapping's own.
    #[serde(default, rename = "let")]
    pub(crate) lets: IndexMap<String, Spanned<String>>,
    /// Lookup tables; CSV paths are relative to the shared file.
    #[serde(default)]
    pub(crate) tables: IndexMap<String, Spanned<RawTable>>,
    /// Conditions every event must meet.
    #[serde(default)]
    pub(crate) assert: Vec<Spanned<RawAssert>>,
    /// FHIR resources to produce.
    #[serde(default)]
    pub(crate) fhir: Vec<Spanned<RawFhir>>,
    /// DHIS2 aggregate contributions to produce.
    #[serde(default)]
    pub(crate) dhis2: Vec<Spanned<RawDhis2>>,
}

/// A condition an event must meet, with the reason it is refused otherwise.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAssert {
    /// Expression that must hold.
    pub(crate) that: Spanned<String>,
    /// The reason the event is parked with when it does not: literal text
    /// of the mapping author, never the event's values.
    pub(crate) message: Spanned<String>,
}

/// A lookup table declaration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTable {
    /// CSV file with a header row, relative to the mapping file.
    #[serde(default)]
    pub(crate) csv: Option<String>,
    /// Inline rows.
    #[serde(default)]
    pub(crate) rows: Option<Vec<IndexMap<String, serde_json::Value>>>,
    /// Column looked up by (default: the first).
    #[serde(default)]
    pub(crate) key: Option<String>,
    /// Column returned by `lookup` (default: the whole row).
    #[serde(default)]
    pub(crate) value: Option<String>,
}

/// How a FHIR resource is written so that a replay never duplicates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Method {
    /// `PUT Type/{id}` with the deterministic id: an idempotent upsert.
    #[default]
    Update,
    /// `POST Type` with `ifNoneExist`: created once, matched afterwards.
    Create,
    /// `PUT Type?{if_none_exist}`: update the one match, or create.
    ConditionalUpdate,
}

/// A FHIR resource to produce.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFhir {
    /// Name of the resource within the mapping; other resources reference
    /// it as `refs.<name>`.
    pub(crate) name: Spanned<String>,
    /// Expression yielding a list: one resource per item, with `item` and
    /// `index` in scope of `when`, `id`, `if_none_exist` and `resource`.
    #[serde(default)]
    pub(crate) for_each: Option<Spanned<String>>,
    /// Bindings of this rule, computed per item (after `item` and `index`
    /// are set) before `when`.
    #[serde(default, rename = "let")]
    pub(crate) lets: IndexMap<String, Spanned<String>>,
    /// Condition; the resource is produced only when it holds (per item
    /// with `for_each`).
    #[serde(default)]
    pub(crate) when: Option<Spanned<String>>,
    /// Expression for the seed of the resource's UUIDv5; defaults to
    /// `source ~ '/' ~ event_id ~ '/' ~ name`, followed with `for_each` by
    /// `'/' ~` the item as JSON.
    #[serde(default)]
    pub(crate) id: Option<Spanned<String>>,
    /// Write method.
    #[serde(default)]
    pub(crate) method: Option<Spanned<Method>>,
    /// Search query identifying the resource on the server; required for
    /// `create` and `conditional_update`. Either a mapping of search
    /// parameters to expressions (`identifier: "system ~ '|' ~ value"`),
    /// each value URL-encoded, or one expression giving the whole query,
    /// in which characters never valid in a query (spaces, `+`, `#`,
    /// non-ASCII) are encoded.
    #[serde(default)]
    pub(crate) if_none_exist: Option<Spanned<RawNode>>,
    /// The resource template.
    pub(crate) resource: Spanned<RawNode>,
}

/// A DHIS2 period: its type and the expression giving the date in it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPeriod {
    /// DHIS2 period type name.
    #[serde(rename = "type")]
    pub(crate) period_type: Spanned<String>,
    /// Expression giving a date inside the period.
    pub(crate) date: Spanned<String>,
}

/// A DHIS2 aggregate contribution.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDhis2 {
    /// Name of the contribution within the mapping.
    pub(crate) name: Spanned<String>,
    /// Data element: UID, `code:CODE`, or `=expression`.
    pub(crate) data_element: Spanned<RawNode>,
    /// Category option combo: UID, `code:CODE`, `default`, or `=expression`.
    #[serde(default)]
    pub(crate) category_option_combo: Option<Spanned<RawNode>>,
    /// Attribute option combo: UID, `code:CODE`, `default`, or `=expression`.
    #[serde(default)]
    pub(crate) attribute_option_combo: Option<Spanned<RawNode>>,
    /// Org unit: UID, `code:CODE`, or `=expression` (often a table lookup).
    pub(crate) org_unit: Spanned<RawNode>,
    /// Period.
    pub(crate) period: Spanned<RawPeriod>,
    /// Value (not used with `count`).
    #[serde(default)]
    pub(crate) value: Option<Spanned<RawNode>>,
    /// How contributions of several events combine into the DHIS2 value.
    pub(crate) aggregation: Spanned<Aggregation>,
    /// Expression yielding a list: one contribution per item, with `item`
    /// and `index` in scope of every other field.
    #[serde(default)]
    pub(crate) for_each: Option<Spanned<String>>,
    /// With `for_each`: expression naming the item's contribution (stored
    /// as `name[key]`); defaults to a hash of the item.
    #[serde(default)]
    pub(crate) key: Option<Spanned<String>>,
    /// Bindings of this rule, computed per item before `when`.
    #[serde(default, rename = "let")]
    pub(crate) lets: IndexMap<String, Spanned<String>>,
    /// Condition; the contribution is produced only when it holds (per item
    /// with `for_each`).
    #[serde(default)]
    pub(crate) when: Option<Spanned<String>>,
}

/// A mapping test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTest {
    /// Name shown in reports.
    pub(crate) name: String,
    /// The event: a JSON file path relative to the mapping, or inline.
    pub(crate) event: serde_json::Value,
    /// Source app of the event (default: the mapping's).
    #[serde(default)]
    pub(crate) source: Option<String>,
    /// Message id the event arrives with.
    #[serde(default)]
    pub(crate) message_id: Option<String>,
    /// Exact expected outputs.
    #[serde(default)]
    pub(crate) expect: Option<RawExpect>,
    /// Exact expected outputs in a JSON file beside the mapping, as
    /// `kiungo map` prints them (`mapping` and `mapping_version` are not
    /// compared).
    #[serde(default)]
    pub(crate) expect_file: Option<String>,
    /// Expected mapping error: a substring of its message.
    #[serde(default)]
    pub(crate) expect_error: Option<String>,
}

/// Expected outputs of a test case.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExpect {
    /// Expected event id.
    pub(crate) event_id: String,
    /// Expected id of the replaced event.
    #[serde(default)]
    pub(crate) replaces: Option<String>,
    /// Expected FHIR bundle entries, in order.
    #[serde(default)]
    pub(crate) fhir: Vec<serde_json::Value>,
    /// Expected DHIS2 contributions, in order.
    #[serde(default)]
    pub(crate) dhis2: Vec<serde_json::Value>,
}

/// Checks a period type name at load, keeping its location.
pub(crate) fn period_type(raw: &Spanned<String>) -> Result<PeriodType, String> {
    raw.value.parse::<PeriodType>().map_err(|e| e.to_string())
}

/// Any YAML node, with the location of every child, for templates.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RawNode {
    /// `~` / `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (an expression when it starts with `=`).
    Str(String),
    /// A sequence.
    Seq(Vec<Spanned<RawNode>>),
    /// A mapping, in file order, each key with its own place (a template
    /// problem points at its key's line).
    Map(Vec<(Spanned<String>, Spanned<RawNode>)>),
}

impl<'de> Deserialize<'de> for RawNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = RawNode;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawNode, E> {
        Ok(RawNode::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawNode, E> {
        Ok(RawNode::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawNode, E> {
        i64::try_from(v)
            .map(RawNode::Int)
            .or(Ok(RawNode::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawNode, E> {
        Ok(RawNode::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawNode, E> {
        Ok(RawNode::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<RawNode, E> {
        Ok(RawNode::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<RawNode, E> {
        Ok(RawNode::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<RawNode, D::Error> {
        RawNode::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawNode, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<RawNode>>()? {
            items.push(item);
        }
        Ok(RawNode::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawNode, A::Error> {
        let mut entries: Vec<(Spanned<String>, Spanned<RawNode>)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if entries.iter().any(|(k, _)| k.value == key.value) {
                return Err(de::Error::custom(format!("duplicate key `{}`", key.value)));
            }
            let value = map.next_value::<Spanned<RawNode>>()?;
            entries.push((key, value));
        }
        Ok(RawNode::Map(entries))
    }
}
