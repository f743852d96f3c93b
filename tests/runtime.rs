//! The cancel, streaming and ownership semantics of DESIGN.md, each driven
//! through the public API against a scripted 127.0.0.1 server. Tests wait on
//! bus events and server signals; timeouts only turn a hang into a failure.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer, RecordedRequest, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusReceiver, BusRecvError, EventKind, ToolOutput, TurnEnd};
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, SessionConfig, SessionError, SessionHandle, Supervisor,
    SupervisorConfig, SupervisorError, Tool, ToolError, ToolRegistry, TurnId,
};
use serde_json::json;

#[path = "support/session.rs"]
mod support;
use support::*;

/// Waits until the mock server has seen a client close a response mid-way.
async fn server_saw_close(disconnects: &mut tokio::sync::watch::Receiver<u64>) {
    tokio::time::timeout(GUARD, disconnects.wait_for(|n| *n >= 1))
        .await
        .expect("the server did not see the connection close")
        .expect("server gone");
}

fn paced_words(n: usize, gap_ms: u64) -> MockResponse {
    let words: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
    MockResponse::text_paced(&refs, Duration::from_millis(gap_ms))
}

fn last_message(req: &RecordedRequest) -> String {
    req.last_message()["content"].to_string()
}

fn last_assistant(ctx: &ChatContext) -> Option<(String, bool)> {
    ctx.messages()
        .filter(|m| m.role == Role::Assistant)
        .last()
        .map(|m| (m.text_content(), m.interrupted))
}

