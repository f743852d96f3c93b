//! One streamed completion from the command line.
//!
//! ```text
//! cargo run --example chat -- --base-url http://127.0.0.1:8080/v1 --model llama "Say hi"
//! OPENAI_API_KEY=sk-… cargo run --example chat -- --json --tool get_time "What time is it?"
//! ```
//!
//! With `--json`, stdout carries one JSON object per line and nothing else:
//! `token`, `reasoning`, `refusal`, `tool_call`, `usage`, then `finished` (exit 0)
//! or `error` (exit 1).
//!
//! Provider resilience: `--fallback-base-url URL` (repeatable; `--fallback-model`
//! and `--fallback-api-key` apply to the last one named), `--ttft-timeout-ms`,
//! `--gap-timeout-ms` (deadlines on useful output, per provider) and
//! `--hedge-after-ms` run the request through a provider chain; then
//! `{"type":"provider","index":I,"base_url":"…","reason":"primary"|"fallback"|"hedge"}`
//! is printed when a provider's output starts being used and
//! `{"type":"provider_failed","index":I,"reason":"…"}` for each one dropped.

use std::process::ExitCode;
use std::time::Duration;

use colloquy::Secret;
use colloquy::context::ChatContext;
use colloquy::llm::{
    AzureConfig, AzureSettings, ChatClient, ChatRequest, ClientConfig, Hedging, LlmError,
    LlmOptions, OpenAiConfig, Provider, ProviderChain, ProviderSpec, ReasoningEffort, StreamEvent,
    Verbosity,
};
use colloquy::tools::{ToolChoice, ToolDefinition};
use futures_util::StreamExt;
use serde_json::json;

const USAGE: &str =
    "usage: chat [--base-url URL] [--model M] [--api-key K] [--azure-endpoint URL] \
[--azure-deployment D] [--api-version V] [--system TEXT] [--tool NAME]... \
[--tool-choice auto|required|none|NAME] [--reasoning-effort E] [--verbosity V] \
[--max-completion-tokens N] [--temperature T] [--max-retries N] \
[--fallback-base-url URL [--fallback-model M] [--fallback-api-key K]]... [--ttft-timeout-ms N] \
[--gap-timeout-ms N] [--hedge-after-ms N] [--json] [--] PROMPT
       chat -h | --help";

/// A fallback provider named on the command line.
#[derive(Default)]
struct Fallback {
    base_url: String,
    model: Option<String>,
    api_key: Option<String>,
}

#[derive(Default)]
struct Args {
    base_url: Option<String>,
    model: Option<String>,
    api_key: Option<String>,
    azure_endpoint: Option<String>,
    azure_deployment: Option<String>,
    api_version: Option<String>,
    system: Option<String>,
    tools: Vec<String>,
    tool_choice: Option<String>,
    reasoning_effort: Option<String>,
    verbosity: Option<String>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    max_retries: u32,
    fallbacks: Vec<Fallback>,
    ttft_timeout_ms: Option<u64>,
    gap_timeout_ms: Option<u64>,
    hedge_after_ms: Option<u64>,
    json: bool,
    prompt: Vec<String>,
}

impl Args {
    /// Whether the request goes through a provider chain.
    fn chain(&self) -> bool {
        !self.fallbacks.is_empty()
            || self.ttft_timeout_ms.is_some()
            || self.gap_timeout_ms.is_some()
            || self.hedge_after_ms.is_some()
    }
}

/// What the command line asks for.
enum Cli {
    Run(Box<Args>),
    Help,
}

