//! Every input remote (feature `nats`): `send_message` with an image,
//! `say`, `generate`, `update_settings` and `replace_context` against a
//! worker and the mock model (what the model received is checked), and the
//! reply a remote client follows ([`RemoteReply`]): committed, done,
//! dropped, interrupted, and after its worker died.
//!
//! Each test starts its own `nats-server -js` (see `tests/support/nats.rs`).
//! Tests wait on replies, events and store changes; timeouts only turn a
//! hang into a failure.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use cluster_common::*;
use colloquy::context::{ChatContext, ContentPart, ImageContent, ImageDetail, Role};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::async_nats::jetstream;
use colloquy_actors::cluster::{
    ClusterError, PolicyViolation, RemoteReplyError, SessionSpec, connect, session_key,
};
use colloquy_actors::{ReplyState, SayOptions, TurnId};
use nats::NatsServer;
use serde_json::json;

/// Bounds a wait (a hang fails the test instead).
async fn guard<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f).await.expect("in time")
}

#[tokio::test]
async fn send_message_with_an_image_reaches_the_model_and_its_reply_resolves() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w1", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("img", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let image =
        ImageContent::from_url("https://example.com/cat.png").with_detail(ImageDetail::High);
    let reply = s
        .send_message(
            vec![ContentPart::Text("What is this?".into()), image.into()],
            true,
        )
        .await
        .expect("send_message");
    let turn = guard(reply.started()).await.expect("started");
    let started = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    assert_eq!(turn, started.turn, "the reply's turn is the wire's");
    let committed = guard(reply.committed()).await.expect("committed");
    assert_eq!(
        (
            committed.turn,
            committed.end.clone(),
            committed.text().as_str()
        ),
        (turn, TurnEnd::Stop, "Answer to .")
    );
    // Committed means stored: the checkpoint holds the turn already.
    let nats = connect(&server.url(), "inspector").await.unwrap();
    let kv = jetstream::new(nats)
        .get_key_value("colloquy_checkpoints")
        .await
        .unwrap();
    let stored = kv.get(session_key(s.id()).unwrap()).await.unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert!(
        stored["committed_turn"].as_u64() >= Some(turn.0),
        "{stored}"
    );
    let done = guard(reply.played_out()).await.expect("done");
    assert_eq!(done.text(), "Answer to .");
    assert!(reply.is_done());
    // The model got the image part.
    let last = model.requests().last().unwrap().last_message();
    assert_eq!(last["role"], "user");
    assert_eq!(
        last["content"],
        json!([
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
        ])
    );
    // The history holds it too.
    let ctx = s.context().await.unwrap();
    assert!(ctx.items.iter().any(|i| matches!(i,
        colloquy::context::ChatItem::Message(m) if m.content.iter().any(|p| matches!(p, ContentPart::Image(_))))));
    // A message without a reply is dropped at once and committed.
    let quiet = s
        .send_message(vec!["just so you know".into()], false)
        .await
        .unwrap();
    assert!(matches!(
        guard(quiet.committed()).await,
        Err(RemoteReplyError::Dropped)
    ));
    assert_eq!(quiet.state(), ReplyState::Dropped);
    // An image over the worker's input size is refused by its policy.
    let big = ImageContent::from_bytes(&vec![7u8; 70 * 1024], "image/png");
    let refused = s.send_message(vec![big.into()], true).await.unwrap_err();
    assert!(
        matches!(
            refused,
            ClusterError::Policy(PolicyViolation::TooLarge { .. })
        ),
        "{refused:?}"
    );
}

#[tokio::test]
async fn say_sends_no_model_request_and_generate_answers_the_context() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w1", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("say", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let greeting = s.say("Welcome!").await.expect("say");
    let r = guard(greeting.played_out()).await.expect("said");
    assert_eq!(
        (r.end.clone(), r.text().as_str()),
        (TurnEnd::Stop, "Welcome!")
    );
    let (_, end, text, _) = finish(&mut rx, r.turn).await;
    assert_eq!((end, text.as_str()), (TurnEnd::Stop, "Welcome!"));
    assert!(model.requests().is_empty(), "say asks no model");
    let firm = s
        .say_with(
            "Please hold.",
            SayOptions::default().allow_interruptions(false),
        )
        .await
        .unwrap();
    assert_eq!(
        guard(firm.committed()).await.unwrap().text(),
        "Please hold."
    );
    assert!(model.requests().is_empty(), "say_with asks no model");
    // generate: a turn on the context as it is (its last message is ours).
    let g = s.generate().await.expect("generate");
    let r = guard(g.committed()).await.expect("generated");
    assert_eq!(r.text(), "Answer to Please hold..");
    let requests = model.requests();
    assert_eq!(requests.len(), 1);
    let last = requests[0].last_message();
    assert_eq!(
        (last["role"].as_str(), last["content"].as_str()),
        (Some("assistant"), Some("Please hold."))
    );
    let ctx = s.context().await.unwrap();
    assert_eq!(
        texts(&ctx, Role::Assistant),
        ["Welcome!", "Please hold.", "Answer to Please hold.."]
    );
}

