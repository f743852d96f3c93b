//! The client against a local server: every request option on the recorded
//! request, Azure URL and headers, error bodies, limits, retries, deadlines and
//! connection close on drop.

use std::time::Duration;

use colloquy::Secret;
use colloquy::context::{ChatContext, ChatMessage, Role};
use colloquy::llm::{
    AzureConfig, AzureSettings, ChatClient, ChatRequest, ClientConfig, LlmError, LlmOptions,
    OpenAiConfig, ReasoningEffort, RetryPolicy, Retrying, StreamEvent, StreamLimits,
    StructuredOutput, Usage, Verbosity,
};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy::tools::{ToolChoice, ToolDefinition};
use futures_util::StreamExt;
use serde_json::json;

fn ctx() -> ChatContext {
    let mut c = ChatContext::new();
    c.add_system("Be brief.");
    c.add_user("Hello");
    c
}

async fn collect(
    client: &ChatClient,
    options: &LlmOptions,
) -> (Vec<StreamEvent>, Option<LlmError>) {
    let c = ctx();
    let mut stream = client.stream(ChatRequest::new(&c, options)).unwrap();
    let mut events = Vec::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(e) => events.push(e),
            Err(e) => return (events, Some(e)),
        }
    }
    (events, None)
}

fn text_of(events: &[StreamEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Token(t) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn fast_config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_retries: 0,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn every_request_option_reaches_the_wire() {
    let server = MockServer::start(|_| MockResponse::text(&["ok"]))
        .await
        .unwrap();
    let mut cfg = OpenAiConfig::compatible(server.base_url());
    cfg.api_key = Some(Secret::new("sk-test-123"));
    cfg.organization = Some("org-1".into());
    cfg.project = Some("proj-1".into());
    let client = ChatClient::new(cfg).unwrap();
    assert!(
        !format!("{client:?}").contains("sk-test-123"),
        "Debug never shows the key"
    );

    let mut o = LlmOptions::new("gpt-4o-mini");
    o.temperature = Some(0.2);
    o.top_p = Some(0.9);
    o.frequency_penalty = Some(0.1);
    o.presence_penalty = Some(0.3);
    o.seed = Some(7);
    o.max_completion_tokens = Some(99);
    o.tools = vec![ToolDefinition::new(
        "get_weather",
        "Weather for a city",
        json!({"type":"object","properties":{"city":{"type":"string","description":"City","default":"Paris"}}}),
    )
    .strict(true)];
    o.tool_choice = ToolChoice::Required;
    o.parallel_tool_calls = Some(true);
    o.extra_headers = vec![("x-trace".into(), "t1".into())];
    o.extra_query = vec![("tenant".into(), "acme".into())];
    o.extra_body.insert("user".into(), json!("caller-7"));
    let (events, err) = collect(&client, &o).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "ok");

    let req = &server.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path(), "/v1/chat/completions");
    assert!(req.target.ends_with("?tenant=acme"));
    assert_eq!(req.header("authorization"), Some("Bearer sk-test-123"));
    assert_eq!(req.header("openai-organization"), Some("org-1"));
    assert_eq!(req.header("openai-project"), Some("proj-1"));
    assert_eq!(req.header("x-trace"), Some("t1"));
    let body = req.json();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({"include_usage": true}));
    assert_eq!(body["temperature"], 0.2);
    assert_eq!(body["top_p"], 0.9);
    assert_eq!(body["frequency_penalty"], 0.1);
    assert_eq!(body["presence_penalty"], 0.3);
    assert_eq!(body["seed"], 7);
    assert_eq!(body["max_completion_tokens"], 99);
    assert_eq!(body["tool_choice"], "required");
    assert_eq!(body["parallel_tool_calls"], true);
    assert_eq!(body["user"], "caller-7");
    let f = &body["tools"][0]["function"];
    assert_eq!(f["strict"], true);
    assert_eq!(f["parameters"]["additionalProperties"], false);
    assert_eq!(f["parameters"]["properties"]["city"]["default"], "Paris");
    assert_eq!(f["parameters"]["properties"]["city"]["description"], "City");
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
}

