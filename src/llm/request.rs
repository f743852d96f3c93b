//! The request body: context + options → chat-completions JSON (the messages
//! themselves are mapped and checked in [`wire`](super::wire)).
//!
//! Identical to the reference plugin where it is right (grouped parallel calls,
//! `tool` outputs, image parts with detail, reasoning-model rules, tool_choice
//! only with tools, extras merged last) and fixed where it is not: every system
//! message is sent, `verbosity` is the top-level field the API takes, and tool
//! schemas keep their descriptions and defaults.

use serde_json::{Map, Value, json};

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
    let o = request.options;
    let reasoning = o.is_reasoning_model();
    let messages = WireMessage::from_context(request.context, reasoning)?;
    let mut body = Map::new();
    body.insert("model".into(), Value::String(o.model.clone()));
    body.insert(
        "messages".into(),
        Value::Array(messages.iter().map(WireMessage::to_json).collect()),
    );
    body.insert("stream".into(), Value::Bool(true));
    body.insert("stream_options".into(), json!({"include_usage": true}));
    if let Some(max) = o.max_completion_tokens {
        body.insert("max_completion_tokens".into(), json!(max));
    }
    if reasoning {
        if let Some(effort) = o.reasoning_effort {
            body.insert("reasoning_effort".into(), json!(effort.as_str()));
        }
        if let Some(verbosity) = o.verbosity {
            body.insert("verbosity".into(), json!(verbosity.as_str()));
        }
    } else {
        let sampling = [
            ("temperature", o.temperature),
            ("top_p", o.top_p),
            ("frequency_penalty", o.frequency_penalty),
            ("presence_penalty", o.presence_penalty),
        ];
        for (key, value) in sampling {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        if let Some(seed) = o.seed {
            body.insert("seed".into(), json!(seed));
        }
    }
    if let Some(structured) = &o.structured_output {
        body.insert("response_format".into(), structured.response_format());
    }
    if !o.tools.is_empty() {
        body.insert(
            "tools".into(),
            Value::Array(o.tools.iter().map(|t| t.to_wire()).collect()),
        );
        body.insert("tool_choice".into(), o.tool_choice.to_wire());
        if let Some(parallel) = o.parallel_tool_calls {
            body.insert("parallel_tool_calls".into(), Value::Bool(parallel));
        }
    }
    for (k, v) in &o.extra_body {
        body.insert(k.clone(), v.clone());
    }
    if let Some(overrides) = request.overrides {
        for (k, v) in overrides {
            body.insert(k.clone(), v.clone());
        }
    }
    Ok(Value::Object(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::{ChatMessage, ImageContent, ImageDetail, Role};
    use crate::llm::options::{ReasoningEffort, Verbosity};
    use crate::tools::{ToolChoice, ToolDefinition};

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
}
