//! Provider resilience (issue 9): deadlines on useful output that see through
//! keep-alives, fallback at once, continuation that never repeats a word (or
//! failing, per setting), hedging with the loser closed and its cost
//! reported, circuit breakers, and — through a session — barge-in during a
//! hedge and tool calls that run exactly once across a fallback.
//!
//! Every server is a 127.0.0.1 mock; tests wait on signals (request counts,
//! disconnects, gates), and timers only ever make a test slower, never wrong:
//! deadlines are checked to have fired no sooner than configured, and the one
//! "no delay" check compares against a 10 s backoff that would have been slept.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use colloquy::context::{ChatContext, ChatItem};
use colloquy::llm::{
    AdaptiveHedge, BreakerConfig, BreakerState, ChatClient, ClientConfig,
    DEFAULT_CONTINUATION_INSTRUCTION, Hedging, LlmError, LlmOptions, MidStreamFailure,
    OpenAiConfig, ProviderChain, ProviderSpec, RetryPolicy, SelectionReason, StreamEvent,
};
use colloquy::mock::{MockGate, MockResponse, MockServer, RecordedRequest, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, SessionConfig, Supervisor, SupervisorConfig, Tool, ToolRegistry,
};
use serde_json::json;

#[path = "support/session.rs"]
mod support;
use support::{GUARD, finished, next_matching};
#[path = "support/stream.rs"]
mod stream_support;
use stream_support::{collect as run, text_of as text};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn spec(server: &MockServer) -> ProviderSpec {
    ProviderSpec::new(OpenAiConfig::compatible(server.base_url()))
}

fn role() -> String {
    sse_chunk(json!({"role": "assistant", "content": ""}), None)
}

/// A response that starts, then only sends keep-alive comments (every 20 ms).
fn stalled_with_keep_alives() -> MockResponse {
    MockResponse::event_stream()
        .event(&role())
        .stall_with_keep_alives(ms(20))
}

/// `(index, reason, continuation)` of each `ProviderSelected`.
fn selections(events: &[StreamEvent]) -> Vec<(usize, SelectionReason, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ProviderSelected(c) => Some((c.index, c.reason, c.continuation)),
            _ => None,
        })
        .collect()
}

/// `(index, reason label, after_output)` of each `ProviderFailed`.
fn failures(events: &[StreamEvent]) -> Vec<(usize, &'static str, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::ProviderFailed(f) => Some((f.index, f.reason.label(), f.after_output)),
            _ => None,
        })
        .collect()
}

/// Waits until the server saw at least `n` requests.
async fn requests_reach(server: &MockServer, n: u64) {
    let mut rx = server.request_count();
    tokio::time::timeout(GUARD, rx.wait_for(|c| *c >= n))
        .await
        .expect("requests arrived")
        .unwrap();
}

/// Waits until the server saw a client close a connection mid-response.
async fn disconnected(server: &MockServer) {
    let mut rx = server.disconnects();
    tokio::time::timeout(GUARD, rx.wait_for(|c| *c >= 1))
        .await
        .expect("the client closed the connection")
        .unwrap();
}

/// A port nothing listens on (connection refused).
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/v1")
}

fn is_continuation(req: &RecordedRequest, prefix: &str) -> bool {
    let messages = req.json()["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let n = messages.len();
    n >= 2
        && messages[n - 1] == json!({"role": "user", "content": DEFAULT_CONTINUATION_INSTRUCTION})
        && messages[n - 2] == json!({"role": "assistant", "content": prefix})
}

// ---------------------------------------------------------------- deadlines

#[tokio::test]
async fn first_output_deadline_ignores_keep_alives_and_falls_back() {
    let a = MockServer::start(|_| stalled_with_keep_alives())
        .await
        .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["Hi", " there"]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a).with_first_output_timeout(ms(300))).with_fallback(spec(&b)),
    )
    .unwrap();
    let started = Instant::now();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert!(
        started.elapsed() >= ms(300),
        "the deadline never fires early"
    );
    // Keep-alives kept the transport alive (no `stalled`), not the deadline.
    assert_eq!(failures(&events), vec![(0, "first_token_timeout", false)]);
    assert_eq!(
        selections(&events),
        vec![(1, SelectionReason::Fallback, false)]
    );
    assert_eq!(text(&events), "Hi there");
    disconnected(&a).await;
}

