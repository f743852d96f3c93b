//! The recognizer against [`MockDeepgram`]: real PCM in, the protocol
//! checked from both ends. Waits are on signals (the transcripts, the mock's
//! watch), never on sleeps; the tests on timers run on paused time.

use std::time::Duration;

use tokio::sync::mpsc;

use super::{DeepgramConfig, DeepgramTranscriber};
use crate::audio::{
    AudioError, AudioFrame, Recognition, RecognizerInput, SpeechFailure, Transcriber, Transcript,
};
use crate::mock::deepgram::{MockDeepgram, MockDeepgramScript, MockDeepgramStats, MockReject};

mod review;

const KEY: &str = "dg-test-key-7f3a9c";
const RATE: u32 = 16_000;
/// 20 ms frames.
const FRAME: usize = 320;

fn config(server: &MockDeepgram) -> DeepgramConfig {
    DeepgramConfig::new(KEY).with_base_url(server.url())
}

fn open(config: DeepgramConfig) -> Recognition {
    let recognizer = DeepgramTranscriber::new(config).expect("valid config");
    recognizer.open().expect("inside a runtime")
}

/// A 440 Hz tone frame at input `position`.
fn frame(position: u64) -> AudioFrame {
    let samples = (0..FRAME as u64)
        .map(|i| {
            let t = (position + i) as f64 / f64::from(RATE);
            ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
        })
        .collect();
    AudioFrame::new(samples, RATE, position)
}

/// An utterance's frames at input `start`; its end position.
async fn speak(input: &mpsc::Sender<RecognizerInput>, start: u64, frames: u64) -> u64 {
    for i in 0..frames {
        input
            .send(RecognizerInput::Frame(frame(start + i * FRAME as u64)))
            .await
            .expect("recognizer running");
    }
    start + frames * FRAME as u64
}

/// `SpeechStarted`, the frames, `SpeechEnded`.
async fn utterance(input: &mpsc::Sender<RecognizerInput>, start: u64, frames: u64) -> u64 {
    let _ = input
        .send(RecognizerInput::SpeechStarted { position: start })
        .await;
    let end = speak(input, start, frames).await;
    let _ = input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await;
    end
}

type Rx = mpsc::Receiver<Result<Transcript, AudioError>>;

async fn next(r: &mut Rx) -> Option<Result<Transcript, AudioError>> {
    tokio::time::timeout(Duration::from_secs(60), r.recv())
        .await
        .expect("a transcript or the end within a minute")
}

/// The interims up to the next final, and the final.
async fn until_final(r: &mut Rx) -> (Vec<Transcript>, Transcript) {
    let mut interims = Vec::new();
    loop {
        match next(r).await {
            Some(Ok(t)) if t.is_final => return (interims, t),
            Some(Ok(t)) => interims.push(t),
            other => panic!("expected a transcript, got {other:?}"),
        }
    }
}

async fn failure(r: &mut Rx) -> SpeechFailure {
    loop {
        match next(r).await {
            Some(Ok(_)) => continue,
            Some(Err(AudioError::Provider { provider, failure })) => {
                assert_eq!(provider, "deepgram");
                return failure;
            }
            other => panic!("expected a provider failure, got {other:?}"),
        }
    }
}

async fn wait(server: &MockDeepgram, until: impl FnMut(&MockDeepgramStats) -> bool) {
    let mut stats = server.stats();
    tokio::time::timeout(Duration::from_secs(60), stats.wait_for(until))
        .await
        .expect("the mock saw it within a minute")
        .expect("mock running");
}

fn script(utterances: &[&[&str]]) -> MockDeepgramScript {
    MockDeepgramScript {
        key: Some(KEY.into()),
        ..MockDeepgramScript::new(utterances)
    }
}

