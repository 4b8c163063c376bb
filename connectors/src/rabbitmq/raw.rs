//! A minimal, tolerant AMQP 0-9-1 client: enough to `basic.get`, `ack`
//! and `publish` on one channel.
//!
//! **Why it exists**: `lapin` drops its whole connection on a content
//! header it cannot parse (a `message_id`, `content_type` or header key
//! that is not UTF-8), and its parser recurses once per level of a nested
//! header table. Such a message is moved by the broker to the queue's
//! parking queue (`x-delivery-limit`, see `docs/deploy.md`); this client
//! reads it from there without interpreting more than it must: the
//! properties are decoded leniently (lossy text, headers converted to JSON
//! down to [`MAX_HEADER_DEPTH`] levels, the rest skipped by its length
//! prefix, never by recursion), and at most `keep` bytes of the body are
//! held in memory. Tests also use it to publish frames `lapin` cannot.

use std::fmt::Write as _;

use futures_util::io::{AsyncReadExt, AsyncWriteExt};
use lapin::tcp::AMQPUriTcpExt;
use lapin::uri::AMQPUri;
use serde_json::{Map, Value, json};

/// Header tables nested deeper than this are not converted (they are
/// replaced by a note); deeper nesting is a reason to park the message.
pub const MAX_HEADER_DEPTH: usize = 16;

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// The URL is not an AMQP URI.
    #[error("invalid amqp url: {0}")]
    Url(String),
    /// TCP or TLS failure; transient.
    #[error("amqp i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The broker closed the connection or channel (code and text).
    #[error("broker closed the {what}: {code} {text}")]
    Closed {
        /// `connection` or `channel`.
        what: &'static str,
        /// AMQP reply code.
        code: u16,
        /// AMQP reply text.
        text: String,
    },
    /// The broker sent something this client does not expect.
    #[error("amqp protocol: {0}")]
    Protocol(String),
}

impl RawError {
    /// Whether trying again later can succeed: everything but a malformed
    /// URL or an access refusal (403, 530).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Url(_) => false,
            Self::Closed { code, .. } => !matches!(code, 403 | 530),
            Self::Io(_) | Self::Protocol(_) => true,
        }
    }
}

/// A message read with `basic.get`, decoded leniently.
#[derive(Debug, Clone, Default)]
pub struct RawMessage {
    /// Delivery tag, for [`RawConnection::ack`].
    pub delivery_tag: u64,
    /// Whether the broker delivered it before.
    pub redelivered: bool,
    /// Exchange it was published to (lossy text).
    pub exchange: String,
    /// Routing key (lossy text).
    pub routing_key: String,
    /// `message_id` (lossy text).
    pub message_id: Option<String>,
    /// `timestamp` (POSIX seconds).
    pub timestamp: Option<u64>,
    /// Headers as a JSON object (lossy, depth-limited).
    pub headers: Value,
    /// The body's full size as announced by the content header.
    pub body_size: u64,
    /// The body's first bytes (all of it when within the reader's limit).
    pub body: Vec<u8>,
    /// Why `lapin` cannot read this message, if it cannot: each problem
    /// found in the properties (empty when they are well-formed).
    pub problems: Vec<String>,
}

/// One connection with one open channel (number 1).
pub struct RawConnection {
    stream: Box<dyn Stream>,
    frame_max: u32,
}

trait Stream: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Send + Unpin {}
impl<T: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Send + Unpin> Stream for T {}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConnection")
            .field("frame_max", &self.frame_max)
            .finish_non_exhaustive()
    }
}

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;
const CHANNEL: u16 = 1;

impl RawConnection {
    /// A connection over `stream`, already open (for the fuzz targets:
    /// the broker's side is the fuzzer's bytes).
    #[cfg(test)]
    pub(crate) fn over<S>(stream: S) -> Self
    where
        S: futures_util::io::AsyncRead + futures_util::io::AsyncWrite + Send + Unpin + 'static,
    {
        Self {
            stream: Box::new(stream),
            frame_max: 131_072,
        }
    }

