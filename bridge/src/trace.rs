//! W3C trace context (`traceparent`): taken from the AMQP headers or the
//! HTTP request an event arrived with, or started by Kiungo when there is
//! none, stored with the event's FHIR bundle and forwarded (as a child
//! span, same trace id) with its delivery. Logs about an event carry its
//! `trace_id`, so one search finds the app's send, Kiungo's handling and
//! the FHIR server's request log.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; an
//! all-zero trace or parent id is invalid.

/// A valid `traceparent`, or `None`.
pub fn parse(value: &str) -> Option<&str> {
    let mut v = value.trim();
    // A later version may append fields: read it as version 00 (W3C).
    if v.len() > 55 && !v.starts_with("00-") && v.as_bytes()[55] == b'-' {
        v = v.get(..55)?;
    }
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let ok = hex(version, 2)
        && *version != "ff"
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    ok.then_some(v)
}

/// `bytes` random bytes as lower-case hex, from version-4 UUIDs (the same
/// digits as their bytes in order, written 16 bytes at a time rather than
/// one `format!` per byte: this runs for every event without a trace).
fn random_hex(bytes: usize) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(bytes.div_ceil(16) * 32);
    while out.len() < bytes * 2 {
        let _ = write!(out, "{:032x}", uuid::Uuid::new_v4().as_u128());
    }
    out.truncate(bytes * 2);
    out
}

/// The incoming `traceparent` if valid, else a new trace (sampled).
pub fn continue_or_start(incoming: Option<&str>) -> String {
    match incoming.and_then(parse) {
        Some(tp) => tp.to_owned(),
        None => format!("00-{}-{}-01", random_hex(16), random_hex(8)),
    }
}

/// A child of `parent`: same trace id and flags, a new parent id (the
/// span of Kiungo's request).
pub fn child(parent: &str) -> String {
    match parse(parent) {
        Some(tp) => format!("00-{}-{}-{}", &tp[3..35], random_hex(8), &tp[53..55]),
        None => continue_or_start(None),
    }
}

/// The trace id of a valid `traceparent` (empty otherwise).
pub fn trace_id(traceparent: &str) -> &str {
    parse(traceparent).map_or("", |tp| &tp[3..35])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_child_and_start() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(parse(tp), Some(tp));
        assert_eq!(trace_id(tp), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "hello",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert_eq!(trace_id(later), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            parse(&format!("{tp}-extra")),
            None,
            "version 00 has 4 fields"
        );
        let c = child(tp);
        assert!(parse(&c).is_some(), "{c}");
        assert_eq!(trace_id(&c), trace_id(tp));
        assert_ne!(&c[36..52], &tp[36..52]);
        assert!(c.ends_with("-01"));
        let new = continue_or_start(Some("garbage"));
        assert!(parse(&new).is_some(), "{new}");
        assert_ne!(trace_id(&new), trace_id(&continue_or_start(None)));
    }

    #[test]
    fn random_hex_has_the_length_asked_for() {
        for bytes in [1, 8, 16, 20, 33] {
            let h = random_hex(bytes);
            assert_eq!(h.len(), bytes * 2, "{h}");
            assert!(
                h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{h}"
            );
        }
        assert_ne!(random_hex(8), random_hex(8));
    }
}
