//! The exporter: finished spans go into a bounded queue that a background
//! thread (the SDK's batch processor) empties in batches of up to 512,
//! every 5 s or sooner when a batch is full, posting each batch to the
//! collector as one OTLP/HTTP protobuf request. Nothing on the event's
//! path waits for it: a full queue drops the span (counted in
//! `kiungo_otel_spans_total{result="dropped"}`), a failed export drops
//! the batch (`result="failed"`) with a WARN line at most once a minute
//! per kind of failure, and neither ever panics.
//!
//! The HTTP client is reqwest's blocking client (opentelemetry-otlp's
//! default), our reqwest 0.13 with rustls on ring: the batch processor
//! runs on its own thread, outside the tokio runtime, where a blocking
//! client is the one that works without a runtime handle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
    SpanProcessor,
};

use super::OtlpSettings;

/// Spans waiting for export at most; more are dropped.
pub const MAX_QUEUED_SPANS: usize = 2048;

/// How long shutdown waits for the last batch.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
#[error("OpenTelemetry exporter: {0}")]
pub struct ExportStartError(String);

/// The running exporter.
#[derive(Debug)]
pub struct Exporter {
    /// Taken by [`Exporter::shutdown`].
    provider: Option<SdkTracerProvider>,
}

impl Exporter {
    /// Starts exporting to `settings`' endpoint and makes the spans of
    /// [`super::ingest`], [`super::deliver`] and their children record.
    pub fn start(settings: &OtlpSettings) -> Result<Self, ExportStartError> {
        let otlp = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(settings.traces_endpoint.clone())
            .build()
            .map_err(|e| ExportStartError(e.to_string()))?;
        let queued = Arc::new(AtomicUsize::new(0));
        let batch = BatchSpanProcessor::builder(Reporting {
            inner: otlp,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(MAX_QUEUED_SPANS)
                .build(),
        )
        .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                queued,
                max: MAX_QUEUED_SPANS,
            })
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(
                Resource::builder_empty()
                    .with_service_name(settings.service_name.clone())
                    .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                    .build(),
            )
            .build();
        super::spans::install(Some(provider.tracer("kiungo")));
        Ok(Self {
            provider: Some(provider),
        })
    }

    /// Stops recording, exports what is queued (waiting up to 5 s) and
    /// stops the exporter's thread.
    pub async fn shutdown(mut self) {
        super::spans::install(None);
        let Some(provider) = self.provider.take() else {
            return;
        };
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "OpenTelemetry exporter: the last spans may not have been exported");
        }
    }
}

impl Drop for Exporter {
    /// Spans stop recording when the exporter goes (a start-up that failed
    /// after it started); the SDK exports what is queued as it drops.
    fn drop(&mut self) {
        if self.provider.is_some() {
            super::spans::install(None);
        }
    }
}

/// Counts a span result in `kiungo_otel_spans_total`.
fn count(result: &str, n: usize) {
    crate::metrics::metrics().otel_span(result, n as u64);
}

/// A WARN line for an export problem of kind `reason`, at most once a
/// minute per kind, with how many were left out since.
fn warn_limited(reason: &str, message: &str) {
    static LIMITER: std::sync::OnceLock<crate::delivery::warn_limit::WarnLimiter> =
        std::sync::OnceLock::new();
    let limiter = LIMITER.get_or_init(|| {
        crate::delivery::warn_limit::WarnLimiter::new(crate::delivery::warn_limit::WARN_INTERVAL_MS)
    });
    if let Some(suppressed) = limiter.allow("otel", reason, crate::store::now_ms()) {
        tracing::warn!(reason, suppressed, "OpenTelemetry export: {message}");
    }
}

/// The batch processor behind a bound of its own: a span past
/// [`MAX_QUEUED_SPANS`] waiting is dropped here and counted (the SDK
/// would drop it too, but without telling anyone).
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet to the exporter: at least
    /// what `inner`'s queue holds.
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            count("dropped", 1);
            warn_limited(
                "queue_full",
                "spans dropped: the export queue is full (the collector is slow or unreachable)",
            );
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting and reporting each batch's result.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        // The batch has left the queue.
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => count("exported", n),
            Err(e) => {
                count("failed", n);
                let message = e.to_string();
                warn_limited(
                    &crate::delivery::warn_limit::failure_class(&message),
                    &format!("a batch of {n} spans was dropped: {message}"),
                );
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::Tracer as _;

    /// Counts the spans it is given; fails every export when `fail`.
    #[derive(Debug, Clone, Default)]
    struct Counting {
        spans: Arc<AtomicUsize>,
        fail: bool,
    }

    impl SpanExporter for Counting {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if self.fail {
                return Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                    "collector answered HTTP 503".into(),
                ));
            }
            self.spans.fetch_add(batch.len(), Ordering::SeqCst);
            Ok(())
        }
    }

    fn counted(result: &str) -> u64 {
        crate::metrics::metrics()
            .otel_spans
            .get_or_create(&crate::metrics::SpanLabels {
                result: result.to_owned(),
            })
            .get()
    }

    /// A provider whose batch processor exports only when flushed, behind
    /// a bound of `max` spans.
    fn provider(exporter: Counting, max: usize) -> SdkTracerProvider {
        let queued = Arc::new(AtomicUsize::new(0));
        let batch = BatchSpanProcessor::builder(Reporting {
            inner: exporter,
            queued: queued.clone(),
        })
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(64)
                .with_scheduled_delay(Duration::from_secs(3600))
                .build(),
        )
        .build();
        SdkTracerProvider::builder()
            .with_span_processor(Bounded {
                inner: batch,
                queued,
                max,
            })
            .build()
    }

    #[test]
    fn a_full_queue_drops_spans_counts_them_and_takes_more_once_exported() {
        let exporter = Counting::default();
        let provider = provider(exporter.clone(), 4);
        let tracer = provider.tracer("test");
        let dropped = counted("dropped");
        for _ in 0..10 {
            drop(tracer.start("x"));
        }
        assert_eq!(counted("dropped") - dropped, 6, "4 queued, 6 dropped");
        provider.force_flush().expect("flush");
        assert_eq!(exporter.spans.load(Ordering::SeqCst), 4);
        // Exported: the queue has room again.
        for _ in 0..3 {
            drop(tracer.start("x"));
        }
        provider.force_flush().expect("flush");
        assert_eq!(exporter.spans.load(Ordering::SeqCst), 7);
        assert_eq!(counted("dropped") - dropped, 6);
        provider.shutdown().expect("shutdown");
    }

    #[test]
    fn a_failed_export_is_counted_and_does_not_panic() {
        let provider = provider(
            Counting {
                fail: true,
                ..Counting::default()
            },
            100,
        );
        let tracer = provider.tracer("test");
        let failed = counted("failed");
        for _ in 0..3 {
            drop(tracer.start("x"));
        }
        assert!(provider.force_flush().is_err(), "the export failed");
        assert_eq!(counted("failed") - failed, 3);
        // Spans keep being taken after a failure.
        drop(tracer.start("x"));
        let _ = provider.force_flush();
        assert_eq!(counted("failed") - failed, 4);
        let _ = provider.shutdown();
    }
}
