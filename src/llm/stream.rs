//! The chat stream: bytes in, [`StreamEvent`]s out, with the end-of-stream rules.
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
//!   them.
//!
//! The stream is a `futures::stream::unfold` over a driver that owns the HTTP
//! response: no task, no channel, and dropping the stream closes the connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStream, EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use super::chunk::{WireChunk, WireContent, WireDelta, split_parts};
use super::client::{Connected, Connector};
use super::error::{LlmError, parse_provider_error};
use super::event::{FinishReason, Retrying, StreamEvent, StreamSummary, ToolCall};
use super::read_gap::ReadGap;
use super::structured::{JsonFieldStreamer, StructuredOutput};
use super::tool_call_assembler::ToolCallAssembler;
use super::usage::Usage;

/// Size caps that keep one misbehaving stream from taking unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bytes of one server-sent event (default 1 MiB).
    pub max_event_bytes: usize,
    /// Bytes of all tool-call arguments of one response (default 1 MiB).
    pub max_tool_argument_bytes: usize,
    /// Bytes of an error body or a non-streamed completion (default 4 MiB).
    pub max_body_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_tool_argument_bytes: 1 << 20,
            max_body_bytes: 4 << 20,
        }
    }
}

pub(crate) type ByteSource = Pin<Box<dyn Stream<Item = Result<Bytes, LlmError>> + Send>>;
type SseSource = EventStream<ByteSource>;

/// A stream of [`StreamEvent`]s for one chat completion.
///
/// Ends after [`StreamEvent::Finished`] or after the first error. Dropping it
/// closes the HTTP connection immediately.
pub struct ChatStream {
    inner: Pin<Box<dyn Stream<Item = Result<StreamEvent, LlmError>> + Send>>,
}

impl std::fmt::Debug for ChatStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatStream")
    }
}