#[tokio::test]
async fn transcripts_sit_in_the_input_timeline() {
    let server = MockDeepgram::start(script(&[&["Hello", "there"], &["Second", "one"]]))
        .await
        .unwrap();
    let mut r = open(config(&server).with_language("en"));
    // 0.5 s of speech at 0: two words of 250 ms.
    utterance(&r.input, 0, 25).await;
    let (interims, first) = until_final(&mut r.transcripts).await;
    assert_eq!(first.text, "Hello there");
    assert_eq!((first.start, first.end), (0, 8000));
    assert_eq!(
        interims.last().map(|t| t.text.as_str()),
        Some("Hello there")
    );
    // Ten seconds of silence are never sent: the second utterance is at
    // connection time 0.5 s, input position 168 000.
    let p = 168_000;
    utterance(&r.input, p, 25).await;
    let (interims, second) = until_final(&mut r.transcripts).await;
    assert_eq!(second.text, "Second one");
    assert_eq!((second.start, second.end), (p, p + 8000));
    assert!(!interims.is_empty());
    for t in &interims {
        assert!(
            t.start >= p && t.end > t.start && t.end <= p + 8000,
            "{t:?}"
        );
    }
    drop(r.input);
    assert!(
        next(&mut r.transcripts).await.is_none(),
        "no more transcripts"
    );
    let stats = server.stats().borrow().clone();
    assert_eq!((stats.finalizes, stats.close_streams), (2, 1));
    assert_eq!(stats.audio_bytes, 2 * 25 * FRAME as u64 * 2);
    let c = &server.connections()[0];
    assert_eq!(c.path, "/v1/listen");
    assert_eq!(
        c.header("authorization"),
        Some(format!("Token {KEY}").as_str())
    );
    for (name, value) in [
        ("model", "nova-3"),
        ("encoding", "linear16"),
        ("sample_rate", "16000"),
        ("channels", "1"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("utterance_end_ms", "1000"),
        ("vad_events", "true"),
        ("smart_format", "true"),
        ("language", "en"),
    ] {
        assert_eq!(c.query(name), Some(value), "{name}");
    }
}

#[tokio::test]
async fn one_final_when_the_server_sends_two() {
    let server = MockDeepgram::start(MockDeepgramScript {
        both_finals: true,
        ..script(&[&["only", "once"], &["again"]])
    })
    .await
    .unwrap();
    let mut r = open(config(&server));
    utterance(&r.input, 1000, 25).await;
    let (_, first) = until_final(&mut r.transcripts).await;
    assert_eq!((first.text.as_str(), first.start), ("only once", 1000));
    utterance(&r.input, 50_000, 15).await;
    drop(r.input);
    let mut finals = vec![first];
    while let Some(t) = next(&mut r.transcripts).await {
        let t = t.expect("no failure");
        if t.is_final {
            finals.push(t);
        }
    }
    let texts: Vec<_> = finals.iter().map(|t| t.text.as_str()).collect();
    assert_eq!(texts, ["only once", "again"]);
}

#[tokio::test(start_paused = true)]
async fn keep_alives_carry_the_socket_through_silence() {
    let server = MockDeepgram::start(MockDeepgramScript {
        idle_timeout: Some(Duration::from_millis(300)),
        ..script(&[&["still", "here"]])
    })
    .await
    .unwrap();
    let mut config = config(&server);
    config.keep_alive = Duration::from_millis(100);
    let mut r = open(config);
    // Two seconds of silence: twenty keep-alives, and no idle close.
    wait(&server, |s| s.keep_alives >= 20).await;
    let stats = server.stats().borrow().clone();
    assert_eq!((stats.connections, stats.idle_closes), (1, 0));
    utterance(&r.input, 32_000, 25).await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!((t.text.as_str(), t.start), ("still here", 32_000));
    assert_eq!(server.stats().borrow().connections, 1);
}

#[tokio::test(start_paused = true)]
async fn without_keep_alives_the_mock_closes_and_the_next_audio_reconnects() {
    let server = MockDeepgram::start(MockDeepgramScript {
        idle_timeout: Some(Duration::from_millis(300)),
        ..script(&[&["back"]])
    })
    .await
    .unwrap();
    let mut config = config(&server);
    config.keep_alive = Duration::from_secs(1);
    let mut r = open(config);
    wait(&server, |s| s.idle_closes == 1).await;
    utterance(&r.input, 80_000, 15).await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!((t.text.as_str(), t.start), ("back", 80_000));
    assert_eq!(server.stats().borrow().connections, 2);
}

#[tokio::test]
async fn close_stream_delivers_the_last_results_before_the_end() {
    let server = MockDeepgram::start(script(&[&["last", "words", "here"]]))
        .await
        .unwrap();
    let mut r = open(config(&server));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 4000 })
        .await;
    speak(&r.input, 4000, 40).await;
    drop(r.input);
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!(
        (t.text.as_str(), t.start, t.end),
        ("last words here", 4000, 16_800)
    );
    assert!(next(&mut r.transcripts).await.is_none());
    let stats = server.stats().borrow().clone();
    assert_eq!((stats.finalizes, stats.close_streams), (0, 1));
}

