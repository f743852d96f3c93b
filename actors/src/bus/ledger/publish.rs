//! What the agent's side and the embedder publish for a turn: checked
//! against the turn's phase (the fence), recorded in the turn's record, cut
//! into segments in the same critical section, and sent — or held while the
//! turn is a speculation.

use std::sync::Arc;

use super::{Ledger, Phase};
use crate::bus::{EventKind, PublishError};
use crate::ids::TurnId;

impl Ledger {
    /// Publishes an event of the current turn, or holds it while the turn is
    /// speculative.
    pub(super) fn emit(&mut self, turn: TurnId, kind: EventKind) -> u64 {
        if let Some(spec) = &mut self.speculation {
            spec.held.push(kind);
            return self.seq;
        }
        self.send(turn, kind)
    }

    /// A segment of the current turn's text for text-to-speech (only for a
    /// turn that began with a voice attached: nobody speaks the others).
    pub(super) fn emit_segment(&mut self, turn: TurnId, text: String, last: bool) {
        if !self.record.voiced {
            return;
        }
        self.record.spoken_chars += text.chars().count();
        let text = Arc::from(text);
        self.emit(turn, EventKind::Speakable { text, last });
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
                        | EventKind::Speakable { .. }
                ),
                Phase::Finished => kind.is_playback(),
                Phase::Aborted => false,
            };
        if !accepted {
            metrics::counter!("colloquy_bus_stale_rejected_total").increment(1);
            return Err(PublishError::Stale { turn, current });
        }
        self.record_event(&kind)?;
        match &kind {
            EventKind::Token(text) => {
                let text = text.clone();
                let seq = self.emit(turn, kind);
                if self.record.voiced {
                    for segment in self.segments.push(&text, &self.segmenter) {
                        self.emit_segment(turn, segment, false);
                    }
                }
                Ok(seq)
            }
            EventKind::ToolCall(_) => {
                // The text before a call is spoken before it runs.
                if let Some(segment) = self.segments.flush() {
                    self.emit_segment(turn, segment, false);
                }
                Ok(self.emit(turn, kind))
            }
            _ => Ok(self.emit(turn, kind)),
        }
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
                    // A later request of the round (a retry) serves from now
                    // on; the earlier one's usage stays counted.
                    if let Some(earlier) = round.usage.replace(**u) {
                        round.dropped.push(earlier);
                    }
                }
            }
            EventKind::ProviderSelected(_) => {
                if let Some(round) = record.rounds.last_mut() {
                    round.serving_from_chars = round.text.chars().count();
                }
            }
            EventKind::ProviderFailed(failure) => {
                if let Some(round) = record.rounds.last_mut() {
                    if let Some(u) = failure.usage {
                        round.dropped.push(u);
                    }
                    // What the next request produces starts here (a
                    // continuation's prefix was the failed request's).
                    round.serving_from_chars = round.text.chars().count();
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
            EventKind::SpeechPlayed { chars } => {
                let chars = *chars;
                record.heard_chars = Some(record.heard_chars.map_or(chars, |h| h.max(chars)));
                self.refresh_speaking();
            }
            _ => {}
        }
        Ok(())
    }
}
