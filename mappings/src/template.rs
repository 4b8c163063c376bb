//! Templates: YAML trees whose `=`-prefixed string leaves are expressions.
//!
//! Rendering keeps numbers as numbers (expressions are evaluated, never
//! text-substituted into JSON) and omits every key or item whose value is
//! `none`, then every object or array left empty, because FHIR forbids
//! nulls and empty elements.

use kiungo_fhir_validate::{Node, Shape};
use minijinja::Value;
use serde_saphyr::Spanned;

use crate::expr::Expr;
use crate::spec::RawNode;

/// A compiled template node.
#[derive(Debug)]
pub(crate) enum Tpl {
    /// A subtree without expressions, rendered once at load.
    Lit(Option<serde_json::Value>),
    /// An expression leaf.
    Expr(Box<Expr>),
    /// An array.
    Array(Vec<Tpl>),
    /// An object, in file order.
    Object(Obj),
}

/// An object of a template.
#[derive(Debug)]
pub(crate) struct Obj {
    /// The entries, in file order.
    entries: Vec<(String, Tpl)>,
    /// What rendering starts from, when the keys are distinct: every entry
    /// that can give a value, in file order, with its literal value or
    /// null for the parts to render (which never render null). Cloning it
    /// hashes no key, where inserting the keys one by one hashes each.
    skeleton: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Obj {
    fn new(entries: Vec<(String, Tpl)>) -> Self {
        let mut skeleton = serde_json::Map::with_capacity(entries.len());
        let mut distinct = true;
        for (k, t) in &entries {
            let value = match t {
                Tpl::Lit(None) => continue,
                Tpl::Lit(Some(v)) => v.clone(),
                _ => serde_json::Value::Null,
            };
            distinct &= skeleton.insert(k.clone(), value).is_none();
        }
        Self {
            skeleton: distinct.then_some(skeleton),
            entries,
        }
    }
}

/// A failure while rendering: the field and line at fault and the message.
#[derive(Debug)]
pub(crate) struct RenderError {
    pub(crate) field: String,
    pub(crate) line: u64,
    pub(crate) message: String,
    /// The event's values the message leaves out.
    pub(crate) values: Vec<String>,
    /// Whether the mapping refused the event on purpose (`fail()`).
    pub(crate) refused: bool,
}

/// A load problem: field, line, column (0 when unknown) and message.
pub(crate) type Problem = (String, u64, u64, String);

/// Compiles a template. `check` is called on every expression, with the
/// column of its node, so that the caller can verify its free variables
/// and note what it reads; problems go to `errors` as (field, line,
/// column, message) and compilation goes on to find them all.
pub(crate) fn compile(
    node: &Spanned<RawNode>,
    field: &str,
    errors: &mut Vec<Problem>,
    check: &mut dyn FnMut(&Expr, u64, &mut Vec<Problem>),
) -> Tpl {
    let line = node.referenced.line();
    let column = node.referenced.column();
    match leaf(&node.value) {
        Some(Leaf::Literal(v)) => return Tpl::Lit(v),
        Some(Leaf::Expr(src)) => {
            return match Expr::compile(src, field.to_owned(), line) {
                Ok(expr) => {
                    check(&expr, column, errors);
                    Tpl::Expr(Box::new(expr))
                }
                Err(msg) => {
                    errors.push((field.to_owned(), line, column, msg));
                    Tpl::Lit(None)
                }
            };
        }
        None => {}
    }
    match &node.value {
        RawNode::Seq(items) => fold(Tpl::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile(item, &format!("{field}[{i}]"), errors, check))
                .collect(),
        )),
        RawNode::Map(entries) => fold(Tpl::Object(Obj::new(
            entries
                .iter()
                .map(|(k, v)| {
                    (
                        k.value.clone(),
                        compile(v, &child(field, &k.value), errors, check),
                    )
                })
                .collect(),
        ))),
        _ => Tpl::Lit(None),
    }
}

/// What a scalar node of a template is.
enum Leaf<'a> {
    /// A literal: its JSON, `None` for a null (or a float JSON cannot
    /// hold), which is left out.
    Literal(Option<serde_json::Value>),
    /// An expression's source (after the `=`).
    Expr(&'a str),
}

/// The scalar `node` as a literal or an expression; `None` for a
/// sequence or a mapping. A leading `==` escapes a literal `=`.
fn leaf(node: &RawNode) -> Option<Leaf<'_>> {
    Some(match node {
        RawNode::Null => Leaf::Literal(None),
        RawNode::Bool(b) => Leaf::Literal(Some(serde_json::Value::Bool(*b))),
        RawNode::Int(i) => Leaf::Literal(Some(serde_json::Value::from(*i))),
        RawNode::Float(f) => {
            Leaf::Literal(serde_json::Number::from_f64(*f).map(serde_json::Value::Number))
        }
        RawNode::Str(s) => {
            if let Some(rest) = s.strip_prefix("==") {
                Leaf::Literal(Some(serde_json::Value::String(format!("={rest}"))))
            } else if let Some(src) = s.strip_prefix('=') {
                Leaf::Expr(src)
            } else {
                Leaf::Literal(Some(serde_json::Value::String(s.clone())))
            }
        }
        RawNode::Seq(_) | RawNode::Map(_) => return None,
    })
}

/// `field.key`, or `key` at the top.
fn child(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_owned()
    } else {
        format!("{field}.{key}")
    }
}

