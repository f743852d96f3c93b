//! A cluster worker: takes sessions from NATS while it has room, resumes the
//! sessions of workers that died, hands its own over on SIGTERM.
//!
//! ```text
//! nats-server -js -a 127.0.0.1 -p 4222 -sd /tmp/nats &
//! cargo run --release --all-features --example worker -- \
//!     --nats nats://127.0.0.1:4222 --name w1 --max-sessions 500 \
//!     --base-url http://127.0.0.1:8089/v1 --model demo
//! ```
//!
//! A server that asks for a login gets one from files or the environment,
//! never from the command line: `--nats-user worker --nats-password-file
//! FILE` (or `NATS_USER`, `NATS_PASSWORD`), `--nats-nkey-file`,
//! `--nats-token-file`, `--nats-creds`; TLS with `--nats-ca`, `--nats-cert`,
//! `--nats-key`, `--nats-tls-required` (see docs/cluster.md, "Authentication
//! and TLS"). Refused credentials exit 1 at once with an error naming
//! authorization.
//!
//! It prints one line containing `ready` once it takes sessions, and one line
//! when it stops. SIGTERM or Ctrl-C drains it: no new sessions, turns in flight
//! finish (up to `--drain-timeout-ms`), then each session's record is released
//! so another worker takes it over at once. It registers one demo tool,
//! `get_weather`, that specs may name.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use colloquy::Secret;
use colloquy::llm::{AzureConfig, AzureSettings, ChatClient, ClientConfig, OpenAiConfig, Provider};
use colloquy::tools::ToolDefinition;
use colloquy_actors::cluster::{Worker, WorkerConfig, connect_with, redact_url};
use colloquy_actors::{Tool, ToolRegistry};
use serde_json::json;

#[path = "common/key_file.rs"]
mod key_file;
#[path = "common/nats.rs"]
mod nats_flags;
#[path = "common/otel.rs"]
mod otel;
#[path = "common/policy_flags.rs"]
mod policy_flags;
#[path = "common/prometheus.rs"]
mod prometheus;

/// A colloquy cluster worker: takes sessions from NATS while it has room,
/// resumes the sessions of workers that died, hands its own over on SIGTERM
/// or Ctrl-C.
///
/// The model provider is an OpenAI-compatible server (--base-url), Azure
/// OpenAI (--azure-endpoint, --azure-deployment), or OpenAI with
/// OPENAI_API_KEY.
#[derive(Parser)]
#[command(name = "worker")]
struct Args {
    /// The NATS server (scheme://host:port; a comma-separated list for a cluster).
    #[arg(long, value_name = "URL", default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The worker's name, in events, heartbeats, records and logs [default: worker-PID].
    #[arg(long)]
    name: Option<String>,
    /// Sessions at most; a full worker takes no more.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    max_sessions: u64,
    /// An OpenAI-compatible server, e.g. http://127.0.0.1:8089/v1.
    #[arg(long, value_name = "URL")]
    base_url: Option<String>,
    /// The model of sessions whose spec names none.
    #[arg(long, value_name = "M", default_value = "gpt-4o-mini")]
    model: String,
    /// The provider's key [default: OPENAI_API_KEY, or AZURE_OPENAI_API_KEY
    /// for Azure, from the environment]. Visible to every user of the
    /// machine in `ps`: prefer --api-key-file or the environment.
    #[arg(long, value_name = "K", hide_default_value = true)]
    api_key: Option<String>,
    /// A file holding the provider's key (read once, whitespace trimmed).
    #[arg(long, value_name = "PATH", conflicts_with = "api_key")]
    api_key_file: Option<std::path::PathBuf>,
    /// A file holding the cluster's state key: checkpoints are tagged
    /// (HMAC-SHA256) and only those that verify are resumed; give every
    /// worker the same key [default: COLLOQUY_STATE_KEY from the
    /// environment, else none].
    #[arg(long, value_name = "PATH")]
    state_key_file: Option<std::path::PathBuf>,
    /// With a state key: resume checkpoints that carry no tag (written
    /// before the key was configured) and seal them with the key, for a
    /// rolling upgrade that adds the key; drop it once every worker has it.
    #[arg(long)]
    accept_unsigned_checkpoints: bool,
    /// Azure OpenAI: the resource endpoint.
    #[arg(long, value_name = "URL")]
    azure_endpoint: Option<String>,
    /// Azure OpenAI: the deployment.
    #[arg(long, value_name = "D")]
    azure_deployment: Option<String>,
    /// Azure OpenAI: the API version.
    #[arg(long, value_name = "V")]
    api_version: Option<String>,
    /// Prefix of the cluster's subjects and buckets (letters, digits, - and _).
    #[arg(long, value_name = "P", default_value = "colloquy")]
    prefix: String,
    /// A worker whose heartbeat is not renewed for this long (milliseconds)
    /// is fenced, and its sessions are taken over by another worker.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    lease_ms: u64,
    /// How long a drain lets turns in flight finish (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,
    #[command(flatten)]
    login: nats_flags::NatsFlags,
    /// Serve the metrics for Prometheus at http://ADDR/metrics (port 0: any).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    #[command(flatten)]
    policy: policy_flags::PolicyFlags,
}

