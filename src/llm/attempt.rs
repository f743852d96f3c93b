//! One request to one provider, as a stream of events: connect, parse,
//! deadlines, retries, finish.
//!
//! Rules that hold whatever the provider does:
//! - `[DONE]`, or a finish reason followed by EOF, is success; EOF with neither is
//!   [`LlmError::Incomplete`], never a silent success.
//! - `event: error` or a chunk with an `error` object is [`LlmError::Provider`];
//!   usage that arrived in the same chunk is delivered first.
//! - A 200 that is one JSON completion instead of an event stream is delivered as
//!   events, not dropped.
//! - Retries happen only before the first output event, so nothing is
//!   repeated. Usage is held until its request ends: the answer's request
//!   reports it as [`StreamEvent::Usage`] right before `Finished` (or before
//!   the error that ends the stream), a request that is retried reports it in
//!   its [`StreamEvent::Retrying`]; each request's usage is delivered once.
//! - The read gap runs on the body's bytes: any bytes, SSE comments included,
//!   prove the connection alive. The first-token and output-gap deadlines run
//!   on the model's progress (text, reasoning, refusal, tool-call deltas):
//!   comments, role-only or empty chunks, metadata and usage do not satisfy
//!   them. They run on tokio's clock, so a paused test clock drives them.
//!
//! The events are a `futures::stream::unfold` over a [`RequestDriver`] that owns
//! the HTTP response: no task, no channel, and dropping the stream closes the
//! connection. A poll that is abandoned keeps its in-flight work, which is
//! what lets a chain race two attempts in one `select!`.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::EventStreamError;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use super::config::{RetryPolicy, StreamLimits};
use super::error::LlmError;
use super::event::{RequestsSent, Retrying, StreamEvent};
use super::genai;
use super::parse::{ChunkParser, provider_error};
use super::read_gap::ReadGap;
use super::sse::{ByteSource, SseSource, guarded};
use super::structured::StructuredOutput;
use super::transport::{ClientInner, Connected, Connector, Prepared};

/// The events of one stream, boxed.
pub(crate) type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>;

/// The events of `prepared` sent to `client` with `retry` as its retry policy.
pub(crate) fn request(
    client: &Arc<ClientInner>,
    prepared: Prepared,
    retry: RetryPolicy,
    structured: Option<StructuredOutput>,
    sent: RequestsSent,
) -> EventStream {
    let connector = Connector::new(client.clone(), prepared, retry);
    let mut d = RequestDriver::new(Some(connector), client.config.limits, structured);
    d.sent = sent;
    d.events()
}

/// The events of an SSE body from any byte stream: no deadlines, no retries.
pub(crate) fn replay<S>(
    source: S,
    limits: StreamLimits,
    structured: Option<StructuredOutput>,
) -> EventStream
where
    S: Stream<Item = Result<Bytes, LlmError>> + Send + 'static,
{
    let mut d = RequestDriver::new(None, limits, structured);
    d.phase = Phase::Body(guarded(Box::pin(source), limits.max_event_bytes));
    d.events()
}

enum Phase {
    Connect,
    Body(SseSource),
    Done,
}

/// Drives one request: connect, parse, retry, finish.
pub(crate) struct RequestDriver {
    connector: Option<Connector>,
    limits: StreamLimits,
    structured: Option<Arc<StructuredOutput>>,
    phase: Phase,
    state: ChunkParser,
    pending: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    attempts: u32,
    attempt_started: Instant,
    /// The backoff to wait before the next request (set by a retry).
    backoff: Option<Duration>,
    first_output_recorded: bool,
    /// The request's end was recorded (GenAI duration).
    end_recorded: bool,
    /// Start of the current output gap: the first wait after the model's
    /// last progress (for published output: when the consumer came back for
    /// more, so a slow consumer does not look like a slow model).
    gap_anchor: Instant,
    /// `state.progress` when the gap was last anchored.
    gap_progress: u64,
    /// An output event was yielded: no retry may follow.
    committed: bool,
    /// One span per HTTP attempt, with the provider's request id once known.
    span: tracing::Span,
    /// Counts the requests sent.
    sent: RequestsSent,
}

/// What [`RequestDriver::fail`] decided.
enum Failure {
    /// End the stream with this error.
    Fail(LlmError),
    /// Send the request again after this delay.
    Retry(LlmError, Duration),
}

