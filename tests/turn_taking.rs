//! Turn-taking with judgement (issue 8): confirmed interruptions pause, cut or
//! resume; backchannels are not turns; preemptive generation speculates on
//! interim transcripts and is promoted or discarded without a stale word.
//! Every test drives the public API against a scripted 127.0.0.1 server and
//! waits on bus events or server signals.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusEvent, BusReceiver, EventKind, SpeculationOutcome, TurnEnd};
use colloquy_actors::turn_taking::InterruptionMode;
use colloquy_actors::{InterruptionPolicy, Preemptive, Tool, ToolRegistry, TurnId};

#[path = "support/session.rs"]
mod support;
use support::*;

/// Confirmed mode that pauses at speech onset, so tests need no timing.
fn confirmed(resume_ms: u64) -> InterruptionPolicy {
    InterruptionPolicy {
        mode: InterruptionMode::Confirmed,
        min_pause: Duration::ZERO,
        resume_timeout: Duration::from_millis(resume_ms),
        ..InterruptionPolicy::default()
    }
}

fn shape(ctx: &ChatContext) -> Vec<String> {
    ctx.items
        .iter()
        .map(|i| match i {
            ChatItem::Message(m) if m.role == Role::User => format!("u:{}", m.text_content()),
            ChatItem::Message(m) if m.interrupted => format!("a*:{}", m.text_content()),
            ChatItem::Message(m) => format!("a:{}", m.text_content()),
            ChatItem::FunctionCall(c) => format!("call:{}", c.name),
            ChatItem::FunctionCallOutput(o) => format!("out:{}", o.output),
            _ => "?".into(),
        })
        .collect()
}

