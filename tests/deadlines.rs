//! Every wait on the network has a deadline, and the read gap is about a silent
//! connection: servers that accept and never answer, never read the body, stall
//! an error body or a JSON completion, or trickle one forever all end with a
//! typed error; keep-alive comments keep a stream alive but do not count as the
//! first token.
//!
//! Timers never fire early, so each test checks that the error came no sooner
//! than its deadline; the outer `within` only turns a hang into a failure.

use std::time::{Duration, Instant};

use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, ClientConfig, LlmError, OpenAiConfig, RetryPolicy, StreamEvent};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[path = "support/stream.rs"]
mod support;
use support::{collect, collect_ctx, text_of};

fn config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_retries: 0,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
        ..ClientConfig::default()
    }
}

/// What the hand-rolled server does with the one connection it accepts.
#[derive(Clone)]
enum Fault {
    /// Reads the request and never answers.
    Silent,
    /// Never reads anything.
    NoRead,
    /// Reads the request, writes these bytes, then stays silent.
    Partial(&'static [u8]),
    /// Reads the request, writes this head, then one body byte every 20 ms
    /// (at most 1500 bytes).
    Trickle(&'static str),
}

/// Reads one request (head and content-length body).
async fn read_request(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return;
            }
        }
        match socket.read(&mut tmp).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

/// A 127.0.0.1 server that misbehaves as told on every connection, holding
/// each connection open until the test ends.
async fn faulty_server(fault: Fault) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let fault = fault.clone();
            tokio::spawn(async move {
                match fault {
                    Fault::Silent => read_request(&mut socket).await,
                    Fault::NoRead => {}
                    Fault::Partial(bytes) => {
                        read_request(&mut socket).await;
                        let _ = socket.write_all(bytes).await;
                    }
                    Fault::Trickle(head) => {
                        read_request(&mut socket).await;
                        let _ = socket.write_all(head.as_bytes()).await;
                        for _ in 0..1500 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            if socket.write_all(b" ").await.is_err() {
                                return;
                            }
                        }
                    }
                }
                std::future::pending::<()>().await;
                drop(socket);
            });
        }
    });
    format!("http://{addr}/v1")
}