impl RequestDriver {
    fn events(self) -> EventStream {
        Box::pin(futures_util::stream::unfold(self, |mut d| async move {
            let item = d.next_event().await?;
            Some((item, d))
        }))
    }

    fn new(
        connector: Option<Connector>,
        limits: StreamLimits,
        structured: Option<StructuredOutput>,
    ) -> Self {
        let state = ChunkParser::new(&limits, structured.as_ref());
        Self {
            connector,
            limits,
            structured: structured.map(Arc::new),
            phase: Phase::Connect,
            state,
            pending: VecDeque::new(),
            error: None,
            attempts: 0,
            attempt_started: Instant::now(),
            backoff: None,
            first_output_recorded: false,
            end_recorded: false,
            gap_anchor: Instant::now(),
            gap_progress: 0,
            committed: false,
            span: tracing::Span::none(),
            sent: RequestsSent::default(),
        }
    }

    /// The output deadline of the next wait: the first-token deadline while
    /// the model made no progress, then the output-gap deadline, each with the
    /// error it raises and the time left. The read gap is not here: it runs on
    /// the body's bytes ([`ReadGap`]), so SSE comments keep a stream alive but
    /// never count as output.
    fn output_deadline(&mut self) -> Option<(LlmError, Duration)> {
        let connector = self.connector.as_ref()?;
        if self.state.progress == 0 {
            let deadline = connector.first_token_timeout()?;
            return Some((
                LlmError::FirstTokenTimeout(deadline),
                deadline.saturating_sub(self.attempt_started.elapsed()),
            ));
        }
        let gap = connector.output_gap_timeout()?;
        if self.gap_progress != self.state.progress {
            self.gap_progress = self.state.progress;
            self.gap_anchor = Instant::now();
        }
        Some((
            LlmError::OutputGapTimeout(gap),
            gap.saturating_sub(self.gap_anchor.elapsed()),
        ))
    }

    /// The request's duration, once (GenAI conventions), when it ends.
    fn record_end(&mut self, error: Option<&'static str>) {
        if self.end_recorded {
            return;
        }
        self.end_recorded = true;
        if let Some(c) = &self.connector {
            let secs = self.attempt_started.elapsed().as_secs_f64();
            genai::finished(c.provider_name(), c.model(), secs, error);
        }
    }

    /// Decides between retrying and failing.
    fn fail(&mut self, error: LlmError) -> Failure {
        let Some(connector) = &self.connector else {
            return Failure::Fail(error);
        };
        let policy = connector.retry_policy();
        let retries_done = self.attempts.saturating_sub(1);
        if self.state.emitted_output
            || self.committed
            || !error.is_retryable()
            || retries_done >= policy.max_retries
        {
            metrics::counter!("colloquy_llm_errors_total", "kind" => error.kind()).increment(1);
            return Failure::Fail(error);
        }
        let delay = policy.delay(retries_done, error.retry_after());
        tracing::warn!(error = %error, attempt = self.attempts, ?delay, "retrying chat request before first token");
        metrics::counter!("colloquy_llm_retries_total").increment(1);
        Failure::Retry(error, delay)
    }

