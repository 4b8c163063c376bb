//! Templates: YAML trees whose `=`-prefixed string leaves are expressions.
//!
//! Rendering keeps numbers as numbers (expressions are evaluated, never
//! text-substituted into JSON) and omits every key or item whose value is
//! `none`, then every object or array left empty, because FHIR forbids
//! nulls and empty elements.

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
    Object(Vec<(String, Tpl)>),
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

/// Compiles a template. `check` is called on every expression so that the
/// caller can verify its free variables; problems go to `errors` as
/// (field, line, column, message) and compilation goes on to find them all.
pub(crate) fn compile(
    node: &Spanned<RawNode>,
    field: &str,
    errors: &mut Vec<Problem>,
    check: &mut dyn FnMut(&Expr, &mut Vec<Problem>),
) -> Tpl {
    let line = node.referenced.line();
    let column = node.referenced.column();
    match &node.value {
        RawNode::Null => Tpl::Lit(None),
        RawNode::Bool(b) => Tpl::Lit(Some(serde_json::Value::Bool(*b))),
        RawNode::Int(i) => Tpl::Lit(Some(serde_json::Value::from(*i))),
        RawNode::Float(f) => {
            Tpl::Lit(serde_json::Number::from_f64(*f).map(serde_json::Value::Number))
        }
        RawNode::Str(s) => {
            if let Some(rest) = s.strip_prefix("==") {
                Tpl::Lit(Some(serde_json::Value::String(format!("={rest}"))))
            } else if let Some(src) = s.strip_prefix('=') {
                match Expr::compile(src, field.to_owned(), line) {
                    Ok(expr) => {
                        check(&expr, errors);
                        Tpl::Expr(Box::new(expr))
                    }
                    Err(msg) => {
                        errors.push((field.to_owned(), line, column, msg));
                        Tpl::Lit(None)
                    }
                }
            } else {
                Tpl::Lit(Some(serde_json::Value::String(s.clone())))
            }
        }
        RawNode::Seq(items) => fold(Tpl::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile(item, &format!("{field}[{i}]"), errors, check))
                .collect(),
        )),
        RawNode::Map(entries) => fold(Tpl::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let path = if field.is_empty() {
                        k.clone()
                    } else {
                        format!("{field}.{k}")
                    };
                    (k.clone(), compile(v, &path, errors, check))
                })
                .collect(),
        )),
    }
}

/// Renders expression-free subtrees once.
fn fold(tpl: Tpl) -> Tpl {
    let all_lit = match &tpl {
        Tpl::Array(items) => items.iter().all(|t| matches!(t, Tpl::Lit(_))),
        Tpl::Object(entries) => entries.iter().all(|(_, t)| matches!(t, Tpl::Lit(_))),
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
        Tpl::Object(entries) => {
            let mut out = serde_json::Map::with_capacity(entries.len());
            for (k, t) in entries {
                if let Some(v) = render(t, scope)? {
                    out.insert(k.clone(), v);
                }
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
