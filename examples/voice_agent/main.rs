//! The main job: a whole voice-agent conversation through the real runtime.
//!
//! ```text
//! cargo run --release --example voice_agent                    # built-in demo, offline model
//! cargo run --release --example voice_agent -- --scenario examples/scenarios/cough.json --json
//! OPENAI_API_KEY=sk-… cargo run --release --example voice_agent
//! cargo run --release --example voice_agent -- --base-url http://127.0.0.1:11434/v1 --model llama3.2
//! ```
//!
//! Wired exactly as an embedder would: a [`Supervisor`] starts the session with
//! its LLM actor, a tool executor (one `get_weather` tool) and a segmenter; a
//! [`Speaker`] plays the replies on a [`PacedTextOutput`] (a simulated TTS at
//! a fixed number of characters per second) and does the whole playback
//! protocol — progress, pause, resume, cut. The user's side is a *scenario*: a
//! JSON script of speech-recognition events at fixed times (voice activity,
//! interim and final transcripts), fed in with [`SessionHandle::stt`]. Without
//! `--scenario` the built-in demo (`examples/scenarios/demo.json`) runs: a
//! tool call, a cough that pauses and resumes the agent, a backchannel, a real
//! interruption and a preemptive hit. The timeline shows each with its measured
//! latency; `--json` prints one JSON object per line instead (see
//! docs/scenarios.md).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy::llm::LlmOptions;
use colloquy_actors::speech::{PacedTextOutput, Speaker};
use colloquy_actors::turn_taking::InterruptionMode;
use colloquy_actors::{
    AgentSettings, Preemptive, SegmenterConfig, SessionConfig, Supervisor, SupervisorConfig,
};
use tokio::sync::{oneshot, watch};

#[cfg(all(feature = "espeak", feature = "pocketsphinx"))]
mod audio;
#[path = "../common/mod.rs"]
mod common;
mod model;
mod observer;
#[path = "../common/otel.rs"]
mod otel;
mod output;
mod scenario;
#[cfg(all(feature = "espeak", feature = "pocketsphinx"))]
#[path = "../common/speech.rs"]
mod speech;

use common::ProviderFlags;
use model::{choose_model, weather_tool};
use observer::{Hooked, Marks, Observer, Seen, agent_done};
use output::{Out, print_history};
use scenario::{Scenario, drive, parse_scenario};

/// The built-in demo, also shipped as `examples/scenarios/demo.json`.
const DEMO: &str = include_str!("../scenarios/demo.json");

/// After the script, how long the agent may take to finish speaking.
pub(crate) const FINISH_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- command line

