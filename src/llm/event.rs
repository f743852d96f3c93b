//! What a chat stream yields.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::usage::Usage;
use serde::{Deserialize, Serialize};

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FinishReason {
    /// Natural end of the answer.
    Stop,
    /// `max_completion_tokens` reached.
    Length,
    /// The model called tools.
    ToolCalls,
    /// The provider's content filter cut the answer.
    ContentFilter,
    /// Any other value, kept verbatim.
    Other(String),
}

impl FinishReason {
    /// Parses a wire value; unknown values are kept as [`FinishReason::Other`].
    pub fn parse(raw: &str) -> Self {
        match raw {
            "stop" => FinishReason::Stop,
            "length" => FinishReason::Length,
            "tool_calls" | "function_call" => FinishReason::ToolCalls,
            "content_filter" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_string()),
        }
    }

    /// `stop`, `length`, `tool_calls`, `content_filter` or `other:<raw>`.
    pub fn label(&self) -> String {
        match self {
            FinishReason::Stop => "stop".into(),
            FinishReason::Length => "length".into(),
            FinishReason::ToolCalls => "tool_calls".into(),
            FinishReason::ContentFilter => "content_filter".into(),
            FinishReason::Other(raw) => format!("other:{raw}"),
        }
    }
}

/// A complete tool call, published as soon as its arguments closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Position of the call in the response (`tool_calls[].index`).
    pub index: u32,
    /// The provider's call id (generated when the provider sent none).
    pub id: String,
    /// Function name.
    pub name: String,
    /// Raw arguments, exactly as streamed (`{}` when the model sent nothing).
    pub arguments: String,
    /// Whether `arguments` parses as JSON. An invalid call is still reported, so
    /// the tool executor can answer the model with an error instead of running
    /// the tool on made-up input.
    pub valid_json: bool,
}

/// How the stream ended, delivered as the last event of a successful stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// The finish reason of choice 0, if the provider sent one.
    pub reason: Option<FinishReason>,
    /// Whether `data: [DONE]` was seen.
    pub saw_done: bool,
    /// HTTP attempts made (1 without retries).
    pub attempts: u32,
}

/// How many HTTP requests a [`ChatStream`](super::ChatStream) has sent,
/// readable from anywhere: a clone stays valid after the stream moved into a
/// task, was cut or dropped.
///
/// A request counts from the moment the client starts sending it (one whose
/// connection is then refused included). Nothing is sent before the stream's
/// first poll, so a stream dropped unpolled reports 0 — its request cost
/// nothing and needs no usage estimate. A replayed body
/// ([`ChatStream::from_sse_bytes`](super::ChatStream::from_sse_bytes))
/// reports 0.
#[derive(Debug, Clone, Default)]
pub struct RequestsSent(Arc<AtomicU32>);

