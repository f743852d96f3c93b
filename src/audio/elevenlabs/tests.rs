//! [`ElevenLabsSpeech`] against [`MockElevenLabs`] on 127.0.0.1: the
//! protocol's three messages, exact audio through odd chunk sizes, marks at
//! the provider's timestamps (a restarted alignment pass moving none), a
//! dropped stream closing its socket, the deadlines (a late consumer not
//! counted as the provider's gap, on paused time), a trailing odd byte
//! dropped, and typed failures that never show the key. Every wait is on
//! the mock's watches or the stream itself, bounded by [`GUARD`].

use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::stream::Session;
use super::*;
use crate::audio::Alignment;
use crate::mock::MockGate;
use crate::mock::elevenlabs::{
    ElevenLabsFault, ElevenLabsScript, MockElevenLabs, MockSpeech, RecordedText,
};

const KEY: &str = "xi-KEY-7f3a9c-do-not-leak";
const GUARD: Duration = Duration::from_secs(30);

async fn mock(script: ElevenLabsScript) -> MockElevenLabs {
    MockElevenLabs::start(script).await.unwrap()
}

/// Everything a synthesis yields: the PCM, the marks with the samples
/// received when each arrived, and the error that ended it.
#[derive(Debug, Default)]
struct Outcome {
    pcm: Vec<i16>,
    marks: Vec<(usize, u64, u64)>,
    error: Option<AudioError>,
}

async fn run(speech: &ElevenLabsSpeech, text: &str) -> Outcome {
    let mut out = Outcome::default();
    let mut events = speech.synthesize(text);
    let collect = async {
        while let Some(e) = events.next().await {
            match e {
                Ok(SynthEvent::Audio(a)) => out.pcm.extend(a),
                Ok(SynthEvent::Mark { chars, sample }) => {
                    out.marks.push((chars, sample, out.pcm.len() as u64))
                }
                Err(e) => out.error = Some(e),
            }
        }
    };
    tokio::time::timeout(GUARD, collect)
        .await
        .expect("synthesis hung");
    out
}