#[tokio::test]
async fn reasoning_model_request_shape() {
    let server = MockServer::start(|_| MockResponse::text(&["ok"]))
        .await
        .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let mut o = LlmOptions::new("o3-mini");
    o.reasoning_effort = Some(ReasoningEffort::High);
    o.verbosity = Some(Verbosity::Low);
    o.top_p = Some(0.5);
    collect(&client, &o).await;
    let body = server.requests()[0].json();
    assert_eq!(body["messages"][0]["role"], "developer");
    assert_eq!(body["reasoning_effort"], "high");
    assert_eq!(body["verbosity"], "low");
    assert!(
        body.get("temperature").is_none()
            && body.get("top_p").is_none()
            && body.get("text").is_none()
    );
}

#[tokio::test]
async fn azure_url_query_and_key_header() {
    let server = MockServer::start(|_| MockResponse::text(&["az"]))
        .await
        .unwrap();
    let endpoint = format!("http://{}", server.addr());
    let cfg = AzureConfig::resolve(
        "gpt-4o",
        AzureSettings {
            endpoint: Some(endpoint.clone()),
            deployment: Some("prod-4o".into()),
            api_version: Some("2024-10-21".into()),
            api_key: Some(Secret::new("azure-key-1")),
            ..Default::default()
        },
    )
    .unwrap();
    let client = ChatClient::new(cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::new("gpt-4o")).await;
    assert!(err.is_none());
    assert_eq!(text_of(&events), "az");
    let req = &server.requests()[0];
    assert_eq!(
        req.target,
        "/openai/deployments/prod-4o/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(req.header("api-key"), Some("azure-key-1"));
    assert_eq!(req.header("authorization"), None);

    let cfg = AzureConfig::resolve(
        "gpt-4o",
        AzureSettings {
            endpoint: Some(endpoint),
            api_version: Some("2025-01-01".into()),
            ad_token: Some(Secret::new("ad-token-1")),
            ..Default::default()
        },
    )
    .unwrap();
    let client = ChatClient::new(cfg).unwrap();
    collect(&client, &LlmOptions::new("gpt-4o")).await;
    let req = &server.requests()[1];
    assert_eq!(
        req.target,
        "/openai/deployments/gpt-4o/chat/completions?api-version=2025-01-01"
    );
    assert_eq!(req.header("authorization"), Some("Bearer ad-token-1"));
    assert_eq!(req.header("api-key"), None);
}

#[tokio::test]
async fn non_2xx_is_a_typed_error_with_retry_after() {
    let server = MockServer::start(|_| {
        MockResponse::raw(
            429,
            "application/json",
            r#"{"error":{"message":"slow down","type":"rate_limit","code":"rate_limit_exceeded"}}"#,
        )
        .header("retry-after", "3")
    })
    .await
    .unwrap();
    let client =
        ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), fast_config())
            .unwrap();
    let (_, err) = collect(&client, &LlmOptions::default()).await;
    match err {
        Some(LlmError::Http {
            status,
            error,
            retry_after,
            ..
        }) => {
            assert_eq!(status, 429);
            assert_eq!(error.message, "slow down");
            assert_eq!(error.code.as_deref(), Some("rate_limit_exceeded"));
            assert_eq!(error.kind.as_deref(), Some("rate_limit"));
            assert_eq!(retry_after, Some(Duration::from_secs(3)));
        }
        other => panic!("expected Http error, got {other:?}"),
    }
}

#[tokio::test]
async fn retries_before_first_token_then_succeeds() {
    let server = MockServer::scripted(vec![
        MockResponse::error(503, "overloaded"),
        MockResponse::event_stream().event(&sse_chunk(json!({"role":"assistant"}), None)), // EOF: incomplete, no output yet
        MockResponse::text(&["third ", "time"]),
    ])
    .await
    .unwrap();
    let mut cfg = fast_config();
    cfg.retry.max_retries = 3;
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "third time");
    assert_eq!(server.requests().len(), 3);
    match events.last() {
        Some(StreamEvent::Finished(s)) => assert_eq!(s.attempts, 3),
        other => panic!("last event {other:?}"),
    }
}

