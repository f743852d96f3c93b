//! Export over OTLP (HTTP/protobuf), configured the way every OpenTelemetry
//! SDK is: from `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS` and
//! `OTEL_SERVICE_NAME`. Nothing is built when no endpoint is set, so a
//! process that is not asked to export pays nothing.
//!
//! Spans leave through the SDK's batch processor (its own thread, a bounded
//! queue that drops rather than blocks), so a slow or absent collector
//! never slows a session.
//!
//! ```no_run
//! use colloquy_actors::telemetry::otlp::OtlpTracing;
//!
//! // `None` unless OTEL_EXPORTER_OTLP_ENDPOINT (or …_TRACES_ENDPOINT) is set.
//! let otlp = OtlpTracing::from_env("my-voice-agent").expect("a valid OTLP configuration");
//! let tracing = otlp.as_ref().map(OtlpTracing::tracing);
//! // … `SessionConfig::new(client, settings)` then `.with_tracing(t)` for each `t` in `tracing`;
//! // dropping `otlp` flushes what is left.
//! ```

use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

use super::Tracing;

/// The environment variable naming the collector for every signal.
pub const ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The environment variable naming the collector's traces URL.
pub const TRACES_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";

/// Why no exporter could be built or flushed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OtlpError {
    /// The exporter refused its configuration (an invalid endpoint…).
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    /// Spans could not be flushed or the exporter shut down.
    #[error("OTLP export: {0}")]
    Export(String),
}

/// A tracer provider exporting over OTLP, and the [`Tracing`] that feeds
/// it. Dropping it flushes and shuts the exporter down.
pub struct OtlpTracing {
    provider: SdkTracerProvider,
    tracing: Tracing,
}

impl std::fmt::Debug for OtlpTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpTracing").finish_non_exhaustive()
    }
}

impl OtlpTracing {
    /// From the process's environment; `Ok(None)` when no OTLP endpoint is
    /// set (or `OTEL_SDK_DISABLED=true`).
    pub fn from_env(service_name: &str) -> Result<Option<Self>, OtlpError> {
        Self::from_lookup(service_name, |k| std::env::var(k).ok())
    }

    /// As [`OtlpTracing::from_env`], reading variables through `lookup`.
    pub fn from_lookup(
        service_name: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, OtlpError> {
        if lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let set = |k: &str| lookup(k).filter(|v| !v.trim().is_empty());
        let endpoint = match (set(TRACES_ENDPOINT_VAR), set(ENDPOINT_VAR)) {
            (Some(traces), _) => traces,
            (None, Some(base)) => format!("{}/v1/traces", base.trim_end_matches('/')),
            (None, None) => return Ok(None),
        };
        let service = set("OTEL_SERVICE_NAME").unwrap_or_else(|| service_name.to_string());
        Self::to_endpoint(&service, &endpoint).map(Some)
    }

    /// Exports to `traces_url` (the full URL, e.g.
    /// `http://127.0.0.1:4318/v1/traces`).
    pub fn to_endpoint(service_name: &str, traces_url: &str) -> Result<Self, OtlpError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(traces_url)
            .build()
            .map_err(|e| OtlpError::Exporter(e.to_string()))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(service_name.to_string())
                    .build(),
            )
            .build();
        let tracing = Tracing::from_provider(&provider);
        Ok(Self { provider, tracing })
    }

    /// The [`Tracing`] to give sessions.
    pub fn tracing(&self) -> Tracing {
        self.tracing.clone()
    }

    /// Exports every ended span now.
    pub fn flush(&self) -> Result<(), OtlpError> {
        self.provider
            .force_flush()
            .map_err(|e| OtlpError::Export(e.to_string()))
    }
}

impl Drop for OtlpTracing {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "OTLP exporter shutdown");
        }
    }
}
