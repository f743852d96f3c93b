//! The wire's own tests: every event kind has a wire name and round-trips,
//! the bytes written are the documented ones, and garbage is an error, not a
//! panic.

use std::collections::BTreeSet;
use std::sync::Arc;

use colloquy::llm::{
    FailureReason, LlmError, ProviderChoice, ProviderFailure, SelectionReason, ToolCall, Usage,
};
use serde_json::{Value, json};

use super::*;
use crate::bus::{EventKindName, SpeculationOutcome, ToolOutput, TurnEnd};

/// At least one event of every kind (several where the payload has cases).
fn samples() -> Vec<EventKind> {
    vec![
        EventKind::TurnStarted,
        EventKind::Token(Arc::from("Hel")),
        EventKind::Reasoning(Arc::from("hmm")),
        EventKind::Refusal(Arc::from("no")),
        EventKind::ToolCall(Arc::new(ToolCall {
            index: 0,
            id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            valid_json: true,
        })),
        EventKind::ToolResult(Arc::new(ToolOutput {
            call_id: "c1".into(),
            name: "f".into(),
            output: "ok".into(),
            is_error: false,
        })),
        EventKind::Usage(Arc::new(Usage::estimate(100, 5))),
        EventKind::Structured(Arc::new(json!({"a": 1}))),
        EventKind::TurnFinished(TurnEnd::Stop),
        EventKind::TurnFinished(TurnEnd::Cancelled),
        EventKind::TurnFinished(TurnEnd::Failed(Arc::from(WORKER_LOST))),
        EventKind::TurnFinished(TurnEnd::Other(Arc::from("weird"))),
        EventKind::Interrupted { heard_chars: 4 },
        EventKind::UserSpeechStarted,
        EventKind::UserTranscript {
            text: Arc::from("hi"),
            is_final: true,
            heard: None,
        },
        EventKind::UserTranscript {
            text: Arc::from("what is the weather"),
            is_final: true,
            heard: Some(crate::bus::HeardSpan {
                start: 3_200,
                end: 19_840,
                sample_rate: 8_000,
            }),
        },
        EventKind::Speakable {
            text: Arc::from("Hi."),
            last: true,
        },
        EventKind::SpeechPlayed { chars: 3 },
        EventKind::UserSpeechEnded,
        EventKind::PlaybackPaused { heard_chars: 7 },
        EventKind::PlaybackResumed { heard_chars: 7 },
        EventKind::Backchannel {
            text: Arc::from("uh-huh"),
        },
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Miss,
            usage: Some(Arc::new(Usage::estimate(10, 2))),
        },
        EventKind::ProviderSelected(Arc::new(ProviderChoice {
            index: 1,
            label: Arc::from("backup"),
            base_url: Arc::from("http://127.0.0.1:1/v1"),
            reason: SelectionReason::Fallback,
            continuation: true,
        })),
        EventKind::ProviderFailed(Arc::new(ProviderFailure {
            index: 0,
            label: Arc::from("primary"),
            base_url: Arc::from("http://127.0.0.1:1/v1"),
            reason: FailureReason::Error {
                kind: "http",
                message: "503".into(),
            },
            after_output: false,
            usage: None,
        })),
        EventKind::ProviderFailed(Arc::new(ProviderFailure {
            index: 1,
            label: Arc::from("backup"),
            base_url: Arc::from("http://127.0.0.1:2/v1"),
            reason: FailureReason::CircuitOpen,
            after_output: false,
            usage: None,
        })),
        EventKind::ProviderFailed(Arc::new(ProviderFailure {
            index: 2,
            label: Arc::from("hedge"),
            base_url: Arc::from("http://127.0.0.1:3/v1"),
            reason: FailureReason::HedgeLost,
            after_output: true,
            usage: Some(Usage::estimate(40, 8)),
        })),
        EventKind::SpeechAudio(crate::bus::AudioStage::Played),
        EventKind::TurnLatency(Arc::new(
            crate::latency::TurnLatency::from_json(
                TurnEnd::Failed(Arc::from("http: 503")),
                &serde_json::json!({
                    "turn": 3, "speech_end_to_final_ms": -12.5, "final_to_turn_start_ms": 1.0,
                    "turn_start_to_first_token_ms": 300.0, "first_token_to_speakable_ms": null,
                    "speakable_to_heard_ms": null, "end_to_end_ms": null, "pauses": 1,
                    "resumes": 1, "cut_at_chars": 7, "fallbacks": 2, "hedges": 0,
                    "session_closed": true,
                }),
            )
            .expect("a report"),
        )),
    ]
}

