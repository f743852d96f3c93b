//! Load generator: N concurrent sessions through the real supervisor, LLM actors
//! and buses, against any OpenAI-compatible server.
//!
//! ```text
//! # the server in its own process, so only the client side is measured:
//! cargo run --release --example mock_server -- --port 8089 --tokens 60 --gap-ms 20 &
//! cargo run --release --example loadgen -- --base-url http://127.0.0.1:8089/v1 \
//!     --sessions 1000 --turns 3 --cancel-after-tokens 5 --json
//! cargo run --release --example loadgen -- --sessions 0 --idle-sessions 10000 --json
//! # what 1,000 idle sessions cost the cluster's store (nats-server -m 8222):
//! cargo run --release --example loadgen -- --nats nats://127.0.0.1:4222 --sessions 0 \
//!     --idle-sessions 1000 --nats-monitor http://127.0.0.1:8222 --json
//!
//! # a bounded soak with random barge-ins, checking the runtime's invariants:
//! cargo run --release --example loadgen -- --sessions 200 --turns 20 \
//!     --barge-in random --seed 1 --json
//! ```
//!
//! Without `--base-url` an in-process mock server is used (it then shares the CPU).
//! Cancel latency is measured from `cancel()` to a subscriber receiving
//! `TurnFinished(Cancelled)`; stale events are events of a cancelled turn seen
//! after its `TurnFinished` (the turn ledger makes that 0).
//!
//! **Soak** (`--barge-in random`): every turn of every session picks, from a
//! small PRNG seeded by `--seed` and the session number, one of: let it finish
//! (sometimes through a tool round), cancel before the first token, cancel
//! mid-stream after a random number of tokens, cancel during tail speech (the
//! turn finished, a simulated TTS reported `speech_played` for part of its text,
//! then the user barges in), or cancel during a tool round (the message asks for
//! the weather: the server answers with a tool call, and a `get_weather` tool
//! takes a few ms). Turns with tools also work against the `mock_server`
//! example. A second subscriber per session checks the bus invariants, reported
//! under `invariants` and turned into exit code 1 when one is broken:
//!
//! - `stale_events`: events of a turn seen after its `TurnFinished(Cancelled |
//!   Failed)` or `Interrupted` (or, after a normal end, anything but its tail
//!   speech and `Interrupted`); user events are not turn events;
//! - `double_endings`: turns with more than one `TurnFinished`;
//! - `seq_violations`: `seq` not strictly increasing in a session;
//! - `orphan_calls`: tool calls without an output in each session's final
//!   committed context;
//! - `tasks_left`: tokio tasks alive after the shutdown minus before the start;
//! - `buses_open_after_shutdown`: session buses still open (something kept a
//!   session alive) once the supervisor has shut down.
//!
//! `lagged_events` counts events the checking subscribers missed (their checks
//! cover what they saw; the soak uses larger buses so this stays 0).
//!
//! **Provider resilience** (`--fallback-base-url URL`, repeatable, with
//! `--fallback-model`/`--fallback-api-key-file` for the last one named;
//! `--ttft-timeout-ms`, `--gap-timeout-ms`, `--hedge-after-ms`,
//! `--breaker-failures`): the sessions share one client over a provider chain.
//! The summary then also reports `fallbacks` (providers that served after
//! another was dropped), `hedges_won`, `hedge_cost_tokens` (usage of cancelled
//! hedge-race losers), `provider_failures` by reason, and `duplicated_chars`:
//! after each mid-stream failure, the words at the start of the continued text
//! that the turn had already published (a restatement; exact for scripted
//! servers whose words are unique; must be 0). `ttft_ms` runs from the turn's
//! start (`TurnStarted`) to its first token on the bus.
//!
//! ```text
//! cargo run --release --example mock_server -- --port 8089 --ttft-ms 100 --stall-rate 0.3 &
//! cargo run --release --example mock_server -- --port 8090 --ttft-ms 100 &
//! cargo run --release --example loadgen -- --base-url http://127.0.0.1:8089/v1 \
//!     --fallback-base-url http://127.0.0.1:8090/v1 --ttft-timeout-ms 1000 --json
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use colloquy::llm::{BreakerConfig, ChatClient, ClientConfig};

