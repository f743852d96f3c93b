//! Typed errors of the LLM client.
//!
//! Everything that can go wrong between the request and the last event has its
//! own variant, so callers decide by kind: retry a rate limit, report an invalid
//! key, cancel a turn whose stream stalled. Messages never contain credentials.

use std::time::Duration;

/// A configuration value is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No API key was given and the environment variable is unset.
    #[error("missing API key: pass one or set {0}")]
    MissingApiKey(&'static str),
    /// Azure needs an endpoint.
    #[error("missing Azure endpoint: pass one or set AZURE_OPENAI_ENDPOINT")]
    MissingAzureEndpoint,
    /// Azure needs an API key or an AD token.
    #[error("missing Azure credentials: set AZURE_OPENAI_API_KEY or AZURE_OPENAI_AD_TOKEN")]
    MissingAzureCredentials,
    /// A URL could not be parsed (shown without user info or query, see
    /// [`display_url`](crate::secret::display_url)).
    #[error("invalid URL {0:?}")]
    InvalidUrl(String),
    /// A header name or value is not valid HTTP.
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    /// The HTTP client could not be built.
    #[error("cannot build HTTP client: {0}")]
    HttpClient(String),
}

/// An error the provider reported, in an HTTP error body or mid-stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProviderError {
    /// The provider's message.
    pub message: String,
    /// The provider's code (`invalid_api_key`, `429`, `tool_use_failed`…), as text.
    pub code: Option<String>,
    /// The provider's error type (`invalid_request_error`…).
    pub kind: Option<String>,
    /// The parameter at fault, when named.
    pub param: Option<String>,
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(code) = &self.code {
            write!(f, " (code {code})")?;
        }
        Ok(())
    }
}

/// Everything that can end a chat stream early.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// Configuration is incomplete or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The history's tool calls and outputs do not pair up; nothing was sent.
    #[error("invalid history: {0}")]
    InvalidHistory(#[from] super::wire::HistoryError),
    /// The request could not be sent or the connection broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The server answered with a non-success status.
    #[error("HTTP {status}: {error}")]
    Http {
        /// HTTP status code.
        status: u16,
        /// What the body said.
        error: Box<ProviderError>,
        /// The `Retry-After` the server asked for.
        retry_after: Option<Duration>,
        /// The provider's request id, for support tickets.
        request_id: Option<String>,
    },
    /// The provider reported an error inside the event stream.
    #[error("provider error mid-stream: {error}")]
    Provider {
        /// What the provider said.
        error: Box<ProviderError>,
        /// A status code the provider put in the error event, if any.
        status: Option<u16>,
    },
    /// No token arrived before the time-to-first-token deadline.
    #[error("no first token within {0:?}")]
    FirstTokenTimeout(Duration),
    /// After the first output, no further output (text, reasoning, refusal or
    /// tool call) arrived within the output-gap deadline; keep-alive comments
    /// and empty chunks do not count.
    #[error("no output for {0:?} after the last output")]
    OutputGapTimeout(Duration),
    /// A provider of a chain finished its completion without any output.
    #[error("the completion finished without any output")]
    EmptyCompletion,
    /// No response headers arrived within the response timeout.
    #[error("no response within {0:?}")]
    ResponseTimeout(Duration),
    /// A non-streamed body (an error body or a JSON completion) was not
    /// complete within the body timeout.
    #[error("response body not complete within {0:?}")]
    BodyTimeout(Duration),
    /// The stream went silent for longer than the read-gap timeout.
    #[error("stream stalled: no data for {0:?}")]
    Stalled(Duration),
    /// The stream ended without `[DONE]` and without a finish reason.
    #[error("stream ended before the completion finished")]
    Incomplete,
    /// One server-sent event exceeded the byte cap.
    #[error("server-sent event exceeds {limit} bytes")]
    EventTooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// The tool-call arguments of one response exceeded the byte cap.
    #[error("tool-call arguments exceed {limit} bytes")]
    ToolArgumentsTooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// A data event was not a chat-completion chunk.
    #[error("malformed chunk: {0}")]
    MalformedChunk(String),
    /// The body was neither an event stream nor a chat completion.
    #[error("unexpected response body: {0}")]
    UnexpectedBody(String),
}

