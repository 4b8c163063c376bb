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
    lets.iter()
        .map(|(name, e)| {
            if !e.free_variables().iter().all(|v| known.contains(v)) {
                return None;
            }
            let value = e.eval_without_vm(&scope)?;
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
}
