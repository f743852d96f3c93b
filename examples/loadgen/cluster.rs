//! `loadgen --nats URL`: the sessions are placed on the cluster's workers
//! (`examples/worker.rs`) instead of in-process, and driven over NATS. It logs
//! in to NATS with the worker's flags and variables (`--nats-user`,
//! `--nats-password-file`, `--nats-nkey-file`, `--nats-creds`, `--nats-ca`, …;
//! docs/cluster.md, "Authentication and TLS").
//!
//! Each session sends `--turns` messages (`question 0`, `question 1`, …),
//! pausing `--turn-gap-ms` between turns, cancelling each turn after
//! `--cancel-after-tokens` tokens when set. The summary adds to the usual
//! figures:
//!
//! - `workers_seen`: the workers that published the sessions' events;
//! - `sessions_resumed`: `resumed` events (a worker took a session over);
//! - `failover_ms{p50,p95,max}`: from the last event of the lost worker to the
//!   first turn start on the new one (the session accepting a new turn);
//! - `turns_lost_in_flight`: turns that ended `failed` ("worker lost"), or
//!   whose start never came because their worker died first;
//! - `lost_committed_turns`: turns that finished normally on the bus but are
//!   missing from the session's committed history, fetched at the end (the
//!   question followed by exactly the answer seen); must be 0;
//! - `cancel_latency_us` (from `cancel()` to receiving `TurnFinished(Cancelled)`)
//!   and `stale_events_after_cancel`.
//!
//! With `--speech-only` the sessions publish speech and lifecycle only (a
//! segmenter on, `event_classes: ["speech"]`) and are read as a TTS service
//! reads them: a turn's answer is its speakables (up to the last), and no
//! token is encoded at the workers nor sent (`tokens` is 0). Nothing reports
//! playback, so no reply counts as heard: `lost_committed_turns` is not
//! checked.
//!
//! The run exits 1 when `lost_committed_turns` or `stale_events_after_cancel`
//! is not 0. The sessions are closed at the end (leases and checkpoints deleted).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colloquy::context::{ChatItem, Role};
use colloquy_actors::TurnId;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::{
    ClusterClient, EventClass, EventClasses, NatsOptions, RemoteConfig, RemoteEventKind,
    RemoteEvents, RemoteSession, SessionSpec, connect_with,
};
use futures_util::StreamExt;
use serde_json::json;
use tokio::sync::Mutex;

use super::{cpu_seconds, latency_json, percentile};

/// What the cluster mode needs of the command line.
pub(crate) struct ClusterArgs {
    pub(crate) nats: String,
    /// The NATS login and TLS (`--nats-user`, `--nats-password-file`, …).
    pub(crate) login: NatsOptions,
    pub(crate) sessions: usize,
    pub(crate) turns: usize,
    pub(crate) cancel_after_tokens: usize,
    pub(crate) turn_gap_ms: u64,
    pub(crate) speech_only: bool,
    pub(crate) json: bool,
}

/// Bounds every wait: a hang becomes an error, not a stuck run.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a turn start is waited for after a `resumed` (see `drive`).
const RESUMED_WAIT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Totals {
    turns: u64,
    tokens: u64,
    errors: u64,
    cancels: u64,
    stale: u64,
    ttft_us: Vec<u64>,
    cancel_us: Vec<u64>,
    failover_us: Vec<u64>,
    resumed: u64,
    lost_in_flight: u64,
    lost_committed: u64,
    workers: BTreeSet<String>,
}

impl Totals {
    fn add(&mut self, o: Totals) {
        self.turns += o.turns;
        self.tokens += o.tokens;
        self.errors += o.errors;
        self.cancels += o.cancels;
        self.stale += o.stale;
        self.ttft_us.extend(o.ttft_us);
        self.cancel_us.extend(o.cancel_us);
        self.failover_us.extend(o.failover_us);
        self.resumed += o.resumed;
        self.lost_in_flight += o.lost_in_flight;
        self.lost_committed += o.lost_committed;
        self.workers.extend(o.workers);
    }
}

