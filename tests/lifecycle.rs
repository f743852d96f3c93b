//! Regression tests for the turn's life (issue 7): the seam between a caller's
//! cancel and the LLM actor's commit. Each test reproduces a defect found by
//! review or fault injection through the public API; DESIGN.md's cancel
//! semantics 4, 5, 6 and 8 are what they check.

use std::sync::Arc;
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusRecvError, EventKind, TurnEnd};
use colloquy_actors::{InterruptionPolicy, SessionError, Tool, ToolRegistry, TurnId};
use serde_json::json;

#[path = "support/session.rs"]
mod support;
use support::*;

/// A compact view of a history: `u:text`, `a:text` (`a*:` when interrupted),
/// `call:id`, `out:id`.
fn shape(ctx: &ChatContext) -> Vec<String> {
    ctx.items
        .iter()
        .map(|i| match i {
            ChatItem::Message(m) => {
                let who = match (m.role, m.interrupted) {
                    (Role::User, _) => "u",
                    (Role::Assistant, true) => "a*",
                    (Role::Assistant, false) => "a",
                    _ => "s",
                };
                format!("{who}:{}", m.text_content())
            }
            ChatItem::FunctionCall(c) => format!("call:{}", c.call_id),
            ChatItem::FunctionCallOutput(o) => format!("out:{}", o.call_id),
            _ => "?".into(),
        })
        .collect()
}

