//! Which `Content-Type` HTTP ingest reads: `application/json` and
//! `application/<anything>+json` (RFC 6839), with no charset or UTF-8
//! (JSON is UTF-8, RFC 8259). Anything else, and a missing type, is
//! refused: a browser posts `text/plain`, form data or a body without a
//! type cross-site without asking first (no CORS preflight), and curl's
//! `--data-binary` sends `application/x-www-form-urlencoded` unless told.

/// `Ok` for a JSON type; otherwise what is wrong, for the 415 answer.
pub fn check(value: Option<&[u8]>) -> Result<(), String> {
    const WANT: &str = "send `Content-Type: application/json` (or application/<type>+json)";
    let Some(raw) = value else {
        return Err(format!("no Content-Type: {WANT}"));
    };
    let Ok(text) = std::str::from_utf8(raw) else {
        return Err(format!("the Content-Type is not text: {WANT}"));
    };
    let mut parts = text.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .and_then(|s| s.strip_suffix("+json"))
            .is_some_and(|s| !s.is_empty() && !s.contains('/'));
    if !json {
        return Err(format!(
            "Content-Type `{}` is not JSON: {WANT}",
            printable(&essence)
        ));
    }
    for param in parts {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("charset") {
            let charset = value.trim().trim_matches('"');
            if !charset.eq_ignore_ascii_case("utf-8") && !charset.eq_ignore_ascii_case("utf8") {
                return Err(format!(
                    "charset `{}`: JSON is read as UTF-8 only; send the body in UTF-8 as \
                     `Content-Type: application/json`",
                    printable(charset)
                ));
            }
        }
    }
    Ok(())
}

/// At most 64 printable ASCII characters of client text, for a message.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn json_types_pass_others_do_not() {
        for ok in [
            "application/json",
            "APPLICATION/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/fhir+json",
            "application/vnd.cht.event+json; version=2",
        ] {
            assert_eq!(check(Some(ok.as_bytes())), Ok(()), "{ok}");
        }
        for bad in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "application/+json",
            "text/json",
            "application/json; charset=iso-8859-1",
            "",
        ] {
            let err = check(Some(bad.as_bytes())).expect_err(bad);
            assert!(
                err.contains("application/json") || err.contains("UTF-8"),
                "{bad}: {err}"
            );
        }
        assert!(
            check(None)
                .expect_err("none")
                .starts_with("no Content-Type")
        );
        assert!(check(Some(b"\xff")).is_err());
        let long = format!("text/{}\u{1b}[31m", "x".repeat(500));
        let err = check(Some(long.as_bytes())).expect_err("long");
        assert!(err.len() < 200 && !err.contains('\u{1b}'), "{err}");
    }
}
