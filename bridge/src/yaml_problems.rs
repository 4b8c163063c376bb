//! Reads a YAML file into a typed value and reports every problem, not
//! only the first: a deserializer stops at its first error, so after each
//! one the offending entry (its line and the lines indented under it) is
//! set aside as a comment and the text is parsed again, up to
//! [`MAX_PROBLEMS`] times. Line numbers stay those of the file. Each
//! problem reads `FILE:LINE:COLUMN: message` followed by the lines around
//! it under a header naming the file; secrets in the quoted lines are
//! masked ([`crate::config_check::mask_secrets`]).

use std::path::Path;

use serde::de::DeserializeOwned;

/// At most this many problems are reported for one file.
pub const MAX_PROBLEMS: usize = 50;

/// `text` (the content of `file`) as a `T`, or every problem found.
pub fn from_str_all<T: DeserializeOwned>(text: &str, file: &Path) -> Result<T, Vec<String>> {
    let name = file.display().to_string();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut problems = Vec::new();
    let mut set_aside: Vec<usize> = Vec::new();
    loop {
        let current = lines.join("\n");
        let error = match serde_saphyr::from_str::<T>(&current) {
            Ok(value) if problems.is_empty() => return Ok(value),
            Ok(_) => return Err(problems),
            Err(e) => e,
        };
        problems.push(describe(&error, &name, &lines, text));
        let Some(line) = error
            .location()
            .and_then(|l| usize::try_from(l.line()).ok())
            .filter(|l| *l >= 1 && *l <= lines.len())
        else {
            return Err(problems);
        };
        // A missing field is reported where its mapping starts: set the
        // whole mapping aside (its parent entry), not its first entry.
        let missing = error
            .without_snippet()
            .to_string()
            .contains("missing field");
        let line = if missing {
            match parent_of(&lines, line - 1) {
                Some(p) => p + 1,
                None => return Err(problems),
            }
        } else {
            line
        };
        if problems.len() >= MAX_PROBLEMS
            || set_aside.contains(&line)
            || !set_aside_entry(&mut lines, line - 1)
        {
            return Err(problems);
        }
        set_aside.push(line);
    }
}

/// `FILE:LINE:COL: message`, a hint for bare numeric-range messages, and
/// the snippet with its header naming the file.
fn describe(error: &serde_saphyr::Error, name: &str, lines: &[String], original: &str) -> String {
    let plain = error
        .without_snippet()
        .render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
    let at = error.location().filter(|l| l.line() >= 1);
    // The plain message ends with " at line L, column C": the location
    // goes in front instead, once.
    let message = match at {
        Some(l) => {
            let suffix = format!(" at line {}, column {}", l.line(), l.column());
            plain.strip_suffix(&suffix).unwrap_or(&plain).to_owned()
        }
        None => plain,
    };
    let key = at.and_then(|l| {
        let line = lines.get(usize::try_from(l.line()).ok()?.checked_sub(1)?)?;
        key_of(line)
    });
    let message = explain_numbers(&message, key.as_deref());
    let head = match at {
        Some(l) => format!("{name}:{}:{}: {message}", l.line(), l.column()),
        None => format!("{name}: {message}"),
    };
    let text = match at.and_then(|l| snippet(name, original, l.line(), l.column())) {
        Some(snippet) => format!("{head}\n{snippet}"),
        None => head,
    };
    crate::config_check::mask_secrets(&text)
}

/// The lines of the file around `line` (two either side), under a header
/// naming the file, with a caret at `column`. The file's own text is
/// quoted, not the text with entries set aside.
fn snippet(name: &str, original: &str, line: u64, column: u64) -> Option<String> {
    let line = usize::try_from(line).ok()?;
    let column = usize::try_from(column).ok()?.max(1);
    let all: Vec<&str> = original.lines().collect();
    if line == 0 || line > all.len() {
        return None;
    }
    let first = line.saturating_sub(2).max(1);
    let last = (line + 2).min(all.len());
    let width = last.to_string().len();
    let pad = " ".repeat(width);
    let mut out = format!("{pad}--> {name}:{line}:{column}\n{pad} |");
    for n in first..=last {
        out.push_str(&format!("\n{n:>width$} | {}", all[n - 1]));
        if n == line {
            out.push_str(&format!("\n{pad} | {}^", " ".repeat(column - 1)));
        }
    }
    Some(out)
}

/// `  prefetch: 70000` → `prefetch`; `- name: x` → `name`.
fn key_of(line: &str) -> Option<String> {
    let t = line.trim_start().trim_start_matches("- ").trim_start();
    let (key, _) = t.split_once(':')?;
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then(|| key.to_owned())
}