fn encode(kind: &EventKind) -> Vec<u8> {
    encode_bus("s 1", 3, (2 << 32) + 7, "w1", kind)
}

#[test]
fn every_bus_event_round_trips() {
    for kind in samples() {
        let ev = decode_event(&encode(&kind)).unwrap();
        assert_eq!(ev.session.as_str(), "s 1");
        assert_eq!(
            (ev.turn, ev.seq, ev.generation()),
            (TurnId(3), (2 << 32) + 7, 2)
        );
        assert_eq!(ev.worker, "w1");
        assert_eq!(ev.kind, RemoteEventKind::Bus(kind));
    }
}

/// A kind added to the bus without a sample here (so without a wire test)
/// fails: the samples name every entry of the bus's table of names.
#[test]
fn every_event_kind_name_round_trips_through_the_wire_table() {
    let sampled: BTreeSet<&str> = samples().iter().map(EventKind::name).collect();
    let all: BTreeSet<&str> = EventKindName::ALL.iter().map(|n| n.as_str()).collect();
    assert_eq!(sampled, all, "an event kind has no wire sample");
    assert_eq!(all.len(), EventKindName::ALL.len(), "a name is used twice");
    for kind in samples() {
        let name = kind.kind_name();
        assert_eq!(EventKindName::from_name(kind.name()), Some(name));
        let v: Value = serde_json::from_slice(&encode(&kind)).unwrap();
        assert_eq!(v["kind"], name.as_str(), "{kind:?}");
    }
    for &name in WorkerEventName::ALL {
        assert_eq!(WorkerEventName::from_name(name.as_str()), Some(name));
        assert_eq!(
            EventKindName::from_name(name.as_str()),
            None,
            "worker event {} shadows a bus event",
            name.as_str()
        );
    }
}

