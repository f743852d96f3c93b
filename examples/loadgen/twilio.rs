//! `--twilio URL --calls N`: N simulated phones on 127.0.0.1, each calling
//! a voice server's Media Streams endpoint: it streams a question (espeak-ng
//! speech) in real time, plays the agent's answer in real time echoing marks
//! as a phone does, barges in at a random point of the answer, and hangs up.
//!
//! `--twilio self` runs the voice server in this process (PocketSphinx,
//! espeak-ng, a scripted model: 300 ms to the first token) so the summary
//! can also compare what each call's history says was heard with the words
//! whose audio the phone played (`heard_mismatch_words`); against another
//! server that figure is `null`. Summary (JSON): `calls_ok`,
//! `time_to_silence_ms` (the barge-in's onset in the caller's audio → the
//! `clear` at the phone), `voice_to_voice_ms` (the question's last speech
//! sample → the first agent audio at the phone), `heard_mismatch_words`,
//! CPU seconds and RSS per call (of this process: with `self`, server and
//! phones together).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::audio::espeak::{Espeak, EspeakConfig};
use colloquy::audio::pocketsphinx::{PocketSphinx, PocketSphinxConfig};
use colloquy::audio::{Alignment, AudioError, SynthEvent, Synthesizer, convert_position, resample};
use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy_actors::calls::twilio::SimulatedPhone;
use colloquy_actors::calls::{CallLimits, CallNotice, CallServices};
use colloquy_actors::turn_taking::{InterruptionMode, InterruptionPolicy};
use colloquy_actors::{AgentSettings, SessionConfig, Supervisor, SupervisorConfig};
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use serde_json::json;
use tokio::time::Instant;

use crate::Recognizer;
use crate::stats::{cpu_seconds, latency_json, peak_rss_mb, rss_mb};

/// What each phone says: the question, then the barge-in.
const QUESTION: &str = "What is the weather like in Paris today";
const BARGE_IN: &str = "wait, stop please";

const REPLY: &str = "here. The weather in Paris is mild today, with a light breeze from the west and a few clouds over the river, and it should stay dry until the evening.";

/// One synthesis: the task that asked for it (each call's audio output
/// synthesizes in a task of its own), its text, audio (22,050 Hz) and marks.
type Made = (Option<tokio::task::Id>, String, Vec<i16>, Vec<(usize, u64)>);

/// What the in-process server made and kept, per call.
#[derive(Default)]
struct Kept {
    synth: Vec<Made>,
    histories: Vec<(String, ChatContext)>,
    /// When each call's first cut (or pause) was decided: its hooks ran, in
    /// the deciding thread, right after the ledger's decision.
    decided: Vec<(String, Instant)>,
}

struct Recording {
    inner: Espeak,
    kept: Arc<Mutex<Kept>>,
}

impl Synthesizer for Recording {
    fn sample_rate(&self) -> u32 {
        self.inner.sample_rate()
    }
    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        let kept = self.kept.clone();
        let i = {
            let mut k = kept.lock().unwrap();
            k.synth.push((
                tokio::task::try_id(),
                text.to_string(),
                Vec::new(),
                Vec::new(),
            ));
            k.synth.len() - 1
        };
        self.inner
            .synthesize(text)
            .map(move |ev| {
                if let Ok(e) = &ev {
                    let mut k = kept.lock().unwrap();
                    match e {
                        SynthEvent::Audio(a) => k.synth[i].2.extend(a),
                        SynthEvent::Mark { chars, sample } => k.synth[i].3.push((*chars, *sample)),
                        _ => {}
                    }
                }
                ev
            })
            .boxed()
    }
}

