//! Phone calls end to end: a simulated phone (real-time playout, marks
//! echoed, `clear` honoured as Twilio does — pending marks echoed at once and
//! never counted) calls the voice server's `/twilio`; PocketSphinx hears
//! speech espeak-ng makes at test time; espeak-ng speaks.
//!
//! What the tests hold the runtime to, from the phone's side:
//! - the agent answers; a barge-in clears the phone's audio;
//! - every chunk the phone played continues exactly where the one before
//!   ended — no sample skipped, none repeated except, after a pause's
//!   `clear`, the one 20 ms chunk whose mark echo was in flight (Twilio's
//!   marks cannot tell it from a flushed one; see `contiguous`) — and is the
//!   audio the server's synthesizer made;
//! - the reply committed to the history ends at the last word whose audio
//!   the phone played — computed from the phone's played samples and the
//!   synthesizer's own marks, not from anything the server reported;
//! - a cough pauses the agent and the resume continues from the exact sample;
//! - `stop` ends the session with its history;
//! - with ElevenLabs speaking (its mock; feature `elevenlabs`), the cut's
//!   heard text comes from the provider's timestamps, to the word.

#[path = "support/call_server.rs"]
mod call_server;
#[path = "support/speech.rs"]
mod speech;

use std::time::Duration;

use call_server::{CallServer, GUARD};
use colloquy::audio::mulaw;
use colloquy::context::{ChatItem, Role};
use colloquy_actors::bus::EventKind;
use colloquy_actors::calls::twilio::{PhoneLog, PlayedChunk, SimulatedPhone};
use colloquy_actors::turn_taking::{InterruptionMode, InterruptionPolicy};
use tokio::time::Instant;

const REPLY: &str = "The weather in Paris is mild today, with a light breeze from the west and a few clouds over the river, and it should stay dry until the evening when a little rain may come in from the coast.";

fn played_samples(log: &PhoneLog) -> usize {
    log.played.iter().map(|c| c.samples.len()).sum()
}

/// The audio the phone played, checked chunk by chunk against the server's
/// timeline: each chunk starts where the one before ended — never after it
/// (skipped audio). It may start up to one 20 ms chunk *before* it only as
/// the first chunk after a `clear` (`clears`): that chunk's mark was on its
/// way back when the server cleared, and Twilio's protocol cannot tell such
/// an echo from the ones a clear flushes, so the server counts it unplayed
/// and sends it again. Returns the audio without the repeat, and the samples
/// repeated.
fn contiguous(chunks: &[PlayedChunk], clears: &[Instant]) -> (Vec<i16>, u64) {
    let mut audio = Vec::new();
    let mut repeated = 0;
    let mut prev: Option<(u64, Instant)> = None;
    for c in chunks {
        let end = c.end.expect("every played chunk's mark names its end");
        let start = end - c.samples.len() as u64;
        let mut skip = 0;
        if let Some((prev_end, prev_at)) = prev {
            assert!(
                start <= prev_end,
                "audio skipped: a chunk starts at {start}, the one before ended at {prev_end}"
            );
            if start < prev_end {
                let after_clear = clears.iter().any(|&t| prev_at < t && t <= c.at);
                assert!(
                    after_clear && prev_end - start <= 160,
                    "audio repeated: a chunk starts at {start}, the one before ended at {prev_end}"
                );
                skip = (prev_end - start) as usize;
                repeated += prev_end - start;
            }
        }
        prev = Some((end, c.at));
        audio.extend(&c.samples[skip..]);
    }
    (audio, repeated)
}

/// The phone heard `reference` through µ-law, sample for sample.
fn same_audio(played: &[i16], reference: &[i16]) {
    assert_eq!(played.len(), reference.len());
    let expected = mulaw::decode(&mulaw::encode(reference));
    if let Some(i) = (0..played.len()).find(|&i| played[i] != expected[i]) {
        panic!(
            "the phone played audio the synthesizer did not make: first difference at sample {i} of {} ({} vs {})",
            played.len(),
            played[i],
            expected[i]
        );
    }
}

/// Turn `turn`'s segments, from the call's bus.
fn segments(events: &[colloquy_actors::bus::BusEvent], turn: u64) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.turn.0 == turn)
        .filter_map(|e| match &e.kind {
            EventKind::Speakable { text, .. } if !text.is_empty() => Some(text.to_string()),
            _ => None,
        })
        .collect()
}

