//! The FHIR R4 (4.0.1) definitions the checker reads, generated from the
//! official StructureDefinitions and ValueSets (`data/README.md`), indexed
//! once on first use.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use crate::primitive::Primitive;

/// The generated tables (`gen/generate.py`).
const DATA: &str = include_str!("../data/r4.json");

/// Index of a type in [`Tables::types`].
pub(crate) type TypeId = u16;

/// What a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A complex data type (`Quantity`, `Reference`) or a backbone element
    /// (`Immunization.performer`).
    Complex,
    /// A resource (`Patient`).
    Resource,
}

/// The core invariants the checker implements, as bits.
pub(crate) mod inv {
    /// ext-1: an extension has nested extensions or a value, not both.
    pub(crate) const EXT_1: u8 = 1;
    /// qty-3: a Quantity's code needs its system.
    pub(crate) const QTY_3: u8 = 2;
    /// per-1: a Period's start is not after its end.
    pub(crate) const PER_1: u8 = 4;
    /// obs-6: dataAbsentReason only without a value.
    pub(crate) const OBS_6: u8 = 8;
}

/// The type of a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TypeRef {
    /// A primitive: a JSON string, number or boolean.
    Primitive(Primitive),
    /// A complex type or backbone element.
    Complex(TypeId),
    /// Any resource (`contained`, `Bundle.entry.resource`).
    AnyResource,
}

/// One element of a type, as defined.
#[derive(Debug)]
pub(crate) struct Element {
    /// The defined name, `value[x]` for a choice.
    pub(crate) name: Box<str>,
    /// Minimum cardinality.
    pub(crate) min: u32,
    /// Maximum cardinality, `None` for `*`.
    pub(crate) max: Option<u32>,
    /// Index of the required binding's value set.
    pub(crate) binding: Option<u16>,
    /// Resource types a Reference may point at; empty for any.
    pub(crate) targets: Box<[Box<str>]>,
    /// Whether the element is a choice (`[x]`).
    pub(crate) choice: bool,
}

/// One JSON key a type accepts.
#[derive(Debug)]
pub(crate) struct Key {
    /// The JSON name (`valueQuantity`, `_birthDate`).
    pub(crate) json: Box<str>,
    /// Index into [`TypeDef::elements`].
    pub(crate) element: u8,
    /// The value's type; for `_name` keys, the primitive's extension part.
    pub(crate) ty: TypeRef,
    /// Whether this is the `_name` extension part of a primitive.
    pub(crate) underscore: bool,
}

/// A complex type, backbone element or resource.
#[derive(Debug)]
pub(crate) struct TypeDef {
    /// `Quantity`, `Immunization`, `Immunization.performer`.
    pub(crate) name: Box<str>,
    /// Complex or resource.
    pub(crate) kind: Kind,
    /// Whether the type is abstract (`Resource`, `DomainResource`).
    pub(crate) is_abstract: bool,
    /// The implemented invariants that apply ([`inv`] bits).
    pub(crate) invariants: u8,
    /// Elements in definition order (at most 64).
    pub(crate) elements: Vec<Element>,
    /// The JSON keys, sorted by name.
    pub(crate) keys: Vec<Key>,
    /// Bits of the elements with `min >= 1`.
    pub(crate) required: u64,
    /// Open-addressing hash index of `keys` (index + 1; 0 is empty), a
    /// power of two at least twice their number: one hash and usually one
    /// comparison per key looked up.
    pub(crate) slots: Vec<u16>,
}

/// FNV-1a: short keys, no DoS concern (the table is fixed).
fn fnv(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // Only the low bits index the table.
    h as usize
}

impl TypeDef {
    /// The key definition for a JSON name.
    pub(crate) fn key(&self, json: &str) -> Option<&Key> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = fnv(json) & mask;
        loop {
            let slot = usize::from(*self.slots.get(i)?);
            let key = self.keys.get(slot.checked_sub(1)?)?;
            if *key.json == *json {
                return Some(key);
            }
            i = (i + 1) & mask;
        }
    }

    fn index(keys: &[Key]) -> Vec<u16> {
        let size = (keys.len() * 2).next_power_of_two().max(2);
        let mut slots = vec![0u16; size];
        for (n, key) in keys.iter().enumerate() {
            let mut i = fnv(&key.json) & (size - 1);
            while slots.get(i).is_some_and(|s| *s != 0) {
                i = (i + 1) & (size - 1);
            }
            if let (Some(s), Ok(v)) = (slots.get_mut(i), u16::try_from(n + 1)) {
                *s = v;
            }
        }
        slots
    }
}

