//! espeak-ng's tests: real synthesis, alignment at word ends, drops,
//! concurrency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::audio::Alignment;

/// Aborts the test binary if a test hangs.
struct Watchdog(Arc<AtomicBool>);

impl Watchdog {
    fn new(limit: Duration) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while start.elapsed() < limit {
                if flag.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("test hung for {limit:?}");
            std::process::abort();
        });
        Self(done)
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The audio and marks of one synthesis, checking on the way that each
/// mark comes after its audio.
struct Spoken {
    audio: Vec<i16>,
    marks: Vec<(usize, u64)>,
}

async fn speak(engine: &Espeak, text: &str) -> Spoken {
    let mut stream = engine.synthesize(text);
    let mut audio = Vec::new();
    let mut marks = Vec::new();
    while let Some(event) = stream.next().await {
        match event.expect("synthesis failed") {
            SynthEvent::Audio(chunk) => {
                assert!(!chunk.is_empty(), "empty chunk");
                assert!(
                    marks.last().is_none_or(|&(c, _)| c < text.chars().count()),
                    "audio after the final mark"
                );
                audio.extend(chunk);
            }
            SynthEvent::Mark { chars, sample } => {
                assert!(
                    sample <= audio.len() as u64,
                    "mark at {sample} before its audio ({} sent)",
                    audio.len()
                );
                marks.push((chars, sample));
            }
        }
    }
    Spoken { audio, marks }
}

fn assert_marks(text: &str, spoken: &Spoken) {
    let chars: Vec<char> = text.chars().collect();
    let (last, words) = spoken.marks.split_last().expect("no final mark");
    assert_eq!(
        *last,
        (chars.len(), spoken.audio.len() as u64),
        "final mark: {:?}",
        spoken.marks
    );
    for pair in spoken.marks.windows(2) {
        assert!(
            pair[1].1 >= pair[0].1,
            "samples go back: {:?}",
            spoken.marks
        );
        assert!(pair[1].0 >= pair[0].0, "chars go back: {:?}", spoken.marks);
    }
    for pair in words.windows(2) {
        assert!(
            pair[1].0 > pair[0].0,
            "word marks repeat chars: {:?}",
            spoken.marks
        );
    }
    for &(c, _) in words {
        assert!(c > 0 && c <= chars.len(), "mark {c} out of the text");
        assert!(
            chars[c - 1].is_alphanumeric(),
            "mark {c} after {:?}, not a letter",
            chars[c - 1]
        );
        if c < chars.len() {
            assert!(
                !chars[c].is_alphanumeric(),
                "mark {c} mid-word, before {:?}",
                chars[c]
            );
        }
    }
}

#[tokio::test]
async fn hello_world_has_audio_and_word_marks() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let engine = Espeak::en_us().unwrap();
    assert_eq!(engine.sample_rate(), 22050);
    let text = "Hello world, this is a test.";
    let spoken = speak(&engine, text).await;
    // About 1.6 s of speech.
    assert!(
        spoken.audio.len() > 22050,
        "only {} samples",
        spoken.audio.len()
    );
    assert!(
        spoken.audio.iter().any(|s| s.unsigned_abs() > 5000),
        "silent audio"
    );
    assert_marks(text, &spoken);
    let ends: Vec<usize> = spoken.marks.iter().map(|m| m.0).collect();
    assert_eq!(ends, [5, 11, 17, 20, 22, 27, 28], "{:?}", spoken.marks);

    // The comma's pause belongs to "world": its mark is where the sound
    // stops, before the silence.
    let (_, world) = spoken.marks[1];
    let (_, hello) = spoken.marks[0];
    assert!(
        spoken.audio[(world - 200) as usize..world as usize]
            .iter()
            .any(|s| s.unsigned_abs() > SILENCE_LEVEL as u16),
        "{:?} {:?}",
        spoken.marks,
        &spoken.audio[(world - 300) as usize..world as usize]
    );
    let pause = &spoken.audio[world as usize..world as usize + 1500];
    assert!(
        pause
            .iter()
            .all(|s| s.unsigned_abs() <= SILENCE_LEVEL as u16),
        "no pause after \"world\""
    );
    assert!(world > hello + 2205);

    // A pause caught mid-word reports the word before it.
    let mut alignment = Alignment::new(engine.alignment_is_estimated());
    for &(chars, sample) in &spoken.marks {
        alignment.push(chars, sample);
    }
    assert_eq!(alignment.chars_at(0), 0);
    let mut previous = (0, 0);
    for &(chars, sample) in &spoken.marks {
        if sample > previous.1 {
            assert_eq!(
                alignment.chars_at(sample - 1),
                previous.0,
                "just before {sample}"
            );
        }
        assert!(alignment.chars_at(sample) >= chars);
        previous = (chars, sample);
    }
    assert_eq!(alignment.chars_at(u64::MAX), text.chars().count());
    // Half-way through "world" only "Hello" was heard.
    assert_eq!(alignment.chars_at((hello + world) / 2), 5);
}

