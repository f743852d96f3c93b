//! OpenTelemetry traces for the examples (included with `#[path]`): exported
//! over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and the build has the `otlp`
//! feature; nothing is built otherwise.
#![allow(dead_code)] // each example uses a different subset

use colloquy_actors::SessionConfig;

#[cfg(feature = "otlp")]
pub use colloquy_actors::telemetry::otlp::OtlpTracing;

/// Without the `otlp` feature: never built.
#[cfg(not(feature = "otlp"))]
pub struct OtlpTracing;

/// The exporter the environment asks for, announced on stderr.
#[cfg(feature = "otlp")]
pub fn from_env(service: &str) -> Result<Option<OtlpTracing>, Box<dyn std::error::Error>> {
    let otlp = OtlpTracing::from_env(service)?;
    if otlp.is_some() {
        eprintln!("{service}: traces exported over OTLP (OTEL_EXPORTER_OTLP_*)");
    }
    Ok(otlp)
}

/// Without the `otlp` feature: says so when the environment asks for traces.
#[cfg(not(feature = "otlp"))]
pub fn from_env(service: &str) -> Result<Option<OtlpTracing>, Box<dyn std::error::Error>> {
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
    {
        eprintln!(
            "{service}: OTEL_EXPORTER_OTLP_ENDPOINT is set, but this build has no `otlp` feature: no traces"
        );
    }
    Ok(None)
}

/// The sessions' tracing: cloneable, `'static`, empty without an exporter.
#[derive(Clone, Default)]
pub struct Traced {
    #[cfg(feature = "otlp")]
    tracing: Option<colloquy_actors::telemetry::Tracing>,
}

impl Traced {
    /// The tracing of `otlp`'s exporter, if one was built.
    pub fn of(otlp: Option<&OtlpTracing>) -> Self {
        #[cfg(feature = "otlp")]
        {
            Self {
                tracing: otlp.map(OtlpTracing::tracing),
            }
        }
        #[cfg(not(feature = "otlp"))]
        {
            let _ = otlp;
            Self {}
        }
    }

    /// `config`, traced when an exporter was built.
    pub fn apply(&self, config: SessionConfig) -> SessionConfig {
        #[cfg(feature = "otlp")]
        if let Some(tracing) = &self.tracing {
            return config.with_tracing(tracing.clone());
        }
        config
    }
}

/// `config`, traced when an exporter was built.
pub fn traced(config: SessionConfig, otlp: Option<&OtlpTracing>) -> SessionConfig {
    Traced::of(otlp).apply(config)
}