    /// Connects (plain or TLS, as the URL says), logs in with PLAIN, opens
    /// the vhost and channel 1. Heartbeats are off.
    pub async fn connect(url: &str, name: &str) -> Result<Self, RawError> {
        let uri: AMQPUri = url.parse().map_err(RawError::Url)?;
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| RawError::Protocol(format!("no runtime: {e}")))?;
        let stream = uri.connect_async(&runtime).await?;
        let mut c = Self {
            stream: Box::new(stream),
            frame_max: 131_072,
        };
        c.stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
        c.expect_method(0, (10, 10)).await?; // connection.start
        let mut props = Writer::default();
        props.table_entry_str("connection_name", name);
        let mut p = Writer::method(10, 11);
        p.table(&props.0);
        p.shortstr(b"PLAIN");
        let user = &uri.authority.userinfo.username;
        let pass = &uri.authority.userinfo.password;
        p.longstr(format!("\0{user}\0{pass}").as_bytes());
        p.shortstr(b"en_US");
        c.send(FRAME_METHOD, 0, &p.0).await?;
        let tune = c.expect_method(0, (10, 30)).await?; // connection.tune
        let mut r = Reader::new(&tune);
        let channel_max = r.u16()?;
        let frame_max = r.u32()?;
        if frame_max >= 4096 {
            c.frame_max = frame_max;
        }
        let mut p = Writer::method(10, 31);
        p.u16(channel_max.max(1));
        p.u32(c.frame_max);
        p.u16(0);
        c.send(FRAME_METHOD, 0, &p.0).await?;
        let mut p = Writer::method(10, 40);
        p.shortstr(uri.vhost.as_bytes());
        p.shortstr(b"");
        p.u8(0);
        c.send(FRAME_METHOD, 0, &p.0).await?;
        c.expect_method(0, (10, 41)).await?;
        let mut p = Writer::method(20, 10);
        p.shortstr(b"");
        c.send(FRAME_METHOD, CHANNEL, &p.0).await?;
        c.expect_method(CHANNEL, (20, 11)).await?;
        Ok(c)
    }

    /// `basic.get` without auto-ack: the next ready message of `queue`,
    /// with at most `keep` bytes of its body held (the rest is read and
    /// dropped frame by frame).
    pub async fn get(&mut self, queue: &str, keep: usize) -> Result<Option<RawMessage>, RawError> {
        let mut p = Writer::method(60, 70);
        p.u16(0);
        p.shortstr(queue.as_bytes());
        p.u8(0);
        self.send(FRAME_METHOD, CHANNEL, &p.0).await?;
        let (kind, args) = loop {
            let (kind, channel, payload) = self.read_frame().await?;
            if kind == FRAME_HEARTBEAT {
                continue;
            }
            if kind != FRAME_METHOD || channel != CHANNEL {
                return Err(RawError::Protocol(format!("unexpected frame type {kind}")));
            }
            let mut r = Reader::new(&payload);
            let id = (r.u16()?, r.u16()?);
            check_close(id, r.rest())?;
            break (id, r.rest().to_vec());
        };
        match kind {
            (60, 72) => return Ok(None),
            (60, 71) => {}
            other => return Err(RawError::Protocol(format!("unexpected method {other:?}"))),
        }
        let mut msg = RawMessage::default();
        let mut r = Reader::new(&args);
        msg.delivery_tag = r.u64()?;
        msg.redelivered = r.u8()? & 1 == 1;
        msg.exchange = lossy(r.shortstr()?);
        msg.routing_key = lossy(r.shortstr()?);
        let (kind, _, header) = self.read_frame().await?;
        if kind != FRAME_HEADER {
            return Err(RawError::Protocol(format!(
                "expected a content header, got frame type {kind}"
            )));
        }
        decode_content_header(&header, &mut msg)?;
        let mut received: u64 = 0;
        while received < msg.body_size {
            let (kind, _, chunk) = self.read_frame().await?;
            if kind != FRAME_BODY {
                return Err(RawError::Protocol(format!(
                    "expected a body frame, got frame type {kind}"
                )));
            }
            received += chunk.len() as u64;
            // More body than the content header announced: the stream is
            // out of step (AMQP 0-9-1 §4.2.6.2), and the size recorded for
            // the dead letter would be wrong.
            if received > msg.body_size {
                return Err(RawError::Protocol(format!(
                    "body frames carry more than the announced {} bytes",
                    msg.body_size
                )));
            }
            let room = keep.saturating_sub(msg.body.len());
            msg.body.extend_from_slice(&chunk[..room.min(chunk.len())]);
        }
        Ok(Some(msg))
    }

    /// Acknowledges `delivery_tag` (and, with `multiple`, every earlier one).
    pub async fn ack(&mut self, delivery_tag: u64, multiple: bool) -> Result<(), RawError> {
        let mut p = Writer::method(60, 80);
        p.u64(delivery_tag);
        p.u8(u8::from(multiple));
        self.send(FRAME_METHOD, CHANNEL, &p.0).await
    }

    /// Declares a durable queue with `arguments` (an encoded field table,
    /// [`FieldTableWriter`]); waits for `declare-ok`.
    pub async fn declare_queue(&mut self, queue: &str, arguments: &[u8]) -> Result<(), RawError> {
        let mut p = Writer::method(50, 10);
        p.u16(0);
        p.shortstr(queue.as_bytes());
        p.u8(0b0000_0010); // durable
        p.table(arguments);
        self.send(FRAME_METHOD, CHANNEL, &p.0).await?;
        self.expect_method(CHANNEL, (50, 11)).await.map(|_| ())
    }

    /// Publishes `body` to `exchange` with `routing_key` and the content
    /// header's property flags and property list exactly as given, so that
    /// tests can send what well-behaved clients cannot.
    pub async fn publish_raw(
        &mut self,
        exchange: &str,
        routing_key: &str,
        property_flags: u16,
        properties: &[u8],
        body: &[u8],
    ) -> Result<(), RawError> {
        let mut p = Writer::method(60, 40);
        p.u16(0);
        p.shortstr(exchange.as_bytes());
        p.shortstr(routing_key.as_bytes());
        p.u8(0);
        self.send(FRAME_METHOD, CHANNEL, &p.0).await?;
        let mut h = Writer::default();
        h.u16(60);
        h.u16(0);
        h.u64(body.len() as u64);
        h.u16(property_flags);
        h.0.extend_from_slice(properties);
        self.send(FRAME_HEADER, CHANNEL, &h.0).await?;
        let chunk = (self.frame_max as usize).saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.send(FRAME_BODY, CHANNEL, part).await?;
        }
        Ok(())
    }

    /// Closes the connection politely (waits at most for the close-ok).
    pub async fn close(mut self) {
        let mut p = Writer::method(10, 50);
        p.u16(200);
        p.shortstr(b"bye");
        p.u16(0);
        p.u16(0);
        if self.send(FRAME_METHOD, 0, &p.0).await.is_ok() {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                self.expect_method(0, (10, 51)),
            )
            .await;
        }
    }

    async fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) -> Result<(), RawError> {
        let len = u32::try_from(payload.len())
            .map_err(|_| RawError::Protocol("frame too large".into()))?;
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<(u8, u16, Vec<u8>), RawError> {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).await?;
        let kind = head[0];
        let channel = u16::from_be_bytes([head[1], head[2]]);
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]);
        // The broker does not hold itself to frame_max for content
        // headers: allow generous slack, but never an unbounded read.
        if size > self.frame_max.saturating_mul(8).max(1 << 20) {
            return Err(RawError::Protocol(format!("frame of {size} bytes")));
        }
        let mut payload = vec![0u8; size as usize + 1];
        self.stream.read_exact(&mut payload).await?;
        if payload.pop() != Some(FRAME_END) {
            return Err(RawError::Protocol("frame end marker missing".into()));
        }
        Ok((kind, channel, payload))
    }

    async fn expect_method(&mut self, channel: u16, want: (u16, u16)) -> Result<Vec<u8>, RawError> {
        loop {
            let (kind, ch, payload) = self.read_frame().await?;
            if kind == FRAME_HEARTBEAT {
                continue;
            }
            if kind != FRAME_METHOD {
                return Err(RawError::Protocol(format!("unexpected frame type {kind}")));
            }
            let mut r = Reader::new(&payload);
            let id = (r.u16()?, r.u16()?);
            check_close(id, r.rest())?;
            if ch == channel && id == want {
                return Ok(r.rest().to_vec());
            }
            return Err(RawError::Protocol(format!(
                "expected method {want:?} on channel {channel}, got {id:?} on {ch}"
            )));
        }
    }
}