/// The voice server, in this process: each call's reply names the call, so
/// its synthesis is told apart from the others'.
async fn serve_self(
    kept: Arc<Mutex<Kept>>,
    mode: InterruptionMode,
    ears: Ears,
) -> Result<(String, MockServer, Supervisor), Box<dyn std::error::Error>> {
    let model = MockServer::start(|req| {
        let call = req.json()["messages"][0]["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        let text = format!("{call} {REPLY}");
        // 300 ms to the first token, then a word every 30 ms.
        let mut r = MockResponse::event_stream()
            .delay(Duration::from_millis(300))
            .event(&sse_chunk(
                json!({"role": "assistant", "content": ""}),
                None,
            ));
        let mut n = 0;
        for (i, word) in text.split_inclusive(' ').enumerate() {
            if i > 0 {
                r = r.delay(Duration::from_millis(30));
            }
            r = r.event(&sse_chunk(json!({"content": word}), None));
            n += 1;
        }
        r.finish("stop", 60, n)
    })
    .await?;
    let client = ChatClient::new(OpenAiConfig::compatible(model.base_url()))?;
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let synth = Recording {
        inner: Espeak::new(EspeakConfig::default())?,
        kept: kept.clone(),
    };
    let config = match ears.recognizer {
        Recognizer::Dictation => PocketSphinxConfig {
            max_decoders: ears.decoders.unwrap_or(4),
            ..PocketSphinxConfig::default()
        },
        // A vocabulary decoder is small (the acoustic model and a few
        // words): enough of them that few callers wait for one.
        Recognizer::Vocabulary => PocketSphinxConfig {
            max_decoders: ears.decoders.unwrap_or(32),
            ..PocketSphinxConfig::default().with_vocabulary(
                &[QUESTION, BARGE_IN],
                std::env::temp_dir().join(format!("colloquy-loadgen-{}", std::process::id())),
            )?
        },
    };
    let ears = PocketSphinx::new(PocketSphinxConfig {
        decode_at_end: ears.decode_at_end,
        ..config
    })?;
    let services = CallServices::new(
        supervisor.clone(),
        move |info| {
            let mut settings = AgentSettings::new(LlmOptions::new("loadgen"));
            settings.instructions = Some(format!("Call {}", info.id));
            settings.interruption = InterruptionPolicy {
                mode,
                ..InterruptionPolicy::default()
            };
            SessionConfig::new(client.clone(), settings)
        },
        Arc::new(synth),
    )
    .with_transcriber(Arc::new(ears))
    // The load is the point: no call refused for the server's call limit.
    .with_limits(unlimited_calls())
    .on_call(move |notice| match notice {
        CallNotice::Ended { info, history, .. } => {
            kept.lock().unwrap().histories.push((info.id, history));
        }
        CallNotice::Started { info, session } => {
            let record = |kept: &Arc<Mutex<Kept>>, id: &str| {
                let mut k = kept.lock().unwrap();
                if !k.decided.iter().any(|(i, _)| i == id) {
                    k.decided.push((id.to_string(), Instant::now()));
                }
            };
            let (k, id) = (kept.clone(), info.id.clone());
            session.bus().on_cut(move |_| record(&k, &id));
            let (k, id) = (kept.clone(), info.id.clone());
            session.bus().on_pause(move |_| record(&k, &id));
        }
        _ => {}
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/twilio", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, colloquy_actors::calls::router(services)).await;
    });
    Ok((url, model, supervisor))
}

fn unlimited_calls() -> CallLimits {
    let mut limits = CallLimits::default();
    limits.max_calls = usize::MAX;
    limits
}

async fn speech(text: &str) -> Result<Vec<i16>, Box<dyn std::error::Error>> {
    let synth = Espeak::new(EspeakConfig {
        voice: "en-gb+f3".into(),
        ..EspeakConfig::default()
    })?;
    let mut audio = Vec::new();
    let mut stream = synth.synthesize(text);
    while let Some(ev) = stream.next().await {
        if let SynthEvent::Audio(a) = ev? {
            audio.extend(a);
        }
    }
    Ok(resample::resample(&audio, synth.sample_rate(), 8_000)?)
}

fn bounds(s: &[i16]) -> (usize, usize) {
    let first = s.iter().position(|x| x.abs() > 100).unwrap_or(0);
    let last = s
        .iter()
        .rposition(|x| x.abs() > 100)
        .map_or(s.len(), |i| i + 1);
    (first, last)
}

struct Outcome {
    id: String,
    voice_to_voice: Duration,
    to_silence: Duration,
    /// When the first `clear` reached the phone.
    cleared_at: Instant,
    /// Samples of the first reply the phone played before the clear.
    played: u64,
}

async fn one_call(
    url: String,
    signing: Option<Arc<(colloquy::Secret, String)>>,
    i: usize,
    question: Arc<Vec<i16>>,
    barge: Arc<Vec<i16>>,
) -> Result<Outcome, String> {
    let id = format!("LOAD{i}");
    let signed = signing.as_deref().map(|(t, u)| (t, u.as_str()));
    let mut phone = SimulatedPhone::call_signed(&url, &id, signed).await?;
    // Stagger the calls, and barge in at a different point of each answer.
    phone
        .silence(Duration::from_millis(200 + (i as u64 * 37) % 400))
        .await;
    let (_, q_end) = bounds(&question);
    let sent = Instant::now();
    phone.speak(&question).await;
    let last_speech = sent + Duration::from_micros(q_end as u64 * 125);
    let deadline = Instant::now() + Duration::from_secs(60);
    while phone.log().first_media.is_none() {
        if Instant::now() > deadline {
            return Err(format!("{id}: no answer"));
        }
        phone.silence(Duration::from_millis(20)).await;
    }
    let voice_to_voice = phone
        .log()
        .first_media
        .unwrap_or(last_speech)
        .saturating_duration_since(last_speech);
    let listen = 400 + (i as u64 * 613) % 2000; // ms of the answer before the barge-in
    while phone
        .log()
        .played
        .iter()
        .map(|c| c.samples.len() as u64)
        .sum::<u64>()
        < listen * 8
    {
        if Instant::now() > deadline {
            return Err(format!("{id}: the answer stopped playing"));
        }
        phone.silence(Duration::from_millis(20)).await;
    }
    let (onset, _) = bounds(&barge);
    let b_sent = Instant::now();
    phone.speak(&barge).await;
    let onset_at = b_sent + Duration::from_micros(onset as u64 * 125);
    while phone.log().clears.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{id}: the barge-in never cleared the phone"));
        }
        phone.silence(Duration::from_millis(20)).await;
    }
    phone.silence(Duration::from_millis(800)).await;
    let log = phone.log();
    phone.hang_up();
    let clear = log.clears[0];
    let played = log
        .played
        .iter()
        .filter(|c| c.at < clear)
        .map(|c| c.samples.len() as u64)
        .sum();
    Ok(Outcome {
        id: format!("twilio-{id}"),
        voice_to_voice,
        to_silence: clear.saturating_duration_since(onset_at),
        cleared_at: clear,
        played,
    })
}

