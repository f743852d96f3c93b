//! Streaming chat completions from OpenAI, Azure OpenAI and compatible servers.
//!
//! The pipeline for one request, each stage in its own file:
//!
//! ```text
//! ChatRequest ──wire.rs (checked messages) + request.rs──▶ JSON body
//!   JSON body ──client.rs──▶ POST (deadlines; retries before the first event)
//!             (chain.rs: a request per provider of a chain — fallback, hedging,
//!              circuit breakers, continuation — each one such a POST)
//!   bytes ──read_gap.rs──▶ sse.rs (UTF-8 repair, per-event cap)
//!         ──▶ eventsource-stream ──chunk.rs──▶ deltas
//!   deltas ──tool_call_assembler.rs / usage.rs / structured.rs──▶ StreamEvent
//! ```
//!
//! [`ChatStream`] is a plain `futures` stream: no task is spawned per request, so
//! dropping it drops the response body and the connection closes at once — the
//! property barge-in is built on.

mod chain;
mod chunk;
mod client;
mod config;
mod error;
mod event;
mod options;
mod read_gap;
mod request;
mod sse;
mod stream;
mod structured;
mod tool_call_assembler;
mod usage;
mod wire;

pub use chain::{
    AdaptiveHedge, BreakerConfig, BreakerState, DEFAULT_CONTINUATION_INSTRUCTION, Hedging,
    MidStreamFailure, ProviderChain, ProviderSpec, ProviderStatus,
};
pub use client::ChatClient;
pub use config::{
    AzureAuth, AzureConfig, AzureSettings, ClientConfig, DEFAULT_AZURE_API_VERSION,
    DEFAULT_FIRST_OUTPUT_TIMEOUT, DEFAULT_OUTPUT_GAP_TIMEOUT, OpenAiConfig, Provider, RetryPolicy,
};
pub use error::{ConfigError, LlmError, ProviderError};
pub use event::{
    FailureReason, FinishReason, ProviderChoice, ProviderFailure, Retrying, SelectionReason,
    StreamEvent, StreamSummary, ToolCall,
};
pub use options::{LlmOptions, ReasoningEffort, Verbosity};
pub use request::{ChatRequest, build_body};
pub use stream::{ChatStream, StreamLimits};
pub use structured::{JsonFieldStreamer, StructuredOutput};
pub use tool_call_assembler::ToolCallAssembler;
pub use usage::Usage;
pub use wire::{HistoryError, WireMessage, WireToolCall};

#[doc(hidden)]
pub use sse::bench_support;
