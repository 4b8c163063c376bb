//! Expressions: minijinja in expression mode, compiled once at load.
//!
//! One process-wide environment holds the functions and filters; it has no
//! template loader, undefined values are strict and every evaluation is
//! bounded by [`FUEL`]. Expressions are compiled when a mapping loads and
//! evaluated against a per-event [`crate::context::Scope`].

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use minijinja::{Environment, Expression, UndefinedBehavior, Value};

use crate::error::{EventValues, Failure, Refusal};

/// Instructions one evaluation may execute. A mapping expression needs tens;
/// this bound stops a runaway `range(10**9)` without limiting real mappings.
pub(crate) const FUEL: u64 = 50_000;

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    // `new()` brings the builtin filters, tests and globals and no loader:
    // expressions cannot include or import anything.
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(64);
    crate::functions::register(&mut env);
    env
});

static GLOBALS: LazyLock<HashSet<String>> =
    LazyLock::new(|| ENV.globals().map(|(name, _)| name.to_owned()).collect());

/// A compiled expression with where it came from.
pub(crate) struct Expr {
    compiled: Expression<'static, 'static>,
    /// The expression as written, for the static reading of DHIS2
    /// references ([`crate::static_refs`]).
    pub(crate) source: Arc<str>,
    /// Dotted path of the field in the mapping file.
    pub(crate) field: String,
    /// Line of the field in the mapping file.
    pub(crate) line: u64,
    /// For an expression that is a dotted path alone (`event.fields.visit`,
    /// `event_id`): its names, looked up attribute by attribute without
    /// starting minijinja's VM, which does the same lookups (most of a
    /// pack's expressions are such paths). Any name not found falls back
    /// to the compiled expression, so errors read as before.
    path: Option<Box<[Box<str>]>>,
    /// For another expression of a shape [`crate::direct`] evaluates
    /// (comparisons, `~`, `in`, tests, Kiungo's value functions, ...):
    /// that evaluation, which leaves anything unusual to the compiled
    /// expression.
    direct: Option<crate::direct::Direct>,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("field", &self.field)
            .field("line", &self.line)
            .finish()
    }
}

impl Expr {
    /// Compiles `source`; the error message is the parser's, with the
    /// position inside the expression.
    pub(crate) fn compile(source: &str, field: String, line: u64) -> Result<Self, String> {
        if source.trim().is_empty() {
            return Err("empty expression".into());
        }
        check_fail_calls(source)?;
        let compiled = ENV
            .compile_expression_owned(source.to_owned())
            .map_err(|e| full_text(&e))?;
        let path = dotted_path(source);
        let direct = match path {
            Some(_) => None,
            None => crate::direct::Direct::compile(source),
        };
        Ok(Self {
            compiled,
            path,
            direct,
            source: Arc::from(source),
            field,
            line,
        })
    }

    /// Names the expression reads that are neither functions nor locals.
    pub(crate) fn free_variables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .compiled
            .undeclared_variables(false)
            .into_iter()
            .filter(|n| !GLOBALS.contains(n))
            .collect();
        names.sort();
        names
    }

    /// Dotted paths the expression reads, e.g. `refs.patient`.
    pub(crate) fn nested_variables(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .compiled
            .undeclared_variables(true)
            .into_iter()
            .collect();
        names.sort();
        names
    }

    /// Evaluates against a scope.
    pub(crate) fn eval(&self, scope: &Value) -> Result<Value, Failure> {
        if let Some(value) = self.path.as_deref().and_then(|p| lookup(scope, p)) {
            return Ok(value);
        }
        if let Some(value) = self.direct.as_ref().and_then(|d| d.eval(scope)) {
            // Every unit test checks each direct value against the VM's.
            #[cfg(test)]
            crate::direct::check_against_vm(self, scope, &value);
            return Ok(value);
        }
        self.eval_vm(scope)
    }

    /// The value without minijinja's VM (the dotted-path lookup or the
    /// direct evaluation), `None` where it would be needed.
    pub(crate) fn eval_without_vm(&self, scope: &Value) -> Option<Value> {
        match &self.path {
            Some(p) => lookup(scope, p),
            None => self.direct.as_ref()?.eval(scope),
        }
    }

    /// Evaluates with minijinja's VM alone.
    pub(crate) fn eval_vm(&self, scope: &Value) -> Result<Value, Failure> {
        self.compiled.eval(scope.clone()).map_err(|err| {
            let undefined = err.kind() == minijinja::ErrorKind::UndefinedError;
            let mut failure = describe(err);
            if undefined && let Some(path) = self.first_undefined(scope) {
                // The path is the mapping author's text, not the event's.
                failure.message = format!("undefined value: {path}");
            }
            failure
        })
    }

    /// The first dotted path the expression reads that `scope` lacks,
    /// as `` `event.fields.anc_visitz` (`event.fields` has no key `anc_visitz`) ``.
    fn first_undefined(&self, scope: &Value) -> Option<String> {
        for path in self.nested_variables() {
            if path
                .split('.')
                .next()
                .is_some_and(|head| GLOBALS.contains(head))
            {
                continue;
            }
            let mut value = scope.clone();
            let mut walked: Vec<&str> = Vec::new();
            for segment in path.split('.') {
                let next = value.get_attr(segment).ok().filter(|v| !v.is_undefined());
                match next {
                    Some(v) => {
                        value = v;
                        walked.push(segment);
                    }
                    None if walked.is_empty() => {
                        return Some(format!("`{path}` (no name `{segment}`)"));
                    }
                    None => {
                        return Some(format!(
                            "`{path}` (`{}` has no key `{segment}`)",
                            walked.join(".")
                        ));
                    }
                }
            }
        }
        None
    }
}

