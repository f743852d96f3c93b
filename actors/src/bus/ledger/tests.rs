//! The ledger's own tests: each transition through the bus's public and
//! crate-private operations, without actors.

use crate::bus::ledger::{Closed, Cut, LedgerError};
use crate::bus::*;
use crate::ids::{SessionId, TurnId};
use crate::turn_taking::InterruptionPolicy;
use colloquy::llm::{ToolCall, Usage};
use std::sync::{Arc, Mutex};

pub(in crate::bus) fn token(s: &str) -> EventKind {
    EventKind::Token(Arc::from(s))
}

fn speakable(s: &str) -> EventKind {
    EventKind::Speakable {
        text: Arc::from(s),
        last: false,
    }
}

/// Begins a turn and opens one round with no task.
pub(in crate::bus) fn begin(bus: &SessionBus, prompt_bytes: usize) -> TurnId {
    let t = bus.begin_turn().unwrap();
    bus.lock()
        .open_round(t, prompt_bytes, || (dummy_abort(), ()))
        .unwrap();
    assert!(bus.lock().request_sent(t));
    t
}

pub(in crate::bus) fn dummy_abort() -> tokio::task::AbortHandle {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async { tokio::spawn(async {}).abort_handle() })
}

/// The kinds received, without the turns' latency reports (their own test:
/// `a_turns_report_follows_the_event_that_completed_it`).
pub(in crate::bus) fn kinds(rx: &mut BusReceiver) -> Vec<EventKind> {
    std::iter::from_fn(|| rx.try_recv().ok().flatten())
        .map(|e| e.kind)
        .filter(|k| !matches!(k, EventKind::TurnLatency(_)))
        .collect()
}

#[test]
fn a_turns_report_follows_the_event_that_completed_it() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let mut rx = bus.subscribe();
    let t1 = begin(&bus, 40);
    bus.publish_agent(t1, token("Hello")).unwrap();
    bus.cut(None, TurnEnd::Cancelled);
    let events: Vec<BusEvent> = std::iter::from_fn(|| rx.try_recv().ok().flatten()).collect();
    let names: Vec<&str> = events.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        names,
        [
            "turn_started",
            "token",
            "usage",
            "turn_finished",
            "turn_latency"
        ]
    );
    let EventKind::TurnLatency(r) = &events[4].kind else {
        unreachable!()
    };
    assert_eq!(
        (events[4].turn, r.turn, &r.end),
        (t1, t1, &TurnEnd::Cancelled)
    );
    assert!(!r.session_closed);
    // A turn still speaking when the session stops is reported then.
    bus.take_closed();
    bus.set_voice(true);
    let t2 = begin(&bus, 40);
    bus.publish_agent(t2, token("Bye.")).unwrap();
    bus.finish_turn(t2, TurnEnd::Stop);
    bus.close();
    let last: Vec<BusEvent> = std::iter::from_fn(|| rx.try_recv().ok().flatten()).collect();
    let reports: Vec<_> = last
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::TurnLatency(r) => Some(r.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(reports.len(), 1, "{last:?}");
    assert_eq!((reports[0].turn, reports[0].session_closed), (t2, true));
}

#[test]
fn fence_refuses_everything_of_a_cancelled_turn() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let mut rx = bus.subscribe();
    let t1 = begin(&bus, 40);
    bus.publish_agent(t1, token("Hello ")).unwrap();
    bus.publish(t1, EventKind::SpeechPlayed { chars: 3 })
        .unwrap();
    assert_eq!(bus.cut(None, TurnEnd::Cancelled), Some(Cut::Generation(t1)));
    let Some(Closed::Ended { record, end, .. }) = bus.take_closed() else {
        panic!("a closed record waits for the actor")
    };
    assert_eq!(
        (record.rounds[0].text.as_str(), record.heard_chars),
        ("Hello ", Some(3))
    );
    assert_eq!(end, TurnEnd::Cancelled);
    assert!(record.rounds[0].usage.unwrap().estimated);
    for kind in [
        token("late"),
        speakable("late"),
        EventKind::SpeechPlayed { chars: 6 },
    ] {
        assert!(matches!(
            bus.publish_agent(t1, kind),
            Err(PublishError::Stale { .. })
        ));
    }
    let kinds = kinds(&mut rx);
    assert_eq!(kinds.len(), 5, "{kinds:?}"); // started, token, played, usage, finished
    assert_eq!(
        kinds.last(),
        Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
    );
    assert_eq!(bus.cut(None, TurnEnd::Cancelled), None, "once");
}

