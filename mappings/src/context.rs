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
#[derive(Debug, Default)]
pub(crate) struct Scope {
    vars: Mutex<HashMap<Arc<str>, Value>>,
}

impl Scope {
    /// A scope holding `vars`, wrapped as an expression value.
    pub(crate) fn new(vars: HashMap<Arc<str>, Value>) -> Arc<Self> {
        Arc::new(Self { vars: Mutex::new(vars) })
    }

    /// Adds or replaces one binding.
    pub(crate) fn set(&self, name: &str, value: Value) {
        if let Ok(mut vars) = self.vars.lock() {
            vars.insert(Arc::from(name), value);
        }
    }
}

impl Object for Scope {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        let key = key.as_str()?;
        self.vars.lock().ok()?.get(key).cloned()
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
