//! The command-line contract of provider resilience: `chat` and `loadgen`
//! accept `--fallback-base-url URL` (repeatable, with `--fallback-model` and
//! `--fallback-api-key` for the last one named), `--ttft-timeout-ms`,
//! `--gap-timeout-ms` and `--hedge-after-ms`; `chat --json` prints `provider`
//! and `provider_failed` lines; `loadgen` reports `ttft_ms{p50,p99,max}`,
//! `fallbacks`, `hedges_won`, `hedge_cost_tokens` and `duplicated_chars`.
//!
//! `cargo test` builds the examples before running tests; these tests run the
//! built binaries against local servers.

#[path = "support/bin.rs"]
mod bin;

use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use serde_json::{Value, json};

async fn run(name: &str, args: &[&str]) -> (String, String, Option<i32>) {
    bin::texts(&bin::run(name, args).await)
}

fn stalled() -> MockResponse {
    MockResponse::event_stream()
        .event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ))
        .stall_with_keep_alives(Duration::from_millis(20))
}

#[tokio::test]
async fn chat_prints_which_provider_served_and_which_failed() {
    let primary = MockServer::start(|_| stalled()).await.unwrap();
    let fallback = MockServer::start(|_| MockResponse::text(&["Hi"]))
        .await
        .unwrap();
    let (p, f) = (primary.base_url(), fallback.base_url());
    // A port nothing listens on: connection refused.
    let dead = bin::refused_base_url();
    let (stdout, stderr, code) = run(
        "chat",
        &[
            "--base-url",
            &p,
            "--model",
            "m",
            "--fallback-base-url",
            &dead,
            "--fallback-base-url",
            &f,
            "--fallback-model",
            "fm",
            "--fallback-api-key",
            "k2",
            "--ttft-timeout-ms",
            "300",
            "--gap-timeout-ms",
            "5000",
            "--json",
            "hello",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(
        lines[0],
        json!({"type": "provider_failed", "index": 0, "reason": "first_token_timeout"})
    );
    assert_eq!(
        lines[1],
        json!({"type": "provider_failed", "index": 1, "reason": "connection"})
    );
    assert_eq!(
        lines[2],
        json!({"type": "provider", "index": 2, "base_url": f, "reason": "fallback"})
    );
    assert_eq!(lines[3], json!({"type": "token", "text": "Hi"}));
    assert_eq!(lines.last().unwrap()["type"], "finished");
    let req = &fallback.requests()[0];
    assert_eq!(req.json()["model"], "fm");
    assert_eq!(req.header("authorization"), Some("Bearer k2"));
    assert!(primary.requests()[0].header("authorization").is_none());

    // Hedging: the slow primary loses to the fallback.
    let (stdout, stderr, code) = run(
        "chat",
        &[
            "--base-url",
            &p,
            "--fallback-base-url",
            &f,
            "--hedge-after-ms",
            "100",
            "--json",
            "hi",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        json!({"type": "provider_failed", "index": 0, "reason": "hedge_lost"})
    );
    assert_eq!(
        lines[1],
        json!({"type": "provider", "index": 1, "base_url": f, "reason": "hedge"})
    );

    // A fallback option needs a fallback before it.
    let (stdout, stderr, code) = run("chat", &["--fallback-model", "x", "hi"]).await;
    assert_eq!(code, Some(2));
    assert!(
        stdout.is_empty() && stderr.contains("--fallback-base-url"),
        "{stderr}"
    );
}

#[tokio::test]
async fn loadgen_reports_fallbacks_hedges_and_duplicated_text() {
    // The primary drops after two words; the fallback continues (restating one).
    let primary = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))
            .tokens(&["one ", "two "])
            .hang_up()
    })
    .await
    .unwrap();
    let fallback = MockServer::start(|_| MockResponse::text(&["two ", "three."]))
        .await
        .unwrap();
    let (p, f) = (primary.base_url(), fallback.base_url());
    let (stdout, stderr, code) = run(
        "loadgen",
        &[
            "--base-url",
            &p,
            "--fallback-base-url",
            &f,
            "--fallback-model",
            "fm",
            "--ttft-timeout-ms",
            "5000",
            "--gap-timeout-ms",
            "5000",
            "--hedge-after-ms",
            "10000",
            "--breaker-failures",
            "0",
            "--sessions",
            "2",
            "--turns",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
    assert_eq!(summary["errors"], 0, "{summary}");
    assert_eq!(summary["turns"], 4);
    assert_eq!(
        summary["fallbacks"], 4,
        "every turn continued on the fallback"
    );
    assert_eq!(summary["hedges_won"], 0);
    assert_eq!(summary["hedge_cost_tokens"], 0);
    assert_eq!(
        summary["duplicated_chars"], 0,
        "the restated word was not published"
    );
    for k in ["p50", "p99", "max"] {
        assert!(summary["ttft_ms"][k].as_f64().is_some(), "{summary}");
    }

    let (stdout, _, code) = run("loadgen", &["--fallback-api-key", "k"]).await;
    assert_eq!(code, Some(2));
    assert!(stdout.is_empty());
}
