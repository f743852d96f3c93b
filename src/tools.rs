//! Tools the model may call: definitions, strict schemas and `tool_choice`.
//!
//! A [`ToolDefinition`] is sent as written: name, description and the full JSON
//! schema, defaults and descriptions included (the reference plugin loses them).
//! With [`ToolDefinition::strict`] the schema goes through [`strict_schema`],
//! the transform OpenAI's strict mode requires.

mod strict;

pub use strict::strict_schema;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A function the model can call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Function name, as the model will call it.
    pub name: String,
    /// What the tool does; the model reads this to decide when to call it.
    pub description: String,
    /// JSON schema of the arguments object.
    pub parameters: Value,
    /// Enables OpenAI's strict mode: the schema is made strict and `strict: true`
    /// is sent, so the model's arguments always match it.
    #[serde(default)]
    pub strict: bool,
}

impl ToolDefinition {
    /// A tool with a description and an arguments schema.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
            strict: false,
        }
    }

    /// A tool that takes any JSON object.
    pub fn free_form(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self::new(
            name,
            description,
            json!({"type": "object", "properties": {}}),
        )
    }

    /// Turns strict mode on or off.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// The `tools[]` entry of a chat-completions request.
    pub fn to_wire(&self) -> Value {
        let mut function = serde_json::Map::new();
        function.insert("name".into(), Value::String(self.name.clone()));
        if !self.description.is_empty() {
            function.insert(
                "description".into(),
                Value::String(self.description.clone()),
            );
        }
        let parameters = if self.strict {
            strict_schema(self.parameters.clone())
        } else {
            self.parameters.clone()
        };
        function.insert("parameters".into(), parameters);
        if self.strict {
            function.insert("strict".into(), Value::Bool(true));
        }
        json!({"type": "function", "function": Value::Object(function)})
    }
}

/// Which tool, if any, the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ToolChoice {
    /// The model decides.
    #[default]
    Auto,
    /// The model must call some tool.
    Required,
    /// The model must not call tools.
    None,
    /// The model must call this function.
    Function(String),
}

impl ToolChoice {
    /// The `tool_choice` value of a request.
    pub fn to_wire(&self) -> Value {
        match self {
            ToolChoice::Auto => json!("auto"),
            ToolChoice::Required => json!("required"),
            ToolChoice::None => json!("none"),
            ToolChoice::Function(name) => json!({"type": "function", "function": {"name": name}}),
        }
    }

    /// Parses `auto`, `required`, `none`, or any other word as a function name.
    pub fn parse(value: &str) -> Self {
        match value {
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            "none" => ToolChoice::None,
            name => ToolChoice::Function(name.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let t = ToolDefinition::new(
            "get_weather",
            "Weather for a city",
            json!({"type":"object","properties":{"city":{"type":"string","default":"Paris","description":"City"}}}),
        );
        assert_eq!(
            t.to_wire(),
            json!({"type":"function","function":{"name":"get_weather","description":"Weather for a city",
                "parameters":{"type":"object","properties":{"city":{"type":"string","default":"Paris","description":"City"}}}}})
        );
        let strict = t.strict(true).to_wire();
        assert_eq!(strict["function"]["strict"], json!(true));
        assert_eq!(
            strict["function"]["parameters"]["additionalProperties"],
            json!(false)
        );
        assert_eq!(
            ToolChoice::parse("lookup").to_wire(),
            json!({"type":"function","function":{"name":"lookup"}})
        );
        assert_eq!(ToolChoice::parse("none").to_wire(), json!("none"));
    }
}