/// The VM's value of `source` without variables (`None` when it fails).
pub(crate) fn eval_source(source: &str) -> Option<Value> {
    ENV.compile_expression(source).ok()?.eval(()).ok()
}

/// Names minijinja reads as literals or operators, never as variables.
const KEYWORDS: &[&str] = &[
    "true", "false", "none", "True", "False", "None", "and", "or", "not", "in", "is", "if", "else",
];

/// The names of `source` when it is a dotted path of plain names whose
/// first is neither a function nor a keyword; `None` otherwise.
fn dotted_path(source: &str) -> Option<Box<[Box<str>]>> {
    let names: Vec<&str> = source.trim().split('.').collect();
    let plain = |n: &&str| {
        let mut chars = n.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !KEYWORDS.contains(n)
    };
    if !names.iter().all(plain) || GLOBALS.contains(names[0]) {
        return None;
    }
    Some(names.into_iter().map(Box::from).collect())
}

/// Walks `path` from `scope` as minijinja's `a.b.c` does; `None` at the
/// first name that is not there (the compiled expression then says why).
fn lookup(scope: &Value, path: &[Box<str>]) -> Option<Value> {
    let mut value = scope.clone();
    for name in path {
        value = value.get_attr(name).ok().filter(|v| !v.is_undefined())?;
    }
    Some(value)
}

/// A minijinja error's whole text, for load errors: the expression is the
/// mapping author's, not an event's.
fn full_text(err: &minijinja::Error) -> String {
    let mut msg = match err.detail() {
        Some(detail) => format!("{}: {detail}", kind_text(err)),
        None => kind_text(err),
    };
    let mut source = std::error::Error::source(err);
    while let Some(inner) = source {
        msg.push_str(&format!(": {inner}"));
        source = inner.source();
    }
    msg
}

/// A readable one-line message from a minijinja error, made without the
/// event's values, and the values apart. Kiungo's own functions say what
/// they involve ([`EventValues`]); the text of minijinja's own errors is
/// cut by [`crate::redact::external`], the whole text kept for operators.
fn describe(err: minijinja::Error) -> Failure {
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        if let Some(Refusal(reason)) = inner.downcast_ref::<Refusal>() {
            return Failure {
                message: reason.clone(),
                values: Vec::new(),
                refused: true,
            };
        }
        source = inner.source();
    }
    let mut values = Vec::new();
    let mut ours = false;
    let mut others = String::new();
    let mut source = std::error::Error::source(&err);
    while let Some(inner) = source {
        match inner.downcast_ref::<EventValues>() {
            Some(v) => {
                ours = true;
                values.extend(v.0.iter().cloned());
            }
            None => others.push_str(&format!(": {inner}")),
        }
        source = inner.source();
    }
    let mut message = match err.detail() {
        Some(detail) if ours => format!("{}: {detail}", kind_text(&err)),
        Some(detail) => {
            let cut = crate::redact::external(detail);
            if cut != detail {
                values.push(detail.to_owned());
            }
            format!("{}: {cut}", kind_text(&err))
        }
        None => kind_text(&err),
    };
    if !others.is_empty() {
        let cut = crate::redact::external(&others);
        if cut != others {
            values.push(others.trim_start_matches(": ").to_owned());
        }
        message.push_str(&cut);
    }
    Failure {
        message,
        values,
        refused: false,
    }
}

