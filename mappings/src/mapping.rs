//! Loading mappings and applying them to events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use minijinja::Value;
use serde_saphyr::Spanned;

use crate::context::{RUNTIME, Runtime, Scope};
use crate::error::{Failure, LoadError, LoadErrors, MapError, TemplatePlace};
use crate::event_fields::EventRead;
use crate::expr::{Expr, PseudonymKey};
use crate::functions::KIUNGO_NS;
use crate::output::{
    Aggregation, DEFAULT_COMBO, Dhis2Contribution, FhirEntry, FhirRequest, MappedEvent,
};
use crate::period::{Calendar, PeriodType};
use crate::shared_lets::SharedLets;
use crate::spec::{Method, RawAssert, RawDhis2, RawFhir, RawMapping, RawNode, RawTable};
use crate::table::Table;
use crate::template::{self, Place, Tpl};
use crate::testcase::TestCase;

/// One event as it arrives from an app.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The source app (`cht`, `commcare`, `kobo`, ...): the queue, routing
    /// key or HTTP path it came in on.
    pub source: String,
    /// The transport's message id (AMQP `message_id`), if any.
    pub message_id: Option<String>,
    /// The app's payload, shared so that mapping never copies it.
    pub payload: Arc<serde_json::Value>,
}

static EVENT_ID: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("event_id"));
static REFS: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("refs"));

/// Names every scope defines before `let` bindings.
const BASE_VARS: [&str; 3] = ["event", "source", "message_id"];
/// Names defined once the event id and resource references are known.
const OUTPUT_VARS: [&str; 2] = ["event_id", "refs"];
/// Names a `for_each` rule defines: the item and its 0-based index.
const ITEM_VARS: [&str; 2] = ["item", "index"];
static ITEM: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("item"));
static INDEX: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("index"));

/// A loaded, checked mapping.
#[derive(Debug)]
pub struct Mapping {
    /// Unique id.
    pub id: String,
    /// Version.
    pub version: u32,
    /// Human description.
    pub description: String,
    /// Source app it applies to.
    pub source: String,
    /// File it was loaded from.
    pub file: PathBuf,
    match_: Option<Expr>,
    event_id: Option<Expr>,
    /// Whether `event_id` reads no `let` binding, so can be evaluated first.
    event_id_first: bool,
    replaces: Option<Expr>,
    pub(crate) lets: Vec<(Arc<str>, Expr)>,
    /// The value of each binding that reads only tables, worked out at
    /// load ([`crate::constants`]).
    let_constants: Vec<Option<Value>>,
    pub(crate) tables: Vec<(Arc<str>, Value)>,
    asserts: Vec<Assertion>,
    fhir: Vec<FhirRule>,
    pub(crate) dhis2: Vec<Dhis2Rule>,
    /// Groups of rules that share their bindings.
    let_groups: usize,
    pub(crate) tests: Vec<TestCase>,
    /// Every place an expression reads a field of the event.
    pub(crate) event_reads: Vec<EventRead>,
}

#[derive(Debug)]
struct FhirRule {
    name: String,
    /// `fhir[i]` (prefixed with the shared file for included rules).
    field: String,
    resource_type: String,
    line: u64,
    /// The shared file the rule comes from, if not the mapping file.
    origin: Option<PathBuf>,
    for_each: Option<Expr>,
    lets: Vec<(Arc<str>, Expr)>,
    /// The rules whose bindings this one shares ([`crate::shared_lets`]).
    let_group: Option<usize>,
    when: Option<Expr>,
    id: Option<Expr>,
    method: Method,
    if_none_exist: Option<Query>,
    template: Tpl,
    /// The FHIR check of the resources the template makes: its literal
    /// parts were checked at load.
    plan: kiungo_fhir_validate::Plan,
    /// Where each node of the template is, by [`kiungo_fhir_validate::Node::place`].
    places: Vec<Place>,
}

/// A conditional request's search query.
#[derive(Debug)]
enum Query {
    /// One expression giving the whole query; characters never valid in a
    /// query are encoded.
    Whole(Expr),
    /// Search parameters and the expressions of their values, each value
    /// URL-encoded.
    Params(Vec<(String, Expr)>),
}

#[derive(Debug)]
pub(crate) struct IdField {
    pub(crate) tpl: Tpl,
    pub(crate) field: String,
    pub(crate) line: u64,
    pub(crate) allow_default: bool,
}

#[derive(Debug)]
pub(crate) struct Dhis2Rule {
    pub(crate) name: String,
    pub(crate) field: String,
    pub(crate) line: u64,
    /// The shared file the rule comes from, if not the mapping file.
    pub(crate) origin: Option<PathBuf>,
    for_each: Option<Expr>,
    pub(crate) lets: Vec<(Arc<str>, Expr)>,
    /// The rules whose bindings this one shares ([`crate::shared_lets`]).
    let_group: Option<usize>,
    key: Option<Expr>,
    pub(crate) data_element: IdField,
    pub(crate) category_option_combo: IdField,
    pub(crate) attribute_option_combo: IdField,
    pub(crate) org_unit: IdField,
    pub(crate) period_type: PeriodType,
    period_date: Expr,
    value: Option<(Tpl, String, u64)>,
    aggregation: Aggregation,
    when: Option<Expr>,
}

/// A condition every event must meet.
#[derive(Debug)]
struct Assertion {
    that: Expr,
    message: String,
}

/// One item of a `for_each` rule (or the single pass of a plain rule).
#[derive(Clone)]
struct Item {
    index: usize,
    value: Value,
}

/// Problems collected while compiling one mapping and its shared files.
struct Problems<'a> {
    /// The file being compiled: the mapping's or a shared file's.
    file: &'a Path,
    /// Prefix of the fields of a shared file's parts (`x.shared.yaml:`),
    /// kept in runtime errors and cut from load errors, which name the
    /// file anyway.
    prefix: String,
    list: Vec<LoadError>,
    /// Every place an expression reads a field of the event, for
    /// [`MappingSet::check_event_fields`].
    reads: Vec<EventRead>,
}

impl Problems<'_> {
    /// `field` without the shared file's prefix: load errors name the file.
    fn unprefixed(&self, field: String) -> String {
        match field.strip_prefix(self.prefix.as_str()) {
            Some(rest) if !self.prefix.is_empty() => rest.to_owned(),
            _ => field,
        }
    }

    fn at(&mut self, field: impl Into<String>, line: u64, column: u64, message: impl Into<String>) {
        let field = self.unprefixed(field.into());
        self.list.push(LoadError {
            file: self.file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            field,
            message: message.into(),
        });
    }

    fn at_span<T>(
        &mut self,
        field: impl Into<String>,
        span: &Spanned<T>,
        message: impl Into<String>,
    ) {
        self.at(
            field,
            span.referenced.line(),
            span.referenced.column(),
            message,
        );
    }

    /// Compiles an always-expression field and checks its free variables.
    fn expr(
        &mut self,
        src: &Spanned<String>,
        field: &str,
        allowed: &HashSet<String>,
        fhir_names: Option<&HashSet<String>>,
    ) -> Option<Expr> {
        match Expr::compile(&src.value, field.to_owned(), src.referenced.line()) {
            Ok(e) => {
                self.check_vars(&e, src.referenced.column(), allowed, fhir_names);
                self.note_reads(&e, src.referenced.column());
                Some(e)
            }
            Err(msg) => {
                self.at_span(field, src, msg);
                None
            }
        }
    }

    fn check_vars(
        &mut self,
        e: &Expr,
        column: u64,
        allowed: &HashSet<String>,
        fhir_names: Option<&HashSet<String>>,
    ) {
        for message in undefined_names(e, allowed, fhir_names) {
            self.at(e.field.clone(), e.line, column, message);
        }
    }

    /// Notes the event fields `e` (at `column` of its line) reads.
    fn note_reads(&mut self, e: &Expr, column: u64) {
        let field = self.unprefixed(e.field.clone());
        self.reads
            .extend(EventRead::of(e, self.file, &field, column));
    }

    fn template(
        &mut self,
        node: &Spanned<RawNode>,
        field: &str,
        allowed: &HashSet<String>,
        fhir_names: Option<&HashSet<String>>,
    ) -> Tpl {
        let mut found = Vec::new();
        let mut compiled = Vec::new();
        let tpl = template::compile(node, field, &mut found, &mut |e, column, errs| {
            for message in undefined_names(e, allowed, fhir_names) {
                errs.push((e.field.clone(), e.line, 0, message));
            }
            compiled.push((e.field.clone(), e.nested_variables(), e.line, column));
        });
        for (field, paths, line, column) in compiled {
            let field = self.unprefixed(field);
            self.reads.extend(EventRead::from_paths(
                paths, self.file, &field, line, column,
            ));
        }
        for (field, line, column, message) in found {
            self.at(field, line, column, message);
            if column == 0
                && let Some(e) = self.list.last_mut()
            {
                e.column = None;
            }
        }
        tpl
    }
}