fn check_close(id: (u16, u16), args: &[u8]) -> Result<(), RawError> {
    let what = match id {
        (10, 50) => "connection",
        (20, 40) => "channel",
        _ => return Ok(()),
    };
    let mut r = Reader::new(args);
    let code = r.u16().unwrap_or(0);
    let text = r.shortstr().map(lossy).unwrap_or_default();
    Err(RawError::Closed { what, code, text })
}

/// Decodes a `basic` content header leniently into `msg`.
pub(crate) fn decode_content_header(payload: &[u8], msg: &mut RawMessage) -> Result<(), RawError> {
    let mut r = Reader::new(payload);
    let _class = r.u16()?;
    let _weight = r.u16()?;
    msg.body_size = r.u64()?;
    let mut flags = r.u16()?;
    let mut more = flags & 1 == 1;
    while more {
        more = r.u16()? & 1 == 1;
    }
    flags &= !1;
    let has = |bit: u16| flags & (1 << bit) != 0;
    let text = |r: &mut Reader<'_>, name: &str, problems: &mut Vec<String>| {
        r.shortstr().map(|b| {
            if std::str::from_utf8(b).is_err() {
                problems.push(format!("{name} is not UTF-8"));
            }
            lossy(b)
        })
    };
    let mut problems = Vec::new();
    let result = (|| -> Result<(), RawError> {
        for (bit, name) in [(15, "content_type"), (14, "content_encoding")] {
            if has(bit) {
                text(&mut r, name, &mut problems)?;
            }
        }
        if has(13) {
            let table = r.longstr()?;
            msg.headers = decode_table(table, 1, &mut problems);
        }
        if has(12) {
            r.u8()?;
        }
        if has(11) {
            r.u8()?;
        }
        for (bit, name) in [(10, "correlation_id"), (9, "reply_to"), (8, "expiration")] {
            if has(bit) {
                text(&mut r, name, &mut problems)?;
            }
        }
        if has(7) {
            msg.message_id = Some(text(&mut r, "message_id", &mut problems)?);
        }
        if has(6) {
            msg.timestamp = Some(r.u64()?);
        }
        for (bit, name) in [
            (5, "type"),
            (4, "user_id"),
            (3, "app_id"),
            (2, "cluster_id"),
        ] {
            if has(bit) {
                text(&mut r, name, &mut problems)?;
            }
        }
        Ok(())
    })();
    if result.is_err() {
        problems.push("properties are truncated".into());
    }
    if !msg.headers.is_object() {
        msg.headers = Value::Object(Map::new());
    }
    msg.problems = problems;
    Ok(())
}

