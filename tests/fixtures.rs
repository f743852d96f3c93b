//! Every captured provider stream in `tests/fixtures/sse`, replayed by a local
//! server whole and again in 1-byte writes, must produce what expected.json says
//! (choice 0): text, reasoning, refusal, tool calls, finish reason, usage, errors
//! and whether `[DONE]` was seen. The error bodies must produce typed HTTP errors.
//! The directory's INDEX.md names each file's provider, source and licence.

use std::collections::BTreeMap;
use std::path::PathBuf;

use colloquy::context::ChatContext;
use colloquy::llm::{
    ChatClient, ChatRequest, LlmError, LlmOptions, OpenAiConfig, StreamEvent, Usage,
};
use colloquy::mock::{MockResponse, MockServer};
use futures_util::StreamExt;
use serde_json::Value;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sse")
}

fn expected() -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(fixture_dir().join("expected.json"))
        .expect("expected.json readable");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

#[derive(Debug, Default)]
struct Collected {
    content: String,
    reasoning: String,
    refusal: String,
    tool_calls: BTreeMap<String, (String, String, String)>,
    finish: Option<Option<String>>,
    saw_done: bool,
    usage: Option<Usage>,
    error: Option<LlmError>,
}

async fn run(server: &MockServer) -> Collected {
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let mut ctx = ChatContext::new();
    ctx.add_user("hi");
    let options = LlmOptions::new("fixture");
    let mut stream = client.stream(ChatRequest::new(&ctx, &options)).unwrap();
    let mut c = Collected::default();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(StreamEvent::Token(t)) => c.content.push_str(&t),
            Ok(StreamEvent::Reasoning(t)) => c.reasoning.push_str(&t),
            Ok(StreamEvent::Refusal(t)) => c.refusal.push_str(&t),
            Ok(StreamEvent::ToolCall(call)) => {
                assert!(
                    call.valid_json,
                    "fixture tool call arguments are valid JSON: {call:?}"
                );
                c.tool_calls
                    .insert(call.index.to_string(), (call.id, call.name, call.arguments));
            }
            Ok(StreamEvent::Usage(u)) => c.usage = Some(u),
            Ok(StreamEvent::Finished(s)) => {
                c.finish = Some(s.reason.map(|r| r.label()));
                c.saw_done = s.saw_done;
            }
            Ok(_) => {}
            Err(e) => c.error = Some(e),
        }
    }
    c
}

fn opt_u64(v: &Value) -> Option<u64> {
    v.as_u64()
}

fn check_sse(name: &str, exp: &Value, got: &Collected) {
    let choice = &exp["choices"]["0"];
    assert_eq!(
        got.content,
        choice["content"].as_str().unwrap(),
        "{name}: content"
    );
    assert_eq!(
        got.reasoning,
        choice["reasoning"].as_str().unwrap(),
        "{name}: reasoning"
    );
    assert_eq!(
        got.refusal,
        choice["refusal"].as_str().unwrap(),
        "{name}: refusal"
    );
    let want_calls: BTreeMap<String, (String, String, String)> = choice["tool_calls"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let s = |f: &str| v[f].as_str().unwrap().to_string();
            (k.clone(), (s("id"), s("name"), s("arguments")))
        })
        .collect();
    assert_eq!(got.tool_calls, want_calls, "{name}: tool calls");

    let usage = if exp["usage_summary"].is_object() {
        let u = &exp["usage_summary"];
        Some((
            opt_u64(&u["prompt"]),
            opt_u64(&u["completion"]),
            opt_u64(&u["total"]),
            opt_u64(&u["cached"]),
            opt_u64(&u["reasoning"]),
        ))
    } else if choice["choice_usage"].is_object() {
        let u = &choice["choice_usage"];
        Some((
            opt_u64(&u["prompt_tokens"]),
            opt_u64(&u["completion_tokens"]),
            opt_u64(&u["total_tokens"]),
            opt_u64(&u["cached_tokens"]),
            None,
        ))
    } else {
        None
    };
    let got_usage = got.usage.map(|u| {
        (
            Some(u.prompt_tokens),
            Some(u.completion_tokens),
            Some(u.total_tokens),
            u.cached_tokens,
            u.reasoning_tokens,
        )
    });
    assert_eq!(got_usage, usage, "{name}: usage");

    let errors = exp["errors"].as_array().unwrap();
    if let Some(want) = errors.first() {
        let err = got
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: expected a provider error"));
        let LlmError::Provider { error, .. } = err else {
            panic!("{name}: expected LlmError::Provider, got {err:?}");
        };
        assert_eq!(
            error.message,
            want["message"].as_str().unwrap(),
            "{name}: error message"
        );
        let want_code = match &want["code"] {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        };
        assert_eq!(error.code, want_code, "{name}: error code");
        assert!(
            got.finish.is_none(),
            "{name}: an errored stream must not also finish"
        );
        return;
    }
    if let Some(e) = &got.error {
        panic!("{name}: unexpected error {e:?}");
    }
    let finish = got
        .finish
        .clone()
        .unwrap_or_else(|| panic!("{name}: no Finished event"));
    assert_eq!(
        finish.as_deref(),
        choice["finish_reason"].as_str(),
        "{name}: finish reason"
    );
    assert_eq!(
        got.saw_done,
        exp["done"].as_bool().unwrap(),
        "{name}: [DONE] seen"
    );
}

