//! The main job: a whole voice-agent conversation through the real runtime.
//!
//! ```text
//! cargo run --release --example voice_agent                    # offline demo model
//! OPENAI_API_KEY=sk-… cargo run --release --example voice_agent
//! cargo run --release --example voice_agent -- --base-url http://127.0.0.1:11434/v1 --model llama3.2
//! ```
//!
//! Wired exactly as an embedder would: a [`Supervisor`] starts the session with
//! its LLM actor, a tool executor (one `get_weather` tool) and a segmenter. A
//! scripted STT stands in for speech recognition (it publishes transcripts and,
//! once, interrupts the agent mid-reply); a console TTS "plays" segments at
//! speaking pace and reports playback progress. The timeline shows what the user
//! said, what the agent said and was heard, tool calls, the barge-in with its
//! measured latency, the history committed as heard, and usage per turn.

use std::sync::Arc;
use std::time::{Duration, Instant};

use colloquy::Secret;
use colloquy::context::{ChatItem, Role};
use colloquy::llm::{
    AzureConfig, AzureSettings, ChatClient, ClientConfig, LlmOptions, OpenAiConfig, Provider,
};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusReceiver, EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, SegmenterConfig, SessionConfig, SessionHandle, Supervisor,
    SupervisorConfig, Tool, ToolError, ToolRegistry, TurnId,
};
use serde_json::json;
use tokio::sync::watch;

const SPEAKING_CHARS_PER_SEC: f64 = 16.0;

fn elapsed(start: Instant) -> String {
    format!("[{:6.2}s]", start.elapsed().as_secs_f64())
}

/// Keeps the agent's spoken words and the timeline's event lines apart.
struct Console {
    start: Instant,
    /// 0: no speech; 1: a line of spoken words is open; 2: speech paused by an event line.
    speaking: std::sync::Mutex<u8>,
}

impl Console {
    /// Prints an event on its own line.
    fn event(&self, text: &str) {
        let mut speaking = self.speaking.lock().unwrap();
        if *speaking == 1 {
            println!();
            *speaking = 2;
        }
        println!("{} {text}", elapsed(self.start));
        flush();
    }

    /// Prints a spoken word, opening (or reopening) the line if needed.
    fn word(&self, w: &str) {
        let mut speaking = self.speaking.lock().unwrap();
        match *speaking {
            0 => print!("{} AGENT: ", elapsed(self.start)),
            2 => print!("{} AGENT (cont.): ", elapsed(self.start)),
            _ => {}
        }
        *speaking = 1;
        print!("{w}");
        flush();
    }

    /// Ends the spoken line.
    fn end_speech(&self, suffix: &str) {
        let mut speaking = self.speaking.lock().unwrap();
        if *speaking == 1 {
            println!("{suffix}");
        } else if *speaking == 2 && !suffix.is_empty() {
            println!("{} AGENT{suffix}", elapsed(self.start));
        }
        *speaking = 0;
    }
}

