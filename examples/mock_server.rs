//! A standalone OpenAI-compatible streaming server on 127.0.0.1, for trying the
//! `chat` example and for driving `loadgen` from a separate process (so the load
//! generator measures only the client side).
//!
//! ```text
//! cargo run --release --example mock_server -- --port 8089 --tokens 40 --gap-ms 20
//! ```
//! Prompts containing "weather" get a tool call first, then a text answer.

use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer};

fn flag<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let port: u16 = flag(&args, "--port", 8089);
    let tokens: usize = flag(&args, "--tokens", 40);
    let gap = Duration::from_millis(flag(&args, "--gap-ms", 20));
    let words: Vec<String> = (0..tokens).map(|i| format!("word{i} ")).collect();
    let server = MockServer::start_with(
        move |req| {
            let body = req.json();
            let last = req.last_message();
            let wants_tool =
                last["role"] == "user" && last["content"].to_string().contains("weather");
            if wants_tool && body.get("tools").is_some() {
                return MockResponse::tool_calls(&[(
                    "call_1",
                    "get_weather",
                    r#"{"city":"Paris"}"#,
                )]);
            }
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            MockResponse::text_paced(&refs, gap)
        },
        false,
        port,
    )
    .await?;
    eprintln!("mock server listening on {}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