/// Where a template node is in its file, for load errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    /// 1-based line: a mapping entry's key's, an item's own.
    pub(crate) line: u64,
    /// 1-based column.
    pub(crate) column: u64,
    /// Dotted field path, e.g. `fhir[0].resource.code.coding[0].system`.
    pub(crate) field: String,
}

/// The shape of what the template `node` (at `place`) renders, as
/// [`compile`] and [`render`] make it: literal scalars are fixed,
/// expressions vary, and a node that can give nothing is absent. Each
/// node's place goes to `places`, indexed by [`Node::place`].
pub(crate) fn shape(node: &Spanned<RawNode>, place: Place, places: &mut Vec<Place>) -> Node {
    let index = u32::try_from(places.len()).unwrap_or(u32::MAX);
    let field = place.field.clone();
    places.push(place);
    let shape = match (leaf(&node.value), &node.value) {
        (Some(Leaf::Literal(Some(v))), _) => Shape::Fixed(v),
        (Some(Leaf::Literal(None)), _) => Shape::Absent,
        (Some(Leaf::Expr(_)), _) => Shape::Varies,
        (None, RawNode::Seq(items)) => {
            let items: Vec<Node> = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let at = Place {
                        line: item.referenced.line(),
                        column: item.referenced.column(),
                        field: format!("{field}[{i}]"),
                    };
                    shape(item, at, places)
                })
                .collect();
            if items.iter().all(|n| n.shape == Shape::Absent) {
                Shape::Absent
            } else {
                Shape::Array(items)
            }
        }
        (None, RawNode::Map(entries)) => {
            let entries: Vec<(String, Node)> = entries
                .iter()
                .map(|(k, v)| {
                    let at = Place {
                        line: k.referenced.line(),
                        column: k.referenced.column(),
                        field: child(&field, &k.value),
                    };
                    (k.value.clone(), shape(v, at, places))
                })
                .collect();
            if entries.iter().all(|(_, n)| n.shape == Shape::Absent) {
                Shape::Absent
            } else {
                Shape::Object(entries)
            }
        }
        (None, _) => Shape::Absent,
    };
    Node {
        place: index,
        shape,
    }
}

/// Renders expression-free subtrees once.
fn fold(tpl: Tpl) -> Tpl {
    let all_lit = match &tpl {
        Tpl::Array(items) => items.iter().all(|t| matches!(t, Tpl::Lit(_))),
        Tpl::Object(o) => o.entries.iter().all(|(_, t)| matches!(t, Tpl::Lit(_))),
        _ => false,
    };
    if !all_lit {
        return tpl;
    }
    match render(&tpl, &Value::UNDEFINED) {
        Ok(v) => Tpl::Lit(v),
        Err(_) => tpl,
    }
}

/// Renders against a scope. `Ok(None)` means the node is omitted.
pub(crate) fn render(tpl: &Tpl, scope: &Value) -> Result<Option<serde_json::Value>, RenderError> {
    match tpl {
        Tpl::Lit(v) => Ok(v.clone()),
        Tpl::Expr(expr) => {
            let fail = |f: crate::error::Failure| RenderError {
                field: expr.field.clone(),
                line: expr.line,
                message: f.message,
                values: f.values,
                refused: f.refused,
            };
            let value = expr.eval(scope).map_err(fail)?;
            Ok(crate::json::from_value(&value)
                .map_err(|m| fail(m.into()))?
                .and_then(prune))
        }
        Tpl::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(v) = render(item, scope)? {
                    out.push(v);
                }
            }
            Ok((!out.is_empty()).then_some(serde_json::Value::Array(out)))
        }
        Tpl::Object(o) => {
            let Some(skeleton) = &o.skeleton else {
                let mut out = serde_json::Map::with_capacity(o.entries.len());
                for (k, t) in &o.entries {
                    if let Some(v) = render(t, scope)? {
                        out.insert(k.clone(), v);
                    }
                }
                return Ok((!out.is_empty()).then_some(serde_json::Value::Object(out)));
            };
            // The skeleton's slots are the entries that can give a value,
            // in order: the literal ones are filled, the others rendered
            // in order (so the first error is the one the file order
            // gives), and those that give nothing left out.
            let mut out = skeleton.clone();
            let mut left_out = false;
            let parts = o
                .entries
                .iter()
                .filter(|(_, t)| !matches!(t, Tpl::Lit(None)));
            for (slot, (_, t)) in out.values_mut().zip(parts) {
                if matches!(t, Tpl::Lit(_)) {
                    continue;
                }
                match render(t, scope)? {
                    Some(v) => *slot = v,
                    None => left_out = true,
                }
            }
            if left_out {
                out.retain(|_, v| !v.is_null());
            }
            Ok((!out.is_empty()).then_some(serde_json::Value::Object(out)))
        }
    }
}

/// Drops nulls, empty strings and the objects and arrays they leave empty
/// from an expression's result.
fn prune(value: serde_json::Value) -> Option<serde_json::Value> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::Array(items) => {
            let items: Vec<_> = items.into_iter().filter_map(prune).collect();
            (!items.is_empty()).then_some(serde_json::Value::Array(items))
        }
        serde_json::Value::Object(map) => {
            let map: serde_json::Map<_, _> = map
                .into_iter()
                .filter_map(|(k, v)| prune(v).map(|v| (k, v)))
                .collect();
            (!map.is_empty()).then_some(serde_json::Value::Object(map))
        }
        other => Some(other),
    }
}