#[tokio::test]
async fn dropping_the_recognition_closes_the_socket() {
    let server = MockDeepgram::start(script(&[])).await.unwrap();
    let r = open(config(&server));
    wait(&server, |s| s.connections == 1).await;
    drop(r);
    wait(&server, |s| s.client_closes == 1).await;
    assert_eq!(server.stats().borrow().close_streams, 0);
}

#[tokio::test]
async fn refusals_are_typed_and_never_show_the_key() {
    let server = MockDeepgram::start(MockDeepgramScript {
        key: Some("another-key".into()),
        ..MockDeepgramScript::new(&[])
    })
    .await
    .unwrap();
    let mut r = open(config(&server));
    let f = failure(&mut r.transcripts).await;
    let SpeechFailure::Unauthorized { status, message } = &f else {
        panic!("{f:?}")
    };
    assert_eq!(*status, 401);
    // The mock echoed the header it got; the key is redacted.
    assert_eq!(message, "Invalid credentials: Token ***");
    let shown = format!(
        "{f} {f:?} {:?}",
        AudioError::provider("deepgram", f.clone())
    );
    assert!(!shown.contains(KEY), "{shown}");
    let t = DeepgramTranscriber::new(config(&server)).unwrap();
    assert!(!format!("{t:?}").contains(KEY));

    for (reject, want) in [
        (
            MockReject {
                status: 429,
                retry_after: Some(7),
                message: "Too many requests".into(),
            },
            SpeechFailure::RateLimited {
                retry_after: Some(Duration::from_secs(7)),
                message: "Too many requests".into(),
            },
        ),
        (
            MockReject {
                status: 503,
                retry_after: None,
                message: "Service unavailable".into(),
            },
            SpeechFailure::Status {
                status: 503,
                message: "Service unavailable".into(),
            },
        ),
    ] {
        let server = MockDeepgram::start(MockDeepgramScript {
            reject: Some(reject),
            ..script(&[])
        })
        .await
        .unwrap();
        let mut r = open(config(&server));
        assert_eq!(failure(&mut r.transcripts).await, want);
        assert!(next(&mut r.transcripts).await.is_none(), "the stream ends");
    }
}

#[tokio::test]
async fn a_malformed_frame_is_malformed() {
    let server = MockDeepgram::start(MockDeepgramScript {
        malformed: true,
        ..script(&[&["x"]])
    })
    .await
    .unwrap();
    let mut r = open(config(&server));
    utterance(&r.input, 0, 5).await;
    let f = failure(&mut r.transcripts).await;
    assert!(matches!(f, SpeechFailure::Malformed(_)), "{f:?}");
    assert!(!f.is_retryable());
}

