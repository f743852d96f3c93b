//! Load generator: N concurrent sessions through the real supervisor, LLM actors
//! and buses, against any OpenAI-compatible server.
//!
//! ```text
//! # the server in its own process, so only the client side is measured:
//! cargo run --release --example mock_server -- --port 8089 --tokens 60 --gap-ms 20 &
//! cargo run --release --example loadgen -- --base-url http://127.0.0.1:8089/v1 \
//!     --sessions 1000 --turns 3 --cancel-after-tokens 5 --json
//! cargo run --release --example loadgen -- --sessions 0 --idle-sessions 10000 --json
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
//! `--fallback-model`/`--fallback-api-key` for the last one named;
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use colloquy::llm::{
    BreakerConfig, ChatClient, ClientConfig, LlmOptions, OpenAiConfig, SelectionReason,
};
use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusReceiver, BusRecvError, EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, SessionConfig, SessionHandle, Supervisor, SupervisorConfig,
    Tool, ToolRegistry, TurnId,
};
use serde_json::json;
use tokio::sync::Mutex;

#[path = "common/mod.rs"]
mod common;
use common::{ChainFlags, Env, Fallback, ProviderFlags};

/// Bus capacity of soak sessions: room enough that the checking subscriber never lags.
const SOAK_BUS_CAPACITY: usize = 1024;
/// How long a tool call takes in the soak.
const TOOL_TIME: Duration = Duration::from_millis(5);
/// Bounds every wait of a driver: a hang becomes an error, not a stuck run.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the teardown may take before what is left is reported as leaked.
const TEARDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Load generator: N concurrent sessions through the real supervisor, LLM
/// actors and buses, against any OpenAI-compatible server, then a JSON summary.
///
/// The server: --base-url (key: --api-key, none otherwise; the environment is
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
    provider: ProviderFlags,
    /// Concurrent sessions driven
    #[arg(long, value_name = "N", default_value_t = 100)]
    sessions: usize,
    /// User messages per session
    #[arg(long, value_name = "T", default_value_t = 3)]
    turns: usize,
    /// Cancel each turn after K tokens (0: never)
    #[arg(long, value_name = "K", default_value_t = 0)]
    cancel_after_tokens: usize,
    /// Extra sessions started and left idle
    #[arg(long, value_name = "M", default_value_t = 0)]
    idle_sessions: usize,
    /// random: the soak, each turn finishes or is cut at a random point (before
    /// the first token, mid-stream, during tail speech, during a tool round);
    /// replaces --cancel-after-tokens
    #[arg(long, value_name = "MODE", value_enum, default_value_t = BargeIn::Off)]
    barge_in: BargeIn,
    /// Seed of the soak's choices
    #[arg(long, value_name = "S", default_value_t = 1)]
    seed: u64,
    /// How a barge-in cuts: immediate (cancel() and speech-started cut at
    /// once) or confirmed (speech pauses at onset, then an interim 'wait stop'
    /// cuts; reports pause_latency_us and pause_hook_us)
    #[arg(long, value_name = "MODE", value_enum, default_value_t = Interrupt::Immediate)]
    interrupt: Interrupt,
    #[command(flatten)]
    chain: ChainFlags,
    /// Consecutive failures that open a provider's circuit breaker (default 3;
    /// 0: no breakers); makes a provider chain
    #[arg(long, value_name = "N")]
    breaker_failures: Option<u32>,
    /// The summary on one line
    #[arg(long)]
    json: bool,
    /// Cluster mode: place the sessions on the workers behind this NATS server
    /// (examples/worker.rs; needs --features nats) instead of in-process
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// Pause between a session's turns (milliseconds)
    #[arg(long, value_name = "MS", default_value_t = 0)]
    turn_gap_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BargeIn {
    Off,
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Interrupt {
    Immediate,
    Confirmed,
}

impl Args {
    fn random_barge_in(&self) -> bool {
        self.barge_in == BargeIn::Random
    }

    fn chain_enabled(&self) -> bool {
        self.chain.enabled() || self.breaker_failures.is_some()
    }

    /// One client over the chain: `primary` first, then the fallbacks.
    fn chain_client(
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

/// SplitMix64: a small seeded PRNG, plenty for picking barge-in points.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What the driver does with one turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// Let the reply finish; with `tool`, through a tool round.
    Finish { tool: bool },
    /// Cancel as soon as the turn starts.
    CancelBeforeFirstToken,
    /// Cancel after this many tokens.
    CancelMidStream { after_tokens: usize },
    /// Let the reply finish, report part of it played, then barge in.
    CancelTailSpeech,
    /// Ask for the weather and cancel when the tool call arrives (the tool is
    /// running) or when its result does (the next round is starting).
    CancelToolRound { after_result: bool },
}

const ACTION_LABELS: [&str; 5] = [
    "finish",
    "cancel_before_first_token",
    "cancel_mid_stream",
    "cancel_tail_speech",
    "cancel_tool_round",
];

impl Action {
    fn random(rng: &mut Rng) -> Self {
        match rng.below(5) {
            0 => Action::Finish {
                tool: rng.below(4) == 0,
            },
            1 => Action::CancelBeforeFirstToken,
            2 => Action::CancelMidStream {
                after_tokens: 1 + rng.below(20) as usize,
            },
            3 => Action::CancelTailSpeech,
            _ => Action::CancelToolRound {
                after_result: rng.below(2) == 0,
            },
        }
    }

    fn index(self) -> usize {
        match self {
            Action::Finish { .. } => 0,
            Action::CancelBeforeFirstToken => 1,
            Action::CancelMidStream { .. } => 2,
            Action::CancelTailSpeech => 3,
            Action::CancelToolRound { .. } => 4,
        }
    }

    fn uses_tool(self) -> bool {
        matches!(
            self,
            Action::Finish { tool: true } | Action::CancelToolRound { .. }
        )
    }

    /// Whether the driver cancels while the turn is generating.
    fn cancels_generation(self) -> bool {
        matches!(
            self,
            Action::CancelBeforeFirstToken
                | Action::CancelMidStream { .. }
                | Action::CancelToolRound { .. }
        )
    }
}

#[derive(Default)]
struct Totals {
    turns: u64,
    tokens: u64,
    errors: u64,
    /// Errors by cause (`http_401`, `connection`, `event_timeout`…), each
    /// with the first message seen.
    errors_by_kind: BTreeMap<String, (u64, String)>,
    cancels: u64,
    stale: u64,
    ttft_us: Vec<u64>,
    cancel_us: Vec<u64>,
    speaker_cancel_us: Vec<u64>,
    actions: [u64; 5],
    /// Cancels planned mid-generation that the turn's end beat.
    cancel_not_reached: u64,
    tool_results: u64,
    interrupts: u64,
    interrupt_us: Vec<u64>,
    /// Confirmed mode: speech started → `PlaybackPaused` in the driving task.
    pause_us: Vec<u64>,
    /// `Interrupted { heard_chars }` that disagreed with the reported playback.
    heard_mismatches: u64,
    orphan_calls: u64,
    chain: ChainTotals,
}

/// What the provider chain did, over all turns.
#[derive(Default)]
struct ChainTotals {
    fallbacks: u64,
    hedges_won: u64,
    hedge_cost_tokens: u64,
    duplicated_chars: u64,
    failures: HashMap<&'static str, u64>,
}

impl ChainTotals {
    fn add(&mut self, o: ChainTotals) {
        self.fallbacks += o.fallbacks;
        self.hedges_won += o.hedges_won;
        self.hedge_cost_tokens += o.hedge_cost_tokens;
        self.duplicated_chars += o.duplicated_chars;
        for (reason, n) in o.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }
}

/// Characters of `after` (text published after a mid-stream failure) that
/// restate `before` (what the turn had published): the longest run of whole
/// words at its start that appears, word for word, in `before`.
fn duplicated_chars(before: &str, after: &str) -> usize {
    let b: Vec<&str> = before.split_whitespace().collect();
    let a: Vec<&str> = after.split_whitespace().take(200).collect();
    (1..=a.len().min(b.len()))
        .rev()
        .find(|&k| b.windows(k).any(|w| w == &a[..k]))
        .map_or(0, |k| a[..k].join(" ").chars().count())
}

impl Totals {
    /// One error of `kind`.
    fn error(&mut self, kind: &str, message: impl FnOnce() -> String) {
        self.errors += 1;
        self.errors_by_kind
            .entry(kind.to_string())
            .or_insert_with(|| (0, message()))
            .0 += 1;
    }

    fn add(&mut self, o: Totals) {
        self.turns += o.turns;
        self.tokens += o.tokens;
        self.errors += o.errors;
        for (kind, (n, message)) in o.errors_by_kind {
            self.errors_by_kind.entry(kind).or_insert((0, message)).0 += n;
        }
        self.cancels += o.cancels;
        self.stale += o.stale;
        self.ttft_us.extend(o.ttft_us);
        self.cancel_us.extend(o.cancel_us);
        self.speaker_cancel_us.extend(o.speaker_cancel_us);
        for (a, b) in self.actions.iter_mut().zip(o.actions) {
            *a += b;
        }
        self.cancel_not_reached += o.cancel_not_reached;
        self.tool_results += o.tool_results;
        self.interrupts += o.interrupts;
        self.interrupt_us.extend(o.interrupt_us);
        self.pause_us.extend(o.pause_us);
        self.heard_mismatches += o.heard_mismatches;
        self.orphan_calls += o.orphan_calls;
        self.chain.add(o.chain);
    }
}

/// Bus invariants, summed over the sessions' checking subscribers.
#[derive(Default)]
struct Invariants {
    stale_events: AtomicU64,
    double_endings: AtomicU64,
    seq_violations: AtomicU64,
    lagged_events: AtomicU64,
}

/// The checking subscriber of one session: reads its bus until it closes.
async fn check_invariants(mut rx: BusReceiver, inv: Arc<Invariants>) {
    let bump = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    let mut last_seq: Option<u64> = None;
    let mut endings: HashMap<TurnId, u32> = HashMap::new();
    // Turns cancelled, failed or interrupted: nothing more of them may appear.
    let mut cut: HashSet<TurnId> = HashSet::new();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(BusRecvError::Lagged { missed }) => {
                inv.lagged_events.fetch_add(missed, Ordering::Relaxed);
                continue;
            }
            Err(_) => return,
        };
        if last_seq.is_some_and(|last| ev.seq <= last) {
            bump(&inv.seq_violations);
        }
        last_seq = Some(ev.seq);
        if ev.kind.is_user_side() {
            continue; // stamped with the latest turn, but not part of it
        }
        if let EventKind::TurnFinished(end) = &ev.kind {
            let n = endings.entry(ev.turn).or_default();
            *n += 1;
            if *n > 1 {
                bump(&inv.double_endings);
            }
            if end.is_abort() {
                cut.insert(ev.turn);
            }
            continue;
        }
        let ended = endings.contains_key(&ev.turn);
        let tail = matches!(
            ev.kind,
            EventKind::Speakable { .. }
                | EventKind::SpeechPlayed { .. }
                | EventKind::Interrupted { .. }
        );
        if cut.contains(&ev.turn) || (ended && !tail) {
            bump(&inv.stale_events);
        }
        if matches!(ev.kind, EventKind::Interrupted { .. }) {
            cut.insert(ev.turn);
        }
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A second subscriber standing in for a TTS actor: it measures the time from
/// the cancel (sent by the driver) to its own receipt of TurnFinished(Cancelled).
async fn speaker(
    mut rx: BusReceiver,
    cancel_at_ns: Arc<AtomicU64>,
    mut done: tokio::sync::oneshot::Receiver<()>,
) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = &mut done => return out,
            ev = rx.recv() => match ev {
                Ok(ev) if ev.kind == EventKind::TurnFinished(TurnEnd::Cancelled) => {
                    let at = cancel_at_ns.load(Ordering::SeqCst);
                    let now = epoch().elapsed().as_nanos() as u64;
                    out.push(now.saturating_sub(at) / 1000);
                }
                Ok(_) | Err(BusRecvError::Lagged { .. }) => {}
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

fn latency_json(sorted: &[u64]) -> serde_json::Value {
    json!({
        "p50": percentile(sorted, 0.5),
        "p99": percentile(sorted, 0.99),
        "max": sorted.last().copied().unwrap_or(0),
    })
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

/// How a session's turns are chosen.
enum Plan {
    /// Every turn cancelled after this many tokens (0: never).
    Fixed { cancel_after: usize },
    /// The soak: a random action per turn.
    Random(Rng),
}

/// `--interrupt confirmed`: barge-ins go through the turn-taking rules.
static CONFIRMED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Speech-started → pause-hook latencies (µs), confirmed mode.
static PAUSE_HOOK_US: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// Cancels the turn in flight, noting when for both latency measurements. In
/// confirmed mode the user starts speaking (the agent pauses at onset) and
/// an interim "wait stop" confirms the cut.
fn cancel(session: &SessionHandle, cancel_at_ns: &AtomicU64) -> Instant {
    let at = Instant::now();
    cancel_at_ns.store(epoch().elapsed().as_nanos() as u64, Ordering::SeqCst);
    if CONFIRMED.load(Ordering::Relaxed) {
        session.user_speech_started();
        session.user_transcript("wait stop", false);
    } else {
        let _ = session.cancel();
    }
    at
}

/// One session's conversation: `turns` user messages, each answered or cut.
async fn drive(session: SessionHandle, turns: usize, mut plan: Plan, totals: Arc<Mutex<Totals>>) {
    let mut rx = session.subscribe();
    let mut local = Totals::default();
    let cancel_at_ns = Arc::new(AtomicU64::new(0));
    if CONFIRMED.load(Ordering::Relaxed) {
        // Runs in the thread that decided the pause, before speech_started returns.
        let since = cancel_at_ns.clone();
        session.bus().on_pause(move |_| {
            let now = epoch().elapsed().as_nanos() as u64;
            let us = now.saturating_sub(since.load(Ordering::SeqCst)) / 1000;
            PAUSE_HOOK_US.lock().unwrap().push(us);
        });
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let speaker_task = tokio::spawn(speaker(session.subscribe(), cancel_at_ns.clone(), done_rx));
    let mut last_turn: Option<TurnId> = None;
    'turns: for t in 0..turns {
        let action = match &mut plan {
            Plan::Fixed { cancel_after: 0 } => Action::Finish { tool: false },
            Plan::Fixed { cancel_after } => Action::CancelMidStream {
                after_tokens: *cancel_after,
            },
            Plan::Random(rng) => Action::random(rng),
        };
        local.actions[action.index()] += 1;
        let message = if action.uses_tool() {
            format!("question {t}: what is the weather in Paris?")
        } else {
            format!("question {t}")
        };
        let sent = Instant::now();
        if let Err(e) = session.send_text(message) {
            local.error("send_refused", || format!("send_text refused: {e}"));
            break;
        }
        let mut turn: Option<TurnId> = None;
        let mut tokens = 0usize;
        let mut chars = 0usize;
        let mut turn_started = sent;
        let mut turn_text = String::new();
        // Text length at each failure after output (for duplicated_chars).
        let mut failed_at: Vec<usize> = Vec::new();
        let mut cancel_sent: Option<Instant> = None;
        let end = loop {
            let ev = match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
                Ok(Ok(ev)) => ev,
                Ok(Err(BusRecvError::Lagged { .. })) => continue, // counted by the bus metrics
                Ok(Err(_)) => {
                    local.error("bus_closed", || "the session's bus closed mid-turn".into());
                    break 'turns;
                }
                Err(_) => {
                    local.error("event_timeout", || {
                        format!("no event for {} s in a turn", EVENT_TIMEOUT.as_secs())
                    });
                    break 'turns;
                }
            };
            if ev.kind.is_user_side() {
                continue;
            }
            // The first event of a newer turn is ours (normally its TurnStarted;
            // after a lag, whatever came first). Older turns' tails are not.
            let ours = match turn {
                Some(t) => t == ev.turn,
                None if last_turn.is_none_or(|l| ev.turn > l) => {
                    turn = Some(ev.turn);
                    if ev.kind == EventKind::TurnStarted {
                        turn_started = Instant::now();
                    }
                    if action == Action::CancelBeforeFirstToken {
                        cancel_sent = Some(cancel(&session, &cancel_at_ns));
                    }
                    true
                }
                None => false,
            };
            if !ours {
                continue;
            }
            let cut_here = match ev.kind {
                EventKind::Token(text) => {
                    tokens += 1;
                    chars += text.chars().count();
                    turn_text.push_str(&text);
                    local.tokens += 1;
                    if tokens == 1 {
                        local
                            .ttft_us
                            .push(turn_started.elapsed().as_micros() as u64);
                    }
                    action
                        == (Action::CancelMidStream {
                            after_tokens: tokens,
                        })
                }
                EventKind::ToolCall(_) => {
                    action
                        == (Action::CancelToolRound {
                            after_result: false,
                        })
                }
                EventKind::ToolResult(_) => {
                    local.tool_results += 1;
                    action == (Action::CancelToolRound { after_result: true })
                }
                EventKind::TurnFinished(end) => break end,
                EventKind::PlaybackPaused { .. } => {
                    if let Some(at) = cancel_sent {
                        local.pause_us.push(at.elapsed().as_micros() as u64);
                    }
                    false
                }
                EventKind::ProviderSelected(choice) => {
                    match choice.reason {
                        SelectionReason::Fallback => local.chain.fallbacks += 1,
                        SelectionReason::Hedge => local.chain.hedges_won += 1,
                        _ => {}
                    }
                    false
                }
                EventKind::ProviderFailed(failure) => {
                    *local
                        .chain
                        .failures
                        .entry(failure.reason.label())
                        .or_default() += 1;
                    if failure.is_hedge_cost() {
                        local.chain.hedge_cost_tokens +=
                            failure.usage.map_or(0, |u| u.total_tokens);
                    }
                    if failure.after_output {
                        failed_at.push(turn_text.len());
                    }
                    false
                }
                _ => false,
            };
            if cut_here && cancel_sent.is_none() {
                cancel_sent = Some(cancel(&session, &cancel_at_ns));
            }
        };
        let turn = turn.expect("a TurnFinished names its turn");
        last_turn = Some(turn);
        for (i, &at) in failed_at.iter().enumerate() {
            let until = failed_at.get(i + 1).copied().unwrap_or(turn_text.len());
            local.chain.duplicated_chars +=
                duplicated_chars(&turn_text[..at], &turn_text[at..until]) as u64;
        }
        local.turns += 1;
        match end {
            TurnEnd::Cancelled => {
                if let Some(at) = cancel_sent {
                    local.cancel_us.push(at.elapsed().as_micros() as u64);
                }
                local.cancels += 1;
                // Anything of a cancelled turn arriving after its TurnFinished is
                // stale. A marker event (an ignored partial transcript) bounds the wait.
                let marker = session.user_transcript("", false);
                while let Ok(Ok(ev)) = tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
                    if ev.seq >= marker {
                        break;
                    }
                    if ev.turn == turn {
                        local.stale += 1;
                    }
                }
            }
            TurnEnd::Failed(text) => {
                let message = common::split_failure(&text).1.to_string();
                local.error(&common::failure_kind(&text), || message);
            }
            _ => {
                if action.cancels_generation() {
                    local.cancel_not_reached += 1;
                }
                if action == Action::CancelTailSpeech
                    && let Plan::Random(rng) = &mut plan
                    && chars >= 2
                {
                    // The TTS has played part of the reply when the user talks over it.
                    let heard = 1 + rng.below(chars as u64 - 1) as usize;
                    if let Err(e) = session.speech_played(turn, heard) {
                        local.error("speech_played_refused", || {
                            format!("speech_played refused: {e}")
                        });
                        continue;
                    }
                    let at = Instant::now();
                    session.user_speech_started();
                    let cut = tokio::time::timeout(EVENT_TIMEOUT, async {
                        loop {
                            match rx.recv().await {
                                Ok(ev) if ev.turn == turn => {
                                    if let EventKind::Interrupted { heard_chars } = ev.kind {
                                        return Some(heard_chars);
                                    }
                                }
                                Ok(_) | Err(BusRecvError::Lagged { .. }) => {}
                                Err(_) => return None,
                            }
                        }
                    })
                    .await;
                    match cut {
                        Ok(Some(heard_chars)) => {
                            local.interrupts += 1;
                            local.interrupt_us.push(at.elapsed().as_micros() as u64);
                            if heard_chars != heard {
                                local.heard_mismatches += 1;
                            }
                        }
                        _ => local.error("interrupt_not_seen", || {
                            "no Interrupted after a barge-in during tail speech".into()
                        }),
                    }
                }
            }
        }
    }
    // Every call in the committed history must have its output, whatever was cut.
    match session.context().await {
        Ok(ctx) => local.orphan_calls += ctx.calls_without_output().len() as u64,
        Err(e) => local.error("context_unavailable", || format!("context(): {e}")),
    }
    let _ = done_tx.send(());
    local.speaker_cancel_us = speaker_task.await.unwrap_or_default();
    totals.lock().await.add(local);
}

/// The in-process server: paced 40-word answers; a message asking for the
/// weather gets a tool call first (as the `mock_server` example does).
async fn embedded_server() -> std::io::Result<MockServer> {
    let words: Vec<String> = (0..40).map(|i| format!("word{i} ")).collect();
    let calls = AtomicU64::new(0);
    MockServer::start_with(
        move |req| {
            let last = req.last_message();
            let wants_tool =
                last["role"] == "user" && last["content"].to_string().contains("weather");
            if wants_tool && req.json().get("tools").is_some() {
                let id = format!("call_{}", calls.fetch_add(1, Ordering::Relaxed));
                return MockResponse::tool_calls(&[(&id, "get_weather", r#"{"city":"Paris"}"#)]);
            }
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            MockResponse::text_paced(&refs, Duration::from_millis(20))
        },
        false,
        0,
    )
    .await
}

/// The soak's tool: a weather lookup that takes a few ms.
fn weather_tool() -> ToolRegistry {
    let definition = ToolDefinition::new(
        "get_weather",
        "Current weather for a city.",
        json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
    );
    ToolRegistry::new().with_tool(Tool::new(definition, |args| async move {
        tokio::time::sleep(TOOL_TIME).await;
        Ok(json!({"city": args["city"], "temp_c": 18, "sky": "sunny"}).to_string())
    }))
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[cfg(feature = "nats")]
#[path = "loadgen/cluster.rs"]
mod cluster;

/// Cluster mode (`--nats`).
#[cfg(feature = "nats")]
async fn run_cluster(nats: String, a: &Args) -> ExitCode {
    let run = cluster::run(cluster::ClusterArgs {
        nats,
        sessions: a.sessions,
        turns: a.turns,
        cancel_after_tokens: a.cancel_after_tokens,
        turn_gap_ms: a.turn_gap_ms,
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

#[tokio::main]
async fn main() -> ExitCode {
    epoch();
    let (args, matches) = common::parse::<Args>();
    let fallbacks = args.chain.fallbacks::<Args>(&matches);
    if let Some(url) = args.nats.clone() {
        return run_cluster(url, &args).await;
    }
    match run(args, fallbacks).await {
        Ok(code) => code,
        Err(e) => common::fail(e),
    }
}

/// The in-process run: the summary on stdout; exit 1 after errors or a
/// broken soak invariant.
async fn run(args: Args, fallbacks: Vec<Fallback>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let _embedded;
    let primary = match args.provider.resolve("loadgen", Env::Ignore)? {
        Some(r) => r.provider,
        None => {
            let server = embedded_server().await?;
            let url = server.base_url();
            _embedded = server;
            OpenAiConfig::compatible(url).into()
        }
    };
    let config = ClientConfig {
        pool_max_idle_per_host: args.sessions.max(16),
        read_gap_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    let client = if args.chain_enabled() {
        args.chain_client(primary, &fallbacks, config)?
    } else {
        ChatClient::with_config(primary, config)?
    };
    // Barge-ins measure the immediate cut (the fastest path), or in confirmed
    // mode a pause at speech onset then a cut by a confirming interim.
    let mut settings = AgentSettings::new(LlmOptions::new("loadgen"));
    settings.interruption = InterruptionPolicy::immediate();
    if args.interrupt == Interrupt::Confirmed {
        CONFIRMED.store(true, Ordering::Relaxed);
        settings.interruption = InterruptionPolicy {
            min_pause: Duration::ZERO,
            resume_timeout: Duration::from_secs(60),
            ..InterruptionPolicy::default()
        };
    }
    let mut session_config = SessionConfig::new(client, settings);
    if args.random_barge_in() {
        session_config = session_config.with_tools(weather_tool());
        session_config.bus_capacity = SOAK_BUS_CAPACITY;
    }

    let tasks_before = alive_tasks();
    let supervisor = Supervisor::start(SupervisorConfig {
        max_sessions: args.sessions + args.idle_sessions + 1,
        ..SupervisorConfig::default()
    })
    .await?;

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
    let invariants = Arc::new(Invariants::default());
    let mut tasks = Vec::with_capacity(args.sessions);
    let mut checkers = Vec::with_capacity(args.sessions);
    let mut active = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let session = supervisor
            .start_session(format!("load-{i}"), session_config.clone())
            .await?;
        checkers.push(tokio::spawn(check_invariants(
            session.subscribe(),
            invariants.clone(),
        )));
        active.push(session);
    }
    let cpu_before = cpu_seconds();
    let load_started = Instant::now();
    for (i, session) in active.iter().enumerate() {
        let plan = if args.random_barge_in() {
            // A distinct, reproducible sequence of choices per session.
            Plan::Random(Rng::new((args.seed << 32) ^ i as u64))
        } else {
            Plan::Fixed {
                cancel_after: args.cancel_after_tokens,
            }
        };
        tasks.push(tokio::spawn(drive(
            session.clone(),
            args.turns,
            plan,
            totals.clone(),
        )));
    }
    for t in tasks {
        t.await?;
    }
    let wall_s = load_started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_before;
    let peak_rss = peak_rss_mb();

    // Teardown: once every session is stopped and every handle and client
    // dropped, each bus must close and no task of the run may be left.
    drop(idle);
    drop(active);
    drop(session_config);
    supervisor.shutdown().await;
    let deadline = tokio::time::Instant::now() + TEARDOWN_TIMEOUT;
    let mut buses_open = 0u64;
    for checker in checkers {
        let abort = checker.abort_handle();
        if tokio::time::timeout_at(deadline, checker).await.is_err() {
            abort.abort();
            buses_open += 1;
        }
    }
    // Connection tasks end shortly after their pool is dropped: give them until
    // the deadline, checking every few ms.
    while alive_tasks() > tasks_before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks_left = alive_tasks() as i64 - tasks_before as i64;

    let mut t = std::mem::take(&mut *totals.lock().await);
    t.ttft_us.sort_unstable();
    t.cancel_us.sort_unstable();
    t.speaker_cancel_us.sort_unstable();
    t.interrupt_us.sort_unstable();
    t.pause_us.sort_unstable();
    let mut pause_hook_us = std::mem::take(&mut *PAUSE_HOOK_US.lock().unwrap());
    pause_hook_us.sort_unstable();
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let stale_events = load(&invariants.stale_events);
    let double_endings = load(&invariants.double_endings);
    let seq_violations = load(&invariants.seq_violations);
    let invariants_ok = stale_events == 0
        && double_endings == 0
        && seq_violations == 0
        && t.orphan_calls == 0
        && tasks_left <= 0
        && buses_open == 0;
    let mut summary = json!({
        "sessions": args.sessions,
        "idle_sessions": args.idle_sessions,
        "turns": t.turns,
        "tokens": t.tokens,
        "errors": t.errors,
        "errors_by_kind": t.errors_by_kind.iter().map(|(k, (n, _))| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        "cancels": t.cancels,
        "ttft_ms": {
            "p50": percentile(&t.ttft_us, 0.5) as f64 / 1000.0,
            "p99": percentile(&t.ttft_us, 0.99) as f64 / 1000.0,
            "max": t.ttft_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        },
        "cancel_latency_us": latency_json(&t.cancel_us),
        "speaker_cancel_latency_us": latency_json(&t.speaker_cancel_us),
        "pause_latency_us": latency_json(&t.pause_us),
        "pause_hook_us": latency_json(&pause_hook_us),
        "stale_events_after_cancel": t.stale,
        "invariants": {
            "stale_events": stale_events,
            "double_endings": double_endings,
            "seq_violations": seq_violations,
            "orphan_calls": t.orphan_calls,
            "tasks_left": tasks_left,
            "buses_open_after_shutdown": buses_open,
            "lagged_events": load(&invariants.lagged_events),
        },
        "invariants_ok": invariants_ok,
        "cpu_s": (cpu_s * 100.0).round() / 100.0,
        "wall_s": (wall_s * 100.0).round() / 100.0,
        "idle_sessions_rss_mb": (idle_rss_mb * 10.0).round() / 10.0,
        "peak_rss_mb": (peak_rss * 10.0).round() / 10.0,
        "setup_s": ((load_started - started).as_secs_f64() * 100.0).round() / 100.0,
    });
    // Provider chain figures (0 without a chain).
    let failures: serde_json::Map<String, serde_json::Value> = t
        .chain
        .failures
        .iter()
        .map(|(reason, n)| (reason.to_string(), json!(n)))
        .collect();
    summary["fallbacks"] = json!(t.chain.fallbacks);
    summary["hedges_won"] = json!(t.chain.hedges_won);
    summary["hedge_cost_tokens"] = json!(t.chain.hedge_cost_tokens);
    summary["duplicated_chars"] = json!(t.chain.duplicated_chars);
    summary["provider_failures"] = json!(failures);
    if args.random_barge_in() {
        let actions: serde_json::Map<String, serde_json::Value> = ACTION_LABELS
            .iter()
            .zip(t.actions)
            .map(|(label, n)| (label.to_string(), json!(n)))
            .collect();
        summary["soak"] = json!({
            "seed": args.seed,
            "actions": actions,
            "cancel_not_reached": t.cancel_not_reached,
            "tool_results": t.tool_results,
            "interrupts": t.interrupts,
            "interrupt_latency_us": latency_json(&t.interrupt_us),
            "heard_chars_mismatches": t.heard_mismatches,
        });
    }
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    let mut code = ExitCode::SUCCESS;
    if t.errors > 0 {
        let causes: Vec<String> = t
            .errors_by_kind
            .iter()
            .map(|(kind, (n, message))| format!("{kind} ×{n} (first: {message})"))
            .collect();
        code = common::fail(format_args!("{} error(s): {}", t.errors, causes.join("; ")));
    }
    if args.random_barge_in() && !invariants_ok {
        code = common::fail("an invariant was broken (see \"invariants\")");
    }
    Ok(code)
}