fn provider(a: &Args) -> Result<Provider, Box<dyn std::error::Error>> {
    let key = match &a.api_key_file {
        Some(path) => Some(key_file::read_key_file(path)?),
        None => a.api_key.clone().map(Secret::new),
    };
    if a.azure_endpoint.is_some() || a.azure_deployment.is_some() {
        let cfg = AzureConfig::resolve(
            &a.model,
            AzureSettings {
                endpoint: a.azure_endpoint.clone(),
                deployment: a.azure_deployment.clone(),
                api_version: a.api_version.clone(),
                api_key: key,
                ..Default::default()
            },
        )?;
        return Ok(cfg.into());
    }
    let cfg = match (&a.base_url, key) {
        (Some(url), key) => {
            let mut c = OpenAiConfig::compatible(url.clone());
            c.api_key = key.or_else(|| Secret::from_env("OPENAI_API_KEY"));
            c
        }
        (None, Some(key)) => OpenAiConfig::new(key),
        (None, None) => OpenAiConfig::from_env()?,
    };
    Ok(cfg.into())
}

fn weather_tool() -> Tool {
    let definition = ToolDefinition::new(
        "get_weather",
        "Current weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    );
    Tool::new(definition, |args| async move {
        Ok(json!({"city": args["city"], "temp_c": 18, "sky": "sunny"}).to_string())
    })
}

async fn run(a: Args) -> Result<(), Box<dyn std::error::Error>> {
    let name = a
        .name
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let max_sessions = usize::try_from(a.max_sessions).unwrap_or(usize::MAX);
    // Warnings (a lease lost, a store that fails) on stderr; RUST_LOG for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(addr) = a.metrics {
        let bound = prometheus::serve(addr).await?;
        println!("metrics: http://{bound}/metrics");
    }
    let client_config = ClientConfig {
        pool_max_idle_per_host: max_sessions.max(16),
        ..ClientConfig::default()
    };
    let client = ChatClient::with_config(provider(&a)?, client_config)?;
    let nats = connect_with(&a.nats, &name, &a.login.options()?).await?;
    let mut config = WorkerConfig::new(name.clone(), client)
        .with_max_sessions(max_sessions)
        .with_default_model(a.model.clone())
        .with_prefix(a.prefix.clone())
        .with_lease_ttl(Duration::from_millis(a.lease_ms))
        .with_drain_timeout(Duration::from_millis(a.drain_timeout_ms))
        .with_policy(a.policy.policy());
    config.tools = ToolRegistry::new().with_tool(weather_tool());
    let state_key = match &a.state_key_file {
        Some(path) => Some(
            Secret::from_file(path)
                .map_err(|e| format!("cannot read the state key file {}: {e}", path.display()))?,
        ),
        None => Secret::from_env("COLLOQUY_STATE_KEY"),
    };
    if let Some(key) = state_key {
        config = config
            .with_state_key(key)
            .accept_unsigned_checkpoints(a.accept_unsigned_checkpoints);
    }
    // Flushed when dropped, after the drain.
    let otlp = otel::from_env("worker")?;
    #[cfg(feature = "otlp")]
    if let Some(otlp) = &otlp {
        config = config.with_tracing(otlp.tracing());
    }
    let worker = Worker::start(nats, config).await?;
    println!(
        "worker {name} ready: up to {max_sessions} sessions, nats {}, model {}",
        redact_url(&a.nats),
        a.model
    );
    let report = worker.drain_on_signal().await?;
    println!(
        "worker {name} drained: {} sessions handed over ({} cut at the timeout, {} failed)",
        report.handed_over, report.cut_at_timeout, report.failed
    );
    worker.abort().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    // Usage errors: clap's `error: …` and usage on stderr, exit 2; --help on
    // stdout, exit 0.
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
