//! The spans under a turn that the bus shows: `execute_tool` per call,
//! `text_to_speech` per spoken segment (ended where playback stopped), and
//! what the ledger settles for the requests (`chat.rs`): usage estimates
//! and the turn's end.

use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt};

use super::conventions as c;
use super::session_trace::{SessionTrace, TurnSpans};
use crate::bus::{EventKind, TurnEnd};

/// A tool call in progress.
pub(super) struct ToolSpan {
    call_id: String,
    span: BoxedSpan,
}

/// A segment being spoken: its span ends when playback passes `end`.
pub(super) struct Segment {
    span: BoxedSpan,
    start: usize,
    end: usize,
}

impl SessionTrace {
    /// A bus event of an open turn.
    pub(super) fn turn_event(&self, t: &mut TurnSpans, kind: &EventKind, now: Instant) {
        match kind {
            EventKind::Usage(u) => {
                t.input_tokens += u.prompt_tokens;
                t.output_tokens += u.completion_tokens;
                // A provider's figure is on its request already (the round
                // task's); the ledger's estimates come only from here.
                if u.estimated {
                    self.estimated_usage(t, u);
                }
            }
            EventKind::ProviderFailed(failure) => {
                if let Some(u) = &failure.usage {
                    t.input_tokens += u.prompt_tokens;
                    t.output_tokens += u.completion_tokens;
                }
            }
            EventKind::ToolCall(call) => {
                let span = self.child(
                    &t.cx,
                    format!("{} {}", c::EXECUTE_TOOL, call.name),
                    SpanKind::Internal,
                    now,
                    vec![
                        KeyValue::new(c::OPERATION, c::EXECUTE_TOOL),
                        KeyValue::new(c::TOOL_NAME, call.name.clone()),
                        KeyValue::new(c::TOOL_CALL_ID, call.id.clone()),
                        KeyValue::new(c::TOOL_TYPE, "function"),
                    ],
                );
                t.tools.push(ToolSpan {
                    call_id: call.id.clone(),
                    span,
                });
            }
            EventKind::ToolResult(out) => {
                if let Some(i) = t.tools.iter().position(|s| s.call_id == out.call_id) {
                    let mut tool = t.tools.remove(i);
                    if out.is_error {
                        tool.span
                            .set_attribute(KeyValue::new(c::ERROR_TYPE, "tool_error"));
                        tool.span.set_status(Status::error("tool_error"));
                    }
                    tool.span.end_with_timestamp(self.time(now));
                }
            }
            EventKind::Speakable { text, .. } => {
                let chars = text.chars().count();
                if chars > 0 {
                    let span = self.child(
                        &t.cx,
                        c::TEXT_TO_SPEECH,
                        SpanKind::Internal,
                        now,
                        vec![
                            KeyValue::new(c::OPERATION, c::TEXT_TO_SPEECH),
                            KeyValue::new("colloquy.segment.chars", chars as i64),
                        ],
                    );
                    t.segments.push_back(Segment {
                        span,
                        start: t.spoken,
                        end: t.spoken + chars,
                    });
                    t.spoken += chars;
                }
            }
            EventKind::SpeechPlayed { chars } => {
                t.heard = t.heard.max(*chars);
                while t.segments.front().is_some_and(|s| s.end <= t.heard) {
                    let seg = t.segments.pop_front().expect("checked");
                    self.end_segment(seg, t.heard, now);
                }
            }
            EventKind::PlaybackPaused { heard_chars }
            | EventKind::PlaybackResumed { heard_chars } => {
                let name = if matches!(kind, EventKind::PlaybackPaused { .. }) {
                    "colloquy.playback.paused"
                } else {
                    "colloquy.playback.resumed"
                };
                t.cx.span().add_event_with_timestamp(
                    name,
                    self.time(now),
                    vec![KeyValue::new("colloquy.heard_chars", *heard_chars as i64)],
                );
            }
            EventKind::Interrupted { heard_chars } => {
                t.interrupted_at = Some(*heard_chars);
                t.heard = t.heard.max(*heard_chars);
                self.end_segments(t, *heard_chars, now);
            }
            EventKind::TurnFinished(end) => {
                t.end = Some(end.clone());
                if end.is_abort() {
                    self.end_segments(t, t.heard, now);
                }
                // Its usage is settled now (the ledger's estimates came
                // first): the requests' spans end, each at its own end.
                self.end_attempts(t, end, now);
            }
            _ => {}
        }
    }

    fn end_segment(&self, mut seg: Segment, heard: usize, now: Instant) {
        let heard_in = heard.clamp(seg.start, seg.end) - seg.start;
        seg.span
            .set_attribute(KeyValue::new("colloquy.heard_chars", heard_in as i64));
        if heard < seg.end {
            seg.span.set_attribute(KeyValue::new("colloquy.cut", true));
        }
        seg.span.end_with_timestamp(self.time(now));
    }

    fn end_segments(&self, t: &mut TurnSpans, heard: usize, now: Instant) {
        while let Some(seg) = t.segments.pop_front() {
            self.end_segment(seg, heard, now);
        }
    }

    /// Everything under the turn ends (the turn's own span is ended by the
    /// caller).
    pub(super) fn settle(&self, t: &mut TurnSpans, now: Instant) {
        let end = t.end.clone().unwrap_or(TurnEnd::Cancelled);
        self.end_attempts(t, &end, now);
        for mut tool in t.tools.drain(..) {
            tool.span
                .set_attribute(KeyValue::new("colloquy.cancelled", true));
            tool.span.end_with_timestamp(self.time(now));
        }
        let heard = t.interrupted_at.unwrap_or(t.heard);
        self.end_segments(t, heard, now);
    }
}
