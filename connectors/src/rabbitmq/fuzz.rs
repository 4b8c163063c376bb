//! Fuzz targets for what a broker or a publisher controls: a content
//! header's property list (read by the lenient decoder of [`super::raw`]
//! and by `lapin`, whose header tables [`super::headers`] converts) and a
//! whole `basic.get` exchange as the broker's bytes.
//!
//! Invariants: nothing panics or hangs; what `lapin` reads, the lenient
//! decoder reads alike and without problems (the parking queue's reason
//! depends on it); what `lapin` cannot read, the decoder names a problem
//! for; a body is held only up to its limit; header tables come out as
//! JSON objects no deeper than [`MAX_HEADER_DEPTH`] levels. Run longer:
//! `BOLERO_RANDOM_TEST_TIME_MS=600000 cargo test --release -p
//! kiungo-connectors rabbitmq::fuzz` (docs/security.md).

use std::pin::Pin;
use std::task::{Context, Poll};

use kiungo_fuzz_input::{CI_TIME, Input};
use lapin::types::FieldTable;
use serde_json::Value;

use super::field_table_to_json;
use super::raw::{
    FieldTableWriter, MAX_HEADER_DEPTH, RawConnection, RawMessage, decode_content_header,
};

/// A property list, mostly well-formed: each property the flags announce,
/// drawn as valid, non-UTF-8 or truncated; sometimes bytes as they come.
fn properties(input: &mut Input<'_>) -> (u16, Vec<u8>) {
    let flags = u16::from_le_bytes([input.byte(), input.byte()]) & !1;
    let mut w = FieldTableWriter::new();
    for bit in (2..16).rev() {
        if flags & (1 << bit) == 0 {
            continue;
        }
        w = match bit {
            13 => w.longstr(&table(input, 0)),
            12 | 11 => w.raw(&[input.byte()]),
            6 => w.raw(&input.eight()),
            _ => w.shortstr(&short_text(input)),
        };
        if input.one_in(40) {
            w = w.raw(input.bytes(16));
        }
    }
    let mut bytes = w.bytes().to_vec();
    if input.one_in(16) {
        bytes.truncate(input.below(bytes.len() + 1));
    }
    (flags, bytes)
}

fn short_text(input: &mut Input<'_>) -> Vec<u8> {
    match input.below(4) {
        0 => b"application/json".to_vec(),
        1 => vec![b'a', 0xff, b'b'],
        _ => input.text().into_bytes(),
    }
}

/// An encoded header table, nesting up to a few levels (and now and then
/// a deep one, built without recursion).
fn table(input: &mut Input<'_>, depth: usize) -> Vec<u8> {
    if input.one_in(50) {
        return FieldTableWriter::nested(1 + input.below(3 * MAX_HEADER_DEPTH))
            .bytes()
            .to_vec();
    }
    let mut w = FieldTableWriter::new();
    for _ in 0..input.below(5) {
        let key = if input.one_in(12) {
            vec![b'k', 0xfe]
        } else {
            input.text().into_bytes()
        };
        w = w.shortstr(&key);
        w = value(input, w, depth);
    }
    w.bytes().to_vec()
}

fn value(input: &mut Input<'_>, w: FieldTableWriter, depth: usize) -> FieldTableWriter {
    let tags = b"tbBsuUIiLlfdDSxTVFA?";
    let tag = input.pick(tags);
    let w = w.raw(&[tag]);
    match tag {
        b't' | b'b' | b'B' => w.raw(&[input.byte()]),
        b's' | b'u' | b'U' => w.raw(&[input.byte(), input.byte()]),
        b'I' | b'i' | b'f' => w.raw(&input.eight()[..4]),
        b'L' | b'l' | b'd' | b'T' => w.raw(&input.eight()),
        b'D' => w.raw(&input.eight()[..5]),
        b'S' | b'x' => {
            let text = input.text();
            w.longstr(text.as_bytes())
        }
        b'V' => w,
        b'F' if depth < 4 => w.longstr(&table(input, depth + 1)),
        b'A' if depth < 4 => {
            let mut items = FieldTableWriter::new();
            for _ in 0..input.below(4) {
                items = value(input, items, depth + 1);
            }
            w.longstr(items.bytes())
        }
        _ => w.raw(input.bytes(4)),
    }
}