/// Messages for every name `e` reads that is not in `allowed`, and every
/// `refs.X` that names no FHIR resource of the mapping.
fn undefined_names(
    e: &Expr,
    allowed: &HashSet<String>,
    fhir_names: Option<&HashSet<String>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for name in e.free_variables() {
        if !allowed.contains(&name) {
            let mut known: Vec<&str> = allowed
                .iter()
                .map(String::as_str)
                .filter(|n| !n.starts_with("__"))
                .collect();
            known.sort_unstable();
            out.push(format!(
                "undefined name `{name}` (defined here: {})",
                known.join(", ")
            ));
        }
    }
    if let Some(names) = fhir_names {
        for path in e.nested_variables() {
            if let Some(r) = path.strip_prefix("refs.") {
                let r = r.split('.').next().unwrap_or(r);
                if !names.contains(r) {
                    out.push(format!("`refs.{r}` names no resource of this mapping"));
                }
            }
        }
    }
    out
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

/// Checks a DHIS2 identifier given literally or produced by an expression.
pub(crate) fn dhis2_id(text: &str, allow_default: bool) -> Result<String, String> {
    if allow_default && text == "default" {
        return Ok(DEFAULT_COMBO.to_owned());
    }
    if let Some(code) = text.strip_prefix("code:") {
        if code.trim().is_empty() {
            return Err("`code:` needs a code after it".into());
        }
        return Ok(text.to_owned());
    }
    let mut chars = text.chars();
    let ok = text.len() == 11
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(text.to_owned())
    } else {
        let also = if allow_default { ", `default`" } else { "" };
        Err(format!(
            "`{text}` is not a DHIS2 UID (11 letters and digits, starting with a letter), `code:CODE`{also}"
        ))
    }
}

/// The parts of one file that a mapping compiles: a shared file's or the
/// mapping's own.
struct Part<'r> {
    file: &'r Path,
    prefix: String,
    lets: &'r IndexMap<String, Spanned<String>>,
    tables: &'r IndexMap<String, Spanned<RawTable>>,
    assert: &'r [Spanned<RawAssert>],
    fhir: &'r [Spanned<RawFhir>],
    dhis2: &'r [Spanned<RawDhis2>],
}

impl<'a> Problems<'a> {
    /// Problems from now on are in `part`'s file.
    fn enter(&mut self, part: &Part<'a>) {
        self.file = part.file;
        self.prefix.clone_from(&part.prefix);
    }

    /// Problems from now on are in the mapping file.
    fn leave(&mut self, file: &'a Path) {
        self.file = file;
        self.prefix.clear();
    }
}

/// Compiles one FHIR rule; `None` when it cannot be used (its problems
/// are in `p`).
#[allow(clippy::too_many_arguments, reason = "the scopes of one rule")]
fn compile_fhir(
    p: &mut Problems<'_>,
    rule: &Spanned<RawFhir>,
    field: &str,
    seen: &mut HashSet<String>,
    pre_names: &HashSet<String>,
    out_names: &HashSet<String>,
    fhir_names: &HashSet<String>,
    with_item: &dyn Fn(&HashSet<String>) -> HashSet<String>,
) -> Option<FhirRule> {
    let r = &rule.value;
    if !is_identifier(&r.name.value) {
        p.at_span(
            format!("{field}.name"),
            &r.name,
            "resource names are identifiers (letters, digits, `_`)",
        );
    }
    if !seen.insert(r.name.value.clone()) {
        p.at_span(
            format!("{field}.name"),
            &r.name,
            format!("duplicate resource name `{}`", r.name.value),
        );
    }
    let resource_type = match &r.resource.value {
        RawNode::Map(entries) => match entries.iter().find(|(k, _)| k.value == "resourceType") {
            Some((
                _,
                Spanned {
                    value: RawNode::Str(t),
                    ..
                },
            )) if kiungo_fhir_validate::is_resource_type(t) => t.clone(),
            Some((_, node)) => {
                p.at_span(
                    format!("{field}.resource.resourceType"),
                    node,
                    "`resourceType` must be a literal FHIR resource type",
                );
                String::new()
            }
            None => {
                p.at_span(
                    format!("{field}.resource"),
                    &r.resource,
                    "missing `resourceType`",
                );
                String::new()
            }
        },
        _ => {
            p.at_span(
                format!("{field}.resource"),
                &r.resource,
                "a resource template must be a mapping",
            );
            String::new()
        }
    };
    let method = r.method.as_ref().map_or(Method::Update, |m| m.value);
    let needs_query = matches!(method, Method::Create | Method::ConditionalUpdate);
    match (needs_query, &r.if_none_exist) {
        (true, None) => p.at_span(
            format!("{field}.method"),
            rule,
            "`create` and `conditional_update` need `if_none_exist`",
        ),
        (false, Some(q)) => p.at_span(
            format!("{field}.if_none_exist"),
            q,
            "`if_none_exist` applies to `create` and `conditional_update` only",
        ),
        _ => {}
    }
    let for_each = r
        .for_each
        .as_ref()
        .and_then(|w| p.expr(w, &format!("{field}.for_each"), pre_names, None));
    let (mut pre_names, mut out_names) = if r.for_each.is_some() {
        (with_item(pre_names), with_item(out_names))
    } else {
        (pre_names.clone(), out_names.clone())
    };
    let lets = rule_lets(p, &r.lets, field, &mut pre_names, &mut [&mut out_names]);
    let when = r
        .when
        .as_ref()
        .and_then(|w| p.expr(w, &format!("{field}.when"), &pre_names, None));
    let id =
        r.id.as_ref()
            .and_then(|w| p.expr(w, &format!("{field}.id"), &pre_names, None));
    let if_none_exist = r.if_none_exist.as_ref().and_then(|q| {
        let qfield = format!("{field}.if_none_exist");
        match &q.value {
            RawNode::Str(src) => {
                let src = Spanned::new(src.clone(), q.referenced, q.defined);
                p.expr(&src, &qfield, &out_names, Some(fhir_names))
                    .map(Query::Whole)
            }
            RawNode::Map(entries) if !entries.is_empty() => {
                let mut params = Vec::new();
                for (name, node) in entries {
                    let name = &name.value;
                    let f = format!("{qfield}.{name}");
                    let ok_name = !name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
                    if !ok_name {
                        p.at_span(&f, node, format!("`{name}` is not a search parameter name"));
                        continue;
                    }
                    let RawNode::Str(src) = &node.value else {
                        p.at_span(&f, node, "expected an expression giving the value");
                        continue;
                    };
                    let src = Spanned::new(src.clone(), node.referenced, node.defined);
                    if let Some(e) = p.expr(&src, &f, &out_names, Some(fhir_names)) {
                        params.push((name.clone(), e));
                    }
                }
                Some(Query::Params(params))
            }
            _ => {
                p.at_span(
                    &qfield,
                    q,
                    "expected an expression or a mapping of search parameters to expressions",
                );
                None
            }
        }
    });
    let template = p.template(
        &r.resource,
        &format!("{field}.resource"),
        &out_names,
        Some(fhir_names),
    );
    let (plan, places) = fhir_plan(p, rule, field, &resource_type, method)?;
    Some(FhirRule {
        name: r.name.value.clone(),
        field: field.to_owned(),
        resource_type,
        line: rule.referenced.line(),
        origin: None,
        for_each,
        lets,
        let_group: None,
        when,
        id,
        method,
        if_none_exist,
        template,
        plan,
        places,
    })
}

