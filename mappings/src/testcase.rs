//! Mapping test cases: fixture events with their exact expected outputs.

use std::fmt;
use std::path::Path;

use serde_saphyr::Spanned;

use crate::mapping::{Event, MappingSet};
use crate::spec::RawTest;

/// One test case of a mapping.
#[derive(Debug)]
pub(crate) struct TestCase {
    pub(crate) name: String,
    pub(crate) line: u64,
    pub(crate) event: Event,
    expect: Expected,
}

#[derive(Debug)]
enum Expected {
    Output(serde_json::Value),
    /// Read when the test runs, so that `kiungo map > expected.json` can
    /// (re)write it.
    File(std::path::PathBuf),
    Error(String),
}

impl TestCase {
    /// Whether the test expects its event to be refused.
    pub(crate) const fn expects_error(&self) -> bool {
        matches!(self.expect, Expected::Error(_))
    }

    /// Builds a test case; the error is (field, message).
    pub(crate) fn from_raw(
        raw: &Spanned<RawTest>,
        index: usize,
        file: &Path,
        source: &str,
    ) -> Result<Self, (String, String)> {
        let t = &raw.value;
        let field = format!("tests[{index}]");
        let payload = match &t.event {
            serde_json::Value::String(rel) => {
                let path = file.parent().unwrap_or(Path::new(".")).join(rel);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    (
                        format!("{field}.event"),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                serde_json::from_str(&text).map_err(|e| {
                    (
                        format!("{field}.event"),
                        format!("{} is not JSON: {e}", path.display()),
                    )
                })?
            }
            inline => inline.clone(),
        };
        let expect = match (&t.expect, &t.expect_file, &t.expect_error) {
            (None, Some(rel), None) => {
                Expected::File(file.parent().unwrap_or(Path::new(".")).join(rel))
            }
            (Some(x), None, None) => {
                let mut out = serde_json::Map::new();
                out.insert("event_id".into(), x.event_id.clone().into());
                if let Some(r) = &x.replaces {
                    out.insert("replaces".into(), r.clone().into());
                }
                out.insert("fhir".into(), x.fhir.clone().into());
                out.insert("dhis2".into(), x.dhis2.clone().into());
                Expected::Output(serde_json::Value::Object(out))
            }
            (None, None, Some(e)) => Expected::Error(e.clone()),
            _ => {
                return Err((
                    field,
                    "a test case needs exactly one of `expect`, `expect_file` and `expect_error`"
                        .into(),
                ));
            }
        };
        Ok(Self {
            name: t.name.clone(),
            line: raw.referenced.line(),
            event: Event {
                source: t.source.clone().unwrap_or_else(|| source.to_owned()),
                message_id: t.message_id.clone(),
                payload: std::sync::Arc::new(payload),
            },
            expect,
        })
    }
}

/// The result of one mapping's test cases.
#[derive(Debug)]
pub struct TestReport {
    /// Mapping id.
    pub mapping: String,
    /// Mapping file.
    pub file: std::path::PathBuf,
    /// Number of test cases run.
    pub run: usize,
    /// The ones that failed.
    pub failures: Vec<TestFailure>,
}

/// A failed test case.
#[derive(Debug)]
pub struct TestFailure {
    /// Test case name.
    pub name: String,
    /// Line of the test case in the mapping file.
    pub line: u64,
    /// What differed: a unified diff of expected and actual, or the error.
    pub detail: String,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "test `{}` (line {}):\n{}",
            self.name, self.line, self.detail
        )
    }
}

/// Expected-vs-actual comparison as the output of a mapping is written in
/// a test case (`event_id`, `replaces`, `fhir`, `dhis2`).
fn actual_json(m: &crate::output::MappedEvent) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("event_id".into(), m.event_id.clone().into());
    if let Some(r) = &m.replaces {
        out.insert("replaces".into(), r.clone().into());
    }
    out.insert(
        "fhir".into(),
        serde_json::to_value(&m.fhir).unwrap_or_default(),
    );
    out.insert(
        "dhis2".into(),
        serde_json::to_value(&m.dhis2).unwrap_or_default(),
    );
    serde_json::Value::Object(out)
}

