//! Where each turn's time went: a per-turn latency report read off the
//! session's bus.
//!
//! Operators judge a voice agent by the gaps a caller hears: the end of
//! their speech → the final transcript → the model's request → its first
//! token → the first sentence ready to speak → the first word heard. Every
//! one of those moments is a bus event, so a [`TurnTimer`] — a plain state
//! machine fed events and the instants they were seen — measures them
//! without touching the session. Every session runs one in its ledger, on
//! the events as they are decided, and publishes each report on its bus
//! ([`EventKind::TurnLatency`], on the cluster's wire too);
//! [`turn_reports`] hands them out:
//!
//! ```text
//!  UserSpeechEnded ─▶ UserTranscript(final) ─▶ TurnStarted ─▶ Token ─▶ Speakable ─▶ SpeechPlayed
//!        └─ speech_end_to_final ─┘└ final_to_turn_start ┘└ to_first_token ┘└ to_speakable ┘└ to_heard ┘
//!        └──────────────────────────────── end_to_end ─────────────────────────────────────────────┘
//! ```
//!
//! A turn started before the caller's final transcript (preemptive
//! generation, promoted on a hit) has a negative `final_to_turn_start`: the
//! model was already working. The report is ready once nothing more of the
//! turn can happen: it finished generating and its speech was cut, played to
//! its end, or never began (a tool round) — or the next turn started, or the
//! session stopped; intervals whose events did not happen are `None`.
//! "Heard" is the first `SpeechPlayed`: the first word whose audio the sink
//! confirmed played.

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::bus::{AudioStage, BusEvent, BusRecvError, EventKind, TurnEnd};
use crate::ids::TurnId;
use crate::session::SessionHandle;
use colloquy::llm::SelectionReason;

/// One turn's latency breakdown, in milliseconds (see the module docs).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct TurnLatency {
    /// The turn.
    pub turn: TurnId,
    /// How its generation ended.
    pub end: TurnEnd,
    /// The caller's end of speech → their final transcript; negative when
    /// the recognizer finalized before voice activity ended.
    pub speech_end_to_final_ms: Option<f64>,
    /// The final transcript → the turn's start (its request); negative when
    /// the turn started before it (preemptive generation).
    pub final_to_turn_start_ms: Option<f64>,
    /// The turn's start → its first token.
    pub turn_start_to_first_token_ms: Option<f64>,
    /// The first token → the first text ready to speak.
    pub first_token_to_speakable_ms: Option<f64>,
    /// The first speakable text → the first word heard (the sum of the
    /// next three when an audio output reports its milestones).
    pub speakable_to_heard_ms: Option<f64>,
    /// The first speakable text → the synthesizer's first audio of it.
    pub speakable_to_first_audio_ms: Option<f64>,
    /// The first audio synthesized → the sink's first played sample.
    pub first_audio_to_played_ms: Option<f64>,
    /// The first sample played → the end of the first word heard.
    pub played_to_heard_ms: Option<f64>,
    /// The caller's end of speech → the first word heard.
    pub end_to_end_ms: Option<f64>,
    /// Pauses (confirmed mode) during its speech.
    pub pauses: u32,
    /// Resumes after a false interruption.
    pub resumes: u32,
    /// Characters heard when its speech was cut (`None`: not cut).
    pub cut_at_chars: Option<usize>,
    /// Providers that took over after another failed.
    pub fallbacks: u32,
    /// Hedge requests that answered first.
    pub hedges: u32,
    /// The session stopped before the turn was over (its speech may have
    /// been playing).
    pub session_closed: bool,
}

