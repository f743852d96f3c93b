//! A standalone OpenAI-compatible streaming server on 127.0.0.1, for trying the
//! `chat` example and for driving `loadgen` from a separate process (so the load
//! generator measures only the client side).
//!
//! ```text
//! cargo run --release --example mock_server -- --port 8089 --tokens 40 --gap-ms 20
//! ```
//! Prompts containing "weather" get a tool call first, then a text answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer};

const USAGE: &str = "usage: mock_server [--port P] [--tokens N] [--gap-ms MS]
       mock_server -h | --help
  --port P      port on 127.0.0.1 (default 8089; 0 picks a free one)
  --tokens N    words per text reply (default 40)
  --gap-ms MS   pause between words (default 20)";

struct Args {
    port: u16,
    tokens: usize,
    gap_ms: u64,
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
            "-h" | "--help" => return Ok(Cli::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Cli::Run(a))
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
    let words: Vec<String> = (0..tokens).map(|i| format!("word{i} ")).collect();
    let calls = AtomicU64::new(1);
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
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            MockResponse::text_paced(&refs, gap)
        },
        false,
        port,
    )
    .await?;
    eprintln!("mock server listening on {}", server.base_url());
    std::future::pending::<()>().await;
    Ok(())
}
