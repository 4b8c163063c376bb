//! Direct evaluation of the common expression shapes, without minijinja's
//! VM: names and attribute paths, literals (lists and maps too), `~`,
//! comparisons, `in`, `and`/`or`/`not`, `x if c else y`, the tests `none`,
//! `defined` and `mapping`, the filters `default`, `first` and `length`,
//! and Kiungo's own value functions (`lookup`, `coalesce`, `date`, `age`,
//! ...).
//!
//! The expression is read by minijinja's own parser, so precedence is the
//! VM's; each operation is minijinja's own ([`Value`]'s comparisons,
//! display and truth, its builtin filters) or Kiungo's function itself.
//! Any other part (`fail(...)`, `selectattr`, arithmetic, ...) is kept as
//! a mark: reaching it, or anything unusual (an undefined value where the
//! VM would fail, an error, a value large enough to near the fuel bound),
//! gives `None`, and the caller then runs the compiled expression, which
//! says what it says. A part never reached (the branch not taken) costs
//! nothing.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::Value;
use minijinja::machinery::ast;
use minijinja::value::ValueKind;

/// Fuel units (minijinja counts 64 per unit of fuel) a direct evaluation
/// may account for before it leaves the expression to the VM: half of
/// what the VM may spend, while the estimate below is never less than
/// what the VM spends, so the VM could never have run out of fuel on an
/// expression evaluated here.
const BUDGET: u64 = crate::expr::FUEL * 64 / 2;
/// Estimate per node: the VM runs at most a few instructions (64 units
/// each) per node.
const NODE_COST: u64 = 4 * 64;
/// Estimate per byte of text a node reads or makes (the VM charges 1 for
/// a result's byte and 1 for a filter's input byte).
const BYTE_COST: u64 = 4;
/// Estimate per item `in` visits (the VM charges 32).
const ITEM_COST: u64 = 128;

/// Expressions with more nodes than this are left to the VM.
const MAX_NODES: usize = 64;

/// An expression in a shape evaluated directly.
#[derive(Debug)]
pub(crate) struct Direct(Node);

#[derive(Debug)]
enum Node {
    Const(Value),
    Var(Box<str>),
    Attr(Box<Node>, Box<str>),
    Item(Box<Node>, Value),
    List(Vec<Node>),
    Concat(Box<Node>, Box<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    In(Box<Node>, Box<Node>),
    If(Box<Node>, Box<Node>, Box<Node>),
    IsNone(Box<Node>),
    IsDefined(Box<Node>),
    IsMapping(Box<Node>),
    /// `x | default` or `x | default(y)`.
    Default(Box<Node>, Option<Box<Node>>),
    /// `x | first`.
    First(Box<Node>),
    /// `x | length` (or `count`).
    Length(Box<Node>),
    /// A map literal.
    Map(Vec<(Node, Node)>),
    /// `x | selectattr('path', 'eq', y)`: the items whose `path` equals `y`.
    SelectEq(Box<Node>, Box<str>, Box<Node>),
    /// `x | map(attribute='path')`.
    MapAttr(Box<Node>, Box<str>),
    /// `x | map('first')`.
    MapFirst(Box<Node>),
    /// `x | list` of a list.
    List1(Box<Node>),
    /// One of Kiungo's functions, as a filter (its operand first) or a
    /// call; a call names the function, which a binding of that name
    /// would shadow.
    Call(Box<Call>),
    /// A part left to the VM.
    Vm,
}

#[derive(Debug)]
struct Call {
    func: crate::functions::Direct,
    /// The name a call is written with; `None` for a filter.
    called: Option<Box<str>>,
    args: Vec<Node>,
    kwargs: Vec<(Box<str>, Node)>,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
}

impl Direct {
    /// The expression `source` when its shape is one evaluated directly.
    pub(crate) fn compile(source: &str) -> Option<Self> {
        let expr = minijinja::machinery::parse_expr(source).ok()?;
        let mut nodes = 0;
        let node = convert(&expr, &mut nodes);
        (nodes <= MAX_NODES && !matches!(node, Node::Vm)).then_some(Self(node))
    }