#[path = "../common/mod.rs"]
mod common;
mod driver;
mod invariants;
#[path = "../common/nats.rs"]
mod nats_flags;
mod plan;
mod run;
mod server;
mod stats;
mod totals;

use common::{ChainFlags, Fallback, ProviderFlags};
#[cfg(feature = "nats")]
use stats::{cpu_seconds, latency_json, percentile};

/// Bus capacity of soak sessions: room enough that the checking subscriber never lags.
pub(crate) const SOAK_BUS_CAPACITY: usize = 1024;
/// How long a tool call takes in the soak.
pub(crate) const TOOL_TIME: Duration = Duration::from_millis(5);
/// Bounds every wait of a driver: a hang becomes an error, not a stuck run.
pub(crate) const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the teardown may take before what is left is reported as leaked.
pub(crate) const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Load generator: N concurrent sessions through the real supervisor, LLM
/// actors and buses, against any OpenAI-compatible server, then a JSON summary.
///
/// The server: --base-url (key: --api-key-file or --api-key, none otherwise; the environment is
/// not read), --azure-endpoint or --azure-deployment for Azure OpenAI, else an
/// in-process mock server (paced 40-word answers; it then shares the CPU).
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    after_help = "Exit codes: 0 every turn ran; 1 turns failed (\"errors\", with their causes in \
\"errors_by_kind\" and on stderr) or, in the soak, an invariant was broken; 2 a usage error."
)]
struct Args {
    #[command(flatten)]
    pub(crate) provider: ProviderFlags,
    /// Concurrent sessions driven
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) sessions: usize,
    /// User messages per session
    #[arg(long, value_name = "T", default_value_t = 3)]
    pub(crate) turns: usize,
    /// Cancel each turn after K tokens (0: never)
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub(crate) cancel_after_tokens: usize,
    /// Extra sessions started and left idle
    #[arg(long, value_name = "M", default_value_t = 0)]
    pub(crate) idle_sessions: usize,
    /// random: the soak, each turn finishes or is cut at a random point (before
    /// the first token, mid-stream, during tail speech, during a tool round);
    /// replaces --cancel-after-tokens
    #[arg(long, value_name = "MODE", value_enum, default_value_t = BargeIn::Off)]
    pub(crate) barge_in: BargeIn,
    /// Seed of the soak's choices
    #[arg(long, value_name = "S", default_value_t = 1)]
    pub(crate) seed: u64,
    /// How a barge-in cuts: immediate (cancel() and speech-started cut at
    /// once) or confirmed (speech pauses at onset, then an interim 'wait stop'
    /// cuts; reports pause_latency_us and pause_hook_us)
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Interrupt::Immediate)]
    pub(crate) interrupt: Interrupt,
    #[command(flatten)]
    pub(crate) chain: ChainFlags,
    /// Consecutive failures that open a provider's circuit breaker (default 3;
    /// 0: no breakers); makes a provider chain
    #[arg(long, value_name = "N")]
    pub(crate) breaker_failures: Option<u32>,
    /// The summary on one line
    #[arg(long)]
    pub(crate) json: bool,
    /// Cluster mode: place the sessions on the workers behind this NATS server
    /// (examples/worker.rs; needs --features nats) instead of in-process
    #[arg(long, value_name = "URL")]
    pub(crate) nats: Option<String>,
    #[command(flatten)]
    pub(crate) nats_login: nats_flags::NatsFlags,
    /// Phone calls instead of sessions: simulated phones calling this voice
    /// server's Media Streams endpoint (ws://HOST:PORT/twilio), or `self` for
    /// one in this process (needs --features calls,espeak,pocketsphinx)
    #[arg(long, value_name = "URL")]
    pub(crate) twilio: Option<String>,
    /// Concurrent phone calls (with --twilio)
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub(crate) calls: usize,
    /// With --twilio URL: a file holding the server's Twilio auth token, to
    /// sign each call as Twilio does [env: TWILIO_AUTH_TOKEN_FILE; or the
    /// token in TWILIO_AUTH_TOKEN]
    #[arg(long, value_name = "FILE")]
    pub(crate) twilio_auth_token_file: Option<std::path::PathBuf>,
    /// The URL the calls' signature is over: the server's --public-url and
    /// /twilio (default the --twilio URL with wss://)
    #[arg(long, value_name = "URL")]
    pub(crate) twilio_signed_url: Option<String>,
    /// The recognizer of `--twilio self`: PocketSphinx with its open
    /// dictation model, or with the callers' vocabulary only (a JSGF word
    /// loop over the words of the two lines the phones say: every utterance
    /// still decoded from its audio, about 25 times cheaper)
    #[arg(long, value_name = "R", value_enum, default_value_t = Recognizer::Dictation)]
    pub(crate) recognizer: Recognizer,
    /// PocketSphinx decoders of `--twilio self` (default 4 for dictation, 32
    /// for the vocabulary)
    #[arg(long, value_name = "N")]
    pub(crate) decoders: Option<usize>,
    /// `--twilio self`: take a decoder only once an utterance has ended and
    /// decode it then (no interims; see PocketSphinxConfig::decode_at_end)
    #[arg(long)]
    pub(crate) decode_at_end: bool,
    /// Draw the run's latency distributions (every sample, p50, p90, p99) to
    /// this SVG file
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<std::path::PathBuf>,
    /// Pause between a session's turns (milliseconds)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub(crate) turn_gap_ms: u64,
    /// `--nats`: sessions publish speech and lifecycle only (segmenter on,
    /// `event_classes: ["speech"]`), read as a TTS service would: no token is
    /// encoded or sent
    #[arg(long)]
    pub(crate) speech_only: bool,
    /// `--nats` with `--sessions 0 --idle-sessions N`: the NATS server's
    /// monitoring endpoint (`nats-server -m 8222`: http://127.0.0.1:8222);
    /// reports the key-value writes and JetStream API requests per second
    /// while the N sessions idle (examples/loadgen/idle.rs)
    #[arg(long, value_name = "URL")]
    pub(crate) nats_monitor: Option<String>,
    /// With --nats-monitor: seconds between placing the idle sessions and
    /// the first reading
    #[arg(long, value_name = "S", default_value_t = 5)]
    pub(crate) idle_settle_secs: u64,
    /// With --nats-monitor: seconds between the two readings
    #[arg(long, value_name = "S", default_value_t = 20)]
    pub(crate) idle_secs: u64,
}