#[tokio::test]
async fn marks_count_characters_not_bytes() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let engine = Espeak::en_us().unwrap();
    let text = "Café über naïve—résumé, don't U.S.A. well-known 123 dogs 😀 ok.";
    let spoken = speak(&engine, text).await;
    assert_marks(text, &spoken);
    let chars: Vec<char> = text.chars().collect();
    let words: Vec<String> = spoken.marks[..spoken.marks.len() - 1]
        .iter()
        .scan(0, |from, &(c, _)| {
            let w: String = chars[*from..c].iter().collect();
            *from = c;
            Some(w.trim_start_matches([' ', ',', '.', '—']).to_owned())
        })
        .collect();
    // Every word is reported once it is spoken; "123" only once all of
    // its three words are.
    assert!(
        words.starts_with(&[
            "Café".into(),
            "über".into(),
            "naïve".into(),
            "résumé".into(),
            "don't".into()
        ]),
        "{words:?}"
    );
    assert!(
        words.contains(&"123".into()) || words.iter().any(|w| w.ends_with("123")),
        "{words:?}"
    );
    assert!(words.contains(&"dogs".into()), "{words:?}");
    assert!(words.last().is_some_and(|w| w.ends_with("ok")), "{words:?}");
}

#[tokio::test]
async fn empty_text_is_one_mark() {
    let engine = Espeak::en_us().unwrap();
    let events: Vec<_> = engine.synthesize("").collect().await;
    assert_eq!(
        events,
        [Ok(SynthEvent::Mark {
            chars: 0,
            sample: 0
        })]
    );
    // Only punctuation: no word, still a final mark.
    let spoken = speak(&engine, " ... ").await;
    assert_eq!(spoken.marks.last(), Some(&(5, spoken.audio.len() as u64)));
    // A NUL does not cut the text.
    let spoken = speak(&engine, "one\0two").await;
    assert_marks("one\0two", &spoken);
    assert_eq!(spoken.marks.len(), 2, "{:?}", spoken.marks);
}

#[tokio::test]
async fn dropping_the_stream_stops_it_and_the_engine_goes_on() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let engine = Espeak::en_us().unwrap();
    let long = "This is a rather long text that would take many seconds to speak. ".repeat(20);
    let mut stream = engine.synthesize(&long);
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, SynthEvent::Audio(_)));
    drop(stream);
    // A dropped stream that never started, too.
    drop(engine.synthesize(&long));
    let started = std::time::Instant::now();
    let text = "Hello again.";
    let spoken = speak(&engine, text).await;
    assert_marks(text, &spoken);
    assert!(spoken.audio.len() > 11025);
    // The long text was cut short, not spoken to the end first.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn concurrent_syntheses_each_get_their_own_audio() {
    let _w = Watchdog::new(Duration::from_secs(120));
    let engine = Espeak::en_us().unwrap();
    // Different numbers of words, so a mix-up shows in the marks.
    let texts = [
        "One.",
        "Two words.",
        "Now four words here.",
        "The quick brown fox jumps over the lazy dog.",
        "A fourth sentence that is somewhat longer than most of the others.",
    ];
    let mut solo = Vec::new();
    for text in texts {
        let spoken = speak(&engine, text).await;
        solo.push((spoken.audio.len(), spoken.marks.len()));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..3 {
        for (i, &text) in texts.iter().enumerate() {
            let engine = engine.clone();
            tasks.spawn(async move {
                let spoken = speak(&engine, text).await;
                assert_marks(text, &spoken);
                (round, i, spoken.audio.len(), spoken.marks.len())
            });
        }
    }
    let mut n = 0;
    while let Some(done) = tasks.join_next().await {
        let (_, i, len, marks) = done.unwrap();
        // espeak carries a little state from one text to the next: the
        // same text comes out longer or shorter by steps of ~12 ms
        // depending on what it spoke before ("One." alone measured 8283
        // to 9369 samples), so lengths are compared loosely.
        let (want, want_marks) = solo[i];
        assert_eq!(marks, want_marks, "text {i}");
        let slack = (want as f64 * 0.15).max(2205.0);
        assert!(
            (len as f64 - want as f64).abs() < slack,
            "text {i}: {len} samples, {want} alone"
        );
        n += 1;
    }
    assert_eq!(n, 15);
}