fn content_header(flags: u16, props: &[u8], body_size: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(props.len() + 14);
    h.extend_from_slice(&60u16.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&body_size.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(props);
    h
}

/// How deep tables and arrays nest in a JSON value (1 for a flat object),
/// counted with a loop.
fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut todo = vec![(v, 1)];
    while let Some((v, d)) = todo.pop() {
        match v {
            Value::Object(m) => {
                deepest = deepest.max(d);
                todo.extend(m.values().map(|v| (v, d + 1)));
            }
            Value::Array(a) => {
                deepest = deepest.max(d);
                todo.extend(a.iter().map(|v| (v, d + 1)));
            }
            _ => {}
        }
    }
    deepest
}

/// One property list through both decoders.
fn check_properties(flags: u16, props: &[u8]) {
    let mut raw = RawMessage::default();
    decode_content_header(&content_header(flags, props, 7), &mut raw)
        .expect("a header with class, weight, size and flags decodes");
    assert!(raw.headers.is_object(), "headers are an object");
    assert!(
        json_depth(&raw.headers) <= MAX_HEADER_DEPTH + 1,
        "headers nest at most {MAX_HEADER_DEPTH} levels"
    );
    assert_eq!(raw.body_size, 7);
    for p in &raw.problems {
        assert!(
            !p.is_empty() && p.len() < 400,
            "a problem is a short text: {p:?}"
        );
    }
    let nested_too_deep = raw.problems.iter().any(|p| p.contains("nested"));
    let mut with_flags = flags.to_be_bytes().to_vec();
    with_flags.extend_from_slice(props);
    match lapin::protocol::basic::parse_properties(with_flags.as_slice()) {
        Ok((_, parsed)) => {
            let unexpected: Vec<&String> = raw
                .problems
                .iter()
                .filter(|p| !p.contains("nested"))
                .collect();
            assert!(
                unexpected.is_empty(),
                "lapin reads these properties, the lenient decoder finds {unexpected:?}"
            );
            let id = parsed.message_id().as_ref().map(|s| s.as_str().to_owned());
            assert_eq!(raw.message_id, id, "message_id");
            assert_eq!(raw.timestamp, *parsed.timestamp(), "timestamp");
            if !nested_too_deep {
                let converted = parsed
                    .headers()
                    .as_ref()
                    .map_or_else(|| Value::Object(Default::default()), field_table_to_json);
                assert_eq!(raw.headers, converted, "headers as JSON");
            }
        }
        Err(_) => assert!(
            !raw.problems.is_empty() || parsed_prefix_only(&with_flags),
            "lapin cannot read these properties, and the lenient decoder names no problem"
        ),
    }
}

/// Never: a property list lapin refuses is one the decoder must explain.
/// Kept as a function so that a finding can be narrowed here.
const fn parsed_prefix_only(_: &[u8]) -> bool {
    false
}

/// Runs `f` on a thread with the stack `kiungo run` gives its threads
/// (`RUST_MIN_STACK`, docs/deploy.md): `lapin` recurses once per level of
/// a nested table, and a fuzzer's input nests hundreds of levels.
fn with_service_stack(f: impl FnOnce() + Send + 'static) {
    let joined = std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(f)
        .expect("thread")
        .join();
    if let Err(panic) = joined {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn amqp_properties() {
    with_service_stack(amqp_properties_target);
}

fn amqp_properties_target() {
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let mut input = Input::new(bytes);
            let (flags, props) = if input.one_in(8) {
                let flags = u16::from_le_bytes([input.byte(), input.byte()]) & !1;
                (flags, input.rest().to_vec())
            } else {
                properties(&mut input)
            };
            check_properties(flags, &props);
        });
}

/// The header tables `lapin` hands over, converted: any table it parses
/// becomes an object no deeper than the limit.
#[test]
fn amqp_header_tables() {
    with_service_stack(amqp_header_tables_target);
}

fn amqp_header_tables_target() {
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let mut input = Input::new(bytes);
            let encoded = if input.one_in(4) {
                input.rest().to_vec()
            } else {
                table(&mut input, 0)
            };
            let mut framed = u32::try_from(encoded.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes()
                .to_vec();
            framed.extend_from_slice(&encoded);
            let parsed: Result<(_, FieldTable), _> =
                lapin::types::parsing::parse_field_table(framed.as_slice());
            if let Ok((_, table)) = parsed {
                let json = field_table_to_json(&table);
                assert!(json.is_object());
                assert!(json_depth(&json) <= MAX_HEADER_DEPTH + 1);
            }
        });
}

