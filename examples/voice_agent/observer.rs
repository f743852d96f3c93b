//! The observer: reads the session's bus, prints each event with its measured
//! latency (the bus hooks stamp when pauses and cuts ran), counts failed
//! turns, and publishes what it saw for the run's ending rule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use colloquy_actors::TurnId;
use colloquy_actors::bus::{
    BusEvent, BusReceiver, BusRecvError, EventKind, SpeculationOutcome, TurnEnd,
};
use colloquy_actors::speech::{SpeakerStatus, SttEvent};
use serde_json::json;
use tokio::sync::{oneshot, watch};

use crate::FINISH_GUARD;
use crate::common;
use crate::output::{Out, lock};

/// When things happened, for the timeline's latencies: written by the driver
/// (what the user did) and by the bus hooks (synchronous, in the deciding thread).
#[derive(Default)]
pub(crate) struct Marks {
    /// The last STT event sent, and when.
    pub(crate) last_stt: Option<(Instant, SttEvent)>,
    pub(crate) speech_started: Option<Instant>,
    pub(crate) speech_ended: Option<Instant>,
}

/// Pauses and cuts as their hooks saw them: how many, and when the last one ran.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Hooked {
    pub(crate) pauses: u64,
    pub(crate) paused_at: Option<Instant>,
    pub(crate) cuts: u64,
    pub(crate) cut_at: Option<Instant>,
}

/// What the observer has seen, for the run's ending rule.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Seen {
    /// Seq of the last event read.
    pub(crate) seq: u64,
    /// Seq of the last final transcript that will start a turn.
    pub(crate) last_final: u64,
    /// Seq of the last `TurnStarted`.
    pub(crate) last_started: u64,
    /// The last turn started, and whether its generation is still going.
    pub(crate) turn: TurnId,
    pub(crate) open: bool,
}

/// Reads the bus and prints the run; publishes what it saw for the ending rule.
pub(crate) struct Observer {
    pub(crate) out: Arc<Out>,
    pub(crate) marks: Arc<Mutex<Marks>>,
    /// Stamped by hooks that run after the speaker's.
    pub(crate) hooked: watch::Receiver<Hooked>,
    /// Pauses and cuts read from the bus so far.
    pub(crate) pauses: u64,
    pub(crate) cuts: u64,
    pub(crate) seen_tx: watch::Sender<Seen>,
    pub(crate) seen: Seen,
    /// Playback position per turn (for a cut's `heard_chars`).
    pub(crate) heard: HashMap<TurnId, usize>,
    /// Usage per turn, for the timeline.
    pub(crate) turn_usage: HashMap<TurnId, (u64, u64, bool)>,
    /// When the last final transcript arrived, until the reply's first words.
    pub(crate) final_at: Option<Instant>,
    pub(crate) hit: bool,
    pub(crate) backchannel: bool,
    /// The failed turns' messages.
    pub(crate) failures: Vec<String>,
}

impl Observer {
    /// Prints events until `stop` fires, then what is already queued; returns
    /// the failed turns' messages.
    pub(crate) async fn run(
        mut self,
        mut rx: BusReceiver,
        mut stop: oneshot::Receiver<()>,
    ) -> Vec<String> {
        loop {
            let received = tokio::select! {
                biased;
                r = rx.recv() => r,
                _ = &mut stop => {
                    while let Ok(Some(ev)) = rx.try_recv() {
                        self.event(ev).await;
                    }
                    return self.failures;
                }
            };
            match received {
                Ok(ev) => self.event(ev).await,
                Err(BusRecvError::Lagged { missed }) => {
                    self.out.line(&format!("(observer missed {missed} events)"))
                }
                Err(_) => return self.failures,
            }
        }
    }

    /// The hooks' view once they have run for `pauses` pauses and `cuts`
    /// cuts (they run right after the event is published, in the thread that
    /// decided; the observer may read the event first).
    pub(crate) async fn hooked(&mut self) -> Option<Hooked> {
        let (pauses, cuts) = (self.pauses, self.cuts);
        let ran = self
            .hooked
            .wait_for(|h| h.pauses >= pauses && h.cuts >= cuts);
        match tokio::time::timeout(Duration::from_millis(500), ran).await {
            Ok(Ok(h)) => Some(*h),
            _ => None,
        }
    }

