//! A randomized interleaving test of the turn lifecycle.
//!
//! Each case drives one session through a generated sequence of operations —
//! user messages, final transcripts, speech started, cancel, the provider's
//! stream producing text, tool calls, a finish or a failure, tool results,
//! playback progress, a panicking actor — with a generated number of
//! scheduler yields between them, on a single-thread runtime, so the actor's
//! mailbox, the stream tasks and the callers interleave differently in every
//! case (and identically for the same seed). The provider is scripted in
//! process: each request's stream is fed by the test, event by event —
//! including what a provider chain says (a hedge or a fallback request
//! starting, a provider dropped with its usage, the one selected) — and the
//! session's bus is small (2 to 64 events), so subscribers lag.
//!
//! After each sequence the checks of DESIGN.md's cancel semantics: the
//! committed history is valid on the OpenAI wire, no text is committed twice,
//! every turn ended exactly once, no event of a turn after its end, usage is
//! reported once per request sent, a turn's segments are its text (never
//! repeated), and user events only name turns subscribers saw start.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::llm::{
    ChatClient, ChatStream, FailureReason, FinishReason, LlmError, LlmOptions, OpenAiConfig,
    ProviderChoice, ProviderFailure, SelectionReason, StreamEvent, StreamSummary, ToolCall, Usage,
};
use tokio::sync::mpsc;

use crate::bus::{BusEvent, EventKind, ToolOutput};
use crate::ids::TurnId;
use crate::{AgentSettings, SessionConfig, SessionHandle, Supervisor, SupervisorConfig};

mod check;
use check::check;

const INJECTED: &str = "injected actor failure";

/// xorshift64*: small, seedable, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

type Feed = mpsc::UnboundedSender<Result<StreamEvent, LlmError>>;

/// One scripted stream (a round's request, and the requests a chain adds to
/// it): the test feeds its events.
struct Request {
    turn: TurnId,
    serial: u64,
    feed: Option<Feed>,
    calls: u32,
    /// The stream was polled: its first request was accounted and sent.
    polled: Arc<std::sync::atomic::AtomicBool>,
    /// Further requests the round task took from the stream (a chain's
    /// hedge or fallback announced by `RequestStarted`).
    more: Arc<std::sync::atomic::AtomicUsize>,
    /// A hedge is racing (announced, not yet settled).
    racing: bool,
}

#[derive(Default)]
struct Script {
    requests: Vec<Request>,
    next_serial: u64,
}

