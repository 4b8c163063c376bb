//! The DHIS2 references a mapping names statically: what its DHIS2 rules
//! can send whatever the event, read from the mapping alone, so that a
//! DHIS2 preflight can check them before any event arrives.
//!
//! For each DHIS2 rule, each id field (data element, category and
//! attribute option combos, org unit) yields the ids it can produce:
//! - a literal (`fbfJHSPpUQD`, `code:MAL_RDT_TESTED`, `default`);
//! - every cell of the lookup-table column an expression returns:
//!   `lookup(facilities, …)` of a table with a `value` column, or a
//!   column of a whole-row lookup (`facility.org_unit` where the binding
//!   `facility` is `lookup(facilities, …)`), through `let` bindings, dict
//!   literals of lookups, `a or fail('…')`, `a if c else b` and
//!   `coalesce(…)`; a lookup with a literal key yields that row's cell
//!   only, and a literal default is one more id;
//! - with the rule's period type.
//!
//! What depends on the event (`event.x`, `item.x`, text built with `~`,
//! filters, any other function) is not static and is skipped: such a
//! field is marked incomplete ([`FieldRefs::complete`]) and the ids it
//! produces are checked at delivery, as before. The reading never
//! evaluates anything and never fails: what it does not understand is
//! computed.

use std::path::PathBuf;

use crate::mapping::{IdField, Mapping, dhis2_id};
use crate::period::PeriodType;
use crate::table::{CellPlace, Table};
use crate::template::Tpl;

/// Most `let` bindings followed through one expression.
const MAX_DEPTH: u32 = 16;

/// An id field of a DHIS2 rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RefField {
    /// `data_element`.
    DataElement,
    /// `category_option_combo`.
    CategoryOptionCombo,
    /// `attribute_option_combo`.
    AttributeOptionCombo,
    /// `org_unit`.
    OrgUnit,
}

impl RefField {
    /// The field's key in a mapping file.
    pub fn key(self) -> &'static str {
        match self {
            Self::DataElement => "data_element",
            Self::CategoryOptionCombo => "category_option_combo",
            Self::AttributeOptionCombo => "attribute_option_combo",
            Self::OrgUnit => "org_unit",
        }
    }
}

/// A lookup-table cell an id comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCell {
    /// The table's name in the mapping.
    pub table: String,
    /// The CSV file, or the mapping or shared file of inline rows.
    pub file: PathBuf,
    /// The CSV line, or the line of the table's declaration.
    pub line: u64,
    /// For inline rows: the 0-based index in `rows`.
    pub row: Option<u64>,
}

impl std::fmt::Display for TableCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "table `{}`", self.table)?;
        if let Some(r) = self.row {
            write!(f, " rows[{r}]")?;
        }
        write!(f, ", {}:{}", self.file.display(), self.line)
    }
}

/// One id a rule can send, and where it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticRef {
    /// As DHIS2 is asked for it: a UID or `code:CODE` (`default` is the
    /// default combo's UID, `HllvX50cXC0`).
    pub id: String,
    /// The lookup-table cell it comes from, if not a literal.
    pub cell: Option<TableCell>,
    /// Why it can never work (not a UID nor `code:CODE`), if so: a table
    /// cell the load-time checks do not see.
    pub malformed: Option<String>,
}

/// The ids one field of a rule can produce.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldRefs {
    /// The field's place: `dhis2[0].org_unit`.
    pub field: String,
    /// The line of the field in the rule's file.
    pub line: u64,
    /// Each id once, in the order found.
    pub refs: Vec<StaticRef>,
    /// Whether these are all the ids the field can produce (`false` when
    /// some part of its expression depends on the event).
    pub complete: bool,
}

/// The static DHIS2 references of one rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticDhis2Rule {
    /// The mapping's id.
    pub mapping: String,
    /// The rule's name.
    pub name: String,
    /// The file the rule is written in (a shared file for an included
    /// rule).
    pub file: PathBuf,
    /// The rule's line there.
    pub line: u64,
    /// The rule's period type.
    pub period_type: PeriodType,
    /// `data_element`.
    pub data_element: FieldRefs,
    /// `category_option_combo`.
    pub category_option_combo: FieldRefs,
    /// `attribute_option_combo`.
    pub attribute_option_combo: FieldRefs,
    /// `org_unit`.
    pub org_unit: FieldRefs,
}

impl StaticDhis2Rule {
    /// The four fields with their kind.
    pub fn fields(&self) -> [(RefField, &FieldRefs); 4] {
        [
            (RefField::DataElement, &self.data_element),
            (RefField::CategoryOptionCombo, &self.category_option_combo),
            (RefField::AttributeOptionCombo, &self.attribute_option_combo),
            (RefField::OrgUnit, &self.org_unit),
        ]
    }
}

