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
//!                    │  (tokens, calls, outputs,       │ a cut of its speech ──▶ Aborted
//!                    │   usage: per round)             │ (Interrupted published)
//! ```
//!
//! When a turn closes, its record (what each round published, what was heard,
//! how it ended) is parked in `pending` until the LLM actor takes it. The actor
//! reconciles before and after every message it handles, so no ordering of its
//! mailbox can lose or misplace a commit; and a new turn cannot begin while a
//! closed record waits, so commits land in the history in turn order.

use std::sync::Arc;
use std::time::Instant;

use colloquy::llm::{ToolCall, Usage};
use tokio::sync::broadcast;
use tokio::task::AbortHandle;

use super::{BusEvent, EventKind, PublishError, SpeculationOutcome, ToolOutput, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::turn_taking::{Decision, InterruptionPolicy, Listening};

/// What one request (one round of a turn) published.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RoundRecord {
    /// Answer text (up to the turn's text cap).
    pub(crate) text: String,
    /// Tool calls, in the order they completed.
    pub(crate) calls: Vec<Arc<ToolCall>>,
    /// Outputs received for those calls (at most one per call).
    pub(crate) outputs: Vec<Arc<ToolOutput>>,
    /// The request's usage: the provider's, or an estimate once the turn closed.
    pub(crate) usage: Option<Usage>,
    /// Size of the request, for the usage estimate.
    pub(crate) prompt_bytes: usize,
    /// The round's stream ended normally (all of its text was generated).
    pub(crate) complete: bool,
}

impl RoundRecord {
    /// The output answering `call_id`, if one arrived.
    pub(crate) fn output(&self, call_id: &str) -> Option<&ToolOutput> {
        self.outputs
            .iter()
            .find(|o| o.call_id == call_id)
            .map(|o| &**o)
    }

    /// Whether every call of the round has its output.
    pub(crate) fn all_answered(&self) -> bool {
        self.calls.iter().all(|c| self.output(&c.id).is_some())
    }
}

/// Everything a turn published, round by round.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TurnRecord {
    /// The turn.
    pub(crate) turn: TurnId,
    /// One entry per request, in order.
    pub(crate) rounds: Vec<RoundRecord>,
    /// Characters of the turn's text that playback reported as heard.
    pub(crate) heard_chars: Option<usize>,
    /// The text stopped growing at the cap: later tokens were spoken but not kept.
    pub(crate) text_truncated: bool,
    /// Characters handed to text-to-speech (`Speakable`).
    pub(crate) spoken_chars: usize,
    pub(crate) text_bytes: usize,
}

impl TurnRecord {
    fn new(turn: TurnId) -> Self {
        Self {
            turn,
            ..Self::default()
        }
    }

    /// Characters in the turn's text.
    pub(crate) fn text_chars(&self) -> usize {
        self.rounds.iter().map(|r| r.text.chars().count()).sum()
    }
}

/// A closed turn waiting for the LLM actor to commit it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Closed {
    /// The turn's generation ended (normally, cancelled or failed). When
    /// `speech_cut`, its speech was also cut (at `record.heard_chars`) before
    /// the actor committed it.
    Ended {
        /// What the turn published.
        record: TurnRecord,
        /// How its generation ended.
        end: TurnEnd,
        /// Its speech was interrupted after a normal end.
        speech_cut: bool,
    },
    /// A speculative turn was discarded: nothing of it was published, nothing
    /// is committed; the actor only forgets it.
    Discarded {
        /// The turn.
        turn: TurnId,
    },
    /// The speech of a turn the actor had already committed was cut.
    SpeechCut {
        /// The turn.
        turn: TurnId,
        /// Characters played before the cut.
        heard_chars: usize,
    },
}

/// What a cut did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cut {
    /// A turn still generating was closed: its stream is aborted.
    Generation(TurnId),
    /// A finished turn's speech was cut (`Interrupted` published).
    Speech(TurnId),
}

/// A transition whose synchronous hooks run once the lock is released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    Cut(Cut),
    Paused(TurnId),
    Resumed(TurnId),
}

/// Why a turn could not begin or a round could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LedgerError {
    #[error("a closed turn waits for its commit")]
    PendingCommit,
    #[error("the turn is not open")]
    NotOpen,
    #[error("the agent is still generating or speaking")]
    Busy,
    #[error("the bus is closed")]
    BusClosed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Published events are accepted for the current turn.
    Open,
    /// Finished normally: only playback events (tail speech) are accepted.
    Finished,
    /// Cancelled, failed, or its speech cut: nothing more of this turn.
    Aborted,
}

pub(crate) type TapFilter = fn(&EventKind) -> bool;
type TapFn = Box<dyn Fn(&BusEvent) + Send + Sync>;

struct Tap {
    id: u64,
    filter: TapFilter,
    deliver: TapFn,
}

