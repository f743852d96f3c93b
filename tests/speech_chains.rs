//! Fallback across hosted engines with their real protocols, against the
//! local mocks: an ElevenLabs socket dropped mid-segment is continued by
//! the next engine from the first word the provider's timestamps did not
//! finish (no sample of a word twice), and a Deepgram socket refused
//! hands the utterance to the next recognizer.
#![cfg(all(feature = "elevenlabs", feature = "deepgram"))]

use colloquy::audio::chain::{SynthesizerChain, TranscriberChain};
use colloquy::audio::deepgram::DeepgramTranscriber;
use colloquy::audio::elevenlabs::ElevenLabsSpeech;
use colloquy::audio::{AudioFrame, RecognizerInput, SynthEvent, Synthesizer, Transcriber};
use colloquy::mock::deepgram::{MockDeepgram, MockDeepgramScript, MockReject};
use colloquy::mock::elevenlabs::{ElevenLabsFault, ElevenLabsScript, MockElevenLabs};
use futures_util::StreamExt;

const KEY: &str = "xi-test-key-5c1d";

#[tokio::test]
async fn an_elevenlabs_socket_dropped_mid_segment_is_continued_without_a_repeat() {
    let dropping = MockElevenLabs::start(
        ElevenLabsScript::new(KEY)
            .chunk_bytes(4001)
            .fault(ElevenLabsFault::Drop { after_chunks: 3 }),
    )
    .await
    .unwrap();
    let backup = MockElevenLabs::start(ElevenLabsScript::new(KEY).chunk_bytes(4001))
        .await
        .unwrap();
    let chain = SynthesizerChain::new(ElevenLabsSpeech::new(dropping.config("v1")).unwrap())
        .then(ElevenLabsSpeech::new(backup.config("v2")).unwrap());
    assert!(!chain.alignment_is_estimated());
    let text = "Sunny and mild in Paris today, with a light breeze.";
    let mut s = chain.synthesize(text);
    let (mut pcm, mut marks) = (Vec::new(), Vec::new());
    while let Some(e) = s.next().await {
        match e.unwrap() {
            SynthEvent::Audio(a) => pcm.extend(a),
            SynthEvent::Mark { chars, sample } => marks.push((chars, sample)),
            _ => {}
        }
    }
    let rate = chain.sample_rate();
    // What the backup was asked to say: the text after the last word the
    // first socket's timestamps finished.
    let asked: String = backup.sessions()[0]
        .texts
        .iter()
        .map(|t| t.text.as_str())
        .collect();
    let rest = asked.trim();
    assert!(!rest.is_empty() && rest.len() < text.len(), "{asked:?}");
    assert!(text.ends_with(rest), "{rest:?}");
    let said_first = text[..text.len() - rest.len()].trim_end();
    // The mocks speak what they were sent, the opening " " included, as the
    // service does: render the same to know every sample.
    let generated = |m: &MockElevenLabs| m.sessions()[0].generated.concat();
    let first = dropping.script().render(&generated(&dropping), rate, 0);
    let second = backup.script().render(&generated(&backup), rate, 0);
    // The first engine's audio up to the end of its last whole word (one
    // leading space in), then all of the backup's: not one sample of a word
    // twice, none missing.
    let words_end = first.chars[said_first.chars().count()].end as usize;
    assert_eq!(pcm.len(), words_end + second.samples.len());
    assert_eq!(&pcm[..words_end], &first.samples[..words_end]);
    assert_eq!(&pcm[words_end..], &second.samples[..]);
    // The marks: the first's word ends, then the backup's shifted by the
    // first part; the last is the whole text.
    assert!(marks.contains(&(said_first.chars().count(), words_end as u64)));
    assert_eq!(
        marks.last(),
        Some(&(text.chars().count(), pcm.len() as u64))
    );
    assert!(
        marks
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1)
    );
}

#[tokio::test]
async fn a_refused_deepgram_socket_hands_the_utterance_to_the_next_recognizer() {
    let refused = MockDeepgram::start(MockDeepgramScript {
        reject: Some(MockReject {
            status: 503,
            retry_after: None,
            message: "overloaded".into(),
        }),
        ..MockDeepgramScript::new(&[&["never"]])
    })
    .await
    .unwrap();
    let backup = MockDeepgram::start(MockDeepgramScript::new(&[&[
        "what", "is", "the", "weather",
    ]]))
    .await
    .unwrap();
    let config = |m: &MockDeepgram| {
        colloquy::audio::deepgram::DeepgramConfig::new("dg-test-key").with_base_url(m.url())
    };
    let chain = TranscriberChain::new(DeepgramTranscriber::new(config(&refused)).unwrap())
        .then(DeepgramTranscriber::new(config(&backup)).unwrap());
    let mut r = chain.open().unwrap();
    let start = 8_000;
    r.input
        .send(RecognizerInput::SpeechStarted { position: start })
        .await
        .unwrap();
    for i in 0..75u64 {
        let frame = AudioFrame::new(vec![(i as i16) * 10; 320], 16_000, start + i * 320);
        r.input.send(RecognizerInput::Frame(frame)).await.unwrap();
    }
    let end = start + 75 * 320;
    r.input
        .send(RecognizerInput::SpeechEnded { position: end })
        .await
        .unwrap();
    let last = loop {
        let t = r.transcripts.recv().await.unwrap().unwrap();
        if t.is_final {
            break t;
        }
    };
    assert_eq!(last.text, "what is the weather");
    assert!(last.start >= start && last.end <= end, "{last:?}");
    let stats = backup.stats().borrow().clone();
    assert_eq!(stats.audio_bytes, 75 * 320 * 2, "the whole utterance");
}
