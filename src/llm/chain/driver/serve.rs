//! What the attempts' events do: the race to the first useful output, the
//! serving attempt's events (continuation filtering), and failures before
//! and after output.

use super::{Attempt, ChainDriver};
use crate::llm::chain::continuation::OverlapFilter;
use crate::llm::chain::hedge::LatencyWindow;
use crate::llm::chain::spec::MidStreamFailure;
use crate::llm::error::LlmError;
use crate::llm::event::{
    FailureReason, FinishReason, ProviderChoice, SelectionReason, StreamEvent, StreamSummary,
};

impl ChainDriver {
    pub(super) fn on_racing(&mut self, slot: usize, item: Option<Result<StreamEvent, LlmError>>) {
        let Some(attempt) = self.racing.get_mut(slot) else {
            return;
        };
        match item {
            Some(Ok(m @ StreamEvent::Metadata { .. })) => {
                attempt.metadata = Some(m);
            }
            Some(Ok(StreamEvent::Usage(u))) => attempt.usage = Some(u),
            Some(Ok(StreamEvent::Finished(summary))) => {
                let attempt = self.racing.remove(slot);
                if attempt.continuation {
                    // Nothing more to say: the reply was already complete.
                    self.promote(attempt);
                    self.on_serving(Some(Ok(StreamEvent::Finished(summary))));
                } else {
                    self.attempt_failed(attempt, LlmError::EmptyCompletion);
                }
            }
            Some(Ok(
                ev @ (StreamEvent::Token(_)
                | StreamEvent::Reasoning(_)
                | StreamEvent::Refusal(_)
                | StreamEvent::ToolCall(_)
                | StreamEvent::Structured(_)),
            )) => {
                let attempt = self.racing.remove(slot);
                self.promote(attempt);
                self.on_serving(Some(Ok(ev)));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                let attempt = self.racing.remove(slot);
                self.attempt_failed(attempt, e);
            }
            None => {
                let attempt = self.racing.remove(slot);
                self.attempt_failed(attempt, LlmError::Incomplete);
            }
        }
    }

    /// `attempt` produced the first useful output: it serves the stream; a
    /// racing attempt loses and is dropped (its connection closes now).
    pub(super) fn promote(&mut self, mut attempt: Attempt) {
        for loser in std::mem::take(&mut self.racing) {
            let usage = loser.usage_or_estimate();
            metrics::counter!("colloquy_llm_hedge_cost_tokens_total").increment(usage.total_tokens);
            let index = loser.index;
            drop(loser);
            self.push_failure(index, FailureReason::HedgeLost, false, Some(usage));
        }
        if std::mem::take(&mut self.race_open) {
            let outcome = if attempt.reason == SelectionReason::Hedge {
                "hedge_won"
            } else {
                "primary_won"
            };
            metrics::counter!("colloquy_llm_hedges_total", "outcome" => outcome).increment(1);
        }
        attempt.permit.success();
        if !attempt.continuation {
            let window = LatencyWindow::window(&self.chain.hedging);
            self.chain.providers[attempt.index]
                .window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(attempt.started.elapsed(), window);
        }
        let (label, base_url) = self.provider_event(attempt.index);
        self.out
            .push_back(StreamEvent::ProviderSelected(ProviderChoice {
                index: attempt.index,
                label,
                base_url,
                reason: attempt.reason,
                continuation: attempt.continuation,
            }));
        if let Some(metadata) = attempt.metadata.take() {
            self.out.push_back(metadata);
        }
        if attempt.continuation {
            self.filter = Some(OverlapFilter::new(&self.text));
        }
        self.serving = Some(attempt);
    }

    /// Publishes text the filter released.
    pub(super) fn publish_text(&mut self, text: String) {
        if !text.is_empty() {
            self.text.push_str(&text);
            self.out.push_back(StreamEvent::Token(text));
        }
    }

    /// The continuation moved past plain text: what the filter still holds is
    /// decided now.
    pub(super) fn end_filter(&mut self) {
        if let Some(filter) = self.filter.take() {
            let rest = filter.finish();
            self.publish_text(rest);
        }
    }

    pub(super) fn add_chars(&mut self, n: usize) {
        if let Some(serving) = self.serving.as_mut() {
            serving.output_chars += n;
        }
    }