impl TurnLatency {
    /// A report read back from [`TurnLatency::to_json`]'s object (`end`
    /// given apart: the JSON holds only its label); `None` when the object
    /// has no `turn`.
    pub fn from_json(end: TurnEnd, v: &serde_json::Value) -> Option<Self> {
        let ms = |k: &str| v.get(k).and_then(serde_json::Value::as_f64);
        let count = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        Some(Self {
            turn: TurnId(v.get("turn")?.as_u64()?),
            end,
            speech_end_to_final_ms: ms("speech_end_to_final_ms"),
            final_to_turn_start_ms: ms("final_to_turn_start_ms"),
            turn_start_to_first_token_ms: ms("turn_start_to_first_token_ms"),
            first_token_to_speakable_ms: ms("first_token_to_speakable_ms"),
            speakable_to_heard_ms: ms("speakable_to_heard_ms"),
            speakable_to_first_audio_ms: ms("speakable_to_first_audio_ms"),
            first_audio_to_played_ms: ms("first_audio_to_played_ms"),
            played_to_heard_ms: ms("played_to_heard_ms"),
            end_to_end_ms: ms("end_to_end_ms"),
            pauses: count("pauses"),
            resumes: count("resumes"),
            cut_at_chars: v
                .get("cut_at_chars")
                .and_then(serde_json::Value::as_u64)
                .map(|n| n as usize),
            fallbacks: count("fallbacks"),
            hedges: count("hedges"),
            session_closed: v
                .get("session_closed")
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// The report as a JSON object (`turn`, `end`, each interval, the
    /// counts), for JSON-line outputs.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "turn": self.turn.0,
            "end": self.end.label(),
            "speech_end_to_final_ms": self.speech_end_to_final_ms,
            "final_to_turn_start_ms": self.final_to_turn_start_ms,
            "turn_start_to_first_token_ms": self.turn_start_to_first_token_ms,
            "first_token_to_speakable_ms": self.first_token_to_speakable_ms,
            "speakable_to_heard_ms": self.speakable_to_heard_ms,
            "speakable_to_first_audio_ms": self.speakable_to_first_audio_ms,
            "first_audio_to_played_ms": self.first_audio_to_played_ms,
            "played_to_heard_ms": self.played_to_heard_ms,
            "end_to_end_ms": self.end_to_end_ms,
            "pauses": self.pauses,
            "resumes": self.resumes,
            "cut_at_chars": self.cut_at_chars,
            "fallbacks": self.fallbacks,
            "hedges": self.hedges,
            "session_closed": self.session_closed,
        })
    }
}

/// The moments of the turn being measured.
#[derive(Debug)]
struct Open {
    turn: TurnId,
    speech_end: Option<Instant>,
    final_at: Option<Instant>,
    started: Instant,
    first_token: Option<Instant>,
    first_speakable: Option<Instant>,
    first_audio: Option<Instant>,
    first_played: Option<Instant>,
    first_heard: Option<Instant>,
    /// Characters of its speakable text, and whether the last segment came.
    speakable_chars: usize,
    speech_closed: bool,
    /// Characters heard so far.
    heard: usize,
    end: Option<TurnEnd>,
    pauses: u32,
    resumes: u32,
    cut_at_chars: Option<usize>,
    fallbacks: u32,
    hedges: u32,
}

/// Measures turns from bus events (see the module docs). Feed it every
/// event of a session, in order, with the instant each was seen.
#[derive(Debug, Default)]
pub struct TurnTimer {
    /// The caller's last end of speech and last final transcript, not yet
    /// claimed by a turn.
    speech_end: Option<Instant>,
    final_at: Option<Instant>,
    open: Option<Open>,
}

fn ms(from: Option<Instant>, to: Option<Instant>) -> Option<f64> {
    Some(signed(from?, to?))
}

fn signed(from: Instant, to: Instant) -> f64 {
    if to >= from {
        (to - from).as_secs_f64() * 1000.0
    } else {
        -((from - to).as_secs_f64() * 1000.0)
    }
}