/// The FHIR check of a rule's resource template: the shape of the
/// resources it makes, as `apply_in` makes them (`resourceType` first, then
/// the UUID `id` of a `PUT`, then the template's other keys), with its
/// literal parts checked now. Each problem is put at the template node it
/// is in: a misspelt element at its own key's line. `None` when the
/// template cannot be used (its problems are in `p`).
fn fhir_plan(
    p: &mut Problems<'_>,
    rule: &Spanned<RawFhir>,
    field: &str,
    resource_type: &str,
    method: Method,
) -> Option<(kiungo_fhir_validate::Plan, Vec<Place>)> {
    use kiungo_fhir_validate::{Node, Plan, Shape};
    let resource = &rule.value.resource;
    let mut places = Vec::new();
    let field = field.strip_prefix(p.prefix.as_str()).unwrap_or(field);
    let root = template::shape(
        resource,
        Place {
            line: resource.referenced.line(),
            column: resource.referenced.column(),
            field: format!("{field}.resource"),
        },
        &mut places,
    );
    let Shape::Object(body) = root.shape else {
        return None;
    };
    let set_id = method == Method::Update;
    let mut entries = vec![(
        "resourceType".to_owned(),
        Node {
            place: root.place,
            shape: Shape::Fixed(resource_type.into()),
        },
    )];
    if set_id {
        entries.push((
            "id".to_owned(),
            Node {
                place: root.place,
                shape: Shape::Varies,
            },
        ));
    }
    entries.extend(
        body.into_iter()
            .filter(|(k, _)| k != "resourceType" && !(set_id && k == "id")),
    );
    let (plan, problems) = Plan::new(
        resource_type,
        Node {
            place: root.place,
            shape: Shape::Object(entries),
        },
    )?;
    for e in problems {
        let at = plan
            .locate(&e)
            .and_then(|i| places.get(i as usize))
            .or_else(|| places.first());
        if let Some(at) = at {
            // The place's field has no shared-file prefix: `at` adds none.
            let (f, line, column) = (at.field.clone(), at.line, at.column);
            p.at(f, line, column, e.to_string());
        }
    }
    Some((plan, places))
}

/// Compiles a rule's own `let` bindings against `names`, adding each to
/// `names` and to every set of `also`.
fn rule_lets(
    p: &mut Problems<'_>,
    raw: &IndexMap<String, Spanned<String>>,
    field: &str,
    names: &mut HashSet<String>,
    also: &mut [&mut HashSet<String>],
) -> Vec<(Arc<str>, Expr)> {
    let mut lets = Vec::new();
    for (name, src) in raw {
        let f = format!("{field}.let.{name}");
        let reserved = BASE_VARS
            .iter()
            .chain(OUTPUT_VARS.iter())
            .chain(ITEM_VARS.iter())
            .any(|r| *r == name);
        if !is_identifier(name) || reserved || names.contains(name) {
            p.at_span(
                &f,
                src,
                format!("`{name}` cannot be bound (reserved, already bound, or not an identifier)"),
            );
            continue;
        }
        if let Some(e) = p.expr(src, &f, names, None) {
            lets.push((Arc::<str>::from(name.as_str()), e));
        }
        names.insert(name.clone());
        for set in also.iter_mut() {
            set.insert(name.clone());
        }
    }
    lets
}

/// Compiles one DHIS2 rule; `None` when it cannot be used.
fn compile_dhis2(
    p: &mut Problems<'_>,
    rule: &Spanned<RawDhis2>,
    field: &str,
    seen: &mut HashSet<String>,
    out_names: &HashSet<String>,
    with_item: &dyn Fn(&HashSet<String>) -> HashSet<String>,
) -> Option<Dhis2Rule> {
    let r = &rule.value;
    if !seen.insert(r.name.value.clone()) {
        p.at_span(
            format!("{field}.name"),
            &r.name,
            format!("duplicate contribution name `{}`", r.name.value),
        );
    }
    let for_each = r
        .for_each
        .as_ref()
        .and_then(|w| p.expr(w, &format!("{field}.for_each"), out_names, None));
    let mut out_names = if r.for_each.is_some() {
        with_item(out_names)
    } else {
        out_names.clone()
    };
    let lets = rule_lets(p, &r.lets, field, &mut out_names, &mut []);
    let key = match (&r.key, &r.for_each) {
        (Some(k), None) => {
            p.at_span(
                format!("{field}.key"),
                k,
                "`key` names the items of a `for_each` rule",
            );
            None
        }
        (Some(k), Some(_)) => p.expr(k, &format!("{field}.key"), &out_names, None),
        (None, _) => None,
    };
    let mut id_field = |node: Option<&Spanned<RawNode>>, key: &str, allow_default: bool| {
        let f = format!("{field}.{key}");
        let default_node;
        let node = match node {
            Some(n) => n,
            None => {
                default_node = Spanned::new(
                    RawNode::Str("default".into()),
                    rule.referenced,
                    rule.defined,
                );
                &default_node
            }
        };
        if let RawNode::Str(s) = &node.value {
            if (!s.starts_with('=') || s.starts_with("=="))
                && let Err(msg) = dhis2_id(s, allow_default)
            {
                p.at_span(&f, node, msg);
            }
        } else {
            p.at_span(&f, node, "expected a DHIS2 id or an `=expression`");
        }
        let tpl = p.template(node, &f, &out_names, None);
        let tpl = match tpl {
            Tpl::Lit(Some(serde_json::Value::String(s))) => Tpl::Lit(Some(
                serde_json::Value::String(dhis2_id(&s, allow_default).unwrap_or(s)),
            )),
            other => other,
        };
        IdField {
            tpl,
            field: f,
            line: node.referenced.line(),
            allow_default,
        }
    };
    let data_element = id_field(Some(&r.data_element), "data_element", false);
    let category_option_combo = id_field(
        r.category_option_combo.as_ref(),
        "category_option_combo",
        true,
    );
    let attribute_option_combo = id_field(
        r.attribute_option_combo.as_ref(),
        "attribute_option_combo",
        true,
    );
    let org_unit = id_field(Some(&r.org_unit), "org_unit", false);
    let period_type = match crate::spec::period_type(&r.period.value.period_type) {
        Ok(t) => t,
        Err(msg) => {
            p.at_span(
                format!("{field}.period.type"),
                &r.period.value.period_type,
                msg,
            );
            PeriodType::Monthly
        }
    };
    let period_date = p.expr(
        &r.period.value.date,
        &format!("{field}.period.date"),
        &out_names,
        None,
    );
    let aggregation = r.aggregation.value;
    let value = match (&r.value, aggregation) {
        (Some(v), Aggregation::Count) => {
            p.at_span(
                format!("{field}.value"),
                v,
                "`count` contributes 1 per event and takes no `value`",
            );
            None
        }
        (None, Aggregation::Count) => None,
        (None, _) => {
            p.at_span(
                format!("{field}.aggregation"),
                &r.aggregation,
                "this aggregation needs a `value`",
            );
            None
        }
        (Some(v), _) => {
            let f = format!("{field}.value");
            Some((p.template(v, &f, &out_names, None), f, v.referenced.line()))
        }
    };
    let when = r
        .when
        .as_ref()
        .and_then(|w| p.expr(w, &format!("{field}.when"), &out_names, None));
    Some(Dhis2Rule {
        name: r.name.value.clone(),
        field: field.to_owned(),
        line: rule.referenced.line(),
        origin: None,
        for_each,
        lets,
        let_group: None,
        key,
        data_element,
        category_option_combo,
        attribute_option_combo,
        org_unit,
        period_type,
        period_date: period_date?,
        value,
        aggregation,
        when,
    })
}