/// R1 / F4: a user message queued before a cancel must not make the actor drop
/// the cancelled turn's commit. On a current-thread runtime the two calls run
/// with no await in between, so the actor sees `UserMessage` before it learns
/// of the cancel.
#[tokio::test(flavor = "current_thread")]
async fn r1_message_queued_before_cancel_keeps_the_cancelled_turns_commit() {
    let server = MockServer::start(|req| {
        if req.last_message()["content"] == "second" {
            MockResponse::text(&["ok"])
        } else {
            MockResponse::text_then_stall(&["Partial answer"])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.send_text("first").unwrap();
    let t1 = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.send_text("second").unwrap();
    session.cancel().unwrap();
    assert_eq!(finished(&mut rx, t1).await, TurnEnd::Cancelled);
    let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        vec!["u:first", "a*:Partial answer", "u:second", "a:ok"]
    );
    sup.shutdown().await;
}

/// F4 seen from outside: `cancel()` on one thread racing `send_text()` on
/// another must never lose the cancelled turn's partial reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f4_cancel_racing_send_text_never_loses_the_partial_reply() {
    let server = MockServer::start(|req| {
        let last = req.last_message()["content"].to_string();
        if last.contains("next") {
            MockResponse::text(&["ok"])
        } else {
            MockResponse::text_then_stall(&["Partial"])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    for round in 0..20 {
        session.send_text(format!("q{round}")).unwrap();
        let t = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
            .await
            .turn;
        let (a, b) = (session.clone(), session.clone());
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let (ba, bb) = (barrier.clone(), barrier);
        let canceller = std::thread::spawn(move || {
            ba.wait();
            a.cancel().unwrap();
        });
        let sender = std::thread::spawn(move || {
            bb.wait();
            b.send_text(format!("next{round}")).unwrap();
        });
        canceller.join().unwrap();
        sender.join().unwrap();
        assert_eq!(finished(&mut rx, t).await, TurnEnd::Cancelled);
        // The next turn answers "next…"; the racing cancel may land on it too
        // when the actor started it first — either way it ends.
        let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
            .await
            .turn;
        finished(&mut rx, t2).await;
    }
    let ctx = session.context().await.unwrap();
    let shape = shape(&ctx);
    for round in 0..20 {
        let at = shape
            .iter()
            .position(|s| *s == format!("u:q{round}"))
            .unwrap_or_else(|| panic!("q{round} missing: {shape:?}"));
        assert_eq!(
            shape.get(at + 1).map(String::as_str),
            Some("a*:Partial"),
            "turn {round} lost its partial reply: {shape:?}"
        );
        assert_eq!(
            shape.get(at + 2),
            Some(&format!("u:next{round}")),
            "{shape:?}"
        );
    }
    sup.shutdown().await;
}

/// R2: a round with text and a call ends while the actor is busy (its
/// `RoundEnded` waits in the mailbox), then a fast cancel closes the turn. The
/// committed history must be valid on the wire: the assistant's text, then its
/// call, then the call's output — and the next request must carry it so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r2_round_ended_behind_a_cancel_commits_a_wire_valid_history() {
    let server = MockServer::start(|req| {
        if req.last_message()["content"] == "again" {
            return MockResponse::text(&["fine"]);
        }
        MockResponse::event_stream()
            .event(&sse_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ))
            .event(&sse_chunk(json!({"content": "Let me check."}), None))
            .event(&sse_chunk(
                json!({"tool_calls": [{"index": 0, "id": "c1", "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"}}]}),
                None,
            ))
            .finish("tool_calls", 10, 5)
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.send_text("q").unwrap();
    next_matching(&mut rx, |e| matches!(e.kind, EventKind::Usage(_))).await;
    // Hold the actor busy so the round's end waits in its mailbox.
    let (release, wait) = std::sync::mpsc::channel::<()>();
    session
        .update_settings(move |_| {
            let _ = wait.recv_timeout(GUARD);
        })
        .unwrap();
    // Widen the window: the stream task reports the round's end meanwhile.
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.cancel().unwrap();
    release.send(()).unwrap();
    session.send_text("again").unwrap();
    let t2 = next_matching(&mut rx, |e| {
        e.turn > TurnId(1) && e.kind == EventKind::TurnStarted
    })
    .await
    .turn;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        vec![
            "u:q",
            "a:Let me check.",
            "call:c1",
            "out:c1",
            "u:again",
            "a:fine"
        ]
    );
    // On the wire: one assistant message owning its call, then the tool message.
    let req = server.requests().last().cloned().unwrap();
    let msgs = req.json()["messages"].as_array().unwrap().clone();
    let roles: Vec<&str> = msgs.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["user", "assistant", "tool", "user"], "{msgs:?}");
    assert_eq!(msgs[1]["content"], "Let me check.");
    assert_eq!(msgs[1]["tool_calls"][0]["id"], "c1");
    sup.shutdown().await;
}

/// R4: usage is per request. A turn whose first round reported usage and whose
/// second round is cancelled reports two usages: the provider's and an estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r4_cancelled_second_round_still_reports_its_usage() {
    let server = MockServer::start(|req| {
        if has_tool_output(req) {
            MockResponse::text_then_stall(&["It is "])
        } else {
            MockResponse::tool_calls(&[("c1", "now", "{}")])
        }
    })
    .await
    .unwrap();
    let tools = ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("now", "The time"),
        |_| async { Ok("noon".to_string()) },
    ));
    let (sup, session, mut rx) = setup(&server, |c| c.tools = Some(tools)).await;
    session.send_text("time?").unwrap();
    let mut usages = Vec::new();
    let turn = loop {
        let ev = next_matching(&mut rx, |e| {
            matches!(e.kind, EventKind::Usage(_) | EventKind::Token(_))
        })
        .await;
        match ev.kind {
            EventKind::Usage(u) => usages.push(*u),
            _ => break ev.turn,
        }
    };
    session.cancel().unwrap();
    loop {
        let ev = next_matching(&mut rx, |e| e.turn == turn).await;
        match ev.kind {
            EventKind::Usage(u) => usages.push(*u),
            EventKind::TurnFinished(end) => {
                assert_eq!(end, TurnEnd::Cancelled);
                break;
            }
            _ => {}
        }
    }
    assert_eq!(usages.len(), 2, "{usages:?}");
    assert!(!usages[0].estimated && usages[1].estimated, "{usages:?}");
    sup.shutdown().await;
}