/// Per session: which worker spoke last and when, and a failover in progress.
#[derive(Default)]
struct Watch {
    last_by_worker: HashMap<String, Instant>,
    /// (the lost worker, its last event) until a turn starts elsewhere.
    failover: Option<(String, Instant)>,
}

impl Watch {
    /// Notes an event; returns whether it is a `resumed`.
    fn see(&mut self, worker: &str, kind: &RemoteEventKind, t: &mut Totals) -> bool {
        let now = Instant::now();
        t.workers.insert(worker.to_string());
        if let RemoteEventKind::Resumed {
            previous_worker, ..
        } = kind
        {
            t.resumed += 1;
            let previous = previous_worker.clone().unwrap_or_default();
            let since = self.last_by_worker.get(&previous).copied().unwrap_or(now);
            self.failover = Some((previous, since));
            self.last_by_worker.insert(worker.to_string(), now);
            return true;
        }
        if matches!(kind, RemoteEventKind::Bus(EventKind::TurnStarted))
            && let Some((lost, since)) = &self.failover
            && lost != worker
        {
            t.failover_us.push(since.elapsed().as_micros() as u64);
            self.failover = None;
        }
        self.last_by_worker.insert(worker.to_string(), now);
        false
    }
}

/// How one turn went.
enum Outcome {
    Ended(TurnId, TurnEnd, String),
    /// The session was resumed elsewhere before the turn ended: its worker
    /// died between taking the message and starting the turn (or, rarely,
    /// between storing the turn and publishing its end).
    Lost,
}