#[tokio::test]
async fn server_that_never_answers_hits_the_response_timeout() {
    let url = faulty_server(Fault::Silent).await;
    let cfg = ClientConfig {
        response_timeout: Duration::from_millis(300),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    let started = Instant::now();
    let (_, err) = collect(&client).await;
    assert!(
        matches!(err, Some(LlmError::ResponseTimeout(d)) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(err.unwrap().is_retryable());
}

#[tokio::test]
async fn server_that_never_reads_the_body_hits_the_response_timeout() {
    let url = faulty_server(Fault::NoRead).await;
    let cfg = ClientConfig {
        response_timeout: Duration::from_millis(300),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    // Larger than any socket buffer: the write itself blocks.
    let mut ctx = ChatContext::new();
    ctx.add_user("x".repeat(16 << 20));
    let started = Instant::now();
    let (_, err) = collect_ctx(&client, &ctx).await;
    assert!(matches!(err, Some(LlmError::ResponseTimeout(_))), "{err:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn error_body_that_stalls_ends_with_the_status() {
    let url = faulty_server(Fault::Partial(
        b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{\"error\":",
    ))
    .await;
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_millis(300),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    let started = Instant::now();
    let (_, err) = collect(&client).await;
    match err {
        Some(LlmError::Http { status, error, .. }) => {
            assert_eq!(status, 500);
            assert_eq!(error.message, "{\"error\":", "what arrived is kept");
        }
        other => panic!("expected HTTP 500, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn json_completion_that_stalls_is_stalled() {
    let url = faulty_server(Fault::Partial(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n{\"id\":\"x\",\"choices\":[",
    ))
    .await;
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_millis(300),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    let started = Instant::now();
    let (events, err) = collect(&client).await;
    assert!(events.is_empty(), "{events:?}");
    assert!(
        matches!(err, Some(LlmError::Stalled(d)) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn json_completion_that_trickles_hits_the_body_timeout() {
    // One byte every 20 ms never trips a 10 s read gap; only the total deadline ends it.
    let url = faulty_server(Fault::Trickle(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{",
    ))
    .await;
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_millis(400),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    let started = Instant::now();
    let (_, err) = collect(&client).await;
    assert!(
        matches!(err, Some(LlmError::BodyTimeout(d)) if d == Duration::from_millis(400)),
        "{err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn error_body_that_trickles_ends_with_the_status() {
    let url = faulty_server(Fault::Trickle(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 100000\r\n\r\nbusy",
    ))
    .await;
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_millis(400),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(url), cfg).unwrap();
    let (_, err) = collect(&client).await;
    match err {
        Some(LlmError::Http { status, error, .. }) => {
            assert_eq!(status, 503);
            assert!(error.message.starts_with("busy"), "{error:?}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }
}

fn keep_alives(mut r: MockResponse, n: usize, every: Duration) -> MockResponse {
    for _ in 0..n {
        r = r.delay(every).event(": keep-alive\n\n");
    }
    r
}

#[tokio::test]
async fn keep_alive_comments_reset_the_read_gap() {
    // 12 comments 100 ms apart: 1.2 s without an event, three read gaps long.
    let server = MockServer::start(|_| {
        let r = MockResponse::event_stream().event(&sse_chunk(json!({"role": "assistant"}), None));
        keep_alives(r, 12, Duration::from_millis(100))
            .event(&sse_chunk(json!({"content": "thought it over"}), None))
            .finish("stop", 5, 3)
    })
    .await
    .unwrap();
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_millis(400),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "thought it over");
    assert!(matches!(events.last(), Some(StreamEvent::Finished(_))));
}

#[tokio::test]
async fn keep_alive_comments_do_not_count_as_the_first_token() {
    let server = MockServer::start(|_| {
        let r = MockResponse::event_stream().event(&sse_chunk(json!({"role": "assistant"}), None));
        keep_alives(r, 200, Duration::from_millis(50))
            .event(&sse_chunk(json!({"content": "too late"}), None))
            .finish("stop", 5, 3)
    })
    .await
    .unwrap();
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_secs(10),
        first_token_timeout: Some(Duration::from_millis(300)),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let started = Instant::now();
    let (events, err) = collect(&client).await;
    assert!(
        matches!(err, Some(LlmError::FirstTokenTimeout(d)) if d == Duration::from_millis(300)),
        "{err:?}"
    );
    assert_eq!(text_of(&events), "");
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn silence_after_the_finish_reason_is_a_normal_end() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"content": "done"}), None))
            .event(&sse_chunk(json!({}), Some("stop")))
            .stall()
    })
    .await
    .unwrap();
    let cfg = ClientConfig {
        read_gap_timeout: Duration::from_millis(300),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text_of(&events), "done");
    match events.last() {
        Some(StreamEvent::Finished(s)) => assert!(!s.saw_done),
        other => panic!("last event {other:?}"),
    }
}

// The shipped defaults, on a real connection under a paused clock: the mock
// server runs on the test's runtime, so its keep-alive timer and the client's
// deadlines share one virtual clock and the test takes milliseconds, not the
// deadline's seconds. (A paused clock only advances when every task waits, so
// it never runs ahead of bytes already on the socket.)

fn tool_call_delta(id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
    let mut call = json!({"index": 0, "function": {"arguments": arguments}});
    if let Some(id) = id {
        call["id"] = json!(id);
        call["type"] = json!("function");
    }
    if let Some(name) = name {
        call["function"]["name"] = json!(name);
    }
    sse_chunk(json!({"tool_calls": [call]}), None)
}

#[tokio::test(start_paused = true)]
async fn keep_alive_only_stream_ends_with_the_default_first_output_deadline() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))
            .stall_with_keep_alives(Duration::from_millis(500))
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let deadline = ClientConfig::default()
        .first_token_timeout
        .expect("the shipped config bounds the first useful output");
    let started = tokio::time::Instant::now();
    let (events, err) = collect(&client).await;
    assert!(
        matches!(err, Some(LlmError::FirstTokenTimeout(d)) if d == deadline),
        "{err:?}"
    );
    assert_eq!(text_of(&events), "");
    let waited = started.elapsed();
    assert!(
        waited >= deadline && waited < deadline + Duration::from_secs(1),
        "{waited:?}"
    );
    assert_eq!(
        server.requests().len(),
        1,
        "the shipped config does not retry"
    );
}

#[tokio::test(start_paused = true)]
async fn keep_alives_after_a_token_end_with_the_default_output_gap() {
    let server = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"role": "assistant"}), None))
            .event(&sse_chunk(json!({"content": "Let me check"}), None))
            .stall_with_keep_alives(Duration::from_millis(500))
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let gap = ClientConfig::default()
        .output_gap_timeout
        .expect("the shipped config bounds the gap between useful outputs");
    let (events, err) = collect(&client).await;
    assert!(
        matches!(err, Some(LlmError::OutputGapTimeout(d)) if d == gap),
        "{err:?}"
    );
    assert_eq!(text_of(&events), "Let me check");
}

#[tokio::test]
async fn tool_call_deltas_count_as_useful_output() {
    // A call whose arguments stream for 700 ms, a delta every 100 ms: each
    // delta is the model at work, so neither a 400 ms first-output deadline
    // nor a 400 ms gap ends it, although no event is published before the
    // call closes.
    let server = MockServer::start(|_| {
        let mut r = MockResponse::event_stream()
            .event(&sse_chunk(json!({"role": "assistant"}), None))
            .delay(Duration::from_millis(100))
            .event(&tool_call_delta(Some("call_1"), Some("write_note"), ""));
        for piece in ["{\"text\":", "\"a", " long", " note", "\"}"] {
            r = r
                .delay(Duration::from_millis(100))
                .event(&tool_call_delta(None, None, piece));
        }
        r.finish("tool_calls", 5, 9)
    })
    .await
    .unwrap();
    let cfg = ClientConfig {
        first_token_timeout: Some(Duration::from_millis(400)),
        output_gap_timeout: Some(Duration::from_millis(400)),
        ..config()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), cfg).unwrap();
    let (events, err) = collect(&client).await;
    assert!(err.is_none(), "{err:?}");
    let call = events.iter().find_map(|e| match e {
        StreamEvent::ToolCall(c) => Some(c),
        _ => None,
    });
    assert_eq!(
        call.map(|c| c.arguments.as_str()),
        Some("{\"text\":\"a long note\"}")
    );
}