/// The state behind the bus mutex.
pub(crate) struct Ledger {
    session: SessionId,
    tx: Option<broadcast::Sender<BusEvent>>,
    seq: u64,
    phase: Phase,
    record: TurnRecord,
    max_text_bytes: usize,
    stream: Option<AbortHandle>,
    pending: Option<Closed>,
    taps: Vec<Tap>,
    next_tap: u64,
    /// How the user's voice interrupts (turn_taking.rs).
    pub(crate) policy: InterruptionPolicy,
    listening: Listening,
    /// The current turn's speech is paused.
    paused: bool,
    /// The current turn is speculative: its events are held back.
    speculation: Option<Speculation>,
}

/// A speculative turn's held events, and the end its generation reached.
#[derive(Debug, Default)]
struct Speculation {
    held: Vec<EventKind>,
    finished: Option<TurnEnd>,
}

impl Ledger {
    pub(crate) fn new(session: SessionId, capacity: usize, max_text_bytes: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            session,
            tx: Some(tx),
            seq: 0,
            phase: Phase::Finished,
            record: TurnRecord::new(TurnId(0)),
            max_text_bytes,
            stream: None,
            pending: None,
            taps: Vec::new(),
            next_tap: 1,
            policy: InterruptionPolicy::default(),
            listening: Listening::default(),
            paused: false,
            speculation: None,
        }
    }

    pub(crate) fn turn(&self) -> TurnId {
        self.record.turn
    }

    pub(crate) fn is_open(&self, turn: TurnId) -> bool {
        self.record.turn == turn && self.phase == Phase::Open
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_none()
    }

    /// Whether the current turn is a speculation (its events held back).
    pub(crate) fn is_speculating(&self) -> bool {
        self.speculation.is_some()
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        match &self.tx {
            Some(tx) => tx.subscribe(),
            // A stopped session: a receiver that reports `Closed` at once.
            None => broadcast::channel(1).1,
        }
    }

    pub(crate) fn subscriber_count(&self) -> usize {
        self.tx.as_ref().map_or(0, |tx| tx.receiver_count())
    }

    fn send(&mut self, turn: TurnId, kind: EventKind) -> u64 {
        self.seq += 1;
        let event = BusEvent {
            session: self.session.clone(),
            turn,
            seq: self.seq,
            kind,
        };
        for tap in &self.taps {
            if (tap.filter)(&event.kind) {
                (tap.deliver)(&event);
            }
        }
        if let Some(tx) = &self.tx {
            // No subscriber is not an error: the event is simply not observed.
            let _ = tx.send(event);
        }
        self.seq
    }

    /// A user-side event, and what the interruption policy makes of it —
    /// a pause, a cut, a resume — in the same critical section.
    pub(crate) fn publish_user(
        &mut self,
        kind: EventKind,
        now: Instant,
    ) -> Result<(u64, Option<Signal>), PublishError> {
        if self.is_closed() {
            return Err(PublishError::Closed);
        }
        let active = self.agent_active();
        let decision = match &kind {
            EventKind::UserSpeechStarted => {
                self.listening.speech_started(now, &self.policy, active)
            }
            EventKind::UserSpeechEnded => {
                self.listening.speech_ended(now, &self.policy, self.paused)
            }
            EventKind::UserTranscript { text, is_final } => {
                self.listening
                    .transcript(text, *is_final, now, &self.policy, active, self.paused)
            }
            _ => Decision::Nothing,
        };
        let kind = match (decision.clone(), kind) {
            (Decision::Backchannel, EventKind::UserTranscript { text, .. }) => {
                metrics::counter!("colloquy_backchannels_total").increment(1);
                EventKind::Backchannel { text }
            }
            (_, kind) => kind,
        };
        let speech = kind == EventKind::UserSpeechStarted;
        let turn = self.record.turn;
        let seq = self.send(turn, kind);
        if speech && self.speculation.is_some() {
            // A new utterance: what was speculated on is stale.
            self.discard(turn, SpeculationOutcome::Dropped);
        }
        Ok((seq, self.apply(decision)))
    }

    fn apply(&mut self, decision: Decision) -> Option<Signal> {
        match decision {
            Decision::Nothing => None,
            Decision::Pause => self.pause(),
            Decision::Cut => self.cut(None, TurnEnd::Cancelled).map(Signal::Cut),
            Decision::Resume | Decision::Backchannel => self.resume(),
        }
    }

    /// The agent is speaking (or about to): a turn generating, or a finished
    /// one whose speech has not played to its end.
    fn agent_active(&self) -> bool {
        match self.phase {
            Phase::Open => self.speculation.is_none(),
            Phase::Finished => {
                let speaking = self.record.heard_chars.is_some() || self.record.spoken_chars > 0;
                speaking && self.record.heard_chars.unwrap_or(0) < self.record.text_chars()
            }
            Phase::Aborted => false,
        }
    }

    /// A finished turn's speech is still playing.
    pub(crate) fn speech_playing(&self) -> bool {
        self.phase == Phase::Finished && self.agent_active()
    }

    fn pause(&mut self) -> Option<Signal> {
        if self.paused || !self.agent_active() {
            return None;
        }
        self.paused = true;
        let turn = self.record.turn;
        let heard_chars = self.record.heard_chars.unwrap_or(0);
        self.send(turn, EventKind::PlaybackPaused { heard_chars });
        Some(Signal::Paused(turn))
    }

    fn resume(&mut self) -> Option<Signal> {
        if !self.paused || self.phase == Phase::Aborted {
            return None;
        }
        self.paused = false;
        let turn = self.record.turn;
        let heard_chars = self.record.heard_chars.unwrap_or(0);
        self.send(turn, EventKind::PlaybackResumed { heard_chars });
        Some(Signal::Resumed(turn))
    }

    /// When the timer task must next call [`Ledger::on_timer`].
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.listening.next_deadline()
    }

    /// A turn-taking deadline passed (a pause after `min_pause` of speech, a
    /// resume after `resume_timeout` of silence).
    pub(crate) fn on_timer(&mut self, now: Instant) -> Option<Signal> {
        if self.is_closed() {
            return None;
        }
        let decision = self.listening.timer(now, self.agent_active(), self.paused);
        self.apply(decision)
    }

    /// An event of `turn` from the agent's side or the embedder's.
    pub(crate) fn publish(&mut self, turn: TurnId, kind: EventKind) -> Result<u64, PublishError> {
        if self.is_closed() {
            return Err(PublishError::Closed);
        }
        let current = self.record.turn;
        let accepted = current == turn
            && match self.phase {
                Phase::Open => !matches!(
                    kind,
                    EventKind::TurnStarted
                        | EventKind::TurnFinished(_)
                        | EventKind::Interrupted { .. }
                ),
                Phase::Finished => kind.is_playback(),
                Phase::Aborted => false,
            };
        if !accepted {
            metrics::counter!("colloquy_bus_stale_rejected_total").increment(1);
            return Err(PublishError::Stale { turn, current });
        }
        self.record_event(&kind)?;
        if let Some(spec) = &mut self.speculation {
            spec.held.push(kind);
            return Ok(self.seq);
        }
        Ok(self.send(turn, kind))
    }

    fn record_event(&mut self, kind: &EventKind) -> Result<(), PublishError> {
        let max = self.max_text_bytes;
        let record = &mut self.record;
        match kind {
            EventKind::Token(t) => {
                if record.text_bytes + t.len() <= max && !record.text_truncated {
                    record.text_bytes += t.len();
                    if let Some(round) = record.rounds.last_mut() {
                        round.text.push_str(t);
                    }
                } else if !record.text_truncated {
                    record.text_truncated = true;
                    metrics::counter!("colloquy_turn_text_truncated_total").increment(1);
                    tracing::warn!(turn = %record.turn, max, "answer text over the cap: the commit is cut and marked");
                }
            }
            EventKind::ToolCall(c) => {
                if let Some(round) = record.rounds.last_mut() {
                    round.calls.push(c.clone());
                }
            }
            EventKind::Usage(u) => {
                if let Some(round) = record.rounds.last_mut() {
                    round.usage = Some(**u);
                }
            }
            EventKind::ToolResult(out) => {
                // Only the last round waits for outputs: the next round starts
                // once every one of its calls is answered.
                let Some(round) = record
                    .rounds
                    .last_mut()
                    .filter(|r| r.calls.iter().any(|c| c.id == out.call_id))
                else {
                    return Err(PublishError::UnknownCall(out.call_id.clone()));
                };
                if round.output(&out.call_id).is_some() {
                    return Err(PublishError::AlreadyAnswered(out.call_id.clone()));
                }
                round.outputs.push(out.clone());
            }
            EventKind::Speakable { text, .. } => {
                record.spoken_chars += text.chars().count();
            }
            EventKind::SpeechPlayed { chars } => {
                let chars = *chars;
                record.heard_chars = Some(record.heard_chars.map_or(chars, |h| h.max(chars)));
            }
            _ => {}
        }
        Ok(())
    }

    /// Starts the next turn and publishes `TurnStarted`. Refused while a closed
    /// turn waits for its commit, or while a turn is still open.
    pub(crate) fn begin(&mut self) -> Result<TurnId, LedgerError> {
        self.begin_as(false)
    }

    /// Starts a speculative turn: like [`Ledger::begin`], but every event of
    /// it (`TurnStarted` included) is held back until [`Ledger::promote`],
    /// and taps (the tool executor) see none of them. Refused while the agent
    /// is still speaking the last turn.
    pub(crate) fn begin_speculative(&mut self) -> Result<TurnId, LedgerError> {
        if self.agent_active() {
            return Err(LedgerError::Busy);
        }
        self.begin_as(true)
    }

    fn begin_as(&mut self, speculative: bool) -> Result<TurnId, LedgerError> {
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
        self.phase = Phase::Open;
        self.paused = false;
        self.stream = None;
        if speculative {
            self.speculation = Some(Speculation {
                held: vec![EventKind::TurnStarted],
                finished: None,
            });
        } else {
            self.send(turn, EventKind::TurnStarted);
        }
        Ok(turn)
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
    pub(crate) fn unanswered_calls(&self) -> Option<(TurnId, Vec<Arc<ToolCall>>)> {
        if self.phase != Phase::Open || self.speculation.is_some() {
            return None;
        }
        let round = self.record.rounds.last()?;
        let calls: Vec<Arc<ToolCall>> = round
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
                self.discard(turn, SpeculationOutcome::Dropped);
            } else {
                // Generation is done; the turn ends when (if) it is promoted.
                spec.finished = Some(end);
            }
            return true;
        }
        self.close(end);
        true
    }

    /// Promotes the speculative `turn`: publishes `SpeculationEnded(Hit)`,
    /// then its held events in order with fresh seqs (taps see them now), and
    /// goes on live; a generation that already ended closes the turn now.
    pub(crate) fn promote(&mut self, turn: TurnId) -> bool {
        if !self.is_open(turn) {
            return false;
        }
        let Some(spec) = self.speculation.take() else {
            return false;
        };
        metrics::counter!("colloquy_speculations_total", "outcome" => "hit").increment(1);
        self.send(
            turn,
            EventKind::SpeculationEnded {
                outcome: SpeculationOutcome::Hit,
                usage: None,
            },
        );
        for kind in spec.held {
            self.send(turn, kind);
        }
        if let Some(end) = spec.finished {
            self.close(end);
        }
        true
    }

    /// Discards the speculative `turn`: closes its request, reports its cost
    /// in `SpeculationEnded` (never as a turn's usage), publishes nothing else.
    pub(crate) fn discard(&mut self, turn: TurnId, outcome: SpeculationOutcome) -> bool {
        if self.record.turn != turn || self.speculation.take().is_none() {
            return false;
        }
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
        let total = self
            .record
            .rounds
            .iter()
            .map(|round| {
                round.usage.unwrap_or_else(|| {
                    Usage::estimate(round.prompt_bytes, round.text.chars().count())
                })
            })
            .reduce(Usage::combined);
        if let Some(u) = &total {
            metrics::counter!("colloquy_usage_speculative_tokens_total").increment(u.total_tokens);
        }
        metrics::counter!("colloquy_speculations_total", "outcome" => outcome.label()).increment(1);
        self.phase = Phase::Aborted;
        self.send(
            turn,
            EventKind::SpeculationEnded {
                outcome,
                usage: total.map(Arc::new),
            },
        );
        self.pending = Some(Closed::Discarded { turn });
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
                self.discard(turn, SpeculationOutcome::Dropped);
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
                Some(Cut::Speech(turn))
            }
            _ => None,
        }
    }

    /// Closes the open turn: aborts its stream on a cut, reports usage of
    /// every request that has none (an estimate, marked), publishes
    /// `TurnFinished(end)` and parks the record for the actor.
    fn close(&mut self, end: TurnEnd) {
        let turn = self.record.turn;
        if end.is_abort()
            && let Some(stream) = self.stream.take()
        {
            stream.abort();
        }
        self.stream = None;
        for i in 0..self.record.rounds.len() {
            let round = &mut self.record.rounds[i];
            if round.usage.is_none() {
                let estimate = Usage::estimate(round.prompt_bytes, round.text.chars().count());
                round.usage = Some(estimate);
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
    }

    /// Takes the record of a closed turn not yet committed.
    pub(crate) fn take_closed(&mut self) -> Option<Closed> {
        self.pending.take()
    }

    /// The current turn's text after `consumed_chars`, with the seq of the
    /// last event it includes; `None` when `turn` is not current or was cut.
    pub(crate) fn text_since(&self, turn: TurnId, consumed_chars: usize) -> Option<(String, u64)> {
        if self.record.turn != turn || self.phase == Phase::Aborted {
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
        self.taps.push(Tap {
            id,
            filter,
            deliver,
        });
        id
    }

    pub(crate) fn remove_tap(&mut self, id: u64) {
        self.taps.retain(|t| t.id != id);
    }

    /// The session stopped: subscribers see `Closed` once they drained.
    pub(crate) fn close_bus(&mut self) {
        self.tx = None;
        self.taps.clear();
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
    }
}