impl LlmError {
    /// Every value [`kind`](Self::kind) returns (what a reader of an error
    /// kind from the wire, e.g. a `provider_failed` event, maps back).
    pub const KINDS: &'static [&'static str] = &[
        "config",
        "invalid_history",
        "connection",
        "http",
        "provider",
        "first_token_timeout",
        "output_gap_timeout",
        "empty_completion",
        "response_timeout",
        "body_timeout",
        "stalled",
        "incomplete",
        "event_too_large",
        "tool_arguments_too_large",
        "malformed_chunk",
        "unexpected_body",
    ];

    /// A short stable name for metrics labels and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::Config(_) => "config",
            LlmError::InvalidHistory(_) => "invalid_history",
            LlmError::Connection(_) => "connection",
            LlmError::Http { .. } => "http",
            LlmError::Provider { .. } => "provider",
            LlmError::FirstTokenTimeout(_) => "first_token_timeout",
            LlmError::OutputGapTimeout(_) => "output_gap_timeout",
            LlmError::EmptyCompletion => "empty_completion",
            LlmError::ResponseTimeout(_) => "response_timeout",
            LlmError::BodyTimeout(_) => "body_timeout",
            LlmError::Stalled(_) => "stalled",
            LlmError::Incomplete => "incomplete",
            LlmError::EventTooLarge { .. } => "event_too_large",
            LlmError::ToolArgumentsTooLarge { .. } => "tool_arguments_too_large",
            LlmError::MalformedChunk(_) => "malformed_chunk",
            LlmError::UnexpectedBody(_) => "unexpected_body",
        }
    }

    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Connection(_)
            | LlmError::FirstTokenTimeout(_)
            | LlmError::OutputGapTimeout(_)
            | LlmError::EmptyCompletion
            | LlmError::ResponseTimeout(_)
            | LlmError::BodyTimeout(_)
            | LlmError::Stalled(_)
            | LlmError::Incomplete => true,
            LlmError::Http { status, .. } => matches!(status, 408 | 409 | 429 | 500..=599),
            _ => false,
        }
    }

    /// HTTP status of the failure, if one applies.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::Http { status, .. } => Some(*status),
            LlmError::Provider { status, .. } => *status,
            _ => None,
        }
    }

    /// The provider's error details, if it sent any.
    pub fn provider_error(&self) -> Option<&ProviderError> {
        match self {
            LlmError::Http { error, .. } | LlmError::Provider { error, .. } => Some(&**error),
            _ => None,
        }
    }

    /// The same error with every message a provider (or the connection) wrote
    /// passed through [`scrub`](crate::secret::scrub): the `known` key
    /// values and anything shaped like a credential become `***`.
    pub(crate) fn scrubbed(self, known: &[&str]) -> Self {
        let s = |text: String| crate::secret::scrub(&text, known);
        let so = |text: Option<String>| text.map(|t| crate::secret::scrub(&t, known));
        let provider = |e: Box<ProviderError>| {
            let e = *e;
            Box::new(ProviderError {
                message: s(e.message),
                code: so(e.code),
                kind: so(e.kind),
                param: so(e.param),
            })
        };
        match self {
            LlmError::Connection(m) => LlmError::Connection(s(m)),
            LlmError::MalformedChunk(m) => LlmError::MalformedChunk(s(m)),
            LlmError::UnexpectedBody(m) => LlmError::UnexpectedBody(s(m)),
            LlmError::Http {
                status,
                error,
                retry_after,
                request_id,
            } => LlmError::Http {
                status,
                error: provider(error),
                retry_after,
                request_id: so(request_id),
            },
            LlmError::Provider { error, status } => LlmError::Provider {
                error: provider(error),
                status,
            },
            other => other,
        }
    }

    /// The delay the server asked for before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Http { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Reads an OpenAI-style error object: `{"error": {...}}` or the object itself.
pub(crate) fn parse_provider_error(value: &serde_json::Value) -> Option<ProviderError> {
    let err = value.get("error").unwrap_or(value);
    if !err.is_object() {
        return err.as_str().map(|s| ProviderError {
            message: s.to_string(),
            ..Default::default()
        });
    }
    let text = |v: Option<&serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let message = text(err.get("message"))
        .or_else(|| text(err.get("msg")))
        .unwrap_or_else(|| err.to_string());
    Some(ProviderError {
        message,
        code: text(err.get("code")),
        kind: text(err.get("type")),
        param: text(err.get("param")),
    })
}
