//! OpenTelemetry traces of sessions, named as the GenAI semantic conventions
//! name them, so any OTLP backend shows where each turn's time went.
//!
//! ```text
//! session                               one per session (gen_ai.conversation.id)
//!  └─ invoke_agent                      one per turn: its end reason, heard characters, latency
//!      ├─ speech_to_text                the caller's utterance that the turn answers
//!      ├─ chat {model}                  one per request attempt: retries, fallbacks, hedges
//!      ├─ execute_tool {name}           one per tool call
//!      └─ text_to_speech                one per spoken segment, to the last character heard
//! ```
//!
//! The spans are built from what the session already decides — its bus
//! events, seen by a lossless tap, and the stream events its round task
//! reads — so tracing changes nothing about how a session runs, and a
//! session without a [`Tracing`] pays nothing: no tap, no span, no lock.
//! With one, no token reaches the tap (its filter refuses them; the round
//! task notes the first output), so a token never costs a span, a lock or
//! an allocation; spans open and end at turn, request, tool, utterance and
//! segment boundaries.
//!
//! No span carries a prompt, a transcript, a reply or a key: only names,
//! counts, times and identifiers.
//!
//! By default v1.36's provider attribute `gen_ai.system` is emitted beside
//! the newer `gen_ai.provider.name`; with `OTEL_SEMCONV_STABILITY_OPT_IN`
//! holding `gen_ai_latest_experimental`, only the newer names (see
//! `Tracing::with_latest_conventions`). A span ends in the thread that
//! decided its moment, so the tracer's provider must export from a batch
//! processor (never a synchronous one).
//!
//! Export: any `opentelemetry` tracer; with the `otlp` feature,
//! [`otlp::OtlpTracing::from_env`] builds an OTLP HTTP/protobuf exporter
//! from the standard `OTEL_EXPORTER_OTLP_*` variables.

#[cfg(feature = "otel")]
mod chat;
#[cfg(feature = "otel")]
mod conventions;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "otel")]
mod session_trace;
#[cfg(feature = "otel")]
mod spans;

#[cfg(feature = "otel")]
pub use tracing_config::Tracing;

/// Traces a bus driven by hand, outside a supervisor's sessions (those are
/// traced through [`SessionConfig::with_tracing`](crate::SessionConfig::with_tracing)):
/// the session's span and what its events show — turns, tool calls,
/// utterances, spoken segments (requests' `chat` spans come from a
/// session's own round tasks). The spans end when this is dropped.
#[cfg(feature = "otel")]
pub struct BusTrace {
    trace: std::sync::Arc<session_trace::SessionTrace>,
    bus: crate::bus::SessionBus,
    tap: u64,
}

#[cfg(feature = "otel")]
impl BusTrace {
    /// Starts the session's span and taps `bus`.
    pub fn attach(bus: &crate::bus::SessionBus, tracing: Tracing) -> Self {
        let trace = session_trace::SessionTrace::start(tracing, bus.session(), Vec::new());
        let tap = trace.clone();
        let tap = bus.add_tap(session_trace::traced, move |event| tap.observe(event));
        Self {
            trace,
            bus: bus.clone(),
            tap,
        }
    }
}

#[cfg(feature = "otel")]
impl std::fmt::Debug for BusTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BusTrace")
            .field("session", self.bus.session())
            .finish()
    }
}

#[cfg(feature = "otel")]
impl Drop for BusTrace {
    fn drop(&mut self) {
        self.bus.remove_tap(self.tap);
        self.trace.end();
    }
}

#[cfg(feature = "otel")]
mod tracing_config {
    use std::sync::Arc;

    use opentelemetry::global::BoxedTracer;
    use opentelemetry::trace::{Tracer, TracerProvider};

    /// Where a session's spans go and which convention names they use. One
    /// value serves every session (cloning shares the tracer); give it to
    /// [`SessionConfig::with_tracing`](crate::SessionConfig::with_tracing).
    #[derive(Clone)]
    pub struct Tracing {
        pub(crate) tracer: Arc<BoxedTracer>,
        pub(crate) latest: bool,
        pub(crate) agent_name: Option<Arc<str>>,
    }

