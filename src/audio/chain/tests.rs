//! The chains with scripted engines. A fake synthesizer speaks each
//! character as a run of samples holding its code point, so the audio a
//! chain passes on can be read back as the characters a caller heard.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;

use super::*;
use crate::audio::{
    AudioError, AudioFrame, Recognition, RecognizerInput, SpeechFailure, SynthEvent, Transcript,
};

const PER_CHAR: usize = 10;

/// How a fake synthesizer ends.
#[derive(Clone, Copy)]
enum Ending {
    Completes,
    /// Fails after speaking this many characters (mid-word, say).
    FailsAfter(usize),
    FailsFirst,
    /// Ends at once with a mark for the whole text and no audio.
    MarksOnly,
}

struct FakeSynth {
    name: &'static str,
    rate: u32,
    ending: Ending,
    texts: Arc<Mutex<Vec<String>>>,
}

impl FakeSynth {
    fn new(name: &'static str, ending: Ending) -> (Self, Arc<Mutex<Vec<String>>>) {
        let texts = Arc::new(Mutex::new(Vec::new()));
        let s = Self {
            name,
            rate: 16_000,
            ending,
            texts: texts.clone(),
        };
        (s, texts)
    }
}

fn refused() -> AudioError {
    AudioError::provider(
        "fake",
        SpeechFailure::Status {
            status: 503,
            message: "down".into(),
        },
    )
}

impl Synthesizer for FakeSynth {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn name(&self) -> &'static str {
        self.name
    }

    /// One chunk per character; a mark after each word, like espeak-ng.
    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        self.texts.lock().unwrap().push(text.to_string());
        let chars: Vec<char> = text.chars().collect();
        let limit = match self.ending {
            Ending::Completes => chars.len(),
            Ending::FailsAfter(n) => n.min(chars.len()),
            Ending::FailsFirst | Ending::MarksOnly => 0,
        };
        let mut events: Vec<Result<SynthEvent, AudioError>> = Vec::new();
        for (i, c) in chars.iter().enumerate().take(limit) {
            events.push(Ok(SynthEvent::Audio(vec![*c as i16; PER_CHAR])));
            let word_end = chars.get(i + 1).is_none_or(|n| n.is_whitespace()) && !c.is_whitespace();
            if word_end {
                events.push(Ok(SynthEvent::Mark {
                    chars: i + 1,
                    sample: ((i + 1) * PER_CHAR) as u64,
                }));
            }
        }
        match self.ending {
            Ending::MarksOnly => events.push(Ok(SynthEvent::Mark {
                chars: chars.len(),
                sample: 0,
            })),
            Ending::Completes => events.push(Ok(SynthEvent::Mark {
                chars: chars.len(),
                sample: (chars.len() * PER_CHAR) as u64,
            })),
            _ => events.push(Err(refused())),
        }
        stream::iter(events).boxed()
    }
}

async fn run(
    chain: &SynthesizerChain,
    text: &str,
) -> (Vec<i16>, Vec<(usize, u64)>, Option<AudioError>) {
    let mut s = chain.synthesize(text);
    let (mut pcm, mut marks, mut error) = (Vec::new(), Vec::new(), None);
    while let Some(e) = s.next().await {
        match e {
            Ok(SynthEvent::Audio(a)) => pcm.extend(a),
            Ok(SynthEvent::Mark { chars, sample }) => marks.push((chars, sample)),
            Err(e) => error = Some(e),
        }
    }
    (pcm, marks, error)
}