/// Checks that every `fail` in an expression is called with one literal
/// string: its reason is parked and shown with the event, so it must be the
/// mapping author's text, never the event's values.
fn check_fail_calls(source: &str) -> Result<(), String> {
    const MSG: &str = "`fail` takes one literal reason, e.g. fail('no vaccine code'): \
                       reasons are shown with parked events, so never build them from event values";
    let bytes = source.as_bytes();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\'' || b == b'"' {
            i = skip_string(bytes, i);
            continue;
        }
        if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while bytes
                .get(i)
                .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
            {
                i += 1;
            }
            let word = source.get(start..i).unwrap_or_default();
            let after_dot = source
                .get(..start)
                .is_some_and(|s| s.trim_end().ends_with('.'));
            if word == "fail" && !after_dot {
                let rest = source.get(i..).unwrap_or_default().trim_start();
                let Some(args) = rest.strip_prefix('(') else {
                    return Err(MSG.into());
                };
                let args = args.trim_start();
                let q = args.as_bytes().first().copied();
                if !matches!(q, Some(b'\'' | b'"')) {
                    return Err(MSG.into());
                }
                let end = skip_string(args.as_bytes(), 0);
                let tail = args.get(end..).unwrap_or_default().trim_start();
                if !tail.starts_with(')') {
                    return Err(MSG.into());
                }
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// The index just past the string literal opening at `start`.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes.get(start).copied();
    let mut i = start + 1;
    while let Some(&c) = bytes.get(i) {
        if c == b'\\' {
            i += 2;
            continue;
        }
        i += 1;
        if Some(c) == quote {
            break;
        }
    }
    i
}

fn kind_text(err: &minijinja::Error) -> String {
    use minijinja::ErrorKind as K;
    match err.kind() {
        K::SyntaxError => "syntax error".into(),
        K::UndefinedError => "undefined value".into(),
        K::UnknownFunction => "unknown function".into(),
        K::UnknownFilter => "unknown filter".into(),
        K::UnknownTest => "unknown test".into(),
        K::UnknownMethod => "unknown method".into(),
        K::OutOfFuel => format!("evaluation ran out of fuel ({FUEL} steps)"),
        K::InvalidOperation => "invalid operation".into(),
        K::MissingArgument => "missing argument".into(),
        K::TooManyArguments => "too many arguments".into(),
        K::CannotDeserialize => "wrong argument type".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

/// The secret key for `pseudonym()`. It never prints.
#[derive(Clone)]
pub struct PseudonymKey(pub(crate) Arc<[u8]>);

impl PseudonymKey {
    /// The environment variable production deployments set.
    pub const ENV_VAR: &'static str = "KIUNGO_PSEUDONYM_KEY";

    /// A key from bytes (at least 16).
    pub fn new(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() < 16 {
            return Err(format!(
                "pseudonym key must be at least 16 bytes, got {}",
                bytes.len()
            ));
        }
        Ok(Self(Arc::from(bytes)))
    }

    /// The key from [`Self::ENV_VAR`], if set.
    pub fn from_env() -> Result<Option<Self>, String> {
        match std::env::var(Self::ENV_VAR) {
            Ok(v) => Self::new(v.as_bytes())
                .map(Some)
                .map_err(|e| format!("{}: {e}", Self::ENV_VAR)),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(e) => Err(format!("{}: {e}", Self::ENV_VAR)),
        }
    }

    /// The fixed key mapping test cases use, so that expected pseudonyms are
    /// the same on every machine. Never use it for real data.
    pub fn for_tests() -> Self {
        Self(Arc::from(&b"kiungo-test-pseudonym-key-not-secret"[..]))
    }
}

impl fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PseudonymKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_point_into_the_expression() {
        let err = Expr::compile("event.fields.(", "let.x".into(), 3).expect_err("bad");
        assert!(err.starts_with("syntax error"), "{err}");
    }

    #[test]
    fn free_variables_exclude_functions() {
        let e = Expr::compile(
            "uuid5(source ~ event.id) ~ visit_date | date",
            "f".into(),
            1,
        )
        .expect("compiles");
        assert_eq!(e.free_variables(), vec!["event", "source", "visit_date"]);
    }

    #[test]
    fn dotted_paths_read_what_the_compiled_expression_reads() {
        // The event as mappings read it (lazy JSON nodes).
        let scope = crate::json::lazy(Arc::new(serde_json::json!({
            "event_id": "e1",
            "event": {"fields": {"visit": {"n": 3, "none_here": null}}, "list": [1, 2]},
        })));
        for (src, path) in [
            ("event_id", true),
            ("event.fields.visit.n", true),
            (" event.fields.visit ", true),
            ("event.fields.visit.none_here", true),
            ("event.list", true),
            ("none", false),
            ("range", false),
            ("event.list[0]", false),
            ("event.fields.visit.n + 1", false),
        ] {
            let e = Expr::compile(src, "f".into(), 1).expect("compiles");
            assert_eq!(e.path.is_some(), path, "{src}");
            let vm = e.compiled.eval(scope.clone()).expect("vm");
            assert_eq!(e.eval(&scope).expect("eval"), vm, "{src}");
        }
        // A name not there: the compiled expression's error, as before.
        let e = Expr::compile("event.fields.visitz.n", "f".into(), 1).expect("compiles");
        let err = e.eval(&scope).expect_err("undefined");
        assert_eq!(
            err.message,
            "undefined value: `event.fields.visitz.n` (`event.fields` has no key `visitz`)"
        );
    }

    #[test]
    fn fuel_bounds_runaway_expressions() {
        let e =
            Expr::compile("range(100000) | map('string') | join", "f".into(), 1).expect("compiles");
        let err = e.eval(&Value::from(())).expect_err("out of fuel");
        assert!(err.message.contains("fuel"), "{err:?}");
    }

    #[test]
    fn key_never_prints() {
        assert_eq!(
            format!("{:?}", PseudonymKey::for_tests()),
            "PseudonymKey(<redacted>)"
        );
        assert!(PseudonymKey::new(b"short").is_err());
    }
}