/// F6: an answer longer than the runtime's cap is committed marked as cut, not
/// silently truncated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f6_an_answer_over_the_cap_is_committed_marked() {
    let piece = "x".repeat(4000);
    let server = MockServer::start(move |_| {
        let tokens: Vec<&str> = (0..100).map(|_| piece.as_str()).collect();
        MockResponse::text(&tokens)
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.send_text("long").unwrap();
    let t = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    let reply = ctx
        .messages()
        .find(|m| m.role == Role::Assistant)
        .expect("a reply");
    let len = reply.text_content().len();
    assert!(
        len == 400_000 || reply.truncated,
        "committed {len} of 400000 bytes without a mark"
    );
    sup.shutdown().await;
}

/// After `stop_session`, subscribers see the bus close even while handles live,
/// and `cancel()` on the stopped session says it is not running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_session_closes_its_bus_and_refuses_cancel() {
    let server = MockServer::start(|_| MockResponse::text(&["hi"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    sup.stop_session(session.id()).await.unwrap();
    let closed = tokio::time::timeout(GUARD, async {
        loop {
            match rx.recv().await {
                Err(BusRecvError::Closed) => return true,
                Ok(_) | Err(BusRecvError::Lagged { .. }) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the bus did not close after stop_session");
    assert!(closed);
    assert!(matches!(session.cancel(), Err(SessionError::NotRunning(_))));
    drop(session);
    sup.shutdown().await;
}

/// Review: a provider that sends calls without ids (or reuses ids across
/// rounds) must not make a later round's output look like a duplicate of an
/// earlier one — the turn would wait for tools forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_ids_in_two_rounds_still_finish_the_turn() {
    let server = MockServer::start(|req| match tool_outputs(req) {
        0 | 1 => MockResponse::tool_calls(&[("", "now", "{}")]),
        _ => MockResponse::text(&["It is noon."]),
    })
    .await
    .unwrap();
    let tools = ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("now", "The time"),
        |_| async { Ok("noon".to_string()) },
    ));
    let (sup, session, mut rx) = setup(&server, |c| c.tools = Some(tools)).await;
    session.send_text("time?").unwrap();
    let t = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert!(ctx.calls_without_output().is_empty());
    sup.shutdown().await;
}

/// Review: a barge-in while the first segment plays (the TTS has not reported
/// any playback yet) must cut the speech: `Interrupted`, hooks, and nothing of
/// the reply committed as heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barge_in_before_the_first_playback_report_cuts_the_speech() {
    let server = MockServer::start(|_| {
        MockResponse::text(&["The first sentence is long. ", "And the second one too."])
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate();
        c.speech_output = true; // a TTS outside the runtime reads the segments
    })
    .await;
    session.send_text("q").unwrap();
    let t = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    session.user_speech_started();
    let cut = next_matching(&mut rx, |e| {
        e.turn == t && matches!(e.kind, EventKind::Interrupted { .. })
    })
    .await;
    assert_eq!(cut.kind, EventKind::Interrupted { heard_chars: 0 });
    let ctx = session.context().await.unwrap();
    assert_eq!(shape(&ctx), vec!["u:q"], "nothing of the reply was heard");
    sup.shutdown().await;
}

/// Review: a message that waited behind a turn is kept when the session stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_is_kept_when_the_session_stops() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Thinking"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption.cancel_on_user_message = false
    })
    .await;
    session.send_text("first").unwrap();
    next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_))).await;
    session.send_text("second").unwrap();
    session.context().await.unwrap(); // the actor has queued it
    sup.stop_session(session.id()).await.unwrap();
    assert_eq!(
        shape(&session.checkpoint()),
        vec!["u:first", "a*:Thinking", "u:second"]
    );
    sup.shutdown().await;
}

/// A new turn that begins while the last reply's speech is still playing
/// (here `generate()`) cuts that speech: the history keeps what was heard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_turn_over_playing_speech_commits_only_what_was_heard() {
    let server = MockServer::start(|_| MockResponse::text(&["Hello there, ", "friend."]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    session.send_text("hi").unwrap();
    let t1 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t1).await, TurnEnd::Stop);
    session.speech_played(t1, 5).unwrap();
    session.generate().unwrap();
    let cut = next_matching(&mut rx, |e| {
        e.turn == t1 && matches!(e.kind, EventKind::Interrupted { .. })
    })
    .await;
    assert_eq!(cut.kind, EventKind::Interrupted { heard_chars: 5 });
    let t2 = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        vec!["u:hi", "a*:Hello", "a:Hello there, friend."]
    );
    sup.shutdown().await;
}