    async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                // Metadata and retry notices are per request: a retry may follow.
                self.committed |=
                    !matches!(ev, StreamEvent::Metadata { .. } | StreamEvent::Retrying(_));
                if let Some(c) = &self.connector {
                    if !self.first_output_recorded && self.state.emitted_output {
                        self.first_output_recorded = true;
                        let secs = self.attempt_started.elapsed().as_secs_f64();
                        metrics::histogram!("colloquy_llm_time_to_first_token_seconds")
                            .record(secs);
                        genai::first_chunk(c.provider_name(), c.model(), secs);
                    }
                    if let StreamEvent::Usage(u) = &ev {
                        genai::usage(c.provider_name(), c.model(), u);
                    }
                }
                return Some(Ok(ev));
            }
            if let Some(error) = self.error.take() {
                self.record_end(Some(error.kind()));
                return Some(Err(error));
            }
            let span = self.span.clone();
            let result = match &mut self.phase {
                Phase::Done => {
                    self.record_end(None);
                    return None;
                }
                Phase::Connect => self.connect().instrument(span).await,
                Phase::Body(_) => self.read().instrument(span).await,
            };
            if let Err(error) = result {
                let error = match &self.connector {
                    Some(c) => c.scrub(error),
                    None => error,
                };
                match self.fail(error) {
                    // Events that arrived with the error, and the request's
                    // usage, are delivered first.
                    Failure::Fail(error) => {
                        if let Some(u) = self.state.usage.take() {
                            self.pending.push_back(StreamEvent::Usage(u));
                        }
                        self.phase = Phase::Done;
                        self.error = Some(error);
                    }
                    Failure::Retry(error, delay) => {
                        self.pending.clear();
                        self.pending.push_back(StreamEvent::Retrying(Retrying {
                            attempt: self.attempts,
                            kind: error.kind(),
                            message: error.to_string(),
                            delay,
                            usage: self.state.usage.take(),
                        }));
                        self.backoff = Some(delay);
                        self.phase = Phase::Connect;
                    }
                }
            }
        }
    }

    async fn connect(&mut self) -> Result<(), LlmError> {
        let Some(connector) = self.connector.clone() else {
            self.phase = Phase::Done;
            return Ok(());
        };
        if let Some(delay) = self.backoff.take() {
            tokio::time::sleep(delay).await;
        }
        self.attempts += 1;
        self.attempt_started = Instant::now();
        self.span = tracing::debug_span!(
            "llm_request",
            provider = %connector.label(),
            attempt = self.attempts,
            request_id = tracing::field::Empty
        );
        self.state = ChunkParser::new(&self.limits, self.structured.as_deref());
        self.gap_progress = 0;
        self.sent.add();
        let send = connector.send();
        let connected = match connector.first_token_timeout() {
            Some(deadline) => tokio::time::timeout(deadline, send)
                .await
                .map_err(|_| LlmError::FirstTokenTimeout(deadline))??,
            None => send.await?,
        };
        match connected {
            Connected::Sse { body, request_id } => {
                if let Some(id) = &request_id {
                    self.span.record("request_id", id.as_str());
                }
                self.state.request_id = request_id;
                let body: ByteSource = Box::pin(ReadGap::new(body, connector.read_gap()));
                self.phase = Phase::Body(guarded(body, self.limits.max_event_bytes));
            }
            Connected::Completion { body, request_id } => {
                self.state.request_id = request_id;
                self.phase = Phase::Done;
                self.state.data(&body, &mut self.pending)?;
                self.state.finalize(self.attempts, &mut self.pending)?;
            }
        }
        Ok(())
    }

    async fn read(&mut self) -> Result<(), LlmError> {
        let deadline = self.output_deadline();
        let Phase::Body(body) = &mut self.phase else {
            return Ok(());
        };
        let next = match deadline {
            Some((error, left)) => match tokio::time::timeout(left, body.next()).await {
                Ok(next) => next,
                // The answer is complete; the server only forgot `[DONE]`.
                Err(_) if self.state.finish.is_some() => None,
                Err(_) => return Err(error),
            },
            None => body.next().await,
        };
        let next = match next {
            // Silence after the finish reason: the server forgot `[DONE]`.
            Some(Err(EventStreamError::Transport(LlmError::Stalled(_))))
                if self.state.finish.is_some() =>
            {
                None
            }
            next => next,
        };
        match next {
            None => {
                self.phase = Phase::Done;
                if self.state.saw_done || self.state.finish.is_some() {
                    self.state.finalize(self.attempts.max(1), &mut self.pending)
                } else {
                    Err(LlmError::Incomplete)
                }
            }
            Some(Err(EventStreamError::Transport(e))) => Err(e),
            Some(Err(EventStreamError::Utf8(e))) => Err(LlmError::MalformedChunk(e.to_string())),
            Some(Err(EventStreamError::Parser(e))) => Err(LlmError::MalformedChunk(e.to_string())),
            Some(Ok(event)) => {
                if event.event == "error" {
                    let value = serde_json::from_str(&event.data)
                        .unwrap_or_else(|_| serde_json::Value::String(event.data.clone()));
                    return Err(provider_error(&value));
                }
                if self.state.data(&event.data, &mut self.pending)? {
                    self.phase = Phase::Done;
                    self.state
                        .finalize(self.attempts.max(1), &mut self.pending)?;
                }
                Ok(())
            }
        }
    }
}