impl Stream for ChatStream {
    type Item = Result<StreamEvent, LlmError>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

impl ChatStream {
    pub(crate) fn from_driver(driver: Driver) -> Self {
        let inner = futures_util::stream::unfold(driver, |mut d| async move {
            let item = d.next_event().await?;
            Some((item, d))
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    pub(crate) fn from_chain(driver: super::chain::ChainDriver) -> Self {
        let inner = futures_util::stream::unfold(driver, |mut d| async move {
            let item = d.next_event().await?;
            Some((item, d))
        });
        Self {
            inner: Box::pin(inner),
        }
    }

    /// Parses an SSE body from any byte stream (a recorded file, a custom
    /// transport). No timeouts and no retries apply.
    pub fn from_sse_bytes<S>(
        source: S,
        limits: StreamLimits,
        structured: Option<StructuredOutput>,
    ) -> Self
    where
        S: Stream<Item = Result<Bytes, LlmError>> + Send + 'static,
    {
        let mut d = Driver::new(None, limits, structured);
        d.phase = Phase::Body(guarded(Box::pin(source), limits.max_event_bytes));
        Self::from_driver(d)
    }
}

/// Wraps a body in the [`ByteGuard`](super::sse::ByteGuard) and the SSE parser.
pub(crate) fn guarded(source: ByteSource, max_event_bytes: usize) -> SseSource {
    let mut guard = super::sse::ByteGuard::new(max_event_bytes);
    let mut failed = false;
    let checked = source
        .map(Some)
        .chain(futures_util::stream::iter([None]))
        .filter_map(move |item| {
            let out = if failed {
                None
            } else {
                match item {
                    Some(Ok(bytes)) => {
                        let r = guard.push(bytes);
                        failed = r.is_err();
                        Some(r)
                    }
                    Some(Err(e)) => {
                        failed = true;
                        Some(Err(e))
                    }
                    None => guard.finish().map(Ok),
                }
            };
            std::future::ready(out)
        });
    let boxed: ByteSource = Box::pin(checked);
    boxed.eventsource()
}

pub(crate) enum Phase {
    Connect,
    Body(SseSource),
    Done,
}

/// Per-attempt parse state.
struct ChunkState {
    assembler: ToolCallAssembler,
    structured: Option<JsonFieldStreamer>,
    finish: Option<FinishReason>,
    saw_done: bool,
    emitted_output: bool,
    /// Pieces of the model's output parsed so far, published or not (a
    /// tool-call delta, structured text before its spoken field): what the
    /// first-output and output-gap deadlines watch.
    progress: u64,
    /// The request's usage, held until the request ends (the last report wins).
    usage: Option<Usage>,
    metadata_sent: bool,
    request_id: Option<String>,
    scratch: Vec<ToolCall>,
}

impl ChunkState {
    fn new(limits: &StreamLimits, structured: Option<&StructuredOutput>) -> Self {
        Self {
            assembler: ToolCallAssembler::new(limits.max_tool_argument_bytes),
            structured: structured.map(|s| JsonFieldStreamer::new(s.spoken_field.clone())),
            finish: None,
            saw_done: false,
            emitted_output: false,
            progress: 0,
            usage: None,
            metadata_sent: false,
            request_id: None,
            scratch: Vec::new(),
        }
    }

    fn content(&mut self, text: &str, out: &mut VecDeque<StreamEvent>) {
        if text.is_empty() {
            return;
        }
        self.progress += 1;
        match &mut self.structured {
            Some(s) => {
                let spoken = s.push(text);
                if !spoken.is_empty() {
                    self.emitted_output = true;
                    out.push_back(StreamEvent::Token(spoken));
                }
            }
            None => {
                self.emitted_output = true;
                out.push_back(StreamEvent::Token(text.to_string()));
            }
        }
    }

    fn text_event(
        &mut self,
        text: Option<&str>,
        make: fn(String) -> StreamEvent,
        out: &mut VecDeque<StreamEvent>,
    ) {
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            self.emitted_output = true;
            self.progress += 1;
            out.push_back(make(t.to_string()));
        }
    }

    fn delta(
        &mut self,
        delta: WireDelta<'_>,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), LlmError> {
        // Reasoning first: providers that send both in one delta reason before speaking.
        let reasoning = delta
            .reasoning_content
            .as_deref()
            .or(delta.reasoning.as_deref());
        self.text_event(reasoning, StreamEvent::Reasoning, out);
        match delta.content {
            Some(WireContent::Text(t)) => self.content(&t, out),
            Some(WireContent::Parts(parts)) => {
                let (text, thinking) = split_parts(&parts);
                self.text_event(Some(&thinking), StreamEvent::Reasoning, out);
                self.content(&text, out);
            }
            None => {}
        }
        self.text_event(delta.refusal.as_deref(), StreamEvent::Refusal, out);
        if let Some(calls) = delta.tool_calls {
            for (pos, call) in calls.into_iter().enumerate() {
                let (name, args) = match &call.function {
                    Some(f) => (f.name.as_deref(), f.arguments.as_deref()),
                    None => (None, None),
                };
                if name.is_some_and(|n| !n.is_empty()) || args.is_some_and(|a| !a.is_empty()) {
                    self.progress += 1;
                }
                let index = call.index.unwrap_or(pos as u32);
                self.assembler
                    .push(index, call.id.as_deref(), name, args, &mut self.scratch)?;
            }
            self.flush_calls(out);
        }
        Ok(())
    }

    fn flush_calls(&mut self, out: &mut VecDeque<StreamEvent>) {
        for call in self.scratch.drain(..) {
            self.emitted_output = true;
            out.push_back(StreamEvent::ToolCall(call));
        }
    }

    /// Holds the usage of `value`, if it is one.
    fn usage(&mut self, value: Option<&serde_json::Value>) -> bool {
        match value.and_then(Usage::from_json) {
            Some(u) => {
                self.usage = Some(u);
                true
            }
            None => false,
        }
    }

    /// Handles one `data:` payload. Returns `Ok(true)` at `[DONE]`.
    fn data(&mut self, data: &str, out: &mut VecDeque<StreamEvent>) -> Result<bool, LlmError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: WireChunk<'_> = serde_json::from_str(data)
            .map_err(|e| LlmError::MalformedChunk(format!("{e} in {}", excerpt(data))))?;
        if !self.metadata_sent {
            self.metadata_sent = true;
            let request_id = self.request_id.take().or_else(|| {
                chunk
                    .id
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            });
            let model = chunk
                .model
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            out.push_back(StreamEvent::Metadata { request_id, model });
        }
        let mut got_usage = self.usage(chunk.usage.as_ref());
        if !got_usage {
            got_usage = self.usage(chunk.x_groq.as_ref().and_then(|x| x.usage.as_ref()));
        }
        for choice in chunk.choices.into_iter().flatten() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta.or(choice.message) {
                self.delta(delta, out)?;
            }
            if !got_usage {
                got_usage = self.usage(choice.usage.as_ref());
            }
            if let Some(reason) = choice.finish_reason.as_deref().filter(|r| !r.is_empty())
                && self.finish.is_none()
            {
                self.finish = Some(FinishReason::parse(reason));
            }
        }
        if let Some(error) = chunk.error.as_ref().filter(|e| !e.is_null()) {
            return Err(provider_error(error));
        }
        Ok(false)
    }