    impl std::fmt::Debug for Tracing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Tracing")
                .field("latest_conventions", &self.latest)
                .field("agent_name", &self.agent_name)
                .finish_non_exhaustive()
        }
    }

    impl Tracing {
        /// Spans from `tracer`, with the convention names
        /// `OTEL_SEMCONV_STABILITY_OPT_IN` selects. Its provider must export
        /// through a batch processor: spans end inside the session's event
        /// delivery (a cut ends its turn's spans before `cut()` returns).
        pub fn new<T>(tracer: T) -> Self
        where
            T: Tracer + Send + Sync + 'static,
            T::Span: Send + Sync + 'static,
        {
            Self {
                tracer: Arc::new(BoxedTracer::new(Box::new(tracer))),
                latest: colloquy::llm::latest_genai_conventions(),
                agent_name: None,
            }
        }

        /// Spans from `provider`'s tracer for the `colloquy` scope.
        pub fn from_provider<P>(provider: &P) -> Self
        where
            P: TracerProvider,
            P::Tracer: Send + Sync + 'static,
            <P::Tracer as Tracer>::Span: Send + Sync + 'static,
        {
            Self::new(provider.tracer("colloquy"))
        }

        /// Spans from the process's global tracer provider
        /// (`opentelemetry::global`).
        pub fn global() -> Self {
            Self::new(opentelemetry::global::tracer("colloquy"))
        }

        /// The newer GenAI names only (`true`), or the v1.36 names beside
        /// them (`false`), whatever the environment says.
        pub fn with_latest_conventions(mut self, latest: bool) -> Self {
            self.latest = latest;
            self
        }

        /// The agent's name (`gen_ai.agent.name`, and the `invoke_agent`
        /// span's name suffix).
        pub fn with_agent_name(mut self, name: impl Into<Arc<str>>) -> Self {
            self.agent_name = Some(name.into());
            self
        }

        /// Whether only the newer GenAI names are emitted.
        pub fn latest_conventions(&self) -> bool {
            self.latest
        }
    }
}

/// A session's tracing, kept by its core: nothing without the `otel`
/// feature or without a [`Tracing`].
#[derive(Default)]
pub(crate) struct SessionTelemetry {
    #[cfg(feature = "otel")]
    trace: std::sync::OnceLock<std::sync::Arc<session_trace::SessionTrace>>,
}

impl SessionTelemetry {
    /// Starts the session's span and taps its bus.
    #[cfg(feature = "otel")]
    pub(crate) fn attach(
        &self,
        tracing: Tracing,
        bus: &crate::bus::SessionBus,
        providers: Vec<colloquy::llm::ProviderStatus>,
    ) {
        let trace = session_trace::SessionTrace::start(tracing, bus.session(), providers);
        let tap = trace.clone();
        bus.add_tap(session_trace::traced, move |event| tap.observe(event));
        let _ = self.trace.set(trace);
    }

    /// The spans of one round's requests for `model`.
    pub(crate) fn round(&self, turn: crate::ids::TurnId, round: u32, model: &str) -> RoundSpans {
        #[cfg(feature = "otel")]
        {
            let trace = self.trace.get().cloned();
            let model = if trace.is_some() {
                model.into()
            } else {
                std::sync::Arc::from("")
            };
            RoundSpans {
                trace,
                turn,
                round,
                model,
                first_chunk: true,
                serving: None,
            }
        }
        #[cfg(not(feature = "otel"))]
        {
            let _ = (turn, round, model);
            RoundSpans {}
        }
    }

    /// The session stopped: every open span ends (`session_closed`).
    pub(crate) fn end(&self) {
        #[cfg(feature = "otel")]
        if let Some(trace) = self.trace.get() {
            trace.end();
        }
    }
}