impl Mapping {
    /// Loads and checks one mapping file. Test cases are loaded, not run.
    pub fn load(file: &Path) -> Result<Self, Vec<LoadError>> {
        let fail = |line: Option<u64>, column: Option<u64>, message: String| {
            vec![LoadError {
                file: file.to_path_buf(),
                line,
                column,
                field: String::new(),
                message,
            }]
        };
        let text = std::fs::read_to_string(file)
            .map_err(|e| fail(None, None, format!("cannot read: {e}")))?;
        let options = serde_saphyr::options! { with_snippet: false };
        let raw: RawMapping = serde_saphyr::from_str_with_options(&text, options).map_err(|e| {
            let loc = e.location();
            vec![LoadError {
                file: file.to_path_buf(),
                line: loc.map(|l| l.line()),
                column: loc.map(|l| l.column()),
                field: loc.map_or_else(String::new, |l| {
                    crate::yaml_place::field_path(&text, l.line())
                }),
                message: crate::yaml_place::message(&e),
            }]
        })?;
        let mut p = Problems {
            file,
            prefix: String::new(),
            list: Vec::new(),
            reads: Vec::new(),
        };

        let id = raw.id.value.clone();
        let valid_id = !id.is_empty()
            && id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !valid_id {
            p.at_span(
                "id",
                &raw.id,
                "mapping ids use lowercase letters, digits, `-`, `_` and `.`",
            );
        }
        if raw.version.value == 0 {
            p.at_span("version", &raw.version, "versions start at 1");
        }
        if raw.source.value.trim().is_empty() {
            p.at_span("source", &raw.source, "source must not be empty");
        }

        // Shared files first, then the mapping's own parts, each compiled
        // with its own file so that problems point into it.
        let shared = crate::include::load_all(&raw.include, file, &mut p.list);
        let mut parts: Vec<Part<'_>> = shared
            .iter()
            .map(|(path, rel, s)| Part {
                file: path,
                prefix: format!("{rel}:"),
                lets: &s.lets,
                tables: &s.tables,
                assert: &s.assert,
                fhir: &s.fhir,
                dhis2: &s.dhis2,
            })
            .collect();
        parts.push(Part {
            file,
            prefix: String::new(),
            lets: &raw.lets,
            tables: &raw.tables,
            assert: &raw.assert,
            fhir: &raw.fhir,
            dhis2: &raw.dhis2,
        });

        let base: HashSet<String> = BASE_VARS
            .iter()
            .map(|s| (*s).to_owned())
            .chain([RUNTIME.to_owned()])
            .collect();
        let match_ = raw
            .match_
            .as_ref()
            .and_then(|m| p.expr(m, "match", &base, None));

        // Tables, then `let` bindings, each visible to what follows.
        let mut scope_names = base.clone();
        let reserved: HashSet<&str> = BASE_VARS
            .iter()
            .chain(OUTPUT_VARS.iter())
            .chain(ITEM_VARS.iter())
            .copied()
            .collect();
        let mut tables = Vec::new();
        for part in &parts {
            p.enter(part);
            for (name, spec) in part.tables {
                let field = format!("{}tables.{name}", part.prefix);
                if !is_identifier(name)
                    || reserved.contains(name.as_str())
                    || scope_names.contains(name)
                {
                    p.at_span(
                        &field,
                        spec,
                        format!("`{name}` cannot name a table (reserved, already defined, or not an identifier)"),
                    );
                    continue;
                }
                match Table::load(name, &spec.value, part.file) {
                    Ok(mut t) => {
                        t.declared_line = spec.referenced.line();
                        scope_names.insert(name.clone());
                        tables.push((Arc::<str>::from(name.as_str()), Value::from_object(t)));
                    }
                    Err((Some(other_file), line, msg)) => p.list.push(LoadError {
                        file: other_file,
                        line,
                        column: None,
                        field: format!("tables.{name}"),
                        message: msg,
                    }),
                    Err((None, _, msg)) => p.at_span(&field, spec, msg),
                }
            }
        }
        let mut lets = Vec::new();
        for part in &parts {
            p.enter(part);
            for (name, src) in part.lets {
                let field = format!("{}let.{name}", part.prefix);
                if !is_identifier(name)
                    || reserved.contains(name.as_str())
                    || scope_names.contains(name)
                {
                    p.at_span(&field, src, format!("`{name}` cannot be bound (reserved, a table, already bound, or not an identifier)"));
                    continue;
                }
                if let Some(e) = p.expr(src, &field, &scope_names, None) {
                    lets.push((Arc::<str>::from(name.as_str()), e));
                }
                scope_names.insert(name.clone());
            }
        }
        p.leave(file);
        let event_id = raw
            .event_id
            .as_ref()
            .and_then(|e| p.expr(e, "event_id", &scope_names, None));
        let event_id_first = event_id.as_ref().is_some_and(|e| {
            e.free_variables()
                .iter()
                .all(|v| !lets.iter().any(|(n, _)| **n == **v))
        });
        let replaces = raw
            .replaces
            .as_ref()
            .and_then(|e| p.expr(e, "replaces", &scope_names, None));

        let mut asserts = Vec::new();
        let pre_names = {
            let mut s = scope_names.clone();
            s.insert("event_id".into());
            s
        };
        for part in &parts {
            p.enter(part);
            for (i, a) in part.assert.iter().enumerate() {
                let field = format!("{}assert[{i}]", part.prefix);
                if a.value.message.value.trim().is_empty() {
                    p.at_span(
                        format!("{field}.message"),
                        &a.value.message,
                        "an assertion needs the reason an event is refused",
                    );
                }
                if let Some(that) = p.expr(&a.value.that, &field, &pre_names, None) {
                    asserts.push(Assertion {
                        that,
                        message: a.value.message.value.trim().to_owned(),
                    });
                }
            }
        }

        let mut out_names = scope_names.clone();
        out_names.extend(OUTPUT_VARS.iter().map(|s| (*s).to_owned()));
        let with_item = |names: &HashSet<String>| {
            let mut s = names.clone();
            s.extend(ITEM_VARS.iter().map(|v| (*v).to_owned()));
            s
        };
        let fhir_names: HashSet<String> = parts
            .iter()
            .flat_map(|part| part.fhir.iter().map(|f| f.value.name.value.clone()))
            .collect();

        let mut fhir = Vec::new();
        let mut seen = HashSet::new();
        for part in &parts {
            p.enter(part);
            for (i, rule) in part.fhir.iter().enumerate() {
                let field = format!("{}fhir[{i}]", part.prefix);
                if let Some(r) = compile_fhir(
                    &mut p,
                    rule,
                    &field,
                    &mut seen,
                    &pre_names,
                    &out_names,
                    &fhir_names,
                    &with_item,
                ) {
                    fhir.push(FhirRule {
                        origin: (part.file != file).then(|| part.file.to_path_buf()),
                        ..r
                    });
                }
            }
        }

        let mut dhis2 = Vec::new();
        let mut seen = HashSet::new();
        for part in &parts {
            p.enter(part);
            for (i, rule) in part.dhis2.iter().enumerate() {
                let field = format!("{}dhis2[{i}]", part.prefix);
                if let Some(r) =
                    compile_dhis2(&mut p, rule, &field, &mut seen, &out_names, &with_item)
                {
                    dhis2.push(Dhis2Rule {
                        origin: (part.file != file).then(|| part.file.to_path_buf()),
                        ..r
                    });
                }
            }
        }
        p.leave(file);
        let (groups, let_groups) = crate::shared_lets::assign(
            fhir.iter()
                .map(|r| (r.for_each.as_ref(), r.lets.as_slice()))
                .chain(
                    dhis2
                        .iter()
                        .map(|r| (r.for_each.as_ref(), r.lets.as_slice())),
                ),
        );
        let mut groups = groups.into_iter();
        for r in &mut fhir {
            r.let_group = groups.next().flatten();
        }
        for r in &mut dhis2 {
            r.let_group = groups.next().flatten();
        }

        if fhir.is_empty() && dhis2.is_empty() && p.list.is_empty() {
            p.at(
                String::new(),
                1,
                1,
                "a mapping must produce something: add `fhir` or `dhis2`",
            );
        }
        let mut tests = Vec::new();
        if raw.tests.is_empty() {
            p.at(
                String::new(),
                1,
                1,
                "a mapping needs at least one test case under `tests`",
            );
        }
        for (i, t) in raw.tests.iter().enumerate() {
            match TestCase::from_raw(t, i, file, &raw.source.value) {
                Ok(tc) => tests.push(tc),
                Err((field, message)) => p.at_span(field, t, message),
            }
        }

        if !p.list.is_empty() {
            return Err(p.list);
        }
        Ok(Self {
            id,
            version: raw.version.value,
            description: raw.description,
            source: raw.source.value,
            file: file.to_path_buf(),
            match_,
            event_id,
            event_id_first,
            replaces,
            let_constants: crate::constants::of(&lets, &tables),
            lets,
            tables,
            asserts,
            fhir,
            dhis2,
            let_groups,
            tests,
            event_reads: p.reads,
        })
    }

