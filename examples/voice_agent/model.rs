//! The agent's model and tool: the provider the flags and the environment
//! name, else an offline demo model (a local scripted server); the
//! `get_weather` tool.

use std::time::Duration;

use colloquy::llm::{ChatClient, ClientConfig, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::{Tool, ToolError, ToolRegistry};
use serde_json::json;

use crate::common::{Env, ProviderFlags};

/// A local OpenAI-compatible server with scripted replies: 300 ms to the first
/// token, then a word every 45 ms, and a `get_weather` tool call.
pub(crate) async fn offline_demo_model() -> std::io::Result<MockServer> {
    const TTFT: Duration = Duration::from_millis(300);
    const GAP: Duration = Duration::from_millis(45);
    pub(crate) fn paced(text: &str) -> MockResponse {
        let mut r = MockResponse::event_stream().delay(TTFT).event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ));
        for (i, word) in text.split_inclusive(' ').enumerate() {
            if i > 0 {
                r = r.delay(GAP);
            }
            r = r.event(&sse_chunk(json!({"content": word}), None));
        }
        r
    }
    pub(crate) fn usage(text: &str) -> u64 {
        text.split_whitespace().count() as u64 + 2
    }
    pub(crate) fn say(text: &str, prompt_tokens: u64) -> MockResponse {
        paced(text).finish("stop", prompt_tokens, usage(text))
    }
    MockServer::start(move |req| {
        let last = req.last_message();
        let said = last["content"].as_str().unwrap_or("").to_lowercase();
        let prompt = 90 + req.body.len() as u64 / 5;
        if last["role"] == "tool" {
            return say(
                "It's 18 degrees and sunny in Paris right now, with a light breeze from the west. \
                 It's a perfect afternoon for a walk along the Seine, and the evening should stay dry and mild.",
                prompt,
            );
        }
        if said.contains("weather") && !said.contains("tomorrow") {
            let text = "Let me check the weather in Paris. ";
            let call = json!({"tool_calls": [{"index": 0, "id": "call_weather_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
            return paced(text)
                .event(&sse_chunk(call, None))
                .finish("tool_calls", prompt, usage(text) + 12);
        }
        if said.contains("tomorrow") {
            return say(
                "Tomorrow will be cloudier, around 15 degrees, with light rain in the afternoon.",
                prompt,
            );
        }
        if said.contains("capital") {
            let text = if said.contains("italy") {
                "The capital of Italy is Rome."
            } else if said.contains("spain") {
                "The capital of Spain is Madrid."
            } else if said.contains("germany") {
                "The capital of Germany is Berlin."
            } else {
                "The capital of France is Paris."
            };
            return say(text, prompt);
        }
        if said.contains("paris") {
            return say(
                "Paris is the capital of France, on the river Seine. It is known for the Eiffel Tower, \
                 the Louvre and its cafés, and about two million people live in the city itself.",
                prompt,
            );
        }
        if said.contains("bye") {
            return say("Goodbye, have a lovely day!", prompt);
        }
        if said.contains("thank") {
            return say("You're welcome! Is there anything else I can do for you?", prompt);
        }
        say(
            "I can tell you about the weather, or about a city. What would you like to know?",
            prompt,
        )
    })
    .await
}

pub(crate) struct Model {
    pub(crate) client: ChatClient,
    pub(crate) model: String,
    pub(crate) label: String,
    pub(crate) _demo: Option<MockServer>,
}

pub(crate) async fn choose_model(
    flags: &ProviderFlags,
    model: Option<String>,
) -> Result<Model, Box<dyn std::error::Error>> {
    let config = ClientConfig {
        first_token_timeout: Some(Duration::from_secs(15)),
        ..ClientConfig::default()
    };
    let model = model
        .or_else(|| std::env::var("COLLOQUY_MODEL").ok())
        .unwrap_or_else(|| "gpt-4o-mini".into());
    let provider = flags
        .resolve(&model, Env::Read)?
        .map(|r| (r.provider, r.label));
    Ok(match provider {
        Some((p, label)) => Model {
            client: ChatClient::with_config(p, config)?,
            model,
            label,
            _demo: None,
        },
        None => {
            let server = offline_demo_model().await?;
            let client =
                ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), config)?;
            Model {
                client,
                model: "offline-demo".into(),
                label: format!(
                    "OFFLINE DEMO MODEL (scripted replies, 300 ms to the first token, from a local server at {})",
                    server.base_url()
                ),
                _demo: Some(server),
            }
        }
    })
}

pub(crate) fn weather_tool() -> ToolRegistry {
    ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::new(
                "get_weather",
                "Current weather for a city.",
                json!({"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]}),
            ),
            |args| async move {
                let city = args["city"].as_str().ok_or(ToolError::new("city is required"))?.to_string();
                tokio::time::sleep(Duration::from_millis(300)).await; // a real API call
                Ok(json!({"city": city, "temp_c": 18, "sky": "sunny", "wind": "light, west"}).to_string())
            },
        ))
        .with_timeout(Duration::from_secs(5))
}
