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
//! latency; `--json` prints one JSON object per line instead (README,
//! "Scenarios").

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy::context::{ChatContext, ChatItem};
use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{
    BusEvent, BusReceiver, BusRecvError, EventKind, SpeculationOutcome, TurnEnd,
};
use colloquy_actors::speech::{PacedTextOutput, Speaker, SpeakerStatus, SttEvent};
use colloquy_actors::turn_taking::InterruptionMode;
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, Preemptive, SegmenterConfig, SessionConfig, SessionHandle,
    Supervisor, SupervisorConfig, Tool, ToolError, ToolRegistry, TurnId,
};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

#[path = "common/mod.rs"]
mod common;
use common::{Env, ProviderFlags};

/// The built-in demo, also shipped as `examples/scenarios/demo.json`.
const DEMO: &str = include_str!("scenarios/demo.json");

/// After the script, how long the agent may take to finish speaking.
const FINISH_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- command line

/// A whole voice-agent conversation through the real runtime: a scripted
/// user (a scenario of speech-recognition events), the agent's replies on a
/// simulated TTS, and the history committed as heard.
///
/// The model: --azure-endpoint or --azure-deployment: Azure OpenAI;
/// --base-url: that OpenAI-compatible server (key: --api-key, else
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
    /// Run this scripted conversation (JSON, see the README's "Scenarios")
    /// instead of the built-in demo
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// One JSON object per line on stdout instead of the timeline
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderFlags,
    /// The model (default: $COLLOQUY_MODEL, else gpt-4o-mini)
    #[arg(long, value_name = "M")]
    model: Option<String>,
}

// ---------------------------------------------------------------- scenarios

/// One step of the user's side.
#[derive(Debug, Clone, PartialEq)]
enum Action {
    Stt(SttEvent),
    End,
}

struct Scenario {
    policy: InterruptionPolicy,
    preemptive: bool,
    tts_chars_per_s: f64,
    /// In time order (ties in file order).
    events: Vec<(u64, Action)>,
}

const DEFAULT_TTS_CHARS_PER_S: f64 = 16.0;

/// The keys of a JSON object, each known; `what` names the object in errors.
fn object<'a>(
    v: &'a Value,
    what: &str,
    known: &[&str],
) -> Result<&'a serde_json::Map<String, Value>, String> {
    let Value::Object(map) = v else {
        return Err(format!("{what} must be a JSON object, got {v}"));
    };
    if let Some(key) = map.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!(
            "unknown key \"{key}\" in {what} (known keys: {})",
            known.join(", ")
        ));
    }
    Ok(map)
}

/// A field's value (`None` when absent or null); `path` names it in errors.
fn field<T: serde::de::DeserializeOwned>(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<T>, String> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| format!("\"{path}\": {e}")),
    }
}

/// Times in a scenario: up to a day.
const MAX_MS: u64 = 86_400_000;

