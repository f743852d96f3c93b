//! The turn ledger: the one owner of a turn's life.
//!
//! A turn is touched by several parties at once: the caller's `cancel()` (the
//! fast path, which must not wait behind the actor's mailbox), the stream task
//! publishing tokens, the tool executor answering calls, the TTS reporting
//! playback, and the LLM actor starting rounds and committing. Every one of
//! those changes goes through the ledger, under the bus's one mutex, and every
//! transition is decided and acted on in the same critical section — so a cut
//! can never find a turn open and then fail to close it, a round can never be
//! attached to a turn already closed, and a commit can never be lost:
//!
//! ```text
//!            begin           finish(end) / cut            take_closed
//!   (none) ───────▶ Open ─────────────────────────▶ Finished | Aborted ───▶ committed
//!                    │  open_round, publish            │ Finished: playback events only;
//!                    │  (tokens + their segments,      │ a cut of its speech ──▶ Aborted
//!                    │   calls, outputs, usage)        │ (Interrupted published)
//! ```
//!
//! Segmentation happens here too, for every turn that begins with a voice
//! attached (a `Speaker`, or a TTS the session declares; nobody would speak
//! the segments of the others): the `Speakable` a token completes is decided
//! and published in the token's own critical section, a tool call flushes the
//! text before it, and the turn's close flushes the tail (`last`) or, on a
//! cut, drops it. So a segment can never lag behind, race or repeat the text
//! it speaks — in particular a speculation's held tokens and their segments
//! are released together, once, when it is promoted.
//!
//! When a turn closes, its record (what each round published, what was heard,
//! how it ended) is parked in `pending` until the LLM actor takes it. The actor
//! reconciles before and after every message it handles, so no ordering of its
//! mailbox can lose or misplace a commit; and a new turn cannot begin while a
//! closed record waits, so commits land in the history in turn order.
//!
//! The transitions are grouped by concern: what the agent's side and the
//! embedder publish (`publish.rs`), the user's side and playback
//! (`listening.rs`), speculation (`speculation.rs`), and what a turn keeps
//! (`record.rs`).

mod listening;
mod publish;
mod record;
mod speculation;
#[cfg(test)]
pub(in crate::bus) mod tests;

pub(crate) use record::{Closed, Cut, LedgerError, RoundRecord, Signal, TurnRecord};

use std::sync::Arc;

use tokio::task::AbortHandle;

use super::{BusEvent, EventKind, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::segmenter::{SegmentBuffer, SegmenterConfig};
use crate::turn_taking::{InterruptionPolicy, Listening};
use speculation::Speculation;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Published events are accepted for the current turn.
    Open,
    /// Finished normally: only playback reports (tail speech) are accepted.
    Finished,
    /// Cancelled, failed, or its speech cut: nothing more of this turn.
    Aborted,
}

pub(crate) type TapFilter = fn(&EventKind) -> bool;
type TapFn = Box<dyn Fn(&BusEvent) + Send + Sync>;

/// A lossless consumer, run by delivery (`bus/delivery.rs`) outside the lock.
pub(super) struct Tap {
    pub(super) id: u64,
    pub(super) filter: TapFilter,
    pub(super) deliver: TapFn,
}

/// What a critical section hands to delivery, in the order it decided it.
pub(super) enum Outgoing {
    Event(BusEvent),
    AddTap(Tap),
    RemoveTap(u64),
    /// The agent's generating-or-speaking flag, after this transition.
    Speaking(bool),
    /// The session stopped: no more events, the taps dropped.
    Close,
}

/// The state behind the bus mutex.
pub(crate) struct Ledger {
    session: SessionId,
    /// What this critical section published, delivered when its guard drops.
    pub(super) outbox: Vec<Outgoing>,
    closed: bool,
    seq: u64,
    phase: Phase,
    record: TurnRecord,
    max_text_bytes: usize,
    stream: Option<AbortHandle>,
    pending: Option<Closed>,
    next_tap: u64,
    /// How the user's voice interrupts (turn_taking.rs).
    pub(crate) policy: InterruptionPolicy,
    listening: Listening,
    /// The current turn's speech is paused.
    paused: bool,
    /// The current turn is speculative: its events are held back.
    speculation: Option<Speculation>,
    /// The last turn whose `TurnStarted` subscribers saw: user events name
    /// it, never a speculation nobody saw start.
    shown: TurnId,
    /// Where the current turn's text is cut into speakable segments.
    pub(crate) segmenter: SegmenterConfig,
    segments: SegmentBuffer,
    /// Speech outputs attached ([`Speaker`](crate::speech::Speaker)s, or a
    /// TTS the session's configuration declares): segments handed out are
    /// then playing until playback reports their end.
    voices: usize,
    /// Whether the agent is generating or speaking, for those who wait for
    /// it to finish (reply handles, the speech queue).
    speaking: Arc<super::speaking::SpeakingState>,
    /// Each turn's latency, measured on the events as they are decided:
    /// its report is published right after the event that completed it.
    timer: crate::latency::TurnTimer,
}

