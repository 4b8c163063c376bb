//! Kiungo's spans, made explicitly where an event passes a step (its
//! parent is the event's `traceparent`, not whatever `tracing` span is
//! current: the steps of one event run on different tasks, batched with
//! other events). Without export every function here returns
//! [`Span::none`] after one read of an unset slot.
//!
//! Attributes are config names and codes only (`kiungo.source`,
//! `kiungo.mapping`, `kiungo.destination`, `kiungo.outcome`,
//! `kiungo.reason`, counts): never a payload field, and not the event id
//! either, which an app may have made from personal data; the trace id
//! already ties a span to the log lines that name the event.

use std::time::SystemTime;

#[cfg(feature = "otel")]
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};

/// The tracer of the running exporter, if any (one per process).
#[cfg(feature = "otel")]
static TRACER: std::sync::RwLock<Option<opentelemetry_sdk::trace::SdkTracer>> =
    std::sync::RwLock::new(None);

#[cfg(feature = "otel")]
pub(super) fn install(tracer: Option<opentelemetry_sdk::trace::SdkTracer>) {
    if let Ok(mut slot) = TRACER.write() {
        *slot = tracer;
    }
}

#[cfg(feature = "otel")]
fn tracer() -> Option<opentelemetry_sdk::trace::SdkTracer> {
    TRACER.read().ok()?.clone()
}

/// One span, ended (and queued for export) when dropped or [`Span::end`]
/// is called; a no-op when export is off or the trace is not sampled.
#[derive(Debug, Default)]
pub struct Span {
    /// Boxed: a [`Span::none`] is one word in every event's work item.
    #[cfg(feature = "otel")]
    inner: Option<Box<opentelemetry_sdk::trace::Span>>,
}

impl Span {
    /// A span that records nothing.
    pub const fn none() -> Self {
        Self {
            #[cfg(feature = "otel")]
            inner: None,
        }
    }

    /// Whether this span will be exported.
    pub fn is_recording(&self) -> bool {
        #[cfg(feature = "otel")]
        {
            self.inner.as_ref().is_some_and(|s| s.is_recording())
        }
        #[cfg(not(feature = "otel"))]
        {
            false
        }
    }

