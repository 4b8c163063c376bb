//! Pack-level shared files: tables, `let` bindings, assertions and rules
//! that several mappings of one pack include.
//!
//! A shared file is named `*.shared.yaml` (or `.yml`), so that loading a
//! directory does not take it for a mapping; it has no `id`, `source` or
//! tests of its own: its parts are checked, and tested, as parts of every
//! mapping that includes it. Problems in it are reported with its own file
//! and line.

use std::path::{Path, PathBuf};

use serde_saphyr::Spanned;

use crate::error::LoadError;
use crate::spec::RawShared;

/// The file-name endings of shared files.
pub(crate) const SHARED_SUFFIXES: [&str; 2] = [".shared.yaml", ".shared.yml"];

/// Whether `path` names a shared file, which only `include` loads.
pub(crate) fn is_shared(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| SHARED_SUFFIXES.iter().any(|s| n.ends_with(s)))
}

/// Loads the files a mapping includes, in order: (path, path as written,
/// contents). Problems go to `errors`, located in the mapping for a bad
/// `include` entry and in the shared file for its own.
pub(crate) fn load_all(
    includes: &[Spanned<String>],
    mapping: &Path,
    errors: &mut Vec<LoadError>,
) -> Vec<(PathBuf, String, RawShared)> {
    let mut out: Vec<(PathBuf, String, RawShared)> = Vec::new();
    for (i, inc) in includes.iter().enumerate() {
        let at_mapping = |message: String| LoadError {
            file: mapping.to_path_buf(),
            line: Some(inc.referenced.line()),
            column: Some(inc.referenced.column()),
            field: format!("include[{i}]"),
            message,
        };
        let rel = inc.value.trim();
        if !is_shared(Path::new(rel)) {
            errors.push(at_mapping(
                "an included file is named `*.shared.yaml`, so that it is not loaded as a mapping"
                    .into(),
            ));
            continue;
        }
        let path = mapping.parent().unwrap_or(Path::new(".")).join(rel);
        if out.iter().any(|(p, _, _)| *p == path) {
            errors.push(at_mapping(format!("`{rel}` is included twice")));
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(at_mapping(format!("cannot read {}: {e}", path.display())));
                continue;
            }
        };
        let options = serde_saphyr::options! { with_snippet: false };
        match serde_saphyr::from_str_with_options::<RawShared>(&text, options) {
            Ok(shared) => out.push((path, rel.to_owned(), shared)),
            Err(e) => {
                let loc = e.location();
                errors.push(LoadError {
                    file: path,
                    line: loc.map(|l| l.line()),
                    column: loc.map(|l| l.column()),
                    field: loc.map_or_else(String::new, |l| {
                        crate::yaml_place::field_path(&text, l.line())
                    }),
                    message: crate::yaml_place::message(&e),
                });
            }
        }
    }
    out
}
