//! The check of resources made from one template, split between the time
//! the template is made and each resource.
//!
//! A template tells which parts of the resources it makes are literal
//! (the same in every resource, always present) and where expression
//! results land ([`Shape`]). [`Plan::new`] checks the literal parts once,
//! in their place in the resource, and every key of the template against
//! its type. [`Plan::check`] then visits only what can differ between
//! resources: expression results (checked in full), and for each object
//! that holds one, the rules that span the object (required elements,
//! one type per choice, ele-1, the invariants, a Reference's target, a
//! required binding's coding). Its verdict is the full check's: when the
//! quick walk finds anything wrong, or anything it does not expect, the
//! full check runs on the resource and its first problem is the one
//! returned, so messages are those of [`crate::validate`].

use serde_json::{Map, Value};

use crate::check::{Checked, Checker, Frame, Seg, Sink};
use crate::tables::{Element, Key, Kind, TypeDef, TypeRef, tables};
use crate::{FhirError, Urn};

/// One node of a template: what it gives and where the caller wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The caller's handle on the node's place (an index into its own
    /// table of lines and fields), handed back by [`Plan::locate`].
    pub place: u32,
    /// What the node gives.
    pub shape: Shape,
}

/// What a template node gives in every resource made from it.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Nothing: never present.
    Absent,
    /// A literal scalar: always present, always this value.
    Fixed(Value),
    /// An expression's result: absent or any JSON value, per resource.
    Varies,
    /// An object with these keys, in this order; a key is left out when
    /// its value gives nothing, the object when all are left out.
    Object(Vec<(String, Node)>),
    /// An array of these items, in this order; an item is left out when
    /// it gives nothing, the array when all are left out.
    Array(Vec<Node>),
}

impl Node {
    /// Whether the node is present in every resource: it holds a literal.
    fn always(&self) -> bool {
        match &self.shape {
            Shape::Fixed(_) => true,
            Shape::Absent | Shape::Varies => false,
            Shape::Object(entries) => entries.iter().any(|(_, n)| n.always()),
            Shape::Array(items) => items.iter().any(Self::always),
        }
    }

    /// The node's value when it holds no expression (`Ok(None)`: it gives
    /// nothing); `Err(())` when it holds one.
    fn literal(&self) -> Result<Option<Value>, ()> {
        match &self.shape {
            Shape::Absent => Ok(None),
            Shape::Fixed(v) => Ok(Some(v.clone())),
            Shape::Varies => Err(()),
            Shape::Object(entries) => {
                let mut out = Map::with_capacity(entries.len());
                for (k, n) in entries {
                    if let Some(v) = n.literal()? {
                        out.insert(k.clone(), v);
                    }
                }
                Ok((!out.is_empty()).then_some(Value::Object(out)))
            }
            Shape::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for n in items {
                    if let Some(v) = n.literal()? {
                        out.push(v);
                    }
                }
                Ok((!out.is_empty()).then_some(Value::Array(out)))
            }
        }
    }

    fn present(&self) -> bool {
        !matches!(self.shape, Shape::Absent)
    }
}

/// The check of the resources one template makes (see the module docs).
#[derive(Debug)]
pub struct Plan {
    resource_type: &'static str,
    root: ObjPlan,
    template: Node,
}

/// What to do per resource for an object of the template that holds an
/// expression.
#[derive(Debug)]
struct ObjPlan {
    ty: &'static TypeDef,
    /// The template's keys the type defines, in template order.
    entries: Vec<EntryPlan>,
    /// The check a Reference or coded element makes once its object is.
    post: Post,
}

/// A literal part, checked when the plan was made.
#[derive(Debug)]
struct Literal {
    /// Its value, to compare with where a resource's part may not be it.
    value: Value,
    /// The `urn:uuid` references in it.
    urns: Vec<Urn>,
}

