//! The request body: context + options → a typed chat-completions body
//! ([`ChatBody`], serialized straight to bytes; the messages themselves are
//! mapped and checked in [`wire`](super::wire)).
//!
//! Identical to the reference plugin where it is right (grouped parallel calls,
//! `tool` outputs, image parts with detail, reasoning-model rules, tool_choice
//! only with tools, extras merged last) and fixed where it is not: every system
//! message is sent, `verbosity` is the top-level field the API takes, and tool
//! schemas keep their descriptions and defaults.

use serde::Serialize;
use serde_json::{Map, Value};

use super::options::LlmOptions;
use super::wire::{HistoryError, WireMessage};
use crate::context::ChatContext;

/// One request: the conversation, the settings, and per-request body overrides.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The conversation to continue.
    pub context: &'a ChatContext,
    /// Model and sampling settings.
    pub options: &'a LlmOptions,
    /// Body fields that override everything else for this request only.
    pub overrides: Option<&'a Map<String, Value>>,
}

impl<'a> ChatRequest<'a> {
    /// A request with no per-request overrides.
    pub fn new(context: &'a ChatContext, options: &'a LlmOptions) -> Self {
        Self {
            context,
            options,
            overrides: None,
        }
    }

    /// Adds per-request body overrides (like the reference's `**kwargs`).
    pub fn with_overrides(mut self, overrides: &'a Map<String, Value>) -> Self {
        self.overrides = Some(overrides);
        self
    }
}

/// Builds the JSON body of a streamed chat-completions request.
///
/// Fails when the history's calls and outputs do not pair up (see
/// [`WireMessage::from_context`]): such a history never reaches the wire.
pub fn build_body(request: &ChatRequest<'_>) -> Result<Value, HistoryError> {
    ChatBody::new(request).map(|body| body.to_value())
}

/// `stream_options`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct StreamOptions {
    include_usage: bool,
}

/// The body of a streamed chat-completions request, field for field as the
/// wire names it. Every field is optional so that an extra (options'
/// `extra_body`, then the request's overrides, merged last) can replace it:
/// a field an extra names is left out and the extra is sent instead.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ChatBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<WireMessage<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<StreamOptions>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_effort: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    verbosity: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<Vec<Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_choice: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parallel_tool_calls: Option<bool>,
    /// Extras, sent last.
    #[serde(flatten)]
    extra: Map<String, Value>,
}

impl<'a> ChatBody<'a> {
    /// The body of `request`: reasoning-model rules, tools only with their
    /// choice, extras last.
    pub(crate) fn new(request: &ChatRequest<'a>) -> Result<Self, HistoryError> {
        let o = request.options;
        let reasoning = o.is_reasoning_model();
        let mut body = ChatBody {
            model: Some(&o.model),
            messages: Some(WireMessage::from_context(request.context, reasoning)?),
            stream: Some(true),
            stream_options: Some(StreamOptions {
                include_usage: true,
            }),
            max_completion_tokens: o.max_completion_tokens,
            ..ChatBody::default()
        };
        if reasoning {
            body.reasoning_effort = o.reasoning_effort.map(|e| e.as_str());
            body.verbosity = o.verbosity.map(|v| v.as_str());
        } else {
            body.temperature = o.temperature;
            body.top_p = o.top_p;
            body.frequency_penalty = o.frequency_penalty;
            body.presence_penalty = o.presence_penalty;
            body.seed = o.seed;
        }
        body.response_format = o.structured_output.as_ref().map(|s| s.response_format());
        if !o.tools.is_empty() {
            body.tools = Some(o.tools.iter().map(|t| t.to_wire()).collect());
            body.tool_choice = Some(o.tool_choice.to_wire());
            body.parallel_tool_calls = o.parallel_tool_calls;
        }
        let overrides = request.overrides.into_iter().flatten();
        for (k, v) in o.extra_body.iter().chain(overrides) {
            body.leave_out(k);
            body.extra.insert(k.clone(), v.clone());
        }
        Ok(body)
    }

    /// Leaves out the typed field named `key` (an extra replaces it).
    fn leave_out(&mut self, key: &str) {
        match key {
            "model" => self.model = None,
            "messages" => self.messages = None,
            "stream" => self.stream = None,
            "stream_options" => self.stream_options = None,
            "max_completion_tokens" => self.max_completion_tokens = None,
            "reasoning_effort" => self.reasoning_effort = None,
            "verbosity" => self.verbosity = None,
            "temperature" => self.temperature = None,
            "top_p" => self.top_p = None,
            "frequency_penalty" => self.frequency_penalty = None,
            "presence_penalty" => self.presence_penalty = None,
            "seed" => self.seed = None,
            "response_format" => self.response_format = None,
            "tools" => self.tools = None,
            "tool_choice" => self.tool_choice = None,
            "parallel_tool_calls" => self.parallel_tool_calls = None,
            _ => {}
        }
    }

