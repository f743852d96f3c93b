//! The speech queue and speech outputs coming and going (found by an
//! independent review; each test failed before its fix): a speaker attached
//! after a text reply does not make that reply "playing"; a speaker dropped
//! mid-speech ends the speech where it reached; parked replies start in the
//! order asked; messages behind an uninterruptible `say` are answered once;
//! a reply withdrawn while its start is already under way is cut.

use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::speech::{PacedTextOutput, Speaker};
use colloquy_actors::{InterruptionPolicy, SayOptions, SpeechQueue};

#[path = "support/session.rs"]
mod support;
use support::*;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("did not happen in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_attached_after_a_text_reply_leaves_it_alone() {
    let server = MockServer::start(|_| MockResponse::text(&["Hello there!"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |_| {}).await;
    let first = session.send_text("Hi").unwrap();
    assert!(!within(first.played_out()).await.unwrap().interrupted);
    let speaker = Speaker::spawn(&session, PacedTextOutput::new(2000.0));
    assert!(!session.is_speaking(), "nothing is playing the text reply");
    let second = session.send_text("Again").unwrap();
    within(second.played_out()).await.unwrap();
    let texts: Vec<String> = session
        .context()
        .await
        .unwrap()
        .messages()
        .map(|m| m.text_content())
        .collect();
    assert_eq!(texts, ["Hi", "Hello there!", "Again", "Hello there!"]);
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_speaker_dropped_mid_speech_ends_it_where_it_reached() {
    let server = MockServer::start(|_| MockResponse::text(&["unused"]))
        .await
        .unwrap();
    let (sup, session, mut rx) =
        setup(&server, |c| c.settings.speech_queue = SpeechQueue::Wait).await;
    let speaker = Speaker::spawn(&session, PacedTextOutput::new(50.0));
    let first = session
        .say("A sentence that takes quite a while to be said aloud.")
        .unwrap();
    let committed = within(first.committed()).await.unwrap();
    next_matching(&mut rx, |e| {
        e.turn == committed.turn
            && matches!(e.kind, EventKind::SpeechPlayed { chars } if chars >= 3)
    })
    .await;
    drop(speaker);
    let second = session.say("Second.").unwrap();
    let done = within(first.played_out()).await.unwrap();
    assert!(
        done.interrupted,
        "what was not played is not in the history"
    );
    within(second.started()).await.unwrap();
    within(session.speaking().until_quiet()).await;
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_replies_start_in_the_order_asked() {
    let server = MockServer::start(|_| MockResponse::text(&["unused"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |c| c.settings.speech_queue = SpeechQueue::Wait).await;
    let output = PacedTextOutput::new(300.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let a = session.say("First, a long sentence to be spoken.").unwrap();
    within(a.committed()).await.unwrap();
    let b = session.say("Second.").unwrap();
    let c = session.say("Third.").unwrap();
    within(b.played_out()).await.unwrap();
    within(c.played_out()).await.unwrap();
    assert_eq!(
        output.played_text(),
        "First, a long sentence to be spoken.Second.Third."
    );
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_behind_an_uninterruptible_say_are_answered_once() {
    let server = MockServer::start(|_| MockResponse::text(&["Sure."]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate()
    })
    .await;
    let output = PacedTextOutput::new(200.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let say = session
        .say_with(
            "This call may be recorded for quality.",
            SayOptions::default().allow_interruptions(false),
        )
        .unwrap();
    within(say.committed()).await.unwrap();
    let m1 = session.send_text("one").unwrap();
    let m2 = session.send_text("two").unwrap();
    let r1 = within(m1.played_out()).await.unwrap();
    let r2 = within(m2.played_out()).await.unwrap();
    assert_eq!(r1.turn, r2.turn, "one turn answers both");
    within(session.speaking().until_quiet()).await;
    assert_eq!(server.requests().len(), 1, "answered once");
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test]
async fn a_reply_withdrawn_as_it_starts_is_cut() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Thinking"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |c| {
        c.settings.interruption.cancel_on_user_message = false
    })
    .await;
    let a = session.send_text("one").unwrap();
    within(a.started()).await.unwrap();
    let b = session.send_text("two").unwrap();
    let _ = session.context().await; // the actor has queued "two" behind "one"
    session.cancel().unwrap(); // cuts "one"; the actor will start "two"...
    b.interrupt().unwrap(); // ...and this, still reading Queued, arrives after
    let b_end = within(b.played_out()).await;
    assert!(
        b_end
            .as_ref()
            .map_or(true, |r| r.end == TurnEnd::Cancelled && r.text().is_empty()),
        "{b_end:?}"
    );
    sup.shutdown().await;
}
