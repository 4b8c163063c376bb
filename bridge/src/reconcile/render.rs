//! A report as a table, JSON or CSV.

use std::fmt::Write;

use super::compare::{DriftKind, Report};
use crate::dlq_cli::terminal_safe;

/// Output format of `kiungo dhis2 reconcile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and a summary line.
    #[default]
    Table,
    /// The report as one JSON object.
    Json,
    /// One line per differing key, with a header line.
    Csv,
}

const COLUMNS: [&str; 8] = [
    "kind",
    "data_element",
    "period",
    "org_unit",
    "category_option_combo",
    "attribute_option_combo",
    "kiungo",
    "dhis2",
];

/// CSV field: quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

/// Renders `report`. Values read from DHIS2 are escaped for the
/// terminal in the table (someone typed them).
pub fn render(report: &Report, format: Format) -> String {
    let mut out = String::new();
    match format {
        Format::Json => {
            let mut v = serde_json::to_value(report).unwrap_or_default();
            for kind in DriftKind::ALL {
                v[kind.as_str()] = report.count(kind).into();
            }
            out = serde_json::to_string_pretty(&v).unwrap_or_default();
            out.push('\n');
        }
        Format::Csv => {
            out.push_str(&COLUMNS.join(","));
            out.push('\n');
            for d in &report.drift {
                let fields: [&str; 8] = [
                    d.kind.as_str(),
                    &d.data_element,
                    &d.period,
                    &d.org_unit,
                    &d.category_option_combo,
                    &d.attribute_option_combo,
                    &d.kiungo,
                    d.dhis2.as_deref().unwrap_or(""),
                ];
                let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
        }
        Format::Table => {
            let _ = writeln!(
                out,
                "{:<16} {:<12} {:<10} {:<12} {:<12} {:<12} {:>12} {:>12}",
                COLUMNS[0], "data element", "period", "org unit", "coc", "aoc", "kiungo", "dhis2"
            );
            for d in &report.drift {
                let _ = writeln!(
                    out,
                    "{:<16} {:<12} {:<10} {:<12} {:<12} {:<12} {:>12} {:>12}",
                    d.kind.as_str(),
                    terminal_safe(&d.data_element),
                    terminal_safe(&d.period),
                    terminal_safe(&d.org_unit),
                    terminal_safe(&d.category_option_combo),
                    terminal_safe(&d.attribute_option_combo),
                    if d.kiungo.is_empty() {
                        "-"
                    } else {
                        d.kiungo.as_str()
                    },
                    terminal_safe(d.dhis2.as_deref().unwrap_or("-")),
                );
            }
            let _ = writeln!(
                out,
                "data set {} period {}: {} matching, {} missing, {} different, {} not from kiungo, {} pending (not pushed yet), {} unresolved",
                report.data_set,
                report.period,
                report.matching,
                report.count(DriftKind::Missing),
                report.count(DriftKind::Different),
                report.count(DriftKind::NotFromKiungo),
                report.count(DriftKind::Pending),
                report.unresolved,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::compare::Drift;
    use super::*;

    fn report() -> Report {
        Report {
            data_set: "BfMAe6Itzgt".into(),
            period: "202401".into(),
            matching: 2,
            unresolved: 0,
            drift: vec![Drift {
                kind: DriftKind::NotFromKiungo,
                data_element: "cYeuwXTCPkU".into(),
                period: "202401".into(),
                org_unit: "DiszpKrYNg8".into(),
                category_option_combo: "HllvX50cXC0".into(),
                attribute_option_combo: "HllvX50cXC0".into(),
                kiungo: String::new(),
                dhis2: Some("7,5".into()),
                written: None,
            }],
        }
    }

    #[test]
    fn csv_has_a_header_and_quotes_commas() {
        let csv = render(&report(), Format::Csv);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        assert_eq!(
            lines[1],
            "not_from_kiungo,cYeuwXTCPkU,202401,DiszpKrYNg8,HllvX50cXC0,HllvX50cXC0,,\"7,5\""
        );
    }

    #[test]
    fn json_carries_the_counts() {
        let v: serde_json::Value =
            serde_json::from_str(&render(&report(), Format::Json)).unwrap_or_default();
        assert_eq!(v["matching"], 2);
        assert_eq!(v["not_from_kiungo"], 1);
        assert_eq!(v["missing"], 0);
        assert_eq!(v["drift"][0]["kind"], "not_from_kiungo");
    }

    #[test]
    fn the_table_ends_with_a_summary() {
        let t = render(&report(), Format::Table);
        assert!(
            t.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("not_from_kiungo"))
        );
        assert!(t.ends_with(
            "data set BfMAe6Itzgt period 202401: 2 matching, 0 missing, 0 different, 1 not from kiungo, 0 pending (not pushed yet), 0 unresolved\n"
        ));
    }
}
