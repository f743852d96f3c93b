//! The turn's controls: what the runtime does to a turn on the ledger.
//!
//! The LLM actor begins, rounds, finishes and speculates; its stream task
//! accounts each request before sending it; a caller cuts; the tool executor
//! asks which calls were orphaned; the speaker attaches its voice. Each of
//! these is one method here and one critical section of the ledger's lock,
//! so no caller outside the bus holds that lock or can widen a section by
//! doing two things under it. All of them are crate-private.

use std::sync::Arc;

use colloquy::llm::ToolCall;
use tokio::task::AbortHandle;

use super::ledger::{Closed, Cut, LedgerError, RoundRecord, TapFilter};
use super::{BusEvent, SessionBus, SpeculationOutcome, TurnEnd};
use crate::ids::TurnId;

impl SessionBus {
    /// Starts the next turn (publishes `TurnStarted`). A new reply over the
    /// last one's speech still playing cuts that speech first (`Interrupted`,
    /// hooks): it is refused with `PendingCommit` until the actor has trimmed
    /// the last turn to what was heard.
    #[cfg(test)]
    pub(crate) fn begin_turn(&self) -> Result<TurnId, LedgerError> {
        self.begin_turn_with(false, true)
    }

    /// Like [`SessionBus::begin_turn`], with the speech queue's choice: over
    /// speech still playing, `queue` (or a playing reply that may not be
    /// interrupted) refuses with `Speaking` instead of cutting it; the new
    /// turn is `interruptible` by the user's voice or not.
    pub(crate) fn begin_turn_with(
        &self,
        queue: bool,
        interruptible: bool,
    ) -> Result<TurnId, LedgerError> {
        let cut = {
            let mut ledger = self.lock();
            if !ledger.speech_playing() {
                return ledger.begin_with(interruptible);
            }
            if queue || !ledger.playing_is_interruptible() {
                return Err(LedgerError::Speaking);
            }
            ledger.cut(None, TurnEnd::Cancelled)
        };
        if let Some(cut) = cut {
            self.after_cut(cut);
        }
        Err(LedgerError::PendingCommit)
    }

    /// Closes `turn` with the end its stream reached; `false` when it was cut
    /// first (its record is then waiting in the ledger).
    pub(crate) fn finish_turn(&self, turn: TurnId, end: TurnEnd) -> bool {
        let abort = end.is_abort();
        let closed = self.lock().finish(turn, end);
        if closed && abort {
            self.run_cut_hooks(turn);
        }
        closed
    }

    /// Cuts `target` (default: the current turn) in one critical section: a
    /// turn still generating is closed with `end` (stream aborted, usage
    /// reported, `TurnFinished` published); the speech of a finished turn is
    /// interrupted (`Interrupted` published). Cut hooks run before this returns,
    /// and the cut's events are delivered — also when another party cut first
    /// and this call decided nothing.
    pub(crate) fn cut(&self, target: Option<TurnId>, end: TurnEnd) -> Option<Cut> {
        let cut = self.lock().synced().cut(target, end)?;
        self.after_cut(cut);
        Some(cut)
    }

    /// Takes the record of a closed turn waiting for its commit.
    pub(crate) fn take_closed(&self) -> Option<Closed> {
        self.lock().take_closed()
    }

    /// Opens a round of `turn` that sends no request: fixed text (`say`).
    pub(crate) fn open_spoken_round(&self, turn: TurnId) -> Result<(), LedgerError> {
        self.lock().open_spoken_round(turn)
    }

    /// Opens the next round of `turn` and attaches its stream task, which
    /// `spawn` starts under the ledger's lock, only if the turn is still open
    /// (so no request is sent for a turn already cut). Returns the round's
    /// index and what `spawn` made.
    pub(crate) fn open_round<T>(
        &self,
        turn: TurnId,
        prompt_bytes: usize,
        spawn: impl FnOnce() -> (AbortHandle, T),
    ) -> Result<(u32, T), LedgerError> {
        self.lock().open_round(turn, prompt_bytes, spawn)
    }

    /// `turn`'s stream is about to send a request for its current round:
    /// accounted now. `false` (send nothing) once the turn closed.
    pub(crate) fn request_sent(&self, turn: TurnId) -> bool {
        self.lock().request_sent(turn)
    }

    /// `turn`'s stream retries its request: the retry is accounted before it
    /// is sent. `false` (send nothing) once the turn closed.
    pub(crate) fn request_retried(&self, turn: TurnId) -> bool {
        self.lock().request_retried(turn)
    }

    /// `turn`'s stream read its round to a normal end.
    pub(crate) fn complete_round(&self, turn: TurnId) {
        self.lock().complete_round(turn);
    }

    /// The rounds of `turn` so far, to build its next request; `None` once
    /// the turn is closed.
    pub(crate) fn rounds(&self, turn: TurnId) -> Option<Vec<RoundRecord>> {
        self.lock().rounds(turn)
    }

    /// Whether every call of `turn`'s last round has its output (false when
    /// the turn is closed).
    pub(crate) fn last_round_answered(&self, turn: TurnId) -> bool {
        self.lock().last_round_answered(turn)
    }

    /// The calls of the open (live) turn's last round that have no output yet.
    pub(crate) fn unanswered_calls(&self) -> Option<(TurnId, Vec<Arc<ToolCall>>)> {
        self.lock().unanswered_calls()
    }

    /// Starts a speculative turn, whose events are held back until
    /// [`promote`](Self::promote). Refused while the agent is still speaking.
    pub(crate) fn begin_speculative(&self) -> Result<TurnId, LedgerError> {
        self.lock().begin_speculative()
    }

    /// Promotes the speculative `turn` (a final matched it): its held events
    /// are published and it goes on live. `false` when it is no longer open.
    pub(crate) fn promote(&self, turn: TurnId) -> bool {
        self.lock().promote(turn)
    }

    /// Discards the speculative `turn` with `outcome`: its request is closed
    /// and its cost reported; `false` when it is not the speculation.
    pub(crate) fn discard(&self, turn: TurnId, outcome: SpeculationOutcome) -> bool {
        self.lock().discard(turn, outcome)
    }

    /// Attaches a speech output in one critical section: the voice, a tap
    /// whose `deliver` is made by `make` (told whether the bus is still
    /// open), and the current turn, so every event after that turn reaches
    /// the tap. Returns the tap's id and that turn.
    pub(crate) fn attach_voice<D>(
        &self,
        filter: TapFilter,
        make: impl FnOnce(bool) -> D,
    ) -> (u64, TurnId)
    where
        D: Fn(&BusEvent) + Send + Sync + 'static,
    {
        let mut ledger = self.lock();
        let open = !ledger.is_closed();
        ledger.set_voice(true);
        let tap = ledger.add_tap(filter, Box::new(make(open)));
        (tap, ledger.turn())
    }

    /// Detaches a speech output attached with
    /// [`attach_voice`](Self::attach_voice): its tap and its voice, in one
    /// critical section.
    /// A speech it left playing is cut where playback reached.
    pub(crate) fn detach_voice(&self, tap: u64) {
        let cut = {
            let mut ledger = self.lock();
            ledger.remove_tap(tap);
            ledger.set_voice(false)
        };
        if let Some(cut) = cut {
            self.after_cut(cut);
        }
    }
}