/// The codes of one value set, per code system.
#[derive(Debug)]
pub(crate) struct ValueSet {
    /// Canonical URL.
    pub(crate) url: Box<str>,
    /// Code systems, each with its sorted codes.
    pub(crate) systems: Vec<(Box<str>, Vec<Box<str>>)>,
}

impl ValueSet {
    /// Whether `code` is in the set, in any of its systems.
    pub(crate) fn has_code(&self, code: &str) -> bool {
        self.systems.iter().any(|(_, codes)| has(codes, code))
    }

    /// Whether the set includes codes of `system`.
    pub(crate) fn has_system(&self, system: &str) -> bool {
        self.systems.iter().any(|(s, _)| **s == *system)
    }

    /// Whether (`system`, `code`) is in the set.
    pub(crate) fn has_coding(&self, system: &str, code: &str) -> bool {
        self.systems
            .iter()
            .any(|(s, codes)| **s == *system && has(codes, code))
    }

    /// The codes, for messages (the first few).
    pub(crate) fn describe(&self) -> String {
        let codes: Vec<&str> = self
            .systems
            .iter()
            .flat_map(|(_, c)| c.iter().map(|c| &**c))
            .collect();
        let shown = codes
            .iter()
            .take(12)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        if codes.len() > 12 {
            format!("{} ({shown}, … {} codes)", self.url, codes.len())
        } else {
            format!("{} ({shown})", self.url)
        }
    }
}

fn has(codes: &[Box<str>], code: &str) -> bool {
    codes.binary_search_by(|c| (**c).cmp(code)).is_ok()
}

/// All the tables.
#[derive(Debug)]
pub(crate) struct Tables {
    /// Types by id.
    pub(crate) types: Vec<TypeDef>,
    /// Type ids by name.
    pub(crate) by_name: HashMap<Box<str>, TypeId>,
    /// Value sets of required bindings.
    pub(crate) value_sets: Vec<ValueSet>,
}

impl Tables {
    /// The resource type of this name (not abstract).
    pub(crate) fn resource(&self, name: &str) -> Option<&TypeDef> {
        let id = *self.by_name.get(name)?;
        let t = self.types.get(usize::from(id))?;
        (t.kind == Kind::Resource && !t.is_abstract).then_some(t)
    }

    /// The type with this id.
    pub(crate) fn ty(&self, id: TypeId) -> Option<&TypeDef> {
        self.types.get(usize::from(id))
    }
}

/// The tables, parsed and indexed on first use (a few milliseconds).
pub(crate) fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| match build(DATA) {
        Ok(t) => t,
        // The data is generated and committed; `tables_load` tests it.
        Err(e) => unreachable_tables(&e),
    })
}

#[allow(clippy::panic, reason = "the committed tables are tested to load")]
fn unreachable_tables(e: &str) -> Tables {
    panic!("the committed FHIR R4 tables do not load: {e}")
}

fn str_of<'a>(v: &'a Value, what: &str) -> Result<&'a str, String> {
    v.as_str().ok_or_else(|| format!("{what} is not a string"))
}