fn scripted(
    script: Arc<Mutex<Script>>,
    bus: crate::bus::SessionBus,
) -> crate::llm_actor::ScriptedStreams {
    Arc::new(move |_ctx: &ChatContext| {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let polled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let more = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (seen, taken) = (polled.clone(), more.clone());
        let source = futures_util::stream::poll_fn(move |cx| {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            let item = rx.poll_recv(cx);
            if let std::task::Poll::Ready(Some(Ok(StreamEvent::RequestStarted { .. }))) = &item {
                taken.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            item
        });
        let mut s = script.lock().unwrap();
        s.next_serial += 1;
        let serial = s.next_serial;
        s.requests.push(Request {
            turn: bus.current_turn().0,
            serial,
            feed: Some(tx),
            calls: 0,
            polled,
            more,
            racing: false,
        });
        ChatStream::from_events(source)
    })
}

#[derive(Debug, Clone, Copy)]
enum Op {
    SendText,
    FinalTranscript,
    Interim,
    SpeechStarted,
    SpeechEnded,
    Cancel,
    Token,
    Call,
    Finish,
    Fail,
    /// A chain starts a hedge request beside the primary.
    Hedge,
    /// A chain drops a provider (a hedge race decided, or a failure with a
    /// fallback taking over).
    Drop,
    ToolResult,
    SpeechPlayed,
    Restart,
    Yield,
}

fn pick(rng: &mut Rng) -> Op {
    match rng.below(100) {
        0..=6 => Op::SendText,
        7..=11 => Op::FinalTranscript,
        12..=17 => Op::Interim,
        18..=19 => Op::SpeechStarted,
        20..=21 => Op::SpeechEnded,
        22..=26 => Op::Cancel,
        27..=45 => Op::Token,
        46..=47 => Op::Hedge,
        48..=49 => Op::Drop,
        50..=57 => Op::Call,
        58..=67 => Op::Finish,
        68..=70 => Op::Fail,
        71..=80 => Op::ToolResult,
        81..=88 => Op::SpeechPlayed,
        89 => Op::Restart,
        _ => Op::Yield,
    }
}

async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// Runs one case; returns a description of the first broken invariant.
async fn run_case(supervisor: &Supervisor, seed: u64) -> Result<(), String> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    // Never contacted: the scripted streams replace the client's requests.
    let client = ChatClient::new(OpenAiConfig::compatible("http://127.0.0.1:9/v1")).unwrap();
    let mut settings = AgentSettings::new(LlmOptions::new("scripted"));
    settings.max_tool_rounds = 1 + rng.below(3) as u32;
    settings.interruption.cancel_on_user_message = rng.below(4) != 0;
    // Every interruption mode; timers short enough to fire inside a case.
    settings.interruption.mode = match rng.below(3) {
        0 => crate::turn_taking::InterruptionMode::Immediate,
        _ => crate::turn_taking::InterruptionMode::Confirmed,
    };
    settings.interruption.min_pause = std::time::Duration::from_micros(rng.below(2) * 500);
    settings.interruption.resume_timeout = std::time::Duration::from_micros(rng.below(2) * 500);
    if rng.below(2) == 0 {
        settings.preemptive = Some(crate::Preemptive {
            debounce: std::time::Duration::from_micros(rng.below(2) * 500),
        });
    }
    settings.max_context_items = None;
    let id = format!("case-{seed}");
    let mut config = SessionConfig::new(client, settings);
    config.bus_capacity = [2, 4, 16, 64][rng.below(4) as usize];
    let voiced = rng.below(2) == 0;
    config.speech_output = voiced;
    let session: SessionHandle = supervisor
        .start_session(id.as_str(), config)
        .await
        .map_err(|e| e.to_string())?;
    let script = Arc::new(Mutex::new(Script::default()));
    *session.core.script.lock().unwrap() = Some(scripted(script.clone(), session.core.bus.clone()));
    let events: Arc<Mutex<Vec<BusEvent>>> = Arc::default();
    let sink = events.clone();
    let tap = session
        .core
        .bus
        .add_tap(|_| true, move |ev| sink.lock().unwrap().push(ev.clone()));

    let mut token = 0u64;
    let mut dropped = 0u64;
    let mut restarts = 0;
    let ops = 20 + rng.below(40);
    for _ in 0..ops {
        let op = pick(&mut rng);
        match op {
            Op::SendText => {
                let _ = session.send_text(format!("q{}", rng.below(1000)));
            }
            Op::FinalTranscript => {
                // Sometimes a backchannel, which must not become a turn while
                // the agent speaks.
                // Sometimes a backchannel (not a turn while the agent speaks),
                // sometimes what an interim said (a speculation hit).
                let text = match rng.below(4) {
                    0 => "uh-huh".to_string(),
                    1 => "T7, please.".to_string(),
                    _ => format!("t{} please", rng.below(1000)),
                };
                session.user_transcript(text, true);
            }
            Op::Interim => {
                let text = ["mm", "wait", "wait stop", "t7 please"][rng.below(4) as usize];
                session.user_transcript(text, false);
            }
            Op::SpeechEnded => {
                session.user_speech_ended();
            }
            Op::SpeechStarted => {
                session.user_speech_started();
            }
            Op::Cancel => {
                let _ = session.cancel();
            }
            Op::Token | Op::Call | Op::Finish | Op::Fail | Op::Hedge | Op::Drop => {
                let mut s = script.lock().unwrap();
                let Some(latest) = s.requests.iter().rposition(|r| r.feed.is_some()) else {
                    continue;
                };
                let req = &mut s.requests[latest];
                let feed = req.feed.as_ref().unwrap();
                match op {
                    Op::Token => {
                        token += 1;
                        // Words and sentences, so segments are cut mid-turn.
                        let tail = [" ", ". ", ", ", ""][rng.below(4) as usize];
                        let _ = feed.send(Ok(StreamEvent::Token(format!("<{token}>{tail}"))));
                    }
                    Op::Call => {
                        let index = req.calls;
                        req.calls += 1;
                        let _ = feed.send(Ok(StreamEvent::ToolCall(ToolCall {
                            index,
                            id: format!("c{}-{index}", req.serial),
                            name: "f".into(),
                            arguments: "{}".into(),
                            valid_json: true,
                        })));
                    }
                    Op::Hedge if !req.racing => {
                        req.racing = true;
                        let _ = feed.send(Ok(StreamEvent::RequestStarted { index: 1 }));
                    }
                    Op::Hedge => {}
                    Op::Drop => {
                        // A hedge race decided, or a failed provider: its
                        // usage (sometimes unknown), then — for a failure —
                        // the fallback's request.
                        let failed = !req.racing;
                        req.racing = false;
                        dropped += 1;
                        let usage = (rng.below(3) != 0).then(|| Usage {
                            prompt_tokens: 2_000_000 + dropped,
                            completion_tokens: 1,
                            total_tokens: 2_000_001 + dropped,
                            ..Usage::default()
                        });
                        let _ = feed.send(Ok(StreamEvent::ProviderFailed(ProviderFailure {
                            index: 0,
                            label: Arc::from("p"),
                            base_url: Arc::from("http://127.0.0.1:9/v1"),
                            reason: if failed {
                                FailureReason::Error {
                                    kind: "http",
                                    message: "500".into(),
                                }
                            } else {
                                FailureReason::HedgeLost
                            },
                            after_output: false,
                            usage,
                        })));
                        if failed {
                            let _ = feed.send(Ok(StreamEvent::RequestStarted { index: 1 }));
                        }
                        let _ = feed.send(Ok(StreamEvent::ProviderSelected(ProviderChoice {
                            index: 1,
                            label: Arc::from("q"),
                            base_url: Arc::from("http://127.0.0.1:9/v1"),
                            reason: if failed {
                                SelectionReason::Fallback
                            } else {
                                SelectionReason::Hedge
                            },
                            continuation: false,
                        })));
                    }
                    Op::Finish => {
                        let reason = if req.calls > 0 {
                            FinishReason::ToolCalls
                        } else {
                            FinishReason::Stop
                        };
                        // Some providers never report usage: the runtime estimates it.
                        if rng.below(4) != 0 {
                            let _ = feed.send(Ok(StreamEvent::Usage(Usage {
                                prompt_tokens: 1_000_000 + req.serial,
                                completion_tokens: 1,
                                total_tokens: 1_000_001 + req.serial,
                                ..Usage::default()
                            })));
                        }
                        let _ = feed.send(Ok(StreamEvent::Finished(StreamSummary {
                            reason: Some(reason),
                            saw_done: true,
                            attempts: 1,
                        })));
                        req.feed = None;
                    }
                    _ => req.feed = None, // EOF without a finish: the request failed
                }
            }
            Op::ToolResult => {
                let pending: Vec<(TurnId, String)> = {
                    let evs = events.lock().unwrap();
                    let answered: HashSet<&str> = evs
                        .iter()
                        .filter_map(|e| match &e.kind {
                            EventKind::ToolResult(o) => Some(o.call_id.as_str()),
                            _ => None,
                        })
                        .collect();
                    evs.iter()
                        .filter_map(|e| match &e.kind {
                            EventKind::ToolCall(c) if !answered.contains(c.id.as_str()) => {
                                Some((e.turn, c.id.clone()))
                            }
                            _ => None,
                        })
                        .collect()
                };
                if !pending.is_empty() {
                    let (turn, call_id) = pending[rng.below(pending.len() as u64) as usize].clone();
                    let _ = session.submit_tool_result(
                        turn,
                        ToolOutput {
                            call_id: call_id.clone(),
                            name: "f".into(),
                            output: format!("result of {call_id}"),
                            is_error: false,
                        },
                    );
                }
            }
            Op::SpeechPlayed => {
                let (turn, _) = session.core.bus.current_turn();
                let chars = session
                    .core
                    .bus
                    .turn_text_since(turn, 0)
                    .map_or(0, |(t, _)| t.chars().count());
                let _ = session.speech_played(turn, rng.below(chars as u64 + 2) as usize);
            }
            Op::Restart if restarts < 2 => {
                restarts += 1;
                let _ = session.update_settings(|_| std::panic::panic_any(INJECTED));
            }
            Op::Restart => {}
            Op::Yield => yields(1 + rng.below(8)).await,
        }
        yields(rng.below(3)).await;
    }

    // Quiesce: cut whatever is in flight until the actor is idle and nothing
    // is queued behind it.
    for _ in 0..50 {
        let _ = session.cancel();
        yields(20).await;
        if session.context().await.is_ok() && !session.core.bus.current_turn().1 {
            yields(20).await;
            if !session.core.bus.current_turn().1 {
                break;
            }
        }
    }
    let committed = session.context().await.map_err(|e| e.to_string())?;
    session.core.bus.remove_tap(tap);
    supervisor
        .stop_session(session.id())
        .await
        .map_err(|e| e.to_string())?;
    let events = std::mem::take(&mut *events.lock().unwrap());
    STATS.with(|st| {
        let mut st = st.borrow_mut();
        for ev in &events {
            *st.entry(match &ev.kind {
                EventKind::TurnFinished(end) => end.label(),
                other => other.name(),
            })
            .or_default() += 1;
        }
    });
    let script = std::mem::take(&mut *script.lock().unwrap());
    check(&committed, &events, &script, voiced).map_err(|e| {
        format!(
            "{e}\n  history: {:?}\n  events: {:?}",
            shape(&committed),
            events
                .iter()
                .map(|e| (e.turn.0, e.kind.name()))
                .collect::<Vec<_>>()
        )
    })
}