fn parse_http(raw: &[u8]) -> (u16, String, Vec<u8>) {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\n\n")
        .or_else(|| text.split_once("\r\n\r\n"))
        .unwrap();
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| "application/json".into());
    (status, content_type, body.as_bytes().to_vec())
}

async fn replay_all(write_size: Option<usize>) {
    let expected = expected();
    let mut sse = 0;
    let mut http = 0;
    for (name, entry) in &expected {
        let path = fixture_dir().join(name);
        let raw = std::fs::read(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        let exp = &entry["expected"];
        if name.ends_with(".sse") {
            let mut response = MockResponse::event_stream().bytes(raw);
            if let Some(n) = write_size {
                response = response.write_size(n);
            }
            let server = MockServer::start(move |_| response.clone()).await.unwrap();
            let got = run(&server).await;
            check_sse(name, exp, &got);
            sse += 1;
        } else {
            let (status, content_type, body) = parse_http(&raw);
            let mut response = MockResponse::raw(status, &content_type, body);
            if let Some(n) = write_size {
                response = response.write_size(n);
            }
            let server = MockServer::start(move |_| response.clone()).await.unwrap();
            let got = run(&server).await;
            let err = got
                .error
                .unwrap_or_else(|| panic!("{name}: expected an HTTP error"));
            let LlmError::Http {
                status: got_status,
                error,
                ..
            } = &err
            else {
                panic!("{name}: expected LlmError::Http, got {err:?}");
            };
            let want_status: u16 = exp["status"]
                .as_str()
                .unwrap()
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(*got_status, want_status, "{name}: status");
            assert_eq!(
                error.message,
                exp["error"]["message"].as_str().unwrap(),
                "{name}: message"
            );
            let want_code = match &exp["error"]["code"] {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            assert_eq!(error.code, want_code, "{name}: code");
            assert!(
                !err.to_string().contains("sk-"),
                "{name}: no secrets in errors"
            );
            http += 1;
        }
    }
    assert_eq!((sse, http), (27, 5), "every fixture was replayed");
}

#[tokio::test]
async fn fixtures_replayed_whole() {
    replay_all(None).await;
}

#[tokio::test]
async fn fixtures_replayed_in_one_byte_writes() {
    replay_all(Some(1)).await;
}

#[test]
fn index_names_every_fixture_with_its_provider_source_and_licence() {
    let expected = expected();
    let index = std::fs::read_to_string(fixture_dir().join("INDEX.md")).expect("INDEX.md readable");
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .expect("fixture directory")
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sse") || n.ends_with(".http"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = expected.keys().cloned().collect();
    assert_eq!(
        on_disk, listed,
        "every capture has an expected result, and no more"
    );
    for (name, e) in &expected {
        let row = index
            .lines()
            .find(|l| l.starts_with(&format!("| `{name}` |")))
            .unwrap_or_else(|| panic!("INDEX.md has a row for {name}"));
        let cells: Vec<&str> = row.split(" | ").collect();
        assert_eq!(cells.len(), 4, "file, provider, source, licence: {row}");
        let repo = e["source"]["repo"].as_str().expect("source.repo");
        assert!(cells[2].starts_with(repo), "{name}: source {repo} in {row}");
        assert!(
            ["Apache-2.0", "MIT", "not verified"]
                .iter()
                .any(|l| cells[3].contains(l)),
            "{name}: a licence (or that it is not verified) in {row}"
        );
    }
}