#[test]
fn embedders_cannot_publish_the_runtimes_events() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let t = begin(&bus, 0);
    for kind in [
        token("x"),
        EventKind::TurnStarted,
        EventKind::TurnFinished(TurnEnd::Stop),
    ] {
        assert!(matches!(
            bus.publish(t, kind),
            Err(PublishError::NotAllowed(_))
        ));
    }
    assert!(matches!(
        bus.publish_user(token("x")),
        Err(PublishError::NotAllowed("token"))
    ));
}

#[test]
fn usage_is_per_request_and_estimated_for_every_round_without_one() {
    let bus = SessionBus::new(SessionId::new("s"), 32);
    let mut rx = bus.subscribe();
    let t = begin(&bus, 400);
    let reported = Usage {
        prompt_tokens: 100,
        completion_tokens: 3,
        total_tokens: 103,
        ..Usage::default()
    };
    bus.publish_agent(t, EventKind::Usage(Arc::new(reported)))
        .unwrap();
    bus.lock()
        .open_round(t, 800, || (dummy_abort(), ()))
        .unwrap();
    assert!(bus.lock().request_sent(t));
    bus.publish_agent(t, token("It is")).unwrap();
    bus.cut(None, TurnEnd::Cancelled).unwrap();
    let usages: Vec<Usage> = kinds(&mut rx)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Usage(u) => Some(*u),
            _ => None,
        })
        .collect();
    assert_eq!(usages.len(), 2, "{usages:?}");
    assert_eq!(usages[0], reported);
    assert_eq!(usages[1], Usage::estimate(800, 5));
}

#[test]
fn tool_results_are_recorded_once_per_known_call() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let t = begin(&bus, 0);
    let call = ToolCall {
        index: 0,
        id: "c1".into(),
        name: "f".into(),
        arguments: "{}".into(),
        valid_json: true,
    };
    bus.publish_agent(t, EventKind::ToolCall(Arc::new(call)))
        .unwrap();
    assert!(!bus.lock().last_round_answered(t));
    let (turn, calls) = bus.lock().unanswered_calls().unwrap();
    assert_eq!((turn, calls[0].id.as_str()), (t, "c1"));
    let out = |id: &str| {
        EventKind::ToolResult(Arc::new(ToolOutput {
            call_id: id.into(),
            name: "f".into(),
            output: "ok".into(),
            is_error: false,
        }))
    };
    assert!(matches!(
        bus.publish(t, out("zz")),
        Err(PublishError::UnknownCall(_))
    ));
    bus.publish(t, out("c1")).unwrap();
    assert!(matches!(
        bus.publish(t, out("c1")),
        Err(PublishError::AlreadyAnswered(_))
    ));
    assert!(bus.lock().last_round_answered(t));
    assert_eq!(bus.lock().unanswered_calls(), None);
}

#[test]
fn finished_turn_still_accepts_its_tail_speech_only() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let t = begin(&bus, 0);
    assert!(bus.finish_turn(t, TurnEnd::Stop));
    assert!(bus.publish(t, EventKind::SpeechPlayed { chars: 0 }).is_ok());
    assert!(
        matches!(
            bus.publish(t, speakable("tail.")),
            Err(PublishError::NotAllowed(_))
        ),
        "segments are the runtime's"
    );
    assert!(bus.publish_agent(t, token("x")).is_err());
    assert_eq!(
        bus.begin_turn(),
        Err(LedgerError::PendingCommit),
        "no new turn while a closed one waits for its commit"
    );
    assert!(bus.take_closed().is_some());
    let t2 = bus.begin_turn().unwrap();
    assert_eq!(t2, t.next());
    assert!(
        bus.publish(t, EventKind::SpeechPlayed { chars: 1 })
            .is_err()
    );
}

#[test]
fn a_cut_cannot_be_lost_to_a_racing_finish() {
    // The actor's normal finish lands first: the caller's cut then cuts the
    // speech instead (when playback is behind), never nothing.
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let t = begin(&bus, 0);
    bus.publish_agent(t, token("Hello world")).unwrap();
    bus.publish(t, EventKind::SpeechPlayed { chars: 5 })
        .unwrap();
    assert!(bus.finish_turn(t, TurnEnd::Stop));
    assert_eq!(bus.cut(None, TurnEnd::Cancelled), Some(Cut::Speech(t)));
    // The actor had not committed yet: its record carries the cut.
    let Some(Closed::Ended {
        record, speech_cut, ..
    }) = bus.take_closed()
    else {
        panic!()
    };
    assert!(speech_cut);
    assert_eq!(record.heard_chars, Some(5));
}

