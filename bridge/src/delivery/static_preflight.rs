//! The static DHIS2 preflight: what can be checked before any event
//! arrives, with an empty store. The credentials (`/api/me`), the server's
//! version and system calendar (`/api/system/info`, the calendar against
//! `destinations.dhis2.calendar`), and every reference the mappings name
//! statically ([`kiungo_mappings::static_refs`]) against DHIS2's metadata:
//! - the data element, org unit and option combos exist;
//! - the data element is in a data set of the rule's period type;
//! - the org unit is assigned such a data set;
//! - the category option combo belongs to the data element's category
//!   combo;
//! - the attribute option combo belongs to the attribute category combo
//!   of a data set that takes the data element in the rule's period type
//!   (the default combo for a data set with the default category combo),
//!   as DHIS2's import checks (E7635) and its completeness and reports
//!   count by data set.
//!
//! With completeness configured, each data set's `timelyDays` is read too:
//! a `grace` that makes every registration late is a warning
//! ([`super::completeness_preflight`]).
//!
//! Each problem names the mapping file and line of the field (and the
//! lookup-table cell the id comes from), the id, and what was expected.
//! Used at start-up (merged into `/v1/preflight` beside the check of the
//! references in stored values) and by `kiungo config check --online`.
//! Ids a mapping computes from the event are not static: they are checked
//! at delivery, as before.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use kiungo_connectors::dhis2::{
    DataElementLinks, Dhis2Client, Dhis2Error, MetadataLinks, References,
};
use kiungo_mappings::period::Calendar;

use super::completeness::CompletenessConfig;
use kiungo_mappings::static_refs::{RefField, StaticDhis2Rule, StaticRef};
use serde::Serialize;

/// What a problem is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// DHIS2 refused the credentials (`/api/me` answered 401 or 403).
    Credentials,
    /// The server's system calendar is not the configured `calendar`.
    CalendarMismatch,
    /// A table cell that is not a UID nor `code:CODE`.
    MalformedId,
    /// The id names nothing DHIS2 knows (or lets this user see).
    NotFound,
    /// The data element is in no data set of the rule's period type.
    PeriodTypeMismatch,
    /// The org unit is assigned none of the data sets that hold the data
    /// element with the rule's period type.
    OrgUnitNotAssigned,
    /// The category option combo is not one of the data element's
    /// category combo.
    ComboMismatch,
    /// The attribute option combo is not one of the category combo of
    /// any data set that takes the data element in the rule's period type.
    AttributeComboMismatch,
    /// A completeness `grace` at or past the data set's `timelyDays`:
    /// DHIS2 counts every registration late (a warning).
    GraceAfterTimelyDays,
}

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Values would be refused or land where they should not: fix before
    /// relying on the deployment (`kiungo config check --online` fails).
    #[default]
    Error,
    /// Everything lands, but something DHIS2 reports will look wrong.
    Warning,
}

/// One problem, with its place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// What it is about.
    pub kind: ProblemKind,
    /// How bad it is.
    pub severity: Severity,
    /// The mapping (or shared) file of the field, for a mapping problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The line of the field in that file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// The mapping's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<String>,
    /// The field: `dhis2[0].org_unit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The id at fault, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where a table-made id is written: table `facilities`,
    /// `facilities.csv:4`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => match (&self.mapping, &self.field) {
                (None, Some(field)) => write!(f, "destinations.dhis2.{field}: ")?,
                _ => f.write_str("destinations.dhis2: ")?,
            },
        }
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        if let (Some(m), Some(field)) = (&self.mapping, &self.field) {
            write!(f, "{m} {field}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(from) = &self.from {
            write!(f, " (from {from})")?;
        }
        Ok(())
    }
}

/// The outcome of the static preflight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StaticReport {
    /// The server's version (`/api/system/info`).
    pub version: Option<String>,
    /// The server's system calendar.
    pub calendar: Option<String>,
    /// The DHIS2 rules read.
    pub rules: usize,
    /// The distinct references checked.
    pub references: usize,
    /// Rule fields whose ids are (partly) computed from the event, checked
    /// at delivery only.
    pub computed_fields: usize,
    /// Every problem: credentials and calendar first, then rule by rule.
    pub problems: Vec<Problem>,
}

