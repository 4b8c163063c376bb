//! OpenTelemetry: the spans `ingest`, `map`, `commit` and `deliver` of
//! each event, exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, in the trace the app
//! started (its `traceparent`); off otherwise, when no exporter runs and
//! no span is made. Export never holds up an event: spans queue, bounded,
//! for a background thread, and are dropped (and counted) when the
//! collector cannot keep up. Spans carry names and codes, never payload
//! values (`spans.rs`). Needs the `otel` cargo feature (on by default).

mod settings;
mod spans;

#[cfg(feature = "otel")]
mod export;

#[cfg(feature = "otel")]
pub use export::{ExportStartError, Exporter, MAX_QUEUED_SPANS};
pub use settings::{DEFAULT_SERVICE_NAME, OtlpSettings, SettingsError};
pub use spans::{Span, deliver, ingest, outgoing_traceparent};

/// Starts exporting when `settings` say so; `None` when they do not (or
/// the binary was built without the `otel` feature, which is logged).
pub fn start(settings: Option<&OtlpSettings>) -> Result<Option<Export>, StartError> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    #[cfg(feature = "otel")]
    {
        let exporter = Exporter::start(settings).map_err(|e| StartError(e.to_string()))?;
        tracing::info!(service = %settings.service_name, "exporting spans over OTLP/HTTP");
        Ok(Some(Export { exporter }))
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = settings;
        tracing::warn!(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but this kiungo was built without the `otel` feature: no spans are exported"
        );
        Ok(None)
    }
}

/// Why span export could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(String);

/// Running span export, stopped by [`Export::shutdown`].
#[derive(Debug)]
pub struct Export {
    #[cfg(feature = "otel")]
    exporter: Exporter,
}

impl Export {
    /// Exports what is queued and stops.
    pub async fn shutdown(self) {
        #[cfg(feature = "otel")]
        self.exporter.shutdown().await;
    }
}
