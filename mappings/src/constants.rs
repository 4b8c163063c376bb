//! A mapping's bindings that read nothing but its lookup tables (the rows
//! of every antigen a mapping handles, say) have the same value for every
//! event: they are evaluated once, at load.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use minijinja::Value;

use crate::context::Scope;
use crate::expr::Expr;

/// For each binding of `lets`, in order, its value when it reads only
/// `tables` and earlier such bindings, and the direct evaluation
/// ([`Expr::eval_without_vm`], Kiungo's own pure functions) gives it one;
/// `None` for the others, which are evaluated per event as before (an
/// error, too, is left to the event, which reports it as it always has).
pub(crate) fn of(lets: &[(Arc<str>, Expr)], tables: &[(Arc<str>, Value)]) -> Vec<Option<Value>> {
    let mut known: HashSet<String> = tables.iter().map(|(n, _)| n.to_string()).collect();
    let scope_obj = Scope::new(tables.iter().cloned().collect::<HashMap<_, _>>());
    let scope = Value::from_dyn_object(scope_obj.clone());
    // Bindings left to the event: one named like a function (`lookup`,
    // `date`) shadows it there, and the function's name is no free
    // variable, so a later call of it is not made a constant either.
    let mut per_event: HashSet<&str> = HashSet::new();
    lets.iter()
        .map(|(name, e)| {
            let shadowed = || {
                e.nested_variables()
                    .iter()
                    .any(|p| per_event.contains(p.split('.').next().unwrap_or(p)))
            };
            let value = if e.free_variables().iter().all(|v| known.contains(v)) && !shadowed() {
                e.eval_without_vm(&scope)
            } else {
                None
            };
            let Some(value) = value else {
                per_event.insert(name);
                return None;
            };
            scope_obj.set(name, value.clone());
            known.insert(name.to_string());
            Some(value)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(src: &str) -> Expr {
        Expr::compile(src, "f".into(), 1).expect("compiles")
    }

    #[test]
    fn bindings_of_tables_alone_are_constants() {
        let places = crate::table::Table::for_tests("places", &[("a", "A1"), ("b", "B1")]);
        let tables = vec![(Arc::from("places"), places)];
        let lets = vec![
            (
                Arc::from("both"),
                expr("{'a': lookup(places, 'a'), 'b': lookup(places, 'b')}"),
            ),
            (Arc::from("of_event"), expr("lookup(places, event.place)")),
            (Arc::from("a"), expr("both.a ~ '!'")),
            (Arc::from("missing"), expr("lookup(places, 'z')")),
            (Arc::from("after_missing"), expr("missing ~ '!'")),
            (Arc::from("after_event"), expr("of_event ~ '!'")),
            (Arc::from("vm"), expr("[1, 2] | map('string') | list")),
        ];
        let values = of(&lets, &tables);
        assert_eq!(values.len(), lets.len());
        let both = values[0].as_ref().expect("constant");
        assert_eq!(both.get_attr("b").expect("b").as_str(), Some("B1"));
        assert!(values[1].is_none());
        assert_eq!(values[2].as_ref().and_then(Value::as_str), Some("A1!"));
        assert!(values[3..].iter().all(Option::is_none), "{values:?}");
    }

    /// A binding named like one of Kiungo's functions (`lookup:
    /// event.f`) shadows the function for the bindings after it: per
    /// event the VM calls the binding (and fails, text is not callable).
    /// The function's name is no free variable (it is a global), so a
    /// later `lookup(places, 'a', 'd')` read as reading `places` alone
    /// and was made the constant `'A1'`, the event's failure lost.
    #[test]
    fn a_binding_named_like_a_function_shadows_it_for_later_bindings() {
        let places = crate::table::Table::for_tests("places", &[("a", "A1")]);
        let tables = vec![(Arc::from("places"), places.clone())];
        let call = expr("lookup(places, 'a', 'd')");
        let lets = vec![
            (Arc::from("lookup"), expr("event.f")),
            (Arc::from("place"), expr("lookup(places, 'a', 'd')")),
            (Arc::from("date"), expr("'x'")),
            (Arc::from("day"), expr("date('2024-01-02')")),
            (Arc::from("also_place"), expr("'>' ~ lookup(places, 'a')")),
        ];
        let values = of(&lets, &tables);
        assert!(values[0].is_none());
        assert!(values[1].is_none(), "{:?}", values[1]);
        assert_eq!(values[2].as_ref().and_then(Value::as_str), Some("x"));
        assert!(values[3].is_none(), "{:?}", values[3]);
        assert!(values[4].is_none(), "{:?}", values[4]);

        // What the event gives: the binding is called, and fails.
        let scope_obj = Scope::new(HashMap::from([
            (Arc::from("places"), places),
            (Arc::from("lookup"), Value::from("text from the event")),
        ]));
        let scope = Value::from_dyn_object(scope_obj);
        let failure = call.eval(&scope).expect_err("text is not callable");
        assert!(
            failure.message.contains("not callable"),
            "{}",
            failure.message
        );
    }
}