#[tokio::test]
async fn output_gap_deadline_ignores_keep_alives() {
    // One client: text, then only keep-alives.
    let a = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&role())
            .tokens(&["Hello"])
            .stall_with_keep_alives(ms(20))
    })
    .await
    .unwrap();
    let config = ClientConfig {
        output_gap_timeout: Some(ms(300)),
        ..ClientConfig::default()
    };
    let single = ChatClient::with_config(OpenAiConfig::compatible(a.base_url()), config).unwrap();
    let started = Instant::now();
    let (events, err) = run(&single).await;
    assert_eq!(text(&events), "Hello");
    assert!(
        matches!(err, Some(LlmError::OutputGapTimeout(d)) if d == ms(300)),
        "{err:?}"
    );
    assert!(started.elapsed() >= ms(300));

    // A finish reason followed by keep-alives (no `[DONE]`) is a normal end.
    let done = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&role())
            .tokens(&["Done"])
            .event(&sse_chunk(json!({}), Some("stop")))
            .stall_with_keep_alives(ms(20))
    })
    .await
    .unwrap();
    let config = ClientConfig {
        output_gap_timeout: Some(ms(200)),
        ..ClientConfig::default()
    };
    let single =
        ChatClient::with_config(OpenAiConfig::compatible(done.base_url()), config).unwrap();
    let (events, err) = run(&single).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Done");

    // In a chain the gap is a mid-stream failure: the next provider continues.
    let b = MockServer::start(|req| {
        if is_continuation(req, "Hello") {
            MockResponse::text(&[" world."])
        } else {
            MockResponse::error(400, "not a continuation")
        }
    })
    .await
    .unwrap();
    let chain = ChatClient::with_chain(
        ProviderChain::new(spec(&a).with_output_gap_timeout(ms(300))).with_fallback(spec(&b)),
    )
    .unwrap();
    let (events, err) = run(&chain).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Hello world.");
    assert_eq!(failures(&events), vec![(0, "output_gap_timeout", true)]);
    assert_eq!(
        selections(&events),
        vec![
            (0, SelectionReason::Primary, false),
            (1, SelectionReason::Fallback, true)
        ]
    );
}

// ------------------------------------------------------ empty completions

#[tokio::test]
async fn empty_completion_falls_back() {
    let a = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&role())
            .finish("stop", 7, 0)
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["Answer."]))
        .await
        .unwrap();
    let client =
        ChatClient::with_chain(ProviderChain::new(spec(&a)).with_fallback(spec(&b))).unwrap();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(failures(&events), vec![(0, "empty_completion", false)]);
    assert_eq!(
        selections(&events),
        vec![(1, SelectionReason::Fallback, false)]
    );
    assert_eq!(text(&events), "Answer.");
    // The empty request's usage rides on its failure (the provider's figure);
    // the stream's `Usage` is the answer's.
    let failed_usage = events.iter().find_map(|e| match e {
        StreamEvent::ProviderFailed(f) => f.usage,
        _ => None,
    });
    let usage = failed_usage.expect("usage of the empty completion");
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.completion_tokens,
            usage.estimated
        ),
        (7, 0, false)
    );
    let answer_usage: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Usage(u) => Some(u.completion_tokens),
            _ => None,
        })
        .collect();
    assert_eq!(answer_usage, vec![1]);

    // With nothing to fall back to, an empty completion is an error, not an answer.
    let alone = ChatClient::with_chain(ProviderChain::new(spec(&a))).unwrap();
    let (events, err) = run(&alone).await;
    assert!(matches!(err, Some(LlmError::EmptyCompletion)), "{err:?}");
    assert_eq!(failures(&events), vec![(0, "empty_completion", false)]);
}

// -------------------------------------------------- fallback before output