/// Events up to (and including) the first one matching `last`.
async fn collect_until(rx: &mut BusReceiver, last: impl Fn(&BusEvent) -> bool) -> Vec<BusEvent> {
    let mut out = Vec::new();
    loop {
        let ev = next_matching(rx, |_| true).await;
        let done = last(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

async fn started(rx: &mut BusReceiver) -> TurnId {
    next_matching(rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_pauses_the_reply_generation_goes_on_and_silence_resumes_it() {
    let server = MockServer::start(|_| {
        MockResponse::text_paced(
            &["The weather ", "in Paris ", "is sunny today."],
            Duration::from_millis(20),
        )
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.interruption = confirmed(50)).await;
    let pauses = Arc::new(AtomicUsize::new(0));
    let seen = pauses.clone();
    session.bus().on_pause(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
    });
    session.send_text("weather?").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.speech_played(turn, 4).unwrap();
    session.user_speech_started();
    assert_eq!(
        pauses.load(Ordering::SeqCst),
        1,
        "paused before speech_started returned"
    );
    let events = collect_until(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::PlaybackPaused { heard_chars: 4 })
    );
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Stop),
        "a pause is not a cut: generation streams on"
    );
    session.user_speech_ended();
    let resumed = next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::PlaybackResumed { .. })
    })
    .await;
    assert_eq!(resumed.kind, EventKind::PlaybackResumed { heard_chars: 4 });
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        ["u:weather?", "a:The weather in Paris is sunny today."]
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backchannel_neither_cuts_nor_becomes_a_turn() {
    let server = MockServer::start(|req| {
        if req.last_message()["content"] == "next" {
            MockResponse::text(&["ok"])
        } else {
            MockResponse::text_then_stall(&["Here is a long story "])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) =
        setup(&server, |c| c.settings.interruption = confirmed(10_000)).await;
    session.send_text("story?").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.speech_played(turn, 5).unwrap();
    session.user_speech_started();
    next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::PlaybackPaused { .. })
    })
    .await;
    session.user_transcript("Uh-huh.", true);
    let events = collect_until(&mut rx, |e| {
        matches!(e.kind, EventKind::PlaybackResumed { .. })
    })
    .await;
    assert!(
        events.iter().any(|e| e.kind
            == EventKind::Backchannel {
                text: Arc::from("Uh-huh.")
            }),
        "{events:?}"
    );
    assert!(session.bus().is_open(turn), "the reply goes on");
    // The next real input: the backchannel never became a user message.
    session.send_text("next").unwrap();
    let t2 = started(&mut rx).await;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert_eq!(shape(&ctx), ["u:story?", "a*:Here ", "u:next", "a:ok"]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirming_words_cut_at_the_paused_position_and_the_final_is_the_turn() {
    let server = MockServer::start(|req| {
        if req.last_message()["content"]
            .as_str()
            .is_some_and(|t| t.starts_with("wait"))
        {
            MockResponse::text(&["Sure."])
        } else {
            MockResponse::text_then_stall(&["Let me tell you about the weather "])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) =
        setup(&server, |c| c.settings.interruption = confirmed(10_000)).await;
    session.send_text("weather?").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.speech_played(turn, 8).unwrap();
    session.user_speech_started();
    next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::PlaybackPaused { .. })
    })
    .await;
    session.user_transcript("wait stop", false);
    // The confirming interim cuts at once; no resume in between.
    let events = collect_until(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Cancelled)
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::PlaybackResumed { .. }))
    );
    session.user_transcript("wait stop please", true);
    let t2 = started(&mut rx).await;
    assert_eq!(finished(&mut rx, t2).await, TurnEnd::Stop);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        ["u:weather?", "a*:Let me t", "u:wait stop please", "a:Sure."]
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_resume_while_a_transcript_is_pending() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Talking on and on "]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.interruption = confirmed(0)).await;
    session.send_text("talk").unwrap();
    next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_))).await;
    session.user_speech_started();
    session.user_transcript("what", false);
    session.user_speech_ended();
    // A resume would be due now if the pending interim were ignored; give a
    // wrong timer every chance to fire before the final decides.
    tokio::time::sleep(Duration::from_millis(100)).await;
    session.user_transcript("what about Rome?", true);
    let events = collect_until(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Cancelled)
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::PlaybackResumed { .. })),
        "{events:?}"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sound_shorter_than_min_pause_never_pauses() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Talking "]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy {
            min_pause: Duration::from_secs(30),
            ..InterruptionPolicy::default()
        }
    })
    .await;
    session.send_text("talk").unwrap();
    let turn = next_matching(&mut rx, |e| matches!(e.kind, EventKind::Token(_)))
        .await
        .turn;
    session.user_speech_started();
    session.user_speech_ended();
    let marker = session.speech_played(turn, 1).unwrap();
    let events = collect_until(&mut rx, |e| e.seq == marker).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::PlaybackPaused { .. })),
        "{events:?}"
    );
    assert!(session.bus().is_open(turn));
    sup.shutdown().await;
}

fn preemptive(debounce_ms: u64) -> Option<Preemptive> {
    Some(Preemptive {
        debounce: Duration::from_millis(debounce_ms),
    })
}