/// Parses and indexes the generated JSON.
pub(crate) fn build(data: &str) -> Result<Tables, String> {
    let root: Value = serde_json::from_str(data).map_err(|e| e.to_string())?;
    let types_json = root
        .get("types")
        .and_then(Value::as_object)
        .ok_or("no `types`")?;
    let mut by_name: HashMap<Box<str>, TypeId> = HashMap::new();
    for (i, name) in types_json.keys().enumerate() {
        let id = TypeId::try_from(i).map_err(|_| "too many types")?;
        by_name.insert(name.as_str().into(), id);
    }
    let mut value_sets = Vec::new();
    let mut vs_index: HashMap<&str, u16> = HashMap::new();
    if let Some(sets) = root.get("valueSets").and_then(Value::as_object) {
        for (url, systems) in sets {
            let mut out = Vec::new();
            for pair in systems.as_array().ok_or("value set is not a list")? {
                let system = str_of(pair.get(0).ok_or("no system")?, "system")?;
                let mut codes: Vec<Box<str>> = pair
                    .get(1)
                    .and_then(Value::as_array)
                    .ok_or("no codes")?
                    .iter()
                    .map(|c| str_of(c, "code").map(Into::into))
                    .collect::<Result<_, _>>()?;
                codes.sort();
                out.push((system.into(), codes));
            }
            let id = u16::try_from(value_sets.len()).map_err(|_| "too many value sets")?;
            vs_index.insert(url, id);
            value_sets.push(ValueSet {
                url: url.as_str().into(),
                systems: out,
            });
        }
    }
    let resolve = |name: &str| -> Result<TypeRef, String> {
        if let Some(p) = Primitive::from_name(name) {
            return Ok(TypeRef::Primitive(p));
        }
        if name == "Resource" {
            return Ok(TypeRef::AnyResource);
        }
        by_name
            .get(name)
            .map(|&id| TypeRef::Complex(id))
            .ok_or_else(|| format!("unknown type `{name}`"))
    };
    let element_type = *by_name.get("Element").ok_or("no `Element` type")?;
    let mut types = Vec::with_capacity(types_json.len());
    for (name, t) in types_json {
        let kind = match t.get("kind").and_then(Value::as_str) {
            Some("resource") => Kind::Resource,
            _ => Kind::Complex,
        };
        let mut invariants = 0;
        for key in t.get("inv").and_then(Value::as_array).into_iter().flatten() {
            invariants |= match key.as_str() {
                Some("ext-1") => inv::EXT_1,
                Some("qty-3") => inv::QTY_3,
                Some("per-1") => inv::PER_1,
                Some("obs-6") => inv::OBS_6,
                _ => 0,
            };
        }
        let mut elements = Vec::new();
        let mut keys = Vec::new();
        let mut required = 0u64;
        for row in t.get("el").and_then(Value::as_array).into_iter().flatten() {
            let row = row.as_array().ok_or("element is not a list")?;
            let el_name = str_of(row.first().ok_or("no name")?, "name")?;
            let min = row.get(1).and_then(Value::as_u64).ok_or("no min")?;
            let max = row.get(2).and_then(Value::as_i64).ok_or("no max")?;
            let tys = row.get(3).and_then(Value::as_array).ok_or("no types")?;
            let binding = match row.get(4).and_then(Value::as_str) {
                Some(url) => vs_index.get(url).copied(),
                None => None,
            };
            let targets: Box<[Box<str>]> = row
                .get(5)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|t| *t != "Resource")
                .map(Into::into)
                .collect();
            let index = u8::try_from(elements.len()).map_err(|_| "too many elements")?;
            if index >= 64 {
                return Err(format!("`{name}` has more than 64 elements"));
            }
            if min > 0 {
                required |= 1 << index;
            }
            let choice = el_name.ends_with("[x]");
            let stem = el_name.trim_end_matches("[x]");
            for ty in tys {
                let ty_name = str_of(ty, "type")?;
                let ty_ref = resolve(ty_name)?;
                let json = if choice {
                    let mut c = ty_name.chars();
                    let first = c.next().map(|f| f.to_ascii_uppercase()).unwrap_or('_');
                    format!("{stem}{first}{}", c.as_str())
                } else {
                    stem.to_owned()
                };
                if let TypeRef::Primitive(_) = ty_ref {
                    keys.push(Key {
                        json: format!("_{json}").into(),
                        element: index,
                        ty: TypeRef::Complex(element_type),
                        underscore: true,
                    });
                }
                keys.push(Key {
                    json: json.into(),
                    element: index,
                    ty: ty_ref,
                    underscore: false,
                });
            }
            elements.push(Element {
                name: el_name.into(),
                min: u32::try_from(min).map_err(|_| "bad min")?,
                max: u32::try_from(max).ok(),
                binding,
                targets,
                choice,
            });
        }
        keys.sort_by(|a, b| a.json.cmp(&b.json));
        let slots = TypeDef::index(&keys);
        types.push(TypeDef {
            name: name.as_str().into(),
            kind,
            is_abstract: t.get("abstract").and_then(Value::as_bool).unwrap_or(false),
            invariants,
            elements,
            keys,
            required,
            slots,
        });
    }
    Ok(Tables {
        types,
        by_name,
        value_sets,
    })
}
