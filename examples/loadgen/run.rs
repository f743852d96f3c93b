//! The in-process run: the client and the sessions, the load, the teardown
//! checks, and the summary.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, SessionConfig, Supervisor, SupervisorConfig,
};
use serde_json::json;
use tokio::sync::Mutex;

use crate::common::{self, Env, Fallback};
use crate::driver::{CONFIRMED, PAUSE_HOOK_US, drive};
use crate::invariants::{Invariants, check_invariants};
use crate::plan::{ACTION_LABELS, Plan, Rng};
use crate::server::{embedded_server, weather_tool};
use crate::stats::{alive_tasks, cpu_seconds, latency_json, peak_rss_mb, percentile, rss_mb};
use crate::totals::Totals;
use crate::{Args, Interrupt, SOAK_BUS_CAPACITY, TEARDOWN_TIMEOUT};

/// The in-process run: the summary on stdout; exit 1 after errors or a
/// broken soak invariant.
pub(crate) async fn run(
    args: Args,
    fallbacks: Vec<Fallback>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
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
    crate::plot::record("time to first token", &t.ttft_us);
    crate::plot::record("cancel → TurnFinished", &t.cancel_us);
    crate::plot::record("cancel → speaker silent", &t.speaker_cancel_us);
    crate::plot::record("speech → PlaybackPaused", &t.pause_us);
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
