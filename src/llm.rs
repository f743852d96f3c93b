//! Streaming chat completions from OpenAI, Azure OpenAI and compatible servers.
//!
//! The pipeline for one request, each stage in its own file; every file
//! imports only from the stages below it:
//!
//! ```text
//! ChatRequest ──wire.rs (checked messages) + request.rs (typed body)──▶ JSON body
//!   parse:     bytes ──read_gap.rs──▶ sse.rs (UTF-8 repair, per-event cap)
//!                    ──▶ eventsource-stream ──chunk.rs──▶ deltas
//!              deltas ──parse.rs (tool_call_assembler.rs / usage.rs /
//!                        structured.rs)──▶ StreamEvent
//!   transport: transport.rs: one provider's POST (pool, credentials, status,
//!              deadlines up to the headers)
//!   attempt:   attempt.rs: one request's events (parse + transport, deadlines
//!              on useful output, retries before the first output)
//!   chain:     chain.rs + chain/: an attempt per provider of a chain —
//!              fallback, hedging, circuit breakers, continuation
//!   client:    stream.rs (ChatStream, the public stream of any of them),
//!              client.rs (ChatClient: one provider's attempt, or the chain)
//! ```
//!
//! [`ChatStream`] is a plain `futures` stream: no task is spawned per request, so
//! dropping it drops the response body and the connection closes at once — the
//! property barge-in is built on.

mod attempt;
pub(crate) mod chain;
mod chunk;
mod client;
mod config;
mod error;
mod event;
mod genai;
mod options;
mod parse;
mod read_gap;
mod request;
mod sse;
mod stream;
mod structured;
mod tool_call_assembler;
mod transport;
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
    StreamLimits,
};
pub use error::{ConfigError, LlmError, ProviderError};
pub use event::{
    FailureReason, FinishReason, ProviderChoice, ProviderFailure, RequestsSent, Retrying,
    SelectionReason, StreamEvent, StreamSummary, ToolCall,
};
pub use genai::latest_genai_conventions;
pub use options::{LlmOptions, ReasoningEffort, Verbosity};
pub use request::{ChatRequest, build_body};
pub use stream::ChatStream;
pub use structured::{JsonFieldStreamer, StructuredOutput};
pub use tool_call_assembler::ToolCallAssembler;
pub use usage::Usage;
pub use wire::{HistoryError, WireMessage, WireToolCall};

#[doc(hidden)]
pub use stream::bench_support;