/// A whole voice-agent conversation through the real runtime: a scripted
/// user (a scenario of speech-recognition events), the agent's replies on a
/// simulated TTS, and the history committed as heard.
///
/// The model: --azure-endpoint or --azure-deployment: Azure OpenAI;
/// --base-url: that OpenAI-compatible server (key: --api-key-file, else
/// OPENAI_API_KEY); --api-key alone: OpenAI; else OPENAI_API_KEY (OpenAI),
/// else AZURE_OPENAI_ENDPOINT (Azure), else an offline demo model on
/// 127.0.0.1 (scripted replies, 300 ms to the first token).
#[derive(clap::Parser, Debug)]
#[command(
    name = "voice_agent",
    after_help = "Exit codes: 0 the conversation ran; 1 a turn failed (its message is printed) or \
the agent did not finish; 2 a usage error or a bad scenario file."
)]
struct Args {
    /// Run this scripted conversation (JSON, see docs/scenarios.md) instead
    /// of the built-in demo
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// One JSON object per line on stdout instead of the timeline
    #[arg(long)]
    json: bool,
    /// Play the scenario as sound: the user's lines spoken by espeak-ng and
    /// heard through voice activity detection and PocketSphinx, the agent
    /// speaking too; writes what a caller heard to FILE (stereo WAV: caller
    /// left, agent right). Needs --features espeak,pocketsphinx
    #[arg(long, value_name = "FILE")]
    audio: Option<PathBuf>,
    #[cfg(all(feature = "espeak", feature = "pocketsphinx"))]
    #[command(flatten)]
    speech: speech::SpeechFlags,
    #[command(flatten)]
    provider: ProviderFlags,
    /// The model (default: $COLLOQUY_MODEL, else gpt-4o-mini)
    #[arg(long, value_name = "M")]
    model: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, _) = common::parse::<Args>();
    let (name, text) = match &args.scenario {
        None => ("the built-in demo".to_string(), DEMO.to_string()),
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (path.display().to_string(), text),
            Err(e) => {
                common::usage_error::<Args>(format!("cannot read scenario {}: {e}", path.display()))
            }
        },
    };
    let scenario = match parse_scenario(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: scenario {name}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(args, &name, scenario).await {
        Ok(problems) if problems.is_empty() => ExitCode::SUCCESS,
        Ok(problems) => {
            for p in &problems {
                eprintln!("error: {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => common::fail(e),
    }
}

/// The conversation; what went wrong in it (failed turns, an agent that did
/// not finish in time), empty when nothing did.
async fn run(
    args: Args,
    name: &str,
    scenario: Scenario,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let model = choose_model(&args.provider, args.model.clone()).await?;
    // Flushed when dropped, at the end of the run.
    let otlp = otel::from_env("voice_agent")?;
    let out = Arc::new(Out {
        json: args.json,
        start: Instant::now(),
        speaking: Mutex::new(None),
    });
    if !out.json {
        println!("colloquy voice agent — model: {}", model.label);
        println!(
            "scenario: {name} | interruptions: {} | preemptive generation: {} | TTS: {} characters per second\n",
            match scenario.policy.mode {
                InterruptionMode::Immediate => "immediate".to_string(),
                _ => format!(
                    "confirmed (pause after {} ms of speech, cut on {} words, resume {} ms after silence)",
                    scenario.policy.min_pause.as_millis(),
                    scenario.policy.min_words,
                    scenario.policy.resume_timeout.as_millis()
                ),
            },
            if scenario.preemptive { "on" } else { "off" },
            scenario.tts_chars_per_s
        );
    }

    let mut options = LlmOptions::new(model.model.clone());
    options.max_completion_tokens = Some(300);
    let mut settings = AgentSettings::new(options).with_instructions(
        "You are a friendly voice assistant. Answer in one to three short spoken sentences, no lists or markdown. \
         Use get_weather for weather questions.",
    );
    settings.interruption = scenario.policy.clone();
    settings.preemptive = scenario.preemptive.then(Preemptive::default);
    if let Some(path) = args.audio.clone() {
        return run_audio(
            &args,
            path,
            scenario,
            otel::traced(
                SessionConfig::new(model.client.clone(), settings),
                otlp.as_ref(),
            ),
        )
        .await;
    }
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let mut config = otel::traced(
        SessionConfig::new(model.client.clone(), settings)
            .with_tools(weather_tool())
            .with_segmenter(SegmenterConfig::default()),
        otlp.as_ref(),
    );
    config.bus_capacity = 4096;
    let session = supervisor.start_session("demo-call", config).await?;

    let sink_out = out.clone();
    let output = PacedTextOutput::with_sink(scenario.tts_chars_per_s, move |turn, piece| {
        sink_out.spoken(turn, piece)
    });
    let speaker = Speaker::spawn(&session, output);
    // Registered after the speaker's hooks, so they run after its output
    // paused or went silent: the marks bound the latency from above.
    let marks = Arc::new(Mutex::new(Marks::default()));
    let (hooked_tx, hooked) = watch::channel(Hooked::default());
    let hooked_tx = Arc::new(hooked_tx);
    {
        let h = hooked_tx.clone();
        session.bus().on_pause(move |_| {
            h.send_modify(|h| {
                h.pauses += 1;
                h.paused_at = Some(Instant::now());
            })
        });
        session.bus().on_cut(move |_| {
            hooked_tx.send_modify(|h| {
                h.cuts += 1;
                h.cut_at = Some(Instant::now());
            })
        });
    }
    let (seen_tx, seen_rx) = watch::channel(Seen::default());
    let (stop_tx, stop_rx) = oneshot::channel();
    let observer = Observer {
        out: out.clone(),
        marks: marks.clone(),
        hooked,
        pauses: 0,
        cuts: 0,
        seen_tx,
        seen: Seen::default(),
        heard: HashMap::new(),
        turn_usage: HashMap::new(),
        final_at: None,
        hit: false,
        backchannel: false,
        failures: Vec::new(),
    };
    let observer = tokio::spawn(observer.run(session.subscribe(), stop_rx));

    let (last_seq, ended) = drive(session.clone(), scenario.events, out.start, marks).await;
    let finished = ended || agent_done(seen_rx, speaker.status(), last_seq).await;
    // What happened up to now is printed; stopping the session is not part of the run.
    let _ = stop_tx.send(());
    let mut problems = observer.await.unwrap_or_default();
    out.end_speech("");
    if !finished {
        problems.push(format!(
            "the agent did not finish speaking within {} s after the script",
            FINISH_GUARD.as_secs()
        ));
    }
    drop(speaker);
    let ctx = session.context().await?;
    print_history(&out, &ctx);
    if !out.json {
        let turns = ctx
            .messages()
            .filter(|m| m.role.as_str() == "assistant")
            .count();
        println!(
            "\n{turns} assistant message(s); the run took {:.1} s",
            out.start.elapsed().as_secs_f64()
        );
    }
    supervisor.shutdown().await;
    Ok(problems)
}

#[cfg(all(feature = "espeak", feature = "pocketsphinx"))]
async fn run_audio(
    args: &Args,
    path: PathBuf,
    scenario: Scenario,
    config: SessionConfig,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    audio::run(path, scenario, config, &args.speech).await
}

#[cfg(not(all(feature = "espeak", feature = "pocketsphinx")))]
async fn run_audio(
    _args: &Args,
    _path: PathBuf,
    _scenario: Scenario,
    _config: SessionConfig,
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    Err("--audio needs the speech engines: build with --features espeak,pocketsphinx (and their system packages; see docs/audio.md)".into())
}