    /// The DHIS2 references this mapping's rules name statically: literal
    /// ids and the lookup-table cells an expression can return, with
    /// their files and lines, and each rule's period type. Ids computed
    /// from the event are not listed (see [`crate::static_refs`]).
    pub fn static_dhis2_rules(&self) -> Vec<crate::static_refs::StaticDhis2Rule> {
        crate::static_refs::of(self)
    }

    /// The file of a FHIR rule (a shared file's for an included rule), for
    /// load errors.
    fn fhir_file(&self, name: &str) -> PathBuf {
        self.fhir
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.origin.clone())
            .unwrap_or_else(|| self.file.clone())
    }

    /// A produced resource is not valid FHIR: located at the template node
    /// the checker's path points into.
    fn invalid_fhir(
        &self,
        rule: &FhirRule,
        event: &str,
        error: &kiungo_fhir_validate::FhirError,
    ) -> MapError {
        let at = rule
            .plan
            .locate(error)
            .and_then(|i| rule.places.get(i as usize));
        self.invalid_fhir_at(rule, at, event, error.to_string())
    }

    /// A produced resource is not valid FHIR, at `at` (else at its rule).
    fn invalid_fhir_at(
        &self,
        rule: &FhirRule,
        at: Option<&Place>,
        event: &str,
        message: String,
    ) -> MapError {
        MapError::InvalidFhir {
            mapping: self.id.clone(),
            resource: rule.name.as_str().into(),
            file: rule
                .origin
                .as_deref()
                .unwrap_or(&self.file)
                .display()
                .to_string()
                .into(),
            line: rule.line,
            at: Box::new(TemplatePlace {
                field: at.map_or_else(|| rule.field.clone(), |p| p.field.clone()),
                line: at.map_or(rule.line, |p| p.line),
            }),
            event: event.to_owned(),
            message: message.into(),
        }
    }

    /// Resolves the bundle's `urn:uuid` references. When one does not
    /// resolve, the error is the full check's: the first reference, in
    /// the order the checker finds them, that does not, with its path.
    fn resolve_urns(
        &self,
        urns: &[kiungo_fhir_validate::Urn],
        fhir: &[FhirEntry],
        rules: &[&FhirRule],
        event: &str,
    ) -> Result<(), MapError> {
        let entry_type = |named: &dyn Fn(&str) -> bool| {
            fhir.iter()
                .find(|e| named(&e.full_url))
                .and_then(|e| e.resource.get("resourceType"))
                .and_then(serde_json::Value::as_str)
        };
        if urns
            .iter()
            .all(|u| u.resolves(entry_type(&|url| u.names(url))))
        {
            return Ok(());
        }
        for (entry, rule) in fhir.iter().zip(rules) {
            let mut refs = Vec::new();
            kiungo_fhir_validate::validate_in_bundle(&entry.resource, &mut refs)
                .map_err(|e| self.invalid_fhir(rule, event, &e))?;
            for urn in refs {
                urn.resolve(entry_type(&|url| url == urn.reference))
                    .map_err(|e| self.invalid_fhir(rule, event, &e))?;
            }
        }
        Ok(())
    }

    /// Whether the event is one this mapping applies to.
    fn matches(&self, scope: &Value, label: &str) -> Result<bool, MapError> {
        self.eval_when(self.match_.as_ref(), scope, label)
    }

    fn field_error(&self, e: &Expr, event: &str, failure: impl Into<Failure>) -> MapError {
        self.error_at(&e.field, e.line, event, failure)
    }

    /// A field error at a location of this mapping.
    fn error_at(
        &self,
        field: &str,
        line: u64,
        event: &str,
        failure: impl Into<Failure>,
    ) -> MapError {
        let Failure {
            message,
            values,
            refused,
        } = failure.into();
        if refused {
            return MapError::Refused {
                mapping: self.id.clone(),
                field: field.to_owned(),
                line,
                event: event.to_owned(),
                reason: message,
            };
        }
        MapError::Field {
            mapping: self.id.clone(),
            field: field.to_owned(),
            line,
            event: event.to_owned(),
            message,
            values: values.into_boxed_slice(),
        }
    }

    fn eval_string(
        &self,
        e: &Expr,
        scope: &Value,
        label: &str,
    ) -> Result<Option<String>, MapError> {
        let v = e.eval(scope).map_err(|m| self.field_error(e, label, m))?;
        let json = crate::json::from_value(&v).map_err(|m| self.field_error(e, label, m))?;
        match json {
            None => Ok(None),
            Some(j) => match crate::json::scalar_string(&j) {
                Some(s) if s.trim().is_empty() => Ok(None),
                Some(s) => Ok(Some(s)),
                None => Err(self.field_error(e, label, "expected text or a number")),
            },
        }
    }

    fn eval_when(&self, when: Option<&Expr>, scope: &Value, label: &str) -> Result<bool, MapError> {
        match when {
            None => Ok(true),
            Some(e) => e
                .eval(scope)
                .map(|v| v.is_true())
                .map_err(|m| self.field_error(e, label, m)),
        }
    }

    /// Maps one event whose scope (event, source, message id, runtime) is
    /// built and that this mapping matched.
    fn apply_in(
        &self,
        event: &Event,
        scope_obj: &Scope,
        scope: &Value,
        validate_fhir: bool,
        calendar: Calendar,
    ) -> Result<MappedEvent, MapError> {
        let msg_label = event.message_id.clone().unwrap_or_else(|| "(no id)".into());
        for (name, table) in &self.tables {
            scope_obj.set(name, table.clone());
        }
        // The event id is worked out before the `let` bindings when it does
        // not need them, so that their errors name the event.
        let mut early_id = None;
        if self.event_id_first
            && let Some(e) = &self.event_id
        {
            early_id = self.eval_string(e, scope, &msg_label)?;
        }
        let let_label = early_id.clone().unwrap_or_else(|| msg_label.clone());
        for ((name, e), constant) in self.lets.iter().zip(&self.let_constants) {
            let v = match constant {
                Some(v) => v.clone(),
                None => e
                    .eval(scope)
                    .map_err(|m| self.field_error(e, &let_label, m))?,
            };
            scope_obj.set(name, v);
        }
        let event_id = match (&self.event_id, early_id) {
            (_, Some(id)) => Some(id),
            (Some(e), None) if !self.event_id_first => self.eval_string(e, scope, &msg_label)?,
            _ => None,
        }
        .or_else(|| event.message_id.clone())
        .ok_or_else(|| MapError::NoEventId {
            mapping: self.id.clone(),
        })?;
        let label = event_id.as_str();
        let replaces = match &self.replaces {
            Some(e) => self
                .eval_string(e, scope, label)?
                .filter(|r| *r != event_id),
            None => None,
        };
        scope_obj.set(&EVENT_ID, Value::from(event_id.as_str()));
        for a in &self.asserts {
            if !self.eval_when(Some(&a.that), scope, label)? {
                return Err(MapError::Refused {
                    mapping: self.id.clone(),
                    field: a.that.field.clone(),
                    line: a.that.line,
                    event: event_id.clone(),
                    reason: a.message.clone(),
                });
            }
        }

        // Which resources exist, and their ids, before any template renders.
        // Each entry's rule, item, resource id and `let` values: a rule's
        // bindings cannot read `refs`, so the values worked out here are
        // the ones its template reads.
        let mut included: Vec<(&FhirRule, Option<Item>, String, Vec<Value>)> = Vec::new();
        let mut shared = SharedLets::new(self.let_groups);
        let mut refs = BTreeMap::new();
        let mut ids: HashMap<String, (usize, Option<usize>)> = HashMap::new();
        for rule in &self.fhir {
            let items = self.items(rule.for_each.as_ref(), scope_obj, scope, label)?;
            let mut rule_refs = Vec::new();
            let count = items.len();
            for (i, item) in items.into_iter().enumerate() {
                if let Some(it) = &item {
                    set_item(scope_obj, it);
                }
                let at = (rule.let_group, i, count);
                let let_values =
                    self.rule_lets(&rule.lets, at, &mut shared, scope_obj, scope, label)?;
                if !self.eval_when(rule.when.as_ref(), scope, label)? {
                    continue;
                }
                let seed = match (&rule.id, &item) {
                    (Some(e), _) => self
                        .eval_string(e, scope, label)?
                        .ok_or_else(|| self.field_error(e, label, "resource id seed is empty"))?,
                    (None, None) => format!("{}/{}/{}", event.source, event_id, rule.name),
                    (None, Some(it)) => format!(
                        "{}/{}/{}/{}",
                        event.source,
                        event_id,
                        rule.name,
                        self.item_json(rule.for_each.as_ref(), it, label)?
                    ),
                };
                let uuid = uuid::Uuid::new_v5(&KIUNGO_NS, seed.as_bytes()).to_string();
                let key = format!("{}/{uuid}", rule.resource_type);
                let here = (included.len(), item.as_ref().map(|i| i.index));
                if let Some(&(first, first_item)) = ids.get(&key) {
                    let other = included.get(first).map(|(r, _, _, _)| *r);
                    return Err(self.duplicate_entry(rule, here.1, other, first_item, label));
                }
                ids.insert(key, here);
                let reference = match rule.method {
                    Method::Update => format!("{}/{uuid}", rule.resource_type),
                    Method::Create | Method::ConditionalUpdate => format!("urn:uuid:{uuid}"),
                };
                rule_refs.push(Value::from(reference));
                included.push((rule, item, uuid, let_values));
            }
            if rule.for_each.is_some() {
                refs.insert(Arc::<str>::from(rule.name.as_str()), Value::from(rule_refs));
            } else if let Some(r) = rule_refs.pop() {
                refs.insert(Arc::<str>::from(rule.name.as_str()), r);
            }
        }
        scope_obj.set(&REFS, Value::from_object(refs));

        let mut fhir = Vec::with_capacity(included.len());
        // The rule of each entry, and the `urn:uuid` references, resolved
        // against the bundle once all its entries are made.
        let mut rules: Vec<&FhirRule> = Vec::with_capacity(included.len());
        let mut urns = Vec::new();
        for (rule, item, uuid, let_values) in included {
            if let Some(it) = &item {
                set_item(scope_obj, it);
            }
            for ((name, _), value) in rule.lets.iter().zip(let_values) {
                scope_obj.set(name, value);
            }
            let rendered = template::render(&rule.template, scope).map_err(|e| {
                let failure = Failure {
                    message: e.message,
                    values: e.values,
                    refused: e.refused,
                };
                self.error_at(&e.field, e.line, label, failure)
            })?;
            let Some(serde_json::Value::Object(mut resource)) = rendered else {
                return Err(self.invalid_fhir_at(
                    rule,
                    None,
                    &event_id,
                    "the resource rendered empty".into(),
                ));
            };
            // `resourceType` first, then the `id` of an update, then the
            // rest in file order: each moved (or put) in place, the other
            // keys kept where they are.
            resource.shift_insert(0, "resourceType".into(), rule.resource_type.clone().into());
            if rule.method == Method::Update {
                resource.shift_insert(1, "id".into(), uuid.clone().into());
            }
            let resource = serde_json::Value::Object(resource);
            if validate_fhir {
                // The checker's messages name elements, never values.
                rule.plan
                    .check(&resource, &mut urns)
                    .map_err(|e| self.invalid_fhir(rule, &event_id, &e))?;
            }
            let query = match &rule.if_none_exist {
                Some(q) => Some(self.query(q, scope, label)?),
                None => None,
            };
            let request = match rule.method {
                Method::Update => FhirRequest {
                    method: "PUT".into(),
                    url: format!("{}/{uuid}", rule.resource_type),
                    if_none_exist: None,
                },
                Method::Create => FhirRequest {
                    method: "POST".into(),
                    url: rule.resource_type.clone(),
                    if_none_exist: query,
                },
                Method::ConditionalUpdate => FhirRequest {
                    method: "PUT".into(),
                    url: format!("{}?{}", rule.resource_type, query.unwrap_or_default()),
                    if_none_exist: None,
                },
            };
            fhir.push(FhirEntry {
                full_url: format!("urn:uuid:{uuid}"),
                resource,
                request,
            });
            rules.push(rule);
        }

        if validate_fhir {
            self.resolve_urns(&urns, &fhir, &rules, &event_id)?;
        }

        let mut dhis2 = Vec::with_capacity(self.dhis2.len());
        // Where each contribution came from, for the double-count check.
        let mut origins: Vec<(&Dhis2Rule, Option<usize>)> = Vec::with_capacity(self.dhis2.len());
        for rule in &self.dhis2 {
            let items = self.items(rule.for_each.as_ref(), scope_obj, scope, label)?;
            let count = items.len();
            for (i, item) in items.into_iter().enumerate() {
                if let Some(it) = &item {
                    set_item(scope_obj, it);
                }
                let at = (rule.let_group, i, count);
                self.rule_lets(&rule.lets, at, &mut shared, scope_obj, scope, label)?;
                if !self.eval_when(rule.when.as_ref(), scope, label)? {
                    continue;
                }
                let name = match (&item, &rule.key) {
                    (None, _) => rule.name.clone(),
                    (Some(_), Some(k)) => {
                        let key = self
                            .eval_string(k, scope, label)?
                            .ok_or_else(|| self.field_error(k, label, "the item's key is empty"))?;
                        format!("{}[{key}]", rule.name)
                    }
                    (Some(it), None) => {
                        let json = self.item_json(rule.for_each.as_ref(), it, label)?;
                        let hash = uuid::Uuid::new_v5(&KIUNGO_NS, json.as_bytes()).simple();
                        let hash = hash.to_string();
                        format!("{}[{}]", rule.name, hash.get(..12).unwrap_or(&hash))
                    }
                };
                let c = self.contribution(rule, name, scope, label, calendar)?;
                let here = item.as_ref().map(|i| i.index);
                if let Some(i) = dhis2.iter().position(|d: &Dhis2Contribution| {
                    d.rule == c.rule
                        || (d.data_element == c.data_element
                            && d.period == c.period
                            && d.org_unit == c.org_unit
                            && d.category_option_combo == c.category_option_combo
                            && d.attribute_option_combo == c.attribute_option_combo
                            && matches!(c.aggregation, Aggregation::Count | Aggregation::Last)
                            && d.aggregation == c.aggregation)
                }) {
                    let (other, other_item) = origins.get(i).copied().unzip();
                    return Err(self.double_count(
                        rule,
                        here,
                        other,
                        other_item.flatten(),
                        dhis2.get(i).is_some_and(|d| d.rule == c.rule),
                        label,
                    ));
                }
                origins.push((rule, here));
                dhis2.push(c);
            }
        }

        Ok(MappedEvent {
            mapping: self.id.clone(),
            mapping_version: self.version,
            event_id,
            replaces,
            fhir,
            dhis2,
        })
    }

    /// Sets a rule's own bindings for the current item, `at` (the rule's
    /// group, the item's index, the number of items): the values another
    /// rule of the group worked out, else evaluated (and kept for the
    /// others); their values, in order.
    fn rule_lets(
        &self,
        lets: &[(Arc<str>, Expr)],
        (group, index, items): (Option<usize>, usize, usize),
        shared: &mut SharedLets,
        scope_obj: &Scope,
        scope: &Value,
        label: &str,
    ) -> Result<Vec<Value>, MapError> {
        if let Some(values) = shared.get(group, index, items) {
            for ((name, _), v) in lets.iter().zip(values) {
                scope_obj.set(name, v.clone());
            }
            return Ok(values.to_vec());
        }
        let mut values = Vec::with_capacity(lets.len());
        for (name, e) in lets {
            let v = e.eval(scope).map_err(|m| self.field_error(e, label, m))?;
            scope_obj.set(name, v.clone());
            values.push(v);
        }
        shared.keep(group, index, items, &values);
        Ok(values)
    }

    /// The items a rule runs for: `[None]` without `for_each`, else each
    /// item of the list.
    fn items(
        &self,
        for_each: Option<&Expr>,
        scope_obj: &Scope,
        scope: &Value,
        label: &str,
    ) -> Result<Vec<Option<Item>>, MapError> {
        let Some(e) = for_each else {
            return Ok(vec![None]);
        };
        // `item` and `index` of an earlier rule must not leak into this
        // rule's list expression.
        scope_obj.set(&ITEM, Value::UNDEFINED);
        scope_obj.set(&INDEX, Value::UNDEFINED);
        let list = e.eval(scope).map_err(|m| self.field_error(e, label, m))?;
        if list.is_none() || list.is_undefined() {
            return Ok(Vec::new());
        }
        if list.as_str().is_some() || list.kind() == minijinja::value::ValueKind::Map {
            return Err(self.field_error(e, label, "`for_each` needs a list"));
        }
        let iter = list
            .try_iter()
            .map_err(|_| self.field_error(e, label, "`for_each` needs a list"))?;
        Ok(iter
            .enumerate()
            .map(|(index, value)| Some(Item { index, value }))
            .collect())
    }

    /// The item as JSON text, the default seed of its id.
    fn item_json(
        &self,
        for_each: Option<&Expr>,
        item: &Item,
        label: &str,
    ) -> Result<String, MapError> {
        let json = crate::json::from_value(&item.value).map_err(|m| match for_each {
            Some(e) => self.field_error(e, label, m),
            None => self.error_at("for_each", 0, label, m),
        })?;
        Ok(json.map(|j| j.to_string()).unwrap_or_default())
    }

    /// Two entries of one bundle with the same resource id.
    fn duplicate_entry(
        &self,
        rule: &FhirRule,
        item: Option<usize>,
        other: Option<&FhirRule>,
        other_item: Option<usize>,
        label: &str,
    ) -> MapError {
        let which = |r: &FhirRule, i: Option<usize>| match i {
            Some(i) => format!("`{}` (`{}`, line {}, item {i})", r.field, r.name, r.line),
            None => format!("`{}` (`{}`, line {})", r.field, r.name, r.line),
        };
        let first = other.map_or_else(|| "another rule".to_owned(), |o| which(o, other_item));
        self.error_at(
            rule.id.as_ref().map_or(&rule.field, |e| &e.field),
            rule.id.as_ref().map_or(rule.line, |e| e.line),
            label,
            format!(
                "{} produces the same {} as {first}: a bundle holds each resource once \
                 (derive `id` from what tells the two apart)",
                which(rule, item),
                rule.resource_type
            ),
        )
    }

    /// Two contributions of one event to the same DHIS2 total, or with the
    /// same name.
    fn double_count(
        &self,
        rule: &Dhis2Rule,
        item: Option<usize>,
        other: Option<&Dhis2Rule>,
        other_item: Option<usize>,
        same_name: bool,
        label: &str,
    ) -> MapError {
        let which = |r: &Dhis2Rule, i: Option<usize>| match i {
            Some(i) => format!("`{}` (`{}`, line {}, item {i})", r.field, r.name, r.line),
            None => format!("`{}` (`{}`, line {})", r.field, r.name, r.line),
        };
        let first = other.map_or_else(|| "another rule".to_owned(), |o| which(o, other_item));
        let message = if same_name {
            format!(
                "{} gives a contribution the same name as {first} (set `key` to what tells \
                 the items apart)",
                which(rule, item)
            )
        } else {
            format!(
                "{} and {first} count this event twice in one DHIS2 total (same data element, \
                 period, org unit and combos)",
                which(rule, item)
            )
        };
        self.error_at(&rule.field, rule.line, label, message)
    }

    /// The conditional request's query, its values URL-encoded.
    fn query(&self, q: &Query, scope: &Value, label: &str) -> Result<String, MapError> {
        match q {
            Query::Whole(e) => self
                .eval_string(e, scope, label)?
                .map(|s| crate::functions::encode_query(&s))
                .ok_or_else(|| self.field_error(e, label, "conditional query is empty")),
            Query::Params(params) => {
                let mut out = String::new();
                for (name, e) in params {
                    let value = self
                        .eval_string(e, scope, label)?
                        .ok_or_else(|| self.field_error(e, label, "search value is empty"))?;
                    if !out.is_empty() {
                        out.push('&');
                    }
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&crate::functions::encode_query_value(&value));
                }
                Ok(out)
            }
        }
    }

    /// One DHIS2 contribution of a rule, for the current item.
    ///
    /// The period is the one of the event's own date (`period.date`) in
    /// `calendar`, the DHIS2 server's system calendar: it is fixed here,
    /// when the event is mapped and stored, never at delivery or replay.
    fn contribution(
        &self,
        rule: &Dhis2Rule,
        name: String,
        scope: &Value,
        label: &str,
        calendar: Calendar,
    ) -> Result<Dhis2Contribution, MapError> {
        let id = |f: &IdField| -> Result<String, MapError> {
            let err = |failure: Failure| self.error_at(&f.field, f.line, label, failure);
            let v = template::render(&f.tpl, scope).map_err(|e| {
                err(Failure {
                    message: e.message,
                    values: e.values,
                    refused: e.refused,
                })
            })?;
            let text = v
                .as_ref()
                .and_then(crate::json::scalar_string)
                .ok_or_else(|| err("no id produced".into()))?;
            // The id can come from the event: its text stays apart.
            dhis2_id(&text, f.allow_default).map_err(|_| {
                err(Failure {
                    message: "the produced id is not a DHIS2 UID (11 letters and digits, \
                              starting with a letter), `code:CODE` or `default`"
                        .into(),
                    values: vec![format!("id `{text}`")],
                    refused: false,
                })
            })
        };
        let data_element = id(&rule.data_element)?;
        let category_option_combo = id(&rule.category_option_combo)?;
        let attribute_option_combo = id(&rule.attribute_option_combo)?;
        let org_unit = id(&rule.org_unit)?;
        let date_value = rule
            .period_date
            .eval(scope)
            .map_err(|m| self.field_error(&rule.period_date, label, m))?;
        let date = crate::functions::date_of(&date_value)
            .map_err(|m| self.field_error(&rule.period_date, label, m))?;
        let value = match &rule.value {
            None => serde_json::Value::from(1),
            Some((tpl, field, line)) => {
                let err = |failure: Failure| self.error_at(field, *line, label, failure);
                let v = template::render(tpl, scope).map_err(|e| {
                    err(Failure {
                        message: e.message,
                        values: e.values,
                        refused: e.refused,
                    })
                })?;
                match (rule.aggregation, v) {
                    (_, None) => {
                        return Err(err(
                            "no value produced (use `when` to skip a contribution)".into()
                        ));
                    }
                    (
                        Aggregation::Last,
                        Some(
                            v @ (serde_json::Value::String(_)
                            | serde_json::Value::Number(_)
                            | serde_json::Value::Bool(_)),
                        ),
                    ) => v,
                    (Aggregation::Last, Some(_)) => {
                        return Err(err("value must be text, a number or a boolean".into()));
                    }
                    (_, Some(v @ serde_json::Value::Number(_))) => v,
                    (agg, Some(_)) => {
                        return Err(err(format!(
                            "`{agg:?}` needs a number; convert text with `| number`"
                        )
                        .to_lowercase()
                        .into()));
                    }
                }
            }
        };
        // A date with no period in the calendar (Ethiopian Pagume, a Nepali
        // date outside DHIS2's table) is a mapping error: the event is
        // parked with the reason; the date itself goes with the values.
        let period = rule.period_type.period_id_in(calendar, date).map_err(|e| {
            self.field_error(
                &rule.period_date,
                label,
                Failure {
                    message: e.reason(),
                    values: vec![format!("date {}", crate::functions::iso_date(date))],
                    refused: false,
                },
            )
        })?;
        Ok(Dhis2Contribution {
            rule: name,
            data_element,
            period,
            org_unit,
            category_option_combo,
            attribute_option_combo,
            value,
            aggregation: rule.aggregation,
            date: crate::functions::iso_date(date),
        })
    }
}