#[tokio::test]
async fn update_settings_changes_the_next_request_and_is_stored() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w1", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client
        .place(
            "settings",
            SessionSpec::default().with_instructions("Be brief."),
        )
        .await
        .unwrap();
    let spec = s
        .update_settings(json!({"instructions": "Be terse.", "options": {"temperature": 0.25}}))
        .await
        .expect("updated");
    assert_eq!(spec.instructions.as_deref(), Some("Be terse."));
    assert_eq!(spec.options.temperature, Some(0.25));
    // The checkpoint holds the new spec (a failover keeps it): it was stored
    // before the answer.
    let nats = connect(&server.url(), "inspector").await.unwrap();
    let kv = jetstream::new(nats)
        .get_key_value("colloquy_checkpoints")
        .await
        .unwrap();
    let stored = kv.get(session_key(s.id()).unwrap()).await.unwrap().unwrap();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored["spec"]["instructions"], "Be terse.");
    // The next request carries them.
    let r = s.send_text_tracked("hello").await.unwrap();
    assert_eq!(
        guard(r.committed()).await.unwrap().text(),
        "Answer to hello."
    );
    let body = model.requests().last().unwrap().json();
    assert_eq!(
        body["messages"][0],
        json!({"role": "system", "content": "Be terse."})
    );
    assert_eq!(body["temperature"], 0.25);
    // The policy applies as at placement; what a running session cannot
    // change is refused.
    let refused = s
        .update_settings(json!({"model": "big"}))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ClusterError::Policy(PolicyViolation::ModelNotAllowed { .. })
        ),
        "{refused:?}"
    );
    let refused = s
        .update_settings(json!({"tools": ["x"]}))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ClusterError::Refused { kind, .. } if kind == "invalid"),
        "{refused:?}"
    );
    // `{}` reads the spec, unchanged by the refusals.
    let now = s.update_settings(json!({})).await.unwrap();
    assert_eq!(now, spec);
}

#[tokio::test]
async fn replace_context_replaces_the_history_the_model_sees() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w1", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("replace", SessionSpec::default())
        .await
        .unwrap();
    let first = s.send_text_tracked("question one").await.unwrap();
    guard(first.played_out()).await.unwrap();
    let mut history = ChatContext::new();
    history.add_user("Earlier question");
    history.add_assistant("Earlier answer");
    s.replace_context(history.clone()).await.expect("replaced");
    assert_eq!(s.context().await.unwrap(), history);
    let r = s.send_text_tracked("next").await.unwrap();
    assert_eq!(
        guard(r.committed()).await.unwrap().text(),
        "Answer to next."
    );
    let messages = model.requests().last().unwrap().json()["messages"].clone();
    assert_eq!(
        messages,
        json!([
            {"role": "user", "content": "Earlier question"},
            {"role": "assistant", "content": "Earlier answer"},
            {"role": "user", "content": "next"}
        ])
    );
    // Refused while a turn is in flight.
    let mut rx = s.subscribe().await.unwrap();
    let slow = s.send_text_tracked("slow one").await.unwrap();
    next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    let refused = s.replace_context(ChatContext::new()).await.unwrap_err();
    assert!(
        matches!(&refused, ClusterError::Refused { kind, .. } if kind == "turn_in_flight"),
        "{refused:?}"
    );
    slow.interrupt().await.unwrap();
}

#[tokio::test]
async fn a_remote_reply_is_interrupted_and_dropped_when_withdrawn() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w1", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("cut", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let slow = s.send_text_tracked("slow question").await.unwrap();
    let turn = guard(slow.started()).await.unwrap();
    assert_eq!(slow.turn(), Some(turn));
    next(&mut rx, |e| {
        e.turn == turn && matches!(e.bus(), Some(EventKind::Token(_)))
    })
    .await;
    slow.interrupt().await.expect("interrupted");
    let (_, end, _, _) = finish(&mut rx, turn).await;
    assert_eq!(end, TurnEnd::Cancelled);
    let r = guard(slow.played_out()).await.expect("over");
    assert_eq!((r.turn, r.end), (turn, TurnEnd::Cancelled));
    // Interrupting a reply that is over is a no-op.
    slow.interrupt().await.unwrap();
    // Clones share what is known.
    let again = slow.clone();
    assert!(again.is_done());
    assert_eq!(again.turn(), Some(turn));
    // A reply of the next turn resolves on its own.
    let next_reply = s.send_text_tracked("question two").await.unwrap();
    let r = guard(next_reply.committed()).await.unwrap();
    assert_eq!(
        (r.turn, r.text().as_str()),
        (TurnId(turn.0 + 1), "Answer to question two.")
    );
}

#[tokio::test]
async fn a_remote_reply_whose_worker_died_is_dropped() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let w1 = worker(&server, &model, "w1", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let s = client.place("died", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let done = s.send_text_tracked("question one").await.unwrap();
    let committed = guard(done.committed()).await.unwrap();
    // 400 tokens over 2 s: still in flight when its worker is killed.
    let slow = s.send_text_tracked("long question").await.unwrap();
    let turn = guard(slow.started()).await.unwrap();
    next(&mut rx, |e| {
        e.turn == turn && matches!(e.bus(), Some(EventKind::Token(_)))
    })
    .await;
    w1.abort().await;
    let _w2 = worker(&server, &model, "w2", 10, SHORT_LEASE).await;
    // The new owner ends the turn in flight as failed and does not know the
    // reply: it is dropped; the committed one is over as committed.
    let r = guard(slow.committed()).await;
    assert!(matches!(r, Err(RemoteReplyError::Dropped)), "{r:?}");
    let r = guard(done.played_out()).await.unwrap();
    assert_eq!(r, committed);
    let resumed = next(&mut rx, |e| e.worker == "w2").await;
    assert!(resumed.turn >= turn, "{resumed:?}");
}
