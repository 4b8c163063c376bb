//! Rules that run the same `for_each` with the same `let` bindings (a
//! resource and the DHIS2 count of it, two age bands over one list) get
//! the same values for them, item by item: a rule's bindings read only
//! the event, the mapping's bindings, its item and its own earlier
//! bindings. Which rules share is decided once at load; an event's values
//! are worked out by the first rule of a group and reused by the others.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use minijinja::Value;

use crate::expr::Expr;

/// The group of each rule, in the order given (`None`: shares with no
/// other rule), and the number of groups. `rules` gives each rule's
/// `for_each` and bindings.
pub(crate) fn assign<'a>(
    rules: impl Iterator<Item = (Option<&'a Expr>, &'a [(Arc<str>, Expr)])>,
) -> (Vec<Option<usize>>, usize) {
    type Key<'k> = (Option<&'k str>, Vec<(&'k str, &'k str)>);
    let rules: Vec<_> = rules.collect();
    // A rule's binding stays set for the rules after it, and one named
    // like a function (`lookup: item.code`) shadows the function there;
    // its name is no free variable, so loading lets a later rule call it.
    // A rule that reads such a name (other than its own earlier binding)
    // may get other values than the first rule of its group: it shares
    // with none.
    let bound: HashSet<&str> = rules
        .iter()
        .flat_map(|(_, lets)| lets.iter().map(|(n, _)| &**n))
        .collect();
    let reads_bound = |for_each: Option<&Expr>, lets: &[(Arc<str>, Expr)]| {
        let reads = |e: &Expr, own: &[(Arc<str>, Expr)]| {
            e.nested_variables().iter().any(|path| {
                let head = path.split('.').next().unwrap_or(path);
                bound.contains(head) && !own.iter().any(|(n, _)| &**n == head)
            })
        };
        for_each.is_some_and(|e| reads(e, &[]))
            || lets
                .iter()
                .enumerate()
                .any(|(i, (_, e))| reads(e, lets.get(..i).unwrap_or_default()))
    };
    let keys: Vec<Option<Key<'a>>> = rules
        .into_iter()
        .map(|(for_each, lets)| {
            (!lets.is_empty() && !reads_bound(for_each, lets)).then(|| {
                (
                    for_each.map(|e| &*e.source),
                    lets.iter().map(|(n, e)| (&**n, &*e.source)).collect(),
                )
            })
        })
        .collect();
    let mut count: HashMap<&Key<'a>, usize> = HashMap::new();
    for key in keys.iter().flatten() {
        *count.entry(key).or_default() += 1;
    }
    let mut ids: HashMap<&Key<'a>, usize> = HashMap::new();
    let groups = keys
        .iter()
        .map(|key| {
            let key = key
                .as_ref()
                .filter(|k| count.get(k).is_some_and(|n| *n > 1))?;
            let next = ids.len();
            Some(*ids.entry(key).or_insert(next))
        })
        .collect();
    (groups, ids.len())
}

/// One event's binding values, per group and item.
#[derive(Debug)]
pub(crate) struct SharedLets {
    /// Per group: the number of items and the values of each item worked
    /// out so far.
    slots: Vec<Option<(usize, Vec<Vec<Value>>)>>,
}

impl SharedLets {
    /// No values yet, for `groups` groups.
    pub(crate) fn new(groups: usize) -> Self {
        Self {
            slots: vec![None; groups],
        }
    }

    /// The values of item `index` of `items`, if another rule of `group`
    /// worked them all out.
    pub(crate) fn get(&self, group: Option<usize>, index: usize, items: usize) -> Option<&[Value]> {
        match self.slots.get(group?)? {
            Some((n, values)) if *n == items && values.len() == items => {
                values.get(index).map(Vec::as_slice)
            }
            _ => None,
        }
    }

    /// Keeps the values of item `index` of `items`, worked out in order.
    pub(crate) fn keep(&mut self, group: Option<usize>, index: usize, items: usize, v: &[Value]) {
        let Some(slot) = group.and_then(|g| self.slots.get_mut(g)) else {
            return;
        };
        match slot {
            None if index == 0 => *slot = Some((items, vec![v.to_vec()])),
            Some((n, values)) if *n == items && values.len() == index => values.push(v.to_vec()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(src: &str) -> Expr {
        Expr::compile(src, "f".into(), 1).expect("compiles")
    }

    #[test]
    fn rules_with_the_same_list_and_bindings_share() {
        let list = expr("members");
        let other = expr("others");
        let age = vec![(Arc::from("months"), expr("item.age * 12"))];
        let age2 = vec![(Arc::from("months"), expr("item.age * 12"))];
        let age3 = vec![(Arc::from("months"), expr("item.age * 12"))];
        let named = vec![(Arc::from("m"), expr("item.age * 12"))];
        let none: Vec<(Arc<str>, Expr)> = Vec::new();
        let rules = [
            (Some(&list), age.as_slice()),
            (Some(&list), none.as_slice()),
            (Some(&list), named.as_slice()),
            (Some(&other), age2.as_slice()),
            (Some(&list), age3.as_slice()),
        ];
        let (groups, n) = assign(rules.into_iter());
        assert_eq!(groups, vec![Some(0), None, None, None, Some(0)]);
        assert_eq!(n, 1);
    }

    /// A rule's binding named like a function (`lookup: item.k`) stays
    /// set for the rules after it and shadows the function there: two
    /// rules calling `lookup` in the same bindings, one before and one
    /// after it, may get other values (the second fails per event, text
    /// is not callable), so they share nothing. Rules whose bindings read
    /// only their own earlier bindings still share.
    #[test]
    fn rules_calling_a_function_another_rule_binds_share_nothing() {
        let list = expr("members");
        let call = || vec![(Arc::from("x"), expr("lookup(places, item.k, 'd')"))];
        let (a, b) = (call(), call());
        let shadow = vec![(Arc::from("lookup"), expr("item.k"))];
        let chain = || {
            vec![
                (Arc::from("lookup_k"), expr("item.k")),
                (Arc::from("y"), expr("lookup_k ~ '!'")),
            ]
        };
        let (c, d) = (chain(), chain());
        let rules = [
            (Some(&list), a.as_slice()),
            (Some(&list), shadow.as_slice()),
            (Some(&list), b.as_slice()),
            (Some(&list), c.as_slice()),
            (Some(&list), d.as_slice()),
        ];
        let (groups, n) = assign(rules.into_iter());
        assert_eq!(groups, vec![None, None, None, Some(0), Some(0)]);
        assert_eq!(n, 1);
    }

    #[test]
    fn values_are_given_once_all_items_are_kept() {
        let mut shared = SharedLets::new(1);
        let (a, b) = (vec![Value::from(1)], vec![Value::from(2)]);
        assert!(shared.get(Some(0), 0, 2).is_none());
        shared.keep(Some(0), 0, 2, &a);
        assert!(shared.get(Some(0), 0, 2).is_none());
        shared.keep(Some(0), 1, 2, &b);
        assert_eq!(shared.get(Some(0), 1, 2), Some(b.as_slice()));
        assert_eq!(shared.get(Some(0), 0, 2), Some(a.as_slice()));
        assert!(shared.get(Some(0), 0, 3).is_none());
        assert!(shared.get(None, 0, 2).is_none());
        // Kept again by a later rule: nothing changes.
        shared.keep(Some(0), 0, 2, &b);
        assert_eq!(shared.get(Some(0), 0, 2), Some(a.as_slice()));
    }
}