/// `--recognizer`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Recognizer {
    /// en-us.lm.bin and the full dictionary.
    Dictation,
    /// The callers' words only.
    Vocabulary,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BargeIn {
    Off,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Interrupt {
    Immediate,
    Confirmed,
}

impl Args {
    pub(crate) fn random_barge_in(&self) -> bool {
        self.barge_in == BargeIn::Random
    }

    pub(crate) fn chain_enabled(&self) -> bool {
        self.chain.enabled() || self.breaker_failures.is_some()
    }

    /// One client over the chain: `primary` first, then the fallbacks.
    pub(crate) fn chain_client(
        &self,
        primary: colloquy::llm::Provider,
        fallbacks: &[Fallback],
        config: ClientConfig,
    ) -> Result<ChatClient, colloquy::llm::LlmError> {
        let mut chain = self.chain.chain(primary, fallbacks, config);
        match self.breaker_failures {
            Some(0) => chain = chain.without_breaker(),
            Some(n) => {
                chain = chain.with_breaker(BreakerConfig {
                    failure_threshold: n,
                    ..BreakerConfig::default()
                })
            }
            None => {}
        }
        ChatClient::with_chain(chain)
    }
}

#[cfg(feature = "nats")]
mod cluster;
#[cfg(feature = "nats")]
mod idle;
mod plot;

/// Cluster mode (`--nats`).
#[cfg(feature = "nats")]
async fn run_cluster(nats: String, a: &Args) -> ExitCode {
    let login = match a.nats_login.options() {
        Ok(login) => login,
        Err(e) => return common::fail(e),
    };
    if let Some(monitor) = a.nats_monitor.clone() {
        let run = idle::run(idle::IdleArgs {
            nats,
            login,
            sessions: a.idle_sessions,
            monitor,
            settle_secs: a.idle_settle_secs,
            window_secs: a.idle_secs,
            json: a.json,
        });
        return match run.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => common::fail(e),
        };
    }
    let run = cluster::run(cluster::ClusterArgs {
        nats,
        login,
        sessions: a.sessions,
        turns: a.turns,
        cancel_after_tokens: a.cancel_after_tokens,
        turn_gap_ms: a.turn_gap_ms,
        speech_only: a.speech_only,
        json: a.json,
    });
    match run.await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => common::fail("a committed turn was lost or a stale event seen"),
        Err(e) => common::fail(e),
    }
}