/// `invalid u16` says neither which field nor what is allowed: name the
/// key on the line and the range.
fn explain_numbers(message: &str, key: Option<&str>) -> String {
    const RANGES: [(&str, &str); 8] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
        ("usize", "a whole number from 0 up"),
        ("i32", "a whole number from -2147483648 to 2147483647"),
        ("i64", "a whole number"),
        ("f64", "a number"),
    ];
    if message.contains("invalid floating point") {
        let field = key.map_or_else(String::new, |k| format!("`{k}`: "));
        return format!("{field}expected a number ({message})");
    }
    for (ty, allowed) in RANGES {
        if message.contains(&format!("invalid {ty}")) || message.contains(&format!("expected {ty}"))
        {
            let field = key.map_or_else(String::new, |k| format!("`{k}`: "));
            return format!("{field}expected {allowed} ({message})");
        }
    }
    message.to_owned()
}

/// The index of the entry that `index`'s line is nested in.
fn parent_of(lines: &[String], index: usize) -> Option<usize> {
    let line = lines.get(index)?;
    let indent = line.len() - line.trim_start().len();
    lines[..index].iter().rposition(|l| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#') && l.len() - t.len() < indent
    })
}

/// Comments out the entry starting at `index` (0-based) and the lines
/// indented under it. False when that cannot be done without breaking the
/// YAML around it (a list item, or nothing there).
fn set_aside_entry(lines: &mut [String], index: usize) -> bool {
    let Some(first) = lines.get(index) else {
        return false;
    };
    let trimmed = first.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
        return false;
    }
    let indent = first.len() - trimmed.len();
    let mut end = index + 1;
    while let Some(next) = lines.get(end) {
        let t = next.trim_start();
        if !t.is_empty() && !t.starts_with('#') && next.len() - t.len() <= indent {
            break;
        }
        end += 1;
    }
    for line in &mut lines[index..end] {
        *line = format!("#{line}");
    }
    // The parent's only entry: leave it an empty mapping rather than a
    // null, which would be a problem of its own.
    let live = |l: &String| {
        let t = l.trim_start();
        !t.is_empty() && !t.starts_with('#')
    };
    let indent_of = |l: &String| l.len() - l.trim_start().len();
    let parent = lines[..index].iter().rev().find(|l| live(l));
    let next = lines[end..].iter().find(|l| live(l));
    if let Some(parent) = parent
        && parent.trim_end().ends_with(':')
        && indent_of(parent) < indent
        && next.is_none_or(|n| indent_of(n) <= indent_of(parent))
    {
        lines[index] = format!("{}{{}} {}", " ".repeat(indent), lines[index]);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[serde(default)]
        prefetch: u16,
        #[serde(default)]
        name: String,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        #[serde(default)]
        a: Option<Inner>,
        #[serde(default)]
        b: Option<Inner>,
    }

    #[test]
    fn every_problem_is_reported_with_the_file_and_its_place() {
        let text = "a:\n  prefetch: 70000\n  name: x\nb:\n  nmae: y\n  password: hunter2\nc: 1\n";
        assert_eq!(
            explain_numbers("invalid floating point", Some("requests_per_second")),
            "`requests_per_second`: expected a number (invalid floating point)"
        );
        let problems = from_str_all::<Outer>(text, Path::new("conf/k.yaml")).expect_err("problems");
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(
            problems[0].starts_with(
                "conf/k.yaml:2:13: `prefetch`: expected a whole number from 0 to 65535"
            ),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].starts_with("conf/k.yaml:5:3: unknown field `nmae`"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].starts_with("conf/k.yaml:6:3: unknown field `password`"),
            "{}",
            problems[2]
        );
        assert!(
            problems[3].starts_with("conf/k.yaml:7:1: unknown field `c`"),
            "{}",
            problems[3]
        );
        // The quoted lines are the file's own, not those set aside.
        assert!(problems[3].contains("5 |   nmae: y"), "{}", problems[3]);
        for p in &problems {
            assert!(p.contains("--> conf/k.yaml:"), "header names the file: {p}");
            assert!(!p.contains("<input>"), "{p}");
            assert!(!p.contains("error:"), "{p}");
            assert!(!p.contains("hunter2"), "{p}");
        }
    }

    #[test]
    fn a_clean_file_parses() {
        let outer: Outer =
            from_str_all("a:\n  prefetch: 7\n", Path::new("k.yaml")).expect("parses");
        let a = outer.a.expect("a");
        assert_eq!((a.prefetch, a.name.as_str()), (7, ""));
        assert!(outer.b.is_none());
    }

    #[test]
    fn a_syntax_error_is_reported_once() {
        let problems =
            from_str_all::<Outer>("a: [1, 2\nb: {\n", Path::new("k.yaml")).expect_err("problems");
        assert!(!problems.is_empty() && problems.len() <= 2, "{problems:#?}");
        assert!(problems[0].starts_with("k.yaml:"), "{}", problems[0]);
    }
}
