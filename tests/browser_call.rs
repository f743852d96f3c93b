//! A browser call end to end: headless Chromium opens the voice server's
//! page with a WAV (espeak-ng speech made at test time) as its microphone.
//! The page streams the microphone over `/ws`; PocketSphinx hears the
//! question; the agent answers through the page's playback worklet; the
//! caller's second utterance cuts it; what the history keeps is what the
//! page's own played reports say was heard. A screenshot of the page at the
//! end is saved as `target/browser-call.png`.

#[path = "support/call_server.rs"]
mod call_server;
#[path = "support/chromium.rs"]
mod chromium;
#[path = "support/speech.rs"]
mod speech;

use std::path::PathBuf;
use std::time::Duration;

use call_server::CallServer;
use colloquy::audio::wav;
use colloquy::context::{ChatItem, Role};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::turn_taking::{InterruptionMode, InterruptionPolicy};

const REPLY: &str = "The weather in Paris is mild today, with a light breeze from the west and a few clouds over the river, and it should stay dry until the evening when a little rain may come in from the coast, so an umbrella is a good idea if you are out late.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_call_is_heard_answered_and_cut_where_the_page_played() {
    let policy = InterruptionPolicy {
        mode: InterruptionMode::Immediate,
        ..InterruptionPolicy::default()
    };
    let server = CallServer::start(policy, vec![REPLY.into(), "Okay.".into()]).await;
    // The microphone: half a second of silence, the question, a pause while
    // the agent answers, the barge-in, silence.
    let rate = 22_050;
    let question = speech::speech_at("What is the weather like in Paris today", "en-gb+f3", rate);
    let barge_in = speech::speech_at("wait, stop please", "en-gb+f3", rate);
    let mut mic = vec![0i16; rate as usize / 2];
    mic.extend(&question);
    mic.resize(rate as usize * 6, 0);
    mic.extend(&barge_in);
    mic.resize(mic.len() + rate as usize * 3, 0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let wav_path = dir.join("browser-call-mic.wav");
    wav::write_file(&wav_path, rate, &[&mic]).unwrap();

    let browser = chromium::Chromium::launch(&server.page_url(), &wav_path)
        .await
        .unwrap();
    let id = server
        .wait_call("web-1", |r| r.session.as_ref().map(|_| "web-1".to_string()))
        .await;
    // Heard and answered: a final transcript, then the reply's audio played.
    server
        .wait_call(&id, |r| {
            r.events
                .iter()
                .any(|e| matches!(&e.kind, EventKind::UserTranscript { is_final: true, .. }))
                .then_some(())
        })
        .await;
    server
        .wait_call(&id, |r| {
            r.events
                .iter()
                .any(|e| e.turn.0 == 1 && matches!(e.kind, EventKind::SpeechPlayed { .. }))
                .then_some(())
        })
        .await;
    // The barge-in cuts it.
    server
        .wait_call(&id, |r| {
            r.events
                .iter()
                .any(|e| {
                    e.turn.0 == 1
                        && matches!(
                            e.kind,
                            EventKind::Interrupted { .. }
                                | EventKind::TurnFinished(TurnEnd::Cancelled)
                        )
                })
                .then_some(())
        })
        .await;
    browser
        .wait_for(
            "window.colloquy.events.some(e => e.msg.type === 'cut') && window.colloquy.latencies.length > 0 && window.colloquy.reports.length > 0 && document.querySelectorAll('.waterfall span').length > 0",
            Duration::from_secs(30),
        )
        .await
        .expect("the page shows the cut, the turn's latency and its waterfall");
    let page = browser
        .evaluate("JSON.stringify(window.colloquy)")
        .await
        .unwrap();
    let page: serde_json::Value = serde_json::from_str(page.as_str().unwrap()).unwrap();
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("browser-call.png");
    browser.screenshot(&shot).await.unwrap();
    eprintln!("screenshot: {}", shot.display());
    drop(browser);
    let (history, _) = server.wait_call(&id, |r| r.ended.clone()).await;

    // What the page says it played of turn 1 (epoch 0: before the cut's clear).
    let rate = page["sampleRate"].as_u64().unwrap() as u32;
    let frames: Vec<(u64, u64)> = page["playedFrames"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["turn"] == 1 && f["epoch"] == 0)
        .map(|f| (f["position"].as_u64().unwrap(), f["end"].as_u64().unwrap()))
        .collect();
    assert!(frames.len() > 10, "the page played the reply: {frames:?}");
    let base = frames[0].0;
    assert!(
        frames.windows(2).all(|w| w[0].1 == w[1].0),
        "the page's frames are contiguous"
    );
    let events = server.calls.lock().unwrap()[&id].events.clone();
    let texts: Vec<String> = events
        .iter()
        .filter(|e| e.turn.0 == 1)
        .filter_map(|e| match &e.kind {
            EventKind::Speakable { text, .. } if !text.is_empty() => Some(text.to_string()),
            _ => None,
        })
        .collect();
    let (_, alignment) = server.reference(&texts, rate);
    let committed = history
        .items
        .iter()
        .find_map(|i| match i {
            ChatItem::Message(m) if m.role == Role::Assistant => {
                Some((m.text_content(), m.interrupted))
            }
            _ => None,
        })
        .expect("the reply was committed");
    assert!(committed.1, "committed as interrupted");
    // The page's last report, or the one before it: a report the page sent
    // just before the clear reached it is dropped by the server (one frame).
    let last = frames[frames.len() - 1].1 - base;
    let before = frames[frames.len() - 2].1 - base;
    let candidates = [alignment.chars_at(last), alignment.chars_at(before)];
    let full: String = texts.concat();
    eprintln!(
        "page played through sample {last} (of turn 1, at {rate} Hz); the committed text ends at sample {:?}; frames {}",
        alignment.sample_of(committed.0.chars().count()),
        frames.len()
    );
    let heard = committed.0.chars().count();
    assert!(
        candidates.contains(&heard),
        "committed {heard} characters ({:?}); the page's reports say {candidates:?}",
        committed.0
    );
    assert_eq!(committed.0, full.chars().take(heard).collect::<String>());
    eprintln!("page latencies: {}", page["latencies"]);
    // The waterfall's report: the cut turn's (the cut is in it), its
    // intervals non-negative.
    let report = page["reports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["turn"] == 1)
        .expect("turn 1's latency report");
    for k in [
        "speech_end_to_final_ms",
        "turn_start_to_first_token_ms",
        "first_token_to_speakable_ms",
        "speakable_to_heard_ms",
        "speakable_to_first_audio_ms",
        "first_audio_to_played_ms",
        "played_to_heard_ms",
        "end_to_end_ms",
    ] {
        let v = report[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing: {report}"));
        assert!(v >= 0.0, "{k}: {report}");
    }
    // The audio output's milestones split the speech interval exactly.
    let split: f64 = [
        "speakable_to_first_audio_ms",
        "first_audio_to_played_ms",
        "played_to_heard_ms",
    ]
    .iter()
    .map(|k| report[*k].as_f64().unwrap())
    .sum();
    let whole = report["speakable_to_heard_ms"].as_f64().unwrap();
    assert!((split - whole).abs() < 1e-6, "{split} vs {whole}: {report}");
    assert!(report["cut_at_chars"].as_u64().is_some(), "{report}");
}