#[tokio::test]
async fn a_socket_dropped_mid_utterance_reconnects_and_resends_it() {
    // The mock drops the first socket after 0.5 s of audio; the utterance
    // is 1 s long.
    let server = MockDeepgram::start(MockDeepgramScript {
        drop_after_bytes: Some(16_000),
        ..script(&[&["one", "two", "three", "four"]])
    })
    .await
    .unwrap();
    let mut r = open(config(&server));
    let p = 48_000;
    let end = utterance(&r.input, p, 50).await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!(t.text, "one two three four");
    assert_eq!((t.start, t.end), (p, end));
    let stats = server.stats().borrow().clone();
    assert_eq!((stats.connections, stats.drops), (2, 1));
    // The whole utterance went to the second socket.
    assert!(stats.audio_bytes >= 32_000 + 16_000, "{stats:?}");
    assert!(stats.finalizes >= 1);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_server_misses_the_first_result_deadline() {
    let server = MockDeepgram::start(MockDeepgramScript {
        stall: true,
        ..script(&[&["never"]])
    })
    .await
    .unwrap();
    let deadline = Duration::from_secs(2);
    let mut r = open(config(&server).with_deadlines(deadline, Duration::from_secs(1)));
    wait(&server, |s| s.connections == 1).await;
    let sent = tokio::time::Instant::now();
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    speak(&r.input, 0, 10).await;
    assert_eq!(
        failure(&mut r.transcripts).await,
        SpeechFailure::FirstOutputTimeout(deadline)
    );
    let took = sent.elapsed();
    assert!(
        took >= deadline && took < deadline + Duration::from_millis(200),
        "{took:?}"
    );
    assert!(next(&mut r.transcripts).await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_final_not_answered_after_finalize_is_a_deadline() {
    let server = MockDeepgram::start(MockDeepgramScript {
        stall: true,
        ..script(&[&["never"]])
    })
    .await
    .unwrap();
    let mut config = config(&server).with_deadlines(Duration::from_secs(3), Duration::from_secs(1));
    config.keep_alive = Duration::from_millis(500);
    let mut r = open(config);
    utterance(&r.input, 0, 10).await;
    // Keep-alives are not output: they do not hold the deadline off.
    assert_eq!(
        failure(&mut r.transcripts).await,
        SpeechFailure::FirstOutputTimeout(Duration::from_secs(3))
    );
    assert!(server.stats().borrow().keep_alives >= 4);
}

#[tokio::test]
async fn a_frame_at_the_wrong_rate_is_an_error() {
    let server = MockDeepgram::start(script(&[])).await.unwrap();
    let mut r = open(config(&server));
    let _ = r
        .input
        .send(RecognizerInput::Frame(AudioFrame::new(
            vec![0; 160],
            8000,
            0,
        )))
        .await;
    assert!(matches!(
        next(&mut r.transcripts).await,
        Some(Err(AudioError::Engine {
            engine: "deepgram",
            ..
        }))
    ));
}

#[tokio::test]
async fn mulaw_goes_out_at_one_byte_a_sample() {
    let server = MockDeepgram::start(script(&[&["phone", "call"]]))
        .await
        .unwrap();
    let mut r = open(config(&server).with_audio(super::DeepgramEncoding::Mulaw, 8000));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 800 })
        .await;
    for i in 0..25u64 {
        let f = AudioFrame::new(vec![1000; 160], 8000, 800 + i * 160);
        let _ = r.input.send(RecognizerInput::Frame(f)).await;
    }
    let _ = r
        .input
        .send(RecognizerInput::SpeechEnded { position: 4800 })
        .await;
    let (_, t) = until_final(&mut r.transcripts).await;
    assert_eq!((t.text.as_str(), t.start, t.end), ("phone call", 800, 4800));
    let c = &server.connections()[0];
    assert_eq!(
        (c.query("encoding"), c.query("sample_rate")),
        (Some("mulaw"), Some("8000"))
    );
    assert_eq!(server.stats().borrow().audio_bytes, 4000);
}

#[tokio::test(start_paused = true)]
async fn results_that_stop_while_audio_flows_miss_the_gap_deadline() {
    let server = MockDeepgram::start(MockDeepgramScript {
        stall_after_results: Some(1),
        ..script(&[&["one", "two", "three", "four"]])
    })
    .await
    .unwrap();
    let gap = Duration::from_secs(1);
    let mut r = open(config(&server).with_deadlines(Duration::from_secs(4), gap));
    let _ = r
        .input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await;
    // 0.3 s of audio: the first word's interim.
    speak(&r.input, 0, 15).await;
    let t = next(&mut r.transcripts).await;
    assert!(
        matches!(&t, Some(Ok(t)) if t.text == "one" && !t.is_final),
        "{t:?}"
    );
    // Audio keeps flowing, results do not.
    speak(&r.input, 4800, 15).await;
    assert_eq!(
        failure(&mut r.transcripts).await,
        SpeechFailure::OutputGapTimeout(gap)
    );
}