async fn drive(
    session: RemoteSession,
    mut rx: RemoteEvents,
    args: Arc<ClusterArgs>,
    totals: Arc<Mutex<Totals>>,
) {
    let mut t = Totals::default();
    let mut watch = Watch::default();
    let mut last_turn = TurnId(0);
    // Questions whose answer finished normally, with the answer seen.
    let mut finished: Vec<(String, String)> = Vec::new();
    'turns: for i in 0..args.turns {
        if i > 0 && args.turn_gap_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.turn_gap_ms)).await;
        }
        let question = format!("question {i}");
        let sent = Instant::now();
        if let Err(e) = session.send_text(question.clone()).await {
            eprintln!("loadgen: {}: send_text: {e}", session.id());
            t.errors += 1;
            break;
        }
        let mut turn: Option<TurnId> = None;
        let mut text = String::new();
        let mut tokens = 0usize;
        let mut cancel_sent: Option<Instant> = None;
        // Speech only: the turn's end, then its last speakable (tail speech
        // may follow the end).
        let mut ended: Option<(TurnId, TurnEnd)> = None;
        let mut spoken = !args.speech_only;
        // After a `resumed` with no turn of ours started, the new owner may
        // not have our message (its old owner took it and died): a turn start
        // is waited for a little while only.
        let mut wait = EVENT_TIMEOUT;
        let outcome = loop {
            let ev = match tokio::time::timeout(wait, rx.recv()).await {
                Ok(Some(ev)) => ev,
                Err(_) if wait == RESUMED_WAIT => break Outcome::Lost,
                _ => {
                    t.errors += 1;
                    break 'turns;
                }
            };
            if watch.see(&ev.worker, &ev.kind, &mut t) {
                if turn.is_some() {
                    break Outcome::Lost;
                }
                wait = RESUMED_WAIT;
                continue;
            }
            let RemoteEventKind::Bus(kind) = ev.kind else {
                continue;
            };
            if kind.is_user_side() || kind.is_report() {
                continue;
            }
            // The first event of a newer turn is ours (normally its start).
            match turn {
                Some(tn) if tn != ev.turn => continue,
                None if ev.turn <= last_turn => continue,
                None => turn = Some(ev.turn),
                _ => {}
            }
            match kind {
                EventKind::Token(tok) => {
                    tokens += 1;
                    t.tokens += 1;
                    text.push_str(&tok);
                    if tokens == 1 {
                        t.ttft_us.push(sent.elapsed().as_micros() as u64);
                    }
                    if args.cancel_after_tokens > 0
                        && tokens == args.cancel_after_tokens
                        && cancel_sent.is_none()
                    {
                        cancel_sent = Some(Instant::now());
                        if let Err(e) = session.cancel().await {
                            eprintln!("loadgen: {}: cancel: {e}", session.id());
                            t.errors += 1;
                        }
                    }
                }
                EventKind::Speakable { text: said, last } => {
                    text.push_str(&said);
                    spoken |= last;
                }
                EventKind::TurnFinished(end) => {
                    if !args.speech_only || end.is_abort() {
                        break Outcome::Ended(ev.turn, end, text);
                    }
                    ended = Some((ev.turn, end));
                }
                _ => {}
            }
            if spoken && let Some((turn, end)) = ended.take() {
                break Outcome::Ended(turn, end, text);
            }
        };
        t.turns += 1;
        let (turn, end, text) = match outcome {
            Outcome::Ended(turn, end, text) => (turn, end, text),
            Outcome::Lost => {
                t.lost_in_flight += 1;
                continue;
            }
        };
        last_turn = turn;
        match end {
            TurnEnd::Cancelled => {
                t.cancels += 1;
                if let Some(at) = cancel_sent {
                    t.cancel_us.push(at.elapsed().as_micros() as u64);
                }
                // Anything of the cancelled turn after its end is stale; a
                // marker event bounds the wait.
                match session.user_transcript("", false).await {
                    Ok(marker) => loop {
                        match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
                            Ok(Some(ev)) => {
                                watch.see(&ev.worker, &ev.kind, &mut t);
                                if ev.seq >= marker {
                                    break;
                                }
                                // User events and the turn's latency report are
                                // not part of the turn's stream.
                                let outside =
                                    ev.bus().is_some_and(|k| k.is_user_side() || k.is_report());
                                if ev.turn == turn && !outside {
                                    t.stale += 1;
                                }
                            }
                            _ => {
                                t.errors += 1;
                                break;
                            }
                        }
                    },
                    Err(e) => {
                        eprintln!("loadgen: {}: marker: {e}", session.id());
                        t.errors += 1;
                    }
                }
            }
            TurnEnd::Failed(why) if &*why == colloquy_actors::cluster::wire::WORKER_LOST => {
                t.lost_in_flight += 1;
                // The new owner publishes `resumed` right after: take it now,
                // so it is not mistaken for a failover of the next turn.
                loop {
                    match tokio::time::timeout(EVENT_TIMEOUT, rx.recv()).await {
                        Ok(Some(ev)) => {
                            if watch.see(&ev.worker, &ev.kind, &mut t) {
                                break;
                            }
                        }
                        _ => {
                            t.errors += 1;
                            break 'turns;
                        }
                    }
                }
            }
            TurnEnd::Failed(why) => {
                eprintln!("loadgen: {}: turn failed: {why}", session.id());
                t.errors += 1;
            }
            _ => finished.push((question, text)),
        }
    }
    // Every turn that finished normally must be in the committed history:
    // its question, then exactly the answer seen. (Not with --speech-only:
    // nothing reports playback, and a reply nobody heard is not committed.)
    if args.speech_only {
        finished.clear();
    }
    match session.context().await {
        Ok(ctx) => {
            let messages: Vec<(Role, String)> = ctx
                .items
                .iter()
                .filter_map(|i| match i {
                    ChatItem::Message(m) => Some((m.role, m.text_content())),
                    _ => None,
                })
                .collect();
            for (question, answer) in &finished {
                let found = messages.windows(2).any(|w| {
                    w[0] == (Role::User, question.clone())
                        && w[1] == (Role::Assistant, answer.clone())
                });
                if !found {
                    eprintln!(
                        "loadgen: {}: {question:?} and its answer ({} bytes) not in the committed history",
                        session.id(),
                        answer.len()
                    );
                    t.lost_committed += 1;
                }
            }
        }
        Err(e) => {
            eprintln!("loadgen: {}: context: {e}", session.id());
            t.errors += 1;
        }
    }
    if let Err(e) = session.close().await {
        eprintln!("loadgen: {}: close: {e}", session.id());
        t.errors += 1;
    }
    totals.lock().await.add(t);
}

