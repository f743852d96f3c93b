//! A panicking LLM actor loses nothing it accepted (issue 13, carried
//! items): input behind the panic in its mailbox is handled by the restarted
//! actor, and a speech cut after the restart still trims the history to what
//! was heard. Servers are 127.0.0.1 mocks; tests wait on handles and events.

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::InterruptionPolicy;
use colloquy_actors::bus::{EventKind, TurnEnd};

#[path = "support/session.rs"]
mod support;
use support::*;

const PANIC: &str = "injected actor failure";

/// The injected panics are expected: keep their reports out of the output
/// (every other panic's stay in).
fn quiet_injected_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let injected = info
                .payload()
                .downcast_ref::<&str>()
                .is_some_and(|m| *m == PANIC);
            if !injected {
                default_hook(info);
            }
        }));
    });
}

fn shape(ctx: &ChatContext) -> Vec<String> {
    ctx.items
        .iter()
        .map(|i| match i {
            ChatItem::Message(m) if m.role == Role::User => format!("u:{}", m.text_content()),
            ChatItem::Message(m) if m.interrupted => format!("a*:{}", m.text_content()),
            ChatItem::Message(m) => format!("a:{}", m.text_content()),
            _ => "?".into(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_queued_behind_a_panic_is_handled_after_the_restart() {
    let server = MockServer::start(|_| MockResponse::text(&["Answered."]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |_| {}).await;
    // Both are in the actor's mailbox before it handles the first.
    session
        .update_settings(|_| {
            quiet_injected_panics();
            std::panic::panic_any(PANIC)
        })
        .unwrap();
    let reply = session.send_text("are you there?").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    assert_eq!(finished(&mut rx, turn).await, TurnEnd::Stop);
    let done = tokio::time::timeout(GUARD, reply.played_out())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.text(), "Answered.");
    let ctx = session.context().await.unwrap();
    assert_eq!(shape(&ctx), ["u:are you there?", "a:Answered."]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speech_cut_after_a_restart_trims_the_history() {
    let server = MockServer::start(|_| MockResponse::text(&["Hello there, how are you today?"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate();
        c.speech_output = true;
    })
    .await;
    let reply = session.send_text("hi").unwrap();
    let committed = tokio::time::timeout(GUARD, reply.committed())
        .await
        .unwrap()
        .unwrap();
    let turn = committed.turn;
    session.speech_played(turn, 5).unwrap();
    // The actor fails and is restarted with the history intact.
    session
        .update_settings(|_| {
            quiet_injected_panics();
            std::panic::panic_any(PANIC)
        })
        .unwrap();
    // Wait until the restarted actor answers.
    let _ = session.context().await;
    let ctx = loop {
        if let Ok(ctx) = session.context().await {
            break ctx;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(shape(&ctx), ["u:hi", "a:Hello there, how are you today?"]);
    session.user_speech_started(); // the user talks over the rest
    let cut = next_matching(&mut rx, |e| {
        e.turn == turn && matches!(e.kind, EventKind::Interrupted { .. })
    })
    .await;
    assert_eq!(cut.kind, EventKind::Interrupted { heard_chars: 5 });
    let done = tokio::time::timeout(GUARD, reply.played_out())
        .await
        .unwrap();
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        ["u:hi", "a*:Hello"],
        "trimmed to what was heard"
    );
    assert!(done.is_ok_and(|r| r.interrupted && r.text() == "Hello"));
    sup.shutdown().await;
}

/// Review: an input waiting when the restarts run out (the session stops)
/// does not leave its reply handle waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_waiting_when_restarts_run_out_finishes_its_handle() {
    use colloquy_actors::{Supervisor, SupervisorConfig};
    let server = MockServer::start(|_| MockResponse::text(&["Answered."]))
        .await
        .unwrap();
    let sup = Supervisor::start(SupervisorConfig {
        max_restarts: 0,
        ..SupervisorConfig::default()
    })
    .await
    .unwrap();
    let session = sup
        .start_session("s", session_config(&server))
        .await
        .unwrap();
    session
        .update_settings(|_| {
            quiet_injected_panics();
            std::panic::panic_any(PANIC)
        })
        .unwrap();
    // Refused (the session already stopped), or accepted: then the session
    // answered before it stopped, or the handle says the reply was dropped;
    // it never waits for good.
    if let Ok(reply) = session.send_text("are you there?") {
        let _ = tokio::time::timeout(GUARD, reply.played_out())
            .await
            .expect("the reply handle finishes");
    }
    sup.shutdown().await;
}

/// Review: a stop that overtakes the input in the mailbox finishes the
/// reply handle (the input is dropped with the session's inbox).
#[tokio::test]
async fn an_input_waiting_at_stop_finishes_its_handle() {
    use colloquy_actors::{Supervisor, SupervisorConfig};
    let server = MockServer::start(|_| MockResponse::text(&["Answered."]))
        .await
        .unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    for i in 0..20 {
        let id = format!("s{i}");
        let session = sup
            .start_session(id.as_str(), session_config(&server))
            .await
            .unwrap();
        let reply = session.send_text("hi").unwrap();
        sup.stop_session(&id.as_str().into()).await.unwrap();
        let _ = tokio::time::timeout(GUARD, reply.played_out())
            .await
            .expect("the reply handle finishes");
    }
    sup.shutdown().await;
}

fn session_config(server: &MockServer) -> colloquy_actors::SessionConfig {
    use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    colloquy_actors::SessionConfig::new(
        client,
        colloquy_actors::AgentSettings::new(LlmOptions::new("mock")),
    )
}