#[tokio::test]
async fn failure_before_output_falls_back_without_delay() {
    // A retry policy that would sleep 10 s, and a server asking for 30 s:
    // a chain ignores both and moves on at once.
    let slow_retry = ClientConfig {
        retry: RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        },
        ..ClientConfig::default()
    };
    let busy =
        MockServer::start(|_| MockResponse::error(503, "overloaded").header("retry-after", "30"))
            .await
            .unwrap();
    let healthy = MockServer::start(|_| MockResponse::text(&["Fine."]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(
            ProviderSpec::new(OpenAiConfig::compatible(dead_url().await))
                .with_config(slow_retry.clone()),
        )
        .with_fallback(spec(&busy).with_config(slow_retry))
        .with_fallback(spec(&healthy)),
    )
    .unwrap();
    let started = Instant::now();
    let (events, err) = run(&client).await;
    let elapsed = started.elapsed();
    assert!(err.is_none(), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "no backoff before switching: {elapsed:?}"
    );
    assert_eq!(
        failures(&events),
        vec![(0, "connection", false), (1, "http", false)]
    );
    assert_eq!(
        selections(&events),
        vec![(2, SelectionReason::Fallback, false)]
    );
    assert_eq!(text(&events), "Fine.");
    assert_eq!(busy.requests().len(), 1, "no retry on the same provider");
    match events.last() {
        Some(StreamEvent::Finished(s)) => assert_eq!(s.attempts, 3, "three HTTP requests"),
        other => panic!("{other:?}"),
    }
}

// ------------------------------------------------------ mid-stream failure

/// A provider that says "Hello, how are" and drops the connection.
async fn dropping_server() -> MockServer {
    MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&role())
            .tokens(&["Hello, ", "how are"])
            .hang_up()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn mid_stream_failure_continues_without_repeating_text() {
    let a = dropping_server().await;
    // The fallback restates the prefix before going on (models do).
    let b = MockServer::start(|req| {
        if is_continuation(req, "Hello, how are") {
            MockResponse::text(&["Hello, how", " are", " you today?"])
        } else {
            MockResponse::error(400, "not a continuation")
        }
    })
    .await
    .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a)).with_fallback(spec(&b).with_model("fallback-model")),
    )
    .unwrap();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(
        text(&events),
        "Hello, how are you today?",
        "nothing said twice"
    );
    assert_eq!(failures(&events), vec![(0, "connection", true)]);
    assert_eq!(
        selections(&events),
        vec![
            (0, SelectionReason::Primary, false),
            (1, SelectionReason::Fallback, true)
        ]
    );
    let req = &b.requests()[0];
    assert_eq!(req.json()["model"], "fallback-model");
    // The dropped request's usage is an estimate on its failure event.
    let dropped = events.iter().find_map(|e| match e {
        StreamEvent::ProviderFailed(f) => f.usage,
        _ => None,
    });
    assert!(dropped.is_some_and(|u| u.estimated && u.completion_tokens > 0));

    // A clean continuation is published as is.
    let clean = MockServer::start(|_| MockResponse::text(&[" you?"]))
        .await
        .unwrap();
    let client =
        ChatClient::with_chain(ProviderChain::new(spec(&a)).with_fallback(spec(&clean))).unwrap();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Hello, how are you?");
}

#[tokio::test]
async fn mid_stream_failure_fails_when_the_chain_says_so() {
    let a = dropping_server().await;
    let b = MockServer::start(|_| MockResponse::text(&["never used"]))
        .await
        .unwrap();
    let continuing =
        ChatClient::with_chain(ProviderChain::new(spec(&a)).with_fallback(spec(&b))).unwrap();
    let failing = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_mid_stream_failure(MidStreamFailure::Fail),
    )
    .unwrap();
    // The chain's setting, and the per-session override of a continuing chain.
    for client in [
        failing,
        continuing.with_mid_stream_failure(MidStreamFailure::Fail),
    ] {
        let (events, err) = run(&client).await;
        assert!(matches!(err, Some(LlmError::Connection(_))), "{err:?}");
        assert_eq!(text(&events), "Hello, how are");
        assert_eq!(failures(&events), vec![(0, "connection", true)]);
    }
    assert!(b.requests().is_empty(), "nobody was asked to continue");
}

