//! Direct evaluation of the common expression shapes, without minijinja's
//! VM: names and attribute paths, literals, `~`, comparisons, `in`,
//! `and`/`or`/`not`, `x if c else y`, the tests `none` and `defined`, the
//! filter `default`, and Kiungo's own value functions (`lookup`,
//! `coalesce`, `date`, ...).
//!
//! The expression is read by minijinja's own parser, so precedence is the
//! VM's; each operation is minijinja's own ([`Value`]'s comparisons,
//! display and truth) or Kiungo's function itself. Anything else, and
//! anything unusual at evaluation (an undefined value where the VM would
//! fail, an error, a value too large for the fuel bound), gives `None`:
//! the caller then runs the compiled expression, which says what it says.

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
    /// `x | default` or `x | default(y)`.
    Default(Box<Node>, Option<Box<Node>>),
    /// A filter applying one of Kiungo's functions to its operand alone.
    Filter(crate::functions::Direct, Box<Node>),
    /// A call of one of Kiungo's functions, named as written (a binding
    /// of that name would shadow it).
    Call(crate::functions::Direct, Box<str>, Vec<Node>),
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
        convert(&expr, &mut nodes).map(Self)
    }

    /// The expression's value in `scope`, or `None` when the VM is to
    /// evaluate it (it then gives the same value, or the error).
    pub(crate) fn eval(&self, scope: &Value) -> Option<Value> {
        let mut spent = 0;
        let value = eval(&self.0, scope, &mut spent)?;
        (!value.is_undefined()).then_some(value)
    }
}

fn boxed(e: &ast::Expr<'_>, nodes: &mut usize) -> Option<Box<Node>> {
    convert(e, nodes).map(Box::new)
}

/// The positional arguments alone; `None` with keyword or splat arguments.
fn positional<'a, 'b>(args: &'b [ast::CallArg<'a>]) -> Option<Vec<&'b ast::Expr<'a>>> {
    args.iter()
        .map(|a| match a {
            ast::CallArg::Pos(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn convert(e: &ast::Expr<'_>, nodes: &mut usize) -> Option<Node> {
    *nodes += 1;
    if *nodes > MAX_NODES {
        return None;
    }
    Some(match e {
        ast::Expr::Var(v) => Node::Var(Box::from(v.id)),
        ast::Expr::Const(c) => Node::Const(c.value.clone()),
        ast::Expr::GetAttr(g) => Node::Attr(boxed(&g.expr, nodes)?, Box::from(g.name)),
        ast::Expr::GetItem(g) => match &g.subscript_expr {
            ast::Expr::Const(c)
                if matches!(c.value.kind(), ValueKind::String | ValueKind::Number) =>
            {
                Node::Item(boxed(&g.expr, nodes)?, c.value.clone())
            }
            _ => return None,
        },
        ast::Expr::List(l) => Node::List(
            l.items
                .iter()
                .map(|i| convert(i, nodes))
                .collect::<Option<_>>()?,
        ),
        ast::Expr::BinOp(b) => {
            let (l, r) = (boxed(&b.left, nodes)?, boxed(&b.right, nodes)?);
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
                _ => return None,
            }
        }
        ast::Expr::UnaryOp(u) => match u.op {
            ast::UnaryOpKind::Not => Node::Not(boxed(&u.expr, nodes)?),
            ast::UnaryOpKind::Neg => return None,
        },
        ast::Expr::IfExpr(i) => Node::If(
            boxed(&i.true_expr, nodes)?,
            boxed(&i.test_expr, nodes)?,
            boxed(i.false_expr.as_ref()?, nodes)?,
        ),
        ast::Expr::Test(t) if t.args.is_empty() => {
            let operand = boxed(&t.expr, nodes)?;
            match t.name {
                "none" => Node::IsNone(operand),
                "defined" => Node::IsDefined(operand),
                "undefined" => Node::Not(Box::new(Node::IsDefined(operand))),
                _ => return None,
            }
        }
        ast::Expr::Filter(f) => {
            let operand = boxed(f.expr.as_ref()?, nodes)?;
            let args = positional(&f.args)?;
            if f.name == "default" {
                match args.as_slice() {
                    [] => Node::Default(operand, None),
                    [other] => Node::Default(operand, Some(boxed(other, nodes)?)),
                    _ => return None,
                }
            } else {
                let func = crate::functions::Direct::filter(f.name)?;
                if !args.is_empty() {
                    return None;
                }
                Node::Filter(func, operand)
            }
        }
        ast::Expr::Call(c) => {
            let ast::Expr::Var(name) = &c.expr else {
                return None;
            };
            let args = positional(&c.args)?;
            let func = crate::functions::Direct::function(name.id, args.len())?;
            Node::Call(
                func,
                Box::from(name.id),
                args.into_iter()
                    .map(|a| convert(a, nodes))
                    .collect::<Option<_>>()?,
            )
        }
        _ => return None,
    })
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
            if v.is_undefined() {
                match other {
                    Some(o) => defined(eval(o, scope, spent)?)?,
                    None => Value::from(""),
                }
            } else {
                v
            }
        }
        Node::Filter(func, v) => {
            let v = defined(eval(v, scope, spent)?)?;
            func.call(std::slice::from_ref(&v))?
        }
        Node::Call(func, name, args) => {
            // A binding of the same name is what the VM would call.
            if !scope.get_attr(name).ok()?.is_undefined() {
                return None;
            }
            let args = args
                .iter()
                .map(|a| {
                    let v = eval(a, scope, spent)?;
                    // `coalesce` is the one function made for undefined
                    // arguments.
                    if func.takes_undefined() {
                        Some(v)
                    } else {
                        defined(v)
                    }
                })
                .collect::<Option<Vec<Value>>>()?;
            func.call(&args)?
        }
    };
    charge(&value, spent)?;
    Some(value)
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
            ("event.day | date(offset='+01:00')", false),
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
            ("event.tags | first", false),
            ("{'a': 1}", false),
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
            "date(event.x, offset='+03:00')",
            "event.x is string",
        ] {
            assert!(Direct::compile(src).is_none(), "{src}");
        }
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
}