#[cfg(not(feature = "nats"))]
async fn run_cluster(_nats: String, _a: &Args) -> ExitCode {
    common::usage_error::<Args>(
        "--nats needs the cluster: build with --features nats (or --all-features)",
    )
}

#[cfg(all(feature = "calls", feature = "espeak", feature = "pocketsphinx"))]
mod twilio;

/// Phone calls (`--twilio`).
#[cfg(all(feature = "calls", feature = "espeak", feature = "pocketsphinx"))]
async fn run_twilio(url: String, a: &Args) -> ExitCode {
    let mode = match a.interrupt {
        Interrupt::Immediate => colloquy_actors::turn_taking::InterruptionMode::Immediate,
        Interrupt::Confirmed => colloquy_actors::turn_taking::InterruptionMode::Confirmed,
    };
    let token = match a.twilio_auth_token_file.clone().or_else(|| {
        std::env::var("TWILIO_AUTH_TOKEN_FILE")
            .ok()
            .filter(|v| !v.is_empty())
            .map(Into::into)
    }) {
        Some(path) => match colloquy::Secret::from_file(&path) {
            Ok(t) => Some(t),
            Err(e) => return common::fail(e),
        },
        None => colloquy::Secret::from_env("TWILIO_AUTH_TOKEN"),
    };
    let signing = token.map(|t| {
        let signed = a
            .twilio_signed_url
            .clone()
            .unwrap_or_else(|| url.replacen("ws://", "wss://", 1));
        (t, signed)
    });
    match twilio::run(
        url,
        signing,
        a.calls,
        mode,
        twilio::Ears {
            recognizer: a.recognizer,
            decoders: a.decoders,
            decode_at_end: a.decode_at_end,
        },
    )
    .await
    {
        Ok(summary) => {
            if a.json {
                println!("{summary}");
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&summary).unwrap_or_default()
                );
            }
            if summary["errors"].as_u64() == Some(0) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => common::fail(e),
    }
}

#[cfg(not(all(feature = "calls", feature = "espeak", feature = "pocketsphinx")))]
async fn run_twilio(_url: String, _a: &Args) -> ExitCode {
    common::usage_error::<Args>(
        "--twilio needs the calls and the engines: build with --features calls,espeak,pocketsphinx (or --all-features)",
    )
}

#[tokio::main]
async fn main() -> ExitCode {
    driver::epoch();
    let (args, matches) = common::parse::<Args>();
    let picture = args.plot.clone();
    let code = if let Some(url) = args.twilio.clone() {
        run_twilio(url, &args).await
    } else if let Some(url) = args.nats.clone() {
        run_cluster(url, &args).await
    } else {
        let fallbacks = args.chain.fallbacks::<Args>(&matches);
        match run::run(args, fallbacks).await {
            Ok(code) => code,
            Err(e) => return common::fail(e),
        }
    };
    if let Some(path) = picture
        && let Err(e) = plot::write(&path, "loadgen: latency distributions (log scale)")
    {
        return common::fail(format!("--plot {}: {e}", path.display()));
    }
    code
}