#[tokio::test]
async fn a_session_commits_the_prefix_as_interrupted_when_the_chain_fails() {
    let a = dropping_server().await;
    let b = MockServer::start(|_| MockResponse::text(&["never used"]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_mid_stream_failure(MidStreamFailure::Fail),
    )
    .unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let session = sup
        .start_session(
            "fail",
            SessionConfig::new(client, AgentSettings::new(LlmOptions::new("m"))),
        )
        .await
        .unwrap();
    let mut rx = session.subscribe();
    session.send_text("Hi").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    let failed = next_matching(&mut rx, |e| matches!(e.kind, EventKind::ProviderFailed(_))).await;
    match &failed.kind {
        EventKind::ProviderFailed(f) => assert!(f.after_output && f.index == 0),
        _ => unreachable!(),
    }
    assert!(matches!(finished(&mut rx, turn).await, TurnEnd::Failed(_)));
    let ctx = session.context().await.unwrap();
    let last = ctx.items.last().expect("the reply was committed");
    match last {
        ChatItem::Message(m) => {
            assert_eq!(m.text_content(), "Hello, how are");
            assert!(m.interrupted);
        }
        other => panic!("{other:?}"),
    }
    sup.shutdown().await;
}

// ------------------------------------------------------------------ hedging

#[tokio::test]
async fn hedge_wins_and_the_primary_is_closed_with_its_cost_reported() {
    let a = MockServer::start(|_| stalled_with_keep_alives())
        .await
        .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["Fast", " answer"]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_hedging(Hedging::After(ms(100))),
    )
    .unwrap();
    let started = Instant::now();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert!(started.elapsed() >= ms(100));
    assert_eq!(text(&events), "Fast answer");
    assert_eq!(
        selections(&events),
        vec![(1, SelectionReason::Hedge, false)]
    );
    assert_eq!(failures(&events), vec![(0, "hedge_lost", false)]);
    let cost = events
        .iter()
        .find_map(|e| match e {
            StreamEvent::ProviderFailed(f) if f.is_hedge_cost() => f.usage,
            _ => None,
        })
        .expect("the loser's usage");
    assert!(cost.estimated && cost.prompt_tokens > 0, "{cost:?}");
    disconnected(&a).await;
}

#[tokio::test]
async fn primary_wins_the_race_and_the_hedge_is_closed() {
    let gate = MockGate::new();
    let g = gate.clone();
    let a = MockServer::start(move |_| {
        MockResponse::event_stream()
            .event(&role())
            .keep_alive()
            .wait_for(&g)
            .tokens(&["Primary", " wins"])
            .finish("stop", 5, 2)
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| stalled_with_keep_alives())
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_hedging(Hedging::After(ms(50))),
    )
    .unwrap();
    let task = tokio::spawn(async move { run(&client).await });
    requests_reach(&b, 1).await; // the hedge is in flight
    gate.open();
    let (events, err) = task.await.unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(text(&events), "Primary wins");
    assert_eq!(
        selections(&events),
        vec![(0, SelectionReason::Primary, false)]
    );
    assert_eq!(failures(&events), vec![(1, "hedge_lost", false)]);
    disconnected(&b).await;
}

#[tokio::test]
async fn a_hedge_race_never_yields_two_requests_tokens() {
    // Both answer at the same moment; exactly one of them is heard.
    for _ in 0..5 {
        let gate = MockGate::new();
        let (ga, gb) = (gate.clone(), gate.clone());
        let a = MockServer::start(move |_| {
            MockResponse::event_stream()
                .event(&role())
                .wait_for(&ga)
                .tokens(&["A1", "A2", "A3"])
                .finish("stop", 5, 3)
        })
        .await
        .unwrap();
        let b = MockServer::start(move |_| {
            MockResponse::event_stream()
                .event(&role())
                .wait_for(&gb)
                .tokens(&["B1", "B2", "B3"])
                .finish("stop", 5, 3)
        })
        .await
        .unwrap();
        let client = ChatClient::with_chain(
            ProviderChain::new(spec(&a))
                .with_fallback(spec(&b))
                .with_hedging(Hedging::After(ms(10))),
        )
        .unwrap();
        let task = tokio::spawn(async move { run(&client).await });
        requests_reach(&b, 1).await;
        gate.open();
        let (events, err) = task.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        let t = text(&events);
        assert!(t == "A1A2A3" || t == "B1B2B3", "{t}");
        assert_eq!(failures(&events).len(), 1);
        assert_eq!(selections(&events).len(), 1);
    }
}