fn decode_table(bytes: &[u8], depth: usize, problems: &mut Vec<String>) -> Value {
    let mut map = Map::new();
    let mut r = Reader::new(bytes);
    while !r.rest().is_empty() {
        let Ok(key) = r.shortstr() else {
            problems.push("header table is truncated".into());
            break;
        };
        if std::str::from_utf8(key).is_err() {
            problems.push(format!("header key {} is not UTF-8", json!(lossy(key))));
        }
        match decode_value(&mut r, depth, problems) {
            Ok(v) => {
                map.insert(lossy(key), v);
            }
            Err(()) => {
                problems.push(format!("header {} is malformed", json!(lossy(key))));
                break;
            }
        }
    }
    Value::Object(map)
}

fn decode_value(r: &mut Reader<'_>, depth: usize, problems: &mut Vec<String>) -> Result<Value, ()> {
    let e = |_| ();
    Ok(match r.u8().map_err(e)? {
        b't' => json!(r.u8().map_err(e)? != 0),
        b'b' => json!(r.u8().map_err(e)? as i8),
        b'B' => json!(r.u8().map_err(e)?),
        // `U` is the spec's short int, `s` RabbitMQ's; `L` and `l` are both
        // a signed 64-bit integer to RabbitMQ, and to lapin.
        b's' | b'U' => json!(r.u16().map_err(e)? as i16),
        b'u' => json!(r.u16().map_err(e)?),
        b'I' => json!(r.u32().map_err(e)? as i32),
        b'i' => json!(r.u32().map_err(e)?),
        b'l' | b'L' => json!(r.u64().map_err(e)? as i64),
        b'T' => json!(r.u64().map_err(e)?),
        b'f' => json!(f32::from_bits(r.u32().map_err(e)?)),
        b'd' => json!(f64::from_bits(r.u64().map_err(e)?)),
        b'D' => {
            let scale = r.u8().map_err(e)?;
            // An unsigned value (AMQP 0-9-1 `decimal-value`), as lapin
            // and the header conversion read it.
            let v = r.u32().map_err(e)?;
            json!(f64::from(v) / 10f64.powi(i32::from(scale)))
        }
        b'S' | b'x' => {
            let b = r.longstr().map_err(e)?;
            std::str::from_utf8(b).map_or_else(|_| json!(b), |s| json!(s))
        }
        b'V' => Value::Null,
        b'F' => {
            let inner = r.longstr().map_err(e)?;
            if depth >= MAX_HEADER_DEPTH {
                let levels = nesting_depth(inner);
                problems.push(format!(
                    "headers nested {} levels deep (more than {MAX_HEADER_DEPTH})",
                    depth + levels
                ));
                json!(format!(
                    "(nested table of {} bytes not converted)",
                    inner.len()
                ))
            } else {
                decode_table(inner, depth + 1, problems)
            }
        }
        b'A' => {
            let inner = r.longstr().map_err(e)?;
            if depth >= MAX_HEADER_DEPTH {
                problems.push(format!(
                    "headers nested more than {MAX_HEADER_DEPTH} levels deep"
                ));
                json!(format!(
                    "(nested array of {} bytes not converted)",
                    inner.len()
                ))
            } else {
                let mut items = Vec::new();
                let mut ar = Reader::new(inner);
                while !ar.rest().is_empty() {
                    items.push(decode_value(&mut ar, depth + 1, problems)?);
                }
                Value::Array(items)
            }
        }
        _ => return Err(()),
    })
}

