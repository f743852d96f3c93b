//! A failed request is reported as a failure by every example: its message on
//! the output (text and `--json`), never called a cut, and exit code 1 —
//! against a local server answering HTTP 401 (OpenAI's wrong-key body) and a
//! port nothing listens on (connection refused).
//!
//! `cargo test` builds the examples before running tests; these tests run the
//! built binaries against 127.0.0.1 only.

#[path = "support/bin.rs"]
mod bin;

use std::path::PathBuf;

use bin::{INVALID_KEY_BODY, refused_base_url, run, texts};
use colloquy::mock::{MockResponse, MockServer};
use serde_json::Value;

async fn invalid_key_server() -> MockServer {
    MockServer::start(|_| MockResponse::raw(401, "application/json", INVALID_KEY_BODY))
        .await
        .expect("server starts")
}

/// One user turn, then the script is over.
/// A one-turn scenario in a file of its own (`name`): tests run in
/// parallel, and one writing a shared file while another reads it made the
/// reader see it empty.
fn one_turn_scenario(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("failures_cli_{name}_{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"{"events": [{"at_ms": 0, "speech_started": true},
                       {"at_ms": 50, "final": "Hello there."},
                       {"at_ms": 60, "speech_ended": true}]}"#,
    )
    .expect("scenario written");
    path
}

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn voice_agent_prints_an_http_401_as_a_failure_and_exits_1() {
    let server = invalid_key_server().await;
    let url = server.base_url();
    let scenario = one_turn_scenario("http_401");
    let scenario = scenario.to_str().unwrap();

    let out = run("voice_agent", &["--base-url", &url, "--scenario", scenario]).await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    assert!(
        stdout.contains("generation failed") && stdout.contains("Incorrect API key provided"),
        "the turn's failure and its message on the timeline: {stdout}"
    );
    assert!(
        !stdout.contains("cut before") && !stdout.contains("BARGE-IN"),
        "a failure is not a cut: {stdout}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains("HTTP 401"),
        "stderr names the failure: {stderr}"
    );

    let out = run(
        "voice_agent",
        &["--base-url", &url, "--scenario", scenario, "--json"],
    )
    .await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    let lines = json_lines(&stdout);
    let finished = lines
        .iter()
        .find(|l| l["type"] == "turn_finished")
        .unwrap_or_else(|| panic!("a turn_finished line: {stdout}"));
    assert_eq!(finished["reason"], "failed");
    let message = finished["message"].as_str().expect("a message field");
    assert!(
        message.contains("HTTP 401") && message.contains("Incorrect API key provided"),
        "{message}"
    );
    assert!(
        !lines.iter().any(|l| l["type"] == "cut"),
        "a failure is not a cut: {stdout}"
    );
}

#[tokio::test]
async fn voice_agent_prints_a_refused_connection_as_a_failure_and_exits_1() {
    let url = refused_base_url();
    let scenario = one_turn_scenario("refused");
    let out = run(
        "voice_agent",
        &["--base-url", &url, "--scenario", scenario.to_str().unwrap()],
    )
    .await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    assert!(
        stdout.contains("generation failed") && stdout.contains("connection failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("cut before"), "{stdout}");
}

#[tokio::test]
async fn chat_prints_an_http_401_with_its_message_and_exits_1() {
    let server = invalid_key_server().await;
    let url = server.base_url();
    let out = run("chat", &["--base-url", &url, "hello"]).await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    assert!(
        stderr.starts_with("error: HTTP 401: Incorrect API key provided")
            && stderr.contains("(code invalid_api_key)"),
        "{stderr}"
    );
}

#[tokio::test]
async fn loadgen_reports_errors_by_kind_and_exits_1() {
    let server = invalid_key_server().await;
    let url = server.base_url();
    let out = run(
        "loadgen",
        &[
            "--base-url",
            &url,
            "--sessions",
            "2",
            "--turns",
            "1",
            "--json",
        ],
    )
    .await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
    assert_eq!(summary["errors"], 2, "{summary}");
    assert_eq!(
        summary["errors_by_kind"],
        serde_json::json!({"http_401": 2}),
        "{summary}"
    );
    assert!(
        stderr.starts_with("error: ") && stderr.contains("http_401"),
        "stderr names the failures: {stderr}"
    );
}

#[tokio::test]
async fn loadgen_reports_a_refused_connection_by_kind() {
    let url = refused_base_url();
    let out = run(
        "loadgen",
        &[
            "--base-url",
            &url,
            "--sessions",
            "1",
            "--turns",
            "1",
            "--json",
        ],
    )
    .await;
    let (stdout, stderr, code) = texts(&out);
    assert_eq!(code, Some(1), "stdout {stdout}\nstderr {stderr}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON summary");
    assert_eq!(
        summary["errors_by_kind"],
        serde_json::json!({"connection": 1}),
        "{summary}"
    );
}