/// Runs the static preflight: `/api/me`, `/api/system/info`, then the
/// batched metadata look-ups, and the `timelyDays` of the `completeness`
/// data sets. Credentials DHIS2 refuses are a problem of the report
/// (nothing else can be checked then); DHIS2 not answering is the error.
pub async fn run(
    client: &Dhis2Client,
    rules: &[StaticDhis2Rule],
    calendar: Calendar,
    completeness: &[CompletenessConfig],
) -> Result<StaticReport, Dhis2Error> {
    let mut report = StaticReport {
        rules: rules.len(),
        ..StaticReport::default()
    };
    match client.me().await {
        Ok(_) => {}
        Err(Dhis2Error::Status {
            status: status @ (401 | 403),
            message,
            ..
        }) => {
            report.problems.push(Problem {
                kind: ProblemKind::Credentials,
                severity: Severity::Error,
                file: None,
                line: None,
                mapping: None,
                field: None,
                id: None,
                from: None,
                message: format!(
                    "DHIS2 refused the credentials (HTTP {status} from /api/me: {}); check destinations.dhis2.server.auth",
                    super::sinks::redact(&message)
                ),
            });
            return Ok(report);
        }
        Err(e) => return Err(e),
    }
    let info = client.system_info().await?;
    report.version = info.version;
    report.calendar = info.calendar.clone();
    if let Some(server) = &info.calendar
        && !same_calendar(server, calendar)
    {
        report.problems.push(Problem {
            kind: ProblemKind::CalendarMismatch,
            severity: Severity::Error,
            file: None,
            line: None,
            mapping: None,
            field: None,
            id: None,
            from: None,
            message: format!(
                "the server's system calendar is `{server}` but destinations.dhis2.calendar is `{}`: period ids would name other periods; set `calendar: {server}`",
                calendar.name()
            ),
        });
    }
    let refs = references(rules);
    report.references = refs.data_elements.len()
        + refs.org_units.len()
        + refs.category_option_combos.len()
        + refs.attribute_option_combos.len();
    report.computed_fields = rules
        .iter()
        .flat_map(|r| r.fields())
        .filter(|(_, f)| !f.complete)
        .count();
    let links = client.metadata_links(&refs).await?;
    report.problems.extend(check(rules, &links));
    if !completeness.is_empty() {
        let ids = completeness.iter().map(|c| c.data_set.clone()).collect();
        let timeliness = client.data_set_timeliness(&ids).await?;
        report
            .problems
            .extend(super::completeness_preflight::grace_problems(
                completeness,
                &timeliness,
            ));
    }
    Ok(report)
}

/// Whether DHIS2's calendar `server` is `configured`: `gregorian` names
/// the same periods as `iso8601`.
fn same_calendar(server: &str, configured: Calendar) -> bool {
    server == configured.name() || (server == "gregorian" && configured == Calendar::Iso8601)
}

/// The well-formed static references of `rules`, by kind.
pub fn references(rules: &[StaticDhis2Rule]) -> References {
    let mut refs = References::default();
    for rule in rules {
        for (kind, field) in rule.fields() {
            let set = match kind {
                RefField::DataElement => &mut refs.data_elements,
                RefField::CategoryOptionCombo => &mut refs.category_option_combos,
                RefField::AttributeOptionCombo => &mut refs.attribute_option_combos,
                RefField::OrgUnit => &mut refs.org_units,
            };
            set.extend(
                field
                    .refs
                    .iter()
                    .filter(|r| r.malformed.is_none())
                    .map(|r| r.id.clone()),
            );
        }
    }
    refs
}