#[tokio::test]
async fn never_retries_after_text_was_delivered() {
    let server = MockServer::scripted(vec![
        MockResponse::event_stream().event(&sse_chunk(json!({"content":"Hel"}), None)), // then EOF
        MockResponse::text(&["Hello"]),
    ])
    .await
    .unwrap();
    let mut cfg = fast_config();
    cfg.retry.max_retries = 3;
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert_eq!(text_of(&events), "Hel");
    assert!(matches!(err, Some(LlmError::Incomplete)), "{err:?}");
    assert_eq!(server.requests().len(), 1, "no retry once text was yielded");
}

#[tokio::test]
async fn retries_a_stream_that_delivered_only_usage_and_reports_each_usage_once() {
    // The first request reports usage only, then drops: nothing was said, so
    // it is retried; its usage is reported once, as its own, and the answer's
    // request reports its own usage.
    let usage_only = format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "model": "m", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}})
    );
    let server = MockServer::scripted(vec![
        MockResponse::event_stream().event(&usage_only), // then EOF
        MockResponse::text(&["Hello"]),
    ])
    .await
    .unwrap();
    let mut cfg = fast_config();
    cfg.retry.max_retries = 2;
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(server.requests().len(), 2, "retried although usage arrived");
    assert_eq!(text_of(&events), "Hello");
    // Attempt 1's usage, once, on its retry notice; attempt 2's (the answer's,
    // numbered by the summary) once, right before `Finished`.
    let retries: Vec<&Retrying> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Retrying(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(retries.len(), 1, "{events:?}");
    assert_eq!(retries[0].attempt, 1);
    assert_eq!(retries[0].kind, "incomplete");
    assert_eq!(retries[0].usage.map(|u| u.prompt_tokens), Some(10));
    let usages: Vec<&Usage> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Usage(u) => Some(u),
            _ => None,
        })
        .collect();
    assert_eq!(usages.len(), 1, "{events:?}");
    assert_eq!(usages[0].completion_tokens, 1, "the answer's own usage");
    let n = events.len();
    assert!(matches!(events[n - 2], StreamEvent::Usage(_)), "{events:?}");
    assert!(
        matches!(&events[n - 1], StreamEvent::Finished(s) if s.attempts == 2),
        "{events:?}"
    );
    // Each request's metadata, the retry notice between them.
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Metadata { .. } => Some("metadata"),
            StreamEvent::Retrying(_) => Some("retrying"),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, ["metadata", "retrying", "metadata"]);
}

#[tokio::test]
async fn usage_of_a_request_that_fails_for_good_comes_before_its_error() {
    let usage_only = format!(
        "data: {}\n\n",
        json!({"id": "chatcmpl-1", "model": "m", "choices": [],
               "usage": {"prompt_tokens": 10, "completion_tokens": 0, "total_tokens": 10}})
    );
    let server = MockServer::start(move |_| MockResponse::event_stream().event(&usage_only))
        .await
        .unwrap();
    let mut cfg = fast_config();
    cfg.retry.max_retries = 1;
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(matches!(err, Some(LlmError::Incomplete)), "{err:?}");
    assert_eq!(server.requests().len(), 2);
    let usage_events: Vec<(u32, u64)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Retrying(r) => r.usage.map(|u| (r.attempt, u.prompt_tokens)),
            StreamEvent::Usage(u) => Some((2, u.prompt_tokens)),
            _ => None,
        })
        .collect();
    assert_eq!(usage_events, vec![(1, 10), (2, 10)], "{events:?}");
    assert!(matches!(events.last(), Some(StreamEvent::Usage(_))));
}

#[tokio::test]
async fn eof_without_finish_or_done_is_incomplete() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream().event(&sse_chunk(json!({"content":"partial"}), None))
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let (_, err) = collect(&client, &LlmOptions::default()).await;
    assert!(matches!(err, Some(LlmError::Incomplete)));
}