#[tokio::test]
async fn adaptive_hedging_learns_the_primarys_usual_time_to_first_output() {
    // The primary answers at once three times, then stalls. Before it has
    // samples, the hedge would wait `initial_delay` (60 s); after, its p95.
    let served = Arc::new(AtomicUsize::new(0));
    let n = served.clone();
    let a = MockServer::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) < 3 {
            MockResponse::text(&["quick"])
        } else {
            stalled_with_keep_alives()
        }
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["hedged"]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_hedging(Hedging::Adaptive(AdaptiveHedge {
                min_samples: 3,
                initial_delay: Duration::from_secs(60),
                min_delay: ms(100),
                ..AdaptiveHedge::default()
            })),
    )
    .unwrap();
    for _ in 0..3 {
        let (events, _) = run(&client).await;
        assert_eq!(text(&events), "quick");
    }
    let started = Instant::now();
    let (events, err) = run(&client).await;
    assert!(err.is_none(), "{err:?}");
    assert!(started.elapsed() >= ms(100), "min_delay");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "p95, not initial_delay"
    );
    assert_eq!(text(&events), "hedged");
    assert_eq!(
        selections(&events),
        vec![(1, SelectionReason::Hedge, false)]
    );
}

// ------------------------------------------------------------------ breaker

#[tokio::test]
async fn breaker_opens_skips_half_opens_and_closes() {
    const FAIL: u8 = 0;
    const STALL: u8 = 1;
    const OK: u8 = 2;
    let mode = Arc::new(AtomicU8::new(FAIL));
    let m = mode.clone();
    let a = MockServer::start(move |_| match m.load(Ordering::SeqCst) {
        FAIL => MockResponse::error(500, "down"),
        STALL => stalled_with_keep_alives(),
        _ => MockResponse::text(&["from A"]),
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["from B"]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_breaker(BreakerConfig {
                failure_threshold: 2,
                cooldown: Duration::from_secs(60),
            }),
    )
    .unwrap();
    let breaker = |c: &ChatClient| c.providers()[0].breaker.unwrap();
    let cooldown_passes = || async {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(61)).await;
        tokio::time::resume();
    };

    // Two failures open it.
    for n in 1..=2u32 {
        let (events, err) = run(&client).await;
        assert!(err.is_none());
        assert_eq!(failures(&events), vec![(0, "http", false)]);
        assert_eq!(text(&events), "from B");
        if n == 1 {
            assert_eq!(
                breaker(&client),
                BreakerState::Closed {
                    consecutive_failures: 1
                }
            );
        }
    }
    assert!(matches!(breaker(&client), BreakerState::Open { .. }));
    // Open: skipped, no request sent.
    let (events, _) = run(&client).await;
    assert_eq!(failures(&events), vec![(0, "circuit_open", false)]);
    assert_eq!(
        selections(&events),
        vec![(1, SelectionReason::Fallback, false)]
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, StreamEvent::ProviderFailed(f) if f.usage.is_none()))
    );
    assert_eq!(a.requests().len(), 2);

    // After the cooldown one real request probes it; a failed probe reopens it.
    cooldown_passes().await;
    assert_eq!(
        breaker(&client),
        BreakerState::Open {
            retry_in: Duration::ZERO
        }
    );
    let (events, _) = run(&client).await;
    assert_eq!(failures(&events), vec![(0, "http", false)]);
    assert_eq!(a.requests().len(), 3);
    assert!(
        matches!(breaker(&client), BreakerState::Open { retry_in } if retry_in > Duration::ZERO)
    );
    let (events, _) = run(&client).await;
    assert_eq!(failures(&events), vec![(0, "circuit_open", false)]);

    // Half-open: only one probe at a time. This probe stalls…
    cooldown_passes().await;
    mode.store(STALL, Ordering::SeqCst);
    let probe_client = client.clone();
    let probe = tokio::spawn(async move { run(&probe_client).await });
    requests_reach(&a, 4).await;
    assert_eq!(breaker(&client), BreakerState::HalfOpen { probing: true });
    // …so a concurrent request skips the provider.
    let (events, _) = run(&client).await;
    assert_eq!(failures(&events), vec![(0, "circuit_open", false)]);
    assert_eq!(text(&events), "from B");
    assert_eq!(a.requests().len(), 4);
    // A probe cancelled before it decided hands the probe to the next request.
    probe.abort();
    let _ = probe.await;
    assert_eq!(breaker(&client), BreakerState::HalfOpen { probing: false });
    mode.store(OK, Ordering::SeqCst);
    let (events, _) = run(&client).await;
    assert_eq!(
        selections(&events),
        vec![(0, SelectionReason::Primary, false)]
    );
    assert_eq!(text(&events), "from A");
    assert_eq!(
        breaker(&client),
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );
    let (events, _) = run(&client).await;
    assert!(failures(&events).is_empty());
    assert_eq!(text(&events), "from A");
}

