//! The agent on the phone and in the browser: a voice server.
//!
//! ```text
//! cargo run --release --all-features --example voice_server             # 127.0.0.1:8080, offline
//! cargo run --release --all-features --example voice_server -- --json   # one JSON object per line
//! cargo run --release --all-features --example voice_server -- --base-url http://127.0.0.1:11434/v1 --model llama3.2
//! ```
//!
//! Serves `GET /` (a page that talks to the agent through the microphone),
//! `/ws` (the page's audio) and `/twilio` (Twilio Media Streams: point a
//! `<Connect><Stream url="wss://…/twilio"/></Connect>` at it). Offline by
//! default: PocketSphinx hears, espeak-ng speaks, the offline demo model
//! answers (scripted replies, 300 ms to the first token); `--base-url` /
//! `--api-key` / `OPENAI_API_KEY` choose a real model as in `voice_agent`;
//! `--stt` / `--tts` (default `auto`: hosted when its key is in the
//! environment — `DEEPGRAM_API_KEY`, `ELEVENLABS_API_KEY` with
//! `ELEVENLABS_VOICE_ID`, `OPENAI_API_KEY` — else offline) choose the speech
//! engines, each hosted one backed by the offline one; the choice is printed
//! on stderr.
//!
//! Who may call (see `access.rs` and docs/audio.md): `/twilio` needs Twilio's
//! signature once the auth token is set (`TWILIO_AUTH_TOKEN_FILE`,
//! `TWILIO_AUTH_TOKEN`); `/ws` the page's call token from the server's own
//! origin; every call is within `--max-calls`, the message size and rate,
//! `--idle-timeout` and `--max-call-duration`. It listens on 127.0.0.1 unless
//! told otherwise.
//! Needs the system packages `espeak-ng`, `libespeak-ng-dev`,
//! `libpocketsphinx-dev` and `pocketsphinx-en-us`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use colloquy::audio::pocketsphinx::PocketSphinxConfig;
use colloquy::llm::LlmOptions;
use colloquy_actors::calls::{CallNotice, CallServices};
use colloquy_actors::turn_taking::{InterruptionMode, InterruptionPolicy};
use colloquy_actors::{AgentSettings, SessionConfig, Supervisor, SupervisorConfig};

mod access;
#[cfg(feature = "nats")]
mod cluster;
#[path = "../common/mod.rs"]
mod common;
#[path = "../voice_agent/model.rs"]
mod model;
#[path = "../common/nats.rs"]
mod nats_flags;
#[path = "../common/otel.rs"]
mod otel;
#[path = "../common/prometheus.rs"]
mod prometheus;
mod report;
#[path = "../common/speech.rs"]
mod speech;

use common::ProviderFlags;
use model::{choose_model, weather_tool};

/// A voice server: phone calls (Twilio Media Streams) and browser calls,
/// heard by PocketSphinx and spoken by espeak-ng.
///
/// The model: as in voice_agent (--base-url, --api-key, Azure flags, the
/// environment), else an offline demo model on 127.0.0.1.
#[derive(clap::Parser, Debug)]
#[command(
    name = "voice_server",
    after_help = "Exit codes: 0 after Ctrl-C; 1 a failure at start (the address is taken, an engine is missing); 2 a usage error."
)]
struct Args {
    /// Where to listen (loopback by default: put a TLS proxy in front, or
    /// listen on 0.0.0.0 with the Twilio auth token set)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// One JSON object per line on stdout: each with `call`, `t_ms` and `type`
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    provider: ProviderFlags,
    /// The model (default: $COLLOQUY_MODEL, else gpt-4o-mini)
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// How the caller's voice interrupts the agent: immediate (cut on speech)
    /// or confirmed (pause on speech, cut on words, resume on silence)
    #[arg(long, value_name = "MODE", default_value = "confirmed")]
    interruptions: String,
    /// espeak-ng's voice for the agent
    #[arg(long, value_name = "VOICE", default_value = "en-us")]
    voice: String,
    #[command(flatten)]
    speech: speech::SpeechFlags,
    #[command(flatten)]
    access: access::AccessFlags,
    /// Serve the metrics for Prometheus at http://ADDR/metrics (port 0: any)
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Place each call's session on the workers behind this NATS server
    /// (examples/worker.rs; needs --features nats): the audio stays here, the
    /// conversation survives a worker's death. The model is the workers'
    /// (--model names one they allow); the provider flags do not apply
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    #[command(flatten)]
    nats_login: nats_flags::NatsFlags,
}

