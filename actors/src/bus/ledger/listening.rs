//! The user's side of the ledger: what the interruption policy makes of the
//! user's voice — a pause, a cut, a resume — decided under the ledger's lock
//! with the event that caused it, and whether the agent is speaking at all.

use std::time::Instant;

use super::{Ledger, Phase, Signal};
use crate::bus::{EventKind, PublishError, SpeculationOutcome, TurnEnd};
use crate::turn_taking::Decision;

impl Ledger {
    /// A user-side event, and what the interruption policy makes of it —
    /// a pause, a cut, a resume — in the same critical section. The event
    /// names the last turn subscribers saw start (never a held speculation).
    pub(crate) fn publish_user(
        &mut self,
        kind: EventKind,
        now: Instant,
    ) -> Result<(u64, Option<Signal>), PublishError> {
        if self.is_closed() {
            return Err(PublishError::Closed);
        }
        // A reply that may not be interrupted is neither paused nor cut by
        // the user's voice (an explicit cut still cuts it).
        let active = self.agent_active() && self.record.interruptible;
        let decision = match &kind {
            EventKind::UserSpeechStarted => {
                self.listening.speech_started(now, &self.policy, active)
            }
            EventKind::UserSpeechEnded => {
                self.listening.speech_ended(now, &self.policy, self.paused)
            }
            EventKind::UserTranscript { text, is_final, .. } => {
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
        let seq = self.send(self.shown, kind);
        if speech && self.speculation.is_some() {
            // A new utterance: what was speculated on is stale.
            self.discard(self.record.turn, SpeculationOutcome::Dropped);
        }
        Ok((seq, self.apply(decision)))
    }

    fn apply(&mut self, decision: Decision) -> Option<Signal> {
        match decision {
            Decision::Nothing => None,
            // A reply that may not be interrupted plays on.
            Decision::Pause | Decision::Cut if !self.record.interruptible => None,
            Decision::Pause => self.pause(),
            Decision::Cut => self.cut(None, TurnEnd::Cancelled).map(Signal::Cut),
            Decision::Resume | Decision::Backchannel => self.resume(),
        }
    }

    /// The agent is speaking (or about to): a live turn generating, or a
    /// finished one whose speech has not played to its end — known from
    /// playback reports, or from segments handed to an attached voice.
    pub(super) fn agent_active(&self) -> bool {
        match self.phase {
            Phase::Open => self.speculation.is_none(),
            Phase::Finished => {
                let record = &self.record;
                let speaking =
                    record.heard_chars.is_some() || (record.voiced && record.spoken_chars > 0);
                speaking && record.heard_chars.unwrap_or(0) < record.text_chars()
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
}
