//! The spans under a turn: `chat` per request attempt, `execute_tool` per
//! call, `text_to_speech` per spoken segment — how each opens, what it
//! learns, and when it ends.
//!
//! A request's span stays open until the turn settles its usage: a cut turn
//! gets its usage estimated by the ledger after the request was dropped,
//! and the estimate belongs on the request's span (marked), which still
//! ends at the instant the request did.

use std::time::Instant;

use colloquy::llm::{FailureReason, FinishReason, ProviderChoice, ProviderFailure, Usage};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt};
use opentelemetry::{Array, KeyValue, StringValue, Value};

use super::conventions as c;
use super::session_trace::{SessionTrace, TurnSpans};
use crate::bus::{EventKind, TurnEnd};
use crate::ids::TurnId;

/// One HTTP request of a turn.
pub(super) struct Attempt {
    round: u32,
    /// Its provider's position in the chain (0 without one).
    index: usize,
    /// `primary`, `fallback` or `hedge`.
    role: &'static str,
    /// It continues text another provider started.
    continuation: bool,
    span: BoxedSpan,
    started: Instant,
    /// When it ended (its span ends with this time, once usage is settled).
    ended: Option<Instant>,
    has_usage: bool,
    /// Its output is the round's.
    serving: bool,
}

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
    /// A request's span. What depends on its provider (the model, the
    /// provider's names, its role) is set when it ends: a chain may skip
    /// the provider the request was meant for (its circuit open).
    fn attempt(&self, t: &TurnSpans, index: usize, at: Instant) -> Attempt {
        let attributes = vec![
            KeyValue::new(c::OPERATION, c::CHAT),
            KeyValue::new(c::CONVERSATION, self.conversation.to_string()),
            KeyValue::new("colloquy.round", i64::from(t.round)),
        ];
        let span = self.child(&t.cx, c::CHAT, SpanKind::Client, at, attributes);
        Attempt {
            round: t.round,
            index,
            role: if index == 0 { "primary" } else { "fallback" },
            continuation: false,
            span,
            started: at,
            ended: None,
            has_usage: false,
            serving: false,
        }
    }

    /// Ends a request's span at its own end, named for its provider.
    fn end_attempt(&self, mut a: Attempt, model: &str, now: Instant) {
        let latest = self.tracing.latest;
        let provider = self.providers.get(a.index).or(self.providers.first());
        let model = provider
            .and_then(|p| p.model.as_deref())
            .unwrap_or(model)
            .to_string();
        a.span.update_name(format!("{} {model}", c::CHAT));
        let mut attributes = vec![
            KeyValue::new(c::REQUEST_MODEL, model),
            KeyValue::new("colloquy.provider.index", a.index as i64),
            KeyValue::new("colloquy.provider.role", a.role),
        ];
        if a.continuation {
            attributes.push(KeyValue::new("colloquy.provider.continuation", true));
        }
        if let Some(p) = provider {
            c::provider(p.system, latest, &mut attributes);
            c::server(&p.base_url, &mut attributes);
            attributes.push(KeyValue::new(
                "colloquy.provider.label",
                p.label.to_string(),
            ));
        }
        a.span.set_attributes(attributes);
        a.span.end_with_timestamp(self.time(a.ended.unwrap_or(now)));
    }

    /// The round's first request is about to be sent for `model`.
    pub(super) fn round_started(&self, turn: TurnId, round: u32, model: &str) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        for a in t.attempts.iter_mut().filter(|a| a.ended.is_none()) {
            a.ended = Some(now);
        }
        t.round = round;
        t.model = model.into();
        let a = self.attempt(t, 0, now);
        t.attempts.push(a);
    }

    /// Another request of the round (chain provider `index`).
    pub(super) fn request_started(&self, turn: TurnId, index: usize) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        let a = self.attempt(t, index, now);
        t.attempts.push(a);
    }

    /// The round's first output.
    pub(super) fn first_chunk(&self, turn: TurnId) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        if let Some(a) = current(t) {
            let ms = (now - a.started).as_secs_f64() * 1000.0;
            a.span
                .set_attribute(KeyValue::new("colloquy.time_to_first_chunk_ms", ms));
        }
    }

    /// The provider's request id (its `x-request-id`), response id and model.
    pub(super) fn metadata(
        &self,
        turn: TurnId,
        request_id: Option<&str>,
        response_id: Option<&str>,
        model: Option<&str>,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        if let Some(a) = current(t) {
            if let Some(id) = response_id {
                a.span
                    .set_attribute(KeyValue::new(c::RESPONSE_ID, id.to_string()));
            }
            if let Some(id) = request_id.filter(|r| Some(*r) != response_id) {
                a.span
                    .set_attribute(KeyValue::new("colloquy.request_id", id.to_string()));
            }
            if let Some(m) = model {
                a.span
                    .set_attribute(KeyValue::new(c::RESPONSE_MODEL, m.to_string()));
            }
        }
    }

    /// The serving request failed before output and is sent again.
    pub(super) fn retrying(&self, turn: TurnId, kind: &'static str) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        let Some(a) = current(t) else {
            return;
        };
        let index = a.index;
        fail(a, kind, now);
        let mut next = self.attempt(t, index, now);
        next.span
            .set_attribute(KeyValue::new("colloquy.retry", true));
        t.attempts.push(next);
    }

    /// The round's stream ended with `reason`.
    pub(super) fn finished(&self, turn: TurnId, reason: Option<&FinishReason>) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        if let Some(a) = current(t) {
            let reason = reason.map_or_else(|| "stop".to_string(), FinishReason::label);
            a.span.set_attribute(KeyValue::new(
                c::FINISH_REASONS,
                Value::Array(Array::String(vec![StringValue::from(reason)])),
            ));
            a.ended = Some(now);
        }
    }

    /// The round's stream failed: its open requests failed with it.
    pub(super) fn failed(&self, turn: TurnId, kind: &'static str) {
        let now = Instant::now();
        let mut st = self.lock();
        let Some(t) = self.turn(&mut st, turn, now) else {
            return;
        };
        let round = t.round;
        for a in t
            .attempts
            .iter_mut()
            .filter(|a| a.round == round && a.ended.is_none())
        {
            fail(a, kind, now);
        }
    }

    /// A usage figure, on the request it belongs to: the serving request's
    /// (a provider's), or the first request still without one (the
    /// ledger's estimates, in request order).
    pub(super) fn usage(&self, t: &mut TurnSpans, u: &Usage) {
        t.input_tokens += u.prompt_tokens;
        t.output_tokens += u.completion_tokens;
        let target = if u.estimated {
            t.attempts.iter_mut().find(|a| !a.has_usage)
        } else {
            match current(t) {
                Some(a) if !a.has_usage => Some(a),
                _ => t.attempts.iter_mut().find(|a| !a.has_usage),
            }
        };
        if let Some(a) = target {
            set_usage(a, u);
        }
    }

    /// A bus event of an open turn.
    pub(super) fn turn_event(&self, t: &mut TurnSpans, kind: &EventKind, now: Instant) {
        match kind {
            EventKind::Usage(u) => self.usage(t, u),
            EventKind::ProviderSelected(choice) => selected(t, choice),
            EventKind::ProviderFailed(failure) => provider_failed(t, failure, now),
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

    fn end_attempts(&self, t: &mut TurnSpans, end: &TurnEnd, now: Instant) {
        for mut a in t.attempts.drain(..) {
            if a.ended.is_none() && *end == TurnEnd::Cancelled {
                a.span
                    .set_attribute(KeyValue::new("colloquy.cancelled", true));
            }
            self.end_attempt(a, &t.model, now);
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

/// The request that serves the round: the one a chain selected, else the
/// round's last open one.
fn current(t: &mut TurnSpans) -> Option<&mut Attempt> {
    let round = t.round;
    let serving = t
        .attempts
        .iter()
        .any(|a| a.round == round && a.serving && a.ended.is_none());
    t.attempts
        .iter_mut()
        .rev()
        .find(|a| a.round == round && a.ended.is_none() && (a.serving || !serving))
}

/// The round's open request to chain provider `index`.
fn by_index(t: &mut TurnSpans, index: usize) -> Option<&mut Attempt> {
    let round = t.round;
    t.attempts
        .iter_mut()
        .rev()
        .find(|a| a.round == round && a.index == index && a.ended.is_none())
}

fn fail(a: &mut Attempt, kind: &str, now: Instant) {
    a.span
        .set_attribute(KeyValue::new(c::ERROR_TYPE, kind.to_string()));
    a.span.set_status(Status::error(kind.to_string()));
    a.ended = Some(now);
}

fn set_usage(a: &mut Attempt, u: &Usage) {
    a.has_usage = true;
    let mut attributes = vec![
        KeyValue::new(c::INPUT_TOKENS, u.prompt_tokens as i64),
        KeyValue::new(c::OUTPUT_TOKENS, u.completion_tokens as i64),
    ];
    if u.estimated {
        attributes.push(KeyValue::new("colloquy.usage.estimated", true));
    }
    if let Some(cached) = u.cached_tokens {
        attributes.push(KeyValue::new("colloquy.usage.cached_tokens", cached as i64));
    }
    if let Some(reasoning) = u.reasoning_tokens {
        attributes.push(KeyValue::new(
            "colloquy.usage.reasoning_tokens",
            reasoning as i64,
        ));
    }
    a.span.set_attributes(attributes);
}

fn selected(t: &mut TurnSpans, choice: &ProviderChoice) {
    if let Some(a) = by_index(t, choice.index) {
        a.serving = true;
        a.role = choice.reason.label();
        a.continuation = choice.continuation;
    }
}

fn provider_failed(t: &mut TurnSpans, failure: &ProviderFailure, now: Instant) {
    if let Some(u) = &failure.usage {
        t.input_tokens += u.prompt_tokens;
        t.output_tokens += u.completion_tokens;
    }
    if failure.reason == FailureReason::CircuitOpen {
        // Skipped, no request sent: the request meant for it goes to the
        // next provider; the turn notes the skip.
        t.cx.span().add_event_with_timestamp(
            "colloquy.provider.skipped",
            std::time::SystemTime::now(),
            vec![KeyValue::new(
                "colloquy.provider.index",
                failure.index as i64,
            )],
        );
        if let Some(a) = by_index(t, failure.index) {
            a.index = failure.index + 1;
            a.role = "fallback";
        }
        return;
    }
    let Some(a) = by_index(t, failure.index) else {
        return;
    };
    if let Some(u) = &failure.usage {
        set_usage(a, u);
    }
    match &failure.reason {
        FailureReason::Error { kind, .. } => fail(a, kind, now),
        FailureReason::HedgeLost => {
            if a.index != 0 {
                a.role = "hedge";
            }
            a.span
                .set_attribute(KeyValue::new("colloquy.hedge_lost", true));
            a.ended = Some(now);
        }
        _ => fail(a, "provider_failed", now),
    }
}