    pub(crate) async fn event(&mut self, ev: BusEvent) {
        let now = Instant::now();
        if let EventKind::TurnLatency(r) = &ev.kind {
            self.out.json("turn_latency", r.to_json());
        }
        let hooked = match ev.kind {
            EventKind::Interrupted { .. } | EventKind::TurnFinished(TurnEnd::Cancelled) => {
                self.cuts += 1;
                self.hooked().await
            }
            EventKind::PlaybackPaused { .. } => {
                self.pauses += 1;
                self.hooked().await
            }
            _ => None,
        };
        let cut_at = hooked.and_then(|h| h.cut_at);
        let out = &*self.out;
        let turn = ev.turn;
        let n = turn.0;
        self.seen.seq = ev.seq;
        match &ev.kind {
            EventKind::UserSpeechStarted => out.line("USER starts speaking…"),
            EventKind::UserSpeechEnded => out.line("USER stops speaking"),
            EventKind::UserTranscript { text, is_final, .. } => {
                out.json("user", json!({"text": &**text, "final": is_final}));
                if *is_final {
                    self.seen.last_final = ev.seq;
                    self.final_at = Some(now);
                    self.hit = false;
                    out.line(&format!("USER: {text}"));
                } else {
                    out.line(&format!("USER (interim): {text}"));
                }
            }
            EventKind::Backchannel { text } => {
                out.json("backchannel", json!({"text": &**text}));
                self.backchannel = true;
                out.line(&format!(
                    "BACKCHANNEL \"{text}\": acknowledged, not a turn — the agent goes on"
                ));
            }
            EventKind::PlaybackPaused { .. } => {
                out.json("paused", json!({}));
                self.backchannel = false;
                let m = lock(&self.marks);
                let after = match (m.speech_started, hooked.and_then(|h| h.paused_at)) {
                    (Some(s), Some(p)) if p >= s => {
                        format!(
                            " {} ms after the user started speaking",
                            (p - s).as_millis()
                        )
                    }
                    _ => String::new(),
                };
                drop(m);
                out.line(&format!(
                    "PAUSED{after}: the speaker holds its place; generation goes on"
                ));
            }
            EventKind::PlaybackResumed { heard_chars } => {
                out.json("resumed", json!({}));
                let ended = lock(&self.marks).speech_ended;
                let why = match (std::mem::take(&mut self.backchannel), ended) {
                    (true, _) => "at once on the backchannel".to_string(),
                    (false, Some(ended)) => format!(
                        "{} ms after the user's sound ended, with no words",
                        now.saturating_duration_since(ended).as_millis()
                    ),
                    _ => "with no words".to_string(),
                };
                out.line(&format!(
                    "RESUMED {why}: from character {heard_chars}, exactly where it stopped (nothing repeated, nothing skipped)"
                ));
            }
            EventKind::TurnStarted => {
                self.seen.last_started = ev.seq;
                self.seen.turn = turn;
                self.seen.open = true;
                out.json("turn_started", json!({"turn": n}));
            }
            EventKind::SpeculationEnded { outcome, usage } => {
                out.json("speculation", json!({"outcome": outcome.label()}));
                if let Some(u) = usage {
                    out.json(
                        "usage",
                        json!({"turn": n, "prompt_tokens": u.prompt_tokens,
                               "completion_tokens": u.completion_tokens, "speculative": true}),
                    );
                }
                let cost = usage.as_ref().map_or(String::new(), |u| {
                    format!(
                        " (its cost: prompt {}, completion {})",
                        u.prompt_tokens, u.completion_tokens
                    )
                });
                match outcome {
                    SpeculationOutcome::Hit => {
                        self.hit = true;
                        out.line(
                            "PREEMPTIVE HIT: the final matches the interim — the reply started on it is released now",
                        );
                    }
                    SpeculationOutcome::Miss => out.line(&format!(
                        "PREEMPTIVE MISS: the final differs from the interim; the speculative request is closed{cost}"
                    )),
                    _ => out.line(&format!(
                        "PREEMPTIVE DROPPED: the user went on talking; the speculative request is closed{cost}"
                    )),
                }
            }
            EventKind::Speakable { text, .. } => {
                out.json("speakable", json!({"turn": n, "text": &**text}));
                if !text.is_empty()
                    && let Some(at) = self.final_at.take()
                {
                    out.line(&format!(
                        "(first words of the reply ready {} ms after the final transcript{})",
                        now.saturating_duration_since(at).as_millis(),
                        if self.hit { ", preemptive hit" } else { "" }
                    ));
                }
            }
            EventKind::SpeechPlayed { chars } => {
                self.heard.insert(turn, *chars);
                out.json("played", json!({"turn": n, "chars": chars}));
            }
            EventKind::ToolCall(c) => {
                out.line(&format!("TOOL CALL {}({}) [{}]", c.name, c.arguments, c.id))
            }
            EventKind::ToolResult(r) => out.line(&format!(
                "TOOL RESULT {} -> {}{}",
                r.name,
                r.output,
                if r.is_error { " (error)" } else { "" }
            )),
            EventKind::Usage(u) => {
                out.json(
                    "usage",
                    json!({"turn": n, "prompt_tokens": u.prompt_tokens,
                           "completion_tokens": u.completion_tokens, "speculative": false}),
                );
                let t = self.turn_usage.entry(turn).or_default();
                t.0 += u.prompt_tokens;
                t.1 += u.completion_tokens;
                t.2 |= u.estimated;
            }
            EventKind::Interrupted { heard_chars } => {
                out.json("cut", json!({"heard_chars": heard_chars}));
                barge_in(
                    out,
                    &self.marks,
                    cut_at,
                    "generation had already finished; the rest of the reply is not spoken",
                );
            }
            EventKind::TurnFinished(end) => {
                if turn == self.seen.turn {
                    self.seen.open = false;
                }
                if *end == TurnEnd::Cancelled {
                    let h = self.heard.get(&turn).copied().unwrap_or(0);
                    out.json("cut", json!({"heard_chars": h}));
                    barge_in(
                        out,
                        &self.marks,
                        cut_at,
                        "generation cancelled mid-stream; the HTTP stream is closed",
                    );
                }
                let (p, c, est) = self.turn_usage.remove(&turn).unwrap_or_default();
                let usage = format!("usage: prompt {p}, completion {c}");
                if let TurnEnd::Failed(text) = end {
                    // A failure, not a cut: its message, and the run fails.
                    let (kind, message) = common::split_failure(text);
                    out.json(
                        "turn_finished",
                        json!({"turn": n, "reason": end.label(), "kind": kind, "message": message}),
                    );
                    out.line(&format!(
                        "turn {turn} generation failed: {message} | {usage}{}",
                        if est {
                            " (estimated: the request failed before the provider reported)"
                        } else {
                            ""
                        }
                    ));
                    self.failures.push(format!("turn {turn} failed: {message}"));
                } else {
                    out.json("turn_finished", json!({"turn": n, "reason": end.label()}));
                    out.line(&format!(
                        "turn {turn} generation ended: {} | {usage}{}",
                        end.label(),
                        if est {
                            " (estimated: cut before the provider reported)"
                        } else {
                            ""
                        }
                    ));
                }
            }
            _ => {}
        }
        self.seen_tx.send_replace(self.seen);
    }
}

