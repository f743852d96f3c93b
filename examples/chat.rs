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

use std::process::ExitCode;
use std::time::Duration;

use colloquy::Secret;
use colloquy::context::ChatContext;
use colloquy::llm::{
    AzureConfig, AzureSettings, ChatClient, ChatRequest, ClientConfig, LlmError, LlmOptions,
    OpenAiConfig, Provider, ReasoningEffort, StreamEvent, Verbosity,
};
use colloquy::tools::{ToolChoice, ToolDefinition};
use futures_util::StreamExt;
use serde_json::json;

const USAGE: &str =
    "usage: chat [--base-url URL] [--model M] [--api-key K] [--azure-endpoint URL] \
[--azure-deployment D] [--api-version V] [--system TEXT] [--tool NAME]... \
[--tool-choice auto|required|none|NAME] [--reasoning-effort E] [--verbosity V] \
[--max-completion-tokens N] [--temperature T] [--max-retries N] [--json] [--] PROMPT
       chat -h | --help";

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
    json: bool,
    prompt: Vec<String>,
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
    let client = ChatClient::with_config(provider(&a, &model)?, config)?;

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
