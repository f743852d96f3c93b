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
//! and `--fallback-api-key-file` apply to the last one named), `--ttft-timeout-ms`,
//! `--gap-timeout-ms` (deadlines on useful output, per provider) and
//! `--hedge-after-ms` run the request through a provider chain; then
//! `{"type":"provider","index":I,"base_url":"…","reason":"primary"|"fallback"|"hedge"}`
//! is printed when a provider's output starts being used and
//! `{"type":"provider_failed","index":I,"reason":"…"}` for each one dropped.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use colloquy::context::ChatContext;
use colloquy::llm::{
    ChatClient, ChatRequest, ClientConfig, LlmError, LlmOptions, OpenAiConfig, ReasoningEffort,
    StreamEvent, Verbosity,
};
use colloquy::tools::{ToolChoice, ToolDefinition};
use futures_util::StreamExt;
use serde_json::json;

#[path = "common/mod.rs"]
mod common;
use common::{ChainFlags, Env, Fallback, ProviderFlags};

/// One streamed completion from the command line.
///
/// The provider: --azure-endpoint or --azure-deployment: Azure OpenAI;
/// --base-url: that OpenAI-compatible server (key: --api-key-file, else
/// OPENAI_API_KEY); --api-key alone: OpenAI; else OPENAI_API_KEY (OpenAI),
/// else AZURE_OPENAI_ENDPOINT (Azure).
#[derive(Parser, Debug)]
#[command(
    name = "chat",
    after_help = "With --json, stdout carries one JSON object per line: token, reasoning, refusal, \
tool_call, usage, provider, provider_failed, then finished (exit 0) or error (exit 1, with \
kind, status, code, message, retry_after_s). Exit codes: 0 finished, 1 the request failed, \
2 a usage error."
)]
struct Args {
    #[command(flatten)]
    provider: ProviderFlags,
    /// The model
    #[arg(long, value_name = "M", default_value = "gpt-4o-mini")]
    model: String,
    /// A system message before the prompt
    #[arg(long, value_name = "TEXT")]
    system: Option<String>,
    /// Offer a free-form tool of this name (repeatable)
    #[arg(long = "tool", value_name = "NAME")]
    tools: Vec<String>,
    /// auto, required, none, or a tool's name
    #[arg(long, value_name = "CHOICE")]
    tool_choice: Option<String>,
    /// Reasoning effort for reasoning models
    #[arg(long, value_name = "E",
          value_parser = ["none", "minimal", "low", "medium", "high"])]
    reasoning_effort: Option<String>,
    /// Verbosity for reasoning models
    #[arg(long, value_name = "V", value_parser = ["low", "medium", "high"])]
    verbosity: Option<String>,
    /// Cap on the completion's tokens (at least 1)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_completion_tokens: Option<u32>,
    /// Sampling temperature, 0 to 2
    #[arg(long, value_name = "T", value_parser = common::temperature)]
    temperature: Option<f64>,
    /// Nucleus sampling, 0 to 1
    #[arg(long, value_name = "P", value_parser = common::fraction)]
    top_p: Option<f64>,
    /// Frequency penalty, -2 to 2
    #[arg(long, value_name = "X", value_parser = common::penalty)]
    frequency_penalty: Option<f64>,
    /// Presence penalty, -2 to 2
    #[arg(long, value_name = "X", value_parser = common::penalty)]
    presence_penalty: Option<f64>,
    /// Retries of a failed request before anything was delivered
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_retries: u32,
    #[command(flatten)]
    chain: ChainFlags,
    /// One JSON object per line on stdout (see below)
    #[arg(long)]
    json: bool,
    /// The user's message (the words are joined with spaces; put it after --
    /// when it starts with a dash)
    #[arg(required = true, value_name = "PROMPT")]
    prompt: Vec<String>,
}

/// The primary provider: the flags, else the environment.
fn provider(a: &Args) -> Result<colloquy::llm::Provider, LlmError> {
    Ok(match a.provider.resolve(&a.model, Env::Read)? {
        Some(r) => r.provider,
        // OPENAI_BASE_URL alone, or the missing-key error.
        None => OpenAiConfig::from_env()?.into(),
    })
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

async fn run(a: Args, fallbacks: Vec<Fallback>) -> Result<(), LlmError> {
    let model = a.model.clone();
    let mut config = ClientConfig::default();
    config.retry.max_retries = a.max_retries;
    config.read_gap_timeout = Duration::from_secs(60);
    let client = if a.chain.enabled() {
        ChatClient::with_chain(a.chain.chain(provider(&a)?, &fallbacks, config))?
    } else {
        ChatClient::with_config(provider(&a)?, config)?
    };

    let mut ctx = ChatContext::new();
    if let Some(system) = &a.system {
        ctx.add_system(system.clone());
    }
    ctx.add_user(a.prompt.join(" "));
    let mut options = LlmOptions::new(model);
    options.temperature = a.temperature.or(options.temperature);
    options.top_p = a.top_p.or(options.top_p);
    options.frequency_penalty = a.frequency_penalty.or(options.frequency_penalty);
    options.presence_penalty = a.presence_penalty.or(options.presence_penalty);
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
    let (args, matches) = common::parse::<Args>();
    let fallbacks = args.chain.fallbacks::<Args>(&matches);
    let json = args.json;
    match run(args, fallbacks).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            println!("{}", error_json(&e));
            ExitCode::FAILURE
        }
        Err(e) => common::fail(e),
    }
}