    /// Sets a text attribute (a name or a code, never a payload value).
    pub fn set(&mut self, key: &'static str, value: &str) {
        #[cfg(feature = "otel")]
        if let Some(s) = self.inner.as_mut().filter(|s| s.is_recording()) {
            s.set_attribute(opentelemetry::KeyValue::new(key, value.to_owned()));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (key, value);
    }

    /// Sets a count attribute.
    pub fn set_count(&mut self, key: &'static str, value: u64) {
        #[cfg(feature = "otel")]
        if let Some(s) = self.inner.as_mut().filter(|s| s.is_recording()) {
            s.set_attribute(opentelemetry::KeyValue::new(
                key,
                i64::try_from(value).unwrap_or(i64::MAX),
            ));
        }
        #[cfg(not(feature = "otel"))]
        let _ = (key, value);
    }

    /// Marks the span failed (status `Error`) with a reason code.
    pub fn fail(&mut self, reason: &str) {
        self.set("kiungo.reason", reason);
        #[cfg(feature = "otel")]
        if let Some(s) = self.inner.as_mut().filter(|s| s.is_recording()) {
            s.set_status(opentelemetry::trace::Status::error(reason.to_owned()));
        }
    }

    /// This span as a W3C `traceparent` (its own id as the parent id), to
    /// send with a request it covers; `None` unless it is recording.
    pub fn traceparent(&self) -> Option<String> {
        #[cfg(feature = "otel")]
        {
            let s = self.inner.as_ref().filter(|s| s.is_recording())?;
            let c = s.span_context();
            Some(format!(
                "00-{}-{}-{:02x}",
                c.trace_id(),
                c.span_id(),
                c.trace_flags().to_u8()
            ))
        }
        #[cfg(not(feature = "otel"))]
        {
            None
        }
    }

    /// A child of this span named `name`, started at `start`.
    pub fn child(&self, name: &'static str, start: SystemTime) -> Self {
        #[cfg(feature = "otel")]
        {
            let (Some(t), Some(parent)) =
                (tracer(), self.inner.as_ref().filter(|s| s.is_recording()))
            else {
                return Self::none();
            };
            let cx = opentelemetry::Context::new()
                .with_remote_span_context(parent.span_context().clone());
            Self {
                inner: Some(Box::new(
                    t.span_builder(name)
                        .with_start_time(start)
                        .start_with_context(&t, &cx),
                )),
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (name, start);
            Self::none()
        }
    }

    /// Ends the span now.
    pub fn end(self) {
        #[cfg(feature = "otel")]
        drop(self.inner);
        #[cfg(not(feature = "otel"))]
        let _ = self;
    }
}

/// The span context a valid `traceparent` names, as a remote parent.
#[cfg(feature = "otel")]
fn remote_parent(traceparent: &str) -> Option<opentelemetry::Context> {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    let tp = crate::trace::parse(traceparent)?;
    let trace_id = TraceId::from_hex(tp.get(3..35)?).ok()?;
    let span_id = SpanId::from_hex(tp.get(36..52)?).ok()?;
    let flags = u8::from_str_radix(tp.get(53..55)?, 16).ok()?;
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    Some(opentelemetry::Context::new().with_remote_span_context(sc))
}

/// A span named `name` of kind `kind`, child of `parent` (a
/// `traceparent`) or the root of a new trace without one.
#[cfg(feature = "otel")]
fn start(
    name: &'static str,
    kind: opentelemetry::trace::SpanKind,
    parent: Option<&str>,
    start: SystemTime,
) -> Span {
    let Some(t) = tracer() else {
        return Span::none();
    };
    let cx = parent.and_then(remote_parent).unwrap_or_default();
    Span {
        inner: Some(Box::new(
            t.span_builder(name)
                .with_kind(kind)
                .with_start_time(start)
                .start_with_context(&t, &cx),
        )),
    }
}

/// The `ingest` span of one event received at `at` from `source` (off a
/// queue, or an HTTP request): a child of the app's span when `incoming`
/// is a valid `traceparent`, the root of a new trace otherwise (whose
/// `traceparent` the event then carries, see [`Span::traceparent`]).
pub fn ingest(incoming: Option<&str>, source: &str, from_queue: bool, at: SystemTime) -> Span {
    #[cfg(feature = "otel")]
    {
        let mut span = start(
            "ingest",
            if from_queue {
                opentelemetry::trace::SpanKind::Consumer
            } else {
                opentelemetry::trace::SpanKind::Server
            },
            incoming.filter(|tp| crate::trace::parse(tp).is_some()),
            at,
        );
        span.set("kiungo.source", source);
        span
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (incoming, source, from_queue, at);
        Span::none()
    }
}

/// The `deliver` span of one request to `destination` (`fhir`, `dhis2`),
/// a child of `parent` (the stored `traceparent` of the event it
/// carries) or the root of a new trace (a DHIS2 push, whose totals have
/// many events).
pub fn deliver(parent: Option<&str>, destination: &str) -> Span {
    #[cfg(feature = "otel")]
    {
        let mut span = start(
            "deliver",
            opentelemetry::trace::SpanKind::Client,
            parent,
            SystemTime::now(),
        );
        span.set("kiungo.destination", destination);
        span
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = (parent, destination);
        Span::none()
    }
}

/// The `traceparent` to send with a request `span` covers: the span's
/// own when it is recording, else a new child of `parent` (as without
/// export), else a new trace.
pub fn outgoing_traceparent(span: &Span, parent: Option<&str>) -> String {
    span.traceparent().unwrap_or_else(|| match parent {
        Some(p) => crate::trace::child(p),
        None => crate::trace::continue_or_start(None),
    })
}
