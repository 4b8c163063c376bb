//! The per-event scope expressions evaluate against.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use minijinja::Value;
use minijinja::value::{Enumerator, Object};

use crate::expr::PseudonymKey;

/// Name of the hidden runtime object in every scope.
pub(crate) const RUNTIME: &str = "__kiungo";

/// Variables visible to one event's expressions. Bindings are added as the
/// event is mapped (`let`, then `event_id`, then `refs`), so that every
/// evaluation shares one scope instead of copying it.
///
/// A scope holds a few dozen names at most, so a vector scanned from the
/// newest binding beats a hash map here.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    vars: Mutex<Vec<(Arc<str>, Value)>>,
}

impl Scope {
    /// A scope holding `vars`, wrapped as an expression value.
    pub(crate) fn new(vars: HashMap<Arc<str>, Value>) -> Arc<Self> {
        Arc::new(Self {
            vars: Mutex::new(vars.into_iter().collect()),
        })
    }

    /// Adds or replaces one binding.
    pub(crate) fn set(&self, name: &Arc<str>, value: Value) {
        if let Ok(mut vars) = self.vars.lock() {
            match vars.iter_mut().find(|(k, _)| k == name) {
                Some(slot) => slot.1 = value,
                None => vars.push((name.clone(), value)),
            }
        }
    }
}

impl Object for Scope {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get_value_by_str(key.as_str()?)
    }

    /// Every name an expression reads comes here (minijinja's fast
    /// lookup), without making a key value first.
    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        let vars = self.vars.lock().ok()?;
        vars.iter()
            .rev()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| v.clone())
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}

/// Engine state that functions need and expressions must not see.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// Key for `pseudonym()`; `None` makes the function fail clearly.
    pub(crate) pseudonym_key: Option<PseudonymKey>,
}

impl Object for Runtime {
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}