#[test]
fn playback_of_a_finished_turn_can_be_cut_once() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let cuts = Arc::new(Mutex::new(Vec::new()));
    let seen = cuts.clone();
    bus.on_cut(move |turn| seen.lock().unwrap().push(turn));
    let t = begin(&bus, 0);
    bus.publish_agent(t, token("Hello world")).unwrap();
    bus.finish_turn(t, TurnEnd::Stop);
    bus.take_closed();
    assert_eq!(
        bus.cut(Some(t), TurnEnd::Cancelled),
        None,
        "no playback reported: nothing known to cut"
    );
    bus.publish(t, EventKind::SpeechPlayed { chars: 5 })
        .unwrap();
    assert_eq!(bus.cut(Some(t), TurnEnd::Cancelled), Some(Cut::Speech(t)));
    assert_eq!(
        *cuts.lock().unwrap(),
        vec![t],
        "hook ran before cut returned"
    );
    assert_eq!(
        bus.take_closed(),
        Some(Closed::SpeechCut {
            turn: t,
            heard_chars: 5
        })
    );
    assert!(bus.publish(t, speakable(" world")).is_err());
    assert_eq!(bus.cut(Some(t), TurnEnd::Cancelled), None, "once");
    // Played to the end: nothing to cut.
    let t2 = begin(&bus, 0);
    bus.publish_agent(t2, token("Hi")).unwrap();
    bus.finish_turn(t2, TurnEnd::Stop);
    bus.publish(t2, EventKind::SpeechPlayed { chars: 2 })
        .unwrap();
    assert_eq!(bus.cut(Some(t2), TurnEnd::Cancelled), None);
}

#[test]
fn speech_started_cuts_in_the_same_critical_section() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    bus.set_policy(InterruptionPolicy::immediate());
    let mut rx = bus.subscribe();
    let t = begin(&bus, 0);
    bus.publish_user(EventKind::UserSpeechStarted).unwrap();
    let kinds = kinds(&mut rx);
    assert_eq!(kinds[1], EventKind::UserSpeechStarted);
    assert_eq!(
        kinds.last(),
        Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
    );
    assert!(!bus.is_open(t));
    bus.take_closed();
    bus.set_policy(InterruptionPolicy::default());
    let t2 = begin(&bus, 0);
    bus.publish_user(EventKind::UserSpeechStarted).unwrap();
    assert!(bus.is_open(t2), "confirmed mode: speech alone does not cut");
    assert!(bus.lock().next_deadline().is_some(), "a pause is scheduled");
}

#[test]
fn closed_bus_ends_subscriptions_and_refuses_events() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let mut rx = bus.subscribe();
    bus.publish_user(EventKind::UserSpeechStarted).unwrap();
    bus.close();
    assert!(
        rx.try_recv().unwrap().is_some(),
        "buffered events are still read"
    );
    assert_eq!(rx.try_recv(), Err(BusRecvError::Closed));
    assert_eq!(bus.subscribe().try_recv(), Err(BusRecvError::Closed));
    assert_eq!(
        bus.publish_user(EventKind::UserSpeechStarted),
        Err(PublishError::Closed)
    );
    assert_eq!(bus.begin_turn(), Err(LedgerError::BusClosed));
}

#[test]
fn seq_increases_across_user_and_agent_events() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let a = bus.publish_user(EventKind::UserSpeechStarted).unwrap();
    let t = begin(&bus, 0);
    let c = bus.publish_agent(t, token("x")).unwrap();
    assert_eq!((a, c), (1, 3));
    assert_eq!(bus.turn_text_since(t, 0), Some(("x".to_string(), 3)));
}

/// Issue 13, defect 1: a promoted speculation is spoken once. It was spoken
/// twice when the segmenter task lagged (a 16-event bus, a burst of 40 user
/// events) while the speculation's tokens were held: its resync read the
/// held text, and the promotion re-sent the tokens. Segments are now decided
/// with their tokens, held with them and released with them.
#[test]
fn a_promoted_speculation_is_spoken_once_after_a_burst() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    bus.set_voice(true);
    let spoken: Arc<Mutex<String>> = Arc::default();
    let sink = spoken.clone();
    bus.add_tap(
        |k| matches!(k, EventKind::Speakable { .. }),
        move |ev| {
            if let EventKind::Speakable { text, .. } = &ev.kind {
                sink.lock().unwrap().push_str(text);
            }
        },
    );
    let mut rx = bus.subscribe();
    let t = bus.lock().begin_speculative().unwrap();
    bus.lock().open_round(t, 0, || (dummy_abort(), ())).unwrap();
    for w in ["Paris ", "is ", "the ", "capital ", "of ", "France."] {
        bus.publish_agent(t, token(w)).unwrap();
    }
    for i in 0..40 {
        bus.publish_user(EventKind::UserTranscript {
            text: Arc::from(format!("capital of france {}", i % 2).as_str()),
            is_final: false,
            heard: None,
        })
        .unwrap();
    }
    assert_eq!(
        *spoken.lock().unwrap(),
        "",
        "nothing of a held speculation is spoken"
    );
    assert!(bus.lock().promote(t));
    assert!(bus.finish_turn(t, TurnEnd::Stop));
    assert_eq!(*spoken.lock().unwrap(), "Paris is the capital of France.");
    // A subscriber that lagged through it all can catch up on the text once.
    assert!(matches!(rx.try_recv(), Err(BusRecvError::Lagged { .. })));
    assert_eq!(
        bus.turn_text_since(t, 0).map(|(s, _)| s),
        Some("Paris is the capital of France.".to_string())
    );
}