impl RequestsSent {
    /// Requests sent so far: retries and a chain's fallbacks and hedges each count.
    pub fn count(&self) -> u32 {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one more request.
    pub(crate) fn add(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// A request that failed before any output and is sent again.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retrying {
    /// The failed request, numbered from 1 (the first request); the next one
    /// is `attempt + 1`.
    pub attempt: u32,
    /// [`LlmError::kind`](super::LlmError::kind) of its failure.
    pub kind: &'static str,
    /// The failure's message (never holds a credential).
    pub message: String,
    /// The backoff before the next request is sent.
    pub delay: Duration,
    /// The usage the failed request reported before it broke (e.g. a usage
    /// chunk, then a dropped connection); `None` when it reported none (an
    /// error status, a refused connection, a body cut before its usage). The
    /// client does not estimate it. Never part of a later
    /// [`StreamEvent::Usage`].
    pub usage: Option<Usage>,
}

/// One event of a chat stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The provider's request id and model, once known. A retry (only before
    /// any output) sends it again for the new attempt, after its
    /// [`StreamEvent::Retrying`].
    Metadata {
        /// `x-request-id` header or the chunk id.
        request_id: Option<String>,
        /// The completion's own id (the chunks' `id`), when it sent one.
        response_id: Option<String>,
        /// The model that answered.
        model: Option<String>,
    },
    /// Visible answer text (in structured mode: the decoded text of the spoken field).
    Token(String),
    /// Reasoning text (`reasoning_content`, `reasoning`, or thinking parts).
    Reasoning(String),
    /// Refusal text.
    Refusal(String),
    /// A complete tool call.
    ToolCall(ToolCall),
    /// Token usage of the request that produced the answer (the stream's last
    /// request: [`StreamSummary::attempts`] numbers it): at most once per
    /// stream, right before [`StreamEvent::Finished`] or before the error that
    /// ends the stream. A request that was retried reports its own usage in
    /// its [`StreamEvent::Retrying`] instead, and a chain's dropped provider
    /// in its [`StreamEvent::ProviderFailed`]: no usage is delivered twice,
    /// and the cost of a stream is the sum of all three.
    Usage(Usage),
    /// Structured mode: the whole parsed response object.
    Structured(serde_json::Value),
    /// The stream ended successfully. Always the last event.
    Finished(StreamSummary),
    /// A request failed before any output and is sent again (the client's
    /// [`RetryPolicy`](super::RetryPolicy); never in a chain, where the next
    /// provider is the retry). Carries the failed request's usage, if it
    /// reported any. Events of the failed request that were not yet yielded
    /// are dropped; the next request's events follow.
    Retrying(Retrying),
    /// [`ProviderChain`](super::ProviderChain) only: a provider's output starts
    /// being used, sent right before its first output (once per provider that
    /// serves the stream: the primary, or a fallback, or a continuation after a
    /// mid-stream failure, or a hedge that won its race).
    ProviderSelected(ProviderChoice),
    /// [`ProviderChain`](super::ProviderChain) only: a provider was dropped for
    /// this stream — it failed, missed a deadline, finished empty, was skipped
    /// (circuit open) or lost a hedge race — with the usage of its request.
    ProviderFailed(ProviderFailure),
    /// Another request of this stream is about to be sent (the first one is
    /// not announced): a chain's fallback, hedge or continuation. It is
    /// yielded before the request goes out, so a consumer that drops the
    /// stream on seeing it sends nothing, and one that goes on can account
    /// for the request's cost even if it never reports usage (a cut while a
    /// hedge races). Every announced request later settles with a
    /// `ProviderFailed` (its usage) or the stream's `Usage`.
    RequestStarted {
        /// Position of the provider in the chain (0 is the primary).
        index: usize,
    },
}

/// Why a provider of a chain serves a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SelectionReason {
    /// The chain's first provider, tried first.
    Primary,
    /// The provider before it failed, missed a deadline or was skipped.
    Fallback,
    /// Started because the first output was late, and it answered first.
    Hedge,
}

impl SelectionReason {
    /// `primary`, `fallback` or `hedge`.
    pub fn label(self) -> &'static str {
        match self {
            SelectionReason::Primary => "primary",
            SelectionReason::Fallback => "fallback",
            SelectionReason::Hedge => "hedge",
        }
    }
}

/// A provider of a chain whose output starts being used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderChoice {
    /// Position of the provider in the chain (0 is the primary).
    pub index: usize,
    /// The provider's label (metrics, logs).
    pub label: Arc<str>,
    /// The provider's base URL (no credentials).
    pub base_url: Arc<str>,
    /// Why it serves.
    pub reason: SelectionReason,
    /// It continues a reply another provider started: only its new text is
    /// published.
    pub continuation: bool,
}

/// Why a provider of a chain was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureReason {
    /// Its request failed: an error, a missed deadline, an empty completion.
    Error {
        /// [`LlmError::kind`](super::LlmError::kind): `first_token_timeout`,
        /// `output_gap_timeout`, `empty_completion`, `http`, `connection`…
        kind: &'static str,
        /// The error's message (never holds a credential).
        message: String,
    },
    /// Skipped: its circuit breaker is open. No request was sent.
    CircuitOpen,
    /// It lost a hedge race and was cancelled; its usage is hedge cost.
    HedgeLost,
}

impl FailureReason {
    /// The error kind, `circuit_open` or `hedge_lost`.
    pub fn label(&self) -> &'static str {
        match self {
            FailureReason::Error { kind, .. } => kind,
            FailureReason::CircuitOpen => "circuit_open",
            FailureReason::HedgeLost => "hedge_lost",
        }
    }
}

/// A provider of a chain that was dropped for a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderFailure {
    /// Position of the provider in the chain (0 is the primary).
    pub index: usize,
    /// The provider's label (metrics, logs).
    pub label: Arc<str>,
    /// The provider's base URL (no credentials).
    pub base_url: Arc<str>,
    /// Why.
    pub reason: FailureReason,
    /// Some of its output had been published when it failed (what follows
    /// continues that text, or the stream ends).
    pub after_output: bool,
    /// The usage of its request: the provider's figure, or an estimate
    /// (marked) when it never reported one. `None` when no request was sent.
    /// This usage is never part of the stream's [`StreamEvent::Usage`].
    pub usage: Option<Usage>,
}

impl ProviderFailure {
    /// Whether `usage` is the cost of a cancelled hedge.
    pub fn is_hedge_cost(&self) -> bool {
        self.reason == FailureReason::HedgeLost
    }
}