/// The static DHIS2 references of every rule of `mapping`.
pub(crate) fn of(mapping: &Mapping) -> Vec<StaticDhis2Rule> {
    let tables: Vec<(&str, &Table)> = mapping
        .tables
        .iter()
        .filter_map(|(name, v)| Some((&**name, v.downcast_object_ref::<Table>()?)))
        .collect();
    mapping
        .dhis2
        .iter()
        .map(|rule| {
            let env = Env {
                tables: &tables,
                lets: rule
                    .lets
                    .iter()
                    .chain(&mapping.lets)
                    .map(|(n, e)| (&**n, &*e.source))
                    .collect(),
            };
            let file = rule.origin.clone().unwrap_or_else(|| mapping.file.clone());
            let shared = rule.origin.is_some();
            StaticDhis2Rule {
                mapping: mapping.id.clone(),
                name: rule.name.clone(),
                file,
                line: rule.line,
                period_type: rule.period_type,
                data_element: field_refs(&rule.data_element, &env, shared),
                category_option_combo: field_refs(&rule.category_option_combo, &env, shared),
                attribute_option_combo: field_refs(&rule.attribute_option_combo, &env, shared),
                org_unit: field_refs(&rule.org_unit, &env, shared),
            }
        })
        .collect()
}

/// What an expression can see: the mapping's tables and the `let`
/// bindings (the rule's, then the mapping's) by name.
struct Env<'a> {
    tables: &'a [(&'a str, &'a Table)],
    lets: Vec<(&'a str, &'a str)>,
}

impl Env<'_> {
    fn table(&self, name: &str) -> Option<usize> {
        self.tables.iter().position(|(n, _)| *n == name)
    }
    fn binding(&self, name: &str) -> Option<&str> {
        self.lets.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
    }
}

fn field_refs(f: &IdField, env: &Env<'_>, shared: bool) -> FieldRefs {
    let field = match f.field.split_once(':') {
        Some((_, rest)) if shared => rest.to_owned(),
        _ => f.field.clone(),
    };
    let shapes = match &f.tpl {
        Tpl::Lit(Some(serde_json::Value::String(s))) => vec![Shape::Id(s.clone(), None)],
        Tpl::Expr(e) => resolve(&tokens(&e.source), env, 0),
        _ => vec![Shape::Unknown],
    };
    let mut out = FieldRefs {
        field,
        line: f.line,
        refs: Vec::new(),
        complete: true,
    };
    for shape in shapes {
        match shape {
            Shape::Id(text, cell) => {
                let text = text.trim();
                if text.is_empty() {
                    // An empty cell: the mapping fails on it ("no id
                    // produced"), nothing is sent.
                    continue;
                }
                let (id, malformed) = match dhis2_id(text, f.allow_default) {
                    Ok(id) => (id, None),
                    Err(why) => (text.to_owned(), Some(why)),
                };
                if out.refs.iter().any(|r| r.id == id) {
                    continue;
                }
                let cell = cell.map(|(t, place)| TableCell {
                    table: env.tables.get(t).map_or("", |(n, _)| n).to_owned(),
                    file: place.file,
                    line: place.line,
                    row: place.row,
                });
                out.refs.push(StaticRef {
                    id,
                    cell,
                    malformed,
                });
            }
            Shape::Nothing => {}
            Shape::Table(_) | Shape::Rows(..) | Shape::Dict(_) | Shape::Unknown => {
                out.complete = false;
            }
        }
    }
    out
}

/// What (part of) an expression can evaluate to.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    /// Text: a literal, or a table cell (table index, where).
    Id(String, Option<(usize, CellPlace)>),
    /// A table itself.
    Table(usize),
    /// Whole rows of a table without a `value` column: every row, or the
    /// row of one literal key.
    Rows(usize, Option<String>),
    /// A dict literal: keys and what each value can be.
    Dict(Vec<(String, Vec<Shape>)>),
    /// No id at all (`none`, `false`, `fail('…')`).
    Nothing,
    /// Depends on the event, or not understood.
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Open(char),
    Close(char),
    Dot,
    Comma,
    Colon,
    Op,
}

