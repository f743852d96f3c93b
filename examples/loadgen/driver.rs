//! One session's conversation: its driver sends the turns and cuts them as the
//! plan says, measuring each; a second subscriber stands in for a TTS actor
//! and measures the cancel latency it sees.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use colloquy::llm::SelectionReason;
use colloquy_actors::bus::{BusReceiver, BusRecvError, EventKind, TurnEnd};
use colloquy_actors::{SessionHandle, TurnId};
use tokio::sync::Mutex;

use crate::EVENT_TIMEOUT;
use crate::common;
use crate::plan::{Action, Plan};
use crate::totals::{Totals, duplicated_chars};

pub(crate) fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// A second subscriber standing in for a TTS actor: it measures the time from
/// the cancel (sent by the driver) to its own receipt of TurnFinished(Cancelled).
pub(crate) async fn speaker(
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

/// `--interrupt confirmed`: barge-ins go through the turn-taking rules.
pub(crate) static CONFIRMED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Speech-started → pause-hook latencies (µs), confirmed mode.
pub(crate) static PAUSE_HOOK_US: std::sync::Mutex<Vec<u64>> = std::sync::Mutex::new(Vec::new());

/// Cancels the turn in flight, noting when for both latency measurements. In
/// confirmed mode the user starts speaking (the agent pauses at onset) and
/// an interim "wait stop" confirms the cut.
pub(crate) fn cancel(session: &SessionHandle, cancel_at_ns: &AtomicU64) -> Instant {
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
pub(crate) async fn drive(
    session: SessionHandle,
    turns: usize,
    mut plan: Plan,
    totals: Arc<Mutex<Totals>>,
) {
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
                    // The turn's latency report comes after its end by design.
                    if ev.turn == turn && !ev.kind.is_report() {
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
                    if CONFIRMED.load(Ordering::Relaxed) {
                        // Speech alone only pauses: the words confirm the cut.
                        session.user_transcript("wait stop", false);
                    }
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
