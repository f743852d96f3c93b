//! One request's chunks → [`StreamEvent`]s: text, reasoning, refusal, tool
//! calls as soon as they close, structured output, the finish reason, and the
//! usage (held until the request ends).
//!
//! Pure parsing: no I/O and no clock. The attempt driver
//! ([`attempt`](super::attempt)) feeds it one `data:` payload at a time and
//! watches [`ChunkParser::progress`] for its deadlines.

use std::collections::VecDeque;

use super::chunk::{WireChunk, WireContent, WireDelta, split_parts};
use super::config::StreamLimits;
use super::error::{LlmError, parse_provider_error};
use super::event::{FinishReason, StreamEvent, StreamSummary, ToolCall};
use super::structured::{JsonFieldStreamer, StructuredOutput};
use super::tool_call_assembler::ToolCallAssembler;
use super::usage::Usage;

/// The parse state of one request.
pub(crate) struct ChunkParser {
    assembler: ToolCallAssembler,
    structured: Option<JsonFieldStreamer>,
    pub(crate) finish: Option<FinishReason>,
    pub(crate) saw_done: bool,
    pub(crate) emitted_output: bool,
    /// Pieces of the model's output parsed so far, published or not (a
    /// tool-call delta, structured text before its spoken field): what the
    /// first-output and output-gap deadlines watch.
    pub(crate) progress: u64,
    /// The request's usage, held until the request ends (the last report wins).
    pub(crate) usage: Option<Usage>,
    metadata_sent: bool,
    pub(crate) request_id: Option<String>,
    scratch: Vec<ToolCall>,
}

impl ChunkParser {
    pub(crate) fn new(limits: &StreamLimits, structured: Option<&StructuredOutput>) -> Self {
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
    pub(crate) fn data(
        &mut self,
        data: &str,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<bool, LlmError> {
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
            let response_id = chunk
                .id
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            let request_id = self.request_id.take().or_else(|| response_id.clone());
            let model = chunk
                .model
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(str::to_string);
            out.push_back(StreamEvent::Metadata {
                request_id,
                response_id,
                model,
            });
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
    pub(crate) fn finalize(
        &mut self,
        attempts: u32,
        out: &mut VecDeque<StreamEvent>,
    ) -> Result<(), LlmError> {
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

pub(crate) fn provider_error(value: &serde_json::Value) -> LlmError {
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