impl Ledger {
    pub(crate) fn new(session: SessionId, max_text_bytes: usize) -> Self {
        Self {
            session,
            outbox: Vec::new(),
            closed: false,
            seq: 0,
            phase: Phase::Finished,
            record: TurnRecord::new(TurnId(0)),
            max_text_bytes,
            stream: None,
            pending: None,
            next_tap: 1,
            policy: InterruptionPolicy::default(),
            listening: Listening::default(),
            paused: false,
            speculation: None,
            shown: TurnId(0),
            segmenter: SegmenterConfig::default(),
            segments: SegmentBuffer::default(),
            voices: 0,
            speaking: Arc::default(),
            timer: crate::latency::TurnTimer::new(),
        }
    }

    /// Whether the agent is generating or speaking, readable without the lock
    /// (set in delivery, in the order of the events).
    pub(crate) fn speaking(&self) -> super::Speaking {
        super::Speaking(self.speaking.clone())
    }

    /// The flag [`Ledger::speaking`] reads, for delivery to set.
    pub(super) fn speaking_state(&self) -> Arc<super::speaking::SpeakingState> {
        self.speaking.clone()
    }

    /// Brings the speaking watch up to date after a transition.
    fn refresh_speaking(&mut self) {
        let now = self.agent_active();
        if !self.closed {
            self.outbox.push(Outgoing::Speaking(now));
        } else {
            self.speaking.set(now);
        }
    }

    pub(crate) fn turn(&self) -> TurnId {
        self.record.turn
    }