#[tokio::test]
async fn first_token_deadline_and_read_gap() {
    let server = MockServer::start(|_| MockResponse::event_stream().stall())
        .await
        .unwrap();
    let mut cfg = fast_config();
    cfg.first_token_timeout = Some(Duration::from_millis(100));
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (_, err) = collect(&client, &LlmOptions::default()).await;
    assert!(
        matches!(err, Some(LlmError::FirstTokenTimeout(_))),
        "{err:?}"
    );

    let server = MockServer::start(|_| MockResponse::text_then_stall(&["a"]))
        .await
        .unwrap();
    let mut cfg = fast_config();
    cfg.read_gap_timeout = Duration::from_millis(500);
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert_eq!(text_of(&events), "a");
    assert!(matches!(err, Some(LlmError::Stalled(_))), "{err:?}");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["first"]))
        .await
        .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let c = ctx();
    let options = LlmOptions::default();
    let mut stream = client.stream(ChatRequest::new(&c, &options)).unwrap();
    loop {
        if let Some(Ok(StreamEvent::Token(t))) = stream.next().await {
            assert_eq!(t, "first");
            break;
        }
    }
    let mut disconnects = server.disconnects();
    assert_eq!(*disconnects.borrow(), 0);
    drop(stream);
    disconnects.wait_for(|n| *n == 1).await.unwrap();
}

#[tokio::test]
async fn oversized_event_is_a_typed_error() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"content":"ok"}), None))
            .bytes(format!("data: {}", "x".repeat(10_000)))
            .stall()
    })
    .await
    .unwrap();
    let cfg = ClientConfig {
        limits: StreamLimits {
            max_event_bytes: 4096,
            ..StreamLimits::default()
        },
        ..fast_config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (_, err) = collect(&client, &LlmOptions::default()).await;
    assert!(
        matches!(err, Some(LlmError::EventTooLarge { limit: 4096 })),
        "{err:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_does_not_lose_later_events() {
    let mut bad = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"b\"}}]}\n\n");
    let server = MockServer::start(move |_| {
        MockResponse::event_stream()
            .bytes(bad.clone())
            .event(&sse_chunk(json!({"content":" later"}), Some("stop")))
            .event("data: [DONE]\n\n")
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "a\u{FFFD}\u{FFFD}b later");
}

#[tokio::test]
async fn a_json_completion_instead_of_a_stream_is_delivered() {
    let body = json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": "Checking.",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\":1}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
    });
    let server =
        MockServer::start(move |_| MockResponse::raw(200, "application/json", body.to_string()))
            .await
            .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Checking.");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::ToolCall(c) if c.name == "lookup" && c.valid_json))
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Usage(u) if u.total_tokens == 8))
    );
    assert!(
        matches!(events.last(), Some(StreamEvent::Finished(s)) if s.reason.as_ref().map(|r| r.label()).as_deref() == Some("tool_calls"))
    );
}