    pub(super) fn on_serving(&mut self, item: Option<Result<StreamEvent, LlmError>>) {
        if self.serving.is_none() {
            return;
        }
        match item {
            Some(Ok(StreamEvent::Token(t))) => {
                self.add_chars(t.chars().count());
                let t = match self.filter.as_mut() {
                    Some(filter) => filter.push(&t),
                    None => t,
                };
                self.publish_text(t);
            }
            Some(Ok(StreamEvent::Reasoning(t))) => {
                self.add_chars(t.chars().count());
                self.reasoned = true;
                self.out.push_back(StreamEvent::Reasoning(t));
            }
            Some(Ok(StreamEvent::Refusal(t))) => {
                self.add_chars(t.chars().count());
                self.end_filter();
                self.refused = true;
                self.out.push_back(StreamEvent::Refusal(t));
            }
            Some(Ok(StreamEvent::ToolCall(call))) => {
                self.add_chars(call.arguments.chars().count());
                self.end_filter();
                self.calls += 1;
                self.out.push_back(StreamEvent::ToolCall(call));
            }
            Some(Ok(ev @ StreamEvent::Structured(_))) => {
                self.end_filter();
                self.out.push_back(ev);
            }
            Some(Ok(StreamEvent::Usage(u))) => {
                if let Some(serving) = self.serving.as_mut() {
                    serving.usage = Some(u);
                }
            }
            Some(Ok(StreamEvent::Finished(mut summary))) => {
                self.end_filter();
                if let Some(u) = self.serving.take().and_then(|s| s.usage) {
                    self.out.push_back(StreamEvent::Usage(u));
                }
                summary.attempts = self.requests;
                self.out.push_back(StreamEvent::Finished(summary));
                self.done = true;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => self.serving_failed(e),
            None => self.serving_failed(LlmError::Incomplete),
        }
    }

    /// An attempt failed before its first useful output.
    pub(super) fn attempt_failed(&mut self, mut attempt: Attempt, error: LlmError) {
        attempt.permit.failure();
        tracing::warn!(provider = %self.chain.providers[attempt.index].client.label, error = %error, "provider failed before its first output");
        let usage = attempt.usage_or_estimate();
        let (index, continuation) = (attempt.index, attempt.continuation);
        drop(attempt);
        self.push_failure(
            index,
            FailureReason::Error {
                kind: error.kind(),
                message: error.to_string(),
            },
            false,
            Some(usage),
        );
        if !self.racing.is_empty() {
            return; // the other attempt of the race goes on
        }
        if std::mem::take(&mut self.race_open) {
            metrics::counter!("colloquy_llm_hedges_total", "outcome" => "failed").increment(1);
        }
        self.fall_back(continuation, error);
    }

    /// The serving attempt failed after its output was published.
    pub(super) fn serving_failed(&mut self, error: LlmError) {
        let Some(mut serving) = self.serving.take() else {
            return;
        };
        serving.permit.failure();
        tracing::warn!(provider = %self.chain.providers[serving.index].client.label, error = %error, "provider failed mid-stream");
        // Held continuation text is a restatement in progress: already heard.
        self.filter = None;
        let usage = serving.usage_or_estimate();
        let index = serving.index;
        drop(serving);
        self.push_failure(
            index,
            FailureReason::Error {
                kind: error.kind(),
                message: error.to_string(),
            },
            true,
            Some(usage),
        );
        let continue_ = self.mid_stream == MidStreamFailure::Continue;
        if self.calls > 0 {
            if continue_ {
                // The published calls are complete: they run, and the next
                // round (any provider) sees their outputs. Asking another
                // provider to continue could make it call them again.
                self.out.push_back(StreamEvent::Finished(StreamSummary {
                    reason: Some(FinishReason::ToolCalls),
                    saw_done: false,
                    attempts: self.requests,
                }));
                self.done = true;
            } else {
                self.error = Some(error);
            }
        } else if !self.text.is_empty() || self.refused {
            if continue_ && !self.refused && self.request.structured.is_none() {
                self.fall_back(true, error);
            } else {
                self.error = Some(error);
            }
        } else {
            // Only reasoning was published (never spoken): start afresh.
            self.fall_back(false, error);
        }
    }
}
