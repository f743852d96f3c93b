//! Assembling streamed tool-call fragments into complete calls.
//!
//! Providers stream a tool call as fragments keyed by `index`. They disagree on
//! everything else: OpenAI sends id and name once; some servers repeat them in
//! every fragment (concatenating would give `weatherweather`); Qwen sends `""` ids
//! on continuations; Groq sends the whole call in one fragment; several calls may
//! share a chunk or interleave. The rules here: id and name are taken once (the
//! first non-empty value), arguments are appended, and a call is published the
//! moment its arguments close — a JSON object whose braces balance cannot grow —
//! so a tool can start while the model is still writing the next call. Calls
//! whose arguments never close are published at the end of the stream.

use super::error::LlmError;
use super::event::ToolCall;

/// Tracks whether a streamed JSON text has closed its top-level value.
#[derive(Debug, Clone, Default)]
struct CloseScanner {
    depth: u32,
    started: bool,
    in_string: bool,
    escaped: bool,
    closed: bool,
    unstructured: bool,
}

impl CloseScanner {
    fn push(&mut self, fragment: &str) {
        if self.closed || self.unstructured {
            return;
        }
        for b in fragment.bytes() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'{' | b'[' => {
                    self.started = true;
                    self.depth += 1;
                }
                b'}' | b']' => {
                    self.depth = self.depth.saturating_sub(1);
                    if self.started && self.depth == 0 {
                        self.closed = true;
                        return;
                    }
                }
                b'"' => self.in_string = true,
                b if b.is_ascii_whitespace() => {}
                _ if !self.started => {
                    // Not an object or array: only the end of the stream completes it.
                    self.unstructured = true;
                    return;
                }
                _ => {}
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct PartialCall {
    index: u32,
    id: Option<String>,
    name: Option<String>,
    arguments: String,
    scanner: CloseScanner,
    published: bool,
}

impl PartialCall {
    fn complete(&mut self) -> ToolCall {
        self.published = true;
        let arguments = if self.arguments.trim().is_empty() {
            "{}".to_string()
        } else {
            std::mem::take(&mut self.arguments)
        };
        let valid_json = serde_json::from_str::<serde::de::IgnoredAny>(&arguments).is_ok();
        ToolCall {
            index: self.index,
            id: self
                .id
                .take()
                // Unique across rounds and sessions: a history may not hold two
                // calls with one id (their outputs would be ambiguous).
                .unwrap_or_else(|| crate::context::new_item_id("call_colloquy")),
            name: self.name.take().unwrap_or_default(),
            arguments,
            valid_json,
        }
    }
}

/// Turns `delta.tool_calls` fragments into complete [`ToolCall`]s.
#[derive(Debug, Clone)]
pub struct ToolCallAssembler {
    calls: Vec<PartialCall>,
    argument_bytes: usize,
    max_argument_bytes: usize,
}

impl ToolCallAssembler {
    /// An assembler that refuses more than `max_argument_bytes` of arguments in
    /// total across the calls of one response.
    pub fn new(max_argument_bytes: usize) -> Self {
        Self {
            calls: Vec::new(),
            argument_bytes: 0,
            max_argument_bytes,
        }
    }

    /// Adds one fragment; calls that became complete are appended to `out`.
    pub fn push(
        &mut self,
        index: u32,
        id: Option<&str>,
        name: Option<&str>,
        arguments: Option<&str>,
        out: &mut Vec<ToolCall>,
    ) -> Result<(), LlmError> {
        let slot = match self.calls.iter().position(|c| c.index == index) {
            Some(i) => i,
            None => {
                self.calls.push(PartialCall {
                    index,
                    ..Default::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[slot];
        if call.published {
            if arguments.is_some_and(|a| !a.trim().is_empty()) {
                tracing::warn!(
                    index,
                    "tool-call fragment after the call's arguments closed; ignored"
                );
            }
            return Ok(());
        }
        if call.id.is_none() {
            call.id = id.filter(|s| !s.is_empty()).map(str::to_string);
        }
        if call.name.is_none() {
            call.name = name.filter(|s| !s.is_empty()).map(str::to_string);
        }
        if let Some(args) = arguments {
            self.argument_bytes += args.len();
            if self.argument_bytes > self.max_argument_bytes {
                return Err(LlmError::ToolArgumentsTooLarge {
                    limit: self.max_argument_bytes,
                });
            }
            call.arguments.push_str(args);
            call.scanner.push(args);
        }
        if call.scanner.closed && call.name.is_some() {
            out.push(call.complete());
        }
        Ok(())
    }

    /// Completes every call not yet published, in index order (end of stream).
    pub fn finish(&mut self, out: &mut Vec<ToolCall>) {
        self.calls.sort_by_key(|c| c.index);
        for call in self.calls.iter_mut().filter(|c| !c.published) {
            out.push(call.complete());
        }
    }

    /// Whether any fragment was seen.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(
        a: &mut ToolCallAssembler,
        i: u32,
        id: Option<&str>,
        n: Option<&str>,
        args: &str,
    ) -> Vec<ToolCall> {
        let mut out = Vec::new();
        a.push(i, id, n, Some(args), &mut out).unwrap();
        out
    }

    #[test]
    fn published_the_moment_arguments_close() {
        let mut a = ToolCallAssembler::new(1 << 20);
        assert!(push(&mut a, 0, Some("c1"), Some("weather"), "").is_empty());
        assert!(push(&mut a, 0, None, None, "{\"city\": \"Pa").is_empty());
        assert!(push(&mut a, 0, None, None, "ris {braces} \\\"q\\\"").is_empty());
        let done = push(&mut a, 0, None, None, "\"}");
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].id, "c1");
        assert_eq!(
            done[0].arguments,
            "{\"city\": \"Paris {braces} \\\"q\\\"\"}"
        );
        assert!(done[0].valid_json);
        let mut rest = Vec::new();
        a.finish(&mut rest);
        assert!(rest.is_empty(), "published once only");
    }

    #[test]
    fn repeated_id_and_name_are_not_concatenated() {
        let mut a = ToolCallAssembler::new(1 << 20);
        push(&mut a, 0, Some("c1"), Some("weather"), "{\"a\":");
        let done = push(&mut a, 0, Some("c1"), Some("weather"), "1}");
        assert_eq!(done[0].name, "weather");
        assert_eq!(done[0].id, "c1");
    }

    #[test]
    fn empty_continuation_ids_keep_the_real_id() {
        let mut a = ToolCallAssembler::new(1 << 20);
        push(&mut a, 0, Some("call_real"), Some("weather"), "");
        push(&mut a, 0, Some(""), None, "{\"x\":");
        let done = push(&mut a, 0, Some(""), None, "2}");
        assert_eq!(done[0].id, "call_real");
    }

    #[test]
    fn interleaved_calls_assemble_per_index() {
        let mut a = ToolCallAssembler::new(1 << 20);
        push(&mut a, 0, Some("a"), Some("f"), "{\"k\":");
        push(&mut a, 1, Some("b"), Some("g"), "{\"j\":");
        let b = push(&mut a, 1, None, None, "2}");
        let x = push(&mut a, 0, None, None, "1}");
        assert_eq!(
            (b[0].id.as_str(), b[0].arguments.as_str()),
            ("b", "{\"j\":2}")
        );
        assert_eq!(
            (x[0].id.as_str(), x[0].arguments.as_str()),
            ("a", "{\"k\":1}")
        );
    }

    #[test]
    fn invalid_json_is_flagged_with_raw_text_kept() {
        let mut a = ToolCallAssembler::new(1 << 20);
        push(&mut a, 0, Some("a"), Some("f"), "{\"k\": tru");
        let mut out = Vec::new();
        a.finish(&mut out);
        assert_eq!(out[0].arguments, "{\"k\": tru");
        assert!(!out[0].valid_json);
        let mut a = ToolCallAssembler::new(1 << 20);
        push(&mut a, 0, Some("a"), Some("f"), "not json");
        let mut out = Vec::new();
        a.finish(&mut out);
        assert!(!out[0].valid_json);
    }

    #[test]
    fn missing_arguments_mean_an_empty_object() {
        let mut a = ToolCallAssembler::new(1 << 20);
        let mut out = Vec::new();
        a.push(0, Some("a"), Some("f"), None, &mut out).unwrap();
        a.finish(&mut out);
        assert_eq!(out[0].arguments, "{}");
        assert!(out[0].valid_json);
    }

    #[test]
    fn argument_cap_is_a_typed_error() {
        let mut a = ToolCallAssembler::new(8);
        let mut out = Vec::new();
        let err = a.push(
            0,
            Some("a"),
            Some("f"),
            Some("{\"k\": \"0123456789\"}"),
            &mut out,
        );
        assert!(matches!(
            err,
            Err(LlmError::ToolArgumentsTooLarge { limit: 8 })
        ));
    }
}
