//! Which owner a subscriber follows (review findings of issue 19's event
//! fence), each pinned by a test that failed before the fix:
//! - a subscriber of some classes without lifecycle never saw `resumed`, so
//!   after a failover it dropped the new owner's events forever;
//! - a new subscription trusted the first generation it saw, so one forged
//!   event sent before the genuine ones hid all of them;
//! - the hold for an unannounced generation kept the first 8 events, so a
//!   forger filling it evicted the new owner's failed end of the turn.
//!
//! Servers, workers and waits as in `cluster.rs` (see `cluster_common`).

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use bytes::Bytes;
use cluster_common::*;
use colloquy_actors::TurnId;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::{EventClass, EventClasses, RemoteEventKind, SessionSpec, connect};
use nats::NatsServer;

/// A forged token of `session`'s events at generation `generation`.
fn forged(session: &str, turn: u64, generation: u64, n: u64) -> Bytes {
    let ev = serde_json::json!({
        "session": session, "turn": turn, "seq": (generation << 32) + n, "worker": "w",
        "kind": "token", "payload": {"text": "FORGED"},
    });
    Bytes::from(ev.to_string())
}

#[tokio::test]
async fn a_tokens_only_subscriber_follows_a_failover() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let a = worker(&server, &model, "a", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("tokens-only", SessionSpec::default())
        .await
        .unwrap();
    let mut all = s.subscribe().await.unwrap();
    let only_tokens: EventClasses = [EventClass::Tokens].into_iter().collect();
    let mut tokens = s.subscribe_to(only_tokens).await.unwrap();
    let (_, end, text, w) = turn(&s, &mut all, "question one").await;
    assert_eq!((end, w.as_str()), (TurnEnd::Stop, "a"));
    let mut seen = String::new();
    while seen != text {
        let ev = next(&mut tokens, |_| true).await;
        match ev.bus() {
            Some(EventKind::Token(t)) => seen.push_str(t),
            other => panic!("only tokens were asked for: {other:?}"),
        }
    }

    let _b = worker(&server, &model, "b", 10, SHORT_LEASE).await;
    a.abort().await;
    next(&mut all, |e| {
        matches!(e.kind, RemoteEventKind::Resumed { .. })
    })
    .await;
    let (_, end, text, w) = turn(&s, &mut all, "question two").await;
    assert_eq!((end, w.as_str()), (TurnEnd::Stop, "b"));
    // The tokens-only subscriber gets the new owner's tokens, and nothing else.
    let mut seen = String::new();
    while seen != text {
        let ev = next(&mut tokens, |_| true).await;
        match ev.bus() {
            Some(EventKind::Token(t)) => {
                assert_eq!(ev.worker, "b", "{ev:?}");
                seen.push_str(t);
            }
            other => panic!("only tokens were asked for: {other:?}"),
        }
    }
    assert_eq!(seen, "Answer to question two.");
}

#[tokio::test]
async fn a_forged_first_event_hides_nothing_from_a_new_subscription() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("fresh", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    // Before any genuine event reaches the new subscription: a generation far
    // above the owner's.
    let forger = connect(&server.url(), "forger").await.unwrap();
    let subject = s.events_subject(EventClass::Tokens);
    forger
        .publish(subject, forged("fresh", 1, 1_000, 1))
        .await
        .unwrap();
    forger.flush().await.unwrap();

    let (t, end, text, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!((t, end), (TurnId(1), TurnEnd::Stop));
    assert_eq!(text, "Answer to question one.");
}

#[tokio::test]
async fn a_forger_filling_the_hold_does_not_evict_the_new_owners_events() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let a = worker(&server, &model, "a", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("flooded", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    // A turn in flight when its worker dies.
    s.send_text("slow question").await.unwrap();
    let started = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    next(&mut rx, |e| matches!(e.bus(), Some(EventKind::Token(_)))).await;
    // The hold filled with a forged generation far above the new owner's.
    let forger = connect(&server.url(), "forger").await.unwrap();
    let subject = s.events_subject(EventClass::Tokens);
    for n in 0..400 {
        forger
            .publish(subject.clone(), forged("flooded", started.turn.0, 99, n))
            .await
            .unwrap();
    }
    forger.flush().await.unwrap();

    let _b = worker(&server, &model, "b", 10, SHORT_LEASE).await;
    a.abort().await;
    // The new owner's failed end of the turn in flight arrives, then its
    // announcement; nothing forged is given out.
    let mut kinds = Vec::new();
    loop {
        let ev = next(&mut rx, |_| true).await;
        if let Some(EventKind::Token(t)) = ev.bus() {
            assert_ne!(&**t, "FORGED", "{ev:?}");
        }
        if ev.worker == "b" {
            kinds.push(ev.kind.clone());
        }
        if matches!(ev.kind, RemoteEventKind::Resumed { .. }) {
            break;
        }
    }
    assert_eq!(
        kinds.first(),
        Some(&RemoteEventKind::Bus(EventKind::TurnFinished(
            TurnEnd::Failed("worker lost".into())
        ))),
        "{kinds:?}"
    );
    let (_, end, text, w) = turn(&s, &mut rx, "question two").await;
    assert_eq!(
        (end, text.as_str(), w.as_str()),
        (TurnEnd::Stop, "Answer to question two.", "b")
    );
}