fn flush() {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

// ---------------------------------------------------------------- the model

/// A local OpenAI-compatible server with scripted, paced replies and a tool call.
async fn offline_demo_model() -> std::io::Result<MockServer> {
    fn paced(text: &str, gap: Duration) -> MockResponse {
        let mut r = MockResponse::event_stream().event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ));
        for word in text.split_inclusive(' ') {
            r = r
                .delay(gap)
                .event(&sse_chunk(json!({"content": word}), None));
        }
        r
    }
    let gap = Duration::from_millis(45);
    MockServer::start(move |req| {
        let last = req.last_message();
        let said = last["content"].as_str().unwrap_or("").to_lowercase();
        if last["role"] == "tool" {
            return paced(
                "It's 18 degrees and sunny in Paris right now, with a light breeze from the west. \
                 It's a perfect afternoon for a walk along the Seine, and the evening should stay dry \
                 and mild until well after sunset.",
                gap,
            )
            .finish("stop", 160, 48);
        }
        if said.contains("weather") {
            let call = json!({"tool_calls": [{"index": 0, "id": "call_weather_1", "type": "function",
                "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]});
            return paced("Let me check the weather in Paris. ", gap)
                .event(&sse_chunk(call, None))
                .finish("tool_calls", 120, 18);
        }
        if said.contains("tomorrow") {
            // A slow reply (a model thinking aloud): still generating when the
            // user cuts in, so the barge-in closes the HTTP stream mid-answer.
            return paced(
                "Tomorrow will be cloudier, around 15 degrees. Light rain should arrive in the \
                 afternoon and last into the evening, so take an umbrella if you're heading out later.",
                Duration::from_millis(450),
            )
            .finish("stop", 230, 34);
        }
        if said.contains("bye") {
            return paced("Goodbye, have a lovely day!", gap).finish("stop", 260, 7);
        }
        paced("You're welcome! Is there anything else I can do for you?", gap).finish("stop", 250, 13)
    })
    .await
}

struct Model {
    client: ChatClient,
    model: String,
    label: String,
    demo: Option<MockServer>,
}

const USAGE: &str = "usage: voice_agent [--base-url URL] [--model M]
       voice_agent -h | --help
  --base-url URL  an OpenAI-compatible server (key from OPENAI_API_KEY, if set)
  --model M       the model (default: $COLLOQUY_MODEL, else gpt-4o-mini)
Without --base-url: OpenAI when OPENAI_API_KEY is set, Azure OpenAI when
AZURE_OPENAI_ENDPOINT is set, else an offline demo model on 127.0.0.1.";

#[derive(Default)]
struct Args {
    base_url: Option<String>,
    model: Option<String>,
}

/// What the command line asks for.
enum Cli {
    Run(Args),
    Help,
}

fn parse_args() -> Result<Cli, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--base-url" => a.base_url = Some(value()?),
            "--model" => a.model = Some(value()?),
            "-h" | "--help" => return Ok(Cli::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Cli::Run(a))
}

async fn choose_model(args: Args) -> Result<Model, Box<dyn std::error::Error>> {
    let config = ClientConfig {
        first_token_timeout: Some(Duration::from_secs(15)),
        ..ClientConfig::default()
    };
    let model = args
        .model
        .or_else(|| std::env::var("COLLOQUY_MODEL").ok())
        .unwrap_or_else(|| "gpt-4o-mini".into());
    let provider: Option<(Provider, String)> = if let Some(url) = args.base_url {
        let mut c = OpenAiConfig::compatible(url.clone());
        c.api_key = Secret::from_env("OPENAI_API_KEY");
        Some((c.into(), format!("{model} at {url}")))
    } else if std::env::var("OPENAI_API_KEY").is_ok() {
        Some((OpenAiConfig::from_env()?.into(), format!("OpenAI {model}")))
    } else if std::env::var("AZURE_OPENAI_ENDPOINT").is_ok() {
        let c = AzureConfig::resolve(&model, AzureSettings::default())?;
        let label = format!("Azure OpenAI deployment {}", c.deployment);
        Some((c.into(), label))
    } else {
        None
    };
    Ok(match provider {
        Some((p, label)) => Model {
            client: ChatClient::with_config(p, config)?,
            model,
            label,
            demo: None,
        },
        None => {
            let server = offline_demo_model().await?;
            let client =
                ChatClient::with_config(OpenAiConfig::compatible(server.base_url()), config)?;
            Model {
                client,
                model: "offline-demo".into(),
                label: format!(
                    "OFFLINE DEMO MODEL (scripted replies from a local server at {})",
                    server.base_url()
                ),
                demo: Some(server),
            }
        }
    })
}

// ---------------------------------------------------------------- speech

/// What the scripted STT waits for before the user's next utterance.
enum Cue {
    /// Right away.
    Now,
    /// The agent has finished speaking, then this much silence.
    AgentDone(Duration),
    /// The agent has been speaking (heard) for this long: the user talks over it.
    AgentSpeakingFor(Duration),
}

/// Playback state shared by the TTS with the STT script and the timeline.
#[derive(Clone, Debug, Default, PartialEq)]
struct Playback {
    speaking_since: Option<Instant>,
    idle_turns: u64,
}

/// Console TTS: plays the turn's segments at speaking pace, word by word,
/// reporting progress, and goes silent the moment a turn is cancelled.
async fn tts(
    session: SessionHandle,
    mut rx: BusReceiver,
    console: Arc<Console>,
    state: watch::Sender<Playback>,
    barge_in_at: watch::Receiver<Option<Instant>>,
) {
    let mut queue: std::collections::VecDeque<(TurnId, Arc<str>)> = Default::default();
    let mut turn = TurnId(0);
    let mut played = 0usize;
    let mut finished = false;
    // When the word being spoken ends; events do not delay it.
    let mut word_due: Option<tokio::time::Instant> = None;
    loop {
        // Play one word, unless an event needs handling first.
        let word = queue.front().map(|(t, s)| {
            let n = s
                .char_indices()
                .skip(1)
                .find(|(_, c)| *c == ' ')
                .map_or(s.len(), |(i, _)| i);
            (*t, n)
        });
        let event = match word {
            Some((t, n)) => {
                let due = *word_due.get_or_insert_with(|| {
                    tokio::time::Instant::now()
                        + Duration::from_secs_f64(n as f64 / SPEAKING_CHARS_PER_SEC)
                });
                tokio::select! {
                    biased;
                    ev = rx.recv() => Some(ev),
                    _ = tokio::time::sleep_until(due) => {
                        word_due = None;
                        if let Some((_, seg)) = queue.pop_front() {
                            let (w, rest) = seg.split_at(n);
                            console.word(w);
                            played += w.chars().count();
                            let _ = session.speech_played(t, played);
                            if !rest.is_empty() {
                                queue.push_front((t, Arc::from(rest)));
                            }
                        }
                        None
                    }
                }
            }
            None => {
                if finished {
                    finished = false;
                    console.end_speech("");
                    state.send_modify(|p| {
                        p.speaking_since = None;
                        p.idle_turns += 1;
                    });
                }
                Some(rx.recv().await)
            }
        };
        let Some(event) = event else { continue };
        let Ok(ev) = event else { continue };
        match ev.kind {
            EventKind::TurnStarted => {
                turn = ev.turn;
                played = 0;
                finished = false;
            }
            EventKind::Speakable { text, last } if ev.turn == turn => {
                if state.borrow().speaking_since.is_none() && !text.is_empty() {
                    state.send_modify(|p| p.speaking_since = Some(Instant::now()));
                }
                if !text.is_empty() {
                    queue.push_back((ev.turn, text));
                }
                finished = last;
            }
            EventKind::TurnFinished(TurnEnd::Cancelled) | EventKind::Interrupted { .. }
                if ev.turn == turn =>
            {
                let latency = barge_in_at.borrow().map(|t| t.elapsed());
                queue.clear();
                word_due = None;
                console.end_speech(" [cut off]");
                let what = if matches!(ev.kind, EventKind::Interrupted { .. }) {
                    "generation had already finished; the rest of the reply is not spoken"
                } else {
                    "generation cancelled mid-stream; the HTTP stream is closed"
                };
                if let Some(l) = latency {
                    console.event(&format!(
                        "BARGE-IN: the speaker went silent {:.0} µs after the user started talking ({what})",
                        l.as_secs_f64() * 1e6
                    ));
                }
                state.send_modify(|p| {
                    p.speaking_since = None;
                    p.idle_turns += 1;
                });
            }
            _ => {}
        }
    }
}

/// Scripted STT: publishes what the user says, when the cue says so.
async fn stt(
    session: SessionHandle,
    script: Vec<(Cue, &'static str)>,
    console: Arc<Console>,
    mut playback: watch::Receiver<Playback>,
    barge_in_at: watch::Sender<Option<Instant>>,
) {
    for (cue, text) in script {
        match cue {
            Cue::Now => {}
            Cue::AgentDone(pause) => {
                let seen = playback.borrow().idle_turns;
                let _ = playback.wait_for(|p| p.idle_turns > seen).await;
                tokio::time::sleep(pause).await;
            }
            Cue::AgentSpeakingFor(d) => {
                let since = playback
                    .wait_for(|p| p.speaking_since.is_some())
                    .await
                    .ok()
                    .and_then(|p| p.speaking_since);
                if let Some(since) = since {
                    tokio::time::sleep_until((since + d).into()).await;
                }
                console.event("USER starts talking over the agent…");
                barge_in_at.send_replace(Some(Instant::now()));
                session.user_speech_started();
                // The rest of the utterance takes a moment to say.
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
        }
        console.event(&format!("USER: {text}"));
        session.user_transcript(text, true);
    }
    let seen = playback.borrow().idle_turns;
    let _ = playback.wait_for(|p| p.idle_turns > seen).await;
}

/// Prints tool calls, results, turn ends and usage as they happen.
async fn timeline(mut rx: BusReceiver, console: Arc<Console>) {
    let mut turn_usage = (0u64, 0u64, false);
    while let Ok(ev) = rx.recv().await {
        match ev.kind {
            EventKind::ToolCall(c) => {
                console.event(&format!("TOOL CALL {}({}) [{}]", c.name, c.arguments, c.id))
            }
            EventKind::ToolResult(r) => console.event(&format!(
                "TOOL RESULT {} -> {}{}",
                r.name,
                r.output,
                if r.is_error { " (error)" } else { "" }
            )),
            EventKind::Usage(u) => {
                turn_usage.0 += u.prompt_tokens;
                turn_usage.1 += u.completion_tokens;
                turn_usage.2 |= u.estimated;
            }
            EventKind::TurnFinished(end) => {
                let (p, c, est) = std::mem::take(&mut turn_usage);
                console.event(&format!(
                    "turn {} generation ended: {} | usage: prompt {p}, completion {c}{}",
                    ev.turn,
                    end.label(),
                    if est {
                        " (estimated: cut before the provider reported)"
                    } else {
                        ""
                    }
                ));
            }
            _ => {}
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(Cli::Run(a)) => a,
        Ok(Cli::Help) => {
            println!("{USAGE}");
            return Ok(());
        }
        Err(msg) => {
            eprintln!("error: {msg}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let model = choose_model(args).await?;
    println!("colloquy voice agent — model: {}", model.label);
    println!("(console TTS plays at {SPEAKING_CHARS_PER_SEC} characters per second)\n");

    let tools = ToolRegistry::new()
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
        .with_timeout(Duration::from_secs(5));
    let mut options = LlmOptions::new(model.model.clone());
    options.max_completion_tokens = Some(300);
    let mut settings = AgentSettings::new(options).with_instructions(
        "You are a friendly voice assistant. Answer in two or three spoken sentences, no lists or markdown. \
         Use get_weather for weather questions.",
    );
    settings.interruption = InterruptionPolicy::immediate();
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let session = supervisor
        .start_session(
            "demo-call",
            SessionConfig::new(model.client.clone(), settings)
                .with_tools(tools)
                .with_segmenter(SegmenterConfig::default()),
        )
        .await?;

    let start = Instant::now();
    let console = Arc::new(Console {
        start,
        speaking: std::sync::Mutex::new(0),
    });
    let (playback_tx, playback_rx) = watch::channel(Playback::default());
    let (barge_tx, barge_rx) = watch::channel(None);
    let tts_task = tokio::spawn(tts(
        session.clone(),
        session.subscribe(),
        console.clone(),
        playback_tx,
        barge_rx,
    ));
    let timeline_task = tokio::spawn(timeline(session.subscribe(), console.clone()));
    let mut disconnects = model.demo.as_ref().map(|s| s.disconnects());

    let script = vec![
        (Cue::Now, "Hi! What's the weather like in Paris right now?"),
        (
            Cue::AgentSpeakingFor(Duration::from_millis(4500)),
            "Sorry, actually — what about tomorrow?",
        ),
        (
            Cue::AgentSpeakingFor(Duration::from_millis(2500)),
            "Got it, thanks!",
        ),
        (
            Cue::AgentDone(Duration::from_millis(400)),
            "No, that's all. Bye!",
        ),
    ];
    let conversation = tokio::spawn(stt(
        session.clone(),
        script,
        console.clone(),
        playback_rx.clone(),
        barge_tx,
    ));
    let finished = tokio::time::timeout(Duration::from_secs(55), conversation).await;
    if finished.is_err() {
        println!("\n(the conversation did not finish within 55 s; stopping)");
    }
    if let Some(d) = disconnects.as_mut() {
        println!(
            "\ndemo server: {} streamed response(s) closed by the client before the end (mid-stream barge-ins)",
            *d.borrow_and_update()
        );
    }

    let ctx = session.context().await?;
    println!("\nHistory committed (what the user actually heard):");
    for item in &ctx.items {
        match item {
            ChatItem::Message(m) => println!(
                "  {:<9} {}{}",
                format!("{:?}", m.role).to_lowercase(),
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
    let assistant_turns = ctx.messages().filter(|m| m.role == Role::Assistant).count();
    println!(
        "\n{assistant_turns} assistant message(s); conversation took {:.1} s",
        start.elapsed().as_secs_f64()
    );
    tts_task.abort();
    timeline_task.abort();
    supervisor.shutdown().await;
    Ok(())
}