impl TurnTimer {
    /// A timer with nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next event; returns a turn's report when it is ready.
    pub fn observe(&mut self, event: &BusEvent, at: Instant) -> Option<TurnLatency> {
        let mut ready = None;
        match &event.kind {
            EventKind::UserSpeechEnded => {
                // A recognizer may finalize before voice activity ends (the
                // turn already started on its final): the end is that turn's.
                match &mut self.open {
                    Some(o)
                        if o.speech_end.is_none()
                            && o.final_at.is_some()
                            && o.first_heard.is_none() =>
                    {
                        o.speech_end = Some(at);
                    }
                    _ => self.speech_end = Some(at),
                }
            }
            EventKind::UserSpeechStarted => {
                // A new utterance: an end of speech belongs to what follows.
                self.speech_end = None;
                self.final_at = None;
            }
            EventKind::UserTranscript { is_final: true, .. } => {
                self.final_at = Some(at);
                // A preemptive turn (started after the caller stopped, before
                // the final): the final is its own. A turn without a caller
                // behind it (a greeting) never claims one.
                if let Some(o) = &mut self.open
                    && o.final_at.is_none()
                    && o.speech_end.is_some()
                    && o.first_heard.is_none()
                {
                    o.final_at = Some(at);
                    self.final_at = None;
                }
            }
            EventKind::TurnStarted => {
                ready = self.close();
                self.open = Some(Open {
                    turn: event.turn,
                    speech_end: self.speech_end.take(),
                    final_at: self.final_at.take(),
                    started: at,
                    first_token: None,
                    first_speakable: None,
                    first_audio: None,
                    first_played: None,
                    first_heard: None,
                    speakable_chars: 0,
                    speech_closed: false,
                    heard: 0,
                    end: None,
                    pauses: 0,
                    resumes: 0,
                    cut_at_chars: None,
                    fallbacks: 0,
                    hedges: 0,
                });
            }
            kind => {
                let o = self.open.as_mut().filter(|o| o.turn == event.turn)?;
                match kind {
                    EventKind::Token(_) => {
                        o.first_token.get_or_insert(at);
                    }
                    EventKind::Speakable { text, last } => {
                        if !text.trim().is_empty() {
                            o.first_speakable.get_or_insert(at);
                        }
                        o.speakable_chars += text.chars().count();
                        o.speech_closed |= *last;
                    }
                    EventKind::SpeechAudio(AudioStage::Synthesized) => {
                        o.first_audio.get_or_insert(at);
                    }
                    EventKind::SpeechAudio(AudioStage::Played) => {
                        o.first_played.get_or_insert(at);
                    }
                    EventKind::SpeechPlayed { chars } => {
                        if *chars > 0 {
                            o.first_heard.get_or_insert(at);
                        }
                        o.heard = o.heard.max(*chars);
                    }
                    EventKind::PlaybackPaused { .. } => o.pauses += 1,
                    EventKind::PlaybackResumed { .. } => o.resumes += 1,
                    EventKind::Interrupted { heard_chars } => {
                        o.cut_at_chars = Some(*heard_chars);
                    }
                    EventKind::ProviderSelected(choice) => match choice.reason {
                        SelectionReason::Fallback => o.fallbacks += 1,
                        SelectionReason::Hedge => o.hedges += 1,
                        _ => {}
                    },
                    EventKind::TurnFinished(end) => o.end = Some(end.clone()),
                    _ => {}
                }
                let o = self.open.as_ref()?;
                // Done when nothing more of it can happen: generation ended
                // and its speech was cut, played to its end, or never began
                // (a tool round, a failure).
                let spoken_out = o.speech_closed && o.heard >= o.speakable_chars;
                // No speech at all: a turn not spoken (no segments: a
                // voiced turn's last segment comes before its end), or a
                // round that ended without a word (tools, a failure).
                let silent_end = o.first_speakable.is_none()
                    && (!o.speech_closed
                        || matches!(
                            o.end,
                            Some(TurnEnd::ToolCalls | TurnEnd::Failed(_) | TurnEnd::ContentFilter)
                        ));
                let done = o.end.is_some()
                    && (o.cut_at_chars.is_some()
                        || o.end.as_ref().is_some_and(TurnEnd::is_abort)
                        || spoken_out
                        || silent_end);
                if done {
                    return self.close();
                }
            }
        }
        ready
    }

    /// The events ended (the session stopped): the open turn's report, if
    /// it finished generating.
    pub fn finish(&mut self) -> Option<TurnLatency> {
        let mut report = self.close()?;
        report.session_closed = true;
        Some(report)
    }

    /// The open turn's report, if one is open and finished generating.
    fn close(&mut self) -> Option<TurnLatency> {
        let o = self.open.take()?;
        let end = o.end.clone()?;
        Some(TurnLatency {
            turn: o.turn,
            end,
            speech_end_to_final_ms: ms(o.speech_end, o.final_at),
            final_to_turn_start_ms: ms(o.final_at, Some(o.started)),
            turn_start_to_first_token_ms: ms(Some(o.started), o.first_token),
            first_token_to_speakable_ms: ms(o.first_token, o.first_speakable),
            speakable_to_heard_ms: ms(o.first_speakable, o.first_heard),
            speakable_to_first_audio_ms: ms(o.first_speakable, o.first_audio),
            first_audio_to_played_ms: ms(o.first_audio, o.first_played),
            played_to_heard_ms: ms(o.first_played, o.first_heard),
            end_to_end_ms: ms(o.speech_end, o.first_heard),
            pauses: o.pauses,
            resumes: o.resumes,
            cut_at_chars: o.cut_at_chars,
            fallbacks: o.fallbacks,
            hedges: o.hedges,
            session_closed: false,
        })
    }
}

/// Each turn's report as the session publishes it
/// ([`EventKind::TurnLatency`]), from a subscription to its bus. The task
/// ends with the session (or when the receiver is dropped); a subscriber
/// that lagged misses the reports it fell behind on.
pub fn turn_reports(session: &SessionHandle) -> mpsc::Receiver<TurnLatency> {
    let mut rx = session.subscribe();
    let (tx, reports) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                () = tx.closed() => return,
            };
            match event {
                Ok(BusEvent {
                    kind: EventKind::TurnLatency(report),
                    ..
                }) => {
                    if tx.send((*report).clone()).await.is_err() {
                        return;
                    }
                }
                Ok(_) | Err(BusRecvError::Lagged { .. }) => {}
                Err(_) => return,
            }
        }
    });
    reports
}

#[cfg(test)]
mod tests;
