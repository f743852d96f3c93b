//! Load generator: N concurrent sessions through the real supervisor, LLM actors
//! and buses, against any OpenAI-compatible server.
//!
//! ```text
//! # the server in its own process, so only the client side is measured:
//! cargo run --release --example mock_server -- --port 8089 --tokens 60 --gap-ms 20 &
//! cargo run --release --example loadgen -- --base-url http://127.0.0.1:8089/v1 \
//!     --sessions 1000 --turns 3 --cancel-after-tokens 5 --json
//! cargo run --release --example loadgen -- --sessions 0 --idle-sessions 10000 --json
//! ```
//!
//! Without `--base-url` an in-process mock server is used (it then shares the CPU).
//! Cancel latency is measured from `cancel()` to a subscriber receiving
//! `TurnFinished(Cancelled)`; stale events are events of a cancelled turn seen
//! after its `TurnFinished` (the bus fence makes that 0).

use std::sync::Arc;
use std::time::{Duration, Instant};

use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::{AgentSettings, SessionConfig, SessionHandle, Supervisor, SupervisorConfig};
use serde_json::json;
use tokio::sync::Mutex;

struct Args {
    base_url: Option<String>,
    sessions: usize,
    turns: usize,
    cancel_after_tokens: usize,
    idle_sessions: usize,
    json: bool,
}

const USAGE: &str = "usage: loadgen [--base-url URL] [--sessions N] [--turns T] \
[--cancel-after-tokens K] [--idle-sessions M] [--json]
       loadgen -h | --help
  --base-url URL           an OpenAI-compatible server (default: an in-process mock)
  --sessions N             concurrent sessions driven (default 100)
  --turns T                user messages per session (default 3)
  --cancel-after-tokens K  cancel each turn after K tokens (default 0: never)
  --idle-sessions M        extra sessions started and left idle (default 0)
  --json                   the summary on one line";

/// What the command line asks for.
enum Cli {
    Run(Args),
    Help,
}

fn parse_args() -> Result<Cli, String> {
    let mut a = Args {
        base_url: None,
        sessions: 100,
        turns: 3,
        cancel_after_tokens: 0,
        idle_sessions: 0,
        json: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            it.next()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{name} needs a number"))
        };
        match arg.as_str() {
            "--base-url" => a.base_url = Some(it.next().ok_or("--base-url needs a value")?),
            "--sessions" => a.sessions = num(&arg)?,
            "--turns" => a.turns = num(&arg)?,
            "--cancel-after-tokens" => a.cancel_after_tokens = num(&arg)?,
            "--idle-sessions" => a.idle_sessions = num(&arg)?,
            "--json" => a.json = true,
            "-h" | "--help" => return Ok(Cli::Help),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Cli::Run(a))
}