    /// Completes pending calls, the structured object and the summary.
    fn finalize(&mut self, attempts: u32, out: &mut VecDeque<StreamEvent>) -> Result<(), LlmError> {
        self.assembler.finish(&mut self.scratch);
        self.flush_calls(out);
        if let Some(s) = self
            .structured
            .as_ref()
            .filter(|s| !s.raw().trim().is_empty())
        {
            match s.finish() {
                Ok(v) => out.push_back(StreamEvent::Structured(v)),
                Err(e) => {
                    return Err(LlmError::MalformedChunk(format!(
                        "structured output is not valid JSON ({e}): {}",
                        excerpt(s.raw())
                    )));
                }
            }
        }
        if let Some(u) = self.usage.take() {
            out.push_back(StreamEvent::Usage(u));
        }
        out.push_back(StreamEvent::Finished(StreamSummary {
            reason: self.finish.clone(),
            saw_done: self.saw_done,
            attempts,
        }));
        Ok(())
    }
}

fn excerpt(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

fn provider_error(value: &serde_json::Value) -> LlmError {
    let err = value.get("error").unwrap_or(value);
    let status = err
        .get("status_code")
        .or_else(|| err.get("status"))
        .and_then(serde_json::Value::as_u64)
        .or_else(|| err.get("code").and_then(serde_json::Value::as_u64))
        .and_then(|s| u16::try_from(s).ok());
    LlmError::Provider {
        error: Box::new(parse_provider_error(value).unwrap_or_default()),
        status,
    }
}

/// Drives one request: connect, parse, retry, finish.
pub(crate) struct Driver {
    connector: Option<Connector>,
    limits: StreamLimits,
    structured: Option<Arc<StructuredOutput>>,
    pub(crate) phase: Phase,
    state: ChunkState,
    pending: VecDeque<StreamEvent>,
    error: Option<LlmError>,
    attempts: u32,
    attempt_started: Instant,
    /// The backoff to wait before the next request (set by a retry).
    backoff: Option<Duration>,
    first_output_recorded: bool,
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
}

/// What [`Driver::fail`] decided.
enum Failure {
    /// End the stream with this error.
    Fail(LlmError),
    /// Send the request again after this delay.
    Retry(LlmError, Duration),
}

impl Driver {
    pub(crate) fn new(
        connector: Option<Connector>,
        limits: StreamLimits,
        structured: Option<StructuredOutput>,
    ) -> Self {
        let state = ChunkState::new(&limits, structured.as_ref());
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
            gap_anchor: Instant::now(),
            gap_progress: 0,
            committed: false,
            span: tracing::Span::none(),
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

    pub(crate) async fn next_event(&mut self) -> Option<Result<StreamEvent, LlmError>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                // Metadata and retry notices are per request: a retry may follow.
                self.committed |=
                    !matches!(ev, StreamEvent::Metadata { .. } | StreamEvent::Retrying(_));
                if !self.first_output_recorded
                    && self.state.emitted_output
                    && self.connector.is_some()
                {
                    self.first_output_recorded = true;
                    metrics::histogram!("colloquy_llm_time_to_first_token_seconds")
                        .record(self.attempt_started.elapsed().as_secs_f64());
                }
                return Some(Ok(ev));
            }
            if let Some(error) = self.error.take() {
                return Some(Err(error));
            }
            let span = self.span.clone();
            let result = match &mut self.phase {
                Phase::Done => return None,
                Phase::Connect => self.connect().instrument(span).await,
                Phase::Body(_) => self.read().instrument(span).await,
            };
            if let Err(error) = result {
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
        self.state = ChunkState::new(&self.limits, self.structured.as_deref());
        self.gap_progress = 0;
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