/// What the agent is told on every call.
const INSTRUCTIONS: &str = "You are a friendly voice assistant on a phone call. Answer in one or two short spoken sentences.";

#[tokio::main]
async fn main() -> ExitCode {
    let (args, _) = common::parse::<Args>();
    let mode = match args.interruptions.as_str() {
        "immediate" => InterruptionMode::Immediate,
        "confirmed" => InterruptionMode::Confirmed,
        other => common::usage_error::<Args>(format!(
            "--interruptions must be immediate or confirmed, not {other:?}"
        )),
    };
    match run(args, mode).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => common::fail(e),
    }
}

async fn run(args: Args, mode: InterruptionMode) -> Result<(), Box<dyn std::error::Error>> {
    // First: the recorder must be installed before anything records.
    let metrics = match args.metrics {
        Some(addr) => Some(prometheus::serve(addr).await?),
        None => None,
    };
    let engines = args
        .speech
        .build(&args.voice, PocketSphinxConfig::default())?;
    eprintln!("voice_server: {}", engines.summary);
    let start = Instant::now();
    let printer = report::Printer::new(args.json, start, engines.voice.alignment_is_estimated());
    let on_call = printer.clone();
    if let Some(url) = args.nats.clone() {
        let services = on_cluster(&args, &url, engines.voice.clone(), mode).await?;
        let services = services
            .with_transcriber(engines.ears)
            .on_call(move |notice: CallNotice| on_call.notice(notice));
        let label = format!("the workers' (sessions on the cluster at {url})");
        return serve(&args, services, &printer, &label, metrics).await;
    }
    let model = choose_model(&args.provider, args.model.clone()).await?;
    // Flushed when dropped, after the server stops.
    let otlp = otel::from_env("voice_server")?;
    let traced = otel::Traced::of(otlp.as_ref());
    let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
    let mut settings = AgentSettings::new(LlmOptions::new(model.model.clone()));
    settings.instructions = Some(INSTRUCTIONS.into());
    settings.interruption = InterruptionPolicy {
        mode,
        ..InterruptionPolicy::default()
    };
    let client = model.client.clone();
    let services = CallServices::new(
        supervisor.clone(),
        move |_| {
            traced.apply(
                SessionConfig::new(client.clone(), settings.clone()).with_tools(weather_tool()),
            )
        },
        engines.voice,
    )
    .with_transcriber(engines.ears)
    .on_call(move |notice: CallNotice| on_call.notice(notice));
    serve(&args, services, &printer, &model.label, metrics).await?;
    supervisor.shutdown().await;
    Ok(())
}

/// Calls on the cluster (`--nats`).
#[cfg(feature = "nats")]
async fn on_cluster(
    args: &Args,
    url: &str,
    voice: std::sync::Arc<dyn colloquy::audio::Synthesizer>,
    mode: InterruptionMode,
) -> Result<CallServices, Box<dyn std::error::Error>> {
    cluster::services(
        url,
        &args.nats_login,
        voice,
        mode,
        args.model.clone(),
        INSTRUCTIONS,
    )
    .await
}

#[cfg(not(feature = "nats"))]
async fn on_cluster(
    _args: &Args,
    _url: &str,
    _voice: std::sync::Arc<dyn colloquy::audio::Synthesizer>,
    _mode: InterruptionMode,
) -> Result<CallServices, Box<dyn std::error::Error>> {
    common::usage_error::<Args>(
        "--nats needs the cluster: build with --features nats (or --all-features)",
    )
}

/// Serves the calls until Ctrl-C.
async fn serve(
    args: &Args,
    services: CallServices,
    printer: &report::Printer,
    model: &str,
    metrics: Option<SocketAddr>,
) -> Result<(), Box<dyn std::error::Error>> {
    let (services, who) = args.access.apply(services)?;
    eprintln!("voice_server: {who}");
    if !args.listen.ip().is_loopback() && services.twilio_auth().is_none() {
        eprintln!(
            "voice_server: warning: listening on {} with /twilio unsigned: anyone who reaches it places calls on your accounts (set TWILIO_AUTH_TOKEN_FILE)",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    printer.ready(addr, model, metrics);
    let app = colloquy_actors::calls::router(services);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