async fn requests_reach(server: &MockServer, n: u64) {
    let mut count = server.request_count();
    tokio::time::timeout(GUARD, count.wait_for(|c| *c >= n))
        .await
        .expect("request did not arrive")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemptive_hit_holds_the_reply_then_releases_it_at_the_final() {
    let server = MockServer::start(|_| MockResponse::text(&["It is ", "sunny."]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.preemptive = preemptive(0)).await;
    session.user_speech_started();
    session.user_transcript("what's the weather", false);
    requests_reach(&server, 1).await;
    let final_seq = session.user_transcript("What's the weather?", true);
    let events = collect_until(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    let hit = events
        .iter()
        .find(|e| matches!(e.kind, EventKind::SpeculationEnded { .. }))
        .expect("a speculation outcome");
    assert_eq!(
        hit.kind,
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Hit,
            usage: None
        }
    );
    for e in events.iter().filter(|e| !e.kind.is_user_side()) {
        assert!(
            e.seq > final_seq,
            "nothing of the speculation before the final: {e:?}"
        );
    }
    assert_eq!(
        events.last().unwrap().kind,
        EventKind::TurnFinished(TurnEnd::Stop)
    );
    assert_eq!(
        server.requests().len(),
        1,
        "the speculative request was the reply"
    );
    let ctx = session.context().await.unwrap();
    assert_eq!(shape(&ctx), ["u:What's the weather?", "a:It is sunny."]);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemptive_miss_never_publishes_a_word_of_the_discarded_speculation() {
    let server = MockServer::start(|req| {
        let last = req.last_message()["content"].to_string();
        if last.contains("weather") {
            MockResponse::text(&["Sunny."])
        } else {
            MockResponse::text(&["Noon."])
        }
    })
    .await
    .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.preemptive = preemptive(0)).await;
    session.user_transcript("what's the weather", false);
    requests_reach(&server, 1).await;
    session.user_transcript("What's the time?", true);
    let events = collect_until(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    let miss = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::SpeculationEnded { outcome, usage } => Some((*outcome, usage.clone())),
            _ => None,
        })
        .expect("a speculation outcome");
    assert_eq!(miss.0, SpeculationOutcome::Miss);
    assert!(miss.1.is_some(), "the discarded request's cost is reported");
    let text: String = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Token(t) => Some(t.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Noon.");
    let ctx = session.context().await.unwrap();
    assert_eq!(shape(&ctx), ["u:What's the time?", "a:Noon."]);
    sup.shutdown().await;
}

fn counting_tool(runs: Arc<AtomicUsize>) -> ToolRegistry {
    ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("get_weather", "Weather"),
        move |_| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok("sunny".to_string())
            }
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_call_is_never_executed_speculatively() {
    let server = MockServer::start(|req| {
        if has_tool_output(req) {
            return MockResponse::text(&["Sunny."]);
        }
        let last = req.last_message()["content"].to_string();
        if last.contains("weather") {
            MockResponse::tool_calls(&[("c1", "get_weather", "{}")])
        } else {
            MockResponse::text(&["Noon."])
        }
    })
    .await
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let tools = counting_tool(runs.clone());
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.preemptive = preemptive(0);
        c.tools = Some(tools);
    })
    .await;
    // A miss: the speculative call is never run.
    session.user_transcript("weather please", false);
    requests_reach(&server, 1).await;
    session.user_transcript("time please", true);
    let t = started(&mut rx).await;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    // A hit: the held call is released at the final and runs exactly once.
    session.user_transcript("weather please", false);
    requests_reach(&server, 3).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "held until the final");
    session.user_transcript("Weather, please!", true);
    let t = started(&mut rx).await;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let ctx = session.context().await.unwrap();
    assert_eq!(
        shape(&ctx),
        [
            "u:time please",
            "a:Noon.",
            "u:Weather, please!",
            "call:get_weather",
            "out:sunny",
            "a:Sunny."
        ]
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_during_speculation_drops_it_and_closes_its_request() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Thinking"]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.preemptive = preemptive(0)).await;
    let mut closes = server.disconnects();
    session.user_transcript("tell me", false);
    requests_reach(&server, 1).await;
    session.user_speech_started();
    let ev = next_matching(&mut rx, |e| {
        matches!(e.kind, EventKind::SpeculationEnded { .. })
    })
    .await;
    assert!(matches!(
        ev.kind,
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Dropped,
            ..
        }
    ));
    tokio::time::timeout(GUARD, closes.wait_for(|n| *n >= 1))
        .await
        .expect("the speculative request was not closed")
        .unwrap();
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interims_faster_than_the_debounce_start_one_request() {
    let server = MockServer::start(|_| MockResponse::text(&["Fine."]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| c.settings.preemptive = preemptive(300)).await;
    for interim in ["how", "how are", "how are you", "how are you today"] {
        session.user_transcript(interim, false);
    }
    requests_reach(&server, 1).await;
    session.user_transcript("How are you today?", true);
    let t = started(&mut rx).await;
    assert_eq!(finished(&mut rx, t).await, TurnEnd::Stop);
    assert_eq!(server.requests().len(), 1);
    sup.shutdown().await;
}
