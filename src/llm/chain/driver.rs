//! The chain's stream: runs attempts on the chain's providers and yields the
//! events of the one whose output is used.
//!
//! Each attempt is a plain single-provider request stream
//! ([`attempt::request`](crate::llm::attempt::request): its deadlines on useful output run inside it) with
//! retries off: the next provider is the retry. Attempts are polled in place
//! — no task — so dropping the chain's stream drops every attempt and closes
//! every connection at once. An attempt stream keeps its in-flight work when
//! a poll of it is abandoned, which is what lets two attempts race in one
//! `select!`.
//!
//! Per stream, at most two attempts run at once (a primary and its hedge),
//! and only one is ever *serving*: its events are yielded; the others'
//! events are never yielded, except the usage they report, on the event
//! that drops them.

mod select;
mod serve;

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::time::Instant;

use super::breaker::Permit;
use super::continuation::OverlapFilter;
use super::hedge::Hedging;
use super::shared::{ChainRequest, ChainShared};
use super::spec::MidStreamFailure;
use crate::llm::attempt::EventStream;
use crate::llm::error::LlmError;
use crate::llm::event::{RequestsSent, SelectionReason, StreamEvent};
use crate::llm::usage::Usage;

/// One request to one provider.
struct Attempt {
    index: usize,
    reason: SelectionReason,
    /// It continues text another provider published.
    continuation: bool,
    stream: EventStream,
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
    /// Counts the requests sent, for the stream's caller (each attempt's
    /// driver counts on it as it sends).
    sent: RequestsSent,
    /// The last provider dropped and why (fallback metrics).
    last_drop: Option<(usize, &'static str)>,
}

impl ChainDriver {
    pub(crate) fn new(
        chain: Arc<ChainShared>,
        mid_stream: MidStreamFailure,
        request: ChainRequest,
        sent: RequestsSent,
    ) -> Result<Self, LlmError> {
        // Headers are checked now, so a bad one fails the call, not the stream.
        chain.providers[0].client.prepare(
            &request.extra_headers,
            &request.extra_query,
            bytes::Bytes::new(),
            "",
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
            sent,
            last_drop: None,
        })
    }

    /// The chain's events.
    pub(crate) fn events(self) -> EventStream {
        Box::pin(futures_util::stream::unfold(self, |mut d| async move {
            let item = d.next_event().await?;
            Some((item, d))
        }))
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
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
}

impl Drop for ChainDriver {
    fn drop(&mut self) {
        if self.race_open {
            metrics::counter!("colloquy_llm_hedges_total", "outcome" => "cancelled").increment(1);
        }
    }
}
