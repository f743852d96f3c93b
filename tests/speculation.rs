//! Preemptive generation's edges (issue 13): the `before_turn` hook once per
//! utterance and on the utterance it answers, user events never naming a turn
//! subscribers did not see start, and a missed speculation's whole cost.
//! Every test drives the public API against a scripted 127.0.0.1 server and
//! waits on bus events or server signals.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{BusEvent, BusReceiver, EventKind, SpeculationOutcome, TurnEnd};
use colloquy_actors::{BeforeTurnHook, Preemptive, TurnId};

#[path = "support/session.rs"]
mod support;
use support::*;

fn preemptive() -> Option<Preemptive> {
    Some(Preemptive {
        debounce: Duration::ZERO,
    })
}

async fn requests_reach(server: &MockServer, n: u64) {
    let mut count = server.request_count();
    tokio::time::timeout(GUARD, count.wait_for(|c| *c >= n))
        .await
        .expect("request did not arrive")
        .unwrap();
}

/// The text of the last user message of a context the hook saw.
fn last_user(ctx: &ChatContext) -> String {
    ctx.items
        .iter()
        .rev()
        .find_map(|i| match i {
            ChatItem::Message(m) if m.role == Role::User => Some(m.text_content()),
            _ => None,
        })
        .unwrap_or_default()
}

/// A hook that records the last user message of every context it is given.
fn recording_hook() -> (BeforeTurnHook, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let hook: BeforeTurnHook = Arc::new(move |ctx: &mut ChatContext| {
        sink.lock().unwrap().push(last_user(ctx));
    });
    (hook, seen)
}

async fn speculation_ended(rx: &mut BusReceiver) -> BusEvent {
    next_matching(rx, |e| matches!(e.kind, EventKind::SpeculationEnded { .. })).await
}

/// Defect 2: the flag set by a speculation's hook run must not swallow the
/// hook of the next utterance once that speculation was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_turn_runs_for_the_next_utterance_after_a_dropped_speculation() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Thinking"]))
        .await
        .unwrap();
    let (hook, seen) = recording_hook();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.preemptive = preemptive();
        c.settings.before_turn = Some(hook);
    })
    .await;
    session.user_transcript("tell me a joke", false);
    requests_reach(&server, 1).await;
    session.user_speech_started(); // a new utterance: the speculation is dropped
    let ev = speculation_ended(&mut rx).await;
    assert!(matches!(
        ev.kind,
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Dropped,
            ..
        }
    ));
    session.user_transcript("what time is it", true);
    requests_reach(&server, 2).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["tell me a joke", "what time is it"],
        "the hook runs once per utterance, on that utterance"
    );
    sup.shutdown().await;
}

/// Defect 2 (what the hook sees): during a speculation the hook runs on a
/// context that ends with the utterance it answers; a hit does not run it
/// again, and what it added is in the history the reply was generated from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speculations_hook_sees_the_utterance_and_a_hit_keeps_what_it_added() {
    let server = MockServer::start(|_| MockResponse::text(&["Paris."]))
        .await
        .unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let hook: BeforeTurnHook = Arc::new(move |ctx: &mut ChatContext| {
        let query = last_user(ctx);
        sink.lock().unwrap().push(query.clone());
        // A retrieval hook: adds what it found for the query.
        ctx.push(ChatItem::Message(colloquy::context::ChatMessage::text(
            Role::System,
            format!("found for: {query}"),
        )));
    });
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.preemptive = preemptive();
        c.settings.before_turn = Some(hook);
    })
    .await;
    session.user_transcript("what is the capital of france", false);
    requests_reach(&server, 1).await;
    session.user_transcript("What is the capital of France?", true);
    let ev = speculation_ended(&mut rx).await;
    assert!(matches!(
        ev.kind,
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Hit,
            ..
        }
    ));
    let turn = ev.turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);
    assert_eq!(
        *seen.lock().unwrap(),
        ["what is the capital of france"],
        "once, on the utterance"
    );
    let request = server.requests()[0].json();
    let messages = request["messages"].as_array().unwrap();
    assert_eq!(
        messages.last().unwrap()["content"],
        "found for: what is the capital of france",
        "the request carried what the hook added: {messages:?}"
    );
    let ctx = session.context().await.unwrap();
    let shape: Vec<String> = ctx
        .items
        .iter()
        .map(|i| match i {
            ChatItem::Message(m) => format!("{:?}:{}", m.role, m.text_content()),
            _ => "?".into(),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "User:What is the capital of France?",
            "System:found for: what is the capital of france",
            "Assistant:Paris."
        ],
        "the history is what the reply was generated from, with the final's wording"
    );
    sup.shutdown().await;
}

/// Suspect: user events during a speculation named the speculative turn,
/// whose `TurnStarted` no subscriber saw. They name the last turn
/// subscribers saw start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_events_during_a_speculation_name_a_turn_subscribers_saw() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Thinking"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.preemptive = preemptive()).await;
    session.user_transcript("tell me", false);
    requests_reach(&server, 1).await;
    let seq = session.user_speech_ended();
    let ev = next_matching(&mut rx, |e| e.seq == seq).await;
    assert_eq!(ev.kind, EventKind::UserSpeechEnded);
    assert_eq!(ev.turn, TurnId(0), "no turn was seen to start");
    session.user_speech_started();
    let ended = speculation_ended(&mut rx).await;
    assert!(ended.turn > TurnId(0));
    sup.shutdown().await;
}