/// The broker's side of a `basic.get`: whatever it sends.
struct Broker {
    replies: Vec<u8>,
    at: usize,
}

impl futures_util::io::AsyncRead for Broker {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let n = buf.len().min(self.replies.len() - self.at);
        buf[..n].copy_from_slice(&self.replies[self.at..self.at + n]);
        self.at += n;
        Poll::Ready(Ok(n))
    }
}

impl futures_util::io::AsyncWrite for Broker {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// The broker's replies to a `basic.get`: mostly get-ok, a content header
/// and body frames, each part now and then replaced by other bytes.
fn replies(input: &mut Input<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    if input.one_in(10) {
        out.extend_from_slice(&frame(8, 0, b""));
    }
    let mut get_ok = vec![0, 60, 0, 71];
    get_ok.extend_from_slice(&input.eight());
    get_ok.push(input.byte());
    for _ in 0..2 {
        let t = short_text(input);
        get_ok.push(u8::try_from(t.len()).unwrap_or(u8::MAX));
        get_ok.extend_from_slice(&t[..t.len().min(255)]);
    }
    match input.below(12) {
        0 => out.extend_from_slice(&frame(1, 1, &[0, 60, 0, 72, 0])),
        1 => out.extend_from_slice(&frame(1, 1, &[0, 20, 0, 40, 1, 0x94, 3, b'b', b'y', b'e'])),
        2 => out.extend_from_slice(input.bytes(64)),
        _ => out.extend_from_slice(&frame(1, 1, &get_ok)),
    }
    let (flags, props) = properties(input);
    let body = input.bytes(64).to_vec();
    let declared = if input.one_in(6) {
        u64::from(input.byte())
    } else {
        body.len() as u64
    };
    out.extend_from_slice(&frame(2, 1, &content_header(flags, &props, declared)));
    let mut sent = 0;
    while sent < body.len() {
        let n = 1 + input.below(body.len() - sent);
        out.extend_from_slice(&frame(3, 1, &body[sent..sent + n]));
        sent += n;
    }
    if input.one_in(8) {
        let cut = input.below(out.len() + 1);
        out.truncate(cut);
    }
    out.extend_from_slice(input.rest());
    out
}

#[test]
fn amqp_basic_get() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    bolero::check!()
        .with_test_time(CI_TIME)
        .for_each(|bytes: &[u8]| {
            let mut input = Input::new(bytes);
            let keep = input.below(48);
            let replies = replies(&mut input);
            let total = replies.len();
            let mut conn = RawConnection::over(Broker { replies, at: 0 });
            let got = runtime.block_on(conn.get("kiungo.cht.overflow", keep));
            match got {
                Ok(Some(msg)) => {
                    assert!(msg.body.len() <= keep, "at most `keep` bytes held");
                    assert!(msg.body.len() as u64 <= msg.body_size);
                    assert!(msg.headers.is_object());
                    assert!(json_depth(&msg.headers) <= MAX_HEADER_DEPTH + 1);
                    assert!(total >= 8, "a message needs frames");
                }
                Ok(None) => {}
                Err(e) => {
                    let text = e.to_string();
                    assert!(
                        text.starts_with("amqp") || text.starts_with("broker closed"),
                        "{text}"
                    );
                    assert!(text.len() < 600, "{text}");
                }
            }
        });
}

/// Found by `amqp_basic_get`: a body frame past the announced size was
/// kept (up to `keep`), so a message's body could be longer than its
/// recorded size. Such a stream is out of step: an error, and the
/// connection is made again.
#[test]
fn body_frames_past_the_announced_size_are_refused() {
    let mut replies = frame(1, 1, &[0, 60, 0, 71, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    replies.extend_from_slice(&frame(2, 1, &content_header(0, &[], 3)));
    replies.extend_from_slice(&frame(3, 1, b"0123456789"));
    let mut conn = RawConnection::over(Broker { replies, at: 0 });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let got = runtime.block_on(conn.get("q", 64));
    let err = got.expect_err("out of step");
    assert!(err.to_string().contains("announced 3 bytes"), "{err}");
}
