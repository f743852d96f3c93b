//! The in-process server (when no --base-url is given) and the soak's tool.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::{Tool, ToolRegistry};
use serde_json::json;

use crate::TOOL_TIME;

/// The in-process server: paced 40-word answers; a message asking for the
/// weather gets a tool call first (as the `mock_server` example does).
pub(crate) async fn embedded_server() -> std::io::Result<MockServer> {
    let words: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
    let calls = AtomicU64::new(0);
    MockServer::start_with(
        move |req| {
            let last = req.last_message();
            let wants_tool =
                last["role"] == "user" && last["content"].to_string().contains("weather");
            if wants_tool && req.json().get("tools").is_some() {
                let id = format!("call_{}", calls.fetch_add(1, Ordering::Relaxed));
                return MockResponse::tool_calls(&[(&id, "get_weather", r#"{"city":"Paris"}"#)]);
            }
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            MockResponse::text_paced(&refs, Duration::from_millis(20))
        },
        false,
        0,
    )
    .await
}

/// The soak's tool: a weather lookup that takes a few ms.
pub(crate) fn weather_tool() -> ToolRegistry {
    let definition = ToolDefinition::new(
        "get_weather",
        "Current weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    );
    ToolRegistry::new().with_tool(Tool::new(definition, |args| async move {
        tokio::time::sleep(TOOL_TIME).await;
        Ok(json!({"city": args["city"], "temp_c": 18, "sky": "sunny"}).to_string())
    }))
}