/// Runs the cluster mode and prints its summary; `Ok(false)` when an
/// invariant was broken.
pub(crate) async fn run(args: ClusterArgs) -> Result<bool, Box<dyn std::error::Error>> {
    let nats = connect_with(&args.nats, "loadgen", &args.login).await?;
    let client = ClusterClient::with_config(
        nats,
        RemoteConfig {
            request_timeout: Duration::from_secs(20),
            unavailable_timeout: Duration::from_secs(30),
            placement_timeout: Duration::from_secs(10),
            ..RemoteConfig::default()
        },
    )?;
    let args = Arc::new(args);
    let started = Instant::now();
    let run_id = std::process::id();
    // Placement, 32 at a time; each session subscribes before its first input.
    let placed: Vec<_> = futures_util::stream::iter(0..args.sessions)
        .map(|i| {
            let client = client.clone();
            let args = args.clone();
            async move {
                let spec = if args.speech_only {
                    SessionSpec {
                        segmenter: true,
                        event_classes: Some(vec![EventClass::Speech]),
                        ..SessionSpec::default()
                    }
                } else {
                    SessionSpec::default()
                };
                let s = client.place(format!("load-{run_id}-{i}"), spec).await?;
                let rx = if args.speech_only {
                    s.subscribe_to(EventClasses::speech()).await?
                } else {
                    s.subscribe().await?
                };
                Ok::<_, colloquy_actors::cluster::ClusterError>((s, rx))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut sessions = Vec::with_capacity(placed.len());
    for p in placed {
        sessions.push(p?);
    }
    let setup_s = started.elapsed().as_secs_f64();
    let totals = Arc::new(Mutex::new(Totals::default()));
    let cpu_before = cpu_seconds();
    let load_started = Instant::now();
    let tasks: Vec<_> = sessions
        .into_iter()
        .map(|(s, rx)| tokio::spawn(drive(s, rx, args.clone(), totals.clone())))
        .collect();
    for task in tasks {
        task.await?;
    }
    let wall_s = load_started.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu_before;
    let mut t = std::mem::take(&mut *totals.lock().await);
    t.ttft_us.sort_unstable();
    t.cancel_us.sort_unstable();
    t.failover_us.sort_unstable();
    let ms = |us: u64| (us as f64 / 10.0).round() / 100.0;
    crate::plot::record("time to first token", &t.ttft_us);
    crate::plot::record("cancel → TurnFinished", &t.cancel_us);
    let summary = json!({
        "mode": "cluster",
        "sessions": args.sessions,
        "turns": t.turns,
        "tokens": t.tokens,
        "errors": t.errors,
        "cancels": t.cancels,
        "ttft_ms": {"p50": ms(percentile(&t.ttft_us, 0.5)), "p99": ms(percentile(&t.ttft_us, 0.99))},
        "cancel_latency_us": latency_json(&t.cancel_us),
        "stale_events_after_cancel": t.stale,
        "workers_seen": t.workers.iter().collect::<Vec<_>>(),
        "sessions_resumed": t.resumed,
        "failover_ms": {
            "p50": ms(percentile(&t.failover_us, 0.5)),
            "p95": ms(percentile(&t.failover_us, 0.95)),
            "max": ms(t.failover_us.last().copied().unwrap_or(0)),
        },
        "turns_lost_in_flight": t.lost_in_flight,
        "lost_committed_turns": t.lost_committed,
        "cpu_s": (cpu_s * 100.0).round() / 100.0,
        "wall_s": (wall_s * 100.0).round() / 100.0,
        "setup_s": (setup_s * 100.0).round() / 100.0,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(t.lost_committed == 0 && t.stale == 0)
}
