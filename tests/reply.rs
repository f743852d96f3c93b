//! Reply handles and `say` (issue 14): a reply can be awaited for its commit
//! and for the end of its playout, and interrupted; `say` speaks fixed text
//! through the same turn machinery with no model request; the speech queue
//! waits or cuts; "has the agent finished speaking" needs no turn numbers.
//! Servers are 127.0.0.1 mocks; speech is played by a paced text output;
//! tests wait on handles and watches.

use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::speech::{PacedTextOutput, Speaker};
use colloquy_actors::{InterruptionPolicy, ReplyState, SayOptions, SpeechQueue};

#[path = "support/session.rs"]
mod support;
use support::*;

const LONG: &str = "Paris is the capital of France. It sits on the Seine, in the north of \
the country, and has about two million people in the city itself.";

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .expect("did not happen in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_handle_follows_its_turn_to_the_commit() {
    let server = MockServer::start(|_| MockResponse::text(&["Hello", " there!"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |_| {}).await;
    let reply = session.send_text("Hi").unwrap();
    let committed = within(reply.committed()).await.unwrap();
    assert_eq!(committed.end, TurnEnd::Stop);
    assert_eq!(committed.text(), "Hello there!");
    assert!(!committed.interrupted);
    assert_eq!(reply.turn(), Some(committed.turn));
    // No speech output: the playout is over with the commit.
    assert_eq!(within(reply.played_out()).await.unwrap(), committed);
    assert!(reply.is_done());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_cuts_a_generating_reply() {
    let server = MockServer::start(|_| MockResponse::text_then_stall(&["Let me think"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |_| {}).await;
    let reply = session.send_text("Hi").unwrap();
    let turn = within(reply.started()).await.unwrap();
    reply.interrupt().unwrap();
    let done = within(reply.played_out()).await.unwrap();
    assert_eq!((done.turn, done.end), (turn, TurnEnd::Cancelled));
    assert!(reply.is_done());
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_speaks_fixed_text_without_a_model_request() {
    let server = MockServer::start(|_| MockResponse::text(&["unused"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |_| {}).await;
    let output = PacedTextOutput::new(2000.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let reply = session.say("Welcome to the demo. How can I help?").unwrap();
    let done = within(reply.played_out()).await.unwrap();
    assert_eq!(done.text(), "Welcome to the demo. How can I help?");
    assert_eq!(output.played_text(), "Welcome to the demo. How can I help?");
    assert!(server.requests().is_empty(), "no model request");
    let ctx = session.context().await.unwrap();
    assert_eq!(
        ctx.messages().count(),
        1,
        "committed once, as an assistant message"
    );
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn played_out_waits_for_the_speech_and_reports_what_was_heard_after_a_barge_in() {
    let server = MockServer::start(|_| MockResponse::text(&[LONG]))
        .await
        .unwrap();
    let (sup, session, mut rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate();
    })
    .await;
    let output = PacedTextOutput::new(100.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let reply = session.send_text("Tell me about Paris").unwrap();
    let committed = within(reply.committed()).await.unwrap();
    assert_eq!(committed.text(), LONG, "generation is faster than speech");
    assert!(!reply.is_done(), "its speech is still playing");
    assert!(session.is_speaking());
    // Wait until some of it was heard, then talk over it.
    let mut status = speaker.status();
    next_matching(&mut rx, |e| {
        e.turn == committed.turn
            && matches!(e.kind, colloquy_actors::bus::EventKind::SpeechPlayed { chars } if chars >= 5)
    })
    .await;
    session.user_speech_started();
    let done = within(reply.played_out()).await.unwrap();
    assert!(done.interrupted);
    let heard = done.text();
    assert!(
        !heard.is_empty() && LONG.starts_with(&heard) && heard.len() < LONG.len(),
        "{heard:?}"
    );
    let speaking = session.speaking();
    within(speaking.until_quiet()).await;
    within(status.wait_for(|s| s.finished)).await.unwrap();
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_say_without_interruptions_is_spoken_to_its_end_and_the_next_reply_waits() {
    let server = MockServer::start(|_| MockResponse::text(&["Sure."]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |c| {
        c.settings.interruption = InterruptionPolicy::immediate();
    })
    .await;
    let output = PacedTextOutput::new(200.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let notice = "This call may be recorded for quality purposes.";
    let say = session
        .say_with(notice, SayOptions::default().allow_interruptions(false))
        .unwrap();
    within(say.committed()).await.unwrap();
    session.user_speech_started(); // neither pauses nor cuts it
    let next = session.send_text("Hello?").unwrap();
    let said = within(say.played_out()).await.unwrap();
    assert!(!said.interrupted);
    assert_eq!(said.text(), notice);
    let answered = within(next.played_out()).await.unwrap();
    assert_eq!(answered.text(), "Sure.");
    assert_eq!(output.played_text(), format!("{notice}Sure."));
    drop(speaker);
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_speech_queue_waits_or_cuts() {
    let server = MockServer::start(|_| MockResponse::text(&["unused"]))
        .await
        .unwrap();
    for queue in [SpeechQueue::Wait, SpeechQueue::Interrupt] {
        let (sup, session, _rx) = setup(&server, |c| c.settings.speech_queue = queue).await;
        let output = PacedTextOutput::new(300.0);
        let speaker = Speaker::spawn(&session, output.clone());
        let first = session.say("First, a long sentence to be spoken.").unwrap();
        within(first.committed()).await.unwrap();
        let second = session.say("Second.").unwrap();
        let a = within(first.played_out()).await.unwrap();
        let b = within(second.played_out()).await.unwrap();
        assert_eq!(b.text(), "Second.");
        match queue {
            SpeechQueue::Wait => {
                assert!(!a.interrupted);
                assert_eq!(
                    output.played_text(),
                    "First, a long sentence to be spoken.Second."
                );
            }
            _ => {
                assert!(a.interrupted, "a new reply cuts the speech playing");
                assert!(output.played_text().ends_with("Second."));
            }
        }
        drop(speaker);
        sup.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_withdrawn_before_it_starts_never_starts() {
    let server = MockServer::start(|_| MockResponse::text(&["unused"]))
        .await
        .unwrap();
    let (sup, session, _rx) = setup(&server, |c| c.settings.speech_queue = SpeechQueue::Wait).await;
    let output = PacedTextOutput::new(100.0);
    let speaker = Speaker::spawn(&session, output.clone());
    let first = session
        .say("A sentence that takes a while to say.")
        .unwrap();
    within(first.committed()).await.unwrap();
    let second = session.say("Never said.").unwrap();
    assert_eq!(second.state(), ReplyState::Queued);
    second.interrupt().unwrap();
    within(first.played_out()).await.unwrap();
    assert!(within(second.played_out()).await.is_err());
    assert!(!output.played_text().contains("Never"));
    drop(speaker);
    sup.shutdown().await;
}