/// Puts a `for_each` item and its index in scope.
fn set_item(scope_obj: &Scope, item: &Item) {
    scope_obj.set(&ITEM, item.value.clone());
    scope_obj.set(&INDEX, Value::from(item.index));
}

/// Options for loading a mapping set.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Key for `pseudonym()` on live events; test cases use
    /// [`PseudonymKey::for_tests`].
    pub pseudonym_key: Option<PseudonymKey>,
    /// Validate every produced FHIR resource against the typed models.
    pub validate_fhir: bool,
    /// The DHIS2 server's system calendar, in which DHIS2 period ids are
    /// computed from each event's date. Test cases in mapping files always
    /// use `iso8601`: their expected periods are Gregorian ids.
    pub calendar: Calendar,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            pseudonym_key: None,
            validate_fhir: true,
            calendar: Calendar::Iso8601,
        }
    }
}

/// All loaded mappings, indexed by source.
#[derive(Debug)]
pub struct MappingSet {
    mappings: Vec<Mapping>,
    by_source: HashMap<String, Vec<usize>>,
    runtime: Value,
    test_runtime: Value,
    validate_fhir: bool,
    calendar: Calendar,
}

impl MappingSet {
    /// Loads every `*.yaml`/`*.yml` file under `dir`, recursively, and
    /// reports every problem of every file.
    pub fn load_dir(dir: &Path, options: LoadOptions) -> Result<Self, LoadErrors> {
        let mut files = Vec::new();
        collect_yaml(dir, &mut files).map_err(|e| {
            LoadErrors(vec![LoadError {
                file: dir.to_path_buf(),
                line: None,
                column: None,
                field: String::new(),
                message: e,
            }])
        })?;
        if files.is_empty() {
            return Err(LoadErrors(vec![LoadError {
                file: dir.to_path_buf(),
                line: None,
                column: None,
                field: String::new(),
                message: "no mapping files (*.yaml) found".into(),
            }]));
        }
        Self::load_files(&files, options)
    }

