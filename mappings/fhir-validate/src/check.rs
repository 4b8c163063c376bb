//! The walk over one resource: every key against its type's elements,
//! cardinalities, primitive formats, required bindings, references, and the
//! implemented invariants. The FHIR path of the element at fault is built
//! only when a problem is found.

use serde_json::{Map, Value};

use crate::primitive::{Primitive, is_id, is_uuid, kind_of};
use crate::tables::{Element, Key, Kind, Tables, TypeDef, TypeRef, inv};
use crate::{FhirError, Urn, UrnRef};

/// One step of the path to the value being checked.
#[derive(Clone, Copy)]
pub(crate) enum Seg<'a> {
    /// The resource type at the root, or a nested resource's.
    Root(&'a str),
    /// An element, by its defined name (`occurrence[x]`).
    Elem(&'a str),
    /// An array item.
    Index(usize),
}

/// The path to the value being checked, as a chain on the stack.
#[derive(Clone, Copy)]
pub(crate) struct Frame<'a> {
    parent: Option<&'a Frame<'a>>,
    seg: Seg<'a>,
}

impl<'a> Frame<'a> {
    /// The path's root: the resource type.
    pub(crate) const fn root(resource_type: &'a str) -> Self {
        Self {
            parent: None,
            seg: Seg::Root(resource_type),
        }
    }

    /// One step further down.
    pub(crate) fn child(&'a self, seg: Seg<'a>) -> Self {
        Self {
            parent: Some(self),
            seg,
        }
    }

    /// `Immunization.performer[0].actor`.
    pub(crate) fn path(&self) -> String {
        let mut segs = Vec::new();
        let mut f = Some(self);
        while let Some(frame) = f {
            segs.push(frame.seg);
            f = frame.parent;
        }
        let mut out = String::new();
        for seg in segs.iter().rev() {
            match seg {
                Seg::Root(t) if out.is_empty() => out.push_str(t),
                Seg::Root(t) => {
                    out.push('(');
                    out.push_str(t);
                    out.push(')');
                }
                Seg::Elem(e) => {
                    out.push('.');
                    out.push_str(e);
                }
                Seg::Index(i) => {
                    out.push('[');
                    out.push_str(&i.to_string());
                    out.push(']');
                }
            }
        }
        out
    }
}

/// Where the walk puts the `urn:uuid` references it finds, for the bundle
/// to resolve.
pub(crate) enum Sink<'u> {
    /// Nowhere: checked for form only.
    None,
    /// With their FHIR path and text ([`UrnRef`]).
    Refs(&'u mut Vec<UrnRef>),
    /// As [`Urn`]s, which allocate nothing.
    Urns(&'u mut Vec<Urn>),
}

/// The walk's state: the tables, the outermost resource's type (errors
/// name it) and where `urn:uuid` references go for the bundle to resolve.
pub(crate) struct Checker<'u> {
    pub(crate) t: &'static Tables,
    pub(crate) resource_type: &'static str,
    pub(crate) urns: Sink<'u>,
}

pub(crate) type Checked = Result<(), FhirError>;