#[derive(Default)]
struct Totals {
    turns: u64,
    tokens: u64,
    errors: u64,
    cancels: u64,
    stale: u64,
    ttft_us: Vec<u64>,
    cancel_us: Vec<u64>,
    speaker_cancel_us: Vec<u64>,
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A second subscriber standing in for a TTS actor: it measures the time from
/// the cancel (sent by the driver) to its own receipt of TurnFinished(Cancelled).
async fn speaker(
    mut rx: colloquy_actors::bus::BusReceiver,
    cancel_at_ns: Arc<std::sync::atomic::AtomicU64>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = &mut done => return out,
            ev = rx.recv() => match ev {
                Ok(ev) if ev.kind == EventKind::TurnFinished(TurnEnd::Cancelled) => {
                    let at = cancel_at_ns.load(std::sync::atomic::Ordering::SeqCst);
                    let now = epoch().elapsed().as_nanos() as u64;
                    out.push(now.saturating_sub(at) / 1000);
                }
                Ok(_) | Err(colloquy_actors::bus::BusRecvError::Lagged { .. }) => {}
                Err(_) => return out,
            }
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn proc_field(file: &str, key: &str) -> Option<u64> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_mb() -> f64 {
    proc_field("/proc/self/status", "VmRSS:").unwrap_or(0) as f64 / 1024.0
}

fn peak_rss_mb() -> f64 {
    proc_field("/proc/self/status", "VmHWM:").unwrap_or(0) as f64 / 1024.0
}

fn cpu_seconds() -> f64 {
    // utime and stime are fields 14 and 15 of /proc/self/stat, in clock ticks (100 Hz).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// One session's conversation: `turns` user messages, each answered or cancelled.
async fn drive(
    session: SessionHandle,
    turns: usize,
    cancel_after: usize,
    totals: Arc<Mutex<Totals>>,
) {
    let mut rx = session.subscribe();
    let mut local = Totals::default();
    let cancel_at_ns = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let speaker_task = tokio::spawn(speaker(session.subscribe(), cancel_at_ns.clone(), done_rx));
    for t in 0..turns {
        let sent = Instant::now();
        if session.send_text(format!("question {t}")).is_err() {
            local.errors += 1;
            break;
        }
        let mut tokens = 0usize;
        let mut cancel_sent: Option<Instant> = None;
        let mut cancelled_turn = None;
        loop {
            let ev = match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
                Ok(Ok(ev)) => ev,
                Ok(Err(_)) => continue, // lag: counted by the bus metrics; keep reading
                Err(_) => {
                    local.errors += 1;
                    break;
                }
            };
            match ev.kind {
                EventKind::Token(_) => {
                    tokens += 1;
                    local.tokens += 1;
                    if tokens == 1 {
                        local.ttft_us.push(sent.elapsed().as_micros() as u64);
                    }
                    if cancel_after > 0 && tokens == cancel_after && cancel_sent.is_none() {
                        cancel_sent = Some(Instant::now());
                        cancel_at_ns.store(
                            epoch().elapsed().as_nanos() as u64,
                            std::sync::atomic::Ordering::SeqCst,
                        );
                        let _ = session.cancel();
                    }
                }
                EventKind::TurnFinished(end) => {
                    local.turns += 1;
                    match end {
                        TurnEnd::Cancelled => {
                            if let Some(at) = cancel_sent {
                                local.cancel_us.push(at.elapsed().as_micros() as u64);
                            }
                            local.cancels += 1;
                            cancelled_turn = Some(ev.turn);
                        }
                        TurnEnd::Failed(_) => local.errors += 1,
                        _ => {}
                    }
                    break;
                }
                _ => {}
            }
        }
        // Anything of a cancelled turn arriving after its TurnFinished is stale.
        // A marker event (an ignored partial transcript) bounds the wait.
        if let Some(turn) = cancelled_turn {
            let marker = session.user_transcript("", false);
            while let Ok(Ok(ev)) = tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                if ev.seq >= marker {
                    break;
                }
                if ev.turn == turn {
                    local.stale += 1;
                }
            }
        }
    }
    let _ = done_tx.send(());
    local.speaker_cancel_us = speaker_task.await.unwrap_or_default();
    let mut g = totals.lock().await;
    g.turns += local.turns;
    g.tokens += local.tokens;
    g.errors += local.errors;
    g.cancels += local.cancels;
    g.stale += local.stale;
    g.ttft_us.extend(local.ttft_us);
    g.cancel_us.extend(local.cancel_us);
    g.speaker_cancel_us.extend(local.speaker_cancel_us);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    epoch();
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
    let _embedded;
    let base_url = match &args.base_url {
        Some(url) => url.clone(),
        None => {
            let words: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
            let server = MockServer::start_with(
                move |_| {
                    let refs: Vec<&str> = words.iter().map(String::as_str).collect();
                    MockResponse::text_paced(&refs, Duration::from_millis(20))
                },
                false,
                0,
            )
            .await?;
            let url = server.base_url();
            _embedded = server;
            url
        }
    };
    let config = ClientConfig {
        pool_max_idle_per_host: args.sessions.max(16),
        read_gap_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let client = ChatClient::with_config(OpenAiConfig::compatible(base_url), config)?;
    let supervisor = Supervisor::start(SupervisorConfig {
        max_sessions: args.sessions + args.idle_sessions + 1,
        ..SupervisorConfig::default()
    })
    .await?;
    let session_config = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("loadgen")));

    let rss_before = rss_mb();
    let started = Instant::now();
    let mut idle = Vec::with_capacity(args.idle_sessions);
    for i in 0..args.idle_sessions {
        idle.push(
            supervisor
                .start_session(format!("idle-{i}"), session_config.clone())
                .await?,
        );
    }
    let idle_rss_mb = rss_mb() - rss_before;

    let totals = Arc::new(Mutex::new(Totals::default()));
    let mut tasks = Vec::with_capacity(args.sessions);
    let mut active = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        active.push(
            supervisor
                .start_session(format!("load-{i}"), session_config.clone())
                .await?,
        );
    }
    let cpu_before = cpu_seconds();
    let load_started = Instant::now();
    for session in &active {
        tasks.push(tokio::spawn(drive(
            session.clone(),
            args.turns,
            args.cancel_after_tokens,
            totals.clone(),
        )));
    }
    for t in tasks {
        t.await?;
    }
    let wall_s = load_started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_before;

    let mut t = std::mem::take(&mut *totals.lock().await);
    t.ttft_us.sort_unstable();
    t.cancel_us.sort_unstable();
    t.speaker_cancel_us.sort_unstable();
    let summary = json!({
        "sessions": args.sessions,
        "idle_sessions": args.idle_sessions,
        "turns": t.turns,
        "tokens": t.tokens,
        "errors": t.errors,
        "cancels": t.cancels,
        "ttft_ms": {"p50": percentile(&t.ttft_us, 0.5) as f64 / 1000.0, "p99": percentile(&t.ttft_us, 0.99) as f64 / 1000.0},
        "cancel_latency_us": {
            "p50": percentile(&t.cancel_us, 0.5),
            "p99": percentile(&t.cancel_us, 0.99),
            "max": t.cancel_us.last().copied().unwrap_or(0),
        },
        "speaker_cancel_latency_us": {
            "p50": percentile(&t.speaker_cancel_us, 0.5),
            "p99": percentile(&t.speaker_cancel_us, 0.99),
            "max": t.speaker_cancel_us.last().copied().unwrap_or(0),
        },
        "stale_events_after_cancel": t.stale,
        "cpu_s": (cpu_s * 100.0).round() / 100.0,
        "wall_s": (wall_s * 100.0).round() / 100.0,
        "idle_sessions_rss_mb": (idle_rss_mb * 10.0).round() / 10.0,
        "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
        "setup_s": ((load_started - started).as_secs_f64() * 100.0).round() / 100.0,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    drop(idle);
    drop(active);
    supervisor.shutdown().await;
    Ok(())
}