    /// Loads the given mapping files.
    pub fn load_files(files: &[PathBuf], options: LoadOptions) -> Result<Self, LoadErrors> {
        let mut errors = Vec::new();
        let mut mappings: Vec<Mapping> = Vec::new();
        for file in files {
            match Mapping::load(file) {
                Ok(m) => {
                    if let Some(other) = mappings.iter().find(|o| o.id == m.id) {
                        errors.push(LoadError {
                            file: file.clone(),
                            line: None,
                            column: None,
                            field: "id".into(),
                            message: format!(
                                "duplicate mapping id `{}` (also in {})",
                                m.id,
                                other.file.display()
                            ),
                        });
                    } else {
                        mappings.push(m);
                    }
                }
                Err(mut errs) => errors.append(&mut errs),
            }
        }
        let set = Self::new(mappings, options);
        // Every produced resource must be valid FHIR: run each test event
        // now so that a bad template fails the load, not the first event.
        for m in &set.mappings {
            for tc in m.tests.iter().filter(|tc| !tc.expects_error()) {
                if let Err(MapError::InvalidFhir {
                    resource,
                    message,
                    at,
                    ..
                }) = set.map_with(m, &tc.event, &set.test_runtime, true, Calendar::Iso8601)
                {
                    // Load errors name the shared file, not in the field.
                    let field = at
                        .field
                        .rsplit_once(':')
                        .map_or(at.field.clone(), |(_, f)| f.to_owned());
                    errors.push(LoadError {
                        file: m.fhir_file(&resource),
                        line: Some(at.line),
                        column: None,
                        field,
                        message: format!("produces invalid FHIR for test `{}`: {message}", tc.name),
                    });
                }
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(LoadErrors(errors))
        }
    }

    fn new(mappings: Vec<Mapping>, options: LoadOptions) -> Self {
        let mut by_source: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, m) in mappings.iter().enumerate() {
            by_source.entry(m.source.clone()).or_default().push(i);
        }
        Self {
            mappings,
            by_source,
            runtime: Value::from_object(Runtime {
                pseudonym_key: options.pseudonym_key,
            }),
            test_runtime: Value::from_object(Runtime {
                pseudonym_key: Some(PseudonymKey::for_tests()),
            }),
            validate_fhir: options.validate_fhir,
            calendar: options.calendar,
        }
    }

