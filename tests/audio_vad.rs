//! Voice activity on real speech: espeak-ng makes "speech, silence, speech"
//! at test time, and the detector's started/ended positions must fall within
//! a documented tolerance of where the sound is.
//!
//! Tolerance (docs/audio.md): a start from 40 ms before to 80 ms after the
//! first sample above −50 dBFS (a soft "w" scores as voice from about 40 ms
//! in at 16 kHz, 72 ms at 8 kHz); an end from 40 ms before the last such
//! sample to 200 ms after it (earshot keeps scoring the fading tail of a word
//! as voice for about 100 ms); each decided within `min_speech` + 80 ms of
//! the onset and `min_silence` + 200 ms of the end.

#[path = "support/speech.rs"]
mod speech;

use colloquy::audio::vad::{VadConfig, VadEvent, VoiceActivity};

fn ms(samples: i64, rate: u32) -> i64 {
    samples * 1000 / i64::from(rate)
}

fn check(rate: u32, frame_ms: u32) {
    let a = speech::speech_at("What is the weather like in Paris today", "en-us", rate);
    let b = speech::speech_at("wait, stop please", "en-gb+f3", rate);
    let gap = vec![0i16; rate as usize];
    let mut audio = gap.clone();
    let a_at = audio.len();
    audio.extend(&a);
    audio.extend(&gap);
    let b_at = audio.len();
    audio.extend(&b);
    audio.extend(&gap);
    let level = 100; // −50 dBFS
    let (a0, a1) = speech::sound_bounds(&a, level);
    let (b0, b1) = speech::sound_bounds(&b, level);
    let truth = [(a_at + a0, a_at + a1), (b_at + b0, b_at + b1)];

    let config = VadConfig::default();
    let mut vad = VoiceActivity::new(rate, config).unwrap();
    let mut events = Vec::new();
    for f in speech::frames(&audio, rate, frame_ms) {
        vad.push_into(&f, &mut events).unwrap();
    }
    assert_eq!(
        events.len(),
        4,
        "{rate} Hz: two utterances, started and ended: {events:?}"
    );
    for (i, (start, end)) in truth.iter().enumerate() {
        let (start, end) = (*start as i64, *end as i64);
        let VadEvent::SpeechStarted {
            position,
            decided_at,
        } = events[2 * i]
        else {
            panic!("{rate} Hz: expected a start, got {:?}", events[2 * i]);
        };
        let (position, decided_at) = (position as i64, decided_at as i64);
        assert!(
            (-40..=80).contains(&ms(position - start, rate)),
            "{rate} Hz utterance {i}: started at {} ms, sound at {} ms",
            ms(position, rate),
            ms(start, rate)
        );
        let decision = ms(decided_at - start, rate);
        assert!(
            decision <= config.min_speech.as_millis() as i64 + 80 + i64::from(frame_ms),
            "{rate} Hz utterance {i}: decided {decision} ms after the onset"
        );
        let VadEvent::SpeechEnded {
            position,
            decided_at,
        } = events[2 * i + 1]
        else {
            panic!("{rate} Hz: expected an end, got {:?}", events[2 * i + 1]);
        };
        let (position, decided_at) = (position as i64, decided_at as i64);
        let late = ms(position - end, rate);
        assert!(
            (-40..=200).contains(&late),
            "{rate} Hz utterance {i}: ended {late} ms after the last sound"
        );
        assert!(
            ms(decided_at - end, rate)
                <= config.min_silence.as_millis() as i64 + 200 + i64::from(frame_ms),
            "{rate} Hz utterance {i}: end decided late"
        );
    }
}

#[test]
fn speech_silence_speech_at_the_phones_rate() {
    check(8_000, 20);
}

#[test]
fn speech_silence_speech_at_16_khz() {
    check(16_000, 20);
}

#[test]
fn speech_silence_speech_from_a_browser_at_48_khz() {
    check(48_000, 10);
}