#[tokio::test]
async fn tool_call_is_published_before_the_stream_ends() {
    // The call's arguments close, then the server stalls: the call must arrive anyway.
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"tool_calls":[{"index":0,"id":"c1","function":{"name":"lookup","arguments":"{\"q\":"}}]}), None))
            .event(&sse_chunk(json!({"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}), None))
            .stall()
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let c = ctx();
    let options = LlmOptions::default();
    let mut stream = client.stream(ChatRequest::new(&c, &options)).unwrap();
    loop {
        match stream.next().await {
            Some(Ok(StreamEvent::ToolCall(call))) => {
                assert_eq!(
                    (call.id.as_str(), call.arguments.as_str()),
                    ("c1", "{\"q\":1}")
                );
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("stream ended before the tool call: {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_tool_arguments_are_flagged_not_replaced() {
    let server =
        MockServer::start(|_| MockResponse::tool_calls(&[("c1", "lookup", "{\"q\": nope")]))
            .await
            .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let (events, err) = collect(&client, &LlmOptions::default()).await;
    assert!(err.is_none());
    let call = events
        .iter()
        .find_map(|e| match e {
            StreamEvent::ToolCall(c) => Some(c.clone()),
            _ => None,
        })
        .expect("tool call delivered");
    assert!(!call.valid_json);
    assert_eq!(call.arguments, "{\"q\": nope");
}

#[tokio::test]
async fn structured_output_streams_the_spoken_field() {
    let doc = r#"{"say": "Hi \"there\", caf\u00e9!", "next_state": "greet"}"#;
    let pieces: Vec<String> = doc
        .chars()
        .collect::<Vec<_>>()
        .chunks(3)
        .map(|c| c.iter().collect())
        .collect();
    let server = MockServer::start(move |_| {
        let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
        MockResponse::text(&refs)
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let o = LlmOptions {
        structured_output: Some(StructuredOutput::new(
            "reply",
            json!({"type":"object","properties":{"say":{"type":"string"},"next_state":{"type":"string"}}}),
            "say",
        )),
        ..LlmOptions::default()
    };
    let (events, err) = collect(&client, &o).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "Hi \"there\", café!");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::Structured(v) if v["next_state"] == "greet"))
    );
    let body = server.requests()[0].json();
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(body["response_format"]["json_schema"]["strict"], true);
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["required"],
        json!(["say", "next_state"])
    );
}

#[tokio::test]
async fn a_misordered_history_is_a_typed_error_not_a_request() {
    // A call, then the assistant's interrupted text, then the call's output: the
    // output no longer follows the message that made the call.
    let server = MockServer::start(|_| MockResponse::text(&["ok"]))
        .await
        .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let mut c = ChatContext::new();
    c.add_user("What's the weather?");
    c.add_function_call("c1", "weather", "{}");
    let mut heard = ChatMessage::text(Role::Assistant, "Let me check.");
    heard.interrupted = true;
    c.add_message(heard);
    c.add_function_output("c1", "sunny", false);
    let options = LlmOptions::default();
    let err = match client.stream(ChatRequest::new(&c, &options)) {
        Err(e) => e,
        Ok(mut stream) => {
            while stream.next().await.is_some() {}
            panic!(
                "a misordered history became {} request(s)",
                server.requests().len()
            );
        }
    };
    assert_eq!(err.kind(), "invalid_history", "{err:?}");
    assert!(!err.is_retryable());
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn requests_sent_counts_what_went_out() {
    let server = MockServer::scripted(vec![
        MockResponse::error(500, "busy"),
        MockResponse::text(&["Hi"]),
    ])
    .await
    .unwrap();
    let mut cfg = fast_config();
    cfg.retry.max_retries = 1;
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (c, o) = (ctx(), LlmOptions::default());
    // Cut before its first poll: nothing went out, so nothing to estimate.
    let stream = client.stream(ChatRequest::new(&c, &o)).unwrap();
    let sent = stream.requests_sent();
    drop(stream);
    assert_eq!(sent.count(), 0);
    assert_eq!(server.requests().len(), 0);
    // Polled to its end through one retry: two requests.
    let mut stream = client.stream(ChatRequest::new(&c, &o)).unwrap();
    let sent = stream.requests_sent();
    while let Some(ev) = stream.next().await {
        ev.unwrap();
    }
    drop(stream);
    assert_eq!(sent.count(), 2);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn requests_sent_counts_a_chains_fallbacks() {
    use colloquy::llm::{ProviderChain, ProviderSpec};
    let down = MockServer::start(|_| MockResponse::error(503, "down"))
        .await
        .unwrap();
    let up = MockServer::start(|_| MockResponse::text(&["Hi"]))
        .await
        .unwrap();
    let chain = ProviderChain::new(ProviderSpec::new(OpenAiConfig::compatible(down.base_url())))
        .with_fallback(ProviderSpec::new(OpenAiConfig::compatible(up.base_url())))
        .without_breaker();
    let client = ChatClient::with_chain(chain).unwrap();
    let (c, o) = (ctx(), LlmOptions::default());
    let mut stream = client.stream(ChatRequest::new(&c, &o)).unwrap();
    let sent = stream.requests_sent();
    assert_eq!(sent.count(), 0);
    while let Some(ev) = stream.next().await {
        ev.unwrap();
    }
    assert_eq!(sent.count(), 2);
}