    /// The body's bytes.
    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    /// The body as a JSON value (what a chain patches per provider).
    pub(crate) fn to_value(&self) -> Value {
        // Borrowed strings, numbers and JSON values: serializing cannot fail.
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{ChatMessage, ImageContent, ImageDetail, Role};
    use crate::llm::options::{ReasoningEffort, Verbosity};
    use crate::tools::{ToolChoice, ToolDefinition};
    use serde_json::json;

    fn ctx() -> ChatContext {
        let mut c = ChatContext::new();
        c.add_system("first rules");
        c.add_system("second rules");
        c.add_message(ChatMessage::parts(
            Role::User,
            vec![
                "look".into(),
                ImageContent::from_url("https://x/img.png").into(),
                ImageContent::from_url("https://x/b.png")
                    .with_detail(ImageDetail::High)
                    .into(),
            ],
        ));
        c.add_function_call("c1", "a", "{}");
        c.add_function_call("c2", "b", "{\"x\":1}");
        c.add_function_output("c1", "ra", false);
        c.add_function_output("c2", "rb", true);
        c
    }

    #[test]
    fn messages_group_parallel_calls_and_keep_every_system_message() {
        let body = build_body(&ChatRequest::new(&ctx(), &LlmOptions::new("gpt-4o-mini"))).unwrap();
        let msgs = body["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 6);
        assert_eq!(msgs[0], json!({"role":"system","content":"first rules"}));
        assert_eq!(msgs[1], json!({"role":"system","content":"second rules"}));
        assert_eq!(
            msgs[2]["content"],
            json!([{"type":"text","text":"look"},
                   {"type":"image_url","image_url":{"url":"https://x/img.png"}},
                   {"type":"image_url","image_url":{"url":"https://x/b.png","detail":"high"}}])
        );
        assert_eq!(msgs[3]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(msgs[3]["content"], Value::Null);
        assert_eq!(
            msgs[4],
            json!({"role":"tool","tool_call_id":"c1","content":"ra"})
        );
        assert_eq!(body["stream_options"], json!({"include_usage": true}));
        assert_eq!(body["temperature"], json!(0.7));
        assert!(body.get("tools").is_none() && body.get("tool_choice").is_none());
    }

    #[test]
    fn reasoning_models_drop_sampling_and_send_effort_and_verbosity() {
        let mut o = LlmOptions::new("gpt-5-mini");
        o.top_p = Some(0.5);
        o.seed = Some(3);
        o.max_completion_tokens = Some(64);
        o.reasoning_effort = Some(ReasoningEffort::Low);
        o.verbosity = Some(Verbosity::Low);
        let body = build_body(&ChatRequest::new(&ctx(), &o)).unwrap();
        assert_eq!(body["messages"][0]["role"], "developer");
        assert_eq!(body["messages"][1]["role"], "developer");
        for k in ["temperature", "top_p", "seed", "text"] {
            assert!(body.get(k).is_none(), "{k} must not be sent");
        }
        assert_eq!(body["reasoning_effort"], "low");
        assert_eq!(body["verbosity"], "low");
        assert_eq!(body["max_completion_tokens"], 64);
        // The override works both ways.
        o.reasoning_model = Some(false);
        let body = build_body(&ChatRequest::new(&ctx(), &o)).unwrap();
        assert_eq!(body["messages"][0]["role"], "system");
        assert!(body.get("reasoning_effort").is_none());
        let mut custom = LlmOptions::new("my-thinker");
        custom.reasoning_model = Some(true);
        assert!(custom.is_reasoning_model());
    }

    #[test]
    fn tools_choice_parallel_and_extras() {
        let mut o =
            LlmOptions::new("gpt-4o").with_tool(ToolDefinition::free_form("lookup", "Look up"));
        o.tool_choice = ToolChoice::Function("lookup".into());
        o.parallel_tool_calls = Some(false);
        o.extra_body.insert("temperature".into(), json!(0.1));
        o.extra_body.insert("user".into(), json!("u1"));
        let overrides: Map<String, Value> = [("seed".to_string(), json!(9))].into_iter().collect();
        let body = build_body(&ChatRequest::new(&ctx(), &o).with_overrides(&overrides)).unwrap();
        assert_eq!(
            body["tool_choice"],
            json!({"type":"function","function":{"name":"lookup"}})
        );
        assert_eq!(body["parallel_tool_calls"], false);
        assert_eq!(body["temperature"], 0.1);
        assert_eq!(body["user"], "u1");
        assert_eq!(body["seed"], 9);
    }

    #[test]
    fn an_extra_replaces_a_typed_field_once_on_the_wire() {
        let mut o = LlmOptions::new("gpt-4o");
        o.extra_body.insert("temperature".into(), json!(0.1));
        o.extra_body.insert("model".into(), json!("other"));
        let c = ctx();
        let req = ChatRequest::new(&c, &o);
        let text = String::from_utf8(ChatBody::new(&req).unwrap().to_bytes().unwrap()).unwrap();
        assert_eq!(text.matches("\"temperature\"").count(), 1, "{text}");
        assert_eq!(text.matches("\"model\"").count(), 1, "{text}");
        let sent: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(sent, build_body(&req).unwrap());
        assert_eq!(
            (sent["model"].as_str(), sent["temperature"].as_f64()),
            (Some("other"), Some(0.1))
        );
    }
}