#[derive(Debug, Clone, Copy)]
enum Post {
    None,
    Reference(&'static Element),
    Coded(&'static Element),
}

#[derive(Debug)]
struct EntryPlan {
    name: Box<str>,
    key: &'static Key,
    el: &'static Element,
    node: NodePlan,
}

#[derive(Debug)]
enum NodePlan {
    /// A literal.
    Fixed(Literal),
    /// Checked in full per resource.
    Element,
    /// A single complex value made by the template.
    Object(Box<ObjPlan>),
    /// An array whose items are all always present, so that the
    /// resource's items are the template's, one for one.
    Items(Vec<ItemPlan>),
    /// An array some of whose items may be left out: the plans of those
    /// always present, in order. A resource's item is taken for the next
    /// of them when it matches it, literal parts compared, else checked in
    /// full.
    Maybe(Vec<ItemPlan>),
}

#[derive(Debug)]
enum ItemPlan {
    Fixed(Literal),
    Value,
    Object(ObjPlan),
}

/// The quick walk found something the full check must look at.
struct Fallback;

impl From<FhirError> for Fallback {
    fn from(_: FhirError) -> Self {
        Self
    }
}

impl Plan {
    /// Makes the plan of a template of `resource_type` whose root object
    /// is `template` (as the resource will be, `resourceType` and an `id`
    /// set by the caller included), and checks its literal parts. Returns
    /// the plan and every problem found: keys the types do not define and
    /// literal values that are not valid where they are, each an error
    /// whose path [`Plan::locate`] turns back into a place of the template.
    /// `None` when `resource_type` is not an R4 resource type or the
    /// template not an object.
    pub fn new(resource_type: &str, template: Node) -> Option<(Self, Vec<FhirError>)> {
        let t = tables();
        let ty = t.resource(resource_type)?;
        let Shape::Object(entries) = &template.shape else {
            return None;
        };
        let mut c = Compiler {
            resource_type: &ty.name,
            problems: Vec::new(),
        };
        let root = c.object(ty, entries, &Frame::root(&ty.name), Post::None);
        let problems = c.problems;
        Some((
            Self {
                resource_type: &ty.name,
                root,
                template,
            },
            problems,
        ))
    }

    /// Checks one resource made from the template, adding its `urn:uuid`
    /// references to `urns` for the caller to resolve against the bundle
    /// ([`Urn::resolves`]). The same verdict and first problem as
    /// [`crate::validate_in_bundle`].
    pub fn check(&self, resource: &Value, urns: &mut Vec<Urn>) -> Result<(), FhirError> {
        let start = urns.len();
        let mut quick = Checker {
            t: tables(),
            resource_type: self.resource_type,
            urns: Sink::Urns(urns),
        };
        if quick_resource(&mut quick, self, resource).is_ok() {
            return Ok(());
        }
        urns.truncate(start);
        crate::run(resource, Sink::Urns(urns))
    }

    /// The place of the deepest template node on the path of `error`
    /// (the element at fault, or the object it is missing from), `None`
    /// when the error names no path.
    pub fn locate(&self, error: &FhirError) -> Option<u32> {
        let FhirError::Invalid { path, .. } = error else {
            return None;
        };
        Some(locate(&self.template, path))
    }
}

/// Builds the plan and checks the literal parts.
struct Compiler {
    resource_type: &'static str,
    problems: Vec<FhirError>,
}

impl Compiler {
    fn checker<'u>(&self, urns: &'u mut Vec<Urn>) -> Checker<'u> {
        Checker {
            t: tables(),
            resource_type: self.resource_type,
            urns: Sink::Urns(urns),
        }
    }

    fn object(
        &mut self,
        ty: &'static TypeDef,
        entries: &[(String, Node)],
        frame: &Frame<'_>,
        post: Post,
    ) -> ObjPlan {
        let mut plan = ObjPlan {
            ty,
            entries: Vec::with_capacity(entries.len()),
            post,
        };
        for (name, node) in entries {
            if !node.present() || (ty.kind == Kind::Resource && name == "resourceType") {
                continue;
            }
            let Some(key) = ty.key(name) else {
                let mut none = Vec::new();
                let e = self.checker(&mut none).unknown(ty, name, frame);
                self.problems.push(e);
                continue;
            };
            let Some(el) = ty.elements.get(usize::from(key.element)) else {
                continue;
            };
            let here = frame.child(Seg::Elem(&el.name));
            let node = self.entry(key, el, node, &here);
            plan.entries.push(EntryPlan {
                name: name.as_str().into(),
                key,
                el,
                node,
            });
        }
        plan
    }

