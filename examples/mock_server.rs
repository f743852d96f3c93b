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

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use colloquy::llm::DEFAULT_CONTINUATION_INSTRUCTION;
use colloquy::mock::{MockResponse, MockServer, RecordedRequest, sse_chunk};
use serde_json::json;

const USAGE: &str = "usage: mock_server [--port P] [--tokens N] [--gap-ms MS] [--ttft-ms MS] \
[--stall-rate F] [--keep-alive-ms MS] [--drop-after-tokens K] [--drop-rate F] \
[--restate-words R] [--seed S]
       mock_server -h | --help
  --port P               port on 127.0.0.1 (default 8089; 0 picks a free one)
  --tokens N             words per text reply (default 40)
  --gap-ms MS            pause between words (default 20)
  --ttft-ms MS           pause before the first word (default: the gap)
  --stall-rate F         fraction of requests that stall before their first word,
                         sending only keep-alive comments (default 0)
  --keep-alive-ms MS     keep-alive period while stalled (default 250)
  --drop-after-tokens K  hang up after K words (default 0: never)
  --drop-rate F          fraction of requests that hang up (default 1)
  --restate-words R      a continuation restates the last R words first (default 0)
  --seed S               seed of the per-request choices (default 1)";

struct Args {
    port: u16,
    tokens: usize,
    gap_ms: u64,
    ttft_ms: Option<u64>,
    stall_rate: f64,
    keep_alive_ms: u64,
    drop_after_tokens: usize,
    drop_rate: f64,
    restate_words: usize,
    seed: u64,
}

/// What the command line asks for.
enum Cli {
    Run(Args),
    Help,
}

fn parse_args() -> Result<Cli, String> {
    let mut a = Args {
        port: 8089,
        tokens: 40,
        gap_ms: 20,
        ttft_ms: None,
        stall_rate: 0.0,
        keep_alive_ms: 250,
        drop_after_tokens: 0,
        drop_rate: 1.0,
        restate_words: 0,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || -> Result<String, String> {
            it.next().ok_or_else(|| format!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--port" => a.port = value()?.parse().map_err(|_| "--port: not a port number")?,
            "--tokens" => a.tokens = value()?.parse().map_err(|_| "--tokens: not a number")?,
            "--gap-ms" => a.gap_ms = value()?.parse().map_err(|_| "--gap-ms: not a number")?,
            "--ttft-ms" => {
                a.ttft_ms = Some(value()?.parse().map_err(|_| "--ttft-ms: not a number")?)
            }
            "--stall-rate" => a.stall_rate = rate("--stall-rate", value()?)?,
            "--keep-alive-ms" => {
                a.keep_alive_ms = value()?
                    .parse()
                    .map_err(|_| "--keep-alive-ms: not a number")?
            }
            "--drop-after-tokens" => {
                a.drop_after_tokens = value()?
                    .parse()
                    .map_err(|_| "--drop-after-tokens: not a number")?
            }
            "--drop-rate" => a.drop_rate = rate("--drop-rate", value()?)?,
            "--restate-words" => {
                a.restate_words = value()?
                    .parse()
                    .map_err(|_| "--restate-words: not a number")?
            }
            "--seed" => a.seed = value()?.parse().map_err(|_| "--seed: not a number")?,
            "-h" | "--help" => return Ok(Cli::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Cli::Run(a))
}

fn rate(flag: &str, v: String) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|f| (0.0..=1.0).contains(f))
        .ok_or_else(|| format!("{flag}: not a fraction between 0 and 1"))
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
async fn main() -> std::io::Result<()> {
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
    .await?;
    eprintln!("mock server listening on {}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