/// The exact bytes of every kind (the wire is a contract with services in
/// other languages: a change here is a change of the protocol).
#[test]
fn the_bytes_on_the_wire() {
    let written: Vec<String> = samples()
        .iter()
        .map(|k| {
            let bytes = encode_bus("s", 1, 2, "w", k);
            let text = String::from_utf8(bytes).unwrap();
            let start = r#"{"session":"s","turn":1,"seq":2,"worker":"w","kind":"#;
            text.strip_prefix(start).unwrap().to_string()
        })
        .collect();
    let expected = [
        r#""turn_started","payload":{}}"#,
        r#""token","payload":{"text":"Hel"}}"#,
        r#""reasoning","payload":{"text":"hmm"}}"#,
        r#""refusal","payload":{"text":"no"}}"#,
        r#""tool_call","payload":{"index":0,"id":"c1","name":"f","arguments":"{}","valid_json":true}}"#,
        r#""tool_result","payload":{"call_id":"c1","name":"f","output":"ok","is_error":false}}"#,
        r#""usage","payload":{"prompt_tokens":25,"completion_tokens":2,"total_tokens":27,"cached_tokens":null,"reasoning_tokens":null,"estimated":true}}"#,
        r#""structured","payload":{"value":{"a":1}}}"#,
        r#""turn_finished","payload":{"end":"stop"}}"#,
        r#""turn_finished","payload":{"end":"cancelled"}}"#,
        r#""turn_finished","payload":{"end":"failed","message":"worker lost"}}"#,
        r#""turn_finished","payload":{"end":"other","message":"weird"}}"#,
        r#""interrupted","payload":{"heard_chars":4}}"#,
        r#""user_speech_started","payload":{}}"#,
        r#""user_transcript","payload":{"text":"hi","is_final":true}}"#,
        r#""user_transcript","payload":{"text":"what is the weather","is_final":true,"heard":{"start":3200,"end":19840,"sample_rate":8000}}}"#,
        r#""speakable","payload":{"text":"Hi.","last":true}}"#,
        r#""speech_played","payload":{"chars":3}}"#,
        r#""user_speech_ended","payload":{}}"#,
        r#""playback_paused","payload":{"heard_chars":7}}"#,
        r#""playback_resumed","payload":{"heard_chars":7}}"#,
        r#""backchannel","payload":{"text":"uh-huh"}}"#,
        r#""speculation_ended","payload":{"outcome":"miss","usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"cached_tokens":null,"reasoning_tokens":null,"estimated":true}}}"#,
        r#""provider_selected","payload":{"index":1,"label":"backup","base_url":"http://127.0.0.1:1/v1","reason":"fallback","continuation":true}}"#,
        r#""provider_failed","payload":{"index":0,"label":"primary","base_url":"http://127.0.0.1:1/v1","reason":"http","message":"503","after_output":false,"usage":null}}"#,
        r#""provider_failed","payload":{"index":1,"label":"backup","base_url":"http://127.0.0.1:2/v1","reason":"circuit_open","message":null,"after_output":false,"usage":null}}"#,
        r#""provider_failed","payload":{"index":2,"label":"hedge","base_url":"http://127.0.0.1:3/v1","reason":"hedge_lost","message":null,"after_output":true,"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12,"cached_tokens":null,"reasoning_tokens":null,"estimated":true}}}"#,
        r#""speech_audio","payload":{"stage":"played"}}"#,
        r#""turn_latency","payload":{"turn":1,"end":"failed","speech_end_to_final_ms":-12.5,"final_to_turn_start_ms":1.0,"turn_start_to_first_token_ms":300.0,"first_token_to_speakable_ms":null,"speakable_to_heard_ms":null,"speakable_to_first_audio_ms":null,"first_audio_to_played_ms":null,"played_to_heard_ms":null,"end_to_end_ms":null,"pauses":1,"resumes":1,"cut_at_chars":7,"fallbacks":2,"hedges":0,"session_closed":true,"message":"http: 503"}}"#,
    ];
    assert_eq!(written, expected);
}