/// The problems of `rules` given what DHIS2 said (`links`), in rule
/// order.
pub fn check(rules: &[StaticDhis2Rule], links: &MetadataLinks) -> Vec<Problem> {
    let mut out = Vec::new();
    for rule in rules {
        let problem = |kind, field: RefField, r: &StaticRef, message: String| Problem {
            kind,
            severity: Severity::Error,
            file: Some(rule.file.display().to_string()),
            line: Some(match field {
                RefField::DataElement => rule.data_element.line,
                RefField::CategoryOptionCombo => rule.category_option_combo.line,
                RefField::AttributeOptionCombo => rule.attribute_option_combo.line,
                RefField::OrgUnit => rule.org_unit.line,
            }),
            mapping: Some(rule.mapping.clone()),
            field: Some(match field {
                RefField::DataElement => rule.data_element.field.clone(),
                RefField::CategoryOptionCombo => rule.category_option_combo.field.clone(),
                RefField::AttributeOptionCombo => rule.attribute_option_combo.field.clone(),
                RefField::OrgUnit => rule.org_unit.field.clone(),
            }),
            id: Some(r.id.clone()),
            from: r.cell.as_ref().map(ToString::to_string),
            message,
        };
        // Malformed and unknown ids.
        for (field, refs) in rule.fields() {
            for r in &refs.refs {
                if let Some(why) = &r.malformed {
                    out.push(problem(ProblemKind::MalformedId, field, r, why.clone()));
                    continue;
                }
                let found = match field {
                    RefField::DataElement => links.data_elements.contains_key(&r.id),
                    RefField::OrgUnit => links.org_units.contains_key(&r.id),
                    _ => links.option_combos.contains_key(&r.id),
                };
                if !found {
                    let what = match field {
                        RefField::DataElement => "data element",
                        RefField::OrgUnit => "org unit",
                        RefField::CategoryOptionCombo => "category option combo",
                        RefField::AttributeOptionCombo => "attribute option combo",
                    };
                    out.push(problem(
                        ProblemKind::NotFound,
                        field,
                        r,
                        format!(
                            "{what} `{}` not found in DHIS2 (or not visible to this user)",
                            r.id
                        ),
                    ));
                }
            }
        }
        let period = rule.period_type.name();
        // Org unit → the data elements whose fitting data sets it lacks,
        // and those data sets; combo → the data elements it does not fit.
        let mut unassigned: Vec<(&StaticRef, Vec<String>, BTreeSet<String>)> = Vec::new();
        let mut misfits: Vec<(&StaticRef, Vec<String>)> = Vec::new();
        let mut attribute_misfits: Vec<(&StaticRef, Vec<String>)> = Vec::new();
        for de_ref in &rule.data_element.refs {
            let Some(de) = links.data_elements.get(&de_ref.id) else {
                continue;
            };
            let de_name = named(&de.id, de.name.as_deref());
            // The data sets that take this data element in this period
            // type.
            let fitting: BTreeSet<&str> = de
                .data_sets
                .iter()
                .filter(|ds| {
                    links
                        .data_sets
                        .get(*ds)
                        .and_then(|d| d.period_type.as_deref())
                        == Some(period)
                })
                .map(String::as_str)
                .collect();
            if fitting.is_empty() {
                let message = if de.data_sets.is_empty() {
                    format!(
                        "data element {de_name} is in no data set; expected one of period type {period}"
                    )
                } else {
                    format!(
                        "the rule's period type is {period} but data element {de_name} is only in {}",
                        data_sets_text(de, links)
                    )
                };
                out.push(problem(
                    ProblemKind::PeriodTypeMismatch,
                    RefField::DataElement,
                    de_ref,
                    message,
                ));
            } else {
                for ou_ref in &rule.org_unit.refs {
                    let Some(ou) = links.org_units.get(&ou_ref.id) else {
                        continue;
                    };
                    if !paired(de_ref, ou_ref)
                        || fitting.iter().any(|ds| ou.data_sets.contains(*ds))
                    {
                        continue;
                    }
                    let sets = fitting.iter().map(|ds| {
                        named(ds, links.data_sets.get(*ds).and_then(|d| d.name.as_deref()))
                    });
                    match unassigned.iter_mut().find(|(r, _, _)| r.id == ou_ref.id) {
                        Some((_, des, all)) => {
                            des.push(de_name.clone());
                            all.extend(sets);
                        }
                        None => unassigned.push((ou_ref, vec![de_name.clone()], sets.collect())),
                    }
                }
            }
            attribute_misfits_of(
                rule,
                de_ref,
                &de_name,
                &fitting,
                links,
                &mut attribute_misfits,
            );
            let Some(combo) = &de.category_combo else {
                continue;
            };
            for coc_ref in &rule.category_option_combo.refs {
                let Some(coc) = links.option_combos.get(&coc_ref.id) else {
                    continue;
                };
                if !paired(de_ref, coc_ref) || coc.category_combo.as_ref() == Some(combo) {
                    continue;
                }
                let takes = format!("{de_name} takes `{combo}`");
                match misfits.iter_mut().find(|(r, _)| r.id == coc_ref.id) {
                    Some((_, des)) => des.push(takes),
                    None => misfits.push((coc_ref, vec![takes])),
                }
            }
        }
        for (ou_ref, des, sets) in unassigned {
            let ou = links.org_units.get(&ou_ref.id);
            out.push(problem(
                ProblemKind::OrgUnitNotAssigned,
                RefField::OrgUnit,
                ou_ref,
                format!(
                    "org unit {} is assigned no {period} data set holding data element {}; expected {}",
                    named(&ou_ref.id, ou.and_then(|o| o.name.as_deref())),
                    des.join(", "),
                    sets.into_iter().collect::<Vec<_>>().join(" or ")
                ),
            ));
        }
        for (coc_ref, des) in misfits {
            let coc = links.option_combos.get(&coc_ref.id);
            out.push(problem(
                ProblemKind::ComboMismatch,
                RefField::CategoryOptionCombo,
                coc_ref,
                format!(
                    "category option combo {} belongs to category combo `{}`, but data element {}",
                    named(&coc_ref.id, coc.and_then(|c| c.name.as_deref())),
                    coc.and_then(|c| c.category_combo.as_deref()).unwrap_or("?"),
                    des.join(", ")
                ),
            ));
        }
        for (aoc_ref, sets) in attribute_misfits {
            let aoc = links.option_combos.get(&aoc_ref.id);
            out.push(problem(
                ProblemKind::AttributeComboMismatch,
                RefField::AttributeOptionCombo,
                aoc_ref,
                format!(
                    "attribute option combo {} belongs to category combo `{}`, but {}",
                    named(&aoc_ref.id, aoc.and_then(|c| c.name.as_deref())),
                    aoc.and_then(|c| c.category_combo.as_deref()).unwrap_or("?"),
                    sets.join("; ")
                ),
            ));
        }
    }
    out
}

