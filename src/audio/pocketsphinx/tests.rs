//! PocketSphinx's tests on speech espeak-ng makes at test time.

use std::sync::OnceLock;

use super::*;

/// One engine for the tests that need no special pool.
fn engine() -> &'static PocketSphinx {
    static ENGINE: OnceLock<PocketSphinx> = OnceLock::new();
    ENGINE.get_or_init(|| PocketSphinx::en_us().expect("the en-us model loads"))
}

/// `text` spoken by espeak, at 16 kHz.
#[cfg(feature = "espeak")]
async fn speech(text: &str) -> Vec<i16> {
    use crate::audio::espeak::Espeak;
    use crate::audio::{SynthEvent, Synthesizer};
    use futures_util::StreamExt;

    let espeak = Espeak::en_us().unwrap();
    let mut audio = Vec::new();
    let mut stream = espeak.synthesize(text);
    while let Some(event) = stream.next().await {
        if let SynthEvent::Audio(chunk) = event.unwrap() {
            audio.extend(chunk);
        }
    }
    resample(&audio, espeak.sample_rate(), SAMPLE_RATE)
}

#[cfg(feature = "espeak")]
/// A plain windowed-sinc resampler (Hann window, 16 taps a side, cut
/// off a little under the lower Nyquist), good enough for a test.
fn resample(input: &[i16], from: u32, to: u32) -> Vec<i16> {
    const HALF: i64 = 16;
    let ratio = f64::from(from) / f64::from(to);
    let cutoff = 0.45 * f64::from(from.min(to)) / f64::from(from); // cycles per input sample
    let out_len = (input.len() as f64 / ratio) as usize;
    (0..out_len)
        .map(|n| {
            let t = n as f64 * ratio;
            let centre = t.floor() as i64;
            let mut acc = 0.0;
            for k in centre - HALF + 1..=centre + HALF {
                let Some(&x) = usize::try_from(k).ok().and_then(|k| input.get(k)) else {
                    continue;
                };
                let d = t - k as f64;
                let sinc = if d.abs() < 1e-9 {
                    1.0
                } else {
                    (2.0 * std::f64::consts::PI * cutoff * d).sin() / (std::f64::consts::PI * d)
                };
                let sinc = if d.abs() < 1e-9 { 2.0 * cutoff } else { sinc };
                let window = 0.5 + 0.5 * (std::f64::consts::PI * d / HALF as f64).cos();
                acc += f64::from(x) * sinc * window;
            }
            acc.round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Feeds `audio` as 20 ms frames from stream position `at`.
async fn feed(input: &mpsc::Sender<RecognizerInput>, audio: &[i16], at: u64) -> u64 {
    let mut position = at;
    for chunk in audio.chunks(320) {
        let frame = AudioFrame::new(chunk.to_vec(), SAMPLE_RATE, position);
        position = frame.end();
        input.send(RecognizerInput::Frame(frame)).await.unwrap();
    }
    position
}

/// Transcripts up to and including the first final.
async fn until_final(
    transcripts: &mut mpsc::Receiver<Result<Transcript, AudioError>>,
) -> (Vec<Transcript>, Transcript) {
    let mut interims = Vec::new();
    loop {
        let t = transcripts
            .recv()
            .await
            .expect("stream ended early")
            .expect("engine error");
        if t.is_final {
            return (interims, t);
        }
        interims.push(t);
    }
}

#[cfg(feature = "espeak")]
fn words_heard(text: &str, expected: &str) -> usize {
    let heard: Vec<&str> = text.split_whitespace().collect();
    expected
        .split_whitespace()
        .filter(|w| heard.contains(w))
        .count()
}

#[cfg(feature = "espeak")] // speech to recognize
#[tokio::test]
async fn recognizes_synthetic_speech_with_interims() {
    let text = "what is the weather like in paris today";
    let audio = speech(text).await;
    let mut r = engine().open().unwrap();
    // Speech before SpeechStarted is ignored.
    let mut at = feed(&r.input, &audio[..8000], 0).await;
    let started = at;
    r.input
        .send(RecognizerInput::SpeechStarted { position: started })
        .await
        .unwrap();
    at = feed(&r.input, &vec![0; 3200], at).await;
    at = feed(&r.input, &audio, at).await;
    at = feed(&r.input, &vec![0; 4800], at).await;
    r.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    let (interims, last) = until_final(&mut r.transcripts).await;
    eprintln!(
        "interims {:?}\nfinal {:?}",
        interims.iter().map(|t| &t.text).collect::<Vec<_>>(),
        last.text
    );
    assert!(!interims.is_empty(), "no interim");
    for t in &interims {
        assert!(!t.text.is_empty());
        assert_eq!(t.start, started);
        assert!(t.end > started && t.end <= at);
    }
    assert!(
        interims
            .windows(2)
            .all(|w| w[0].end < w[1].end && w[0].text != w[1].text)
    );
    assert_eq!((last.start, last.end), (started, at));
    assert!(words_heard(&last.text, text) >= 2, "heard {:?}", last.text);
    // The stream ends when its input does.
    drop(r.input);
    assert!(r.transcripts.recv().await.is_none());
}

#[tokio::test]
async fn silence_gives_an_empty_final() {
    let mut r = engine().open().unwrap();
    r.input
        .send(RecognizerInput::SpeechStarted { position: 16_000 })
        .await
        .unwrap();
    let at = feed(&r.input, &vec![0; 16_000], 16_000).await;
    r.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    let (interims, last) = until_final(&mut r.transcripts).await;
    assert!(interims.is_empty(), "{interims:?}");
    assert_eq!(
        last,
        Transcript {
            text: String::new(),
            is_final: true,
            start: 16_000,
            end: 32_000
        }
    );
    // A SpeechEnded with no speech open, and frames after it, say nothing.
    r.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    feed(&r.input, &vec![0; 3200], at).await;
    drop(r.input);
    assert!(r.transcripts.recv().await.is_none());
}

#[cfg(feature = "espeak")] // speech to recognize
#[tokio::test]
async fn several_utterances_on_one_stream_and_a_close_mid_utterance() {
    let audio = speech("hello world").await;
    let mut r = engine().open().unwrap();
    let mut at = 0;
    for _ in 0..2 {
        let start = at;
        r.input
            .send(RecognizerInput::SpeechStarted { position: start })
            .await
            .unwrap();
        at = feed(&r.input, &audio, at).await;
        at = feed(&r.input, &vec![0; 3200], at).await;
        r.input
            .send(RecognizerInput::SpeechEnded { position: at })
            .await
            .unwrap();
        let (_, last) = until_final(&mut r.transcripts).await;
        assert_eq!((last.start, last.end), (start, at));
        assert!(!last.text.is_empty(), "heard nothing");
    }
    // Closed mid-utterance: the final still comes, ending with the audio.
    let start = at;
    r.input
        .send(RecognizerInput::SpeechStarted { position: start })
        .await
        .unwrap();
    at = feed(&r.input, &audio, at).await;
    drop(r.input);
    let (_, last) = until_final(&mut r.transcripts).await;
    assert_eq!((last.start, last.end), (start, at));
    assert!(r.transcripts.recv().await.is_none());
}

#[tokio::test]
async fn a_wrong_rate_is_a_typed_error() {
    let mut r = engine().open().unwrap();
    r.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    r.input
        .send(RecognizerInput::Frame(AudioFrame::new(
            vec![0; 160],
            8000,
            0,
        )))
        .await
        .unwrap();
    let got = r.transcripts.recv().await.unwrap();
    assert_eq!(got, Err(AudioError::UnsupportedRate(8000)));
    r.input
        .send(RecognizerInput::SpeechEnded { position: 160 })
        .await
        .unwrap();
    let (_, last) = until_final(&mut r.transcripts).await;
    assert_eq!(last.text, "");
}

#[tokio::test]
async fn a_missing_model_is_a_typed_error() {
    let err =
        PocketSphinx::new(PocketSphinxConfig::with_model_dir("/nonexistent/model")).unwrap_err();
    assert!(
        matches!(
            err,
            AudioError::Engine {
                engine: "pocketsphinx",
                ..
            }
        ),
        "{err:?}"
    );
    let err = PocketSphinx::new(PocketSphinxConfig {
        extra_args: vec![("-no-such-option".into(), "1".into())],
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            AudioError::Engine {
                engine: "pocketsphinx",
                ..
            }
        ),
        "{err:?}"
    );
}

#[cfg(feature = "espeak")] // speech to recognize
#[tokio::test]
async fn recognitions_share_a_small_pool() {
    let engine = PocketSphinx::new(PocketSphinxConfig {
        max_decoders: 1,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(engine.decoders(), (1, 1));
    let audio = speech("hello world").await;
    let mut a = engine.open().unwrap();
    let mut b = engine.open().unwrap();
    // Both speak at once; b waits for a's decoder, buffering its audio.
    a.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    b.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    let at = feed(&a.input, &audio, 0).await;
    feed(&b.input, &audio, 0).await;
    a.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    b.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    let (_, fa) = until_final(&mut a.transcripts).await;
    let (_, fb) = until_final(&mut b.transcripts).await;
    assert!(!fa.text.is_empty());
    assert_eq!(fa.text, fb.text);
    assert_eq!(fb.end, at);
    assert_eq!(engine.decoders(), (1, 1));

    // A caller that hangs up mid-utterance gives its decoder back.
    let c = engine.open().unwrap();
    c.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    feed(&c.input, &audio, 0).await;
    drop(c.transcripts);
    // Its thread notices at the next transcript it would send.
    let _ = c
        .input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await;
    let mut a2 = engine.open().unwrap();
    a2.input
        .send(RecognizerInput::SpeechStarted { position: 0 })
        .await
        .unwrap();
    feed(&a2.input, &audio, 0).await;
    a2.input
        .send(RecognizerInput::SpeechEnded { position: at })
        .await
        .unwrap();
    let (_, f2) = until_final(&mut a2.transcripts).await;
    // A new stream starts from the same state as the first did.
    assert_eq!(f2.text, fa.text);
    // c's thread may have got the decoder after a2 (it finishes its
    // utterance before it finds nobody listens): it comes back.
    let start = std::time::Instant::now();
    while engine.decoders() != (1, 1) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            engine.decoders()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn feat_and_cmn_layouts_match_the_headers() {
    // offsetof(feat_t, cepsize) = 16 and offsetof(feat_t, cmn_struct)
    // = 88 with gcc on x86-64 (sphinxbase/feat.h).
    assert_eq!(std::mem::offset_of!(ffi::feat_t, cepsize), 16);
    assert_eq!(std::mem::offset_of!(ffi::feat_t, cmn), 68);
    assert_eq!(std::mem::offset_of!(ffi::feat_t, cmn_struct), 88);
    assert_eq!(std::mem::offset_of!(ffi::cmn_t, veclen), 28);
    // The model's live CMN: 13 cepstra, starting from the -cmninit of
    // its feat.params.
    let mean = engine()
        .pool
        .initial_cmn
        .get()
        .cloned()
        .flatten()
        .expect("a live CMN");
    assert_eq!(mean.len(), 13);
    let params = std::fs::read_to_string(engine().pool.config.hmm.join("feat.params")).unwrap();
    let init: Vec<f32> = params
        .lines()
        .find_map(|l| l.strip_prefix("-cmninit "))
        .expect("feat.params sets -cmninit")
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    assert_eq!(&mean[..init.len()], &init[..]);
}

#[cfg(feature = "espeak")] // speech to recognize
#[tokio::test]
async fn a_vocabulary_decoded_at_the_end_hears_its_words_on_one_decoder() {
    let question = "what is the weather like in paris today";
    let barge_in = "wait stop please";
    let dir = std::env::temp_dir().join(format!("colloquy-vocab-test-{}", std::process::id()));
    let config = PocketSphinxConfig {
        max_decoders: 1,
        decode_at_end: true,
        ..PocketSphinxConfig::default()
            .with_vocabulary(&[question, barge_in], &dir)
            .unwrap()
    };
    assert!(matches!(config.language, LanguageModel::Grammar(_)));
    let engine = PocketSphinx::new(config).unwrap();
    // Two callers speak at once; the one decoder serves both in turn.
    let audio = speech(question).await;
    let mut a = engine.open().unwrap();
    let mut b = engine.open().unwrap();
    for r in [&a, &b] {
        r.input
            .send(RecognizerInput::SpeechStarted { position: 0 })
            .await
            .unwrap();
        let end = feed(&r.input, &audio, 0).await;
        r.input
            .send(RecognizerInput::SpeechEnded { position: end })
            .await
            .unwrap();
    }
    for r in [&mut a, &mut b] {
        let (interims, last) = until_final(&mut r.transcripts).await;
        assert!(interims.is_empty(), "decoded at the end: no interims");
        assert_eq!((last.start, last.end), (0, audio.len() as u64));
        assert!(
            words_heard(&last.text, question) >= 4,
            "heard {:?}",
            last.text
        );
        let vocabulary = format!("{question} {barge_in}");
        assert!(
            last.text
                .split_whitespace()
                .all(|w| vocabulary.split_whitespace().any(|v| v == w)),
            "only the vocabulary's words: {:?}",
            last.text
        );
    }
    // A word missing from the dictionary is a typed error.
    let missing = PocketSphinxConfig::default().with_vocabulary(&["zxqvbnm"], &dir);
    assert!(
        matches!(missing, Err(AudioError::Engine { .. })),
        "{missing:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