#[test]
fn the_documented_shape() {
    let token = EventKind::Token(Arc::from("Hel"));
    let v: Value = serde_json::from_slice(&encode_bus("call-42", 3, 12, "w1", &token)).unwrap();
    assert_eq!(
        v,
        json!({"session": "call-42", "turn": 3, "seq": 12, "worker": "w1",
               "kind": "token", "payload": {"text": "Hel"}})
    );
    let input: Input =
        serde_json::from_str(r#"{"op":"speech_played","turn":3,"chars":42}"#).unwrap();
    assert_eq!(input, Input::SpeechPlayed { turn: 3, chars: 42 });
    assert_eq!(
        serde_json::from_str::<Input>(r#"{"op":"cancel"}"#).unwrap(),
        Input::Cancel
    );
    assert_eq!(
        String::from_utf8(Reply::Ok(json!(5)).encode()).unwrap(),
        r#"{"ok":5}"#
    );
}

/// `provider_failed` decodes into the bus event with its reason (it was
/// `Unknown` before), every error kind of the core included; a kind from a
/// newer version is kept in the message.
#[test]
fn provider_failed_round_trips_with_its_reason() {
    for &kind in LlmError::KINDS {
        let failed = EventKind::ProviderFailed(Arc::new(ProviderFailure {
            index: 0,
            label: Arc::from("p"),
            base_url: Arc::from("http://h/v1"),
            reason: FailureReason::Error {
                kind,
                message: format!("{kind} happened"),
            },
            after_output: true,
            usage: Some(Usage::estimate(8, 4)),
        }));
        let ev = decode_event(&encode(&failed)).unwrap();
        assert_eq!(ev.kind, RemoteEventKind::Bus(failed), "{kind}");
    }
    let newer = decode_event(
        br#"{"session":"s","turn":1,"seq":1,"kind":"provider_failed","payload":{"index":0,"label":"p","base_url":"u","reason":"quota","message":"spent"}}"#,
    )
    .unwrap();
    let Some(EventKind::ProviderFailed(f)) = newer.bus() else {
        panic!("{newer:?}");
    };
    assert_eq!(
        f.reason,
        FailureReason::Error {
            kind: "other",
            message: "quota: spent".into()
        }
    );
    assert_eq!(EventClass::of(newer.bus().unwrap()), EventClass::Usage);
}

/// A tracked reply's state round-trips, turns moved to the wire's; items
/// that do not fit are omitted.
#[test]
fn a_reply_state_round_trips() {
    use crate::reply::{Reply as Outcome, ReplyState};
    let mut ctx = colloquy::context::ChatContext::new();
    ctx.add_assistant("Hello there!");
    let outcome = |turn| Outcome {
        turn: TurnId(turn),
        end: TurnEnd::Failed(Arc::from("http: 503")),
        items: ctx.items.clone(),
        interrupted: true,
    };
    for (local, wire) in [
        (ReplyState::Queued, ReplyState::Queued),
        (
            ReplyState::Started(TurnId(2)),
            ReplyState::Started(TurnId(12)),
        ),
        (
            ReplyState::Committed(outcome(2)),
            ReplyState::Committed(outcome(12)),
        ),
        (ReplyState::Done(outcome(2)), ReplyState::Done(outcome(12))),
        (ReplyState::Dropped, ReplyState::Dropped),
    ] {
        let v = encode_reply_state(&local, 10, 1 << 20);
        assert_eq!(v["state"], state_label(&local));
        assert_eq!(decode_reply_state(&v).unwrap(), wire);
    }
    let v = encode_reply_state(&ReplyState::Done(outcome(1)), 0, 10);
    assert_eq!(v["items_omitted"], true);
    let ReplyState::Done(r) = decode_reply_state(&v).unwrap() else {
        panic!("{v}");
    };
    assert!(r.items.is_empty() && r.interrupted);
    assert!(decode_reply_state(&json!({"state": "maybe"})).is_err());
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [
        &b""[..],
        b"{",
        b"[]",
        b"{\"session\":1}",
        b"{\"session\":\"s\",\"turn\":-1,\"seq\":1,\"kind\":\"token\"}",
    ] {
        assert!(
            matches!(decode_event(bytes), Err(DecodeError::Envelope(_))),
            "{bytes:?}"
        );
    }
    let no_text =
        decode_event(b"{\"session\":\"s\",\"turn\":1,\"seq\":1,\"kind\":\"token\",\"payload\":{}}");
    assert!(
        matches!(no_text, Err(DecodeError::Payload { kind: "token", .. })),
        "{no_text:?}"
    );
    let outcome = decode_event(
        br#"{"session":"s","turn":1,"seq":1,"kind":"speculation_ended","payload":{"outcome":"maybe"}}"#,
    );
    assert_eq!(outcome, Err(DecodeError::UnknownOutcome("maybe".into())));
    let unknown =
        decode_event(br#"{"session":"s","turn":1,"seq":1,"kind":"later","payload":{"x":1}}"#)
            .unwrap();
    assert!(matches!(unknown.kind, RemoteEventKind::Unknown { .. }));
}

#[test]
fn a_batch_is_one_event_per_line_and_every_input_has_its_kind() {
    let mut batch = Vec::new();
    for (seq, text) in [(4, "Hel"), (8, "lo\nthere")] {
        if !batch.is_empty() {
            batch.push(b'\n');
        }
        encode_bus_into(
            &mut batch,
            "s",
            1,
            seq,
            "w",
            &EventKind::Token(Arc::from(text)),
        );
    }
    // A line break inside a text is escaped: lines are events.
    assert_eq!(batch.iter().filter(|b| **b == b'\n').count(), 1);
    let events: Vec<RemoteEvent> = decode_events(&batch).map(Result::unwrap).collect();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 8]);
    assert_eq!(
        events[1].bus(),
        Some(&EventKind::Token(Arc::from("lo\nthere")))
    );
    // One object (the previous format) is a batch of one; blank lines are skipped.
    assert_eq!(
        decode_events(&encode_bus("s", 1, 4, "w", &EventKind::TurnStarted)).count(),
        1
    );
    assert_eq!(decode_events(b"\n \n").count(), 0);

    let kinds = [
        (r#"{"op":"user_speech_started"}"#, InputKind::Speech),
        (r#"{"op":"user_speech_ended"}"#, InputKind::Speech),
        (r#"{"op":"user_transcript","text":"x"}"#, InputKind::Speech),
        (
            r#"{"op":"speech_played","turn":1,"chars":1}"#,
            InputKind::Speech,
        ),
        (r#"{"op":"send_text","text":"x"}"#, InputKind::Control),
        (r#"{"op":"cancel"}"#, InputKind::Control),
        (
            r#"{"op":"submit_tool_result","turn":1,"call_id":"c","name":"f","output":""}"#,
            InputKind::Control,
        ),
        (
            r#"{"op":"send_message","content":[{"type":"text","value":"x"},{"type":"image","value":{"url":"https://h/i.png"}}]}"#,
            InputKind::Control,
        ),
        (r#"{"op":"generate","track":true}"#, InputKind::Control),
        (r#"{"op":"say","text":"x"}"#, InputKind::Control),
        (
            r#"{"op":"reply","id":"r1","known":"queued","wait_ms":100}"#,
            InputKind::Control,
        ),
        (r#"{"op":"interrupt","reply":"r1"}"#, InputKind::Control),
        (r#"{"op":"context"}"#, InputKind::Admin),
        (r#"{"op":"close"}"#, InputKind::Admin),
        (
            r#"{"op":"update_settings","patch":{"instructions":"x"}}"#,
            InputKind::Admin,
        ),
        (
            r#"{"op":"replace_context","context":{"items":[]}}"#,
            InputKind::Admin,
        ),
    ];
    for (json, kind) in kinds {
        let input: Input = serde_json::from_str(json).unwrap();
        assert_eq!(input.kind(), kind, "{json}");
        assert!(json.contains(&format!("\"{}\"", input.op())), "{json}");
    }
}

/// A turn's latency report names the turn it reports on in the cluster's
/// numbering (a resumed owner's turn 1 is the session's turn 6), as its
/// envelope does, not the owner's local turn.
#[test]
fn a_latency_report_names_the_wire_turn() {
    let local = crate::latency::TurnLatency::from_json(
        TurnEnd::Stop,
        &json!({"turn": 1, "pauses": 0, "resumes": 0, "fallbacks": 0, "hedges": 0}),
    )
    .expect("a report");
    assert_eq!(local.turn, crate::ids::TurnId(1));
    let bytes = encode_bus(
        "s",
        6,
        (2 << 32) + 9,
        "w2",
        &EventKind::TurnLatency(Arc::new(local)),
    );
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["turn"], 6);
    assert_eq!(v["payload"]["turn"], 6, "{v}");
    let ev = decode_event(&bytes).unwrap();
    match ev.kind {
        RemoteEventKind::Bus(EventKind::TurnLatency(r)) => {
            assert_eq!(r.turn, crate::ids::TurnId(6))
        }
        other => panic!("{other:?}"),
    }
}