fn parse_args() -> Result<Cli, String> {
    let mut a = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--base-url" => a.base_url = Some(value(&arg)?),
            "--model" => a.model = Some(value(&arg)?),
            "--api-key" => a.api_key = Some(value(&arg)?),
            "--azure-endpoint" => a.azure_endpoint = Some(value(&arg)?),
            "--azure-deployment" => a.azure_deployment = Some(value(&arg)?),
            "--api-version" => a.api_version = Some(value(&arg)?),
            "--system" => a.system = Some(value(&arg)?),
            "--tool" => a.tools.push(value(&arg)?),
            "--tool-choice" => a.tool_choice = Some(value(&arg)?),
            "--reasoning-effort" => a.reasoning_effort = Some(value(&arg)?),
            "--verbosity" => a.verbosity = Some(value(&arg)?),
            "--max-completion-tokens" => {
                a.max_completion_tokens = Some(
                    value(&arg)?
                        .parse()
                        .map_err(|_| "--max-completion-tokens: not a number")?,
                )
            }
            "--temperature" => {
                a.temperature = Some(
                    value(&arg)?
                        .parse()
                        .map_err(|_| "--temperature: not a number")?,
                )
            }
            "--max-retries" => {
                a.max_retries = value(&arg)?
                    .parse()
                    .map_err(|_| "--max-retries: not a number")?
            }
            "--fallback-base-url" => a.fallbacks.push(Fallback {
                base_url: value(&arg)?,
                ..Fallback::default()
            }),
            "--fallback-model" | "--fallback-api-key" => {
                let v = value(&arg)?;
                let last = a.fallbacks.last_mut().ok_or_else(|| {
                    format!("{arg} applies to a --fallback-base-url named before it")
                })?;
                if arg == "--fallback-model" {
                    last.model = Some(v);
                } else {
                    last.api_key = Some(v);
                }
            }
            "--ttft-timeout-ms" => a.ttft_timeout_ms = Some(millis(&arg, value(&arg)?)?),
            "--gap-timeout-ms" => a.gap_timeout_ms = Some(millis(&arg, value(&arg)?)?),
            "--hedge-after-ms" => a.hedge_after_ms = Some(millis(&arg, value(&arg)?)?),
            "--json" => a.json = true,
            "-h" | "--help" => return Ok(Cli::Help),
            "--" => a.prompt.extend(it.by_ref()),
            s if s.starts_with('-') && s.len() > 1 => {
                return Err(format!("unknown flag {s}"));
            }
            _ => a.prompt.push(arg),
        }
    }
    if a.prompt.is_empty() {
        return Err("missing prompt".into());
    }
    Ok(Cli::Run(Box::new(a)))
}

fn millis(flag: &str, v: String) -> Result<u64, String> {
    v.parse()
        .map_err(|_| format!("{flag}: not a number of milliseconds"))
}