/// After `TurnFinished` of `turn`, runs another full turn and checks that no
/// event of `turn` shows up in between (but its latency report, which the
/// session publishes about it once it is over).
async fn assert_no_stale_events(session: &SessionHandle, rx: &mut BusReceiver, turn: TurnId) {
    session.send_text("next question").unwrap();
    loop {
        let ev = tokio::time::timeout(GUARD, rx.recv())
            .await
            .expect("next turn")
            .expect("bus");
        if ev.kind.is_report() {
            continue;
        }
        assert_ne!(ev.turn, turn, "stale event of the cancelled turn: {ev:?}");
        if ev.turn > turn && matches!(ev.kind, EventKind::TurnFinished(_)) {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_stream_closes_connection_fences_and_commits_published_text() {
    let server = MockServer::start(|req| {
        if last_message(req).contains("next question") {
            MockResponse::text(&["fine."])
        } else {
            paced_words(500, 5)
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.user_transcript("tell me a story", true);
    let started = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted).await;
    let turn = started.turn;
    for _ in 0..3 {
        next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_))).await;
    }
    let mut disconnects = server.disconnects();
    session.cancel().unwrap();
    // Usage (estimated) comes before the TurnFinished.
    let usage = next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::Usage(_) | EventKind::TurnFinished(_))
    })
    .await;
    match &usage.kind {
        EventKind::Usage(u) => assert!(u.estimated && u.completion_tokens > 0, "{u:?}"),
        other => panic!("expected usage before the end, got {other:?}"),
    }
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Cancelled);
    server_saw_close(&mut disconnects).await;

    let ctx = session.context().await.unwrap();
    let (text, interrupted) = last_assistant(&ctx).expect("partial answer committed");
    assert!(interrupted);
    assert!(text.starts_with("w0 w1 w2 "), "{text}");
    assert!(text.len() < 500 * 4, "the whole story was not committed");
    assert_no_stale_events(&session, &mut rx, turn).await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_waiting_for_the_first_token() {
    let server = MockServer::start(|_| MockResponse::event_stream().stall())
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    let mut requests = server.request_count();
    session.send_text("hello?").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    requests.wait_for(|n| *n == 1).await.unwrap();
    let mut disconnects = server.disconnects();
    session.cancel().unwrap();
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Cancelled);
    server_saw_close(&mut disconnects).await;
    let ctx = session.context().await.unwrap();
    assert!(
        last_assistant(&ctx).is_none(),
        "nothing was said, nothing committed"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_a_stalled_stream() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Let me think"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate()
    })
    .await;
    session.send_text("hard question").unwrap();
    let tok = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_))).await;
    let mut disconnects = server.disconnects();
    session.user_speech_started(); // barge-in through the bus
    assert_eq!(finished(&mut rx, tok.turn).await, TurnEnd::Cancelled);
    server_saw_close(&mut disconnects).await;
    let ctx = session.context().await.unwrap();
    assert_eq!(
        last_assistant(&ctx),
        Some(("Let me think".to_string(), true))
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_commit_stops_at_the_last_speech_played_position() {
    let server = MockServer::start(|_| {
        MockResponse::text_then_stall(&["Hello there, ", "how are you today?"])
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.send_text("hi").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    next_matching(
        &mut rx,
        |e| matches!(&e.kind, EventKind::Token(t) if t.starts_with("how")),
    )
    .await;
    // A TTS reports it has played "Hello there" (11 characters).
    session.speech_played(turn, 11).unwrap();
    session.cancel().unwrap();
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Cancelled);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        last_assistant(&ctx),
        Some(("Hello there".to_string(), true))
    );
    // Progress reported after the cancel is refused by the fence.
    assert!(matches!(
        session.speech_played(turn, 20),
        Err(SessionError::Publish(_))
    ));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_tools_run_concurrently_then_the_turn_continues() {
    let server = MockServer::start(|req| {
        if has_tool_output(req) {
            MockResponse::text(&["Paris is sunny and ", "AAPL is up."])
        } else {
            MockResponse::tool_calls(&[
                ("call_w", "weather", r#"{"city":"Paris"}"#),
                ("call_s", "stock", r#"{"ticker":"AAPL"}"#),
            ])
        }
    })
    .await
    .unwrap();
    // Each tool waits until both are running: if they ran one after the other,
    // neither would finish and the turn would time out.
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let b1 = barrier.clone();
    let b2 = barrier.clone();
    let tools = ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::free_form("weather", "Weather"),
            move |args| {
                let b = b1.clone();
                async move {
                    b.wait().await;
                    Ok::<_, ToolError>(format!("sunny in {}", args["city"].as_str().unwrap_or("?")))
                }
            },
        ))
        .with_tool(Tool::new(
            ToolDefinition::free_form("stock", "Stock"),
            move |_| {
                let b = b2.clone();
                async move {
                    b.wait().await;
                    Ok::<_, ToolError>("up 2%".to_string())
                }
            },
        ))
        .with_timeout(GUARD);
    let (sup, session, mut rx) = setup(&server, |c| c.tools = Some(tools)).await;
    session.send_text("weather and stocks?").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let body = requests[0].json();
    assert_eq!(
        body["tools"].as_array().unwrap().len(),
        2,
        "tool definitions sent"
    );
    let msgs = requests[1].json()["messages"].as_array().unwrap().clone();
    let tool_msgs: Vec<_> = msgs.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_msgs.len(), 2);
    assert!(
        tool_msgs
            .iter()
            .any(|m| m["tool_call_id"] == "call_w" && m["content"] == "sunny in Paris")
    );
    assert!(
        tool_msgs
            .iter()
            .any(|m| m["tool_call_id"] == "call_s" && m["content"] == "up 2%")
    );
    let grouped = msgs.iter().find(|m| m["tool_calls"].is_array()).unwrap();
    assert_eq!(
        grouped["tool_calls"].as_array().unwrap().len(),
        2,
        "parallel calls grouped"
    );

    let ctx = session.context().await.unwrap();
    assert!(ctx.calls_without_output().is_empty());
    assert_eq!(
        last_assistant(&ctx),
        Some(("Paris is sunny and AAPL is up.".to_string(), false))
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_errors_become_error_outputs_for_the_model() {
    let server = MockServer::start(|req| {
        if has_tool_output(req) {
            MockResponse::text(&["Sorry, that failed."])
        } else {
            MockResponse::tool_calls(&[
                ("c_unknown", "no_such_tool", "{}"),
                ("c_badjson", "echo", "{\"x\": oops"),
                ("c_err", "fails", "{}"),
                ("c_slow", "slow", "{}"),
                ("c_panic", "panics", "{}"),
            ])
        }
    })
    .await
    .unwrap();
    let tools = ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::free_form("echo", "Echo"),
            |a| async move { Ok(a.to_string()) },
        ))
        .with_tool(Tool::new(
            ToolDefinition::free_form("fails", "Fails"),
            |_| async { Err::<String, _>(ToolError::new("database unavailable")) },
        ))
        .with_tool(Tool::new(
            ToolDefinition::free_form("slow", "Slow"),
            |_| async {
                std::future::pending::<()>().await;
                Ok("never".to_string())
            },
        ))
        .with_tool(Tool::new(
            ToolDefinition::free_form("panics", "Panics"),
            |_| async {
                if true {
                    panic!("tool bug");
                }
                Ok("never".to_string())
            },
        ))
        .with_timeout(Duration::from_millis(200));
    let (sup, session, mut rx) = setup(&server, |c| c.tools = Some(tools)).await;
    session.send_text("do things").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);
    let msgs = server.requests()[1].json()["messages"]
        .as_array()
        .unwrap()
        .clone();
    let output = |id: &str| {
        msgs.iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| panic!("no output for {id}"))
            .to_string()
    };
    assert!(
        output("c_unknown").contains("no tool named"),
        "{}",
        output("c_unknown")
    );
    assert!(
        output("c_badjson").contains("not valid JSON"),
        "{}",
        output("c_badjson")
    );
    assert!(output("c_err").contains("database unavailable"));
    assert!(output("c_slow").contains("timed out"));
    assert!(output("c_panic").contains("crashed"));
    let ctx = session.context().await.unwrap();
    let errors = ctx
        .items
        .iter()
        .filter(|i| matches!(i, ChatItem::FunctionCallOutput(o) if o.is_error))
        .count();
    assert_eq!(errors, 5);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_tool_execution_aborts_tools_and_leaves_no_orphan_call() {
    let server = MockServer::start(|_| MockResponse::tool_calls(&[("c1", "long_job", "{}")]))
        .await
        .unwrap();
    let (dropped_tx, dropped_rx) = tokio::sync::oneshot::channel::<()>();
    let dropped_tx = Arc::new(std::sync::Mutex::new(Some(dropped_tx)));
    struct OnDrop(Arc<std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>>);
    impl Drop for OnDrop {
        fn drop(&mut self) {
            if let Some(tx) = self.0.lock().unwrap().take() {
                let _ = tx.send(());
            }
        }
    }
    let started = Arc::new(tokio::sync::Notify::new());
    let started2 = started.clone();
    let tools = ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::free_form("long_job", "Long"),
            move |_| {
                let guard = OnDrop(dropped_tx.clone());
                let started = started2.clone();
                async move {
                    let _guard = guard;
                    started.notify_one();
                    std::future::pending::<()>().await;
                    Ok("never".to_string())
                }
            },
        ))
        .with_timeout(Duration::from_secs(3600));
    let (sup, session, mut rx) = setup(&server, |c| c.tools = Some(tools)).await;
    session.send_text("run the job").unwrap();
    let call = next_matching(&mut rx, |e| matches!(e.kind, EventKind::ToolCall(_))).await;
    tokio::time::timeout(GUARD, started.notified())
        .await
        .expect("tool started");
    session.cancel().unwrap();
    assert_eq!(finished(&mut rx, call.turn).await, TurnEnd::Cancelled);
    tokio::time::timeout(GUARD, dropped_rx)
        .await
        .expect("tool aborted")
        .unwrap();
    let ctx = session.context().await.unwrap();
    assert!(ctx.calls_without_output().is_empty(), "no orphaned call");
    let out = ctx
        .items
        .iter()
        .find_map(|i| match i {
            ChatItem::FunctionCallOutput(o) if o.call_id == "c1" => Some(o.clone()),
            _ => None,
        })
        .expect("cancelled call has an output");
    assert!(out.is_error && out.output.contains("cancelled"));
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_llm_actor_is_restarted_with_its_context() {
    let server = MockServer::start(|_| MockResponse::text(&["Nice to meet you."]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.before_turn = Some(Arc::new(|ctx: &mut ChatContext| {
            let last = ctx
                .messages()
                .last()
                .map(|m| m.text_content())
                .unwrap_or_default();
            if last == "boom" {
                panic!("embedder hook bug");
            }
        }));
    })
    .await;
    session.send_text("I'm Ada").unwrap();
    let t1 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t1).await, TurnEnd::Stop);

    session.send_text("boom").unwrap();
    let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert!(matches!(finished(&mut rx, t2).await, TurnEnd::Failed(_)));

    // The restarted actor answers, with the history before the crash.
    let ctx = tokio::time::timeout(GUARD, async {
        loop {
            match session.context().await {
                Ok(ctx) => break ctx,
                Err(_) => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .unwrap();
    let texts: Vec<String> = ctx.messages().map(|m| m.text_content()).collect();
    assert!(
        texts.starts_with(&["I'm Ada".to_string(), "Nice to meet you.".to_string()]),
        "{texts:?}"
    );
    session.send_text("still there?").unwrap();
    let t3 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert!(t3 > t2, "turn ids keep increasing across the restart");
    assert_eq!(finished(&mut rx, t3).await, TurnEnd::Stop);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sessions_cancel_independently() {
    // Session a's model stalls after one token (only a cancel can end it);
    // session b's streams 30 words over ≈0.6 s, so it is mid-stream at a's cancel.
    let server = MockServer::start(|req| {
        if last_message(req).contains("stall") {
            MockResponse::text_then_stall(&["w0 "])
        } else {
            paced_words(30, 20)
        }
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let cfg = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock")));
    let a = sup.start_session("a", cfg.clone()).await.unwrap();
    let b = sup.start_session("b", cfg).await.unwrap();
    let (mut ra, mut rb) = (a.subscribe(), b.subscribe());
    a.send_text("stall").unwrap();
    b.send_text("go").unwrap();
    let ta = next_matching(&mut ra, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    let tb = next_matching(&mut rb, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    a.cancel().unwrap();
    assert_eq!(finished(&mut ra, ta).await, TurnEnd::Cancelled);
    assert_eq!(finished(&mut rb, tb).await, TurnEnd::Stop);
    let ctx_b = b.context().await.unwrap();
    assert_eq!(
        last_assistant(&ctx_b).unwrap().0.split_whitespace().count(),
        30
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_when_idle_is_a_noop_and_new_message_cancels_the_turn() {
    let server = MockServer::start(|req| {
        if last_message(req).contains("second") {
            MockResponse::text(&["ok"])
        } else {
            MockResponse::text_then_stall(&["first answer"])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.cancel().unwrap();
    let marker = session.user_speech_started();
    let ev = next_matching(&mut rx, |_| true).await;
    assert_eq!(ev.seq, marker, "cancel while idle published nothing");

    session.send_text("first").unwrap();
    let t1 = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.send_text("second").unwrap();
    assert_eq!(finished(&mut rx, t1).await, TurnEnd::Cancelled);
    let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    let texts: Vec<(Role, String)> = ctx.messages().map(|m| (m.role, m.text_content())).collect();
    assert_eq!(
        texts,
        vec![
            (Role::User, "first".into()),
            (Role::Assistant, "first answer".into()),
            (Role::User, "second".into()),
            (Role::Assistant, "ok".into())
        ]
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_subscriber_is_told_and_can_catch_up() {
    let server = MockServer::start(|_| paced_words(60, 0)).await.unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.bus_capacity = 8).await;
    let mut slow = session.subscribe();
    session.send_text("go").unwrap();
    // `rx` may lag too (capacity 8), but the newest events are always kept, so
    // the TurnFinished arrives.
    let end = next_matching(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    assert_eq!(end.kind, EventKind::TurnFinished(TurnEnd::Stop));
    let turn = end.turn;
    // The slow subscriber has not read anything: 60+ events went past a capacity of 8.
    let missed = match slow.recv().await {
        Err(BusRecvError::Lagged { missed }) => missed,
        other => panic!("expected a lag report, got {other:?}"),
    };
    assert!(missed > 50, "{missed}");
    let (text, _) = session
        .bus()
        .turn_text_since(turn, 0)
        .expect("turn text kept");
    assert_eq!(text.split_whitespace().count(), 60);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmenter_speaks_whole_turns_and_drops_cancelled_ones() {
    let server = MockServer::start(|req| {
        if last_message(req).contains("interrupt me") {
            MockResponse::event_stream()
                .event(&sse_chunk(
                    json!({"content": "This sentence will be cut"}),
                    None,
                ))
                .stall()
        } else {
            MockResponse::text(&["Sure thing.", " The weather", " is fine today.", " Bye"])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.speech_output = true).await;
    session.send_text("hello").unwrap();
    let t1 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    let mut spoken = String::new();
    let mut segments = 0;
    loop {
        let ev = next_matching(&mut rx, |e| {
            e.turn == t1 && matches!(e.kind, EventKind::Speakable { .. })
        })
        .await;
        if let EventKind::Speakable { text, last } = ev.kind {
            spoken.push_str(&text);
            segments += 1;
            if last {
                break;
            }
        }
    }
    assert_eq!(spoken, "Sure thing. The weather is fine today. Bye");
    assert!(segments >= 3, "cut into several segments ({segments})");
    session.send_text("interrupt me").unwrap();
    let t2 = next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::Token(_)) && e.turn > t1
    })
    .await
    .turn;
    session.cancel().unwrap();
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Cancelled);
    assert_no_stale_events(&session, &mut rx, t2).await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_caps_sessions_and_stop_leaves_nothing_behind() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["x"]))
        .await
        .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let sup = Supervisor::start(SupervisorConfig {
        max_sessions: 2,
        ..SupervisorConfig::default()
    })
    .await
    .unwrap();
    let cfg = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock")));
    let a = sup.start_session("a", cfg.clone()).await.unwrap();
    assert!(matches!(
        sup.start_session("a", cfg.clone()).await,
        Err(SupervisorError::AlreadyExists(_))
    ));
    sup.start_session("b", cfg.clone()).await.unwrap();
    assert!(matches!(
        sup.start_session("c", cfg.clone()).await,
        Err(SupervisorError::TooManySessions { max: 2 })
    ));

    let mut rx = a.subscribe();
    a.send_text("talk").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    let mut disconnects = server.disconnects();
    sup.stop_session(a.id()).await.unwrap();
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Cancelled);
    server_saw_close(&mut disconnects).await;
    assert!(sup.session(a.id()).is_none());
    assert!(matches!(
        a.send_text("anyone?"),
        Err(SessionError::NotRunning(_))
    ));
    assert_eq!(sup.session_count(), 1);
    sup.start_session("c", cfg).await.unwrap();
    assert_eq!(sup.session_count(), 2);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_rounds_are_capped_then_answered_without_tools() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let server = MockServer::start(move |req| {
        if req.json()["tool_choice"] == "none" {
            MockResponse::text(&["Final answer."])
        } else {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            let id = format!("call_{n}");
            MockResponse::tool_calls(&[(&id, "echo", "{}")])
        }
    })
    .await
    .unwrap();
    let tools = ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("echo", "Echo"),
        |_| async { Ok("again".to_string()) },
    ));
    let (sup, session, mut rx) = setup(&server, |c| {
        c.tools = Some(tools);
        c.settings.max_tool_rounds = 2;
    })
    .await;
    session.send_text("loop forever").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "two tool rounds, then the capped one"
    );
    let ctx = session.context().await.unwrap();
    assert!(ctx.calls_without_output().is_empty());
    assert_eq!(last_assistant(&ctx).unwrap().0, "Final answer.");
    let _ = ToolOutput {
        call_id: String::new(),
        name: String::new(),
        output: String::new(),
        is_error: false,
    };
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_during_tail_speech_trims_the_finished_reply() {
    // The model finishes long before the speech does: the user interrupts the
    // speech of a turn whose generation already ended.
    let server =
        MockServer::start(|_| MockResponse::text(&["The forecast ", "for tomorrow is rain."]))
            .await
            .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate()
    })
    .await;
    session.send_text("forecast?").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);
    session.speech_played(turn, 12).unwrap(); // "The forecast" played so far
    session.user_speech_started();
    let cut = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Interrupted { .. })).await;
    assert_eq!(
        (cut.turn, cut.kind),
        (turn, EventKind::Interrupted { heard_chars: 12 })
    );
    assert!(
        session.speech_played(turn, 20).is_err(),
        "nothing more of the turn is accepted"
    );
    let ctx = session.context().await.unwrap();
    assert_eq!(
        last_assistant(&ctx),
        Some(("The forecast".to_string(), true))
    );

    // A reply played to the end is not touched by a later barge-in.
    session.send_text("and today?").unwrap();
    let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    session.speech_played(t2, 34).unwrap(); // all 34 characters
    let marker = session.user_speech_started();
    let next = next_matching(&mut rx, |e| {
        !matches!(
            e.kind,
            EventKind::SpeechPlayed { .. } | EventKind::TurnLatency(_)
        )
    })
    .await;
    assert_eq!(
        next.seq, marker,
        "no Interrupted event for a fully played reply"
    );
    let ctx = session.context().await.unwrap();
    assert_eq!(
        last_assistant(&ctx),
        Some(("The forecast for tomorrow is rain.".to_string(), false))
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_hook_runs_before_cancel_returns() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Talking"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    let (tx, cuts) = std::sync::mpsc::channel();
    session.bus().on_cut(move |turn| {
        let _ = tx.send(turn);
    });
    session.send_text("talk").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    assert!(cuts.try_recv().is_err(), "no cut yet");
    session.cancel().unwrap();
    // Synchronous: the audio can be stopped before cancel() even returns.
    assert_eq!(cuts.try_recv(), Ok(turn));
    sup.shutdown().await;
}