/// Words committed as heard that the phone did not play, and words it
/// played that the history lacks, for one call (the in-process server).
fn mismatch(kept: &Kept, o: &Outcome) -> Option<(usize, usize)> {
    let history = &kept.histories.iter().find(|(id, _)| *id == o.id)?.1;
    let committed = history.items.iter().find_map(|i| match i {
        ChatItem::Message(m) if m.role == Role::Assistant => Some(m.text_content()),
        _ => None,
    })?;
    // "Call twilio-LOAD1 here." — the space after the id keeps LOAD1 from LOAD10.
    let tag = format!("Call {} ", o.id);
    let mut audio_len = 0u64;
    let mut alignment = Alignment::new(false);
    let mut chars_before = 0;
    let mut text = String::new();
    // The call's first segment names it; its audio output's task made the rest.
    let task = kept.synth.iter().find(|m| m.1.starts_with(&tag))?.0?;
    for (_, t, audio, marks) in kept.synth.iter().filter(|m| m.0 == Some(task)) {
        for (c, s) in marks {
            alignment.push(
                chars_before + c,
                audio_len + convert_position(*s, 22_050, 8_000),
            );
        }
        audio_len += (audio.len() as u64) * 8_000 / 22_050;
        chars_before += t.chars().count();
        alignment.push(chars_before, audio_len);
        text.push_str(t);
    }
    let heard: String = text.chars().take(alignment.chars_at(o.played)).collect();
    let words = |s: &str| s.split_whitespace().count();
    let (c, h) = (words(&committed), words(&heard));
    Some((c.saturating_sub(h), h.saturating_sub(c)))
}

/// The recognizer of `--twilio self`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ears {
    /// Dictation or the callers' vocabulary.
    pub(crate) recognizer: Recognizer,
    /// Decoders in the pool (`None`: the recognizer's default).
    pub(crate) decoders: Option<usize>,
    /// Decode each utterance once it ended.
    pub(crate) decode_at_end: bool,
}