/// A field of milliseconds (at most [`MAX_MS`]).
fn millis(
    map: &serde_json::Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Option<u64>, String> {
    match field::<u64>(map, key, path)? {
        Some(ms) if ms > MAX_MS => Err(format!(
            "\"{path}\" must be at most {MAX_MS} (a day), got {ms}"
        )),
        other => Ok(other),
    }
}

fn parse_scenario(text: &str) -> Result<Scenario, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let top = object(
        &value,
        "the scenario",
        &["interruption", "preemptive", "tts_chars_per_s", "events"],
    )?;
    let mut policy = InterruptionPolicy::default();
    if let Some(spec) = top.get("interruption").filter(|v| !v.is_null()) {
        let spec = object(
            spec,
            "\"interruption\"",
            &["mode", "min_words", "min_pause_ms", "resume_timeout_ms"],
        )?;
        match field::<String>(spec, "mode", "interruption.mode")?.as_deref() {
            None => {}
            Some("immediate") => policy.mode = InterruptionMode::Immediate,
            Some("confirmed") => policy.mode = InterruptionMode::Confirmed,
            Some(other) => {
                return Err(format!(
                    "\"interruption.mode\" must be \"immediate\" or \"confirmed\", got \"{other}\""
                ));
            }
        }
        if let Some(n) = field(spec, "min_words", "interruption.min_words")? {
            policy.min_words = n;
        }
        if let Some(ms) = millis(spec, "min_pause_ms", "interruption.min_pause_ms")? {
            policy.min_pause = Duration::from_millis(ms);
        }
        if let Some(ms) = millis(spec, "resume_timeout_ms", "interruption.resume_timeout_ms")? {
            policy.resume_timeout = Duration::from_millis(ms);
        }
    }
    let preemptive = field::<bool>(top, "preemptive", "preemptive")?.unwrap_or(false);
    let tts_chars_per_s =
        field::<f64>(top, "tts_chars_per_s", "tts_chars_per_s")?.unwrap_or(DEFAULT_TTS_CHARS_PER_S);
    if !(tts_chars_per_s.is_finite() && tts_chars_per_s > 0.0) {
        return Err(format!(
            "\"tts_chars_per_s\" must be a positive number of characters per second, got {tts_chars_per_s}"
        ));
    }
    let listed: Vec<Value> = field(top, "events", "events")?.unwrap_or_default();
    let mut events = Vec::with_capacity(listed.len());
    for (i, e) in listed.iter().enumerate() {
        let what = format!("events[{i}]");
        let e = object(
            e,
            &what,
            &[
                "at_ms",
                "speech_started",
                "speech_ended",
                "interim",
                "final",
                "end",
            ],
        )?;
        let Some(at_ms) = millis(e, "at_ms", &format!("{what}.at_ms"))? else {
            return Err(format!(
                "{what} needs \"at_ms\" (milliseconds from the start)"
            ));
        };
        let mut actions = Vec::new();
        for (key, action) in [
            ("speech_started", Action::Stt(SttEvent::SpeechStarted)),
            ("speech_ended", Action::Stt(SttEvent::SpeechEnded)),
            ("end", Action::End),
        ] {
            match field::<bool>(e, key, &format!("{what}.{key}"))? {
                None => {}
                Some(true) => actions.push((key, action)),
                Some(false) => return Err(format!("\"{what}.{key}\" must be true")),
            }
        }
        if let Some(t) = field::<String>(e, "interim", &format!("{what}.interim"))? {
            actions.push(("interim", Action::Stt(SttEvent::Interim(t))));
        }
        if let Some(t) = field::<String>(e, "final", &format!("{what}.final"))? {
            actions.push(("final", Action::Stt(SttEvent::Final(t))));
        }
        match actions.len() {
            1 => events.push((at_ms, actions.remove(0).1)),
            0 => {
                return Err(format!(
                    "{what} needs one of \"speech_started\", \"speech_ended\", \"interim\", \"final\", \"end\""
                ));
            }
            _ => {
                let names: Vec<&str> = actions.into_iter().map(|(n, _)| n).collect();
                return Err(format!(
                    "{what}: one action per event, found {}",
                    names.join(", ")
                ));
            }
        }
    }
    events.sort_by_key(|(at, _)| *at);
    Ok(Scenario {
        policy,
        preemptive,
        tts_chars_per_s,
        events,
    })
}

// ---------------------------------------------------------------- the model

