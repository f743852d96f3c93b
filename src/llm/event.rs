//! What a chat stream yields.

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

/// One event of a chat stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StreamEvent {
    /// The provider's request id and model, once known. A retry (only before
    /// any other event) sends it again for the new attempt.
    Metadata {
        /// `x-request-id` header or the chunk id.
        request_id: Option<String>,
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
    /// Token usage.
    Usage(Usage),
    /// Structured mode: the whole parsed response object.
    Structured(serde_json::Value),
    /// The stream ended successfully. Always the last event.
    Finished(StreamSummary),
}
