//! Generation settings: everything the reference plugin's constructor takes
//! that shapes the request body (credentials live in the client config).

use crate::tools::{ToolChoice, ToolDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::structured::StructuredOutput;

/// `reasoning_effort` for reasoning models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ReasoningEffort {
    /// No reasoning (gpt-5.1 and later).
    None,
    /// Minimal reasoning.
    Minimal,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
}

impl ReasoningEffort {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasoningEffort::None => "none",
            ReasoningEffort::Minimal => "minimal",
            ReasoningEffort::Low => "low",
            ReasoningEffort::Medium => "medium",
            ReasoningEffort::High => "high",
        }
    }

    /// Parses a wire value.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "none" => Self::None,
            "minimal" => Self::Minimal,
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }
}

/// Top-level `verbosity` for reasoning models.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verbosity {
    /// Short answers.
    Low,
    /// Default.
    Medium,
    /// Long answers.
    High,
}

impl Verbosity {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            Verbosity::Low => "low",
            Verbosity::Medium => "medium",
            Verbosity::High => "high",
        }
    }

    /// Parses a wire value.
    pub fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            _ => return None,
        })
    }
}

/// Model and sampling settings for a request; changeable between turns.
/// Its `Debug` hides the values of `extra_headers` and `extra_query` (where
/// gateway keys go).
#[derive(Clone, PartialEq)]
pub struct LlmOptions {
    /// Model (for Azure, the model family; the deployment is in the URL).
    pub model: String,
    /// Sampling temperature (default 0.7, as the reference). Dropped for reasoning models.
    pub temperature: Option<f64>,
    /// Nucleus sampling. Dropped for reasoning models.
    pub top_p: Option<f64>,
    /// Frequency penalty. Dropped for reasoning models.
    pub frequency_penalty: Option<f64>,
    /// Presence penalty. Dropped for reasoning models.
    pub presence_penalty: Option<f64>,
    /// Seed for deterministic sampling. Dropped for reasoning models.
    pub seed: Option<i64>,
    /// `max_completion_tokens`.
    pub max_completion_tokens: Option<u32>,
    /// Tools the model may call.
    pub tools: Vec<ToolDefinition>,
    /// `tool_choice`, sent only when tools are sent.
    pub tool_choice: ToolChoice,
    /// `parallel_tool_calls`, sent only when tools are sent.
    pub parallel_tool_calls: Option<bool>,
    /// `reasoning_effort`, sent for reasoning models.
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `verbosity`, sent (top-level) for reasoning models.
    pub verbosity: Option<Verbosity>,
    /// Forces reasoning-model handling on or off; `None` decides by the model
    /// name (prefixes o1, o3, o4, gpt-5).
    pub reasoning_model: Option<bool>,
    /// Structured-output mode: a strict JSON schema with one field spoken as it streams.
    pub structured_output: Option<StructuredOutput>,
    /// Extra HTTP headers for every request.
    pub extra_headers: Vec<(String, String)>,
    /// Extra query parameters for every request.
    pub extra_query: Vec<(String, String)>,
    /// Extra body fields; they override fields colloquy sets.
    pub extra_body: Map<String, Value>,
}

/// Name/value pairs with the values hidden, for `Debug`.
pub(crate) struct HiddenValues<'a>(pub(crate) &'a [(String, String)]);

impl std::fmt::Debug for HiddenValues<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| (name, "***")))
            .finish()
    }
}

impl std::fmt::Debug for LlmOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmOptions")
            .field("model", &self.model)
            .field("temperature", &self.temperature)
            .field("top_p", &self.top_p)
            .field("frequency_penalty", &self.frequency_penalty)
            .field("presence_penalty", &self.presence_penalty)
            .field("seed", &self.seed)
            .field("max_completion_tokens", &self.max_completion_tokens)
            .field("tools", &self.tools)
            .field("tool_choice", &self.tool_choice)
            .field("parallel_tool_calls", &self.parallel_tool_calls)
            .field("reasoning_effort", &self.reasoning_effort)
            .field("verbosity", &self.verbosity)
            .field("reasoning_model", &self.reasoning_model)
            .field("structured_output", &self.structured_output)
            .field("extra_headers", &HiddenValues(&self.extra_headers))
            .field("extra_query", &HiddenValues(&self.extra_query))
            .field("extra_body", &self.extra_body)
            .finish()
    }
}

impl LlmOptions {
    /// Defaults of the reference plugin for a model.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            temperature: Some(0.7),
            top_p: None,
            frequency_penalty: None,
            presence_penalty: None,
            seed: None,
            max_completion_tokens: None,
            tools: Vec::new(),
            tool_choice: ToolChoice::Auto,
            parallel_tool_calls: None,
            reasoning_effort: None,
            verbosity: None,
            reasoning_model: None,
            structured_output: None,
            extra_headers: Vec::new(),
            extra_query: Vec::new(),
            extra_body: Map::new(),
        }
    }

    /// Whether reasoning-model rules apply: the override, else the name prefix.
    pub fn is_reasoning_model(&self) -> bool {
        if let Some(forced) = self.reasoning_model {
            return forced;
        }
        let m = self.model.to_ascii_lowercase();
        ["o1", "o3", "o4", "gpt-5"].iter().any(|p| m.starts_with(p))
    }

    /// Adds a tool.
    pub fn with_tool(mut self, tool: ToolDefinition) -> Self {
        self.tools.push(tool);
        self
    }
}

impl Default for LlmOptions {
    fn default() -> Self {
        Self::new("gpt-4o-mini")
    }
}
