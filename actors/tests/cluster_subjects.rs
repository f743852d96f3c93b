//! The cluster's subjects (feature `nats`): per-class event subjects (a
//! speech-only subscriber gets no token; a session that publishes speech
//! only encodes none), several classes merged back into the session's order,
//! batches that keep it, a lone event not delayed, and inputs refused on
//! another kind's subject.
//!
//! Each test starts its own `nats-server -js` (see `tests/support/nats.rs`).
//! Tests wait on events; timeouts only turn a hang into a failure.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cluster_common::*;
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::{
    EventClass, EventClasses, RemoteEvent, RemoteEventKind, RemoteEvents, SessionSpec, connect,
    session_key,
};
use colloquy_actors::{SessionId, TurnId};
use nats::NatsServer;
use serde_json::{Value, json};

/// "slow" questions get 40 tokens 25 ms apart; anything else 60 tokens at
/// once, a sentence every six (so a segmenter makes speakables between them).
async fn burst_model() -> MockServer {
    MockServer::start(|req| {
        let last = req.last_message();
        let q = last["content"].as_str().unwrap_or("");
        if q.contains("slow") {
            let words: Vec<String> = (0..40).map(|i| format!("w{i} ")).collect();
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            return MockResponse::text_paced(&refs, Duration::from_millis(25));
        }
        let words: Vec<String> = (0..60)
            .map(|i| {
                if i % 6 == 5 {
                    format!("word{i}. ")
                } else {
                    format!("word{i} ")
                }
            })
            .collect();
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        MockResponse::text(&refs)
    })
    .await
    .expect("mock server")
}

fn speaking() -> SessionSpec {
    SessionSpec {
        segmenter: true,
        ..SessionSpec::default()
    }
}

fn is_token(ev: &RemoteEvent) -> bool {
    matches!(ev.bus(), Some(EventKind::Token(_)))
}

fn class(ev: &RemoteEvent) -> EventClass {
    match &ev.kind {
        RemoteEventKind::Bus(k) => EventClass::of(k),
        _ => EventClass::Lifecycle,
    }
}

/// The events of `turn` up to its end and its last speakable (which may
/// follow the end).
async fn spoken_turn(rx: &mut RemoteEvents, turn: TurnId) -> Vec<RemoteEvent> {
    let (mut ended, mut last_spoken, mut got) = (false, false, Vec::new());
    while !(ended && last_spoken) {
        let ev = next(rx, |e| e.turn == turn).await;
        match ev.bus() {
            Some(EventKind::TurnFinished(end)) => {
                assert_eq!(end, &TurnEnd::Stop);
                ended = true;
            }
            Some(EventKind::Speakable { last: true, .. }) => last_spoken = true,
            _ => {}
        }
        got.push(ev);
    }
    got
}

/// Every event up to the one at `marker`.
async fn until(rx: &mut RemoteEvents, marker: u64) -> Vec<RemoteEvent> {
    let mut got = Vec::new();
    loop {
        let ev = next(rx, |_| true).await;
        let done = ev.seq >= marker;
        got.push(ev);
        if done {
            return got;
        }
    }
}

fn increasing(events: &[RemoteEvent]) -> bool {
    events.windows(2).all(|w| w[0].seq < w[1].seq)
}

fn speakable_text(events: &[RemoteEvent]) -> String {
    events
        .iter()
        .filter_map(|e| match e.bus() {
            Some(EventKind::Speakable { text, .. }) => Some(text.to_string()),
            _ => None,
        })
        .collect()
}

fn squeeze(s: &str) -> String {
    s.split_whitespace().collect()
}