fn failure(out: &Outcome) -> SpeechFailure {
    match &out.error {
        Some(AudioError::Provider { provider, failure }) => {
            assert_eq!(*provider, "elevenlabs");
            failure.clone()
        }
        other => panic!("expected a provider failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_client_opens_flushes_and_ends_the_input() {
    let server = mock(ElevenLabsScript::new(KEY)).await;
    let config = server.config("voice-1").with_voice_settings(VoiceSettings {
        stability: Some(0.5),
        similarity_boost: Some(0.8),
        speed: Some(1.0),
    });
    let speech = ElevenLabsSpeech::new(config).unwrap();
    assert!(!speech.alignment_is_estimated());
    let out = run(&speech, "Hello world.").await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let sessions = server.sessions();
    let [s] = sessions.as_slice() else {
        panic!("{sessions:?}")
    };
    assert!(s.key_ok);
    assert_eq!(
        s.target,
        "/v1/text-to-speech/voice-1/stream-input?model_id=eleven_flash_v2_5\
         &output_format=pcm_24000&sync_alignment=true"
    );
    let initial = s.initial.clone().unwrap();
    assert_eq!(initial["text"], " ");
    assert_eq!(initial["voice_settings"]["stability"], 0.5);
    assert_eq!(initial["voice_settings"]["speed"], 1.0);
    assert_eq!(
        s.texts,
        vec![RecordedText {
            text: "Hello world. ".into(),
            flush: true,
            try_trigger_generation: false
        }]
    );
    assert!(s.ended && s.finished);
    assert_eq!(s.generated, vec![" Hello world. ".to_string()]);
}

#[tokio::test]
async fn audio_is_exact_through_odd_chunks_and_marks_are_the_providers_word_ends() {
    let text = "Grüß dich, Zoë — bye.";
    for (rate, chunk) in [
        (PcmRate::Hz24000, 1001),
        (PcmRate::Hz16000, 777),
        (PcmRate::Hz44100, 4096),
        (PcmRate::Hz22050, 3),
    ] {
        let server = mock(ElevenLabsScript::new(KEY).chunk_bytes(chunk)).await;
        let speech = ElevenLabsSpeech::new(server.config("v").with_rate(rate)).unwrap();
        let out = run(&speech, text).await;
        assert!(out.error.is_none(), "{rate:?}: {:?}", out.error);
        // The socket's buffer is the opening " " and the text with a
        // trailing space: the text's character i is the buffer's i + 1.
        let expected = server.script().render(&format!(" {text} "), rate.hz(), 0);
        assert_eq!(out.pcm, expected.samples, "{rate:?} chunk {chunk}");
        let want = word_marks(text, &expected);
        let got: Vec<(usize, u64)> = out.marks.iter().map(|&(c, s, _)| (c, s)).collect();
        assert_eq!(got, want, "{rate:?}");
        for &(chars, sample, received) in &out.marks {
            assert!(
                sample <= received,
                "mark {chars}@{sample} before its audio ({received})"
            );
        }
        // A cut in the middle of "dich," hears "Grüß" and no more.
        let mut alignment = Alignment::new(speech.alignment_is_estimated());
        for &(c, s) in &got {
            alignment.push(c, s);
        }
        let mid_dich = (expected.chars[7].start + expected.chars[7].end) / 2;
        assert_eq!(alignment.chars_at(mid_dich), 4);
        assert_eq!(alignment.chars_at(expected.chars[10].end), 10);
    }
}

/// The marks a text's speech should give: each word's end at its last
/// character's end, then the whole text at the last sample (the socket's
/// buffer is the opening " " and the text with a trailing space: the text's
/// character i is the buffer's i + 1).
fn word_marks(text: &str, expected: &MockSpeech) -> Vec<(usize, u64)> {
    let chars: Vec<char> = text.chars().collect();
    let mut want: Vec<(usize, u64)> = (0..chars.len())
        .filter(|&i| {
            !chars[i].is_whitespace() && chars.get(i + 1).is_none_or(|c| c.is_whitespace())
        })
        .map(|i| (i + 1, expected.chars[i + 1].end))
        .collect();
    want.push((chars.len(), expected.samples.len() as u64));
    want
}

#[tokio::test]
async fn an_alignment_pass_restarting_from_the_start_claims_nothing_early() {
    let text = "Hello there, how are you?";
    for restart in [1, 2, 3] {
        let server = mock(ElevenLabsScript::new(KEY).restart_alignment_at(restart)).await;
        let speech = ElevenLabsSpeech::new(server.config("v")).unwrap();
        let out = run(&speech, text).await;
        assert!(out.error.is_none(), "{:?}", out.error);
        let expected = server.script().render(&format!(" {text} "), 24_000, 0);
        assert_eq!(out.pcm, expected.samples);
        // The repeated characters move no mark: every word is heard where
        // its own audio ends, not where its repeat says.
        let got: Vec<(usize, u64)> = out.marks.iter().map(|&(c, s, _)| (c, s)).collect();
        assert_eq!(got, word_marks(text, &expected), "restart at {restart}");
    }
}

#[tokio::test]
async fn dropping_the_stream_closes_the_socket_and_stops_the_audio() {
    let gate = MockGate::new();
    let server = mock(ElevenLabsScript::new(KEY).hold_after(2, &gate)).await;
    let speech = ElevenLabsSpeech::new(server.config("v")).unwrap();
    let mut events = speech.synthesize("A long sentence that takes a good while to say.");
    let mut audio = 0;
    while audio < 2 {
        match tokio::time::timeout(GUARD, events.next()).await.unwrap() {
            Some(Ok(SynthEvent::Audio(_))) => audio += 1,
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    let mut early = server.early_closes();
    assert_eq!(*early.borrow(), 0);
    let cut = Instant::now();
    drop(events);
    tokio::time::timeout(GUARD, early.wait_for(|n| *n == 1))
        .await
        .expect("the server never saw the close")
        .unwrap();
    let seen = server.last_early_close().unwrap();
    eprintln!("cut → server sees the close: {:?}", seen - cut);
    // The server would go on now, but its client is gone: nothing more.
    gate.open();
    tokio::task::yield_now().await;
    assert_eq!(*server.chunks_sent().borrow(), 2);
    assert!(!server.sessions()[0].finished);
}

#[tokio::test]
async fn deadlines_count_audio_not_pings() {
    // Pings after two chunks: a gap timeout, about on time.
    let stall = ElevenLabsFault::Stall {
        after_chunks: 2,
        ping_every: Duration::from_millis(20),
    };
    let server = mock(ElevenLabsScript::new(KEY).chunk_bytes(100).fault(stall)).await;
    let gap = Duration::from_millis(300);
    let config = server
        .config("v")
        .with_deadlines(Duration::from_secs(10), gap);
    let started = Instant::now();
    let out = run(&ElevenLabsSpeech::new(config).unwrap(), "Hello there.").await;
    let elapsed = started.elapsed();
    assert_eq!(failure(&out), SpeechFailure::OutputGapTimeout(gap));
    assert_eq!(out.pcm.len(), 100);
    assert!(
        elapsed >= gap && elapsed < gap + Duration::from_secs(5),
        "{elapsed:?}"
    );
    tokio::time::timeout(GUARD, server.early_closes().wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();

    // Pings from the start, or a slow first chunk: a first-output timeout.
    let first = Duration::from_millis(200);
    for script in [
        ElevenLabsScript::new(KEY).fault(ElevenLabsFault::Stall {
            after_chunks: 0,
            ping_every: Duration::from_millis(20),
        }),
        ElevenLabsScript::new(KEY).delays(Duration::from_secs(20), Duration::ZERO),
    ] {
        let server = mock(script).await;
        let config = server
            .config("v")
            .with_deadlines(first, Duration::from_secs(10));
        let out = run(&ElevenLabsSpeech::new(config).unwrap(), "Hi.").await;
        assert_eq!(failure(&out), SpeechFailure::FirstOutputTimeout(first));
        assert!(out.pcm.is_empty());
    }
}

#[tokio::test]
async fn failures_are_typed_and_never_show_the_key() {
    let leak = format!("echoing {KEY} back");
    let reject = |status, retry_after: Option<&str>| ElevenLabsFault::Reject {
        status,
        retry_after: retry_after.map(str::to_string),
        message: leak.clone(),
    };
    type Expect = fn(&SpeechFailure) -> bool;
    let cases: Vec<(ElevenLabsFault, Expect)> = vec![
        (
            reject(403, None),
            |f| matches!(f, SpeechFailure::Unauthorized { status: 403, message } if message.contains("***")),
        ),
        (
            reject(429, Some("7")),
            |f| matches!(f, SpeechFailure::RateLimited { retry_after: Some(d), .. } if *d == Duration::from_secs(7)),
        ),
        (reject(503, None), |f| {
            matches!(f, SpeechFailure::Status { status: 503, .. })
        }),
        (
            ElevenLabsFault::ErrorMessage {
                after_chunks: 1,
                error: "quota_exceeded".into(),
                message: leak.clone(),
                code: Some(1008),
            },
            |f| matches!(f, SpeechFailure::RateLimited { retry_after: None, message } if message.contains("quota_exceeded") && message.contains("***")),
        ),
        (
            ElevenLabsFault::ErrorMessage {
                after_chunks: 0,
                error: "overloaded".into(),
                message: "try later".into(),
                code: Some(503),
            },
            |f| matches!(f, SpeechFailure::Status { status: 503, message } if message.contains("try later")),
        ),
        (
            ElevenLabsFault::Close {
                after_chunks: 1,
                code: 1011,
                reason: leak.clone(),
            },
            |f| matches!(f, SpeechFailure::Connection(m) if m.contains("1011")),
        ),
        (
            ElevenLabsFault::Close {
                after_chunks: 1,
                code: 1000,
                reason: String::new(),
            },
            |f| *f == SpeechFailure::Dropped,
        ),
        (ElevenLabsFault::MalformedJson { after_chunks: 1 }, |f| {
            matches!(f, SpeechFailure::Malformed(_))
        }),
        (ElevenLabsFault::BadBase64 { after_chunks: 0 }, |f| {
            matches!(f, SpeechFailure::Malformed(_))
        }),
        (ElevenLabsFault::Drop { after_chunks: 1 }, |f| {
            *f == SpeechFailure::Dropped
        }),
    ];
    for (fault, expected) in cases {
        let server = mock(ElevenLabsScript::new(KEY).fault(fault.clone())).await;
        let out = run(
            &ElevenLabsSpeech::new(server.config("v")).unwrap(),
            "Hello world.",
        )
        .await;
        let f = failure(&out);
        assert!(expected(&f), "{fault:?} gave {f:?}");
        let error = out.error.unwrap();
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(KEY), "{shown}");
        }
    }

    // A wrong key: the mock's own 401.
    let server = mock(ElevenLabsScript::new(KEY)).await;
    let wrong = ElevenLabsConfig::new("v", "xi-WRONG-key-31337").with_base_url(server.base_url());
    let speech = ElevenLabsSpeech::new(wrong).unwrap();
    assert!(!format!("{speech:?}").contains("xi-WRONG-key-31337"));
    let out = run(&speech, "Hello.").await;
    assert!(matches!(
        failure(&out),
        SpeechFailure::Unauthorized { status: 401, .. }
    ));
    assert!(!format!("{:?}", out.error).contains("xi-WRONG-key-31337"));
    assert!(!server.sessions()[0].key_ok);

    // Nobody listening: a connection failure.
    let addr = server.addr();
    drop(server);
    let gone = ElevenLabsConfig::new("v", KEY).with_base_url(format!("ws://{addr}/v1"));
    let out = run(&ElevenLabsSpeech::new(gone).unwrap(), "Hello.").await;
    assert!(
        matches!(failure(&out), SpeechFailure::Connection(_)),
        "{:?}",
        out.error
    );
}

#[tokio::test]
async fn a_trailing_odd_byte_is_dropped_and_blank_text_needs_no_socket() {
    let config = Arc::new(ElevenLabsConfig::new("v", KEY));
    let request = "ws://127.0.0.1:9/v1".into_client_request().unwrap();
    let mut s = Session::new(config.clone(), request, "Hi");
    let odd = serde_json::json!({"audio": "AQID"}).to_string(); // 3 bytes
    s.on_message(Message::text(odd)).unwrap();
    // The odd byte at `isFinal` is dropped: the whole sample and the marks
    // still come, and nothing fails.
    let end = s.on_message(Message::text(r#"{"isFinal":true}"#));
    assert!(end.is_ok(), "{end:?}");
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(s.next().await.unwrap().unwrap());
    }
    assert_eq!(
        events,
        vec![
            SynthEvent::Audio(vec![i16::from_le_bytes([1, 2])]),
            SynthEvent::Mark {
                chars: 2,
                sample: 1
            },
            SynthEvent::Mark {
                chars: 2,
                sample: 1
            },
        ]
    );

    let speech = ElevenLabsSpeech::new((*config).clone()).unwrap();
    let events: Vec<_> = speech.synthesize("  ").collect().await;
    assert_eq!(
        events,
        vec![Ok(SynthEvent::Mark {
            chars: 2,
            sample: 0
        })]
    );
    assert!(ElevenLabsSpeech::new(ElevenLabsConfig::new("a/b", KEY)).is_err());
}

/// Holds tokio's paused clock still while sockets do their work: while a
/// blocking task runs, a current-thread runtime does not auto-advance, so
/// only [`tokio::time::advance`] moves time (an idle moment waiting on the
/// loopback cannot fire a deadline).
struct HoldClock(Option<std::sync::mpsc::Sender<()>>);

impl HoldClock {
    fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        drop(tokio::task::spawn_blocking(move || rx.recv()));
        Self(Some(tx))
    }
}

impl Drop for HoldClock {
    fn drop(&mut self) {
        self.0.take();
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_consumer_is_not_a_gap_in_the_providers_audio() {
    let _clock = HoldClock::new();
    let gate = MockGate::new();
    let server = mock(ElevenLabsScript::new(KEY).hold_after(1, &gate)).await;
    let gap = Duration::from_millis(500);
    let config = server
        .config("v")
        .with_deadlines(Duration::from_secs(10), gap);
    let speech = ElevenLabsSpeech::new(config).unwrap();
    let text = "Hello there.";
    let mut events = speech.synthesize(text);
    let mut pcm = Vec::new();
    while pcm.is_empty() {
        match events.next().await {
            Some(Ok(SynthEvent::Audio(a))) => pcm.extend(a),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    }
    // The consumer is busy for three gaps; the provider then sends at once.
    tokio::time::advance(gap * 3).await;
    gate.open();
    while let Some(e) = events.next().await {
        match e {
            Ok(SynthEvent::Audio(a)) => pcm.extend(a),
            Ok(_) => {}
            Err(e) => panic!("the consumer's delay counted as the provider's: {e}"),
        }
    }
    let expected = server.script().render(&format!(" {text} "), 24_000, 0);
    assert_eq!(pcm, expected.samples);
}

#[tokio::test]
async fn in_band_auth_and_quota_errors_keep_their_kind() {
    type Expect = fn(&SpeechFailure) -> bool;
    let cases: [(&str, Option<u16>, Expect); 5] = [
        (
            "invalid_api_key",
            Some(1008),
            |f| matches!(f, SpeechFailure::Unauthorized { status: 401, message } if message.contains("invalid_api_key")),
        ),
        ("unauthorized", None, |f| {
            matches!(f, SpeechFailure::Unauthorized { status: 401, .. })
        }),
        (
            "quota_exceeded",
            Some(1008),
            |f| matches!(f, SpeechFailure::RateLimited { retry_after: None, message } if message.contains("quota_exceeded")),
        ),
        ("rate_limit_exceeded", Some(1008), |f| {
            matches!(
                f,
                SpeechFailure::RateLimited {
                    retry_after: None,
                    ..
                }
            )
        }),
        (
            "input_timeout_exceeded",
            Some(1008),
            |f| matches!(f, SpeechFailure::Connection(m) if m.contains("1008")),
        ),
    ];
    for (kind, code, expected) in cases {
        let fault = ElevenLabsFault::ErrorMessage {
            after_chunks: 0,
            error: kind.into(),
            message: "refused".into(),
            code,
        };
        let server = mock(ElevenLabsScript::new(KEY).fault(fault)).await;
        let out = run(&ElevenLabsSpeech::new(server.config("v")).unwrap(), "Hi.").await;
        let f = failure(&out);
        assert!(expected(&f), "{kind} ({code:?}) gave {f:?}");
        assert_eq!(
            f.is_retryable(),
            !matches!(f, SpeechFailure::Unauthorized { .. }),
            "{f:?}"
        );
    }
}
