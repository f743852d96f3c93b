//! The serializable settings of a placed session.

use colloquy::llm::{LlmOptions, ReasoningEffort, Verbosity};
use colloquy::tools::ToolChoice;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::llm_actor::{AgentSettings, InterruptionPolicy};

/// Sampling and request options of a [`SessionSpec`]; unset fields keep the
/// defaults of [`LlmOptions::new`]. Extra headers and query parameters are not
/// part of a spec (they often carry credentials): configure them on the
/// worker's client.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecOptions {
    /// Sampling temperature.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    /// Frequency penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    /// Presence penalty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Sampling seed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<i64>,
    /// `max_completion_tokens`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_completion_tokens: Option<u32>,
    /// `tool_choice` (`"auto"`, `"required"`, `"none"` or `{"function": NAME}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// `parallel_tool_calls`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// `reasoning_effort` for reasoning models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_effort: Option<ReasoningEffort>,
    /// `verbosity` for reasoning models.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verbosity: Option<Verbosity>,
    /// Forces reasoning-model handling on or off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_model: Option<bool>,
    /// Extra body fields.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub extra_body: Map<String, Value>,
}

/// When the user's voice interrupts the agent (mirrors [`InterruptionPolicy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecInterruption {
    /// Cancel the turn in flight when the user starts speaking.
    pub cancel_on_speech_started: bool,
    /// Cancel the turn in flight when a new user message arrives.
    pub cancel_on_user_message: bool,
}

impl Default for SpecInterruption {
    fn default() -> Self {
        let p = InterruptionPolicy::default();
        Self {
            cancel_on_speech_started: p.cancel_on_speech_started,
            cancel_on_user_message: p.cancel_on_user_message,
        }
    }
}

/// Everything a worker needs to run a session, as JSON: the model, its
/// options, the instructions, the names of the tools (registered on the
/// workers), the interruption settings. Stored with each checkpoint, so the
/// worker that resumes a session runs it the same way.
///
/// ```
/// use colloquy_actors::cluster::SessionSpec;
/// let spec = SessionSpec::new("gpt-4o-mini")
///     .with_instructions("Be brief.")
///     .with_tool("get_weather");
/// let json = serde_json::to_string(&spec).unwrap();
/// assert_eq!(serde_json::from_str::<SessionSpec>(&json).unwrap(), spec);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionSpec {
    /// The model; `None` uses the worker's default model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling and request options.
    pub options: SpecOptions,
    /// The system instructions sent first on every request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Names of tools registered on the workers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Interruption rules.
    pub interruption: SpecInterruption,
    /// Tool rounds per turn (default 4).
    pub max_tool_rounds: u32,
    /// Cap on context items (default 200; `null` keeps all).
    pub max_context_items: Option<usize>,
    /// Run a segmenter (speakable segments for TTS) in the session.
    pub segmenter: bool,
}

impl Default for SessionSpec {
    fn default() -> Self {
        let defaults = AgentSettings::new(LlmOptions::default());
        Self {
            model: None,
            options: SpecOptions::default(),
            instructions: None,
            tools: Vec::new(),
            interruption: SpecInterruption::default(),
            max_tool_rounds: defaults.max_tool_rounds,
            max_context_items: defaults.max_context_items,
            segmenter: false,
        }
    }
}

impl SessionSpec {
    /// A spec for a model with the defaults of [`AgentSettings::new`].
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: Some(model.into()),
            ..Self::default()
        }
    }

    /// Sets the instructions.
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = Some(instructions.into());
        self
    }

    /// Adds a tool by name.
    pub fn with_tool(mut self, name: impl Into<String>) -> Self {
        self.tools.push(name.into());
        self
    }

    /// Asks for a segmenter.
    pub fn with_segmenter(mut self) -> Self {
        self.segmenter = true;
        self
    }

    /// The agent settings this spec describes (tools are added by the worker).
    pub fn agent_settings(&self, default_model: &str) -> AgentSettings {
        let mut options = LlmOptions::new(self.model.as_deref().unwrap_or(default_model));
        let o = &self.options;
        if o.temperature.is_some() {
            options.temperature = o.temperature;
        }
        options.top_p = o.top_p;
        options.frequency_penalty = o.frequency_penalty;
        options.presence_penalty = o.presence_penalty;
        options.seed = o.seed;
        options.max_completion_tokens = o.max_completion_tokens;
        if let Some(choice) = &o.tool_choice {
            options.tool_choice = choice.clone();
        }
        options.parallel_tool_calls = o.parallel_tool_calls;
        options.reasoning_effort = o.reasoning_effort;
        options.verbosity = o.verbosity;
        options.reasoning_model = o.reasoning_model;
        options.extra_body = o.extra_body.clone();
        let mut settings = AgentSettings::new(options);
        settings.instructions = self.instructions.clone();
        settings.max_tool_rounds = self.max_tool_rounds;
        settings.max_context_items = self.max_context_items;
        settings.interruption = InterruptionPolicy {
            cancel_on_speech_started: self.interruption.cancel_on_speech_started,
            cancel_on_user_message: self.interruption.cancel_on_user_message,
        };
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_round_trips_and_maps_onto_settings() {
        let mut spec = SessionSpec::new("m")
            .with_instructions("Be brief.")
            .with_tool("get_weather");
        spec.options.temperature = Some(0.2);
        spec.options.tool_choice = Some(ToolChoice::Function("get_weather".into()));
        spec.interruption.cancel_on_user_message = false;
        spec.max_context_items = None;
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["options"]["tool_choice"]["function"], "get_weather");
        let back: SessionSpec = serde_json::from_value(json).unwrap();
        assert_eq!(back, spec);
        let settings = back.agent_settings("default");
        assert_eq!(settings.options.model, "m");
        assert_eq!(settings.options.temperature, Some(0.2));
        assert_eq!(settings.instructions.as_deref(), Some("Be brief."));
        assert!(!settings.interruption.cancel_on_user_message);
        assert_eq!(settings.max_context_items, None);
        // An empty object is the default spec on the worker's model.
        let empty: SessionSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.agent_settings("w").options.model, "w");
        assert_eq!(empty.max_context_items, Some(200));
    }
}
