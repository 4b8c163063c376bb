//! Lookup tables: facility code to org unit, local codes to FHIR codings.
//!
//! A table is declared in a mapping, inline or as a CSV file beside it, and
//! is visible to expressions under its name: `lookup(facilities, code)`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use minijinja::Value;
use minijinja::value::{Enumerator, Object};

use crate::spec::RawTable;

/// One loaded table.
#[derive(Debug)]
pub(crate) struct Table {
    /// The table's name in the mapping.
    pub(crate) name: String,
    rows: HashMap<String, Value>,
    /// The column `lookup` returns, when not the whole row.
    pub(crate) value_column: Option<String>,
    /// Each key in file order with its CSV line or inline row index, so
    /// that a cell can be named where it is written.
    order: Vec<(String, u64)>,
    /// The CSV file, or `None` for inline rows.
    csv: Option<PathBuf>,
    /// The file that declares the table (a mapping or shared file).
    declared_in: PathBuf,
    /// The line of its declaration there (set by the loader).
    pub(crate) declared_line: u64,
}

/// Where one cell of a table is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CellPlace {
    /// The CSV file, or the file whose `tables:` holds the rows.
    pub(crate) file: PathBuf,
    /// The CSV line, or the line of the table's declaration.
    pub(crate) line: u64,
    /// For inline rows: the 0-based index in `rows`.
    pub(crate) row: Option<u64>,
}

impl Table {
    /// Looks a key up.
    pub(crate) fn get(&self, key: &str) -> Option<Value> {
        self.rows.get(key).cloned()
    }

    /// Number of rows.
    pub(crate) fn len(&self) -> usize {
        self.rows.len()
    }

    /// A table of `rows` (key, value), as an expression value.
    #[cfg(test)]
    pub(crate) fn for_tests(name: &str, rows: &[(&str, &str)]) -> Value {
        Value::from_object(Self {
            name: name.to_owned(),
            rows: rows
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect(),
            value_column: Some("value".into()),
            order: rows.iter().map(|(k, _)| ((*k).to_owned(), 0)).collect(),
            csv: None,
            declared_in: PathBuf::new(),
            declared_line: 0,
        })
    }

    /// The cells of `column` that `lookup` can return, in file order, with
    /// where each is written: every row's, or the row of `key` only. A
    /// table with a `value` column returns that column only; `None` when
    /// `lookup` cannot return `column` (another column of such a table, or
    /// a column some row lacks).
    pub(crate) fn cells(
        &self,
        column: Option<&str>,
        key: Option<&str>,
    ) -> Option<Vec<(String, CellPlace)>> {
        let mut out = Vec::new();
        for (k, at) in &self.order {
            if key.is_some_and(|want| want != k) {
                continue;
            }
            let row = self.rows.get(k)?;
            let cell = match (column, &self.value_column) {
                (None, Some(_)) => row.clone(),
                (Some(c), None) => row.get_attr(c).ok().filter(|v| !v.is_undefined())?,
                _ => return None,
            };
            let place = match &self.csv {
                Some(csv) => CellPlace {
                    file: csv.clone(),
                    line: *at,
                    row: None,
                },
                None => CellPlace {
                    file: self.declared_in.clone(),
                    line: self.declared_line,
                    row: Some(*at),
                },
            };
            out.push((cell.as_str()?.to_owned(), place));
        }
        Some(out)
    }

    /// Loads a table declared in the mapping at `mapping_file`. Errors carry
    /// the file at fault and the line (CSV) or row index (inline).
    pub(crate) fn load(
        name: &str,
        raw: &RawTable,
        mapping_file: &Path,
    ) -> Result<Self, (Option<std::path::PathBuf>, Option<u64>, String)> {
        let records: Vec<Record> = match (&raw.csv, &raw.rows) {
            (Some(_), Some(_)) => {
                return Err((None, None, "give either `csv` or `rows`, not both".into()));
            }
            (None, None) => return Err((None, None, "a table needs `csv` or `rows`".into())),
            (Some(csv_name), None) => {
                let path = mapping_file
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join(csv_name);
                read_csv(&path).map_err(|(line, msg)| (Some(path.clone()), line, msg))?
            }
            (None, Some(rows)) => {
                let mut out = Vec::with_capacity(rows.len());
                for (i, row) in rows.iter().enumerate() {
                    let mut cells = Vec::with_capacity(row.len());
                    for (k, v) in row {
                        let text = crate::json::scalar_string(v).ok_or_else(|| {
                            (
                                None,
                                None,
                                format!("rows[{i}].{k}: table cells must be strings or numbers"),
                            )
                        })?;
                        cells.push((k.clone(), text));
                    }
                    out.push((i as u64, cells));
                }
                out
            }
        };
        let key_col = match &raw.key {
            Some(k) => k.clone(),
            None => records
                .first()
                .and_then(|(_, cells)| cells.first())
                .map(|(k, _)| k.clone())
                .ok_or_else(|| (None, None, "table is empty".to_string()))?,
        };
        let mut rows = HashMap::with_capacity(records.len());
        let mut order = Vec::with_capacity(records.len());
        for (at, cells) in records {
            let where_ = if raw.csv.is_some() {
                format!("line {at}")
            } else {
                format!("rows[{at}]")
            };
            let key = cells
                .iter()
                .find(|(k, _)| *k == key_col)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| (None, None, format!("{where_}: no key column `{key_col}`")))?;
            let value = match &raw.value {
                Some(col) => cells
                    .iter()
                    .find(|(k, _)| k == col)
                    .map(|(_, v)| Value::from(v.as_str()))
                    .ok_or_else(|| (None, None, format!("{where_}: no value column `{col}`")))?,
                None => Value::from_object(
                    cells
                        .into_iter()
                        .map(|(k, v)| (Arc::<str>::from(k), Value::from(v)))
                        .collect::<BTreeMap<_, _>>(),
                ),
            };
            if rows.insert(key.clone(), value).is_some() {
                return Err((None, None, format!("{where_}: duplicate key `{key}`")));
            }
            order.push((key, at));
        }
        Ok(Self {
            name: name.to_owned(),
            rows,
            value_column: raw.value.clone(),
            order,
            csv: raw
                .csv
                .as_ref()
                .map(|c| mapping_file.parent().unwrap_or(Path::new(".")).join(c)),
            declared_in: mapping_file.to_path_buf(),
            declared_line: 0,
        })
    }
}

/// A table row: its line (CSV) or index (inline), and its (column, cell) pairs.
type Record = (u64, Vec<(String, String)>);

/// Reads a CSV with a header row into (line, cells) records.
fn read_csv(path: &Path) -> Result<Vec<Record>, (Option<u64>, String)> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| (None, format!("cannot read table: {e}")))?;
    let headers = reader
        .headers()
        .map_err(|e| (Some(1), format!("bad CSV header: {e}")))?
        .clone();
    let mut out = Vec::new();
    for record in reader.records() {
        let record =
            record.map_err(|e| (e.position().map(|p| p.line()), format!("bad CSV row: {e}")))?;
        let line = record.position().map_or(0, |p| p.line());
        let cells = headers
            .iter()
            .zip(record.iter())
            .map(|(h, v)| (h.to_owned(), v.to_owned()))
            .collect();
        out.push((line, cells));
    }
    Ok(out)
}

impl Object for Table {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get(key.as_str()?)
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::NonEnumerable
    }
}