/// The tokens of a minijinja expression; anything unexpected is an
/// operator, which makes its expression computed.
fn tokens(src: &str) -> Vec<Tok> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            c if c.is_whitespace() => i += 1,
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                while let Some(&d) = chars.get(i) {
                    i += 1;
                    match d {
                        '\\' => {
                            if let Some(&e) = chars.get(i) {
                                s.push(match e {
                                    'n' => '\n',
                                    't' => '\t',
                                    other => other,
                                });
                                i += 1;
                            }
                        }
                        d if d == c => break,
                        d => s.push(d),
                    }
                }
                out.push(Tok::Str(s));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_alphanumeric() || *d == '_')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            c if c.is_ascii_digit() => {
                while chars
                    .get(i)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || *d == '.' || *d == '_')
                {
                    i += 1;
                }
                out.push(Tok::Num);
            }
            '(' | '[' | '{' => {
                out.push(Tok::Open(c));
                i += 1;
            }
            ')' | ']' | '}' => {
                out.push(Tok::Close(c));
                i += 1;
            }
            '.' => {
                out.push(Tok::Dot);
                i += 1;
            }
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1;
            }
            _ => {
                out.push(Tok::Op);
                i += 1;
            }
        }
    }
    out
}

fn is_word(t: &Tok, word: &str) -> bool {
    matches!(t, Tok::Ident(w) if w == word)
}

/// The positions of the tokens at bracket depth 0 that `hit` accepts.
fn top_level(toks: &[Tok], hit: impl Fn(&Tok) -> bool) -> Vec<usize> {
    let mut depth = 0i32;
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t {
            Tok::Open(_) => depth += 1,
            Tok::Close(_) => depth -= 1,
            t if depth == 0 && hit(t) => out.push(i),
            _ => {}
        }
    }
    out
}

/// `toks` split at the top-level tokens `hit` accepts.
fn split(toks: &[Tok], hit: impl Fn(&Tok) -> bool) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut start = 0;
    for i in top_level(toks, hit) {
        parts.push(&toks[start..i]);
        start = i + 1;
    }
    parts.push(&toks[start..]);
    parts
}

