//! Regressions from the review: reconnect loops, unanswered `Finalize`,
//! trimmed audio, a slow consumer, and the deadlines around the end.

use std::time::Duration;

use super::{FRAME, Rx, config, failure, next, open, script, speak, until_final, utterance, wait};
use crate::audio::{RecognizerInput, SpeechFailure};
use crate::mock::deepgram::{MockClose, MockDeepgram, MockDeepgramScript};

/// Reads transcripts until one (interim or final) says `text`.
async fn until_text(r: &mut Rx, text: &str) {
    loop {
        match next(r).await {
            Some(Ok(t)) if t.text == text => return,
            Some(Ok(_)) => continue,
            other => panic!("expected {text:?}, got {other:?}"),
        }
    }
}

/// The finals up to the end of the stream (no failure allowed).
async fn finals(r: &mut Rx) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(t) = next(r).await {
        let t = t.expect("no failure");
        if t.is_final {
            out.push(t.text);
        }
    }
    out
}

fn early(utterances: &[&[&str]]) -> MockDeepgramScript {
    MockDeepgramScript {
        early_speech_final: true,
        finalize_unanswered: true,
        ..script(utterances)
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_for_the_audio_is_a_typed_error_not_a_resend_loop() {
    let server = MockDeepgram::start(MockDeepgramScript {
        close_after_bytes: Some(MockClose {
            after_bytes: 3200,
            code: 1008,
            reason: "DATA-0000: cannot decode".into(),
        }),
        ..script(&[&["never"]])
    })
    .await
    .unwrap();
    let mut r = open(config(&server));
    utterance(&r.input, 0, 25).await;
    let f = failure(&mut r.transcripts).await;
    let SpeechFailure::Closed { code, message } = &f else {
        panic!("{f:?}")
    };
    assert_eq!(
        (*code, message.as_str()),
        (1008, "DATA-0000: cannot decode")
    );
    assert!(!f.is_retryable());
    assert!(next(&mut r.transcripts).await.is_none());
    assert_eq!(server.stats().borrow().connections, 1);
}

#[tokio::test(start_paused = true)]
async fn a_close_on_every_socket_spends_the_reconnect_budget_with_backoff() {
    let server = MockDeepgram::start(MockDeepgramScript {
        close_after_bytes: Some(MockClose {
            after_bytes: 3200,
            code: 1011,
            reason: "NET-0000: internal".into(),
        }),
        ..script(&[&["never"]])
    })
    .await
    .unwrap();
    let mut config = config(&server);
    config.reconnect_attempts = 2;
    let mut r = open(config);
    wait(&server, |s| s.connections == 1).await;
    let began = tokio::time::Instant::now();
    utterance(&r.input, 0, 25).await;
    let f = failure(&mut r.transcripts).await;
    assert_eq!(f, SpeechFailure::Dropped);
    // The first reconnect at once, the second after the backoff.
    assert!(began.elapsed() >= Duration::from_millis(100));
    assert!(next(&mut r.transcripts).await.is_none());
    assert_eq!(server.stats().borrow().connections, 3);
}

#[tokio::test(start_paused = true)]
async fn a_speech_final_before_speech_ended_and_no_finalize_answer_still_finals() {
    let server = MockDeepgram::start(early(&[&["Hello", "there"]]))
        .await
        .unwrap();
    let mut r = open(config(&server));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    // 0.8 s: both words by 0.5 s, so Deepgram's speech_final comes first.
    let end = speak(&r.input, 0, 40).await;
    until_text(&mut r.transcripts, "Hello there").await;
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!((t.text.as_str(), t.start, t.end), ("Hello there", 0, 8000));
}

#[tokio::test(start_paused = true)]
async fn the_next_utterances_speech_final_does_not_close_an_unanswered_one() {
    let server = MockDeepgram::start(early(&[&["Hello", "there"], &["Second", "one"]]))
        .await
        .unwrap();
    let mut r = open(config(&server));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    let end = speak(&r.input, 0, 40).await;
    until_text(&mut r.transcripts, "Hello there").await;
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    utterance(&r.input, 200_000, 40).await;
    drop(r.input);
    assert_eq!(
        finals(&mut r.transcripts).await,
        ["Hello there", "Second one"]
    );
}

#[tokio::test(start_paused = true)]
async fn finals_of_trimmed_audio_survive_a_reconnect() {
    // Utterance 1's words come early and its Finalize goes unanswered; the
    // socket drops 0.2 s into utterance 2, when the 0.1 s cap has trimmed
    // all of utterance 1's audio.
    let server = MockDeepgram::start(MockDeepgramScript {
        drop_after_bytes: Some(40 * FRAME as u64 * 2 + 10 * FRAME as u64 * 2),
        ..early(&[&["Hello", "there"], &["Second", "one"]])
    })
    .await
    .unwrap();
    let mut config = config(&server);
    config.max_buffered = Duration::from_millis(100);
    let mut r = open(config);
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    let end = speak(&r.input, 0, 40).await;
    until_text(&mut r.transcripts, "Hello there").await;
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    utterance(&r.input, 200_000, 40).await;
    wait(&server, |s| s.drops == 1).await;
    drop(r.input);
    let finals = finals(&mut r.transcripts).await;
    assert_eq!(finals.len(), 2, "{finals:?}");
    assert_eq!(finals[0], "Hello there");
}

#[tokio::test(start_paused = true)]
async fn a_full_transcripts_channel_does_not_starve_the_socket() {
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let server = MockDeepgram::start(MockDeepgramScript {
        word_span: Duration::from_millis(20),
        ..script(&[&words])
    })
    .await
    .unwrap();
    let mut config = config(&server);
    config.keep_alive = Duration::from_millis(100);
    let mut r = open(config);
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    // A hundred interims, more than the channel holds; nobody reads.
    let end = speak(&r.input, 0, 100).await;
    wait(&server, |s| s.results_sent >= 100).await;
    wait(&server, |s| s.keep_alives >= 5).await;
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!(t.text, words.join(" "));
}

#[tokio::test(start_paused = true)]
async fn after_finalize_the_final_gets_the_first_result_deadline() {
    let server = MockDeepgram::start(MockDeepgramScript {
        stall_after_results: Some(1),
        ..script(&[&["one", "two"]])
    })
    .await
    .unwrap();
    let first = Duration::from_secs(4);
    let mut r = open(config(&server).with_deadlines(first, Duration::from_secs(1)));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    speak(&r.input, 0, 15).await;
    until_text(&mut r.transcripts, "one").await;
    // Audio after the result: the gap deadline runs, until `Finalize`.
    let end = speak(&r.input, 15 * FRAME as u64, 5).await;
    let ended = tokio::time::Instant::now();
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    assert_eq!(
        failure(&mut r.transcripts).await,
        SpeechFailure::FirstOutputTimeout(first)
    );
    assert!(ended.elapsed() >= first, "{:?}", ended.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_slow_close_after_the_input_ends_gives_the_finals() {
    let server = MockDeepgram::start(MockDeepgramScript {
        stall_after_results: Some(1),
        ..script(&[&["one", "two"]])
    })
    .await
    .unwrap();
    let mut config = config(&server).with_deadlines(Duration::from_secs(2), Duration::from_secs(1));
    config.close_timeout = Duration::from_secs(2);
    let mut r = open(config);
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    speak(&r.input, 0, 15).await;
    until_text(&mut r.transcripts, "one").await;
    drop(r.input);
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!(t.start, 0);
    assert_eq!(
        t.text, "one",
        "the words only an interim heard are not lost"
    );
    assert!(next(&mut r.transcripts).await.is_none());
}