    /// The expression's value in `scope`, or `None` when the VM is to
    /// evaluate it (it then gives the same value, or the error).
    pub(crate) fn eval(&self, scope: &Value) -> Option<Value> {
        let mut spent = 0;
        let value = eval(&self.0, scope, &mut spent)?;
        (!value.is_undefined()).then_some(value)
    }
}

fn boxed(e: &ast::Expr<'_>, nodes: &mut usize) -> Box<Node> {
    Box::new(convert(e, nodes))
}

/// Whether the VM's map literals are what [`Node::Map`] makes: maps of
/// minijinja's own map type, keys sorted (a minijinja built with
/// `preserve_order` keeps them in source order; maps are then left to the
/// VM).
static MAP_LITERALS: LazyLock<bool> = LazyLock::new(|| {
    let src = "{'b': 1, 'a': [2], 'b': 3, 1: none}";
    let direct = Value::from(BTreeMap::from([
        (Value::from("b"), Value::from(3)),
        (Value::from("a"), Value::from(vec![Value::from(2)])),
        (Value::from(1), Value::from(())),
    ]));
    crate::expr::eval_source(src).is_some_and(|vm| {
        vm == direct
            && vm.to_string() == direct.to_string()
            && serde_json::to_string(&vm).ok() == serde_json::to_string(&direct).ok()
    })
});

fn convert(e: &ast::Expr<'_>, nodes: &mut usize) -> Node {
    *nodes += 1;
    match e {
        ast::Expr::Var(v) => Node::Var(Box::from(v.id)),
        ast::Expr::Const(c) => Node::Const(c.value.clone()),
        ast::Expr::GetAttr(g) => Node::Attr(boxed(&g.expr, nodes), Box::from(g.name)),
        ast::Expr::GetItem(g) => match &g.subscript_expr {
            ast::Expr::Const(c)
                if matches!(c.value.kind(), ValueKind::String | ValueKind::Number) =>
            {
                Node::Item(boxed(&g.expr, nodes), c.value.clone())
            }
            _ => Node::Vm,
        },
        ast::Expr::List(l) => Node::List(l.items.iter().map(|i| convert(i, nodes)).collect()),
        ast::Expr::Map(m) if *MAP_LITERALS => Node::Map(
            m.keys
                .iter()
                .zip(&m.values)
                .map(|(k, v)| (convert(k, nodes), convert(v, nodes)))
                .collect(),
        ),
        ast::Expr::BinOp(b) => {
            let (l, r) = (boxed(&b.left, nodes), boxed(&b.right, nodes));
            match b.op {
                ast::BinOpKind::Eq => Node::Compare(Cmp::Eq, l, r),
                ast::BinOpKind::Ne => Node::Compare(Cmp::Ne, l, r),
                ast::BinOpKind::Lt => Node::Compare(Cmp::Lt, l, r),
                ast::BinOpKind::Lte => Node::Compare(Cmp::Lte, l, r),
                ast::BinOpKind::Gt => Node::Compare(Cmp::Gt, l, r),
                ast::BinOpKind::Gte => Node::Compare(Cmp::Gte, l, r),
                ast::BinOpKind::ScAnd => Node::And(l, r),
                ast::BinOpKind::ScOr => Node::Or(l, r),
                ast::BinOpKind::Concat => Node::Concat(l, r),
                ast::BinOpKind::In => Node::In(l, r),
                _ => Node::Vm,
            }
        }
        ast::Expr::UnaryOp(u) => match u.op {
            ast::UnaryOpKind::Not => Node::Not(boxed(&u.expr, nodes)),
            ast::UnaryOpKind::Neg => Node::Vm,
        },
        ast::Expr::IfExpr(i) => match &i.false_expr {
            Some(otherwise) => Node::If(
                boxed(&i.true_expr, nodes),
                boxed(&i.test_expr, nodes),
                boxed(otherwise, nodes),
            ),
            None => Node::Vm,
        },
        ast::Expr::Test(t) if t.args.is_empty() => {
            let operand = boxed(&t.expr, nodes);
            match t.name {
                "none" => Node::IsNone(operand),
                "defined" => Node::IsDefined(operand),
                "undefined" => Node::Not(Box::new(Node::IsDefined(operand))),
                "mapping" => Node::IsMapping(operand),
                _ => Node::Vm,
            }
        }
        ast::Expr::Filter(f) => {
            let Some(operand) = &f.expr else {
                return Node::Vm;
            };
            let operand = convert(operand, nodes);
            let no_args = f.args.is_empty();
            match f.name {
                "default" => match f.args.as_slice() {
                    [] => Node::Default(Box::new(operand), None),
                    [ast::CallArg::Pos(other)] => {
                        Node::Default(Box::new(operand), Some(boxed(other, nodes)))
                    }
                    _ => Node::Vm,
                },
                "first" if no_args => Node::First(Box::new(operand)),
                "list" if no_args => Node::List1(Box::new(operand)),
                "selectattr" => match f.args.as_slice() {
                    [
                        ast::CallArg::Pos(ast::Expr::Const(path)),
                        ast::CallArg::Pos(ast::Expr::Const(test)),
                        ast::CallArg::Pos(arg),
                    ] if matches!(test.value.as_str(), Some("eq" | "equalto" | "==")) => match path
                        .value
                        .as_str()
                    {
                        Some(path) => {
                            Node::SelectEq(Box::new(operand), Box::from(path), boxed(arg, nodes))
                        }
                        None => Node::Vm,
                    },
                    _ => Node::Vm,
                },
                "map" => match f.args.as_slice() {
                    [ast::CallArg::Kwarg("attribute", ast::Expr::Const(path))] => {
                        match path.value.as_str() {
                            Some(path) => Node::MapAttr(Box::new(operand), Box::from(path)),
                            None => Node::Vm,
                        }
                    }
                    [ast::CallArg::Pos(ast::Expr::Const(name))]
                        if name.value.as_str() == Some("first") =>
                    {
                        Node::MapFirst(Box::new(operand))
                    }
                    _ => Node::Vm,
                },
                "length" | "count" if no_args => Node::Length(Box::new(operand)),
                name => call(name, None, Some(operand), &f.args, nodes),
            }
        }
        ast::Expr::Call(c) => match &c.expr {
            ast::Expr::Var(name) => call(name.id, Some(name.id), None, &c.args, nodes),
            _ => Node::Vm,
        },
        _ => Node::Vm,
    }
}

/// A call of Kiungo's function `name`: as a filter (`operand` first) or
/// `called` by that name.
fn call(
    name: &str,
    called: Option<&str>,
    operand: Option<Node>,
    args: &[ast::CallArg<'_>],
    nodes: &mut usize,
) -> Node {
    let mut positional: Vec<Node> = operand.into_iter().collect();
    let mut kwargs = Vec::new();
    for arg in args {
        match arg {
            ast::CallArg::Pos(e) if kwargs.is_empty() => positional.push(convert(e, nodes)),
            ast::CallArg::Kwarg(k, e) => kwargs.push((Box::from(*k), convert(e, nodes))),
            _ => return Node::Vm,
        }
    }
    let func = match called {
        Some(_) => crate::functions::Direct::function(name, positional.len()),
        None => crate::functions::Direct::filter(name, positional.len()),
    };
    match func {
        Some(func) if kwargs.is_empty() || func.takes_kwargs() => Node::Call(Box::new(Call {
            func,
            called: called.map(Box::from),
            args: positional,
            kwargs,
        })),
        _ => Node::Vm,
    }
}

/// Counts a value's text against the budget; `None` once it is spent.
fn charge(value: &Value, spent: &mut u64) -> Option<()> {
    let bytes = value.as_str().map_or(0, str::len) as u64;
    *spent = spent.saturating_add(bytes.saturating_mul(BYTE_COST));
    (*spent <= BUDGET).then_some(())
}

/// `value` unless it is undefined, where the VM fails (or does
/// something this module leaves to it).
fn defined(value: Value) -> Option<Value> {
    (!value.is_undefined()).then_some(value)
}

fn eval(node: &Node, scope: &Value, spent: &mut u64) -> Option<Value> {
    *spent = spent.saturating_add(NODE_COST);
    let value = match node {
        Node::Const(v) => v.clone(),
        // A name the scope lacks may be a global: the VM's business.
        Node::Var(name) => defined(scope.get_attr(name).ok()?)?,
        Node::Attr(of, name) => defined(eval(of, scope, spent)?)?.get_attr(name).ok()?,
        Node::Item(of, key) => defined(eval(of, scope, spent)?)?.get_item(key).ok()?,
        Node::List(items) => Value::from(
            items
                .iter()
                .map(|i| eval(i, scope, spent).and_then(defined))
                .collect::<Option<Vec<Value>>>()?,
        ),
        Node::Concat(l, r) => {
            let l = plain(eval(l, scope, spent)?)?;
            let r = plain(eval(r, scope, spent)?)?;
            Value::from(format!("{l}{r}"))
        }
        Node::Compare(op, l, r) => {
            let l = plain(eval(l, scope, spent)?)?;
            let r = plain(eval(r, scope, spent)?)?;
            Value::from(match op {
                Cmp::Eq => l == r,
                Cmp::Ne => l != r,
                Cmp::Lt => l < r,
                Cmp::Lte => l <= r,
                Cmp::Gt => l > r,
                Cmp::Gte => l >= r,
            })
        }
        Node::And(l, r) => {
            let l = defined(eval(l, scope, spent)?)?;
            if l.is_true() {
                eval(r, scope, spent)?
            } else {
                l
            }
        }
        Node::Or(l, r) => {
            let l = defined(eval(l, scope, spent)?)?;
            if l.is_true() {
                l
            } else {
                eval(r, scope, spent)?
            }
        }
        Node::Not(v) => Value::from(!defined(eval(v, scope, spent)?)?.is_true()),
        Node::If(then, test, otherwise) => {
            if defined(eval(test, scope, spent)?)?.is_true() {
                eval(then, scope, spent)?
            } else {
                eval(otherwise, scope, spent)?
            }
        }
        Node::In(needle, container) => {
            let needle = plain(eval(needle, scope, spent)?)?;
            let container = defined(eval(container, scope, spent)?)?;
            Value::from(contains(&container, &needle, spent)?)
        }
        Node::IsNone(v) => Value::from(defined(eval(v, scope, spent)?)?.is_none()),
        Node::IsDefined(v) => Value::from(!eval(v, scope, spent)?.is_undefined()),
        Node::Default(v, other) => {
            let v = eval(v, scope, spent)?;
            // The VM works out a filter's arguments before the filter
            // runs: the fallback is evaluated (and fails) whether or not
            // it is used.
            let other = match other {
                Some(o) => defined(eval(o, scope, spent)?)?,
                None => Value::from(""),
            };
            if v.is_undefined() { other } else { v }
        }
        Node::IsMapping(v) => {
            Value::from(defined(eval(v, scope, spent)?)?.kind() == ValueKind::Map)
        }
        Node::First(v) => minijinja::filters::first(&defined(eval(v, scope, spent)?)?).ok()?,
        Node::Length(v) => {
            Value::from(minijinja::filters::length(&defined(eval(v, scope, spent)?)?).ok()?)
        }
        Node::SelectEq(of, path, arg) => {
            let items = seq(eval(of, scope, spent)?, spent)?;
            let arg = defined(eval(arg, scope, spent)?)?;
            let mut kept = Vec::new();
            for item in items {
                let tested = get_path(&item, path)?;
                charge(&tested, spent)?;
                if tested == arg {
                    kept.push(item);
                }
            }
            Value::from(kept)
        }
        Node::MapAttr(of, path) => Value::from(
            seq(eval(of, scope, spent)?, spent)?
                .iter()
                .map(|item| get_path(item, path))
                .collect::<Option<Vec<Value>>>()?,
        ),
        Node::MapFirst(of) => Value::from(
            seq(eval(of, scope, spent)?, spent)?
                .iter()
                .map(|item| {
                    // The VM charges each item's text: `first` is called
                    // on it as a filter is.
                    charge(item, spent)?;
                    minijinja::filters::first(&defined(item.clone())?).ok()
                })
                .collect::<Option<Vec<Value>>>()?,
        ),
        Node::List1(of) => Value::from(seq(eval(of, scope, spent)?, spent)?),
        Node::Map(entries) => {
            let mut map = BTreeMap::new();
            for (k, v) in entries {
                let k = defined(eval(k, scope, spent)?)?;
                let v = defined(eval(v, scope, spent)?)?;
                map.insert(k, v);
            }
            Value::from(map)
        }
        Node::Call(c) => {
            // A binding of the same name is what the VM would call, even
            // one whose value is undefined (a `let` of a missing field):
            // the scope is asked whether it holds the name at all.
            if let Some(name) = &c.called
                && scope
                    .as_object()
                    .is_none_or(|o| o.get_value(&Value::from(&**name)).is_some())
            {
                return None;
            }
            let args = c
                .args
                .iter()
                .map(|a| {
                    let v = eval(a, scope, spent)?;
                    // `coalesce` is the one function made for undefined
                    // arguments.
                    if c.func.takes_undefined() {
                        Some(v)
                    } else {
                        defined(v)
                    }
                })
                .collect::<Option<Vec<Value>>>()?;
            let kwargs = c
                .kwargs
                .iter()
                .map(|(k, v)| Some((&**k, defined(eval(v, scope, spent)?)?)))
                .collect::<Option<Vec<(&str, Value)>>>()?;
            c.func.call(&args, kwargs)?
        }
        Node::Vm => return None,
    };
    charge(&value, spent)?;
    Some(value)
}

/// The items of a list (never of text or a map, which these filters read
/// otherwise), each counted against the budget; `None` for anything else.
fn seq(value: Value, spent: &mut u64) -> Option<Vec<Value>> {
    if value.kind() != ValueKind::Seq {
        return None;
    }
    let len = value.len()? as u64;
    *spent = spent.saturating_add(len.saturating_mul(ITEM_COST + NODE_COST));
    if *spent > BUDGET {
        return None;
    }
    Some(value.try_iter().ok()?.collect())
}

/// minijinja's attribute path (`a.b`, `a.0`) of a map item, as its
/// `selectattr` and `map` read it; `None` for an item that is not a map.
fn get_path(item: &Value, path: &str) -> Option<Value> {
    if item.kind() != ValueKind::Map {
        return None;
    }
    let mut at = item.clone();
    for part in path.split('.') {
        at = match part.parse::<usize>() {
            Ok(i) => at.get_item_by_index(i).ok()?,
            Err(_) => at.get_attr(part).ok()?,
        };
    }
    Some(at)
}

/// `value` if it is defined and neither a container nor safe (marked-up)
/// text: the operands this module compares, concatenates and looks for.
fn plain(value: Value) -> Option<Value> {
    (!value.is_undefined() && !value.is_safe() && value.as_object().is_none()).then_some(value)
}

/// The VM's `in` for text and lists; `None` for anything else.
fn contains(container: &Value, needle: &Value, spent: &mut u64) -> Option<bool> {
    if let Some(text) = container.as_str() {
        return Some(text.contains(needle.as_str()?));
    }
    if container.kind() != ValueKind::Seq {
        return None;
    }
    let len = container.len()? as u64;
    *spent = spent.saturating_add(len.saturating_mul(ITEM_COST));
    if *spent > BUDGET {
        return None;
    }
    let mut found = false;
    for item in container.try_iter().ok()? {
        if item == *needle {
            found = true;
            break;
        }
    }
    Some(found)
}

/// Panics when the VM gives `scope` another value than `direct` for `e`
/// (unit tests run it on every direct evaluation).
#[cfg(test)]
pub(crate) fn check_against_vm(e: &crate::expr::Expr, scope: &Value, direct: &Value) {
    match e.eval_vm(scope) {
        Ok(vm) => {
            assert!(
                vm == *direct
                    && vm.kind() == direct.kind()
                    && vm.to_string() == direct.to_string()
                    && crate::json::from_value(&vm) == crate::json::from_value(direct),
                "`{}`: direct {direct:?}, VM {vm:?}",
                e.source
            );
        }
        Err(f) => panic!("`{}`: direct {direct:?}, VM fails: {}", e.source, f.message),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::context::{RUNTIME, Runtime, Scope};
    use crate::expr::Expr;
    use crate::table::Table;

    /// A scope like an event's: a payload with missing fields, nulls,
    /// numbers as numbers and as text, nested lists; bindings; a table.
    fn scope() -> Value {
        let payload = serde_json::json!({
            "_id": "e-1",
            "form": "visit",
            "n": 3,
            "f": 2.5,
            "n_text": "3",
            "empty": "",
            "spaced": "  a   b ",
            "nothing": null,
            "yes": true,
            "day": "2024-03-05T10:20:00+03:00",
            "ms": 1709623200000i64,
            "fields": {"visit": {"n": 2, "place": "facility", "none_here": null}},
            "list": [1, "2", [3, 4], {"k": "v"}, null],
            "tags": ["a", "b"],
            "answers": [{"q": "x", "v": 1}, {"q": "y", "v": 2}],
            "slash/key": "s",
        });
        let mut vars: HashMap<Arc<str>, Value> = HashMap::new();
        vars.insert(Arc::from("event"), crate::json::lazy(Arc::new(payload)));
        vars.insert(Arc::from("source"), Value::from("cht"));
        vars.insert(Arc::from("message_id"), Value::from(()));
        vars.insert(Arc::from("count"), Value::from(12));
        vars.insert(Arc::from("nobody"), Value::from(()));
        vars.insert(Arc::from("item"), Value::UNDEFINED);
        vars.insert(
            Arc::from("date"),
            Value::from("a binding named like a function"),
        );
        let rows = [("facility", "pq2XI5kz2BY"), ("outreach", "PT59n8BQbqM")];
        vars.insert(Arc::from("places"), Table::for_tests("places", &rows));
        vars.insert(
            Arc::from(RUNTIME),
            Value::from_object(Runtime {
                pseudonym_key: None,
            }),
        );
        Value::from_dyn_object(Scope::new(vars))
    }

    /// Every expression: what the direct evaluation gives (when it gives
    /// anything) is what the VM gives; and whether it is taken directly.
    #[test]
    fn direct_values_are_the_vms() {
        let scope = scope();
        let cases: &[(&str, bool)] = &[
            ("event._id", true),
            ("event.fields.visit.place == 'facility'", true),
            ("event.fields.visit.n == 2", true),
            ("event.fields.visit.n == 2.0", true),
            ("event.n_text == 3", true),
            ("event.n > 2", true),
            ("event.n >= 3 and event.f < 3", true),
            ("event.n < event.f", true),
            ("event.n_text < 'a'", true),
            ("count != 12", true),
            ("count <= 11", true),
            ("'x' ~ event.n ~ '/' ~ event.f", true),
            ("event.nothing ~ '/' ~ event.yes", true),
            ("event._id ~ event.missing", false),
            ("event.fields.visit.place if event.yes else 'no'", true),
            ("'a' if event.empty else 'b'", true),
            ("'a' if event.nothing else 'b'", true),
            ("'a' if event.list else 'b'", true),
            ("'a' if event.missing else 'b'", false),
            ("event.missing is defined", true),
            ("event.missing is not defined", true),
            ("event.missing is undefined", true),
            ("event.missing.deeper is defined", false),
            ("event.fields.visit.none_here is none", true),
            ("event.fields.visit.none_here is not none", true),
            ("nobody is none", true),
            ("event.missing is none", false),
            ("event.form in ['visit', 'other']", true),
            ("event.form not in ['visit', 'other']", true),
            ("'b' in event.tags", true),
            ("2 in event.list", true),
            ("'2' in event.list", true),
            ("'is' in event.form", true),
            ("event.n in event.form", false),
            ("'k' in event.list[3]", false),
            ("event.list[2][1]", true),
            ("event.list[3].k", true),
            ("event.list[9]", false),
            ("event['slash/key']", true),
            ("event['slash/key'] ~ '-'", true),
            ("not event.yes", true),
            ("not event.empty", true),
            ("event.empty or 'fallback'", true),
            ("event.n and event.form", true),
            ("event.nothing and event.form", true),
            ("event.missing | default('d')", true),
            ("event.missing | default", true),
            ("event.nothing | default('d')", true),
            ("event.form | default('d')", true),
            ("event.answers | default([])", true),
            ("event.missing | default([])", true),
            ("event.spaced | squish", true),
            ("squish(event.spaced)", true),
            ("event.n | squish", true),
            ("event.nothing | squish", false),
            ("event.missing | squish", false),
            ("event.n_text | number", true),
            ("event.f | number", true),
            ("event.form | number", false),
            ("event.spaced | digits", true),
            ("event.day | date", true),
            ("event.day | datetime", true),
            ("event.ms | date", true),
            ("event.ms | datetime", true),
            ("event.form | date", false),
            ("event.day | date(offset='+01:00')", true),
            ("event.day | datetime(offset='+01:00')", true),
            ("date(event.form, format='%d/%m/%Y')", false),
            ("event.day | date(offset=event.missing)", false),
            ("age(event.day, '2025-06-01', unit='months')", true),
            ("event.day | age('2025-06-01', unit='days')", true),
            ("age(event.day, '2020-06-01')", false),
            ("age(event.day, '2025-06-01', unit='weeks')", false),
            ("event.day | period('Monthly')", true),
            ("period(event.day, 'Weekly')", true),
            ("uuid5(event._id)", true),
            (
                "uuid5(event._id, namespace='6ba7b810-9dad-11d1-80b4-00c04fd430c8')",
                true,
            ),
            ("event.form if event.yes else fail('no')", true),
            ("event.form if event.nothing else fail('no')", false),
            (
                "lookup(places, 'nowhere', false) or fail('unknown place')",
                false,
            ),
            (
                "lookup(places, 'facility', false) or fail('unknown place')",
                true,
            ),
            ("event.fields is mapping", true),
            ("event.form is mapping", true),
            ("event.list is mapping", true),
            ("event.list | length", true),
            ("event.list | length > 2", true),
            ("event.form | count", true),
            ("event.missing | length", false),
            ("event.tags | first | default('z')", true),
            ("[] | first | default('z')", true),
            ("event.form | first", true),
            ("event.missing | first", false),
            ("{'k': event.n, 'a': event.form, 'k': 2}", true),
            ("{'k': event.fields.visit, 'l': [event.f, none]}", true),
            ("{'k': event.missing}", false),
            ("{'k': 1}['k']", true),
            ("{'k': 1} if event.nothing else none", true),
            ("event.answers | selectattr('q', 'eq', 'y') | list", true),
            (
                "event.answers | selectattr('q', 'eq', 'y') | map(attribute='v') | first",
                true,
            ),
            (
                "event.answers | selectattr('q', 'equalto', 'z') | map(attribute='v') | first | default(0)",
                true,
            ),
            (
                "event.answers | selectattr('q', 'eq', 'x') | map(attribute='missing') | list",
                true,
            ),
            ("event.answers | map(attribute='v') | list", true),
            (
                "event.answers | map(attribute='q') | map('first') | list",
                true,
            ),
            (
                "event.answers | map(attribute='v') | map('first') | list",
                false,
            ),
            (
                "event.answers | map(attribute='missing') | map('first') | list",
                false,
            ),
            ("event.list | selectattr('k', 'eq', 'v') | list", false),
            ("event.tags | list", true),
            ("event.form | list", false),
            ("event.fields | list", false),
            ("event.missing | list", false),
            (
                "coalesce(event.answers | selectattr('q', 'eq', 'y') | map(attribute='v') | first)",
                true,
            ),
            (
                "coalesce(event.answers | selectattr('q', 'eq', 'w') | map(attribute='v') | first)",
                true,
            ),
            ("lookup(places, event.fields.visit.place)", true),
            ("lookup(places, 'nowhere')", false),
            ("lookup(places, 'nowhere', 'x')", true),
            ("lookup(places, 'nowhere', none)", false),
            ("lookup(places, event.nothing, 'x')", true),
            (
                "coalesce(event.missing, event.nothing, event.empty, event.form)",
                true,
            ),
            ("coalesce(event.missing)", true),
            ("coalesce(event.missing.deeper)", false),
            ("date(event.day)", false),
            ("(event.n ~ '') | number", true),
            ("event.n + 1", false),
            ("range(3)", false),
            ("item", false),
            ("event.tags | first", true),
            ("{'a': 1}", true),
            ("event.n * 12 if event.nothing else event.n", true),
            ("event.n * 12 if event.yes else event.n", false),
        ];
        for (src, direct) in cases {
            let e = Expr::compile(src, "f".into(), 1).expect(src);
            let d = Direct::compile(src).and_then(|d| d.eval(&scope));
            let vm = e.eval_vm(&scope);
            assert_eq!(d.is_some(), *direct, "{src}: direct {d:?}, vm {vm:?}");
            if let Some(d) = d {
                let vm = vm.unwrap_or_else(|f| panic!("{src}: VM fails: {}", f.message));
                assert_eq!(d, vm, "{src}");
                assert_eq!(d.kind(), vm.kind(), "{src}");
                assert_eq!(d.to_string(), vm.to_string(), "{src}");
                assert_eq!(
                    crate::json::from_value(&d),
                    crate::json::from_value(&vm),
                    "{src}"
                );
            }
            // Through `Expr::eval`: the same value, or the same error.
            match (e.eval(&scope), e.eval_vm(&scope)) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{src}"),
                (Err(a), Err(b)) => assert_eq!(a.message, b.message, "{src}"),
                (a, b) => panic!("{src}: {a:?} vs {b:?}"),
            }
        }
    }

    /// Any JSON: nulls, booleans, numbers (whole, fractional), text
    /// (numeric, dates, blank), lists and objects nested.
    fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            (-1000i64..1000).prop_map(J::from),
            (-1e6f64..1e6).prop_map(J::from),
            "[a-z0-9 ]{0,8}".prop_map(J::String),
            "-?[0-9]{1,4}(\\.[0-9]{1,2})?".prop_map(J::String),
            "20[0-9]{2}-(0[1-9]|1[0-2])-[0-2][0-9](T[01][0-9]:[0-5][0-9]:00(Z|\\+03:00))?"
                .prop_map(J::String),
            Just(J::String(String::new())),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
                prop::collection::vec(("[a-z_]{1,6}", inner), 0..4)
                    .prop_map(|kv| J::Object(kv.into_iter().collect())),
            ]
        })
    }

    /// Replaces the value `path` leads to (object keys and list items
    /// chosen by index) with `with`.
    fn mutate(v: &mut serde_json::Value, path: &[usize], with: serde_json::Value) {
        let Some((&first, rest)) = path.split_first() else {
            *v = with;
            return;
        };
        match v {
            serde_json::Value::Object(map) if !map.is_empty() => {
                let n = map.len();
                if let Some(child) = map.values_mut().nth(first % n) {
                    mutate(child, rest, with);
                }
            }
            serde_json::Value::Array(items) if !items.is_empty() => {
                let n = items.len();
                if let Some(child) = items.get_mut(first % n) {
                    mutate(child, rest, with);
                }
            }
            _ => *v = with,
        }
    }

    /// Every shipped pack loads (running its test cases) and maps its
    /// fixtures, and fixtures with one value anywhere replaced by any
    /// JSON, each direct evaluation checked against the VM's
    /// ([`check_against_vm`]).
    #[test]
    fn packs_evaluate_directly_as_the_vm_does() {
        use crate::mapping::{Event, LoadOptions, MappingSet};
        use proptest::test_runner::{Config, TestRunner};

        let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("packs");
        let mut dirs: Vec<_> = std::fs::read_dir(&packs)
            .expect("packs")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        assert!(dirs.len() >= 6, "{dirs:?}");
        for dir in dirs {
            let options = LoadOptions {
                pseudonym_key: Some(crate::expr::PseudonymKey::for_tests()),
                ..LoadOptions::default()
            };
            let set = MappingSet::load_dir(&dir, options).expect("pack loads");
            let source = set.mappings().first().expect("a mapping").source.clone();
            let fixtures: Vec<serde_json::Value> = std::fs::read_dir(dir.join("fixtures"))
                .expect("fixtures")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| x == "json")
                        && !p.to_string_lossy().ends_with(".expected.json")
                })
                .map(|p| serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json"))
                .collect();
            let map = |payload: serde_json::Value| {
                let _ = set.map(&Event {
                    source: source.clone(),
                    message_id: Some("m".into()),
                    payload: Arc::new(payload),
                });
            };
            for f in &fixtures {
                map(f.clone());
            }
            let mut runner = TestRunner::new(Config {
                cases: 256,
                ..Config::default()
            });
            let strategy = (
                0..fixtures.len(),
                prop::collection::vec(any::<usize>(), 1..6),
                arb_json(),
            );
            runner
                .run(&strategy, |(i, path, with)| {
                    let mut payload = fixtures[i].clone();
                    mutate(&mut payload, &path, with);
                    map(payload);
                    Ok(())
                })
                .expect("direct and VM agree");
        }
    }

    #[test]
    fn shapes_left_to_the_vm() {
        for src in [
            "event.n * 12",
            "-event.n",
            "event.a < event.b < event.c",
            "event.x if event.y",
            "event.list[1:2]",
            "event.x | replace('a', 'b')",
            "pseudonym(event.x)",
            "fail('no')",
            "event.x is string",
            "event.x | lower",
        ] {
            assert!(Direct::compile(src).is_none(), "{src}");
        }
    }

    /// A binding named like a function whose value is undefined (a
    /// `let` of a field the event lacks) is what the VM calls, and fails
    /// on ("value of type undefined is not callable"); the direct path
    /// called the function and answered. The tests on what the binding
    /// holds read it as undefined in both.
    #[test]
    fn an_undefined_binding_named_like_a_function_is_left_to_the_vm() {
        let mut vars: HashMap<Arc<str>, Value> = HashMap::new();
        vars.insert(Arc::from("date"), Value::UNDEFINED);
        vars.insert(Arc::from("coalesce"), Value::UNDEFINED);
        let scope = Value::from_dyn_object(Scope::new(vars));
        for src in ["date('2024-01-02')", "coalesce(none, 'a')"] {
            let e = Expr::compile(src, "f".into(), 1).expect("compiles");
            assert_eq!(
                Direct::compile(src).and_then(|d| d.eval(&scope)),
                None,
                "{src}"
            );
            let vm = e.eval_vm(&scope).expect_err("not callable");
            assert!(vm.message.contains("not callable"), "{src}: {}", vm.message);
            let via_eval = e.eval(&scope).expect_err("fails as the VM does");
            assert_eq!(via_eval.message, vm.message, "{src}");
        }
        // As a filter, `date` is the function whatever is bound.
        assert_eq!(
            Direct::compile("'2024-01-02' | date").and_then(|d| d.eval(&scope)),
            Some(Value::from("2024-01-02"))
        );
        // An unbound name is the function.
        let empty = Value::from_dyn_object(Scope::new(HashMap::new()));
        assert_eq!(
            Direct::compile("date('2024-01-02')").and_then(|d| d.eval(&empty)),
            Some(Value::from("2024-01-02"))
        );
    }

    /// `x | default(y)` with `x` defined: the VM still works out `y` (a
    /// filter's arguments come first) and fails when `y` does; the
    /// direct path skipped `y` and answered `x`. It now evaluates `y`
    /// too, and leaves the expression to the VM where `y` needs it.
    #[test]
    fn default_evaluates_its_fallback_even_when_unused() {
        let scope = event_scope(serde_json::json!({ "x": "kept", "space": " " }));
        for src in [
            "event.x | default(event.space | map('first') | number)",
            "event.x | default(fail('never used, still run'))",
            "event.x | default(event.missing.deeper)",
            "true | default(event.space | map('first') | number)",
        ] {
            let e = Expr::compile(src, "f".into(), 1).expect("compiles");
            assert_eq!(
                Direct::compile(src).and_then(|d| d.eval(&scope)),
                None,
                "{src}"
            );
            let vm = e.eval_vm(&scope).expect_err("the fallback fails");
            let via_eval = e.eval(&scope).expect_err("fails as the VM does");
            assert_eq!(via_eval.message, vm.message, "{src}");
        }
        // A fallback that can be worked out: the value, directly.
        let src = "event.x | default(event.space ~ '!')";
        let d = Direct::compile(src).and_then(|d| d.eval(&scope));
        assert_eq!(d, Some(Value::from("kept")));
        let e = Expr::compile(src, "f".into(), 1).expect("compiles");
        assert_eq!(e.eval_vm(&scope).expect("VM"), Value::from("kept"));
    }

    /// A scope whose event is `payload`.
    fn event_scope(payload: serde_json::Value) -> Value {
        let mut vars: HashMap<Arc<str>, Value> = HashMap::new();
        vars.insert(Arc::from("event"), crate::json::lazy(Arc::new(payload)));
        Value::from_dyn_object(Scope::new(vars))
    }

    /// `map('first')` over a list of long texts: the VM charges each
    /// item's text (it calls `first` on it as a filter), so a list of 100
    /// texts of 40 000 bytes runs it out of fuel. The direct evaluation
    /// counted the items but not their text and answered `['x', ...]`
    /// where the VM fails; it now leaves such a list to the VM, and the
    /// expression fails as the VM says.
    #[test]
    fn map_first_over_long_texts_is_left_to_the_vm() {
        let src = "event.l | map('first') | list";
        let e = Expr::compile(src, "f".into(), 1).expect("compiles");
        let d = Direct::compile(src).expect("direct shape");

        let scope = event_scope(serde_json::json!({ "l": vec!["x".repeat(40_000); 100] }));
        let vm = e.eval_vm(&scope).expect_err("the VM runs out of fuel");
        assert!(vm.message.contains("ran out of fuel"), "{}", vm.message);
        assert_eq!(d.eval(&scope), None);
        let via_eval = e.eval(&scope).expect_err("fails as the VM does");
        assert_eq!(via_eval.message, vm.message);

        // Short texts are still evaluated directly, as the VM does.
        let scope = event_scope(serde_json::json!({ "l": ["ab", "😀c", ""] }));
        let direct = d.eval(&scope).expect("evaluated directly");
        let first = |s: &str| Value::from(s);
        let expected = Value::from(vec![first("a"), first("😀"), Value::UNDEFINED]);
        assert_eq!(direct, expected);
        assert_eq!(direct.to_string(), "['a', '😀', undefined]");
        assert_eq!(e.eval_vm(&scope).expect("VM"), direct);
    }

    #[test]
    fn long_text_is_left_to_the_vm() {
        let long = "x".repeat(usize::try_from(BUDGET).unwrap_or(usize::MAX) / 4);
        let mut vars: HashMap<Arc<str>, Value> = HashMap::new();
        vars.insert(Arc::from("long"), Value::from(long.as_str()));
        let scope = Value::from_dyn_object(Scope::new(vars));
        let d = Direct::compile("long ~ long").expect("direct shape");
        assert!(d.eval(&scope).is_none());
        let d = Direct::compile("'y' ~ 'z'").expect("direct shape");
        assert_eq!(d.eval(&scope), Some(Value::from("yz")));
    }
    /// A payload of hostile values: numbers at the edges, text with
    /// astral and combining characters, keys that look like numbers,
    /// lists of non-maps, maps with missing and null paths, dates at the
    /// calendar's edges; the names [`hostile_names`] lists.
    fn hostile_payload() -> serde_json::Value {
        serde_json::json!({
            "imax": i64::MAX, "imin": i64::MIN, "umax": u64::MAX, "big": 1e308,
            "tiny": 5e-324, "negz": -0.0, "zero": 0, "fz": 0.0, "one": 1, "onef": 1.0,
            "t": true, "f": false, "none": null, "s": "", "space": " ",
            "astral": "😀x", "comb": "e\u{301}", "num": "1", "numf": "1.0", "nan": "NaN",
            "repl": "\u{fffd}", "nul": "\u{0}",
            "empty_list": [], "empty_map": {},
            "mixed": [1, "1", true, null, [1], {"q": 1}, 1.0, -0.0],
            "nomaps": ["a", 1, null, ""],
            "rows": [{"q": "y", "v": 1}, {"v": 2}, {"q": null, "v": 3}, {"q": "y", "v": null}],
            "numkeys": {"0": "zero", "1": "one", "-1": "m", "": "blank"},
            "nested": [[1, 2], [], ["x"], [[]]],
            "maps_of_lists": [{"q": [1]}, {"q": [1]}, {"q": []}],
            "deep": {"a": {"b": {"c": null}}},
            "day0": "0000-01-01", "day9": "9999-12-31T23:59:59-12:00",
            "msbig": 253_402_300_799_999i64, "msneg": -62_135_596_800_001i64,
            "feb": "2024-02-29", "leap": "2100-02-29", "pad": " 2024-03-05 ",
            "fr": "05/03/2024",
        })
    }

    /// The payload keys of [`hostile_payload`], and one it lacks.
    fn hostile_names() -> Vec<String> {
        let payload = hostile_payload();
        let mut names: Vec<String> = payload
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        names.push("missing".into());
        names
    }

    /// `src` gives the same through [`Expr::eval`] (direct where it can,
    /// each direct value checked by [`check_against_vm`]) as through the
    /// VM alone: the same value (kind, text, JSON) or the same error
    /// message. Returns whether the direct evaluation answered.
    fn same_as_vm(src: &str, scope: &Value) -> bool {
        let e = Expr::compile(src, "f".into(), 1).expect(src);
        let direct = e.eval_without_vm(scope).is_some();
        match (e.eval(scope), e.eval_vm(scope)) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{src}");
                assert_eq!(a.kind(), b.kind(), "{src}");
                assert_eq!(a.to_string(), b.to_string(), "{src}");
                assert_eq!(
                    crate::json::from_value(&a),
                    crate::json::from_value(&b),
                    "{src}"
                );
            }
            (Err(a), Err(b)) => assert_eq!(a.message, b.message, "{src}"),
            (a, b) => panic!("{src}: {a:?} vs {b:?}"),
        }
        direct
    }

    /// Every shape the direct path covers, on every hostile value (and on
    /// every pair of them for the operators): the result or error is the
    /// VM's. Deterministic (no random input); about 17 000 expressions.
    #[test]
    fn hostile_values_evaluate_as_the_vm_does() {
        let scope = event_scope(hostile_payload());
        let names = hostile_names();
        let unary = [
            "event.{a} ~ 'x'",
            "none ~ event.{a}",
            "event.{a} | default('d')",
            "event.{a} | default(none)",
            "event.{a} | default",
            "event.{a}.x | default('d')",
            "event.{a}.x is defined",
            "event.{a}['x'] is defined",
            "event.{a} | first",
            "(event.{a} | first) is defined",
            "event.{a} | first | default('z')",
            "event.{a} | length",
            "event.{a} | count",
            "event.{a} | list",
            "event.{a} is none",
            "event.{a} is not none",
            "event.{a} is mapping",
            "event.{a} is defined",
            "event.{a} is undefined",
            "not event.{a}",
            "event.{a} or 'o'",
            "event.{a} and 'o'",
            "'y' if event.{a} else 'n'",
            "event.{a} if event.t else 'n'",
            "event.{a} | selectattr('q', 'eq', 'y') | list",
            "event.{a} | selectattr('q', 'eq', none) | list",
            "event.{a} | selectattr('q', 'eq', [1]) | list",
            "event.{a} | selectattr('0', 'eq', 1) | list",
            "event.{a} | map(attribute='q') | list",
            "event.{a} | map(attribute='0') | list",
            "event.{a} | map('first') | list",
            "event.rows | selectattr('q', 'eq', event.{a}) | map(attribute='v') | list",
            "event.{a}[0]",
            "event.{a}['0']",
            "event.{a}[-1]",
            "event.{a}[1.0]",
            "event.{a}.0",
            "'1' in event.{a}",
            "1 in event.{a}",
            "none in event.{a}",
            "'' in event.{a}",
            "event.{a} in ['1', 1, none, true, '']",
            "event.{a} not in event.mixed",
            "event.{a} | number",
            "event.{a} | squish",
            "event.{a} | digits",
            "coalesce(event.{a})",
            "coalesce(event.missing, event.{a}, 'c')",
            "[event.{a}] | first",
            "[event.{a}, event.{a}] | length",
            "{'k': event.{a}}",
            "{event.{a}: 1}",
            "{'k': event.{a}}['k']",
            "uuid5(event.{a})",
            "event.{a} | uuid5(namespace=event.{a})",
            "event.{a} | date",
            "event.{a} | datetime",
            "event.{a} | date(bogus=1)",
            "event.{a} | date(offset='+14:00')",
            "event.{a} | datetime(offset='-12:00')",
            "event.{a} | date(format='%d/%m/%Y')",
            "age(event.{a}, '2025-06-01', unit='months')",
            "age('2020-01-01', event.{a}, unit='days')",
            "event.{a} | age(event.{a})",
            "event.{a} | period('Monthly')",
            "event.{a} | period('Weekly')",
            "period('2024-01-01', event.{a})",
            "lookup(event.{a}, 'x', 'd')",
        ];
        let binary = ["==", "!=", "<", "<=", ">", ">=", "in", "~", "and", "or"];
        let (mut total, mut direct) = (0, 0);
        for a in &names {
            for t in unary {
                let src = t.replace("{a}", a);
                total += 1;
                direct += usize::from(same_as_vm(&src, &scope));
            }
            for b in &names {
                for op in binary {
                    total += 1;
                    direct += usize::from(same_as_vm(&format!("event.{a} {op} event.{b}"), &scope));
                }
            }
        }
        // The direct path answers a good share (it is what is tested).
        assert!(direct * 3 > total, "{direct} of {total} evaluated directly");
    }

    /// Lists and texts around the size where the direct path's budget
    /// leaves them to the VM (and where the VM's fuel runs out): either
    /// path gives the same value or error.
    #[test]
    fn sizes_near_the_budget_evaluate_as_the_vm_does() {
        let budget = usize::try_from(BUDGET).unwrap_or(usize::MAX);
        let (item, slot) = (
            usize::try_from(ITEM_COST).unwrap_or(1),
            usize::try_from(ITEM_COST + NODE_COST).unwrap_or(1),
        );
        let byte = usize::try_from(BYTE_COST).unwrap_or(1);
        let mut lengths = vec![budget / item, budget / slot, 50_000, 100_000];
        lengths.extend([budget / item, budget / slot].map(|n| n + 8));
        lengths.extend([budget / item, budget / slot].map(|n| n - 8));
        for n in lengths {
            let rows: Vec<serde_json::Value> = (0..n)
                .map(|i| serde_json::json!({"q": if i % 7 == 0 { "y" } else { "n" }, "v": i}))
                .collect();
            let scope = event_scope(serde_json::json!({
                "ints": (0..n).collect::<Vec<usize>>(),
                "texts": vec!["ab"; n],
                "rows": rows,
            }));
            let last = format!("{} in event.ints", n - 1);
            for src in [
                "-1 in event.ints",
                last.as_str(),
                "event.ints | list | length",
                "event.texts | map('first') | list | length",
                "event.rows | selectattr('q', 'eq', 'y') | map(attribute='v') | list | length",
                "event.rows | map(attribute='q') | list | length",
                "event.ints | length",
                "event.ints | first",
            ] {
                same_as_vm(src, &scope);
            }
        }
        for len in [
            budget / byte / 2 - 8,
            budget / byte / 2 + 8,
            budget / byte + 8,
        ] {
            let scope = event_scope(
                serde_json::json!({ "s": "é".repeat(len / 2), "l": ["x".repeat(len)] }),
            );
            for src in [
                "event.s ~ event.s",
                "event.s | length",
                "'x' in event.s",
                "event.s | first",
                "event.s | squish | length",
                "event.l | map('first') | list",
                "event.l[0] | length",
                "event.s == event.s",
            ] {
                same_as_vm(src, &scope);
            }
        }
    }
    /// A random expression of the shapes the direct path covers, nested
    /// up to `depth`, over the hostile payload's names; `next` is the
    /// random source.
    fn random_expr(next: &mut dyn FnMut(usize) -> usize, names: &[String], depth: u32) -> String {
        const ATOMS: &[&str] = &[
            "'x'",
            "''",
            "'1'",
            "1",
            "0",
            "-1",
            "1.5",
            "none",
            "true",
            "false",
            "[]",
            "[1, '1', none]",
            "{'q': 'y'}",
            "['a', 'b']",
        ];
        if depth == 0 || next(4) == 0 {
            return match next(3) {
                0 => ATOMS[next(ATOMS.len())].to_owned(),
                _ => format!("event.{}", names[next(names.len())]),
            };
        }
        let sub = |next: &mut dyn FnMut(usize) -> usize| random_expr(next, names, depth - 1);
        let a = sub(&mut *next);
        let b = sub(&mut *next);
        match next(40) {
            24 => format!("({a})[0]"),
            25 => format!("({a})['q']"),
            26 => format!("({a}).q"),
            27 => format!("({a}) | date"),
            28 => format!("({a}) | datetime(offset='+03:00')"),
            29 => format!("age({a}, {b}, unit='days')"),
            30 => format!("({a}) | period('Weekly')"),
            31 => format!("lookup(places, {a}, {b})"),
            32 => format!("uuid5({a})"),
            33 => format!("({a}) | squish"),
            34 => format!("({a}) | digits"),
            35 => format!("({a}) | map(attribute='q.0')"),
            36 => format!("({a}) | selectattr('0', 'equalto', {b}) | list"),
            37 => format!("({a}) not in ({b})"),
            38 => format!("({a}) is not none"),
            39 => format!("lookup(places, {a})"),
            0 => format!("({a}) == ({b})"),
            1 => format!("({a}) != ({b})"),
            2 => format!("({a}) < ({b})"),
            3 => format!("({a}) >= ({b})"),
            4 => format!("({a}) in ({b})"),
            5 => format!("({a}) ~ ({b})"),
            6 => format!("({a}) and ({b})"),
            7 => format!("({a}) or ({b})"),
            8 => format!("({a}) if ({b}) else ({})", sub(&mut *next)),
            9 => format!("not ({a})"),
            10 => format!("({a}) is none"),
            11 => format!("({a}) is defined"),
            12 => format!("({a}) is mapping"),
            13 => format!("({a}) | default({b})"),
            14 => format!("({a}) | first"),
            15 => format!("({a}) | length"),
            16 => format!("({a}) | list"),
            17 => format!("({a}) | selectattr('q', 'eq', {b})"),
            18 => format!("({a}) | map(attribute='q')"),
            19 => format!("({a}) | map('first')"),
            20 => format!("coalesce({a}, {b})"),
            21 => format!("({a}) | number"),
            22 => format!("[{a}, {b}]"),
            _ => format!("{{'k': {a}}}"),
        }
    }

    /// Random nestings of the covered shapes, Kiungo's functions, tables
    /// and bindings named like functions (deterministic seed, 4 000
    /// expressions) on the hostile payload: each gives the VM's value or
    /// error, whichever path runs. (Run locally with 250 000 expressions
    /// and other seeds: no difference.)
    #[test]
    fn random_nestings_on_hostile_values_evaluate_as_the_vm_does() {
        // The hostile payload, a table, and bindings named like
        // functions (one undefined, one text) that calls must respect.
        let mut vars: HashMap<Arc<str>, Value> = HashMap::new();
        let payload = Arc::new(hostile_payload());
        vars.insert(Arc::from("event"), crate::json::lazy(payload));
        let rows = [("1", "one"), ("x", "X"), ("", "blank")];
        vars.insert(Arc::from("places"), Table::for_tests("places", &rows));
        vars.insert(Arc::from("squish"), Value::UNDEFINED);
        vars.insert(Arc::from("uuid5"), Value::from("bound"));
        let scope = Value::from_dyn_object(Scope::new(vars));
        let names = hostile_names();
        let mut state: u64 = 0x4b69_756e_676f_2121;
        let mut next = |k: usize| {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let r = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33;
            usize::try_from(r).unwrap_or(0) % k.max(1)
        };
        let (mut total, mut direct) = (0, 0);
        for _ in 0..4_000 {
            let src = random_expr(&mut next, &names, 3);
            if Expr::compile(&src, "f".into(), 1).is_err() {
                continue;
            }
            total += 1;
            direct += usize::from(same_as_vm(&src, &scope));
        }
        assert!(total > 3_000, "{total} expressions compile");
        assert!(direct * 5 > total, "{direct} of {total} evaluated directly");
    }
}