pub(crate) async fn run(
    url: String,
    signing: Option<(colloquy::Secret, String)>,
    calls: usize,
    mode: InterruptionMode,
    ears: Ears,
) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let kept: Arc<Mutex<Kept>> = Arc::default();
    let own = url == "self";
    let (url, _model, supervisor) = if own {
        let (u, m, s) = serve_self(kept.clone(), mode, ears).await?;
        (u, Some(m), Some(s))
    } else {
        (url, None, None)
    };
    // `self` serves unsigned: no signature to make.
    let signing = signing.filter(|_| !own).map(Arc::new);
    let question = Arc::new(speech(QUESTION).await?);
    let barge = Arc::new(speech(BARGE_IN).await?);
    let rss0 = rss_mb();
    let cpu0 = cpu_seconds();
    let tasks: Vec<_> = (0..calls)
        .map(|i| {
            tokio::spawn(one_call(
                url.clone(),
                signing.clone(),
                i,
                question.clone(),
                barge.clone(),
            ))
        })
        .collect();
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(e.to_string()),
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let peak = peak_rss_mb();
    if own {
        // Let every call's end be reported.
        let deadline = Instant::now() + Duration::from_secs(10);
        while kept.lock().unwrap().histories.len() < outcomes.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let mut v2v: Vec<u64> = outcomes
        .iter()
        .map(|o| o.voice_to_voice.as_millis() as u64)
        .collect();
    let mut silence: Vec<u64> = outcomes
        .iter()
        .map(|o| o.to_silence.as_millis() as u64)
        .collect();
    v2v.sort_unstable();
    silence.sort_unstable();
    // With the server in this process: the decision (the cut's or pause's
    // hooks) → the clear at the phone, on one clock.
    let mut decision_to_clear: Vec<u64> = {
        let k = kept.lock().unwrap();
        outcomes
            .iter()
            .filter_map(|o| {
                let (_, at) = k.decided.iter().find(|(id, _)| *id == o.id)?;
                Some(o.cleared_at.saturating_duration_since(*at).as_micros() as u64)
            })
            .collect()
    };
    decision_to_clear.sort_unstable();
    let ms_to_us = |v: &[u64]| v.iter().map(|m| m * 1000).collect::<Vec<_>>();
    crate::plot::record("time to silence (onset → clear)", &ms_to_us(&silence));
    crate::plot::record("decision → clear at the phone", &decision_to_clear);
    crate::plot::record("voice to voice", &ms_to_us(&v2v));
    let heard = own.then(|| {
        let k = kept.lock().unwrap();
        let per: Vec<_> = outcomes.iter().filter_map(|o| mismatch(&k, o)).collect();
        json!({
            "calls_compared": per.len(),
            "committed_not_played": per.iter().map(|p| p.0).sum::<usize>(),
            "played_not_committed": per.iter().map(|p| p.1).sum::<usize>(),
        })
    });
    if let Some(s) = supervisor {
        s.shutdown().await;
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(json!({
        "mode": "twilio",
        "interruptions": if mode == InterruptionMode::Immediate { "immediate (the clear is the cut)" } else { "confirmed (the first clear is the pause, min_pause 200 ms after the detector's start)" },
        "server": if own { "self (in-process: PocketSphinx, espeak-ng, scripted model 300 ms to first token)" } else { url.as_str() },
        "recognizer": own.then(|| json!({
            "model": match ears.recognizer {
                Recognizer::Dictation => "pocketsphinx en-us dictation",
                Recognizer::Vocabulary => "pocketsphinx, the callers' vocabulary (JSGF word loop)",
            },
            "decoders": ears.decoders,
            "decode_at_end": ears.decode_at_end,
        })),
        "calls": calls,
        "calls_ok": outcomes.len(),
        "errors": errors.len(),
        "time_to_silence_ms": latency_json(&silence),
        "voice_to_voice_ms": latency_json(&v2v),
        "decision_to_clear_us": own.then(|| latency_json(&decision_to_clear)),
        "heard_mismatch_words": heard,
        "cpu_s_per_call": if calls > 0 { cpu / calls as f64 } else { 0.0 },
        "rss_mb_per_call": if calls > 0 { (peak - rss0).max(0.0) / calls as f64 } else { 0.0 },
        "peak_rss_mb": peak,
    }))
}