pub(crate) fn barge_in(out: &Out, marks: &Mutex<Marks>, cut: Option<Instant>, what: &str) {
    out.end_speech(" [cut off]");
    let m = lock(marks);
    let latency = match (&m.last_stt, cut) {
        (Some((at, event)), Some(cut)) if cut >= *at => {
            let by = match event {
                SttEvent::SpeechStarted => "the user started talking".to_string(),
                SttEvent::Interim(t) | SttEvent::Final(t) => format!("\"{t}\" arrived"),
                _ => "the user's last event".to_string(),
            };
            format!(
                "the speaker went silent {:.0} µs after {by}",
                (cut - *at).as_secs_f64() * 1e6
            )
        }
        _ => "the speaker went silent".to_string(),
    };
    drop(m);
    out.line(&format!("BARGE-IN: {latency} ({what})"));
}

/// Waits until the observer has read the script's last event, no final
/// transcript waits for its turn, and the last turn finished generating and
/// speaking. `false` after the guard.
pub(crate) async fn agent_done(
    mut seen: watch::Receiver<Seen>,
    mut status: watch::Receiver<SpeakerStatus>,
    last_seq: u64,
) -> bool {
    let idle = |s: &Seen, p: &SpeakerStatus| {
        s.seq >= last_seq
            && s.last_final <= s.last_started
            && !s.open
            && p.finished
            && p.turn >= s.turn
    };
    let wait = async {
        loop {
            if idle(&seen.borrow_and_update(), &status.borrow_and_update()) {
                return;
            }
            tokio::select! {
                r = seen.changed() => if r.is_err() { return },
                r = status.changed() => if r.is_err() { return },
            }
        }
    };
    tokio::time::timeout(FINISH_GUARD, wait).await.is_ok()
}