    pub(crate) fn is_open(&self, turn: TurnId) -> bool {
        self.record.turn == turn && self.phase == Phase::Open
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    /// A live (not speculative) turn is generating.
    pub(crate) fn live_turn_open(&self) -> bool {
        self.phase == Phase::Open && self.speculation.is_none()
    }

    /// A speech output was attached (`true`) or detached. When the last one
    /// goes while a reply's speech is playing, nothing will play the rest:
    /// the speech is cut where playback reached (the history keeps what was
    /// heard), never left "playing" for good.
    pub(crate) fn set_voice(&mut self, attached: bool) -> Option<Cut> {
        if attached {
            self.voices += 1;
            return None;
        }
        self.voices = self.voices.saturating_sub(1);
        let cut = (self.voices == 0 && self.speech_playing())
            .then(|| self.cut(None, TurnEnd::Cancelled))
            .flatten();
        self.refresh_speaking();
        cut
    }

    fn send(&mut self, turn: TurnId, kind: EventKind) -> u64 {
        self.seq += 1;
        let seq = self.seq;
        let event = BusEvent {
            session: self.session.clone(),
            turn,
            seq,
            kind,
        };
        let report = self.timer.observe(&event, tokio::time::Instant::now());
        if !self.closed {
            self.outbox.push(Outgoing::Event(event));
        }
        if let Some(report) = report {
            self.send(report.turn, EventKind::TurnLatency(Arc::new(report)));
        }
        seq
    }

    /// Starts the next turn and publishes `TurnStarted`, `interruptible` by
    /// the user's voice or not. Refused while a closed turn waits for its
    /// commit, or while a turn is still open.
    pub(crate) fn begin_with(&mut self, interruptible: bool) -> Result<TurnId, LedgerError> {
        self.begin_as(false, interruptible)
    }

    /// Whether the turn whose speech is playing may be cut by a new reply.
    pub(crate) fn playing_is_interruptible(&self) -> bool {
        self.record.interruptible
    }

    fn begin_as(&mut self, speculative: bool, interruptible: bool) -> Result<TurnId, LedgerError> {
        if self.is_closed() {
            return Err(LedgerError::BusClosed);
        }
        if self.pending.is_some() {
            return Err(LedgerError::PendingCommit);
        }
        if self.phase == Phase::Open {
            return Err(LedgerError::Busy);
        }
        let turn = self.record.turn.next();
        self.record = TurnRecord::new(turn);
        self.record.interruptible = interruptible;
        // Its segments are cut and published if a voice speaks it: a
        // Speaker attached, or a TTS the session declares.
        self.record.voiced = self.voices > 0;
        self.phase = Phase::Open;
        self.paused = false;
        self.stream = None;
        self.segments.reset();
        if speculative {
            self.speculation = Some(Speculation::new());
        } else {
            self.shown = turn;
            self.send(turn, EventKind::TurnStarted);
        }
        self.refresh_speaking();
        Ok(turn)
    }

    /// Opens a round of `turn` that sends no request: fixed text (`say`).
    pub(crate) fn open_spoken_round(&mut self, turn: TurnId) -> Result<(), LedgerError> {
        if !self.is_open(turn) {
            return Err(LedgerError::NotOpen);
        }
        self.record.rounds.push(RoundRecord::default());
        Ok(())
    }

    /// Opens the next round of `turn` and attaches its stream task, spawned by
    /// `spawn` only if the turn is still open (so no request is sent for a
    /// turn already cut). Returns the round's index.
    pub(crate) fn open_round<T>(
        &mut self,
        turn: TurnId,
        prompt_bytes: usize,
        spawn: impl FnOnce() -> (AbortHandle, T),
    ) -> Result<(u32, T), LedgerError> {
        if !self.is_open(turn) {
            return Err(LedgerError::NotOpen);
        }
        let (abort, handle) = spawn();
        self.stream = Some(abort);
        self.record.rounds.push(RoundRecord {
            prompt_bytes,
            ..RoundRecord::default()
        });
        Ok(((self.record.rounds.len() - 1) as u32, handle))
    }

    /// `turn`'s stream is about to send a request for its current round:
    /// accounted now, so its usage is reported even if the turn is cut before
    /// the provider reports it. `false` (send nothing) once the turn closed.
    pub(crate) fn request_sent(&mut self, turn: TurnId) -> bool {
        if !self.is_open(turn) {
            return false;
        }
        if let Some(round) = self.record.rounds.last_mut() {
            round.requests += 1;
        }
        true
    }

    /// `turn`'s stream retries its request (before any output): the failed
    /// request's usage, if it was reported, stays counted as that request's,
    /// and the retry is accounted before it is sent. `false` (send nothing)
    /// once the turn closed.
    pub(crate) fn request_retried(&mut self, turn: TurnId) -> bool {
        if !self.is_open(turn) {
            return false;
        }
        if let Some(round) = self.record.rounds.last_mut() {
            round.dropped.extend(round.usage.take());
            round.requests += 1;
        }
        true
    }

    /// The stream task read its round to a normal end.
    pub(crate) fn complete_round(&mut self, turn: TurnId) {
        if self.is_open(turn)
            && let Some(round) = self.record.rounds.last_mut()
        {
            round.complete = true;
        }
    }

    /// Whether every call of `turn`'s last round has its output (false when
    /// the turn is closed).
    pub(crate) fn last_round_answered(&self, turn: TurnId) -> bool {
        self.is_open(turn)
            && self
                .record
                .rounds
                .last()
                .is_none_or(RoundRecord::all_answered)
    }

    /// The calls of the open (live) turn's last round that have no output yet.
    pub(crate) fn unanswered_calls(&self) -> Option<(TurnId, Vec<Arc<colloquy::llm::ToolCall>>)> {
        if !self.live_turn_open() {
            return None;
        }
        let round = self.record.rounds.last()?;
        let calls: Vec<_> = round
            .calls
            .iter()
            .filter(|c| round.output(&c.id).is_none())
            .cloned()
            .collect();
        (!calls.is_empty()).then_some((self.record.turn, calls))
    }

    /// The rounds of `turn` so far, to build its next request.
    pub(crate) fn rounds(&self, turn: TurnId) -> Option<Vec<RoundRecord>> {
        self.is_open(turn).then(|| self.record.rounds.clone())
    }

    /// Closes `turn` as the actor decided (`end` from the stream). Returns
    /// whether it closed: `false` when it was cut first.
    pub(crate) fn finish(&mut self, turn: TurnId, end: TurnEnd) -> bool {
        if !self.is_open(turn) {
            return false;
        }
        if let Some(spec) = &mut self.speculation {
            if end.is_abort() {
                self.discard(turn, crate::bus::SpeculationOutcome::Dropped);
            } else {
                // Generation is done; the turn ends when (if) it is promoted.
                spec.finished = Some(end);
            }
            return true;
        }
        self.close(end);
        true
    }

    /// Cuts `target` (default: the current turn): a turn still generating is
    /// closed with `end`; the speech of a finished turn is interrupted when
    /// `end` is a cancel and playback has not reached its end. `None` when
    /// there was nothing to cut.
    pub(crate) fn cut(&mut self, target: Option<TurnId>, end: TurnEnd) -> Option<Cut> {
        let turn = self.record.turn;
        if target.is_some_and(|t| t != turn) || self.is_closed() {
            return None;
        }
        match self.phase {
            Phase::Open if self.speculation.is_some() => {
                // Nothing of it was heard or published: drop it, cut nothing.
                self.discard(turn, crate::bus::SpeculationOutcome::Dropped);
                None
            }
            Phase::Open => {
                self.close(end);
                Some(Cut::Generation(turn))
            }
            Phase::Finished if end == TurnEnd::Cancelled => {
                // Speech is playing once segments went to a TTS or one reported
                // progress; before its first report nothing was heard yet.
                if !self.agent_active() {
                    return None;
                }
                let heard = self.record.heard_chars.unwrap_or(0);
                self.phase = Phase::Aborted;
                self.paused = false;
                self.send(turn, EventKind::Interrupted { heard_chars: heard });
                match &mut self.pending {
                    Some(Closed::Ended {
                        record, speech_cut, ..
                    }) if record.turn == turn => {
                        record.heard_chars = Some(heard);
                        *speech_cut = true;
                    }
                    _ => {
                        self.pending = Some(Closed::SpeechCut {
                            turn,
                            heard_chars: heard,
                        })
                    }
                }
                self.refresh_speaking();
                Some(Cut::Speech(turn))
            }
            _ => None,
        }
    }

    /// Closes the open, live turn: flushes its last segment (or drops it on a
    /// cut, aborting the stream), reports usage of every request that has
    /// none (estimates, marked), publishes `TurnFinished(end)` and parks the
    /// record for the actor.
    fn close(&mut self, end: TurnEnd) {
        let turn = self.record.turn;
        if end.is_abort() {
            if let Some(stream) = self.stream.take() {
                stream.abort();
            }
            self.segments.reset();
        } else {
            let tail = self.segments.flush().unwrap_or_default();
            self.emit_segment(turn, tail, true);
        }
        self.stream = None;
        for i in 0..self.record.rounds.len() {
            for estimate in self.record.rounds[i].settle_with_estimates() {
                self.send(turn, EventKind::Usage(Arc::new(estimate)));
            }
        }
        self.phase = if end.is_abort() {
            self.paused = false;
            Phase::Aborted
        } else {
            Phase::Finished
        };
        self.send(turn, EventKind::TurnFinished(end.clone()));
        self.pending = Some(Closed::Ended {
            record: self.record.clone(),
            end,
            speech_cut: false,
        });
        self.refresh_speaking();
    }

    /// Takes the record of a closed turn not yet committed.
    pub(crate) fn take_closed(&mut self) -> Option<Closed> {
        self.pending.take()
    }

    /// The current turn's text after `consumed_chars`, with the seq of the
    /// last event it includes; `None` when `turn` is not current, was cut, or
    /// is a speculation still held (subscribers have not seen it).
    pub(crate) fn text_since(&self, turn: TurnId, consumed_chars: usize) -> Option<(String, u64)> {
        if self.record.turn != turn || self.phase == Phase::Aborted || self.speculation.is_some() {
            return None;
        }
        let text: String = self
            .record
            .rounds
            .iter()
            .flat_map(|r| r.text.chars())
            .skip(consumed_chars)
            .collect();
        Some((text, self.seq))
    }

    pub(crate) fn add_tap(&mut self, filter: TapFilter, deliver: TapFn) -> u64 {
        let id = self.next_tap;
        self.next_tap += 1;
        if !self.closed {
            self.outbox.push(Outgoing::AddTap(Tap {
                id,
                filter,
                deliver,
            }));
        }
        id
    }

    pub(crate) fn remove_tap(&mut self, id: u64) {
        if !self.closed {
            self.outbox.push(Outgoing::RemoveTap(id));
        }
    }

    /// The session stopped: subscribers see `Closed` once they drained.
    pub(crate) fn close_bus(&mut self) {
        if !self.closed {
            // The last turn's report, if it finished generating.
            if let Some(report) = self.timer.finish() {
                self.send(report.turn, EventKind::TurnLatency(Arc::new(report)));
            }
            self.closed = true;
            self.outbox.push(Outgoing::Close);
        }
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
    }
}