/// Issue 13, defect 1: a lagging subscriber's catch-up never shows the text
/// of a speculation that is still held.
#[test]
fn catch_up_never_shows_held_speculative_text() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let t = bus.lock().begin_speculative().unwrap();
    bus.lock().open_round(t, 0, || (dummy_abort(), ())).unwrap();
    bus.publish_agent(t, token("held")).unwrap();
    assert_eq!(bus.turn_text_since(t, 0), None);
    assert!(bus.lock().promote(t));
    assert_eq!(
        bus.turn_text_since(t, 0).map(|(s, _)| s),
        Some("held".into())
    );
}

/// Segments are cut in the token's own critical section: a tool call flushes
/// the text before it, the close flushes the tail as `last`, a cut drops it;
/// segments concatenate to the text.
#[test]
fn segments_follow_their_tokens_flush_at_calls_and_close() {
    let bus = SessionBus::new(SessionId::new("s"), 64);
    bus.set_voice(true);
    let mut rx = bus.subscribe();
    let t = begin(&bus, 0);
    bus.publish_agent(t, token("Sure, let me check")).unwrap();
    let call = colloquy::llm::ToolCall {
        index: 0,
        id: "c1".into(),
        name: "f".into(),
        arguments: "{}".into(),
        valid_json: true,
    };
    bus.publish_agent(t, EventKind::ToolCall(Arc::new(call)))
        .unwrap();
    bus.publish_agent(t, token(" the weather.")).unwrap();
    assert!(bus.finish_turn(t, TurnEnd::Stop));
    let seen: Vec<String> = kinds(&mut rx)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Speakable { text, last } => Some(format!("{text}|{last}")),
            EventKind::ToolCall(_) => Some("call".into()),
            EventKind::TurnFinished(_) => Some("end".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        [
            "Sure, let me check|false",
            "call",
            " the weather.|true",
            "end"
        ]
    );
    bus.take_closed();
    // Played to its end before the next reply.
    bus.publish(t, EventKind::SpeechPlayed { chars: 31 })
        .unwrap();
    // A cut drops what was not yet a segment.
    let t2 = begin(&bus, 0);
    bus.publish_agent(t2, token("Half a sen")).unwrap();
    bus.cut(None, TurnEnd::Cancelled);
    assert!(
        !kinds(&mut rx)
            .iter()
            .any(|k| matches!(k, EventKind::Speakable { .. })),
        "nothing of a cut turn's unfinished segment is spoken"
    );
    assert!(matches!(
        bus.publish(t2, speakable("x")),
        Err(PublishError::NotAllowed(_) | PublishError::Stale { .. })
    ));
}

/// A turn that begins with no voice attached publishes no segments (nobody
/// would speak them: about 15% of the CPU per token in loadgen); one that
/// begins with a voice does.
#[test]
fn segments_are_published_for_turns_a_voice_speaks() {
    let bus = SessionBus::new(SessionId::new("s"), 64);
    let mut rx = bus.subscribe();
    let t = begin(&bus, 0);
    bus.publish_agent(t, token("Hello there. How are you?"))
        .unwrap();
    assert!(bus.finish_turn(t, TurnEnd::Stop));
    assert!(
        !kinds(&mut rx)
            .iter()
            .any(|k| matches!(k, EventKind::Speakable { .. })),
        "no voice, no segments"
    );
    bus.take_closed();
    bus.set_voice(true);
    let t2 = begin(&bus, 0);
    bus.publish_agent(t2, token("Hello there. How are you?"))
        .unwrap();
    assert!(bus.finish_turn(t2, TurnEnd::Stop));
    let spoken: String = kinds(&mut rx)
        .into_iter()
        .filter_map(|k| match k {
            EventKind::Speakable { text, .. } => Some(text.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(spoken, "Hello there. How are you?");
}
