//! The serializable settings of a placed session.

use colloquy::llm::{LlmOptions, ReasoningEffort, Verbosity};
use colloquy::tools::ToolChoice;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use std::time::Duration;

use crate::cluster::wire::EventClass;
use crate::llm_actor::{AgentSettings, InterruptionPolicy, Preemptive};
use crate::turn_taking::{Backchannels, InterruptionMode};

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

/// How the user's voice interrupts the agent (mirrors [`InterruptionMode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SpecMode {
    /// Any voice activity cuts the reply at once.
    Immediate,
    /// Speech pauses the reply; what the user says confirms a cut or resumes it.
    Confirmed,
    /// Voice activity never interrupts.
    Off,
}

/// When the user's voice interrupts the agent (mirrors [`InterruptionPolicy`];
/// durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecInterruption {
    /// `immediate`, `confirmed` or `off`.
    pub mode: SpecMode,
    /// Cancel the turn in flight when a new user message arrives.
    pub cancel_on_user_message: bool,
    /// Confirmed mode: speech must last this long before the agent pauses.
    pub min_pause_ms: u64,
    /// Confirmed mode: words (not backchannels) of an interim that confirm a cut.
    pub min_words: usize,
    /// Confirmed mode: after this much speech one such word confirms.
    pub min_confirm_speech_ms: u64,
    /// Confirmed mode: the agent resumes this long after the speech ended with
    /// no transcript pending.
    pub resume_timeout_ms: u64,
    /// Backchannel phrases; `None` keeps the English ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backchannels: Option<Vec<String>>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

impl Default for SpecInterruption {
    fn default() -> Self {
        let p = InterruptionPolicy::default();
        // Wildcard: modes added later travel as the default.
        #[allow(unreachable_patterns)]
        let mode = match p.mode {
            InterruptionMode::Immediate => SpecMode::Immediate,
            InterruptionMode::Off => SpecMode::Off,
            _ => SpecMode::Confirmed,
        };
        Self {
            mode,
            cancel_on_user_message: p.cancel_on_user_message,
            min_pause_ms: ms(p.min_pause),
            min_words: p.min_words,
            min_confirm_speech_ms: ms(p.min_confirm_speech),
            resume_timeout_ms: ms(p.resume_timeout),
            backchannels: None,
        }
    }
}

impl SpecInterruption {
    /// The policy this describes.
    pub fn policy(&self) -> InterruptionPolicy {
        let defaults = InterruptionPolicy::default();
        let backchannels = match &self.backchannels {
            Some(phrases) => Backchannels::new(phrases),
            None => defaults.backchannels.clone(),
        };
        // `..defaults` keeps fields added to the policy later.
        #[allow(clippy::needless_update)]
        InterruptionPolicy {
            mode: match self.mode {
                SpecMode::Immediate => InterruptionMode::Immediate,
                SpecMode::Confirmed => InterruptionMode::Confirmed,
                SpecMode::Off => InterruptionMode::Off,
            },
            cancel_on_user_message: self.cancel_on_user_message,
            min_pause: Duration::from_millis(self.min_pause_ms),
            min_words: self.min_words,
            min_confirm_speech: Duration::from_millis(self.min_confirm_speech_ms),
            resume_timeout: Duration::from_millis(self.resume_timeout_ms),
            backchannels,
            ..defaults
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
    /// Preemptive generation on interim transcripts, with this debounce in
    /// milliseconds (`null`: off).
    pub preemptive_debounce_ms: Option<u64>,
    /// The event classes the owner publishes (`null`: all); `lifecycle` is
    /// always published. An unpublished class costs the worker nothing: a
    /// TTS-only deployment lists `["speech"]` and no token is encoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_classes: Option<Vec<EventClass>>,
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
            preemptive_debounce_ms: None,
            event_classes: None,
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

    /// This spec with a JSON merge patch (RFC 7386) applied: a member of the
    /// patch replaces the spec's (objects merge member by member), a `null`
    /// member resets it to its default. What `update_settings` sends.
    ///
    /// ```
    /// use colloquy_actors::cluster::SessionSpec;
    /// let spec = SessionSpec::new("m").with_instructions("Be brief.");
    /// let next = spec
    ///     .patched(&serde_json::json!({"instructions": "Be terse.", "options": {"temperature": 0.1}}))
    ///     .unwrap();
    /// assert_eq!(next.instructions.as_deref(), Some("Be terse."));
    /// assert_eq!((next.model, next.options.temperature), (spec.model, Some(0.1)));
    /// ```
    pub fn patched(&self, patch: &Value) -> Result<SessionSpec, serde_json::Error> {
        let mut v = serde_json::to_value(self)?;
        merge_patch(&mut v, patch);
        serde_json::from_value(v)
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
        settings.interruption = self.interruption.policy();
        settings.preemptive = self.preemptive_debounce_ms.map(|ms| Preemptive {
            debounce: Duration::from_millis(ms),
        });
        settings
    }
}

/// RFC 7386: `patch` merged into `target`.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in members {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
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
        spec.interruption.mode = SpecMode::Immediate;
        spec.interruption.backchannels = Some(vec!["mhm".into()]);
        spec.max_context_items = None;
        spec.preemptive_debounce_ms = Some(120);
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(json["options"]["tool_choice"]["function"], "get_weather");
        let back: SessionSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, spec);
        let settings = back.agent_settings("default");
        assert_eq!(settings.options.model, "m");
        assert_eq!(settings.options.temperature, Some(0.2));
        assert_eq!(settings.instructions.as_deref(), Some("Be brief."));
        assert!(!settings.interruption.cancel_on_user_message);
        assert_eq!(settings.interruption.mode, InterruptionMode::Immediate);
        assert_eq!(
            settings.interruption.backchannels,
            Backchannels::new(["mhm"])
        );
        assert_eq!(
            settings.preemptive.map(|p| p.debounce.as_millis()),
            Some(120)
        );
        assert_eq!(json["interruption"]["mode"], "immediate");
        assert_eq!(settings.max_context_items, None);
        // An empty object is the default spec on the worker's model.
        let empty: SessionSpec = serde_json::from_str("{}").unwrap();
        let defaults = empty.agent_settings("w");
        assert_eq!(defaults.options.model, "w");
        assert_eq!(defaults.interruption, InterruptionPolicy::default());
        assert_eq!(empty.max_context_items, Some(200));
    }
}