#[tokio::test]
async fn a_speech_only_subscriber_receives_no_token_and_a_speech_only_session_encodes_none() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = burst_model().await;
    let w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;

    // Everything published; one subscriber of speech and lifecycle, one of all.
    let s = client.place("tts", speaking()).await.unwrap();
    let mut speech = s.subscribe_to(EventClasses::speech()).await.unwrap();
    let mut all = s.subscribe().await.unwrap();
    s.send_text("burst").await.unwrap();
    let t = next(&mut all, |e| e.bus() == Some(&EventKind::TurnStarted))
        .await
        .turn;
    let full = spoken_turn(&mut all, t).await;
    next(&mut speech, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    let heard = spoken_turn(&mut speech, t).await;
    let text: String = full
        .iter()
        .filter_map(|e| match e.bus() {
            Some(EventKind::Token(t)) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(full.iter().filter(|e| is_token(e)).count(), 60);
    assert!(
        heard
            .iter()
            .all(|e| matches!(class(e), EventClass::Speech | EventClass::Lifecycle)),
        "speech subscriber got {heard:?}"
    );
    assert!(increasing(&heard) && increasing(&full));
    assert_eq!(squeeze(&speakable_text(&heard)), squeeze(&text));
    let full_speech: Vec<u64> = full
        .iter()
        .filter(|e| matches!(class(e), EventClass::Speech | EventClass::Lifecycle))
        .map(|e| e.seq)
        .collect();
    let heard_seqs: Vec<u64> = heard.iter().map(|e| e.seq).collect();
    assert_eq!(
        heard_seqs, full_speech,
        "the same events, in the same order"
    );

    // A session that publishes speech only: even the wildcard gets no
    // token, and the worker encodes none.
    let tokens_before = w.events_encoded(EventClass::Tokens);
    let speech_before = w.events_encoded(EventClass::Speech);
    let only = SessionSpec {
        event_classes: Some(vec![EventClass::Speech]),
        ..speaking()
    };
    let s = client.place("tts-only", only).await.unwrap();
    let mut all = s.subscribe().await.unwrap();
    s.send_text("burst").await.unwrap();
    let t = next(&mut all, |e| e.bus() == Some(&EventKind::TurnStarted))
        .await
        .turn;
    let got = spoken_turn(&mut all, t).await;
    assert!(
        got.iter()
            .all(|e| matches!(class(e), EventClass::Speech | EventClass::Lifecycle)),
        "{got:?}"
    );
    assert_eq!(squeeze(&speakable_text(&got)), squeeze(&text));
    assert_eq!(w.events_encoded(EventClass::Tokens), tokens_before);
    assert!(w.events_encoded(EventClass::Speech) > speech_before);
}

#[tokio::test]
async fn several_classes_merge_into_the_sessions_order_and_batches_keep_it() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = burst_model().await;
    let worker_nats = connect(&server.url(), "w").await.unwrap();
    let w = worker_on(worker_nats.clone(), &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("order", speaking()).await.unwrap();
    let mut drive = s.subscribe().await.unwrap();
    let mut all = s.subscribe().await.unwrap();
    let wanted: EventClasses = [
        EventClass::Lifecycle,
        EventClass::Tokens,
        EventClass::Speech,
        EventClass::User,
    ]
    .into_iter()
    .collect();
    let mut merged = s.subscribe_to(wanted).await.unwrap();
    let mut tokens = s.subscribe_to(EventClass::Tokens.into()).await.unwrap();

    for _ in 0..3 {
        s.send_text("burst").await.unwrap();
        let t = next(&mut drive, |e| e.bus() == Some(&EventKind::TurnStarted))
            .await
            .turn;
        spoken_turn(&mut drive, t).await;
    }
    // A burst of user events published faster than one message each.
    let id = SessionId::from("order");
    let local = w.local_session(&id).expect("runs on w");
    let sent_before = worker_nats
        .statistics()
        .out_messages
        .load(Ordering::Relaxed);
    for i in 0..200 {
        local.user_transcript(format!("i{i}"), false);
    }
    let marker = s.user_transcript("end", false).await.unwrap();
    let from_all = until(&mut all, marker).await;
    let sent = worker_nats
        .statistics()
        .out_messages
        .load(Ordering::Relaxed)
        - sent_before;
    let from_merged = until(&mut merged, marker).await;
    assert!(increasing(&from_all) && increasing(&from_merged));
    let burst: Vec<String> = from_all
        .iter()
        .filter_map(|e| match e.bus() {
            Some(EventKind::UserTranscript { text, .. }) if text.starts_with('i') => {
                Some(text.to_string())
            }
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..200).map(|i| format!("i{i}")).collect();
    assert_eq!(burst, expected, "the burst in order");
    eprintln!("201 events published in {sent} messages");
    assert!(
        sent < 201,
        "201 events in {sent} messages: consecutive queued events are batched"
    );

    // What the merge gives is the full stream without the classes not asked for.
    let seqs = |evs: &[RemoteEvent], keep: &dyn Fn(&RemoteEvent) -> bool| -> Vec<u64> {
        evs.iter().filter(|e| keep(e)).map(|e| e.seq).collect()
    };
    assert_eq!(
        seqs(&from_merged, &|_| true),
        seqs(&from_all, &|e| wanted.contains(class(e)))
    );
    assert!(from_all.iter().any(|e| class(e) == EventClass::Usage));

    // One class alone: every token, in order.
    let count = from_all.iter().filter(|e| is_token(e)).count();
    assert_eq!(count, 180);
    let mut got = Vec::new();
    while got.len() < count {
        got.push(next(&mut tokens, |_| true).await);
    }
    assert!(got.iter().all(is_token) && increasing(&got));
    assert_eq!(
        seqs(&got, &|_| true),
        seqs(&from_all, &|e| is_token(e)),
        "the tokens-only subscriber"
    );
}

#[tokio::test]
async fn a_lone_cancel_is_not_delayed_by_batching() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = burst_model().await;
    let _w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("lone", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let mut took = Vec::new();
    for _ in 0..10 {
        s.send_text("slow question").await.unwrap();
        let t = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted))
            .await
            .turn;
        next(&mut rx, |e| e.turn == t && is_token(e)).await;
        let start = Instant::now();
        s.cancel().await.unwrap();
        // Nothing else is published after the cut: a batch waiting to be
        // filled would never come.
        let end = next(&mut rx, |e| {
            e.turn == t && matches!(e.bus(), Some(EventKind::TurnFinished(_)))
        })
        .await;
        took.push(start.elapsed());
        assert_eq!(
            end.bus(),
            Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
        );
    }
    took.sort();
    eprintln!(
        "cancel -> cancelled, one session: p50 {:?}, max {:?}",
        took[5], took[9]
    );
    // In-process and on an idle machine this is well under a millisecond;
    // the bound only catches a batch timer.
    assert!(took[5] < Duration::from_millis(250), "{took:?}");
}

#[tokio::test]
async fn inputs_are_refused_on_another_kinds_subject() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = burst_model().await;
    let _w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("kinds", SessionSpec::default()).await.unwrap();
    let raw = connect(&server.url(), "raw").await.unwrap();
    let key = session_key(s.id()).unwrap();
    let ask = |kind: &str, op: Value| {
        let raw = raw.clone();
        let subject = format!("colloquy.session.{key}.in{kind}");
        async move {
            match raw.request(subject, Bytes::from(op.to_string())).await {
                Ok(msg) => serde_json::from_slice::<Value>(&msg.payload).unwrap(),
                Err(e) => json!({"request_error": e.kind().to_string()}),
            }
        }
    };
    let refused = |v: &Value| v["error"]["kind"] == "not_allowed";
    assert!(refused(&ask(".speech", json!({"op": "cancel"})).await));
    assert!(refused(&ask(".speech", json!({"op": "close"})).await));
    assert!(refused(&ask(".speech", json!({"op": "context"})).await));
    assert!(refused(&ask(".control", json!({"op": "context"})).await));
    assert!(refused(
        &ask(".admin", json!({"op": "send_text", "text": "x"})).await
    ));
    let ok = ask(".speech", json!({"op": "user_speech_started"})).await;
    assert!(ok["ok"].is_u64(), "{ok}");
    let ok = ask(".admin", json!({"op": "context"})).await;
    assert!(ok["ok"]["items"].is_array(), "{ok}");
    // The subject of the previous scheme has no responder.
    let old = ask("", json!({"op": "context"})).await;
    assert!(old.get("request_error").is_some(), "{old}");
    // The session still works through the client.
    s.cancel().await.unwrap();
    assert!(s.context().await.is_ok());
}