fn provider(a: &Args, model: &str) -> Result<Provider, LlmError> {
    let use_azure = a.azure_endpoint.is_some()
        || a.azure_deployment.is_some()
        || (a.base_url.is_none()
            && a.api_key.is_none()
            && std::env::var("OPENAI_API_KEY").is_err()
            && std::env::var("AZURE_OPENAI_ENDPOINT").is_ok());
    if use_azure {
        let cfg = AzureConfig::resolve(
            model,
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
    let mut cfg = match (&a.base_url, &a.api_key) {
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
    if let Some(url) = &a.base_url {
        cfg.base_url = url.clone();
    }
    Ok(cfg.into())
}

fn error_json(e: &LlmError) -> serde_json::Value {
    let provider = e.provider_error();
    json!({
        "type": "error",
        "kind": e.kind(),
        "status": e.status(),
        "code": provider.and_then(|p| p.code.clone()),
        "message": e.to_string(),
        "retry_after_s": e.retry_after().map(|d| d.as_secs_f64()),
    })
}

async fn run(a: Args) -> Result<(), LlmError> {
    let model = a.model.clone().unwrap_or_else(|| "gpt-4o-mini".into());
    let mut config = ClientConfig::default();
    config.retry.max_retries = a.max_retries;
    config.read_gap_timeout = Duration::from_secs(60);
    let client = if a.chain() {
        // Deadlines apply to every provider; a fallback gets no key unless
        // given one (never the primary's: it may be another host).
        config.first_token_timeout = a.ttft_timeout_ms.map(Duration::from_millis);
        config.output_gap_timeout = a.gap_timeout_ms.map(Duration::from_millis);
        let mut chain = ProviderChain::new(
            ProviderSpec::new(provider(&a, &model)?).with_config(config.clone()),
        );
        for f in &a.fallbacks {
            let mut c = OpenAiConfig::compatible(f.base_url.clone());
            c.api_key = f.api_key.clone().map(Secret::new);
            let mut spec = ProviderSpec::new(c).with_config(config.clone());
            if let Some(m) = &f.model {
                spec = spec.with_model(m.clone());
            }
            chain = chain.with_fallback(spec);
        }
        if let Some(ms) = a.hedge_after_ms {
            chain = chain.with_hedging(Hedging::After(Duration::from_millis(ms)));
        }
        ChatClient::with_chain(chain)?
    } else {
        ChatClient::with_config(provider(&a, &model)?, config)?
    };

    let mut ctx = ChatContext::new();
    if let Some(system) = &a.system {
        ctx.add_system(system.clone());
    }
    ctx.add_user(a.prompt.join(" "));
    let mut options = LlmOptions::new(model);
    options.temperature = a.temperature.or(options.temperature);
    options.max_completion_tokens = a.max_completion_tokens;
    options.tools = a
        .tools
        .iter()
        .map(|name| ToolDefinition::free_form(name.clone(), format!("The {name} tool.")))
        .collect();
    if let Some(choice) = &a.tool_choice {
        options.tool_choice = ToolChoice::parse(choice);
    }
    if let Some(e) = &a.reasoning_effort {
        options.reasoning_effort = ReasoningEffort::parse(e);
    }
    if let Some(v) = &a.verbosity {
        options.verbosity = Verbosity::parse(v);
    }

    let mut stream = client.stream(ChatRequest::new(&ctx, &options))?;
    while let Some(event) = stream.next().await {
        let event = event?;
        if a.json {
            let line = match &event {
                StreamEvent::Token(t) => json!({"type": "token", "text": t}),
                StreamEvent::Reasoning(t) => json!({"type": "reasoning", "text": t}),
                StreamEvent::Refusal(t) => json!({"type": "refusal", "text": t}),
                StreamEvent::ToolCall(c) => {
                    json!({"type": "tool_call", "index": c.index, "id": c.id,
                    "name": c.name, "arguments": c.arguments, "valid_json": c.valid_json})
                }
                StreamEvent::Usage(u) => json!({"type": "usage", "prompt_tokens": u.prompt_tokens,
                    "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens,
                    "cached_tokens": u.cached_tokens, "reasoning_tokens": u.reasoning_tokens}),
                StreamEvent::Finished(s) => json!({"type": "finished",
                    "reason": s.reason.as_ref().map(|r| r.label()).unwrap_or_else(|| "other:unspecified".into())}),
                StreamEvent::ProviderSelected(p) => json!({"type": "provider", "index": p.index,
                    "base_url": &*p.base_url, "reason": p.reason.label()}),
                StreamEvent::ProviderFailed(f) => json!({"type": "provider_failed",
                    "index": f.index, "reason": f.reason.label()}),
                _ => continue,
            };
            println!("{line}");
        } else {
            match &event {
                StreamEvent::Token(t) => print!("{t}"),
                StreamEvent::Reasoning(t) => eprint!("\x1b[2m{t}\x1b[0m"),
                StreamEvent::Refusal(t) => print!("[refusal] {t}"),
                StreamEvent::ToolCall(c) => println!("\n[tool call] {}({})", c.name, c.arguments),
                StreamEvent::Usage(u) => eprintln!(
                    "\n[usage] prompt {} completion {} total {}",
                    u.prompt_tokens, u.completion_tokens, u.total_tokens
                ),
                StreamEvent::Finished(s) => {
                    eprintln!(
                        "[finished] {}",
                        s.reason.as_ref().map(|r| r.label()).unwrap_or_default()
                    )
                }
                StreamEvent::ProviderSelected(p) => eprintln!(
                    "[provider {}] {} ({})",
                    p.index,
                    p.base_url,
                    p.reason.label()
                ),
                StreamEvent::ProviderFailed(f) => {
                    eprintln!("[provider {} dropped] {}", f.index, f.reason.label())
                }
                _ => {}
            }
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
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
    let json = args.json;
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                println!("{}", error_json(&e));
            } else {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}