/// Reads an expected-output file as `kiungo map` writes it.
fn read_expected(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let mut out = serde_json::Map::new();
    for key in ["event_id", "replaces", "fhir", "dhis2"] {
        match json.get(key) {
            Some(v) => {
                out.insert(key.into(), v.clone());
            }
            None if key == "replaces" => {}
            None => return Err(format!("{} has no `{key}`", path.display())),
        }
    }
    Ok(serde_json::Value::Object(out))
}

fn pretty(v: &serde_json::Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

impl MappingSet {
    /// Checks that every test case can run, for `kiungo mappings validate`:
    /// its expected file is there and readable, and its event maps when an
    /// output is expected (or is refused when an error is). Whether the
    /// outputs are the expected ones is `kiungo mappings test`'s business.
    pub fn check_tests(&self) -> Vec<crate::error::LoadError> {
        let mut errors = Vec::new();
        for m in self.mappings() {
            for (i, tc) in m.tests.iter().enumerate() {
                let mut problem = |field: &str, message: String| {
                    errors.push(crate::error::LoadError {
                        file: m.file.clone(),
                        line: Some(tc.line),
                        column: None,
                        field: format!("tests[{i}]{field}"),
                        message: format!("test `{}`: {message}", tc.name),
                    });
                };
                if let Expected::File(path) = &tc.expect
                    && let Err(e) = read_expected(path)
                {
                    problem(".expect_file", e);
                }
                match (&tc.expect, self.map_for_test(&tc.event)) {
                    (Expected::Error(_), Ok(_)) => {
                        problem(".expect_error", "the event maps, no error to expect".into());
                    }
                    (Expected::Output(_) | Expected::File(_), Err(e)) => {
                        problem(".event", format!("the event does not map: {e}"));
                    }
                    (Expected::Output(_) | Expected::File(_), Ok(got)) if got.mapping != m.id => {
                        problem(
                            ".event",
                            format!("the event is mapped by `{}`, not this mapping", got.mapping),
                        );
                    }
                    _ => {}
                }
            }
        }
        errors
    }

    /// Runs every mapping's test cases. A test event must be selected by
    /// its own mapping through the whole set (so `match` rules are tested
    /// too) and yield exactly the expected outputs.
    pub fn run_tests(&self) -> Vec<TestReport> {
        self.mappings()
            .iter()
            .map(|m| {
                let mut failures = Vec::new();
                for tc in &m.tests {
                    let fail = |detail: String| TestFailure {
                        name: tc.name.clone(),
                        line: tc.line,
                        detail,
                    };
                    let result = self.map_for_test(&tc.event);
                    let expect = match &tc.expect {
                        Expected::File(path) => match read_expected(path) {
                            Ok(v) => Expected::Output(v),
                            Err(e) => {
                                failures.push(fail(e));
                                continue;
                            }
                        },
                        Expected::Output(v) => Expected::Output(v.clone()),
                        Expected::Error(e) => Expected::Error(e.clone()),
                    };
                    match (&expect, result) {
                        (Expected::Output(want), Ok(got)) => {
                            if got.mapping != m.id {
                                failures.push(fail(format!(
                                    "the event was mapped by `{}`, not this mapping",
                                    got.mapping
                                )));
                                continue;
                            }
                            let got = actual_json(&got);
                            if got != *want {
                                let (w, g) = (pretty(want), pretty(&got));
                                let diff = similar::TextDiff::from_lines(&w, &g)
                                    .unified_diff()
                                    .context_radius(3)
                                    .header("expected", "actual")
                                    .to_string();
                                failures.push(fail(diff));
                            }
                        }
                        (Expected::File(_), _) => {}
                        (Expected::Output(_), Err(e)) => {
                            failures.push(fail(format!("mapping failed: {}", e.with_values())))
                        }
                        (Expected::Error(want), Err(e)) => {
                            let got = e.with_values();
                            if !got.contains(want.as_str()) {
                                failures.push(fail(format!(
                                    "expected an error containing `{want}`, got: {got}"
                                )));
                            }
                        }
                        (Expected::Error(want), Ok(_)) => {
                            failures.push(fail(format!(
                                "expected an error containing `{want}`, but the event mapped"
                            )));
                        }
                    }
                }
                TestReport {
                    mapping: m.id.clone(),
                    file: m.file.clone(),
                    run: m.tests.len(),
                    failures,
                }
            })
            .collect()
    }
}