#[tokio::test]
async fn voices_rate_and_pitch() {
    let _w = Watchdog::new(Duration::from_secs(60));
    let text = "Testing the voice settings of this engine.";
    let slow = Espeak::new(EspeakConfig {
        rate: 120,
        ..Default::default()
    })
    .unwrap();
    let fast = Espeak::new(EspeakConfig {
        rate: 300,
        ..Default::default()
    })
    .unwrap();
    let slow_len = speak(&slow, text).await.audio.len();
    let fast_len = speak(&fast, text).await.audio.len();
    assert!(
        fast_len * 3 < slow_len * 2,
        "fast {fast_len}, slow {slow_len}"
    );
    for voice in ["en-gb", "en-gb+f3", "en-us+m3", "English (America)", "fr"] {
        let engine = Espeak::new(EspeakConfig {
            voice: voice.into(),
            pitch: 70,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("{voice}: {e}"));
        let spoken = speak(&engine, text).await;
        assert_marks(text, &spoken);
    }
    let err = Espeak::new(EspeakConfig {
        voice: "xx-nope".into(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            AudioError::Engine {
                engine: "espeak-ng",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        Espeak::new(EspeakConfig {
            rate: 10,
            ..Default::default()
        })
        .is_err()
    );
    assert!(
        Espeak::new(EspeakConfig {
            pitch: 101,
            ..Default::default()
        })
        .is_err()
    );
    // The end pause lengthens the utterance, not its words.
    let paused = Espeak::new(EspeakConfig {
        end_pause: true,
        ..Default::default()
    })
    .unwrap();
    let plain = speak(&Espeak::en_us().unwrap(), text).await;
    let with_pause = speak(&paused, text).await;
    assert!(with_pause.audio.len() > plain.audio.len() + 4000);
    let last_word = |s: &Spoken| s.marks[s.marks.len() - 2].1 as f64;
    assert!((last_word(&with_pause) - last_word(&plain)).abs() < 2205.0);
}

#[test]
fn word_ends() {
    let chars: Vec<char> = "Hello world, don't stop.".chars().collect();
    assert_eq!(word_end_before(&chars, 0), 0);
    assert_eq!(word_end_before(&chars, 3), 0);
    assert_eq!(word_end_before(&chars, 5), 5);
    assert_eq!(word_end_before(&chars, 6), 5);
    assert_eq!(word_end_before(&chars, 13), 11);
    assert_eq!(word_end_before(&chars, 16), 11); // "don" is not a word end
    assert_eq!(word_end_before(&chars, 19), 18);
    assert_eq!(word_end_before(&chars, 99), 23);
}

#[test]
fn a_word_sounds_until_its_pause() {
    let sound = |n: usize| {
        (0..n)
            .map(|i| if i % 20 == 0 { 0 } else { 3000 })
            .collect::<Vec<i16>>()
    };
    let silence = |n: usize| vec![0i16; n];
    let join = |parts: &[Vec<i16>]| parts.concat();
    // Trailing silence, short or long.
    assert_eq!(sound_end(&join(&[sound(1000), silence(50)]), 22050), 1000);
    assert_eq!(sound_end(&join(&[sound(1000), silence(5000)]), 22050), 1000);
    // A pause, then the next word's sound a little before its event.
    assert_eq!(
        sound_end(&join(&[sound(1000), silence(3000), sound(300)]), 22050),
        1000
    );
    // A stop's closure inside the word is not its end.
    assert_eq!(
        sound_end(&join(&[sound(1000), silence(900), sound(4000)]), 22050),
        5900
    );
    assert_eq!(
        sound_end(&join(&[sound(1000), silence(900), sound(300)]), 22050),
        2200
    );
    // Nothing but silence: the boundary stands.
    assert_eq!(sound_end(&silence(800), 22050), 800);
    assert_eq!(sound_end(&[], 22050), 0);
}

#[test]
fn event_layout_matches_the_header() {
    assert_eq!(std::mem::size_of::<ffi::espeak_EVENT>(), 40);
    assert_eq!(std::mem::offset_of!(ffi::espeak_EVENT, text_position), 8);
    assert_eq!(std::mem::offset_of!(ffi::espeak_EVENT, sample), 20);
    assert_eq!(std::mem::offset_of!(ffi::espeak_EVENT, user_data), 24);
    assert_eq!(std::mem::offset_of!(ffi::espeak_EVENT, id), 32);
}