/// The characters heard: one per run of `PER_CHAR` samples.
fn heard(pcm: &[i16]) -> String {
    assert_eq!(pcm.len() % PER_CHAR, 0, "whole characters only");
    pcm.chunks(PER_CHAR)
        .map(|c| {
            assert!(c.iter().all(|s| *s == c[0]), "a character cut in two");
            char::from_u32(c[0] as u32).unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_mid_segment_failure_continues_from_the_last_word_with_nothing_repeated() {
    let text = "Sunny and mild in Paris today.";
    // Fails after "Sunny and mi": "mi" is held, then dropped.
    let (a, a_texts) = FakeSynth::new("a", Ending::FailsAfter(12));
    let (b, b_texts) = FakeSynth::new("b", Ending::Completes);
    let chain = SynthesizerChain::new(a).then(b);
    let (pcm, marks, error) = run(&chain, text).await;
    assert_eq!(error, None);
    assert_eq!(*a_texts.lock().unwrap(), vec![text.to_string()]);
    assert_eq!(
        *b_texts.lock().unwrap(),
        vec!["mild in Paris today.".to_string()]
    );
    // Every character exactly once, in order (the space before "mild" was
    // said by neither engine's audio only if skipped: it is skipped).
    assert_eq!(heard(&pcm), "Sunny andmild in Paris today.");
    // Marks continue across the engines: characters of the whole text at
    // the samples of the whole segment, ending with the whole text.
    assert_eq!(
        marks,
        vec![(5, 50), (9, 90), (14, 130), (17, 160), (23, 220), (30, 290),]
    );
    let status = chain.providers();
    assert_eq!(
        status[0].breaker,
        BreakerState::Closed {
            consecutive_failures: 1
        }
    );
}

#[tokio::test]
async fn a_failure_before_audio_goes_to_the_next_engine_and_the_breaker_skips_it() {
    let (a, a_texts) = FakeSynth::new("hosted", Ending::FailsFirst);
    let (b, b_texts) = FakeSynth::new("local", Ending::Completes);
    let chain = SynthesizerChain::new(a)
        .then(b)
        .with_breakers(BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_secs(60),
        });
    for _ in 0..3 {
        let (pcm, marks, error) = run(&chain, "Hello there.").await;
        assert_eq!(error, None);
        assert_eq!(heard(&pcm), "Hello there.");
        assert_eq!(marks.last(), Some(&(12, 120)));
    }
    assert_eq!(a_texts.lock().unwrap().len(), 2, "open after two failures");
    assert_eq!(b_texts.lock().unwrap().len(), 3);
    assert!(matches!(
        chain.providers()[0].breaker,
        BreakerState::Open { .. }
    ));
    assert_eq!(chain.providers()[1].name, "local");
}

#[tokio::test]
async fn when_every_engine_fails_the_audio_heard_stays_and_the_error_ends_it() {
    let (a, _) = FakeSynth::new("a", Ending::FailsAfter(3));
    let (b, _) = FakeSynth::new("a", Ending::FailsAfter(4));
    let chain = SynthesizerChain::new(a).then(b);
    assert_eq!(chain.providers()[1].name, "a#2");
    let (pcm, marks, error) = run(&chain, "ab cdefgh ij").await;
    assert!(error.is_some());
    // "ab" from the first (" c" held and dropped), then "cdef" from the
    // last: nothing else will say it, so it is passed on.
    assert_eq!(heard(&pcm), "abcdef");
    assert_eq!(marks, vec![(2, 20)]);
}

#[tokio::test]
async fn another_rate_is_resampled_and_its_marks_scaled() {
    let (a, _) = FakeSynth::new("a", Ending::FailsFirst);
    let (mut b, _) = FakeSynth::new("b", Ending::Completes);
    b.rate = 8_000;
    let chain = SynthesizerChain::new(a).then(b);
    let (pcm, marks, error) = run(&chain, "one two").await;
    assert_eq!(error, None);
    // 70 samples at 8 kHz are 140 at 16 kHz (give or take the filter).
    assert!((130..=150).contains(&pcm.len()), "{}", pcm.len());
    assert_eq!(marks[0], (3, 60));
    assert_eq!(marks.last(), Some(&(7, pcm.len() as u64)));
}

// ---------------------------------------------------------------------------
// Recognition.

/// A fake recognizer: a final per utterance saying how many frames it got;
/// fails (once its `fail_at` frame arrives) with an error.
struct FakeStt {
    name: &'static str,
    fail_at: Option<usize>,
    inputs: Arc<Mutex<Vec<RecognizerInput>>>,
}

impl Transcriber for FakeStt {
    fn sample_rate(&self) -> u32 {
        16_000
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn open(&self) -> Result<Recognition, AudioError> {
        let (input, mut rx) = mpsc::channel::<RecognizerInput>(8);
        let (out, transcripts) = mpsc::channel(8);
        let (name, fail_at, seen) = (self.name, self.fail_at, self.inputs.clone());
        tokio::spawn(async move {
            let (mut frames, mut start, mut total, mut open) = (0, 0, 0, false);
            while let Some(i) = rx.recv().await {
                seen.lock().unwrap().push(i.clone());
                match i {
                    RecognizerInput::SpeechStarted { position } => {
                        (frames, start, open) = (0, position, true)
                    }
                    RecognizerInput::Frame(_) => {
                        frames += 1;
                        total += 1;
                        if Some(total) == fail_at {
                            let _ = out.send(Err(refused())).await;
                            return;
                        }
                    }
                    RecognizerInput::SpeechEnded { position } => {
                        open = false;
                        let t = Transcript {
                            text: format!("{name}:{frames}"),
                            is_final: true,
                            start,
                            end: position,
                        };
                        if out.send(Ok(t)).await.is_err() {
                            return;
                        }
                    }
                }
            }
            // The input closed mid-utterance: as the real engines do, its
            // final closes it.
            if open {
                let text = format!("{name}:{frames}");
                let t = Transcript {
                    text,
                    is_final: true,
                    start,
                    end: start,
                };
                let _ = out.send(Ok(t)).await;
            }
        });
        Ok(Recognition { input, transcripts })
    }
}

fn fake_stt(
    name: &'static str,
    fail_at: Option<usize>,
) -> (FakeStt, Arc<Mutex<Vec<RecognizerInput>>>) {
    let inputs = Arc::new(Mutex::new(Vec::new()));
    (
        FakeStt {
            name,
            fail_at,
            inputs: inputs.clone(),
        },
        inputs,
    )
}

async fn say(r: &Recognition, start: u64, frames: u64) {
    r.input
        .send(RecognizerInput::SpeechStarted { position: start })
        .await
        .unwrap();
    for i in 0..frames {
        let f = AudioFrame::new(vec![i as i16; 320], 16_000, start + i * 320);
        r.input.send(RecognizerInput::Frame(f)).await.unwrap();
    }
    r.input
        .send(RecognizerInput::SpeechEnded {
            position: start + frames * 320,
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_recognizer_failing_mid_utterance_hands_its_audio_to_the_next() {
    // The first engine hears one utterance of 5 frames, then fails on the
    // 3rd frame of the second.
    let (a, a_inputs) = fake_stt("a", Some(8));
    let (b, b_inputs) = fake_stt("b", None);
    let chain = TranscriberChain::new(a).then(b);
    let mut r = chain.open().unwrap();
    say(&r, 0, 5).await;
    let first = r.transcripts.recv().await.unwrap().unwrap();
    assert_eq!(
        (first.text.as_str(), first.start, first.end),
        ("a:5", 0, 1600)
    );
    say(&r, 16_000, 6).await;
    say(&r, 40_000, 2).await;
    let second = r.transcripts.recv().await.unwrap().unwrap();
    assert_eq!(
        (second.text.as_str(), second.start, second.end),
        ("b:6", 16_000, 16_000 + 6 * 320),
        "the whole utterance, replayed"
    );
    let third = r.transcripts.recv().await.unwrap().unwrap();
    assert_eq!((third.text.as_str(), third.start), ("b:2", 40_000));
    drop(r.input);
    assert!(r.transcripts.recv().await.is_none(), "ends after the input");
    // The second engine never heard the first (transcribed) utterance.
    let b_seen = b_inputs.lock().unwrap().clone();
    assert_eq!(
        b_seen[0],
        RecognizerInput::SpeechStarted { position: 16_000 }
    );
    assert_eq!(b_seen.len(), 2 * 2 + 6 + 2);
    assert_eq!(a_inputs.lock().unwrap().len(), 2 + 5 + 1 + 3);
}

#[tokio::test]
async fn the_last_engines_failure_is_passed_on() {
    let (a, _) = fake_stt("a", Some(1));
    let (b, _) = fake_stt("b", Some(2));
    let mut r = TranscriberChain::new(a).then(b).open().unwrap();
    say(&r, 0, 3).await;
    let e = r.transcripts.recv().await.unwrap();
    assert!(matches!(e, Err(AudioError::Provider { .. })), "{e:?}");
    assert!(r.transcripts.recv().await.is_none());
}

#[tokio::test]
async fn an_engine_with_marks_and_no_audio_claims_nothing() {
    let (a, _) = FakeSynth::new("a", Ending::MarksOnly);
    let (b, b_texts) = FakeSynth::new("b", Ending::Completes);
    let chain = SynthesizerChain::new(a).then(b);
    let (pcm, marks, error) = run(&chain, "Hi there.").await;
    assert_eq!(error, None);
    assert_eq!(
        heard(&pcm),
        "Hi there.",
        "all of it from the engine that spoke"
    );
    assert_eq!(*b_texts.lock().unwrap(), vec!["Hi there.".to_string()]);
    assert_eq!(marks, vec![(2, 20), (9, 90)]);
}

#[tokio::test]
async fn a_hang_up_mid_utterance_gives_one_final_and_charges_no_engine() {
    let (a, _) = fake_stt("a", None);
    let (b, b_inputs) = fake_stt("b", None);
    let chain = TranscriberChain::new(a).then(b);
    let mut r = chain.open().unwrap();
    r.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    for i in 0..3 {
        let f = AudioFrame::new(vec![0; 320], 16_000, i * 320);
        r.input.send(RecognizerInput::Frame(f)).await.unwrap();
    }
    drop(r.input);
    let last = r.transcripts.recv().await.unwrap().unwrap();
    assert_eq!((last.text.as_str(), last.is_final), ("a:3", true));
    assert!(r.transcripts.recv().await.is_none());
    assert!(b_inputs.lock().unwrap().is_empty(), "no fallback");
    assert_eq!(
        chain.providers()[0].breaker,
        BreakerState::Closed {
            consecutive_failures: 0
        }
    );
}
