//! What the ledger keeps of a turn, and what its transitions report.
//!
//! A turn's record is the one copy of what it published: requests are built
//! from its rounds and commits from the closed record, so nothing is kept
//! twice.

use std::sync::Arc;

use colloquy::llm::{ToolCall, Usage};

use crate::bus::{ToolOutput, TurnEnd};
use crate::ids::TurnId;

/// What one request (one round of a turn) published.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RoundRecord {
    /// Answer text (up to the turn's text cap).
    pub(crate) text: String,
    /// Tool calls, in the order they completed.
    pub(crate) calls: Vec<Arc<ToolCall>>,
    /// Outputs received for those calls (at most one per call).
    pub(crate) outputs: Vec<Arc<ToolOutput>>,
    /// The serving request's usage: the provider's, or an estimate once the
    /// turn closed.
    pub(crate) usage: Option<Usage>,
    /// Usage of the round's other requests: those a provider chain dropped
    /// (failed, timed out, lost a hedge race), and those still in flight when
    /// the turn was cut (estimates, marked).
    pub(crate) dropped: Vec<Usage>,
    /// Requests sent for the round (a chain's fallbacks and hedges, a
    /// retry): each one's usage is reported once.
    pub(crate) requests: u32,
    /// Characters of the round's text published before the serving request
    /// took over (a continuation's prefix, already counted by the request
    /// that produced it).
    pub(crate) serving_from_chars: usize,
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

    /// Requests whose usage is not known yet.
    pub(crate) fn unsettled(&self) -> u32 {
        let known = u32::from(self.usage.is_some()) + self.dropped.len() as u32;
        self.requests.saturating_sub(known)
    }

    /// Estimates (marked) for every request without a usage: the serving
    /// one counts the text it produced, the others (a hedge still racing)
    /// only their prompt. Nothing for a round whose request was never sent.
    pub(crate) fn settle_with_estimates(&mut self) -> Vec<Usage> {
        let mut missing = self.unsettled();
        let mut estimates = Vec::new();
        if missing > 0 && self.usage.is_none() {
            let produced = self
                .text
                .chars()
                .count()
                .saturating_sub(self.serving_from_chars);
            let estimate = Usage::estimate(self.prompt_bytes, produced);
            self.usage = Some(estimate);
            estimates.push(estimate);
            missing -= 1;
        }
        for _ in 0..missing {
            let estimate = Usage::estimate(self.prompt_bytes, 0);
            self.dropped.push(estimate);
            estimates.push(estimate);
        }
        estimates
    }

    /// What the round's requests cost in all (serving and dropped).
    pub(crate) fn total_usage(&self) -> Option<Usage> {
        self.usage
            .iter()
            .chain(self.dropped.iter())
            .copied()
            .reduce(Usage::combined)
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
    /// A speech output was attached when the turn began: its segments are
    /// published, and playing until playback reports their end.
    pub(crate) voiced: bool,
    /// The user's voice may pause or cut it (`false` for a `say` with
    /// `allow_interruptions: false`; an explicit cut still does).
    pub(crate) interruptible: bool,
    pub(crate) text_bytes: usize,
}

impl TurnRecord {
    pub(super) fn new(turn: TurnId) -> Self {
        Self {
            turn,
            interruptible: true,
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
    #[error("the last reply is still speaking and may not be cut")]
    Speaking,
    #[error("the bus is closed")]
    BusClosed,
}