fn assistant_texts(history: &colloquy::context::ChatContext) -> Vec<(String, bool)> {
    history
        .items
        .iter()
        .filter_map(|i| match i {
            ChatItem::Message(m) if m.role == Role::Assistant => {
                Some((m.text_content(), m.interrupted))
            }
            _ => None,
        })
        .collect()
}

/// Calls the server as `call_sid` and asks the question, in real time.
async fn call_and_ask(server: &CallServer, call_sid: &str) -> SimulatedPhone {
    let mut phone = SimulatedPhone::call(&server.twilio_url(), call_sid)
        .await
        .unwrap();
    phone.silence(Duration::from_millis(400)).await;
    phone
        .speak(&speech::speech_at(
            "What is the weather like in Paris today",
            "en-gb+f3",
            8_000,
        ))
        .await;
    phone
}

/// Streams silence until `check` holds, as a phone line keeps sending audio.
async fn silence_until(phone: &mut SimulatedPhone, check: impl Fn(&PhoneLog) -> bool) {
    let deadline = Instant::now() + GUARD;
    while !check(&phone.log()) {
        assert!(
            Instant::now() < deadline,
            "timed out; phone log: {:?}",
            phone.log().played.len()
        );
        phone.silence(Duration::from_millis(40)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_barge_in_clears_the_phone_and_the_history_ends_at_the_last_played_word() {
    let policy = InterruptionPolicy {
        mode: InterruptionMode::Immediate,
        ..InterruptionPolicy::default()
    };
    let server = CallServer::start(policy, vec![REPLY.into(), "Sure.".into()]).await;
    barge_in_commits_what_the_phone_played(&server).await;
}

/// The same with ElevenLabs speaking (its `stream-input` mock on 127.0.0.1):
/// the heard text of the cut comes from the provider's own timestamps.
#[cfg(feature = "elevenlabs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_elevenlabs_speaking_the_history_ends_at_the_last_word_its_timestamps_say_was_played()
{
    use colloquy::audio::Synthesizer;
    use colloquy::audio::elevenlabs::ElevenLabsSpeech;
    use colloquy::mock::elevenlabs::{ElevenLabsScript, MockElevenLabs};
    let mock = MockElevenLabs::start(ElevenLabsScript::new("xi-key").pace(60, 30))
        .await
        .unwrap();
    let tts = ElevenLabsSpeech::new(mock.config("voice")).unwrap();
    assert!(!tts.alignment_is_estimated());
    let policy = InterruptionPolicy {
        mode: InterruptionMode::Immediate,
        ..InterruptionPolicy::default()
    };
    let server = CallServer::start_with(
        policy,
        vec![REPLY.into(), "Sure.".into()],
        std::sync::Arc::new(tts),
    )
    .await;
    barge_in_commits_what_the_phone_played(&server).await;
    assert!(!mock.sessions().is_empty(), "ElevenLabs spoke");
}

/// Asks, lets the answer play 1.5 s, barges in: the clear comes, and the
/// committed reply is exactly the words whose audio the phone played, by
/// the synthesizer's own marks.
async fn barge_in_commits_what_the_phone_played(server: &CallServer) {
    let mut phone = call_and_ask(server, "CA1").await;
    // The agent answers: let the phone play a second and a half of it.
    silence_until(&mut phone, |l| played_samples(l) >= 12_000).await;
    let barge_in = speech::speech_at("wait, stop please", "en-gb+f3", 8_000);
    let (onset, _) = speech::sound_bounds(&barge_in, 100);
    let sent_at = Instant::now();
    phone.speak(&barge_in).await;
    let log = phone
        .wait_for(GUARD, |l| !l.clears.is_empty())
        .await
        .unwrap();
    let onset_at = sent_at + Duration::from_micros(onset as u64 * 125);
    let to_silence = log.clears[0].saturating_duration_since(onset_at);
    eprintln!(
        "time to silence (onset in the caller's audio -> clear at the phone): {to_silence:?}"
    );
    // Generous: a loaded machine; the figure is measured in loadgen.
    assert!(
        to_silence < Duration::from_millis(1500),
        "cleared {to_silence:?} after the onset"
    );
    phone.silence(Duration::from_millis(1500)).await;
    phone.hang_up();
    let (history, error) = server.wait_call("twilio-CA1", |r| r.ended.clone()).await;
    assert!(error.is_none(), "the call ended with {error:?}");

    // What the phone played of the first reply: every chunk before the clear.
    let log = phone.log();
    let first: Vec<PlayedChunk> = log
        .played
        .iter()
        .filter(|c| c.at < log.clears[0])
        .cloned()
        .collect();
    let (played, _) = contiguous(&first, &[]);
    assert!(played.len() >= 12_000);
    let events = server.calls.lock().unwrap()["twilio-CA1"].events.clone();
    // The question's final says where in the call's audio it was heard: the
    // phone was silent 400 ms, then spoke it (about 2 s) at 8 kHz.
    let heard = events
        .iter()
        .find_map(|e| match &e.kind {
            EventKind::UserTranscript {
                is_final: true,
                heard,
                ..
            } => Some(*heard),
            _ => None,
        })
        .expect("the question's final transcript")
        .expect("a listener's transcript says where it was heard");
    assert_eq!(heard.sample_rate, 8_000);
    assert!(
        (2_000..8_000).contains(&heard.start) && heard.end >= heard.start + 8_000,
        "{heard:?}"
    );
    let texts = segments(&events, 1);
    assert!(!texts.is_empty(), "turn 1 spoke nothing");
    let (reference, alignment) = server.reference(&texts, 8_000);
    assert!(
        played.len() < reference.len(),
        "the barge-in came after the whole reply"
    );
    same_audio(&played, &reference[..played.len()]);
    let heard_chars = alignment.chars_at(played.len() as u64);
    let expected: String = texts.concat().chars().take(heard_chars).collect();
    let said = assistant_texts(&history);
    assert_eq!(
        said.first().map(|(t, i)| (t.as_str(), *i)),
        Some((expected.as_str(), true)),
        "the committed reply is not what the phone played ({} samples played)",
        played.len()
    );
    eprintln!("heard: {expected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cough_pauses_and_the_resume_continues_from_the_last_confirmed_sample() {
    let policy = InterruptionPolicy {
        mode: InterruptionMode::Confirmed,
        min_words: 3,
        ..InterruptionPolicy::default()
    };
    let server = CallServer::start(policy, vec![REPLY.into()]).await;
    let mut phone = call_and_ask(&server, "CA2").await;
    silence_until(&mut phone, |l| played_samples(l) >= 8_000).await;
    // A cough: a short vowel, longer than the pause's 200 ms, no words.
    phone
        .speak(&speech::speech_at("ah", "en-gb+f3", 8_000))
        .await;
    // The line goes on carrying silence: the detector hears the cough end,
    // the agent resumes, and the reply plays to its end.
    let deadline = Instant::now() + GUARD;
    loop {
        phone.silence(Duration::from_millis(40)).await;
        let events = server.calls.lock().unwrap()["twilio-CA2"].events.clone();
        let resumed = events
            .iter()
            .any(|e| matches!(e.kind, EventKind::PlaybackResumed { .. }));
        // The whole reply confirmed played: a signal, not a quiet spell.
        let total = REPLY.chars().count();
        let played_all = events.iter().any(|e| {
            e.turn.0 == 1 && matches!(e.kind, EventKind::SpeechPlayed { chars } if chars == total)
        });
        if resumed && played_all {
            break;
        }
        if Instant::now() > deadline {
            let kinds: Vec<String> = events
                .iter()
                .map(|e| format!("{}:{:?}", e.turn.0, e.kind))
                .filter(|k| !k.contains("SpeechPlayed"))
                .collect();
            panic!("no resume to the end; events: {kinds:#?}");
        }
    }
    phone.hang_up();
    let (history, _) = server.wait_call("twilio-CA2", |r| r.ended.clone()).await;
    let log = phone.log();
    assert!(!log.clears.is_empty(), "the pause cleared the phone");
    let events = server.calls.lock().unwrap()["twilio-CA2"].events.clone();
    let paused = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::PlaybackPaused { .. }))
        .count();
    assert_eq!(paused, 1, "one pause");
    let (played, repeated) = contiguous(&log.played, &log.clears);
    eprintln!("samples repeated at the resume: {repeated}");
    let texts = segments(&events, 1);
    let (reference, _) = server.reference(&texts, 8_000);
    assert_eq!(
        played.len(),
        reference.len(),
        "the whole reply played once, nothing repeated or skipped"
    );
    same_audio(&played, &reference);
    let said = assistant_texts(&history);
    assert_eq!(
        said.first().map(|(t, i)| (t.as_str(), *i)),
        Some((REPLY, false))
    );
}
