//! `--audio FILE.wav`: the scenario as sound. Each of the user's utterances
//! (from a `speech_started` to its `final`, or a cough: a speech with no
//! final) is spoken by espeak-ng in one voice at its time in the script and
//! fed in real time through voice activity detection and PocketSphinx — the
//! scenario's own events are not sent, the runtime hears them; the agent
//! speaks in another voice into a simulated listener. The file is what a
//! caller would have heard: stereo, 16 kHz, the caller on the left, the
//! agent on the right, the cut at the barge-in audible.

use std::sync::Arc;
use std::time::Duration;

use colloquy::audio::espeak::{Espeak, EspeakConfig};
use colloquy::audio::pocketsphinx::PocketSphinxConfig;
use colloquy::audio::{AudioFrame, SynthEvent, Synthesizer, resample, wav};
use colloquy_actors::bus::{BusRecvError, EventKind};
use colloquy_actors::speech::audio::{AudioOutput, AudioOutputConfig, PlayoutClock, RecordingSink};
use colloquy_actors::speech::{Listener, ListenerConfig, Speaker, SttEvent};
use colloquy_actors::{SessionConfig, Supervisor, SupervisorConfig};
use futures_util::StreamExt;
use tokio::time::Instant;

use crate::model::weather_tool;
use crate::scenario::{Action, Scenario};

const RATE: u32 = 16_000;

async fn speak(synth: &Espeak, text: &str) -> Vec<i16> {
    let mut pcm = Vec::new();
    let mut stream = synth.synthesize(text);
    while let Some(ev) = stream.next().await {
        if let Ok(SynthEvent::Audio(a)) = ev {
            pcm.extend(a);
        }
    }
    resample::resample(&pcm, synth.sample_rate(), RATE).unwrap_or_default()
}

/// The caller's track: each utterance of the script spoken at its time.
async fn caller_track(scenario: &Scenario) -> Result<Vec<i16>, Box<dyn std::error::Error>> {
    let voice = Espeak::new(EspeakConfig {
        voice: "en-gb+f3".into(),
        ..EspeakConfig::default()
    })?;
    let mut track: Vec<i16> = Vec::new();
    let mut started: Option<u64> = None;
    let mut said: Option<String> = None;
    for (at, action) in &scenario.events {
        match action {
            Action::Stt(SttEvent::SpeechStarted) => {
                started = Some(*at);
                said = None;
            }
            Action::Stt(SttEvent::Final(text)) => said = Some(text.clone()),
            Action::Stt(SttEvent::SpeechEnded) => {
                let Some(from) = started.take() else { continue };
                // A speech with no words: a short "hm", as long as the script's.
                let audio = match said.take() {
                    Some(text) => speak(&voice, &text).await,
                    None => {
                        let mut hm = speak(&voice, "hm").await;
                        hm.truncate(((*at - from) * u64::from(RATE) / 1000) as usize);
                        hm
                    }
                };
                // At its time in the script, or right after the one before.
                let offset = (from * u64::from(RATE) / 1000) as usize;
                track.resize(track.len().max(offset), 0);
                track.extend(audio);
            }
            _ => {}
        }
    }
    track.resize(track.len() + RATE as usize * 2, 0);
    Ok(track)
}

pub(crate) async fn run(
    path: std::path::PathBuf,
    scenario: Scenario,
    config: SessionConfig,
    speech: &crate::speech::SpeechFlags,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let caller = caller_track(&scenario).await?;
    let engines = speech.build("en-us", PocketSphinxConfig::default())?;
    eprintln!("voice_agent --audio: {}", engines.summary);
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let session = supervisor
        .start_session("audio-call", config.with_tools(weather_tool()))
        .await?;
    let clock = PlayoutClock::new();
    let sink = RecordingSink::new(RATE, clock.clone());
    let output = AudioOutput::new(
        engines.voice,
        Arc::new(sink.clone()),
        clock,
        AudioOutputConfig::default(),
    );
    let speaker = Speaker::spawn(&session, output);
    let mut listener = Listener::new(
        &session,
        RATE,
        Some(engines.ears.as_ref()),
        ListenerConfig::default(),
    )?;
    let mut events = session.subscribe();
    let start = Instant::now();
    let printer = tokio::spawn(async move {
        loop {
            let ev = match events.recv().await {
                Ok(ev) => ev,
                Err(BusRecvError::Lagged { .. }) => continue,
                Err(_) => return,
            };
            let t = start.elapsed().as_secs_f64();
            let line = match &ev.kind {
                EventKind::UserTranscript {
                    text,
                    is_final: true,
                    ..
                } => format!("caller (as PocketSphinx heard it): {text}"),
                EventKind::Speakable { text, .. } if !text.is_empty() => format!("agent: {text}"),
                EventKind::PlaybackPaused { heard_chars } => {
                    format!("PAUSED at character {heard_chars}")
                }
                EventKind::PlaybackResumed { heard_chars } => {
                    format!("RESUMED from character {heard_chars}")
                }
                EventKind::Interrupted { heard_chars } => {
                    format!("BARGE-IN: cut after {heard_chars} characters heard")
                }
                EventKind::TurnFinished(end) if end.is_abort() => {
                    "BARGE-IN: cut while generating".to_string()
                }
                _ => continue,
            };
            println!("{t:>7.3}s {line}");
        }
    });
    // The caller's audio in real time, 20 ms a frame.
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    for (i, chunk) in caller.chunks(RATE as usize / 50).enumerate() {
        tick.tick().await;
        listener.push(&AudioFrame::new(
            chunk.to_vec(),
            RATE,
            (i * chunk.len()) as u64,
        ))?;
    }
    // Until the agent is quiet (its last reply played), with a guard.
    let quiet =
        tokio::time::timeout(Duration::from_secs(60), session.speaking().until_quiet()).await;
    drop(speaker);
    let ctx = session.context().await?;
    printer.abort();
    // The agent's track: each frame where it played.
    let mut right = vec![0i16; caller.len()];
    for played in sink.played() {
        let at =
            (played.at.saturating_duration_since(start).as_secs_f64() * f64::from(RATE)) as usize;
        let end = at + played.frame.len();
        if right.len() < end {
            right.resize(end, 0);
        }
        right[at..end].copy_from_slice(played.frame.samples());
    }
    wav::write_file(&path, RATE, &[&caller, &right])?;
    println!("\nhistory (what the caller heard):");
    for m in ctx.messages() {
        println!(
            "  {}{}: {}",
            m.role.as_str(),
            if m.interrupted { " (interrupted)" } else { "" },
            m.text_content()
        );
    }
    println!(
        "wrote {} (stereo, {RATE} Hz: caller left, agent right)",
        path.display()
    );
    supervisor.shutdown().await;
    Ok(if quiet.is_err() {
        vec!["the agent did not finish speaking within 60 s".into()]
    } else {
        vec![]
    })
}
