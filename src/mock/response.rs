//! Scripted responses of the mock server.

use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub(crate) enum Part {
    Bytes(Bytes),
    Delay(Duration),
    Gate(watch::Receiver<bool>),
}

/// A signal scripted responses wait for ([`MockResponse::wait_for`]): a test
/// opens it when it is ready, instead of guessing a delay. Clones are the
/// same gate; once open it stays open.
#[derive(Debug, Clone)]
pub struct MockGate {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for MockGate {
    fn default() -> Self {
        Self::new()
    }
}

impl MockGate {
    /// A closed gate.
    pub fn new() -> Self {
        Self {
            tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Opens the gate: every response waiting on it goes on.
    pub fn open(&self) {
        self.tx.send_replace(true);
    }

    /// Whether it was opened.
    pub fn is_open(&self) -> bool {
        *self.tx.borrow()
    }

    pub(crate) fn receiver(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }
}

/// What the mock server sends for one request.
#[derive(Debug, Clone)]
pub struct MockResponse {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) parts: Vec<Part>,
    pub(crate) write_size: Option<usize>,
    pub(crate) stall_at_end: bool,
    /// While stalled, a keep-alive comment this often.
    pub(crate) stall_keep_alive: Option<Duration>,
    /// Closes the connection after the last part, without ending the body.
    pub(crate) hang_up: bool,
    pub(crate) chunked: bool,
}

/// One `data:` event holding a chat-completion chunk with the given choice delta.
pub fn sse_chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock-1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    });
    format!("data: {chunk}\n\n")
}

fn usage_event(prompt: u64, completion: u64) -> String {
    let chunk = json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": "mock-1",
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    });
    format!("data: {chunk}\n\n")
}

impl MockResponse {
    /// An empty `200 text/event-stream` response to build on.
    pub fn event_stream() -> Self {
        Self {
            status: 200,
            headers: vec![
                ("content-type".into(), "text/event-stream".into()),
                ("x-request-id".into(), "req_mock".into()),
            ],
            parts: Vec::new(),
            write_size: None,
            stall_at_end: false,
            stall_keep_alive: None,
            hang_up: false,
            chunked: true,
        }
    }

    /// An empty `200` chunked response of `content_type` to build on (a
    /// binary body: PCM, WAV), sent part by part as [`MockResponse::bytes`]
    /// appends them.
    pub fn streamed(content_type: &str) -> Self {
        Self {
            headers: vec![("content-type".into(), content_type.into())],
            ..Self::event_stream()
        }
    }

    /// A complete streamed answer: role chunk, one chunk per token, finish `stop`,
    /// usage, `[DONE]`.
    pub fn text(tokens: &[&str]) -> Self {
        Self::text_paced(tokens, Duration::ZERO)
    }

    /// Like [`MockResponse::text`] with `gap` before each token.
    pub fn text_paced(tokens: &[&str], gap: Duration) -> Self {
        let mut r = Self::event_stream().event(&sse_chunk(
            json!({"role": "assistant", "content": ""}),
            None,
        ));
        for t in tokens {
            if !gap.is_zero() {
                r = r.delay(gap);
            }
            r = r.event(&sse_chunk(json!({"content": t}), None));
        }
        r.finish("stop", 10, tokens.len() as u64)
    }

    /// Streams these content tokens, then stalls with the connection open: a
    /// model that stopped mid-answer (what cancel tests cut).
    pub fn text_then_stall(tokens: &[&str]) -> Self {
        tokens
            .iter()
            .fold(Self::event_stream(), |r, t| {
                r.event(&sse_chunk(json!({"content": t}), None))
            })
            .stall()
    }

    /// A streamed round of tool calls `(id, name, arguments)`, arguments split in
    /// two fragments, finish `tool_calls`.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Self {
        let mut r = Self::event_stream().event(&sse_chunk(
            json!({"role": "assistant", "content": null}),
            None,
        ));
        for (i, (id, name, args)) in calls.iter().enumerate() {
            let mid = args.len() / 2;
            let mid = (0..=mid)
                .rev()
                .find(|m| args.is_char_boundary(*m))
                .unwrap_or(0);
            r = r.event(&sse_chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                       "function": {"name": name, "arguments": &args[..mid]}}]}),
                None,
            ));
            r = r.event(&sse_chunk(
                json!({"tool_calls": [{"index": i, "function": {"arguments": &args[mid..]}}]}),
                None,
            ));
        }
        r.finish("tool_calls", 20, 10)
    }

    /// Appends one content chunk per token (no finish).
    pub fn tokens(self, tokens: &[&str]) -> Self {
        tokens.iter().fold(self, |r, t| {
            r.event(&sse_chunk(json!({"content": t}), None))
        })
    }

    /// Appends an SSE comment (`: keep-alive`), as providers send while a
    /// model thinks.
    pub fn keep_alive(self) -> Self {
        self.event(": keep-alive\n\n")
    }

    /// Waits until `gate` is open before sending the parts that follow.
    pub fn wait_for(mut self, gate: &MockGate) -> Self {
        self.parts.push(Part::Gate(gate.receiver()));
        self
    }

    /// After the last part, keeps the connection open sending only a
    /// keep-alive comment every `every` (a model that never answers while its
    /// connection looks alive).
    pub fn stall_with_keep_alives(mut self, every: Duration) -> Self {
        self.stall_at_end = true;
        self.stall_keep_alive = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// After the last part, closes the connection without ending the body (a
    /// provider that drops mid-answer; the client sees a broken stream).
    pub fn hang_up(mut self) -> Self {
        self.hang_up = true;
        self
    }

    /// Appends finish reason, usage and `[DONE]`.
    pub fn finish(self, reason: &str, prompt_tokens: u64, completion_tokens: u64) -> Self {
        self.event(&sse_chunk(json!({}), Some(reason)))
            .event(&usage_event(prompt_tokens, completion_tokens))
            .event("data: [DONE]\n\n")
    }

    /// A JSON error body with a status, OpenAI style.
    pub fn error(status: u16, message: &str) -> Self {
        Self::raw(
            status,
            "application/json",
            json!({"error": {"message": message, "type": "mock_error", "code": null}}).to_string(),
        )
    }

    /// Any status, content type and body, sent with a content-length.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            parts: vec![Part::Bytes(body.into())],
            write_size: None,
            stall_at_end: false,
            stall_keep_alive: None,
            hang_up: false,
            chunked: false,
        }
    }

    /// Appends raw bytes (an SSE event, a comment, garbage…).
    pub fn event(mut self, raw: &str) -> Self {
        self.parts.push(Part::Bytes(Bytes::from(raw.to_string())));
        self
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, raw: impl Into<Bytes>) -> Self {
        self.parts.push(Part::Bytes(raw.into()));
        self
    }

    /// Appends a pause.
    pub fn delay(mut self, d: Duration) -> Self {
        self.parts.push(Part::Delay(d));
        self
    }

    /// Writes the body in pieces of at most `n` bytes, each flushed on its own.
    pub fn write_size(mut self, n: usize) -> Self {
        self.write_size = Some(n.max(1));
        self
    }

    /// Keeps the connection open after the last part, sending nothing (a stall).
    pub fn stall(mut self) -> Self {
        self.stall_at_end = true;
        self
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}
