//! Which provider runs next: breakers, fallback order, hedges, and the
//! request each attempt sends.

use std::sync::Arc;

use tokio::time::Instant;

use super::{Attempt, ChainDriver};
use crate::llm::attempt;
use crate::llm::chain::breaker::Permit;
use crate::llm::config::RetryPolicy;
use crate::llm::error::LlmError;
use crate::llm::event::{FailureReason, ProviderFailure, SelectionReason, StreamEvent};
use crate::llm::usage::Usage;

/// No retries inside an attempt: a failure moves to the next provider at once.
const NO_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 0,
    initial_backoff: std::time::Duration::ZERO,
    max_backoff: std::time::Duration::ZERO,
};

impl ChainDriver {
    pub(super) fn provider_event(&self, index: usize) -> (Arc<str>, Arc<str>) {
        let client = &self.chain.providers[index].client;
        (client.label.clone(), client.base_url.clone())
    }

    pub(super) fn push_failure(
        &mut self,
        index: usize,
        reason: FailureReason,
        after_output: bool,
        usage: Option<Usage>,
    ) {
        let (label, base_url) = self.provider_event(index);
        self.last_drop = Some((index, reason.label()));
        self.out
            .push_back(StreamEvent::ProviderFailed(ProviderFailure {
                index,
                label,
                base_url,
                reason,
                after_output,
                usage,
            }));
    }

    /// The next provider in order that this stream has not used and whose
    /// breaker lets a request through; skipped ones are reported. With
    /// `force`, when every remaining breaker is open, the one that reopens
    /// first is probed anyway.
    pub(super) fn next_provider(&mut self, force: bool) -> Option<(usize, Permit)> {
        let mut skipped = Vec::new();
        let mut found = None;
        for (i, entry) in self.chain.providers.iter().enumerate() {
            if self.tried[i] {
                continue;
            }
            match &entry.breaker {
                None => {
                    found = Some((i, Permit::unguarded()));
                    break;
                }
                Some(b) => match b.acquire() {
                    Some(permit) => {
                        found = Some((i, permit));
                        break;
                    }
                    None => skipped.push(i),
                },
            }
        }
        if found.is_none() && force {
            let soonest = skipped.iter().copied().min_by_key(|&i| {
                self.chain.providers[i]
                    .breaker
                    .as_ref()
                    .and_then(|b| b.open_until())
            });
            if let Some(i) = soonest {
                skipped.retain(|&s| s != i);
                if let Some(b) = &self.chain.providers[i].breaker {
                    tracing::warn!(provider = %self.chain.providers[i].client.label, "every provider's circuit is open: probing the one that reopens first");
                    found = Some((i, b.force()));
                }
            }
        }
        for i in skipped {
            self.tried[i] = true;
            self.push_failure(i, FailureReason::CircuitOpen, false, None);
        }
        found
    }

    pub(super) fn start_first(&mut self) {
        match self.next_provider(true) {
            Some((i, permit)) => {
                let reason = if i == 0 {
                    SelectionReason::Primary
                } else {
                    self.count_fallback(i);
                    SelectionReason::Fallback
                };
                if let Err(e) = self.start_attempt(i, reason, permit, false) {
                    self.error = Some(e);
                }
            }
            None => self.error = Some(LlmError::Incomplete),
        }
    }

    pub(super) fn count_fallback(&self, to: usize) {
        if let Some((from, reason)) = self.last_drop {
            let label = |i: usize| self.chain.providers[i].client.label.to_string();
            metrics::counter!("colloquy_llm_fallbacks_total",
                "from" => label(from), "to" => label(to), "reason" => reason)
            .increment(1);
            tracing::info!(from = %label(from), to = %label(to), reason, "falling back to the next provider");
        }
    }

    pub(super) fn start_attempt(
        &mut self,
        index: usize,
        reason: SelectionReason,
        permit: Permit,
        continuation: bool,
    ) -> Result<(), LlmError> {
        self.tried[index] = true;
        let entry = &self.chain.providers[index];
        let prefix = continuation.then_some(self.text.as_str());
        let body = self.request.body(
            index,
            entry.model.as_deref(),
            prefix,
            &self.chain.instruction,
        )?;
        let prompt_bytes = body.len();
        let model = entry
            .model
            .as_deref()
            .or_else(|| self.request.base["model"].as_str())
            .unwrap_or("");
        let prepared = entry.client.prepare(
            &self.request.extra_headers,
            &self.request.extra_query,
            body,
            model,
        )?;
        let stream = attempt::request(
            &entry.client,
            prepared,
            NO_RETRY,
            self.request.structured.clone(),
            self.sent.clone(),
        );
        metrics::counter!("colloquy_llm_requests_total").increment(1);
        if self.requests > 0 {
            // Yielded before the attempt is first polled (queued events go
            // out first), so it is announced before it is sent.
            self.out.push_back(StreamEvent::RequestStarted { index });
        }
        self.requests += 1;
        self.racing.push(Attempt {
            index,
            reason,
            continuation,
            stream,
            started: Instant::now(),
            prompt_bytes,
            usage: None,
            metadata: None,
            output_chars: 0,
            permit,
        });
        Ok(())
    }

    /// Moves on after `error`: the next provider at once, else the error.
    pub(super) fn fall_back(&mut self, continuation: bool, error: LlmError) {
        match self.next_provider(false) {
            Some((i, permit)) => {
                self.count_fallback(i);
                if let Err(e) =
                    self.start_attempt(i, SelectionReason::Fallback, permit, continuation)
                {
                    self.error = Some(e);
                }
            }
            None => self.error = Some(error),
        }
    }

    pub(super) fn start_hedge(&mut self) {
        self.hedge_used = true;
        let Some((i, permit)) = self.next_provider(false) else {
            return;
        };
        if self
            .start_attempt(i, SelectionReason::Hedge, permit, false)
            .is_ok()
        {
            self.race_open = true;
            metrics::counter!("colloquy_llm_hedges_total", "outcome" => "started").increment(1);
            tracing::info!(provider = %self.chain.providers[i].client.label, "hedging: first output is late");
        }
    }
}
