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
//! It prints one line containing `ready` once it takes sessions, and one line
//! when it stops. SIGTERM or Ctrl-C drains it: no new sessions, turns in flight
//! finish (up to `--drain-timeout-ms`), then each session's lease is released
//! so another worker takes it over at once. It registers one demo tool,
//! `get_weather`, that specs may name.

use std::process::ExitCode;
use std::time::Duration;

use colloquy::Secret;
use colloquy::llm::{AzureConfig, AzureSettings, ChatClient, ClientConfig, OpenAiConfig, Provider};
use colloquy::tools::ToolDefinition;
use colloquy_actors::cluster::{Worker, WorkerConfig, connect};
use colloquy_actors::{Tool, ToolRegistry};
use serde_json::json;

const USAGE: &str = "usage: worker [--nats URL] [--name NAME] [--max-sessions N] \
[--base-url URL] [--model M] [--api-key K] [--azure-endpoint URL] [--azure-deployment D] \
[--api-version V] [--prefix P] [--lease-ms MS] [--drain-timeout-ms MS]
       worker -h | --help
  --nats URL             the NATS server (default nats://127.0.0.1:4222)
  --name NAME            the worker's name (default worker-PID)
  --max-sessions N       sessions at most; a full worker takes no more (default 100)
  --base-url URL         an OpenAI-compatible server (else OPENAI_API_KEY, or Azure)
  --model M              the model of sessions whose spec names none (default gpt-4o-mini)
  --api-key K            the provider's key (else OPENAI_API_KEY)
  --azure-endpoint URL, --azure-deployment D, --api-version V   Azure OpenAI
  --prefix P             prefix of the cluster's subjects and buckets (default colloquy)
  --lease-ms MS          a lease not renewed for this long is taken over (default 1000)
  --drain-timeout-ms MS  how long a drain lets turns finish (default 10000)";

struct Args {
    nats: String,
    name: String,
    max_sessions: usize,
    base_url: Option<String>,
    model: String,
    api_key: Option<String>,
    azure_endpoint: Option<String>,
    azure_deployment: Option<String>,
    api_version: Option<String>,
    prefix: String,
    lease_ms: u64,
    drain_timeout_ms: u64,
}

enum Cli {
    Run(Box<Args>),
    Help,
}

fn parse_args() -> Result<Cli, String> {
    let mut a = Args {
        nats: "nats://127.0.0.1:4222".into(),
        name: format!("worker-{}", std::process::id()),
        max_sessions: 100,
        base_url: None,
        model: "gpt-4o-mini".into(),
        api_key: None,
        azure_endpoint: None,
        azure_deployment: None,
        api_version: None,
        prefix: "colloquy".into(),
        lease_ms: 1000,
        drain_timeout_ms: 10_000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        let num = |v: String| -> Result<u64, String> {
            v.parse().map_err(|_| format!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--nats" => a.nats = value()?,
            "--name" => a.name = value()?,
            "--max-sessions" => a.max_sessions = num(value()?)? as usize,
            "--base-url" => a.base_url = Some(value()?),
            "--model" => a.model = value()?,
            "--api-key" => a.api_key = Some(value()?),
            "--azure-endpoint" => a.azure_endpoint = Some(value()?),
            "--azure-deployment" => a.azure_deployment = Some(value()?),
            "--api-version" => a.api_version = Some(value()?),
            "--prefix" => a.prefix = value()?,
            "--lease-ms" => a.lease_ms = num(value()?)?,
            "--drain-timeout-ms" => a.drain_timeout_ms = num(value()?)?,
            "-h" | "--help" => return Ok(Cli::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Cli::Run(Box::new(a)))
}

fn provider(a: &Args) -> Result<Provider, Box<dyn std::error::Error>> {
    if a.azure_endpoint.is_some() || a.azure_deployment.is_some() {
        let cfg = AzureConfig::resolve(
            &a.model,
            AzureSettings {
                endpoint: a.azure_endpoint.clone(),
                deployment: a.azure_deployment.clone(),
                api_version: a.api_version.clone(),
                api_key: a.api_key.clone().map(Secret::new),
                ..Default::default()
            },
        )?;
        return Ok(cfg.into());
    }
    let cfg = match (&a.base_url, &a.api_key) {
        (Some(url), _) => {
            let mut c = OpenAiConfig::compatible(url.clone());
            c.api_key = a
                .api_key
                .clone()
                .map(Secret::new)
                .or_else(|| Secret::from_env("OPENAI_API_KEY"));
            c
        }
        (None, Some(key)) => OpenAiConfig::new(key.clone()),
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
    // Warnings (a lease lost, a store that fails) on stderr; RUST_LOG for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let client_config = ClientConfig {
        pool_max_idle_per_host: a.max_sessions.max(16),
        ..ClientConfig::default()
    };
    let client = ChatClient::with_config(provider(&a)?, client_config)?;
    let nats = connect(&a.nats, &a.name).await?;
    let mut config = WorkerConfig::new(a.name.clone(), client)
        .with_max_sessions(a.max_sessions)
        .with_default_model(a.model.clone())
        .with_prefix(a.prefix.clone())
        .with_lease_ttl(Duration::from_millis(a.lease_ms.max(1)))
        .with_drain_timeout(Duration::from_millis(a.drain_timeout_ms));
    config.tools = ToolRegistry::new().with_tool(weather_tool());
    let worker = Worker::start(nats, config).await?;
    println!(
        "worker {} ready: up to {} sessions, nats {}, model {}",
        a.name, a.max_sessions, a.nats, a.model
    );
    let report = worker.drain_on_signal().await?;
    println!(
        "worker {} drained: {} sessions handed over ({} cut at the timeout, {} failed)",
        a.name, report.handed_over, report.cut_at_timeout, report.failed
    );
    worker.abort().await;
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Cli::Run(a)) => *a,
        Ok(Cli::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("error: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
