//! A standalone OpenAI-compatible streaming server on 127.0.0.1, for trying the
//! `chat` example and for driving `loadgen` from a separate process (so the load
//! generator measures only the client side).
//!
//! ```text
//! cargo run --release --example mock_server -- --port 8089 --tokens 40 --gap-ms 20
//! ```
//! Prompts containing "weather" get a tool call first, then a text answer.
//!
//! Faults for provider-resilience figures, chosen per request from a seeded
//! PRNG: `--stall-rate F` stalls a fraction of requests before their first
//! token, sending only keep-alive comments; `--drop-after-tokens K` (with
//! `--drop-rate F`, default 1) hangs up after K words. A request that asks to
//! continue a cut reply (colloquy's continuation instruction after a partial
//! assistant message) is answered with the rest of the words, restating the
//! last `--restate-words R` words first, as models sometimes do.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use colloquy::llm::DEFAULT_CONTINUATION_INSTRUCTION;
use colloquy::mock::{MockResponse, MockServer, RecordedRequest, sse_chunk};
use serde_json::json;

#[path = "common/mod.rs"]
mod common;

/// A standalone OpenAI-compatible streaming server on 127.0.0.1 (for the
/// chat example, and for driving loadgen from a separate process). Prompts
/// containing "weather" get a tool call first, then a text answer.
///
/// Faults are chosen per request from a seeded PRNG. A request that asks to
/// continue a cut reply is answered with the rest of the words.
#[derive(clap::Parser, Debug)]
#[command(
    name = "mock_server",
    after_help = "Prints `mock server listening on http://127.0.0.1:PORT/v1` on stderr once it \
accepts connections, then serves until killed. Exit codes: 1 the port cannot be bound (in use), \
2 a usage error."
)]
struct Args {
    /// Port on 127.0.0.1 (0 picks a free one)
    #[arg(long, value_name = "P", default_value_t = 8089)]
    port: u16,
    /// Words per text reply
    #[arg(long, value_name = "N", default_value_t = 40)]
    tokens: usize,
    /// Pause between words (milliseconds)
    #[arg(long, value_name = "MS", default_value_t = 20)]
    gap_ms: u64,
    /// Pause before the first word (milliseconds; default: the gap)
    #[arg(long, value_name = "MS")]
    ttft_ms: Option<u64>,
    /// Fraction of requests (0 to 1) that stall before their first word,
    /// sending only keep-alive comments
    #[arg(long, value_name = "F", default_value_t = 0.0, value_parser = common::fraction)]
    stall_rate: f64,
    /// Keep-alive period while stalled (milliseconds, at least 1)
    #[arg(long, value_name = "MS", default_value_t = 250,
          value_parser = clap::value_parser!(u64).range(1..))]
    keep_alive_ms: u64,
    /// Hang up after K words (0: never)
    #[arg(long, value_name = "K", default_value_t = 0)]
    drop_after_tokens: usize,
    /// Fraction of requests (0 to 1) that hang up after --drop-after-tokens
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = common::fraction)]
    drop_rate: f64,
    /// A continuation restates the last R words first, as models sometimes do
    #[arg(long, value_name = "R", default_value_t = 0)]
    restate_words: usize,
    /// Seed of the per-request choices
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
}

/// A uniform number in `0..1` for request `n` (SplitMix64 of seed and n).
fn chance(seed: u64, n: u64) -> f64 {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Words already said, if the request asks to continue a cut reply.
fn continued_words(req: &RecordedRequest) -> Option<usize> {
    let body = req.json();
    let messages = body["messages"].as_array()?;
    let [.., partial, instruction] = messages.as_slice() else {
        return None;
    };
    (instruction["role"] == "user"
        && instruction["content"] == DEFAULT_CONTINUATION_INSTRUCTION
        && partial["role"] == "assistant")
        .then(|| {
            partial["content"]
                .as_str()
                .unwrap_or("")
                .split_whitespace()
                .count()
        })
}

/// Role chunk, the first word after `ttft`, the others `gap` apart; then the
/// end (finish and usage), or a hang-up after `drop_after` words.
fn reply(
    words: &[String],
    ttft: Duration,
    gap: Duration,
    drop_after: Option<usize>,
) -> MockResponse {
    let mut r = MockResponse::event_stream().event(&sse_chunk(
        json!({"role": "assistant", "content": ""}),
        None,
    ));
    for (i, w) in words.iter().enumerate() {
        if drop_after == Some(i) {
            return r.delay(gap).hang_up();
        }
        r = r.delay(if i == 0 { ttft } else { gap });
        r = r.event(&sse_chunk(json!({"content": w}), None));
    }
    r.finish("stop", 10, words.len() as u64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let (args, _) = common::parse::<Args>();
    let (port, tokens) = (args.port, args.tokens);
    let gap = Duration::from_millis(args.gap_ms);
    let ttft = args.ttft_ms.map_or(gap, Duration::from_millis);
    let keep_alive = Duration::from_millis(args.keep_alive_ms);
    let words: Vec<String> = (0..tokens).map(|i| format!("word{i} ")).collect();
    let calls = AtomicU64::new(1);
    let requests = AtomicU64::new(0);
    let server = MockServer::start_with(
        move |req| {
            let body = req.json();
            let last = req.last_message();
            let wants_tool =
                last["role"] == "user" && last["content"].to_string().contains("weather");
            if wants_tool && body.get("tools").is_some() {
                // A distinct id per call: ids repeated across turns would hide
                // an unanswered call from a history check.
                let id = format!("call_{}", calls.fetch_add(1, Ordering::Relaxed));
                return MockResponse::tool_calls(&[(&id, "get_weather", r#"{"city":"Paris"}"#)]);
            }
            if let Some(said) = continued_words(req) {
                let from = said.saturating_sub(args.restate_words).min(words.len());
                return reply(&words[from..], ttft, gap, None);
            }
            let n = requests.fetch_add(1, Ordering::Relaxed);
            if args.stall_rate > 0.0 && chance(args.seed, 2 * n) < args.stall_rate {
                return MockResponse::event_stream()
                    .event(&sse_chunk(
                        json!({"role": "assistant", "content": ""}),
                        None,
                    ))
                    .stall_with_keep_alives(keep_alive);
            }
            let drop = (args.drop_after_tokens > 0
                && chance(args.seed, 2 * n + 1) < args.drop_rate)
                .then_some(args.drop_after_tokens);
            reply(&words, ttft, gap, drop)
        },
        false,
        port,
    )
    .await;
    let server = match server {
        Ok(server) => server,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            return common::fail(format_args!("127.0.0.1:{port} is already in use ({e})"));
        }
        Err(e) => return common::fail(format_args!("cannot listen on 127.0.0.1:{port}: {e}")),
    };
    eprintln!("mock server listening on {}", server.base_url());
    std::future::pending::<ExitCode>().await
}