    fn entry(
        &mut self,
        key: &'static Key,
        el: &'static Element,
        node: &Node,
        here: &Frame<'_>,
    ) -> NodePlan {
        if let Ok(Some(value)) = node.literal() {
            let mut urns = Vec::new();
            if let Err(e) = self.checker(&mut urns).element(key, el, &value, here) {
                self.problems.push(e);
            }
            return NodePlan::Fixed(Literal { value, urns });
        }
        match &node.shape {
            Shape::Object(entries) => match self.complex(key, el, entries, here) {
                Some(p) if el.max == Some(1) => NodePlan::Object(Box::new(p)),
                _ => NodePlan::Element,
            },
            Shape::Array(items) => {
                let items: Vec<&Node> = items.iter().filter(|n| n.present()).collect();
                let all_always = items.iter().all(|n| n.always());
                let mut usable = el.max != Some(1);
                let mut always = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    let at = here.child(Seg::Index(i));
                    match self.item(key, el, item, &at) {
                        Some(p) if item.always() => always.push(p),
                        Some(_) => {}
                        None => usable = false,
                    }
                }
                let fits = el.max.is_none_or(|m| always.len() <= m as usize);
                match (usable && fits, all_always) {
                    (true, true) if !always.is_empty() => NodePlan::Items(always),
                    (true, false) => NodePlan::Maybe(always),
                    _ => NodePlan::Element,
                }
            }
            Shape::Absent | Shape::Fixed(_) | Shape::Varies => NodePlan::Element,
        }
    }

    /// An array item's plan; `None` when the item cannot be checked on its
    /// own (a nested array).
    fn item(
        &mut self,
        key: &'static Key,
        el: &'static Element,
        node: &Node,
        at: &Frame<'_>,
    ) -> Option<ItemPlan> {
        if let Ok(Some(value)) = node.literal() {
            let mut urns = Vec::new();
            if let Err(e) = self.checker(&mut urns).value(key, el, &value, at) {
                self.problems.push(e);
            }
            return Some(ItemPlan::Fixed(Literal { value, urns }));
        }
        match &node.shape {
            Shape::Object(entries) => Some(
                self.complex(key, el, entries, at)
                    .map_or(ItemPlan::Value, ItemPlan::Object),
            ),
            Shape::Array(_) => None,
            _ => Some(ItemPlan::Value),
        }
    }

    /// The plan of an object at a complex element; `None` at a primitive
    /// or a resource.
    fn complex(
        &mut self,
        key: &'static Key,
        el: &'static Element,
        entries: &[(String, Node)],
        at: &Frame<'_>,
    ) -> Option<ObjPlan> {
        let TypeRef::Complex(id) = key.ty else {
            return None;
        };
        let ty = tables().ty(id)?;
        let post = match &*ty.name {
            "Reference" => Post::Reference(el),
            "Coding" | "CodeableConcept" if el.binding.is_some() => Post::Coded(el),
            _ => Post::None,
        };
        Some(self.object(ty, entries, at, post))
    }
}

type Quick = Result<(), Fallback>;

fn quick_resource(c: &mut Checker<'_>, plan: &Plan, resource: &Value) -> Quick {
    let Value::Object(obj) = resource else {
        return Err(Fallback);
    };
    match obj.iter().next() {
        Some((k, Value::String(t))) if k == "resourceType" && *t == plan.resource_type => {}
        _ => return Err(Fallback),
    }
    quick_object(c, &plan.root, obj, &Frame::root(plan.resource_type), false)
}

/// What [`Checker::object`] checks, for an object the template made: its
/// keys are the template's, in its order, so each is found by walking the
/// plan's entries along, and literal values are skipped. With `guard`, the
/// object may not be the template's: literal values are compared instead.
fn quick_object(
    c: &mut Checker<'_>,
    p: &ObjPlan,
    obj: &Map<String, Value>,
    frame: &Frame<'_>,
    guard: bool,
) -> Quick {
    if p.ty.kind == Kind::Complex && obj.keys().all(|k| k == "id") {
        return Err(Fallback);
    }
    let mut seen = 0u64;
    let mut entries = p.entries.iter();
    for (k, v) in obj {
        if p.ty.kind == Kind::Resource && k == "resourceType" {
            continue;
        }
        let e = loop {
            match entries.next() {
                Some(e) if *e.name == **k => break e,
                Some(_) => {}
                None => return Err(Fallback),
            }
        };
        let bit = 1u64 << e.key.element;
        if !e.key.underscore && e.el.choice && seen & bit != 0 {
            return Err(Fallback);
        }
        seen |= bit;
        let here = frame.child(Seg::Elem(&e.el.name));
        match &e.node {
            NodePlan::Fixed(lit) => literal(c, lit, v, guard)?,
            NodePlan::Element => c.element(e.key, e.el, v, &here)?,
            NodePlan::Object(sub) => {
                let Value::Object(o) = v else {
                    return Err(Fallback);
                };
                quick_complex(c, sub, o, &here, guard)?;
            }
            NodePlan::Items(items) => {
                let Value::Array(values) = v else {
                    return Err(Fallback);
                };
                if values.len() != items.len() {
                    return Err(Fallback);
                }
                for (i, (item, ip)) in values.iter().zip(items).enumerate() {
                    let at = here.child(Seg::Index(i));
                    quick_item(c, e, ip, item, &at, guard)?;
                }
            }
            NodePlan::Maybe(always) => {
                let Value::Array(values) = v else {
                    return Err(Fallback);
                };
                if values.is_empty() || e.el.max.is_some_and(|m| values.len() > m as usize) {
                    return Err(Fallback);
                }
                let mut next = always.iter();
                let mut candidate = next.next();
                for (i, item) in values.iter().enumerate() {
                    let at = here.child(Seg::Index(i));
                    if let Some(ip) = candidate {
                        let mark = urns_found(c);
                        if quick_item(c, e, ip, item, &at, true).is_ok() {
                            candidate = next.next();
                            continue;
                        }
                        forget_urns(c, mark);
                    }
                    c.value(e.key, e.el, item, &at)?;
                }
            }
        }
    }
    if p.ty.required & !seen != 0 {
        return Err(Fallback);
    }
    if p.ty.invariants != 0 {
        c.invariants(p.ty, obj, frame)?;
    }
    Ok(())
}

