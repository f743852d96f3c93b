//! The `chat` example's `--json` contract: one JSON object per line on stdout
//! and nothing else, exit 0 after `finished`, non-zero after `error`.
//!
//! `cargo test` builds the examples before running tests; this test runs the
//! built binary against a local server.

#[path = "support/bin.rs"]
mod bin;

use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use serde_json::{Value, json};

async fn run(args: &[&str]) -> (Vec<Value>, bool) {
    let out = bin::run("chat", args).await;
    let stdout = String::from_utf8(out.stdout).expect("utf-8 stdout");
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    (lines, out.status.success())
}

#[tokio::test]
async fn json_lines_for_text_reasoning_tools_usage_and_finish() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"reasoning_content": "thinking"}), None))
            .event(&sse_chunk(json!({"content": "Hi"}), None))
            .event(&sse_chunk(
                json!({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "lookup", "arguments": "{\"q\": 1}"}}]}),
                None,
            ))
            .finish("tool_calls", 7, 3)
    })
    .await
    .unwrap();
    let url = server.base_url();
    let (lines, ok) = run(&[
        "--base-url",
        &url,
        "--model",
        "m",
        "--tool",
        "lookup",
        "--tool-choice",
        "lookup",
        "--json",
        "hello",
    ])
    .await;
    assert!(ok, "exit 0 after finished");
    assert_eq!(
        lines,
        vec![
            json!({"type": "reasoning", "text": "thinking"}),
            json!({"type": "token", "text": "Hi"}),
            json!({"type": "tool_call", "index": 0, "id": "c1", "name": "lookup", "arguments": "{\"q\": 1}", "valid_json": true}),
            json!({"type": "usage", "prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10, "cached_tokens": null, "reasoning_tokens": null}),
            json!({"type": "finished", "reason": "tool_calls"}),
        ]
    );
    let body = server.requests()[0].json();
    assert_eq!(
        body["tool_choice"],
        json!({"type": "function", "function": {"name": "lookup"}})
    );
    assert_eq!(body["model"], "m");
}

#[tokio::test]
async fn json_error_line_and_failure_exit() {
    let server = MockServer::start(|_| {
        MockResponse::raw(
            429,
            "application/json",
            r#"{"error":{"message":"slow down","type":"rate_limit","code":"rate_limit_exceeded"}}"#,
        )
        .header("retry-after", "2")
    })
    .await
    .unwrap();
    let url = server.base_url();
    let (lines, ok) = run(&["--base-url", &url, "--json", "hello"]).await;
    assert!(!ok, "non-zero exit after error");
    assert_eq!(lines.len(), 1);
    let e = &lines[0];
    assert_eq!(e["type"], "error");
    assert_eq!(e["kind"], "http");
    assert_eq!(e["status"], 429);
    assert_eq!(e["code"], "rate_limit_exceeded");
    assert_eq!(e["retry_after_s"], 2.0);
    assert!(e["message"].as_str().unwrap().contains("slow down"));
}