/// What one round's task tells the trace about its requests, beside the bus
/// events it publishes: a no-op without tracing.
pub(crate) struct RoundSpans {
    #[cfg(feature = "otel")]
    trace: Option<std::sync::Arc<session_trace::SessionTrace>>,
    #[cfg(feature = "otel")]
    turn: crate::ids::TurnId,
    #[cfg(feature = "otel")]
    round: u32,
    #[cfg(feature = "otel")]
    model: std::sync::Arc<str>,
    #[cfg(feature = "otel")]
    first_chunk: bool,
    /// The chain's provider serving the round, once the stream said.
    #[cfg(feature = "otel")]
    serving: Option<usize>,
}

#[cfg(feature = "otel")]
impl RoundSpans {
    fn with(&self, f: impl FnOnce(&session_trace::SessionTrace)) {
        if let Some(trace) = &self.trace {
            f(trace);
        }
    }

    /// The round's first request is about to be sent.
    pub(crate) fn started(&self) {
        self.with(|t| t.round_started(self.turn, self.round, &self.model));
    }

    /// The model produced output (text, reasoning, a call): the first one
    /// is the time to first chunk. One branch per token after that.
    #[inline]
    pub(crate) fn output(&mut self) {
        if self.first_chunk {
            self.first_chunk = false;
            self.with(|t| t.first_chunk(self.turn, self.serving));
        }
    }

    /// The provider's request id, response id and model.
    pub(crate) fn metadata(
        &self,
        request_id: Option<&str>,
        response_id: Option<&str>,
        model: Option<&str>,
    ) {
        self.with(|t| t.metadata(self.turn, self.serving, request_id, response_id, model));
    }

    /// Another request of the round (chain index `index`) is about to go.
    pub(crate) fn request_started(&self, index: usize) {
        self.with(|t| t.request_started(self.turn, index));
    }

    /// A chain's provider serves from here on: its first output is next.
    pub(crate) fn selected(&mut self, choice: &colloquy::llm::ProviderChoice) {
        self.serving = Some(choice.index);
        self.first_chunk = true;
        self.with(|t| t.selected(self.turn, choice));
    }

    /// A chain's provider was dropped for the round.
    pub(crate) fn provider_failed(&self, failure: &colloquy::llm::ProviderFailure) {
        self.with(|t| t.provider_failed(self.turn, failure));
    }

    /// The serving request's usage.
    pub(crate) fn usage(&self, usage: &colloquy::llm::Usage) {
        self.with(|t| t.request_usage(self.turn, self.serving, usage));
    }

    /// The request failed before output and is sent again.
    pub(crate) fn retrying(&mut self, kind: &'static str, usage: Option<&colloquy::llm::Usage>) {
        self.first_chunk = true;
        self.with(|t| t.retrying(self.turn, kind, usage));
    }

    /// The stream ended with `reason`.
    pub(crate) fn finished(&self, reason: Option<&colloquy::llm::FinishReason>) {
        self.with(|t| t.finished(self.turn, self.serving, reason));
    }

    /// The stream failed with `error`.
    pub(crate) fn failed(&self, error: &colloquy::llm::LlmError) {
        self.with(|t| t.failed(self.turn, error.kind()));
    }
}

#[cfg(not(feature = "otel"))]
impl RoundSpans {
    #[inline]
    pub(crate) fn started(&self) {}
    #[inline]
    pub(crate) fn output(&mut self) {}
    #[inline]
    pub(crate) fn metadata(
        &self,
        _request_id: Option<&str>,
        _response_id: Option<&str>,
        _model: Option<&str>,
    ) {
    }
    #[inline]
    pub(crate) fn request_started(&self, _index: usize) {}
    #[inline]
    pub(crate) fn selected(&mut self, _choice: &colloquy::llm::ProviderChoice) {}
    #[inline]
    pub(crate) fn provider_failed(&self, _failure: &colloquy::llm::ProviderFailure) {}
    #[inline]
    pub(crate) fn usage(&self, _usage: &colloquy::llm::Usage) {}
    #[inline]
    pub(crate) fn retrying(&mut self, _kind: &'static str, _usage: Option<&colloquy::llm::Usage>) {}
    #[inline]
    pub(crate) fn finished(&self, _reason: Option<&colloquy::llm::FinishReason>) {}
    #[inline]
    pub(crate) fn failed(&self, _error: &colloquy::llm::LlmError) {}
}