/// How many levels of tables nest inside `bytes` along the first nested
/// value of each level, counted with a loop (no recursion).
fn nesting_depth(mut bytes: &[u8]) -> usize {
    let mut levels = 1;
    loop {
        let mut r = Reader::new(bytes);
        let Ok(key_len) = r.u8() else { return levels };
        if r.take(usize::from(key_len)).is_err() || r.u8().ok() != Some(b'F') {
            return levels;
        }
        match r.longstr() {
            Ok(inner) => {
                bytes = inner;
                levels += 1;
            }
            Err(_) => return levels,
        }
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    const fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    const fn rest(&self) -> &'a [u8] {
        self.buf
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], RawError> {
        if self.buf.len() < n {
            return Err(RawError::Protocol("short frame".into()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, RawError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, RawError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, RawError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, RawError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn shortstr(&mut self) -> Result<&'a [u8], RawError> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }
    fn longstr(&mut self) -> Result<&'a [u8], RawError> {
        let n = self.u32()?;
        self.take(n as usize)
    }
}

#[derive(Default)]
struct Writer(Vec<u8>);

impl Writer {
    fn method(class: u16, method: u16) -> Self {
        let mut w = Self::default();
        w.u16(class);
        w.u16(method);
        w
    }
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_be_bytes());
    }
    fn shortstr(&mut self, s: &[u8]) {
        let s = &s[..s.len().min(255)];
        self.u8(s.len() as u8);
        self.0.extend_from_slice(s);
    }
    fn longstr(&mut self, s: &[u8]) {
        self.u32(u32::try_from(s.len()).unwrap_or(u32::MAX));
        self.0.extend_from_slice(s);
    }
    fn table(&mut self, encoded: &[u8]) {
        self.longstr(encoded);
    }
    fn table_entry_str(&mut self, key: &str, value: &str) {
        self.shortstr(key.as_bytes());
        self.u8(b'S');
        self.longstr(value.as_bytes());
    }
}

/// Builds an encoded AMQP field table (and content header property
/// lists) byte by byte, including what well-formed clients never send.
#[derive(Debug, Default, Clone)]
pub struct FieldTableWriter(Vec<u8>);

impl FieldTableWriter {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a short string (length byte, then the bytes as given).
    pub fn shortstr(mut self, s: &[u8]) -> Self {
        let s = &s[..s.len().min(255)];
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s);
        self
    }
    /// Appends a long string (32-bit length, then the bytes).
    pub fn longstr(mut self, s: &[u8]) -> Self {
        self.0
            .extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    /// Appends raw bytes.
    pub fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// Appends an entry `key` → long string `value`.
    pub fn entry_str(self, key: &[u8], value: &[u8]) -> Self {
        self.shortstr(key).raw(b"S").longstr(value)
    }
    /// Appends an entry `key` → 32-bit integer.
    pub fn entry_int(self, key: &[u8], value: i32) -> Self {
        self.shortstr(key).raw(b"I").raw(&value.to_be_bytes())
    }
    /// Appends an entry `key` → nested table (already encoded).
    pub fn entry_table(self, key: &[u8], table: &Self) -> Self {
        self.shortstr(key).raw(b"F").longstr(&table.0)
    }
    /// A table nested `depth` levels deep under key `n`, built with a loop.
    pub fn nested(depth: usize) -> Self {
        let mut t = Self(Vec::with_capacity(7 * depth));
        for level in (1..=depth).rev() {
            let inner = u32::try_from(7 * (level - 1)).unwrap_or(u32::MAX);
            t.0.extend_from_slice(b"\x01nF");
            t.0.extend_from_slice(&inner.to_be_bytes());
        }
        t
    }
    /// The encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Describes a message's problems for a dead letter's reason.
pub fn describe_problems(problems: &[String]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().take(5).enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = write!(out, "{p}");
    }
    if problems.len() > 5 {
        let _ = write!(out, "; and {} more", problems.len() - 5);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flags: u16, props: &[u8], size: u64) -> Vec<u8> {
        let mut h = Writer::default();
        h.u16(60);
        h.u16(0);
        h.u64(size);
        h.u16(flags);
        h.0.extend_from_slice(props);
        h.0
    }

    #[test]
    fn invalid_utf8_properties_are_read_leniently() {
        let headers = FieldTableWriter::new()
            .entry_str(b"ok", b"v")
            .entry_str(b"bad\xff", b"w");
        let props = FieldTableWriter::new()
            .shortstr(b"appl\xffication/json") // content_type
            .longstr(headers.bytes()) // headers
            .shortstr(b"id-\xfe"); // message_id
        let mut m = RawMessage::default();
        decode_content_header(&header(0x8000 | 0x2000 | 0x0080, props.bytes(), 3), &mut m)
            .expect("decodes");
        assert_eq!(m.body_size, 3);
        assert_eq!(m.message_id.as_deref(), Some("id-\u{fffd}"));
        assert_eq!(m.headers["ok"], "v");
        assert_eq!(m.headers["bad\u{fffd}"], "w");
        assert_eq!(m.problems.len(), 3, "{:?}", m.problems);
        assert!(m.problems[0].contains("content_type"), "{:?}", m.problems);
        assert!(m.problems[2].contains("message_id"), "{:?}", m.problems);
    }

    #[test]
    fn deep_headers_are_cut_without_recursion() {
        let deep = FieldTableWriter::nested(100_000);
        let props = FieldTableWriter::new().longstr(deep.bytes());
        let mut m = RawMessage::default();
        decode_content_header(&header(0x2000, props.bytes(), 0), &mut m).expect("decodes");
        assert_eq!(m.problems.len(), 1, "{:?}", m.problems);
        assert!(m.problems[0].contains("100001 levels"), "{:?}", m.problems);
        let mut v = &m.headers;
        for _ in 0..MAX_HEADER_DEPTH {
            v = &v["n"];
        }
        assert!(
            v.as_str().is_some_and(|s| s.contains("not converted")),
            "{v}"
        );
    }

    /// Found by the `amqp_properties` fuzz target: tables lapin reads with
    /// `U` (short int, as the spec names it) or `L` (long-long) entries
    /// were cut there, with a "malformed" problem; a decimal's value was
    /// read as signed (lapin and the spec: unsigned).
    #[test]
    fn spec_type_tags_are_read_as_lapin_reads_them() {
        let headers = FieldTableWriter::new()
            .shortstr(b"u")
            .raw(b"U")
            .raw(&(-2i16).to_be_bytes())
            .shortstr(b"l")
            .raw(b"L")
            .raw(&(-3i64).to_be_bytes())
            .shortstr(b"d")
            .raw(b"D\x02")
            .raw(&u32::MAX.to_be_bytes())
            .entry_int(b"after", 4);
        let props = FieldTableWriter::new().longstr(headers.bytes());
        let mut m = RawMessage::default();
        decode_content_header(&header(0x2000, props.bytes(), 0), &mut m).expect("decodes");
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(
            m.headers,
            json!({"u": -2, "l": -3, "d": 42_949_672.95, "after": 4})
        );
    }

    #[test]
    fn well_formed_properties_have_no_problems() {
        let props = FieldTableWriter::new()
            .shortstr(b"application/json")
            .longstr(FieldTableWriter::new().entry_int(b"x-n", 3).bytes())
            .shortstr(b"m-1")
            .raw(&1_700_000_000u64.to_be_bytes());
        let mut m = RawMessage::default();
        decode_content_header(
            &header(0x8000 | 0x2000 | 0x0080 | 0x0040, props.bytes(), 0),
            &mut m,
        )
        .expect("decodes");
        assert!(m.problems.is_empty(), "{:?}", m.problems);
        assert_eq!(m.headers, json!({"x-n": 3}));
        assert_eq!(m.timestamp, Some(1_700_000_000));
    }
}