/// One item of an array of the template.
fn quick_item(
    c: &mut Checker<'_>,
    e: &EntryPlan,
    ip: &ItemPlan,
    item: &Value,
    at: &Frame<'_>,
    guard: bool,
) -> Quick {
    match ip {
        ItemPlan::Fixed(lit) => literal(c, lit, item, guard),
        ItemPlan::Value => Ok(c.value(e.key, e.el, item, at)?),
        ItemPlan::Object(sub) => {
            let Value::Object(o) = item else {
                return Err(Fallback);
            };
            quick_complex(c, sub, o, at, guard)
        }
    }
}

/// A literal part, checked at load: compared when `guard`, and its
/// `urn:uuid` references handed on.
fn literal(c: &mut Checker<'_>, lit: &Literal, v: &Value, guard: bool) -> Quick {
    if guard && *v != lit.value {
        return Err(Fallback);
    }
    if !lit.urns.is_empty()
        && let Sink::Urns(urns) = &mut c.urns
    {
        urns.extend_from_slice(&lit.urns);
    }
    Ok(())
}

fn urns_found(c: &Checker<'_>) -> usize {
    match &c.urns {
        Sink::Urns(urns) => urns.len(),
        Sink::Refs(refs) => refs.len(),
        Sink::None => 0,
    }
}

fn forget_urns(c: &mut Checker<'_>, mark: usize) {
    match &mut c.urns {
        Sink::Urns(urns) => urns.truncate(mark),
        Sink::Refs(refs) => refs.truncate(mark),
        Sink::None => {}
    }
}

/// A complex value: the object, then what [`Checker::value`] checks of a
/// Reference or a coded element.
fn quick_complex(
    c: &mut Checker<'_>,
    p: &ObjPlan,
    o: &Map<String, Value>,
    at: &Frame<'_>,
    guard: bool,
) -> Quick {
    quick_object(c, p, o, at, guard)?;
    let checked: Checked = match p.post {
        Post::None => Ok(()),
        Post::Reference(el) => c.reference(el, o, at),
        Post::Coded(el) => c.coded(el, &p.ty.name, o, at),
    };
    Ok(checked?)
}

/// The deepest node of `root` on a FHIR path (`Observation.value[x].code`,
/// `Patient.identifier[1].value`, `Bundle.entry[0].resource(Patient).id`).
fn locate(root: &Node, path: &str) -> u32 {
    let mut rest = path.find('.').map_or("", |i| path.get(i..).unwrap_or(""));
    let mut node = root;
    loop {
        let next = if let Some(r) = rest.strip_prefix('.') {
            let end = name_end(r);
            let (name, r) = r.split_at(end);
            rest = r;
            match &node.shape {
                Shape::Object(entries) => entries
                    .iter()
                    .find(|(k, n)| n.present() && names(k, name))
                    .map(|(_, n)| n),
                _ => None,
            }
        } else if let Some(r) = rest.strip_prefix('[') {
            let Some((digits, r)) = r.split_once(']') else {
                break;
            };
            rest = r;
            match (&node.shape, digits.parse::<usize>()) {
                (Shape::Array(items), Ok(i)) => items.iter().filter(|n| n.present()).nth(i),
                _ => None,
            }
        } else if let Some(r) = rest.strip_prefix('(') {
            // A nested resource's type: the same node.
            rest = r.split_once(')').map_or("", |(_, r)| r);
            Some(node)
        } else {
            None
        };
        match next {
            Some(n) => node = n,
            None => break,
        }
    }
    node.place
}

/// Where an element name ends in a path: at `.`, `(` or an index (`[0]`),
/// not at a choice's `[x]`.
fn name_end(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        match c {
            b'.' | b'(' => return i,
            b'[' if b.get(i + 1) != Some(&b'x') => return i,
            _ => i += 1,
        }
    }
    i
}

/// Whether a template key is the element a path names: the same name, a
/// choice's typed name (`valueQuantity` for `value[x]`), or a primitive's
/// `_name`.
fn names(key: &str, element: &str) -> bool {
    if key == element {
        return true;
    }
    let key = key.strip_prefix('_').unwrap_or(key);
    match element.strip_suffix("[x]") {
        Some(stem) => key
            .strip_prefix(stem)
            .is_some_and(|t| t.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == element,
    }
}

#[cfg(test)]
mod tests;