/// A local OpenAI-compatible server with scripted replies: 300 ms to the first
/// token, then a word every 45 ms, and a `get_weather` tool call.
async fn offline_demo_model() -> std::io::Result<MockServer> {
    const TTFT: Duration = Duration::from_millis(300);
    const GAP: Duration = Duration::from_millis(45);
    fn paced(text: &str) -> MockResponse {
        let mut r = MockResponse::event_stream().delay(TTFT).event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ));
        for (i, word) in text.split_inclusive(' ').enumerate() {
            if i > 0 {
                r = r.delay(GAP);
            }
            r = r.event(&sse_chunk(json!({"content": word}), None));
        }
        r
    }
    fn usage(text: &str) -> u64 {
        text.split_whitespace().count() as u64 + 2
    }
    fn say(text: &str, prompt_tokens: u64) -> MockResponse {
        paced(text).finish("stop", prompt_tokens, usage(text))
    }
    MockServer::start(move |req| {
        let last = req.last_message();
        let said = last["content"].as_str().unwrap_or("").to_lowercase();
        let prompt = 90 + req.body.len() as u64 / 5;
        if last["role"] == "tool" {
            return say(
                "It's 18 degrees and sunny in Paris right now, with a light breeze from the west. \
                 It's a perfect afternoon for a walk along the Seine, and the evening should stay dry and mild.",
                prompt,
            );
        }
        if said.contains("weather") && !said.contains("tomorrow") {
            let text = "Let me check the weather in Paris. ";
            let call = json!({"tool_calls": [{"index": 0, "id": "call_weather_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
            return paced(text)
                .event(&sse_chunk(call, None))
                .finish("tool_calls", prompt, usage(text) + 12);
        }
        if said.contains("tomorrow") {
            return say(
                "Tomorrow will be cloudier, around 15 degrees, with light rain in the afternoon.",
                prompt,
            );
        }
        if said.contains("capital") {
            let text = if said.contains("italy") {
                "The capital of Italy is Rome."
            } else if said.contains("spain") {
                "The capital of Spain is Madrid."
            } else if said.contains("germany") {
                "The capital of Germany is Berlin."
            } else {
                "The capital of France is Paris."
            };
            return say(text, prompt);
        }
        if said.contains("paris") {
            return say(
                "Paris is the capital of France, on the river Seine. It is known for the Eiffel Tower, \
                 the Louvre and its cafés, and about two million people live in the city itself.",
                prompt,
            );
        }
        if said.contains("bye") {
            return say("Goodbye, have a lovely day!", prompt);
        }
        if said.contains("thank") {
            return say("You're welcome! Is there anything else I can do for you?", prompt);
        }
        say(
            "I can tell you about the weather, or about a city. What would you like to know?",
            prompt,
        )
    })
    .await
}

struct Model {
    client: ChatClient,
    model: String,
    label: String,
    _demo: Option<MockServer>,
}

async fn choose_model(
    flags: &ProviderFlags,
    model: Option<String>,
) -> Result<Model, Box<dyn std::error::Error>> {
    let config = ClientConfig {
        first_token_timeout: Some(Duration::from_secs(15)),
        ..ClientConfig::default()
    };
    let model = model
        .or_else(|| std::env::var("COLLOQUY_MODEL").ok())
        .unwrap_or_else(|| "gpt-4o-mini".into());
    let provider = flags
        .resolve(&model, Env::Read)?
        .map(|r| (r.provider, r.label));
    Ok(match provider {
        Some((p, label)) => Model {
            client: ChatClient::with_config(p, config)?,
            model,
            label,
            _demo: None,
        },
        None => {
            let server = offline_demo_model().await?;
            let client =
                ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), config)?;
            Model {
                client,
                model: "offline-demo".into(),
                label: format!(
                    "OFFLINE DEMO MODEL (scripted replies, 300 ms to the first token, from a local server at {})",
                    server.base_url()
                ),
                _demo: Some(server),
            }
        }
    })
}

// ---------------------------------------------------------------- output

/// Prints the run: JSON lines, or a human timeline whose spoken words and
/// event lines stay apart.
struct Out {
    json: bool,
    start: Instant,
    /// Timeline only: the turn whose words are on the open line, and whether
    /// an event line interrupted it.
    speaking: Mutex<Option<(TurnId, bool)>>,
}

impl Out {
    fn t_ms(&self) -> f64 {
        (self.start.elapsed().as_secs_f64() * 10_000.0).round() / 10.0
    }

    /// One JSON line: `t_ms`, `type`, then `fields`.
    fn json(&self, kind: &str, fields: Value) {
        if !self.json {
            return;
        }
        let mut line = serde_json::Map::new();
        line.insert("t_ms".into(), json!(self.t_ms()));
        line.insert("type".into(), json!(kind));
        if let Value::Object(fields) = fields {
            line.extend(fields);
        }
        println!("{}", Value::Object(line));
    }

    /// One timeline line.
    fn line(&self, text: &str) {
        if self.json {
            return;
        }
        let mut speaking = lock(&self.speaking);
        if let Some((_, broken @ false)) = speaking.as_mut() {
            println!();
            *broken = true;
        }
        println!("[{:6.2}s] {text}", self.start.elapsed().as_secs_f64());
    }

    /// A piece of the agent's speech, as the speaker plays it.
    fn spoken(&self, turn: TurnId, piece: &str) {
        if self.json {
            return;
        }
        use std::io::Write as _;
        let mut speaking = lock(&self.speaking);
        let prefix = match *speaking {
            Some((t, false)) if t == turn => None,
            Some((t, true)) if t == turn => Some("AGENT (cont.): "),
            Some((_, false)) => {
                println!();
                Some("AGENT: ")
            }
            _ => Some("AGENT: "),
        };
        if let Some(prefix) = prefix {
            print!("[{:6.2}s] {prefix}", self.start.elapsed().as_secs_f64());
        }
        *speaking = Some((turn, false));
        print!(
            "{}",
            if prefix.is_some() {
                piece.trim_start()
            } else {
                piece
            }
        );
        let _ = std::io::stdout().flush();
    }

    /// Ends the open line of speech.
    fn end_speech(&self, suffix: &str) {
        if self.json {
            return;
        }
        let mut speaking = lock(&self.speaking);
        if let Some((_, false)) = *speaking {
            println!("{suffix}");
        }
        *speaking = None;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// When things happened, for the timeline's latencies: written by the driver
/// (what the user did) and by the bus hooks (synchronous, in the deciding thread).
#[derive(Default)]
struct Marks {
    /// The last STT event sent, and when.
    last_stt: Option<(Instant, SttEvent)>,
    speech_started: Option<Instant>,
    speech_ended: Option<Instant>,
}

/// Pauses and cuts as their hooks saw them: how many, and when the last one ran.
#[derive(Debug, Clone, Copy, Default)]
struct Hooked {
    pauses: u64,
    paused_at: Option<Instant>,
    cuts: u64,
    cut_at: Option<Instant>,
}

// ---------------------------------------------------------------- observer

/// What the observer has seen, for the run's ending rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Seen {
    /// Seq of the last event read.
    seq: u64,
    /// Seq of the last final transcript that will start a turn.
    last_final: u64,
    /// Seq of the last `TurnStarted`.
    last_started: u64,
    /// The last turn started, and whether its generation is still going.
    turn: TurnId,
    open: bool,
}

/// Reads the bus and prints the run; publishes what it saw for the ending rule.
struct Observer {
    out: Arc<Out>,
    marks: Arc<Mutex<Marks>>,
    /// Stamped by hooks that run after the speaker's.
    hooked: watch::Receiver<Hooked>,
    /// Pauses and cuts read from the bus so far.
    pauses: u64,
    cuts: u64,
    seen_tx: watch::Sender<Seen>,
    seen: Seen,
    /// Playback position per turn (for a cut's `heard_chars`).
    heard: HashMap<TurnId, usize>,
    /// Usage per turn, for the timeline.
    turn_usage: HashMap<TurnId, (u64, u64, bool)>,
    /// When the last final transcript arrived, until the reply's first words.
    final_at: Option<Instant>,
    hit: bool,
    backchannel: bool,
    /// The failed turns' messages.
    failures: Vec<String>,
}

impl Observer {
    /// Prints events until `stop` fires, then what is already queued; returns
    /// the failed turns' messages.
    async fn run(mut self, mut rx: BusReceiver, mut stop: oneshot::Receiver<()>) -> Vec<String> {
        loop {
            let received = tokio::select! {
                biased;
                r = rx.recv() => r,
                _ = &mut stop => {
                    while let Ok(Some(ev)) = rx.try_recv() {
                        self.event(ev).await;
                    }
                    return self.failures;
                }
            };
            match received {
                Ok(ev) => self.event(ev).await,
                Err(BusRecvError::Lagged { missed }) => {
                    self.out.line(&format!("(observer missed {missed} events)"))
                }
                Err(_) => return self.failures,
            }
        }
    }

    /// The hooks' view once they have run for `pauses` pauses and `cuts`
    /// cuts (they run right after the event is published, in the thread that
    /// decided; the observer may read the event first).
    async fn hooked(&mut self) -> Option<Hooked> {
        let (pauses, cuts) = (self.pauses, self.cuts);
        let ran = self
            .hooked
            .wait_for(|h| h.pauses >= pauses && h.cuts >= cuts);
        match tokio::time::timeout(Duration::from_millis(500), ran).await {
            Ok(Ok(h)) => Some(*h),
            _ => None,
        }
    }

    async fn event(&mut self, ev: BusEvent) {
        let now = Instant::now();
        let hooked = match ev.kind {
            EventKind::Interrupted { .. } | EventKind::TurnFinished(TurnEnd::Cancelled) => {
                self.cuts += 1;
                self.hooked().await
            }
            EventKind::PlaybackPaused { .. } => {
                self.pauses += 1;
                self.hooked().await
            }
            _ => None,
        };
        let cut_at = hooked.and_then(|h| h.cut_at);
        let out = &*self.out;
        let turn = ev.turn;
        let n = turn.0;
        self.seen.seq = ev.seq;
        match &ev.kind {
            EventKind::UserSpeechStarted => out.line("USER starts speaking…"),
            EventKind::UserSpeechEnded => out.line("USER stops speaking"),
            EventKind::UserTranscript { text, is_final } => {
                out.json("user", json!({"text": &**text, "final": is_final}));
                if *is_final {
                    self.seen.last_final = ev.seq;
                    self.final_at = Some(now);
                    self.hit = false;
                    out.line(&format!("USER: {text}"));
                } else {
                    out.line(&format!("USER (interim): {text}"));
                }
            }
            EventKind::Backchannel { text } => {
                out.json("backchannel", json!({"text": &**text}));
                self.backchannel = true;
                out.line(&format!(
                    "BACKCHANNEL \"{text}\": acknowledged, not a turn — the agent goes on"
                ));
            }
            EventKind::PlaybackPaused { .. } => {
                out.json("paused", json!({}));
                self.backchannel = false;
                let m = lock(&self.marks);
                let after = match (m.speech_started, hooked.and_then(|h| h.paused_at)) {
                    (Some(s), Some(p)) if p >= s => {
                        format!(
                            " {} ms after the user started speaking",
                            (p - s).as_millis()
                        )
                    }
                    _ => String::new(),
                };
                drop(m);
                out.line(&format!(
                    "PAUSED{after}: the speaker holds its place; generation goes on"
                ));
            }
            EventKind::PlaybackResumed { heard_chars } => {
                out.json("resumed", json!({}));
                let ended = lock(&self.marks).speech_ended;
                let why = match (std::mem::take(&mut self.backchannel), ended) {
                    (true, _) => "at once on the backchannel".to_string(),
                    (false, Some(ended)) => format!(
                        "{} ms after the user's sound ended, with no words",
                        now.saturating_duration_since(ended).as_millis()
                    ),
                    _ => "with no words".to_string(),
                };
                out.line(&format!(
                    "RESUMED {why}: from character {heard_chars}, exactly where it stopped (nothing repeated, nothing skipped)"
                ));
            }
            EventKind::TurnStarted => {
                self.seen.last_started = ev.seq;
                self.seen.turn = turn;
                self.seen.open = true;
                out.json("turn_started", json!({"turn": n}));
            }
            EventKind::SpeculationEnded { outcome, usage } => {
                out.json("speculation", json!({"outcome": outcome.label()}));
                if let Some(u) = usage {
                    out.json(
                        "usage",
                        json!({"turn": n, "prompt_tokens": u.prompt_tokens,
                               "completion_tokens": u.completion_tokens, "speculative": true}),
                    );
                }
                let cost = usage.as_ref().map_or(String::new(), |u| {
                    format!(
                        " (its cost: prompt {}, completion {})",
                        u.prompt_tokens, u.completion_tokens
                    )
                });
                match outcome {
                    SpeculationOutcome::Hit => {
                        self.hit = true;
                        out.line(
                            "PREEMPTIVE HIT: the final matches the interim — the reply started on it is released now",
                        );
                    }
                    SpeculationOutcome::Miss => out.line(&format!(
                        "PREEMPTIVE MISS: the final differs from the interim; the speculative request is closed{cost}"
                    )),
                    _ => out.line(&format!(
                        "PREEMPTIVE DROPPED: the user went on talking; the speculative request is closed{cost}"
                    )),
                }
            }
            EventKind::Speakable { text, .. } => {
                out.json("speakable", json!({"turn": n, "text": &**text}));
                if !text.is_empty()
                    && let Some(at) = self.final_at.take()
                {
                    out.line(&format!(
                        "(first words of the reply ready {} ms after the final transcript{})",
                        now.saturating_duration_since(at).as_millis(),
                        if self.hit { ", preemptive hit" } else { "" }
                    ));
                }
            }
            EventKind::SpeechPlayed { chars } => {
                self.heard.insert(turn, *chars);
                out.json("played", json!({"turn": n, "chars": chars}));
            }
            EventKind::ToolCall(c) => {
                out.line(&format!("TOOL CALL {}({}) [{}]", c.name, c.arguments, c.id))
            }
            EventKind::ToolResult(r) => out.line(&format!(
                "TOOL RESULT {} -> {}{}",
                r.name,
                r.output,
                if r.is_error { " (error)" } else { "" }
            )),
            EventKind::Usage(u) => {
                out.json(
                    "usage",
                    json!({"turn": n, "prompt_tokens": u.prompt_tokens,
                           "completion_tokens": u.completion_tokens, "speculative": false}),
                );
                let t = self.turn_usage.entry(turn).or_default();
                t.0 += u.prompt_tokens;
                t.1 += u.completion_tokens;
                t.2 |= u.estimated;
            }
            EventKind::Interrupted { heard_chars } => {
                out.json("cut", json!({"heard_chars": heard_chars}));
                barge_in(
                    out,
                    &self.marks,
                    cut_at,
                    "generation had already finished; the rest of the reply is not spoken",
                );
            }
            EventKind::TurnFinished(end) => {
                if turn == self.seen.turn {
                    self.seen.open = false;
                }
                if *end == TurnEnd::Cancelled {
                    let h = self.heard.get(&turn).copied().unwrap_or(0);
                    out.json("cut", json!({"heard_chars": h}));
                    barge_in(
                        out,
                        &self.marks,
                        cut_at,
                        "generation cancelled mid-stream; the HTTP stream is closed",
                    );
                }
                let (p, c, est) = self.turn_usage.remove(&turn).unwrap_or_default();
                let usage = format!("usage: prompt {p}, completion {c}");
                if let TurnEnd::Failed(text) = end {
                    // A failure, not a cut: its message, and the run fails.
                    let (kind, message) = common::split_failure(text);
                    out.json(
                        "turn_finished",
                        json!({"turn": n, "reason": end.label(), "kind": kind, "message": message}),
                    );
                    out.line(&format!(
                        "turn {turn} generation failed: {message} | {usage}{}",
                        if est {
                            " (estimated: the request failed before the provider reported)"
                        } else {
                            ""
                        }
                    ));
                    self.failures.push(format!("turn {turn} failed: {message}"));
                } else {
                    out.json("turn_finished", json!({"turn": n, "reason": end.label()}));
                    out.line(&format!(
                        "turn {turn} generation ended: {} | {usage}{}",
                        end.label(),
                        if est {
                            " (estimated: cut before the provider reported)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            _ => {}
        }
        self.seen_tx.send_replace(self.seen);
    }
}

fn barge_in(out: &Out, marks: &Mutex<Marks>, cut: Option<Instant>, what: &str) {
    out.end_speech(" [cut off]");
    let m = lock(marks);
    let latency = match (&m.last_stt, cut) {
        (Some((at, event)), Some(cut)) if cut >= *at => {
            let by = match event {
                SttEvent::SpeechStarted => "the user started talking".to_string(),
                SttEvent::Interim(t) | SttEvent::Final(t) => format!("\"{t}\" arrived"),
                _ => "the user's last event".to_string(),
            };
            format!(
                "the speaker went silent {:.0} µs after {by}",
                (cut - *at).as_secs_f64() * 1e6
            )
        }
        _ => "the speaker went silent".to_string(),
    };
    drop(m);
    out.line(&format!("BARGE-IN: {latency} ({what})"));
}

// ---------------------------------------------------------------- the run

/// Plays the user's side of the scenario; returns the seq of the last event
/// published and whether the script ended with `end`.
async fn drive(
    session: SessionHandle,
    events: Vec<(u64, Action)>,
    start: Instant,
    marks: Arc<Mutex<Marks>>,
) -> (u64, bool) {
    let mut last_seq = 0;
    for (at_ms, action) in events {
        tokio::time::sleep_until((start + Duration::from_millis(at_ms)).into()).await;
        let event = match action {
            Action::End => return (last_seq, true),
            Action::Stt(e) => e,
        };
        let now = Instant::now();
        {
            let mut m = lock(&marks);
            match event {
                SttEvent::SpeechStarted => m.speech_started = Some(now),
                SttEvent::SpeechEnded => m.speech_ended = Some(now),
                _ => {}
            }
            m.last_stt = Some((now, event.clone()));
        }
        last_seq = session.stt(event).max(last_seq);
    }
    (last_seq, false)
}

/// Waits until the observer has read the script's last event, no final
/// transcript waits for its turn, and the last turn finished generating and
/// speaking. `false` after the guard.
async fn agent_done(
    mut seen: watch::Receiver<Seen>,
    mut status: watch::Receiver<SpeakerStatus>,
    last_seq: u64,
) -> bool {
    let idle = |s: &Seen, p: &SpeakerStatus| {
        s.seq >= last_seq
            && s.last_final <= s.last_started
            && !s.open
            && p.finished
            && p.turn >= s.turn
    };
    let wait = async {
        loop {
            if idle(&seen.borrow_and_update(), &status.borrow_and_update()) {
                return;
            }
            tokio::select! {
                r = seen.changed() => if r.is_err() { return },
                r = status.changed() => if r.is_err() { return },
            }
        }
    };
    tokio::time::timeout(FINISH_GUARD, wait).await.is_ok()
}

fn print_history(out: &Out, ctx: &ChatContext) {
    if out.json {
        let messages: Vec<Value> = ctx
            .items
            .iter()
            .filter_map(|item| match item {
                ChatItem::Message(m) => Some(json!({
                    "role": m.role.as_str(),
                    "text": m.text_content(),
                    "interrupted": m.interrupted,
                })),
                _ => None,
            })
            .collect();
        out.json("history", json!({ "messages": messages }));
        return;
    }
    println!("\nHistory committed (what the user actually heard):");
    for item in &ctx.items {
        match item {
            ChatItem::Message(m) => println!(
                "  {:<9} {}{}",
                m.role.as_str(),
                m.text_content(),
                if m.interrupted {
                    "  [interrupted: trimmed to what was played]"
                } else {
                    ""
                }
            ),
            ChatItem::FunctionCall(c) => println!("  call      {}({})", c.name, c.arguments),
            ChatItem::FunctionCallOutput(o) => println!(
                "  output    {}{}",
                o.output,
                if o.is_error { " (error)" } else { "" }
            ),
            _ => {}
        }
    }
}

fn weather_tool() -> ToolRegistry {
    ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::new(
                "get_weather",
                "Current weather for a city.",
                json!({"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                       "required": ["city"]}),
            ),
            |args| async move {
                let city = args["city"].as_str().ok_or(ToolError::new("city is required"))?.to_string();
                tokio::time::sleep(Duration::from_millis(300)).await; // a real API call
                Ok(json!({"city": city, "temp_c": 18, "sky": "sunny", "wind": "light, west"}).to_string())
            },
        ))
        .with_timeout(Duration::from_secs(5))
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
    let model = choose_model(&args.provider, args.model).await?;
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
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let mut config = SessionConfig::new(model.client.clone(), settings)
        .with_tools(weather_tool())
        .with_segmenter(SegmenterConfig::default());
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