fn shape(ctx: &ChatContext) -> Vec<String> {
    ctx.items
        .iter()
        .map(|i| match i {
            ChatItem::Message(m) if m.role == Role::User => format!("u:{}", m.text_content()),
            ChatItem::Message(m) => format!(
                "a{}:{}",
                if m.interrupted { "*" } else { "" },
                m.text_content()
            ),
            ChatItem::FunctionCall(c) => format!("call:{}", c.call_id),
            ChatItem::FunctionCallOutput(o) => format!("out:{}", o.call_id),
            _ => "?".into(),
        })
        .collect()
}

thread_local! {
    static STATS: std::cell::RefCell<std::collections::BTreeMap<&'static str, u64>> = Default::default();
}

#[test]
fn random_interleavings_keep_the_lifecycle_invariants() {
    let cases: u64 = std::env::var("COLLOQUY_INTERLEAVING_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let first: u64 = std::env::var("COLLOQUY_INTERLEAVING_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    // The injected actor failures are expected panics: keep their reports out
    // of the output, and every other panic's in.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<&str>()
            .is_some_and(|m| *m == INJECTED);
        if !injected {
            default_hook(info);
        }
    }));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let supervisor = Supervisor::start(SupervisorConfig::default()).await.unwrap();
        for seed in first..first + cases {
            if let Err(e) = run_case(&supervisor, seed).await {
                panic!("seed {seed} (rerun: COLLOQUY_INTERLEAVING_SEED={seed} COLLOQUY_INTERLEAVING_CASES=1): {e}");
            }
        }
        supervisor.shutdown().await;
    });
    // What the cases exercised (shown with --nocapture).
    STATS.with(|st| eprintln!("interleavings: {cases} cases, events: {:?}", st.borrow()));
}