#[tokio::test]
async fn with_every_breaker_open_the_one_reopening_first_is_probed() {
    let a = MockServer::start(|_| MockResponse::error(500, "down"))
        .await
        .unwrap();
    let client = ChatClient::with_chain(ProviderChain::new(spec(&a)).with_breaker(BreakerConfig {
        failure_threshold: 1,
        cooldown: Duration::from_secs(600),
    }))
    .unwrap();
    let (_, err) = run(&client).await;
    assert!(matches!(err, Some(LlmError::Http { status: 500, .. })));
    // Open, but it is the only one: trying it beats failing without a request.
    let (events, err) = run(&client).await;
    assert!(matches!(err, Some(LlmError::Http { status: 500, .. })));
    assert_eq!(failures(&events), vec![(0, "http", false)]);
    assert_eq!(a.requests().len(), 2);
}

// ---------------------------------------------------- through a session

fn session_config(client: ChatClient) -> SessionConfig {
    SessionConfig::new(client, AgentSettings::new(LlmOptions::new("m")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_during_a_hedge_cancels_both_requests() {
    let a = MockServer::start(|_| stalled_with_keep_alives())
        .await
        .unwrap();
    let b = MockServer::start(|_| stalled_with_keep_alives())
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_hedging(Hedging::After(ms(50))),
    )
    .unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let session = sup
        .start_session("hedge", session_config(client))
        .await
        .unwrap();
    let mut rx = session.subscribe();
    session.send_text("Hi").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    requests_reach(&a, 1).await;
    requests_reach(&b, 1).await; // both requests in flight
    // A confirmed interruption (the default mode): the words cut at once.
    session.user_speech_started();
    session.user_transcript("wait stop", false);
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Cancelled);
    disconnected(&a).await;
    disconnected(&b).await;
    sup.shutdown().await;
}

fn ping_tool(runs: Arc<AtomicUsize>) -> ToolRegistry {
    ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("ping", "Ping"),
        move |_| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("pong".to_string())
            }
        },
    ))
}

fn tool_outputs(req: &RecordedRequest) -> Vec<String> {
    req.json()["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter(|m| m["role"] == "tool")
                .map(|m| m["tool_call_id"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn tool_call_chunk(id: &str) -> String {
    sse_chunk(
        json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
               "function": {"name": "ping", "arguments": "{}"}}]}),
        None,
    )
}

/// Runs one user turn to its end; returns the end and the bus kinds seen.
async fn one_turn(
    client: ChatClient,
    tools: ToolRegistry,
) -> (TurnEnd, Vec<EventKind>, ChatContext) {
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let session = sup
        .start_session("tools", session_config(client).with_tools(tools))
        .await
        .unwrap();
    let mut rx = session.subscribe();
    session.send_text("ping it").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    let mut kinds = Vec::new();
    let end = loop {
        let ev = next_matching(&mut rx, |e| e.turn == turn).await;
        match ev.kind {
            EventKind::TurnFinished(end) => break end,
            kind => kinds.push(kind),
        }
    };
    let ctx = session.context().await.unwrap();
    sup.shutdown().await;
    (end, kinds, ctx)
}

