//! Speculative turns: a reply started on an interim transcript, every event
//! of it (`TurnStarted`, tokens, their segments, calls) held in the ledger and
//! unseen by subscribers and taps until a matching final promotes it — or
//! discarded, with its whole cost reported once.

use std::sync::Arc;

use colloquy::llm::Usage;

use super::{Closed, Ledger, LedgerError, Phase};
use crate::bus::{EventKind, SpeculationOutcome, TurnEnd};
use crate::ids::TurnId;

/// A speculative turn's held events, and the end its generation reached.
#[derive(Debug)]
pub(super) struct Speculation {
    pub(super) held: Vec<EventKind>,
    pub(super) finished: Option<TurnEnd>,
}

impl Speculation {
    pub(super) fn new() -> Self {
        Self {
            held: vec![EventKind::TurnStarted],
            finished: None,
        }
    }
}

impl Ledger {
    /// Starts a speculative turn: like [`Ledger::begin`], but every event of
    /// it (`TurnStarted` included) is held back until [`Ledger::promote`],
    /// and taps (the tool executor) see none of them. Refused while the agent
    /// is still speaking the last turn.
    pub(crate) fn begin_speculative(&mut self) -> Result<TurnId, LedgerError> {
        if self.agent_active() {
            return Err(LedgerError::Busy);
        }
        self.begin_as(true, true)
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
        self.shown = turn;
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
        self.refresh_speaking();
        true
    }

    /// Discards the speculative `turn`: closes its request, reports the cost
    /// of every request it made (a chain's dropped attempts included) in
    /// `SpeculationEnded` (never as a turn's usage), publishes nothing else.
    pub(crate) fn discard(&mut self, turn: TurnId, outcome: SpeculationOutcome) -> bool {
        if self.record.turn != turn || self.speculation.take().is_none() {
            return false;
        }
        if let Some(stream) = self.stream.take() {
            stream.abort();
        }
        self.segments.reset();
        let total = self
            .record
            .rounds
            .iter_mut()
            .filter_map(|round| {
                round.settle_with_estimates();
                round.total_usage()
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
        self.refresh_speaking();
        true
    }
}