    /// The DHIS2 calendar period ids are computed in (from
    /// [`LoadOptions::calendar`]).
    #[must_use]
    pub fn calendar(&self) -> Calendar {
        self.calendar
    }

    /// The loaded mappings.
    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// The static DHIS2 references of every mapping, mapping by mapping
    /// ([`Mapping::static_dhis2_rules`]).
    pub fn static_dhis2_rules(&self) -> Vec<crate::static_refs::StaticDhis2Rule> {
        self.mappings
            .iter()
            .flat_map(Mapping::static_dhis2_rules)
            .collect()
    }

    /// Maps one event through the one mapping that matches it.
    pub fn map(&self, event: &Event) -> Result<MappedEvent, MapError> {
        self.map_at(event, &self.runtime, self.calendar)
    }

    /// Maps an event through the mapping with this id (chosen by the
    /// event's route, e.g. its AMQP routing key), ignoring `match`. The
    /// mapping must exist and be for the event's source.
    pub fn map_by_id(&self, mapping_id: &str, event: &Event) -> Result<MappedEvent, MapError> {
        let label = event.message_id.clone().unwrap_or_else(|| "(no id)".into());
        match self.mappings.iter().find(|m| m.id == mapping_id) {
            Some(m) if m.source == event.source => {
                self.map_with(m, event, &self.runtime, self.validate_fhir, self.calendar)
            }
            found => Err(MapError::UnknownMapping {
                mapping: mapping_id.to_owned(),
                source_app: event.source.clone(),
                event: label,
                other_source: found.map(|m| m.source.clone()),
            }),
        }
    }

    pub(crate) fn map_for_test(&self, event: &Event) -> Result<MappedEvent, MapError> {
        self.map_at(event, &self.test_runtime, Calendar::Iso8601)
    }

    /// Whether `m` takes the test event `event`: same source, and its
    /// `match` holds (one that fails counts as no).
    pub(crate) fn takes_for_test(&self, m: &Mapping, event: &Event) -> bool {
        if event.source != m.source {
            return false;
        }
        let (_, scope) = base_scope(event, &self.test_runtime);
        m.matches(&scope, "(test)").unwrap_or(false)
    }

    fn map_at(
        &self,
        event: &Event,
        runtime: &Value,
        calendar: Calendar,
    ) -> Result<MappedEvent, MapError> {
        let label = event.message_id.clone().unwrap_or_else(|| "(no id)".into());
        let (scope_obj, scope) = base_scope(event, runtime);
        let mut found: Option<&Mapping> = None;
        let mut all = Vec::new();
        let mut match_error = None;
        for &i in self
            .by_source
            .get(&event.source)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(m) = self.mappings.get(i) else {
                continue;
            };
            // A `match` that fails on an event meant for another mapping
            // must not block that mapping: it counts as no match, and is
            // the reason given only when nothing matches.
            match m.matches(&scope, &label) {
                Ok(true) => {
                    found.get_or_insert(m);
                    all.push(m.id.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    match_error.get_or_insert(e);
                }
            }
        }
        match (found, all.len()) {
            (None, _) => Err(match_error.unwrap_or(MapError::NoMapping {
                source_app: event.source.clone(),
                event: label,
            })),
            (Some(m), 1) => m.apply_in(event, &scope_obj, &scope, self.validate_fhir, calendar),
            (Some(_), _) => Err(MapError::Ambiguous {
                source_app: event.source.clone(),
                event: label,
                mappings: all,
            }),
        }
    }

    /// Maps an event through one given mapping, ignoring `match`.
    pub(crate) fn map_with(
        &self,
        m: &Mapping,
        event: &Event,
        runtime: &Value,
        validate_fhir: bool,
        calendar: Calendar,
    ) -> Result<MappedEvent, MapError> {
        let (scope_obj, scope) = base_scope(event, runtime);
        m.apply_in(event, &scope_obj, &scope, validate_fhir, calendar)
    }
}

fn base_scope(event: &Event, runtime: &Value) -> (Arc<Scope>, Value) {
    let mut vars = HashMap::with_capacity(16);
    vars.insert(Arc::from("event"), crate::json::lazy(event.payload.clone()));
    vars.insert(Arc::from("source"), Value::from(event.source.as_str()));
    vars.insert(
        Arc::from("message_id"),
        event
            .message_id
            .as_deref()
            .map_or(Value::from(()), Value::from),
    );
    vars.insert(Arc::from(RUNTIME), runtime.clone());
    let scope_obj = Scope::new(vars);
    let scope = Value::from_dyn_object(scope_obj.clone());
    (scope_obj, scope)
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths {
        // Hidden entries are skipped: a Kubernetes ConfigMap volume holds
        // every file twice, once under a hidden `..data` folder.
        if path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) && !crate::include::is_shared(&path)
        {
            out.push(path);
        }
    }
    Ok(())
}
