//! The chain's stream: runs attempts on the chain's providers and yields the
//! events of the one whose output is used.
//!
//! Each attempt is a plain single-provider [`ChatStream`] (its deadlines on
//! useful output run inside it) with retries off: the next provider is the
//! retry. Attempts are polled in place — no task — so dropping the chain's
//! stream drops every attempt and closes every connection at once. A
//! `ChatStream` keeps its in-flight work when a poll of it is abandoned, which
//! is what lets two attempts race in one `select!`.
//!
//! Per stream, at most two attempts run at once (a primary and its hedge),
//! and only one is ever *serving*: its events are yielded; the others'
//! events are never yielded, except the usage they report, on the event
//! that drops them.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::breaker::Permit;
use super::continuation::OverlapFilter;
use super::hedge::LatencyWindow;
use super::{ChainRequest, ChainShared, Hedging, MidStreamFailure};
use crate::llm::config::RetryPolicy;
use crate::llm::error::LlmError;
use crate::llm::event::{
    FailureReason, FinishReason, ProviderChoice, ProviderFailure, SelectionReason, StreamEvent,
    StreamSummary,
};
use crate::llm::stream::ChatStream;
use crate::llm::usage::Usage;

/// No retries inside an attempt: a failure moves to the next provider at once.
const NO_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 0,
    initial_backoff: std::time::Duration::ZERO,
    max_backoff: std::time::Duration::ZERO,
};

/// One request to one provider.
struct Attempt {
    index: usize,
    reason: SelectionReason,
    /// It continues text another provider published.
    continuation: bool,
    stream: ChatStream,
    started: Instant,
    prompt_bytes: usize,
    usage: Option<Usage>,
    metadata: Option<StreamEvent>,
    /// Characters of output it produced (for a usage estimate).
    output_chars: usize,
    permit: Permit,
}

impl Attempt {
    /// The provider's figure, else an estimate (marked).
    fn usage_or_estimate(&self) -> Usage {
        self.usage
            .unwrap_or_else(|| Usage::estimate(self.prompt_bytes, self.output_chars))
    }
}

/// What one wait produced.
enum Step {
    /// An item of the serving attempt.
    Serving(Option<Result<StreamEvent, LlmError>>),
    /// An item of racing attempt `slot`.
    Racing(usize, Option<Result<StreamEvent, LlmError>>),
    /// The hedge delay passed without output.
    Hedge,
}

pub(crate) struct ChainDriver {
    chain: Arc<ChainShared>,
    mid_stream: MidStreamFailure,
    request: ChainRequest,
    /// Attempts without output yet: one, or two while a hedge races.
    racing: Vec<Attempt>,
    /// The attempt whose output is used.
    serving: Option<Attempt>,
    /// Providers already used (or skipped) by this stream.
    tried: Vec<bool>,
    started: bool,
    hedge_used: bool,
    /// A hedge started and no attempt has won yet.
    race_open: bool,
    out: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    done: bool,
    /// Text published so far (the prefix a continuation continues).
    text: String,
    calls: usize,
    reasoned: bool,
    refused: bool,
    filter: Option<OverlapFilter>,
    /// HTTP requests sent.
    requests: u32,
    /// The last provider dropped and why (fallback metrics).
    last_drop: Option<(usize, &'static str)>,
}

impl ChainDriver {
    pub(crate) fn new(
        chain: Arc<ChainShared>,
        mid_stream: MidStreamFailure,
        request: ChainRequest,
    ) -> Result<Self, LlmError> {
        // Headers are checked now, so a bad one fails the call, not the stream.
        chain.providers[0].client.prepare(
            &request.extra_headers,
            &request.extra_query,
            bytes::Bytes::new(),
        )?;
        let n = chain.providers.len();
        Ok(Self {
            chain,
            mid_stream,
            request,
            racing: Vec::with_capacity(2),
            serving: None,
            tried: vec![false; n],
            started: false,
            hedge_used: false,
            race_open: false,
            out: VecDeque::new(),
            error: None,
            done: false,
            text: String::new(),
            calls: 0,
            reasoned: false,
            refused: false,
            filter: None,
            requests: 0,
            last_drop: None,
        })
    }

