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

/// Keys come from files (`--api-key-file`, `--fallback-api-key-file`), so
/// none is on the command line; a primary that echoes its key in a 401 has
/// it shown as `***` in the fallback's `provider_failed` line, and the key
/// is nowhere in the output.
#[tokio::test]
async fn keys_from_files_reach_the_providers_and_never_the_output() {
    const PRIMARY: &str = "sk-chat-cli-file-key-PRIMARY-1";
    const FALLBACK: &str = "chat-cli-file-key-FALLBACK-2";
    let dir = std::env::temp_dir().join(format!("colloquy-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (primary_file, fallback_file) = (dir.join("primary"), dir.join("fallback"));
    std::fs::write(&primary_file, format!("{PRIMARY}\n")).unwrap();
    std::fs::write(&fallback_file, FALLBACK).unwrap();
    let primary = MockServer::start(|req| {
        let said = format!(
            "Invalid API key: {}",
            req.header("authorization").unwrap_or("")
        );
        MockResponse::raw(
            401,
            "application/json",
            json!({"error": {"message": said}}).to_string(),
        )
    })
    .await
    .unwrap();
    let fallback = MockServer::start(|_| MockResponse::text(&["ok"]))
        .await
        .unwrap();
    let out = bin::run(
        "chat",
        &[
            "--base-url",
            &primary.base_url(),
            "--api-key-file",
            primary_file.to_str().unwrap(),
            "--fallback-base-url",
            &fallback.base_url(),
            "--fallback-api-key-file",
            fallback_file.to_str().unwrap(),
            "--model",
            "m",
            "--json",
            "hello",
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        primary.requests()[0].header("authorization"),
        Some(format!("Bearer {PRIMARY}").as_str())
    );
    assert_eq!(
        fallback.requests()[0].header("authorization"),
        Some(format!("Bearer {FALLBACK}").as_str())
    );
    for key in [PRIMARY, FALLBACK] {
        assert!(
            !stdout.contains(key) && !stderr.contains(key),
            "{stdout}\n{stderr}"
        );
    }
    assert!(stdout.contains("provider_failed"), "{stdout}");
}