fn calls_and_outputs(ctx: &ChatContext) -> (Vec<String>, Vec<String>) {
    let mut calls = Vec::new();
    let mut outputs = Vec::new();
    for item in &ctx.items {
        match item {
            ChatItem::FunctionCall(c) => calls.push(c.call_id.clone()),
            ChatItem::FunctionCallOutput(o) => outputs.push(o.call_id.clone()),
            _ => {}
        }
    }
    (calls, outputs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_in_a_fallback_round_run_exactly_once() {
    // 1. The provider drops right after publishing a complete call: the round
    //    ends as tool_calls (the call runs once), nobody is asked to continue
    //    it, and the next round goes on from the call's output.
    let runs = Arc::new(AtomicUsize::new(0));
    let a = MockServer::start(|req| {
        if tool_outputs(req).is_empty() {
            MockResponse::event_stream()
                .event(&sse_chunk(
                    json!({"role": "assistant", "content": null}),
                    None,
                ))
                .event(&tool_call_chunk("c1"))
                .hang_up()
        } else {
            MockResponse::text(&["Pong", " received."])
        }
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| MockResponse::text(&["fallback"]))
        .await
        .unwrap();
    let client =
        ChatClient::with_chain(ProviderChain::new(spec(&a)).with_fallback(spec(&b))).unwrap();
    let (end, kinds, ctx) = one_turn(client, ping_tool(runs.clone())).await;
    assert_eq!(end, TurnEnd::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(b.requests().is_empty(), "no provider re-asked for the call");
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::ProviderFailed(f) if f.after_output))
    );
    assert_eq!(
        calls_and_outputs(&ctx),
        (vec!["c1".into()], vec!["c1".into()])
    );
    assert_eq!(tool_outputs(&a.requests()[1]), vec!["c1".to_string()]);

    // 2. The round after the tool fails before output: the fallback serves it
    //    from the same history; the call is not made again.
    let runs = Arc::new(AtomicUsize::new(0));
    let a = MockServer::start(|req| {
        if tool_outputs(req).is_empty() {
            MockResponse::tool_calls(&[("c2", "ping", "{}")])
        } else {
            MockResponse::error(503, "overloaded")
        }
    })
    .await
    .unwrap();
    let b = MockServer::start(|req| {
        if tool_outputs(req) == ["c2"] {
            MockResponse::text(&["All done."])
        } else {
            MockResponse::error(400, "the tool output is missing")
        }
    })
    .await
    .unwrap();
    let client =
        ChatClient::with_chain(ProviderChain::new(spec(&a)).with_fallback(spec(&b))).unwrap();
    let (end, kinds, ctx) = one_turn(client, ping_tool(runs.clone())).await;
    assert_eq!(end, TurnEnd::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let served: Vec<_> = kinds
        .iter()
        .filter_map(|k| match k {
            EventKind::ProviderSelected(c) => Some((c.index, c.reason)),
            _ => None,
        })
        .collect();
    assert_eq!(
        served,
        vec![
            (0, SelectionReason::Primary),
            (1, SelectionReason::Fallback)
        ],
        "round 0 on the primary, round 1 on the fallback"
    );
    assert_eq!(
        calls_and_outputs(&ctx),
        (vec!["c2".into()], vec!["c2".into()])
    );

    // 3. A hedge that wins with a call: the slow primary is cancelled before
    //    any output, so only the winner's call exists and runs.
    let runs = Arc::new(AtomicUsize::new(0));
    let a = MockServer::start(|req| {
        if tool_outputs(req).is_empty() {
            stalled_with_keep_alives()
        } else {
            MockResponse::text(&["Thanks."])
        }
    })
    .await
    .unwrap();
    let b = MockServer::start(|_| MockResponse::tool_calls(&[("c3", "ping", "{}")]))
        .await
        .unwrap();
    let client = ChatClient::with_chain(
        ProviderChain::new(spec(&a))
            .with_fallback(spec(&b))
            .with_hedging(Hedging::After(ms(50))),
    )
    .unwrap();
    let (end, _, ctx) = one_turn(client, ping_tool(runs.clone())).await;
    assert_eq!(end, TurnEnd::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls_and_outputs(&ctx),
        (vec!["c3".into()], vec!["c3".into()])
    );
}

#[tokio::test]
async fn a_chain_client_never_shows_its_keys() {
    let client = ChatClient::with_chain(
        ProviderChain::new(
            ProviderSpec::new(OpenAiConfig::new("sk-primary-secret")).with_label("openai"),
        )
        .with_fallback(ProviderSpec::new({
            let mut c = OpenAiConfig::compatible("http://127.0.0.1:1/v1");
            c.api_key = Some("sk-fallback-secret".into());
            c
        })),
    )
    .unwrap();
    let shown = format!("{client:?} {:?}", client.providers());
    assert!(!shown.contains("secret"), "{shown}");
    assert!(
        shown.contains("openai") && shown.contains("127.0.0.1:1"),
        "{shown}"
    );
}