/// Notes in `misfits` each attribute option combo of `rule` (paired with
/// `de_ref`) whose category combo is that of none of the `fitting` data
/// sets of the data element: DHIS2 refuses such values under strict
/// checks (E7635), and completeness and reports, which count by data set
/// and attribute option combo, never see them. Data sets whose category
/// combo DHIS2 did not say are taken to fit.
fn attribute_misfits_of<'r>(
    rule: &'r StaticDhis2Rule,
    de_ref: &StaticRef,
    de_name: &str,
    fitting: &BTreeSet<&str>,
    links: &MetadataLinks,
    misfits: &mut Vec<(&'r StaticRef, Vec<String>)>,
) {
    if fitting.is_empty() {
        return;
    }
    let combos: BTreeMap<&str, Option<&str>> = fitting
        .iter()
        .map(|ds| {
            let combo = links
                .data_sets
                .get(*ds)
                .and_then(|d| d.category_combo.as_deref());
            (*ds, combo)
        })
        .collect();
    for aoc_ref in &rule.attribute_option_combo.refs {
        let Some(aoc) = links.option_combos.get(&aoc_ref.id) else {
            continue;
        };
        let Some(own) = aoc.category_combo.as_deref() else {
            continue;
        };
        if !paired(de_ref, aoc_ref) || combos.values().any(|c| c.is_none_or(|c| c == own)) {
            continue;
        }
        let takes = format!(
            "the {} data sets holding data element {de_name} take {}",
            rule.period_type.name(),
            combos
                .iter()
                .map(|(ds, combo)| format!(
                    "`{}` ({})",
                    combo.unwrap_or("?"),
                    named(ds, links.data_sets.get(*ds).and_then(|d| d.name.as_deref()))
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match misfits.iter_mut().find(|(r, _)| r.id == aoc_ref.id) {
            Some((_, all)) => all.push(takes),
            None => misfits.push((aoc_ref, vec![takes])),
        }
    }
}

/// Whether two ids can be sent together: ids from the same lookup table
/// come from the same row (a row's data element with that row's combo),
/// any others can meet.
fn paired(a: &StaticRef, b: &StaticRef) -> bool {
    match (&a.cell, &b.cell) {
        (Some(x), Some(y)) if x.table == y.table && x.file == y.file => {
            x.line == y.line && x.row == y.row
        }
        _ => true,
    }
}

fn named(id: &str, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("`{id}` ({n})"),
        None => format!("`{id}`"),
    }
}

/// `Monthly data sets `BfMAe6Itzgt` (Child Health), …` for the data
/// sets of `de`.
fn data_sets_text(de: &DataElementLinks, links: &MetadataLinks) -> String {
    let mut by_type: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ds in &de.data_sets {
        let d = links.data_sets.get(ds);
        by_type
            .entry(
                d.and_then(|d| d.period_type.clone())
                    .unwrap_or_else(|| "?".into()),
            )
            .or_default()
            .push(named(ds, d.and_then(|d| d.name.as_deref())));
    }
    by_type
        .into_iter()
        .map(|(t, sets)| format!("{t} data sets {}", sets.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use kiungo_connectors::dhis2::{DataSetLinks, OptionComboLinks, OrgUnitLinks};
    use kiungo_mappings::PeriodType;
    use kiungo_mappings::static_refs::{FieldRefs, TableCell};

    use super::*;

    fn literal(id: &str) -> StaticRef {
        StaticRef {
            id: id.into(),
            cell: None,
            malformed: None,
        }
    }

    fn cell(id: &str, table: &str, line: u64) -> StaticRef {
        StaticRef {
            id: id.into(),
            cell: Some(TableCell {
                table: table.into(),
                file: PathBuf::from(format!("{table}.csv")),
                line,
                row: None,
            }),
            malformed: None,
        }
    }

    fn field(name: &str, line: u64, refs: Vec<StaticRef>) -> FieldRefs {
        FieldRefs {
            field: format!("dhis2[0].{name}"),
            line,
            refs,
            complete: true,
        }
    }

    fn rule(
        period: PeriodType,
        des: Vec<StaticRef>,
        cocs: Vec<StaticRef>,
        ous: Vec<StaticRef>,
    ) -> StaticDhis2Rule {
        StaticDhis2Rule {
            mapping: "demo".into(),
            name: "r".into(),
            file: PathBuf::from("m.yaml"),
            line: 10,
            period_type: period,
            data_element: field("data_element", 11, des),
            category_option_combo: field("category_option_combo", 12, cocs),
            attribute_option_combo: field(
                "attribute_option_combo",
                10,
                vec![literal("HllvX50cXC0")],
            ),
            org_unit: field("org_unit", 13, ous),
        }
    }

    /// ANC 1st visit in the Monthly Reproductive Health set (combo
    /// Fixed/Outreach), Ngelehun assigned it, Kambia not.
    fn links() -> MetadataLinks {
        let mut l = MetadataLinks::default();
        l.data_elements.insert(
            "fbfJHSPpUQD".into(),
            DataElementLinks {
                id: "fbfJHSPpUQD".into(),
                name: Some("ANC 1st visit".into()),
                category_combo: Some("KYYSTxeVw28".into()),
                data_sets: ["QX4ZTUbOt3a".to_owned()].into(),
            },
        );
        l.data_sets.insert(
            "QX4ZTUbOt3a".into(),
            DataSetLinks {
                id: "QX4ZTUbOt3a".into(),
                name: Some("Reproductive Health".into()),
                period_type: Some("Monthly".into()),
                category_combo: Some("bjDvmb4bfuf".into()),
            },
        );
        for (id, sets) in [
            ("DiszpKrYNg8", vec!["QX4ZTUbOt3a"]),
            ("PMa2VCrupOd", vec![]),
        ] {
            l.org_units.insert(
                id.into(),
                OrgUnitLinks {
                    id: id.into(),
                    name: None,
                    data_sets: sets.into_iter().map(str::to_owned).collect(),
                },
            );
        }
        for (id, combo) in [
            ("pq2XI5kz2BY", "KYYSTxeVw28"),
            ("Prlt0C1RF0s", "dzjKKQq0cSO"),
            ("HllvX50cXC0", "bjDvmb4bfuf"),
        ] {
            l.option_combos.insert(
                id.into(),
                OptionComboLinks {
                    id: id.into(),
                    name: None,
                    category_combo: Some(combo.into()),
                },
            );
        }
        l
    }

    fn kinds(problems: &[Problem]) -> Vec<(ProblemKind, Option<u64>, Option<&str>)> {
        problems
            .iter()
            .map(|p| (p.kind, p.line, p.id.as_deref()))
            .collect()
    }

    #[test]
    fn a_clean_rule_has_no_problem() {
        let r = rule(
            PeriodType::Monthly,
            vec![literal("fbfJHSPpUQD")],
            vec![literal("pq2XI5kz2BY")],
            vec![cell("DiszpKrYNg8", "facilities", 2)],
        );
        assert_eq!(check(&[r], &links()), []);
    }

    #[test]
    fn each_problem_names_its_line_id_and_what_was_expected() {
        let mut bad = cell("x", "facilities", 5);
        bad.malformed = Some("`x` is not a DHIS2 UID".into());
        let r = rule(
            PeriodType::Monthly,
            vec![literal("fbfJHSPpUQD"), literal("NoSuchDE001")],
            vec![literal("pq2XI5kz2BY"), literal("Prlt0C1RF0s")],
            vec![
                cell("DiszpKrYNg8", "facilities", 2),
                cell("PMa2VCrupOd", "facilities", 3),
                cell("NoSuchOU001", "facilities", 4),
                bad,
            ],
        );
        let problems = check(&[r], &links());
        assert_eq!(
            kinds(&problems),
            [
                (ProblemKind::NotFound, Some(11), Some("NoSuchDE001")),
                (ProblemKind::NotFound, Some(13), Some("NoSuchOU001")),
                (ProblemKind::MalformedId, Some(13), Some("x")),
                (
                    ProblemKind::OrgUnitNotAssigned,
                    Some(13),
                    Some("PMa2VCrupOd")
                ),
                (ProblemKind::ComboMismatch, Some(12), Some("Prlt0C1RF0s")),
            ]
        );
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[1],
            "m.yaml:13: demo dhis2[0].org_unit: org unit `NoSuchOU001` not found in DHIS2 \
             (or not visible to this user) (from table `facilities`, facilities.csv:4)"
        );
        assert_eq!(
            text[3],
            "m.yaml:13: demo dhis2[0].org_unit: org unit `PMa2VCrupOd` is assigned no Monthly \
             data set holding data element `fbfJHSPpUQD` (ANC 1st visit); expected \
             `QX4ZTUbOt3a` (Reproductive Health) (from table `facilities`, facilities.csv:3)"
        );
        assert_eq!(
            text[4],
            "m.yaml:12: demo dhis2[0].category_option_combo: category option combo \
             `Prlt0C1RF0s` belongs to category combo `dzjKKQq0cSO`, but data element \
             `fbfJHSPpUQD` (ANC 1st visit) takes `KYYSTxeVw28`"
        );
    }

    #[test]
    fn a_period_type_no_data_set_has_is_one_problem_per_data_element() {
        let r = rule(
            PeriodType::Weekly,
            vec![literal("fbfJHSPpUQD")],
            vec![literal("pq2XI5kz2BY")],
            vec![literal("PMa2VCrupOd")],
        );
        let problems = check(&[r], &links());
        assert_eq!(
            kinds(&problems),
            [(
                ProblemKind::PeriodTypeMismatch,
                Some(11),
                Some("fbfJHSPpUQD")
            )]
        );
        assert!(
            problems[0].message.ends_with(
                "the rule's period type is Weekly but data element `fbfJHSPpUQD` (ANC 1st visit) \
                 is only in Monthly data sets `QX4ZTUbOt3a` (Reproductive Health)"
            ),
            "{}",
            problems[0].message
        );
    }

    /// A table whose rows give both the data element and its combo: only
    /// a row's own pair is checked, not every data element with every
    /// combo.
    #[test]
    fn ids_from_one_table_are_paired_row_by_row() {
        let mut l = links();
        l.data_elements.insert(
            "s46m5MS0hxu".into(),
            DataElementLinks {
                id: "s46m5MS0hxu".into(),
                name: None,
                category_combo: Some("dzjKKQq0cSO".into()),
                data_sets: ["QX4ZTUbOt3a".to_owned()].into(),
            },
        );
        let r = rule(
            PeriodType::Monthly,
            vec![
                cell("fbfJHSPpUQD", "pairs", 2),
                cell("s46m5MS0hxu", "pairs", 3),
            ],
            vec![
                cell("pq2XI5kz2BY", "pairs", 2),
                cell("Prlt0C1RF0s", "pairs", 3),
            ],
            vec![literal("DiszpKrYNg8")],
        );
        assert_eq!(check(&[r], &l), []);
    }

    /// The default attribute option combo fits a data set with the
    /// default category combo; one of "Target vs Result" does not, and
    /// the data set with that combo takes it but not the default.
    #[test]
    fn attribute_option_combos_must_be_of_the_data_sets_category_combo() {
        let mut l = links();
        l.option_combos.insert(
            "TargetAoc01".into(),
            OptionComboLinks {
                id: "TargetAoc01".into(),
                name: Some("Target".into()),
                category_combo: Some("WBW7RjsApsv".into()),
            },
        );
        let mut r = rule(
            PeriodType::Monthly,
            vec![literal("fbfJHSPpUQD")],
            vec![literal("pq2XI5kz2BY")],
            vec![literal("DiszpKrYNg8")],
        );
        assert_eq!(check(std::slice::from_ref(&r), &l), []);
        r.attribute_option_combo.refs = vec![literal("TargetAoc01")];
        let problems = check(std::slice::from_ref(&r), &l);
        assert_eq!(
            kinds(&problems),
            [(
                ProblemKind::AttributeComboMismatch,
                Some(10),
                Some("TargetAoc01")
            )]
        );
        assert_eq!(
            problems[0].to_string(),
            "m.yaml:10: demo dhis2[0].attribute_option_combo: attribute option combo \
             `TargetAoc01` (Target) belongs to category combo `WBW7RjsApsv`, but the Monthly \
             data sets holding data element `fbfJHSPpUQD` (ANC 1st visit) take `bjDvmb4bfuf` \
             (`QX4ZTUbOt3a` (Reproductive Health))"
        );

        // The data set now has the attribute combo: the default no longer
        // fits it.
        if let Some(ds) = l.data_sets.get_mut("QX4ZTUbOt3a") {
            ds.category_combo = Some("WBW7RjsApsv".into());
        }
        assert_eq!(check(std::slice::from_ref(&r), &l), []);
        r.attribute_option_combo.refs = vec![literal("HllvX50cXC0")];
        assert_eq!(
            kinds(&check(&[r], &l)),
            [(
                ProblemKind::AttributeComboMismatch,
                Some(10),
                Some("HllvX50cXC0")
            )]
        );
    }

    #[test]
    fn references_leave_malformed_ids_out() {
        let mut bad = literal("not a uid");
        bad.malformed = Some("no".into());
        let r = rule(
            PeriodType::Monthly,
            vec![literal("code:DE_1"), bad],
            vec![literal("HllvX50cXC0")],
            vec![literal("DiszpKrYNg8")],
        );
        let refs = references(&[r]);
        assert_eq!(refs.data_elements, ["code:DE_1".to_owned()].into());
        assert_eq!(
            refs.attribute_option_combos,
            ["HllvX50cXC0".to_owned()].into()
        );
    }

    #[test]
    fn gregorian_is_the_iso8601_calendar() {
        assert!(same_calendar("iso8601", Calendar::Iso8601));
        assert!(same_calendar("gregorian", Calendar::Iso8601));
        assert!(!same_calendar("ethiopian", Calendar::Iso8601));
        assert!(same_calendar("nepali", Calendar::Nepali));
        assert!(!same_calendar("iso8601", Calendar::Nepali));
    }
}
