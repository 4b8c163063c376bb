//! The one redaction policy for text that leaves Kiungo.
//!
//! Kiungo's own messages (dead-letter reasons, a bundle's `last_error`,
//! status messages to apps, log lines, the admin API for non-operators)
//! are made without the values of an event: an error that involves a
//! value carries it apart from its message ([`crate::MapError::values`]),
//! and only operators read it (`kiungo dlq show`, the payload route).
//!
//! Text made by others can quote what was sent: a FHIR server's
//! `Patient 'Aminata Test-Kamara' already exists`, HAPI's conditional
//! match URL with the client's identifier, the FHIR validator's
//! ``unknown variant `femal` ``, a DHIS2 conflict. [`external`] is applied
//! to such text where Kiungo takes it in, before it is logged, stored or
//! published: quoted text (`'…'`, `"…"`, `` `…` ``, `«…»`, `“…”`, `‘…’`),
//! query strings and long runs of digits (phone numbers, national ids) are
//! cut.

/// The shortest run of digits that is cut from external text: phone
/// numbers and national ids are longer, status codes and counts shorter.
const LONG_NUMBER: usize = 7;

/// `text`, made by a server, a validator or a parser, with whatever it
/// may quote of an event cut out: quoted text, query strings and long
/// numbers become `…`. An unterminated quote cuts the rest of the text.
pub fn external(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    // The closing character of the quote we are in.
    let mut closing: Option<char> = None;
    let mut in_query = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let before = i.checked_sub(1).map(|j| chars[j]);
        let after = chars.get(i + 1).copied();
        if let Some(close) = closing {
            // A backslash escapes the next character (JSON's `\"` inside a
            // string): it never closes the quote.
            if c == '\\' {
                i += 2;
                continue;
            }
            let closes = c == close && (close != '\'' || !after.is_some_and(char::is_alphanumeric));
            if closes {
                out.push(c);
                closing = None;
            }
            i += 1;
            continue;
        }
        let opens = match c {
            '"' | '`' => Some(c),
            // An apostrophe inside a word (`doesn't`) is not a quote.
            '\'' if !before.is_some_and(char::is_alphanumeric) => Some('\''),
            '«' => Some('»'),
            '“' => Some('”'),
            '‘' => Some('’'),
            _ => None,
        };
        if let Some(close) = opens {
            out.push(c);
            out.push('…');
            closing = Some(close);
            in_query = false;
            i += 1;
            continue;
        }
        if c == '?' {
            out.push_str("?…");
            in_query = true;
            i += 1;
            continue;
        }
        if in_query && !c.is_whitespace() {
            i += 1;
            continue;
        }
        in_query = false;
        if c.is_ascii_digit() {
            let end = number_end(&chars, i);
            let digits = chars[i..end].iter().filter(|d| d.is_ascii_digit()).count();
            if digits >= LONG_NUMBER {
                out.push('…');
            } else {
                out.extend(&chars[i..end]);
            }
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The end of the number starting at `start`: digits, with single
/// spaces, dashes or dots between them (`+254 700-999.111`).
fn number_end(chars: &[char], start: usize) -> usize {
    let mut end = start;
    // A separator counts only between digits: the number never ends on one.
    while end < chars.len()
        && (chars[end].is_ascii_digit()
            || matches!(chars[end], ' ' | '-' | '.')
                && chars.get(end + 1).is_some_and(char::is_ascii_digit))
    {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::external;

    #[test]
    fn quoted_values_are_cut_whatever_the_quotes() {
        for (text, kept) in [
            (
                "HTTP 422: Patient 'Aminata Test-Kamara' already exists",
                "HTTP 422: Patient '…' already exists",
            ),
            (
                "unknown variant \"Zawadi\", expected one of `male`, `female`",
                "unknown variant \"…\", expected one of `…`, `…`",
            ),
            ("name «Zawadi Kiungo» refused", "name «…» refused"),
            ("name “Zawadi” and ‘Zawadi’", "name “…” and ‘…’"),
            ("Patient 'Aminata O'Brien' exists", "Patient '…' exists"),
            (
                "the server doesn't accept it",
                "the server doesn't accept it",
            ),
            ("an unterminated 'Zawadi Kiungo", "an unterminated '…"),
        ] {
            assert_eq!(external(text), kept, "{text}");
        }
    }

    /// Found by the `dhis2_import_answers` fuzz target: in a JSON body
    /// quoted by an error, an escaped quote (`\"`) closed the string, so
    /// that the quotes after it paired the wrong way round and left the
    /// values between them.
    #[test]
    fn escaped_quotes_do_not_close_a_quote() {
        let body = r#"{"note":"a \"b\" c","name":"Zawadi Kiungo","phone":"x"}"#;
        let r = external(body);
        assert!(!r.contains("Zawadi") && !r.contains("Kiungo"), "{r}");
        assert_eq!(r, r#"{"…":"…","…":"…","…":"…"}"#);
        assert_eq!(external(r"path 'C:\\' and 'Zawadi'"), "path '…' and '…'");
    }

    #[test]
    fn query_strings_and_long_numbers_are_cut() {
        let m = "HTTP 412: multiple-matches: Failed to CREATE resource with match URL \"Patient?identifier=http://moh.sl/nin|1234567\" because this search matched 2 resources";
        let r = external(m);
        assert!(!r.contains("1234567") && !r.contains("identifier="), "{r}");
        assert!(
            r.contains("HTTP 412") && r.contains("matched 2 resources"),
            "{r}"
        );
        assert_eq!(
            external("GET /Patient?name=Amina failed"),
            "GET /Patient?… failed"
        );
        assert_eq!(
            external("identifier 254700999111 and phone +254 700 999 111 in use (HAPI-0450)"),
            "identifier … and phone +… in use (HAPI-0450)"
        );
        assert_eq!(
            external("plain message, 3 entries"),
            "plain message, 3 entries"
        );
    }
}
