//! Where a YAML parse error is, in the words of a [`crate::LoadError`]:
//! the dotted field path of the line it points at (`dhis2[0].coc`) and the
//! parser's message without the "at line L, column C" it appends (the
//! error prints its place once, in front).

/// The parser's message for `e`, without its location suffix.
pub(crate) fn message(e: &serde_saphyr::Error) -> String {
    let text = e.without_snippet().to_string();
    let Some(l) = e.location() else {
        return text;
    };
    let suffix = format!(" at line {}, column {}", l.line(), l.column());
    text.strip_suffix(&suffix).unwrap_or(&text).to_owned()
}

/// The dotted path of the block-style entry on `line` (1-based) of
/// `text`: keys joined with `.`, list items as `[n]`. Empty when the line
/// holds no entry (flow style, out of range).
pub(crate) fn field_path(text: &str, line: u64) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(mut i) = usize::try_from(line)
        .ok()
        .and_then(|l| l.checked_sub(1))
        .filter(|i| *i < lines.len())
    else {
        return String::new();
    };
    let mut segments: Vec<String> = Vec::new();
    let first = Entry::of(lines[i]);
    let Some(key) = first.key.clone() else {
        return String::new();
    };
    segments.push(key);
    let mut at = first;
    // The line index of `at` is `i`; climb to the entry holding it.
    loop {
        if at.item {
            // `[n]`: count earlier items of the same list.
            let mut n = 0;
            let mut parent = None;
            for j in (0..i).rev() {
                let Some(e) = Entry::live(lines[j]) else {
                    continue;
                };
                if e.indent == at.indent && e.item {
                    n += 1;
                } else if e.indent <= at.indent {
                    parent = Some((j, e));
                    break;
                }
            }
            segments.push(format!("[{n}]"));
            match parent {
                Some((j, e)) => {
                    if let Some(k) = e.key.clone() {
                        segments.push(k);
                    }
                    i = j;
                    at = e;
                }
                None => break,
            }
        } else {
            let mut parent = None;
            for j in (0..i).rev() {
                let Some(e) = Entry::live(lines[j]) else {
                    continue;
                };
                if e.indent < at.indent {
                    parent = Some((j, e));
                    break;
                }
            }
            match parent {
                // A sibling key of a list item's first key: inside that item.
                Some((j, e)) if e.item && e.content_indent == at.indent => {
                    i = j;
                    at = e;
                }
                Some((j, e)) => {
                    if let Some(k) = e.key.clone() {
                        segments.push(k);
                    }
                    i = j;
                    at = e;
                }
                None => break,
            }
        }
    }
    segments.reverse();
    let mut path = String::new();
    for s in segments {
        if !path.is_empty() && !s.starts_with('[') {
            path.push('.');
        }
        path.push_str(&s);
    }
    path
}

/// One block-style line: its indentation, whether it starts a list item,
/// where the item's content starts, and its key.
#[derive(Clone)]
struct Entry {
    indent: usize,
    item: bool,
    content_indent: usize,
    key: Option<String>,
}

impl Entry {
    fn of(line: &str) -> Self {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let (item, content) = match trimmed.strip_prefix('-') {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => (true, rest.trim_start()),
            _ => (false, trimmed),
        };
        let content_indent = line.len() - content.len();
        let key = content.split_once(':').and_then(|(k, rest)| {
            let k = k.trim().trim_matches(['"', '\'']);
            let ok = !k.is_empty()
                && (rest.is_empty() || rest.starts_with(' '))
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
            ok.then(|| k.to_owned())
        });
        Self {
            indent,
            item,
            content_indent,
            key,
        }
    }

    fn live(line: &str) -> Option<Self> {
        let t = line.trim_start();
        (!t.is_empty() && !t.starts_with('#')).then(|| Self::of(line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "id: x\ndhis2:\n  - data_element: a\n    value: 1\n  - data_element: b\n    category_optoin_combo: c\nfhir:\n- resource:\n    resourceType: Observation\n    staus: final\n";

    #[test]
    fn paths_name_keys_and_list_items() {
        assert_eq!(field_path(TEXT, 1), "id");
        assert_eq!(field_path(TEXT, 4), "dhis2[0].value");
        assert_eq!(field_path(TEXT, 5), "dhis2[1].data_element");
        assert_eq!(field_path(TEXT, 6), "dhis2[1].category_optoin_combo");
        assert_eq!(field_path(TEXT, 10), "fhir[0].resource.staus");
        assert_eq!(field_path(TEXT, 99), "");
    }

    #[test]
    fn the_message_loses_its_location_suffix() {
        let e = serde_saphyr::from_str::<u16>("x: 1").expect_err("not a u16");
        let m = message(&e);
        assert!(!m.contains(" at line "), "{m}");
        assert!(!m.is_empty());
    }
}