impl Checker<'_> {
    fn fail(&self, frame: &Frame<'_>, message: impl Into<String>) -> FhirError {
        FhirError::Invalid {
            resource_type: self.resource_type.to_owned(),
            path: frame.path(),
            message: message.into(),
        }
    }

    /// Checks a resource object of a known concrete type.
    pub(crate) fn resource(
        &mut self,
        ty: &'static TypeDef,
        obj: &Map<String, Value>,
        frame: &Frame<'_>,
    ) -> Checked {
        self.object(ty, obj, frame)
    }

    /// Checks an object against a complex type or resource.
    fn object(
        &mut self,
        ty: &'static TypeDef,
        obj: &Map<String, Value>,
        frame: &Frame<'_>,
    ) -> Checked {
        if ty.kind == Kind::Complex && obj.keys().all(|k| k == "id") {
            return Err(self.fail(
                frame,
                "an element needs a value or children (ele-1), found none",
            ));
        }
        let mut seen = 0u64;
        for (k, v) in obj {
            if k == "resourceType" && ty.kind == Kind::Resource {
                continue;
            }
            let Some(key) = ty.key(k) else {
                return Err(self.unknown(ty, k, frame));
            };
            let Some(el) = ty.elements.get(usize::from(key.element)) else {
                continue;
            };
            let bit = 1u64 << key.element;
            let here = frame.child(Seg::Elem(&el.name));
            if !key.underscore && el.choice && seen & bit != 0 {
                return Err(self.fail(
                    &here,
                    format!(
                        "a choice element takes one type, found several `{}` keys",
                        el.name.trim_end_matches("[x]")
                    ),
                ));
            }
            seen |= bit;
            self.element(key, el, v, &here)?;
        }
        let missing = ty.required & !seen;
        if missing != 0 {
            let index = missing.trailing_zeros() as usize;
            if let Some(el) = ty.elements.get(index) {
                let here = frame.child(Seg::Elem(&el.name));
                return Err(self.fail(
                    &here,
                    format!(
                        "missing required element (cardinality {}..{})",
                        el.min,
                        max_text(el)
                    ),
                ));
            }
        }
        if ty.invariants != 0 {
            self.invariants(ty, obj, frame)?;
        }
        Ok(())
    }

    /// Checks one key's value: single or array, then each item.
    pub(crate) fn element(
        &mut self,
        key: &Key,
        el: &'static Element,
        v: &Value,
        here: &Frame<'_>,
    ) -> Checked {
        match v {
            Value::Array(items) => {
                if el.max == Some(1) {
                    return Err(self.fail(
                        here,
                        format!(
                            "expected a single value (cardinality {}..1), found an array",
                            el.min
                        ),
                    ));
                }
                if items.is_empty() {
                    return Err(self.fail(here, "an array is never empty in FHIR JSON"));
                }
                if let Some(max) = el.max
                    && items.len() > max as usize
                {
                    return Err(self.fail(
                        here,
                        format!("expected at most {max} items, found {}", items.len()),
                    ));
                }
                for (i, item) in items.iter().enumerate() {
                    let at = here.child(Seg::Index(i));
                    if key.underscore && item.is_null() {
                        continue;
                    }
                    self.value(key, el, item, &at)?;
                }
                Ok(())
            }
            _ if el.max != Some(1) => Err(self.fail(
                here,
                format!(
                    "expected an array (cardinality {}..{}), found {}",
                    el.min,
                    max_text(el),
                    kind_of(v)
                ),
            )),
            _ => self.value(key, el, v, here),
        }
    }

    /// Checks one value of an element.
    pub(crate) fn value(
        &mut self,
        key: &Key,
        el: &'static Element,
        v: &Value,
        at: &Frame<'_>,
    ) -> Checked {
        match key.ty {
            TypeRef::Primitive(p) => {
                p.check(v).map_err(|m| self.fail(at, m))?;
                if let (Some(b), Value::String(code)) = (el.binding, v)
                    && let Some(vs) = self.t.value_sets.get(usize::from(b))
                    && !vs.has_code(code)
                {
                    return Err(self.fail(
                        at,
                        format!(
                            "found a code not in the required value set {}",
                            vs.describe()
                        ),
                    ));
                }
                Ok(())
            }
            TypeRef::Complex(id) => {
                let Value::Object(obj) = v else {
                    let name = self.t.ty(id).map_or("", |t| &*t.name);
                    return Err(self.fail(
                        at,
                        format!("expected an object ({name}), found {}", kind_of(v)),
                    ));
                };
                let Some(ty) = self.t.ty(id) else {
                    return Ok(());
                };
                self.object(ty, obj, at)?;
                match &*ty.name {
                    "Reference" => self.reference(el, obj, at),
                    "Coding" | "CodeableConcept" if el.binding.is_some() => {
                        self.coded(el, &ty.name, obj, at)
                    }
                    _ => Ok(()),
                }
            }
            TypeRef::AnyResource => {
                let Value::Object(obj) = v else {
                    return Err(self.fail(
                        at,
                        format!("expected a resource (an object), found {}", kind_of(v)),
                    ));
                };
                let ty = match obj.get("resourceType") {
                    Some(Value::String(t)) => self.t.resource(t),
                    _ => None,
                };
                let Some(ty) = ty else {
                    return Err(self.fail(at, "expected a resource with a known `resourceType`"));
                };
                let inner = at.child(Seg::Root(&ty.name));
                self.object(ty, obj, &inner)
            }
        }
    }

    /// A Coding or CodeableConcept on a required binding: a coding from the
    /// value set, and no coding of one of its systems outside it.
    pub(crate) fn coded(
        &self,
        el: &Element,
        ty: &str,
        obj: &Map<String, Value>,
        at: &Frame<'_>,
    ) -> Checked {
        let Some(vs) = el
            .binding
            .and_then(|b| self.t.value_sets.get(usize::from(b)))
        else {
            return Ok(());
        };
        let single = [obj];
        let codings: Vec<&Map<String, Value>> = if ty == "Coding" {
            single.to_vec()
        } else {
            obj.get("coding")
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(Value::as_object).collect())
                .unwrap_or_default()
        };
        let mut found = false;
        for c in codings {
            let system = c.get("system").and_then(Value::as_str);
            let code = c.get("code").and_then(Value::as_str);
            match (system, code) {
                (Some(s), Some(code)) if vs.has_coding(s, code) => found = true,
                (Some(s), _) if vs.has_system(s) => {
                    return Err(self.fail(
                        at,
                        format!(
                            "found a code not in the required value set {}",
                            vs.describe()
                        ),
                    ));
                }
                _ => {}
            }
        }
        if found {
            Ok(())
        } else {
            Err(self.fail(
                at,
                format!(
                    "found no coding (system and code) from the required value set {}",
                    vs.describe()
                ),
            ))
        }
    }

    /// A Reference's `reference`: its form, target type and id; a
    /// `urn:uuid` goes to the bundle to resolve.
    pub(crate) fn reference(
        &mut self,
        el: &'static Element,
        obj: &Map<String, Value>,
        at: &Frame<'_>,
    ) -> Checked {
        let Some(Value::String(r)) = obj.get("reference") else {
            return Ok(());
        };
        if r.starts_with('#') {
            return Ok(());
        }
        if let Some(u) = r.strip_prefix("urn:uuid:") {
            if !is_uuid(u) {
                return Err(self.fail(at, "a urn:uuid reference needs a lowercase UUID"));
            }
            match &mut self.urns {
                Sink::None => {}
                Sink::Refs(urns) => urns.push(UrnRef {
                    reference: r.clone(),
                    path: at.path(),
                    resource_type: self.resource_type.to_owned(),
                    targets: &el.targets,
                }),
                Sink::Urns(urns) => urns.push(Urn::new(u, &el.targets)),
            }
            return Ok(());
        }
        if r.starts_with("urn:") {
            return Ok(());
        }
        if let Some(i) = r.find("://") {
            // Absolute: check the `Type/id` tail when there is one.
            let segs: Vec<&str> = r.get(i + 3..).unwrap_or_default().split('/').collect();
            let n = segs.len();
            let tail = match segs.as_slice() {
                [.., t, id, "_history", _] if n >= 5 => Some((*t, *id)),
                [.., t, id] if n >= 3 => Some((*t, *id)),
                _ => None,
            };
            return match tail {
                Some((t, id)) if self.t.resource(t).is_some() => self.target(el, t, Some(id), at),
                _ => Ok(()),
            };
        }
        if let Some((t, _query)) = r.split_once('?') {
            // A conditional reference (transactions resolve it).
            return self.target(el, t, None, at);
        }
        let relative = r
            .split_once('/')
            .and_then(|(t, rest)| match rest.split_once('/') {
                None => Some((t, rest)),
                Some((id, history)) => history
                    .strip_prefix("_history/")
                    .filter(|v| !v.is_empty() && !v.contains('/'))
                    .map(|_| (t, id)),
            });
        match relative {
            Some((t, id)) => self.target(el, t, Some(id), at),
            None => Err(self.fail(
                at,
                "expected a reference of the form Type/id, an absolute URL, urn:uuid: or #id",
            )),
        }
    }

    fn target(&self, el: &Element, t: &str, id: Option<&str>, at: &Frame<'_>) -> Checked {
        if self.t.resource(t).is_none() {
            return Err(self.fail(at, "a reference to no FHIR resource type"));
        }
        if !el.targets.is_empty() && !el.targets.iter().any(|x| **x == *t) {
            return Err(self.fail(
                at,
                format!(
                    "found a reference to a {t}, expected {}",
                    el.targets.join(" or ")
                ),
            ));
        }
        if let Some(id) = id
            && !is_id(id)
        {
            return Err(self.fail(
                at,
                format!(
                    "the id part is not a FHIR id ({})",
                    "1 to 64 of A-Z a-z 0-9 - ."
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn invariants(
        &self,
        ty: &TypeDef,
        obj: &Map<String, Value>,
        frame: &Frame<'_>,
    ) -> Checked {
        let has_value = || obj.keys().any(|k| k.starts_with("value"));
        if ty.invariants & inv::EXT_1 != 0 {
            let nested = obj.contains_key("extension");
            if nested == has_value() {
                let found = if nested { "both" } else { "neither" };
                return Err(self.fail(
                    frame,
                    format!("an extension has nested extensions or a value[x], not both (ext-1), found {found}"),
                ));
            }
        }
        if ty.invariants & inv::QTY_3 != 0
            && obj.contains_key("code")
            && !obj.contains_key("system")
        {
            return Err(self.fail(
                frame,
                "a quantity with a code needs its system (qty-3), found no system",
            ));
        }
        if ty.invariants & inv::PER_1 != 0
            && let (Some(Value::String(s)), Some(Value::String(e))) =
                (obj.get("start"), obj.get("end"))
            && ends_before(s, e)
        {
            return Err(self.fail(
                frame,
                "a period's start is not after its end (per-1), found an end before the start",
            ));
        }
        if ty.invariants & inv::OBS_6 != 0 && obj.contains_key("dataAbsentReason") && has_value() {
            let here = frame.child(Seg::Elem("dataAbsentReason"));
            return Err(self.fail(
                &here,
                "dataAbsentReason only without a value[x] (obs-6), found both",
            ));
        }
        Ok(())
    }

    /// An element the type does not define, with the nearest defined name.
    /// A key that does not look like an element name (it may come from
    /// the event's data) is not quoted.
    pub(crate) fn unknown(&self, ty: &TypeDef, key: &str, frame: &Frame<'_>) -> FhirError {
        let name_like =
            key.len() <= 64 && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let shown = if name_like {
            key
        } else {
            "(not an element name)"
        };
        let here = frame.child(Seg::Elem(shown));
        let mut message = if name_like {
            format!("unknown element `{key}` in {}", ty.name)
        } else {
            format!(
                "an unknown element whose key is not an element name in {}",
                ty.name
            )
        };
        let nearest = ty
            .keys
            .iter()
            .filter(|k| !k.underscore)
            .map(|k| (distance(key, &k.json), &k.json))
            .min();
        if let Some((d, name)) = nearest
            && d <= 3.max(key.len() / 3)
        {
            message.push_str(&format!(" (did you mean `{name}`?)"));
        }
        self.fail(&here, message)
    }
}

fn max_text(el: &Element) -> String {
    el.max.map_or_else(|| "*".to_owned(), |m| m.to_string())
}

/// per-1 for values of the same precision: two dates (or partial dates)
/// compare as text, two dateTimes with times in UTC; other pairs are not
/// comparable (FHIRPath gives empty, which passes).
fn ends_before(start: &str, end: &str) -> bool {
    match (
        crate::primitive::utc_seconds(start),
        crate::primitive::utc_seconds(end),
    ) {
        (Some(s), Some(e)) => e < s,
        (None, None) => {
            start.len() == end.len()
                && Primitive::Date.matches(start)
                && Primitive::Date.matches(end)
                && end < start
        }
        _ => false,
    }
}

/// Levenshtein distance, for suggestions (error path only).
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev.get(j).copied().unwrap_or(0) + usize::from(ca != *cb);
            let del = prev.get(j + 1).copied().unwrap_or(0) + 1;
            let ins = cur.get(j).copied().unwrap_or(0) + 1;
            if let Some(c) = cur.get_mut(j + 1) {
                *c = sub.min(del).min(ins);
            }
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}