/// The index of the bracket closing the one opened at `open`.
fn closing(toks: &[Tok], open: usize) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in toks.iter().enumerate().skip(open) {
        match t {
            Tok::Open(_) => depth += 1,
            Tok::Close(_) => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// What the expression `toks` can evaluate to (a union).
fn resolve(toks: &[Tok], env: &Env<'_>, depth: u32) -> Vec<Shape> {
    if toks.is_empty() || depth > MAX_DEPTH {
        return vec![Shape::Unknown];
    }
    // `a if c else b`: a or b (`a if c` alone: a or nothing).
    if let Some(&at) = top_level(toks, |t| is_word(t, "if")).first() {
        let mut out = resolve(&toks[..at], env, depth);
        let rest = &toks[at + 1..];
        if let Some(&e) = top_level(rest, |t| is_word(t, "else")).first() {
            out.extend(resolve(&rest[e + 1..], env, depth));
        }
        return out;
    }
    // `a or b` is a or b; `a and b` is a (when falsy) or b.
    for word in ["or", "and"] {
        let parts = split(toks, |t| is_word(t, word));
        if parts.len() > 1 {
            return parts
                .into_iter()
                .flat_map(|p| resolve(p, env, depth))
                .collect();
        }
    }
    // Any other operator, filter or test computes something new.
    let computed = !top_level(toks, |t| {
        matches!(t, Tok::Op | Tok::Comma | Tok::Colon)
            || ["not", "in", "is"].iter().any(|w| is_word(t, w))
    })
    .is_empty();
    if computed {
        return vec![Shape::Unknown];
    }
    postfix(toks, env, depth)
}

/// A primary expression followed by attribute, index and call accessors.
fn postfix(toks: &[Tok], env: &Env<'_>, depth: u32) -> Vec<Shape> {
    let unknown = || vec![Shape::Unknown];
    let (mut shapes, mut i) = match toks.first() {
        Some(Tok::Str(s)) => (vec![Shape::Id(s.clone(), None)], 1),
        Some(Tok::Ident(name)) => {
            if matches!(toks.get(1), Some(Tok::Open('('))) {
                let Some(end) = closing(toks, 1) else {
                    return unknown();
                };
                let args = split(&toks[2..end], |t| *t == Tok::Comma);
                (call(name, &args, env, depth), end + 1)
            } else {
                let shapes = match name.as_str() {
                    "none" | "None" | "false" | "False" | "true" | "True" => {
                        vec![Shape::Nothing]
                    }
                    _ => match (env.table(name), env.binding(name)) {
                        (Some(t), _) => vec![Shape::Table(t)],
                        (None, Some(src)) => resolve(&tokens(src), env, depth + 1),
                        (None, None) => unknown(),
                    },
                };
                (shapes, 1)
            }
        }
        Some(Tok::Open('(')) => {
            let Some(end) = closing(toks, 0) else {
                return unknown();
            };
            (resolve(&toks[1..end], env, depth), end + 1)
        }
        Some(Tok::Open('{')) => {
            let Some(end) = closing(toks, 0) else {
                return unknown();
            };
            (vec![dict(&toks[1..end], env, depth)], end + 1)
        }
        _ => return unknown(),
    };
    while i < toks.len() {
        match (toks.get(i), toks.get(i + 1)) {
            (Some(Tok::Dot), Some(Tok::Ident(attr))) => {
                if matches!(toks.get(i + 2), Some(Tok::Open('('))) {
                    // A method call: computed.
                    return unknown();
                }
                shapes = attribute(shapes, Some(attr), env);
                i += 2;
            }
            (Some(Tok::Open('[')), _) => {
                let Some(end) = closing(toks, i) else {
                    return unknown();
                };
                shapes = match &toks[i + 1..end] {
                    [Tok::Str(key)] => attribute(shapes, Some(key), env),
                    _ => attribute(shapes, None, env),
                };
                i = end + 1;
            }
            _ => return unknown(),
        }
    }
    shapes
}

/// `{'a': x, 'b': y}`.
fn dict(toks: &[Tok], env: &Env<'_>, depth: u32) -> Shape {
    let mut entries = Vec::new();
    for entry in split(toks, |t| *t == Tok::Comma) {
        if entry.is_empty() {
            continue;
        }
        match split(entry, |t| *t == Tok::Colon).as_slice() {
            [[Tok::Str(key)], value] => entries.push((key.clone(), resolve(value, env, depth))),
            _ => return Shape::Unknown,
        }
    }
    Shape::Dict(entries)
}

/// `name(args…)`.
fn call(name: &str, args: &[&[Tok]], env: &Env<'_>, depth: u32) -> Vec<Shape> {
    match (name, args) {
        ("fail", _) => vec![Shape::Nothing],
        ("coalesce", _) => args.iter().flat_map(|a| resolve(a, env, depth)).collect(),
        ("lookup", [table, key, rest @ ..]) if rest.len() <= 1 => {
            let [Tok::Ident(t)] = table else {
                return vec![Shape::Unknown];
            };
            let Some(t) = env.table(t) else {
                return vec![Shape::Unknown];
            };
            let literal = match key {
                [Tok::Str(k)] => Some(k.as_str()),
                _ => None,
            };
            let found = literal.is_some_and(|k| {
                env.tables
                    .get(t)
                    .is_some_and(|(_, table)| table.get(k).is_some())
            });
            let mut out = lookup(env, t, literal);
            if let (Some(default), false) = (rest.first(), found) {
                out.extend(resolve(default, env, depth));
            }
            out
        }
        _ => vec![Shape::Unknown],
    }
}

/// `lookup(table, key)`: the `value` column's cells, or whole rows.
fn lookup(env: &Env<'_>, t: usize, key: Option<&str>) -> Vec<Shape> {
    let Some((_, table)) = env.tables.get(t) else {
        return vec![Shape::Unknown];
    };
    if table.value_column.is_none() {
        return vec![Shape::Rows(t, key.map(str::to_owned))];
    }
    match table.cells(None, key) {
        Some(cells) if cells.is_empty() => vec![Shape::Nothing],
        Some(cells) => cells
            .into_iter()
            .map(|(text, place)| Shape::Id(text, Some((t, place))))
            .collect(),
        None => vec![Shape::Unknown],
    }
}

/// `.attr` or `['attr']` (`None`: an index computed from the event).
fn attribute(shapes: Vec<Shape>, attr: Option<&str>, env: &Env<'_>) -> Vec<Shape> {
    let mut out = Vec::new();
    for shape in shapes {
        match (shape, attr) {
            (Shape::Table(t), key) => out.extend(lookup(env, t, key)),
            (Shape::Rows(t, key), Some(column)) => {
                match env
                    .tables
                    .get(t)
                    .and_then(|(_, table)| table.cells(Some(column), key.as_deref()))
                {
                    Some(cells) => out.extend(
                        cells
                            .into_iter()
                            .map(|(text, place)| Shape::Id(text, Some((t, place)))),
                    ),
                    None => out.push(Shape::Unknown),
                }
            }
            (Shape::Dict(entries), Some(key)) => {
                match entries.into_iter().find(|(k, _)| k == key) {
                    Some((_, v)) => out.extend(v),
                    None => out.push(Shape::Nothing),
                }
            }
            (Shape::Dict(entries), None) => out.extend(entries.into_iter().flat_map(|(_, v)| v)),
            (Shape::Nothing, _) => out.push(Shape::Nothing),
            _ => out.push(Shape::Unknown),
        }
    }
    out
}