    pub(crate) async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        loop {
            if let Some(ev) = self.out.pop_front() {
                return Some(Ok(ev));
            }
            if let Some(error) = self.error.take() {
                self.done = true;
                return Some(Err(error));
            }
            if self.done {
                return None;
            }
            if !self.started {
                self.started = true;
                self.start_first();
                continue;
            }
            if self.serving.is_none() && self.racing.is_empty() {
                // Nothing runs and nothing was decided: cannot happen, but
                // never hang on it.
                self.error = Some(LlmError::Incomplete);
                continue;
            }
            match self.wait().await {
                Step::Serving(item) => self.on_serving(item),
                Step::Racing(slot, item) => self.on_racing(slot, item),
                Step::Hedge => self.start_hedge(),
            }
        }
    }

    async fn wait(&mut self) -> Step {
        if let Some(serving) = self.serving.as_mut() {
            return Step::Serving(serving.stream.next().await);
        }
        let hedge_at = self.hedge_at();
        let hedge = async move {
            match hedge_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        match self.racing.as_mut_slice() {
            [a] => tokio::select! {
                biased;
                item = a.stream.next() => Step::Racing(0, item),
                () = hedge => Step::Hedge,
            },
            [a, b] => tokio::select! {
                item = a.stream.next() => Step::Racing(0, item),
                item = b.stream.next() => Step::Racing(1, item),
            },
            _ => Step::Serving(Some(Err(LlmError::Incomplete))),
        }
    }

    fn published_anything(&self) -> bool {
        !self.text.is_empty() || self.calls > 0 || self.reasoned || self.refused
    }

    /// When to start the hedge, if one may start.
    fn hedge_at(&self) -> Option<Instant> {
        if self.hedge_used
            || self.racing.len() != 1
            || self.published_anything()
            || !self.tried.iter().any(|t| !t)
        {
            return None;
        }
        let attempt = &self.racing[0];
        if attempt.continuation {
            return None;
        }
        let delay = match &self.chain.hedging {
            Hedging::Off => return None,
            Hedging::After(d) => *d,
            Hedging::Adaptive(config) => self.chain.providers[attempt.index]
                .window
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .delay(config),
        };
        Some(attempt.started + delay)
    }

    fn provider_event(&self, index: usize) -> (Arc<str>, Arc<str>) {
        let client = &self.chain.providers[index].client;
        (client.label.clone(), client.base_url.clone())
    }

    fn push_failure(
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
    fn next_provider(&mut self, force: bool) -> Option<(usize, Permit)> {
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

    fn start_first(&mut self) {
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

    fn count_fallback(&self, to: usize) {
        if let Some((from, reason)) = self.last_drop {
            let label = |i: usize| self.chain.providers[i].client.label.to_string();
            metrics::counter!("colloquy_llm_fallbacks_total",
                "from" => label(from), "to" => label(to), "reason" => reason)
            .increment(1);
            tracing::info!(from = %label(from), to = %label(to), reason, "falling back to the next provider");
        }
    }

    fn start_attempt(
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
        let prepared =
            entry
                .client
                .prepare(&self.request.extra_headers, &self.request.extra_query, body)?;
        let stream = entry
            .client
            .attempt(prepared, NO_RETRY, self.request.structured.clone());
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
    fn fall_back(&mut self, continuation: bool, error: LlmError) {
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

    fn start_hedge(&mut self) {
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

    fn on_racing(&mut self, slot: usize, item: Option<Result<StreamEvent, LlmError>>) {
        let Some(attempt) = self.racing.get_mut(slot) else {
            return;
        };
        match item {
            Some(Ok(StreamEvent::Metadata { request_id, model })) => {
                attempt.metadata = Some(StreamEvent::Metadata { request_id, model });
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
    fn promote(&mut self, mut attempt: Attempt) {
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
    fn publish_text(&mut self, text: String) {
        if !text.is_empty() {
            self.text.push_str(&text);
            self.out.push_back(StreamEvent::Token(text));
        }
    }

    /// The continuation moved past plain text: what the filter still holds is
    /// decided now.
    fn end_filter(&mut self) {
        if let Some(filter) = self.filter.take() {
            let rest = filter.finish();
            self.publish_text(rest);
        }
    }

    fn add_chars(&mut self, n: usize) {
        if let Some(serving) = self.serving.as_mut() {
            serving.output_chars += n;
        }
    }

    fn on_serving(&mut self, item: Option<Result<StreamEvent, LlmError>>) {
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
    fn attempt_failed(&mut self, mut attempt: Attempt, error: LlmError) {
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
    fn serving_failed(&mut self, error: LlmError) {
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

impl Drop for ChainDriver {
    fn drop(&mut self) {
        if self.race_open {
            metrics::counter!("colloquy_llm_hedges_total", "outcome" => "cancelled").increment(1);
        }
    }
}
