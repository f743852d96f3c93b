//! One session's spans, kept in one place: the bus tap and the round tasks
//! both report here, under one lock, so a span is opened, annotated and
//! ended by exactly one owner whichever party saw the moment first.
//!
//! Spans are opened when their moment comes and ended with the instant it
//! ended (`end_with_timestamp`), so a request's span can wait for the usage
//! the ledger estimates when the turn is cut and still end when its
//! request did.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use colloquy::llm::ProviderStatus;
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanBuilder, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

use super::Tracing;
use super::chat::Attempt;
use super::conventions as c;
use super::spans::{Segment, ToolSpan};
use crate::bus::{BusEvent, EventKind, SpeculationOutcome, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::latency::TurnLatency;

/// The tap's filter: everything but the model's text and structured
/// objects — no token reaches the trace (the round task notes the first
/// output; the session's own timer measures the turn).
pub(crate) fn traced(kind: &EventKind) -> bool {
    !matches!(
        kind,
        EventKind::Token(_)
            | EventKind::Reasoning(_)
            | EventKind::Refusal(_)
            | EventKind::Structured(_)
    )
}

/// Monotonic instants as wall-clock times, anchored once.
struct Clock {
    instant: Instant,
    system: SystemTime,
}

impl Clock {
    fn at(&self, at: Instant) -> SystemTime {
        match at.checked_duration_since(self.instant) {
            Some(d) => self.system + d,
            None => self.system - (self.instant - at),
        }
    }
}

/// A session's spans.
pub(crate) struct SessionTrace {
    pub(super) tracing: Tracing,
    clock: Clock,
    pub(super) conversation: Arc<str>,
    pub(super) providers: Vec<ProviderStatus>,
    state: Mutex<State>,
}

/// The caller's utterance, until a turn claims it.
#[derive(Default)]
struct Utterance {
    started: Option<Instant>,
    ended: Option<Instant>,
    /// The final transcript: when, and its length in characters.
    final_at: Option<(Instant, usize)>,
    /// Where in the input audio it was heard.
    heard: Option<crate::bus::HeardSpan>,
}

/// An `invoke_agent` span and what hangs under it.
pub(super) struct TurnSpans {
    pub(super) turn: TurnId,
    pub(super) cx: Context,
    pub(super) started: Instant,
    /// The round whose requests are in flight, and its request's model.
    pub(super) round: u32,
    pub(super) model: Arc<str>,
    /// Every request of the turn, each ended once the turn settles its usage.
    pub(super) attempts: Vec<Attempt>,
    pub(super) tools: Vec<ToolSpan>,
    pub(super) segments: std::collections::VecDeque<Segment>,
    /// Characters handed to speech so far, and heard so far.
    pub(super) spoken: usize,
    pub(super) heard: usize,
    pub(super) input_tokens: u64,
    pub(super) output_tokens: u64,
    pub(super) end: Option<TurnEnd>,
    pub(super) interrupted_at: Option<usize>,
    /// The utterance it answers was attached.
    has_utterance: bool,
    /// Subscribers saw it start (a speculation is shown only when promoted).
    shown: bool,
    /// How a discarded speculation ended.
    discarded: bool,
}

pub(super) struct State {
    session: Option<Context>,
    pub(super) turns: Vec<TurnSpans>,
    utterance: Utterance,
    /// The latest turn whose spans ended: turn ids only grow, so a round
    /// task that reports on it afterwards opens nothing.
    closed_upto: TurnId,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionTrace {
    /// Opens the session's span.
    pub(crate) fn start(
        tracing: Tracing,
        session: &SessionId,
        providers: Vec<ProviderStatus>,
    ) -> Arc<Self> {
        let now = Instant::now();
        let clock = Clock {
            instant: now,
            system: SystemTime::now(),
        };
        let conversation: Arc<str> = Arc::from(session.to_string());
        let span = tracing.tracer.build_with_context(
            SpanBuilder::from_name(c::SESSION)
                .with_kind(SpanKind::Internal)
                .with_start_time(clock.at(now))
                .with_attributes([KeyValue::new(c::CONVERSATION, conversation.to_string())]),
            &Context::new(),
        );
        Arc::new(Self {
            tracing,
            clock,
            conversation,
            providers,
            state: Mutex::new(State {
                session: Some(Context::new().with_span(span)),
                turns: Vec::new(),
                utterance: Utterance::default(),
                closed_upto: TurnId(0),
            }),
        })
    }

    pub(super) fn time(&self, at: Instant) -> SystemTime {
        self.clock.at(at)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// A child of `parent` that started at `at`.
    pub(super) fn child(
        &self,
        parent: &Context,
        name: impl Into<std::borrow::Cow<'static, str>>,
        kind: SpanKind,
        at: Instant,
        attributes: Vec<KeyValue>,
    ) -> BoxedSpan {
        self.tracing.tracer.build_with_context(
            SpanBuilder::from_name(name)
                .with_kind(kind)
                .with_start_time(self.clock.at(at))
                .with_attributes(attributes),
            parent,
        )
    }

    /// The turn's spans, opening its `invoke_agent` at `at` when it has
    /// none yet (a speculative turn's first request comes before its
    /// events are shown); `None` once the session's span ended.
    pub(super) fn turn<'s>(
        &self,
        st: &'s mut State,
        turn: TurnId,
        at: Instant,
    ) -> Option<&'s mut TurnSpans> {
        self.open_turn(st, turn, at, false)
    }

    /// Runs `f` on the turn's spans, if they are open (never opens them).
    pub(super) fn with_turn(&self, turn: TurnId, f: impl FnOnce(&mut TurnSpans, Instant)) {
        let now = Instant::now();
        let mut st = self.lock();
        if let Some(t) = st.turns.iter_mut().find(|t| t.turn == turn) {
            f(t, now);
        }
    }

    /// The turn's spans; `shown`: its `TurnStarted` is being delivered.
    fn open_turn<'s>(
        &self,
        st: &'s mut State,
        turn: TurnId,
        at: Instant,
        shown: bool,
    ) -> Option<&'s mut TurnSpans> {
        if let Some(i) = st.turns.iter().position(|t| t.turn == turn) {
            return st.turns.get_mut(i);
        }
        // Ended: a round still running after its turn or the session ended
        // opens nothing.
        if turn <= st.closed_upto {
            return None;
        }
        let session = st.session.clone()?;
        // The turn covers the caller's utterance it answers.
        let start = match st.utterance.final_at {
            Some(_) => st.utterance.started.map_or(at, |s| s.min(at)),
            None => at,
        };
        let name = match &self.tracing.agent_name {
            Some(agent) => format!("{} {agent}", c::INVOKE_AGENT),
            None => c::INVOKE_AGENT.to_string(),
        };
        let mut attributes = vec![
            KeyValue::new(c::OPERATION, c::INVOKE_AGENT),
            KeyValue::new(c::CONVERSATION, self.conversation.to_string()),
            KeyValue::new("colloquy.turn.id", turn.0 as i64),
        ];
        if let Some(agent) = &self.tracing.agent_name {
            attributes.push(KeyValue::new(c::AGENT_NAME, agent.to_string()));
        }
        if !shown {
            attributes.push(KeyValue::new("colloquy.speculative", true));
        }
        let span = self.child(&session, name, SpanKind::Internal, start, attributes);
        let mut spans = TurnSpans::new(turn, Context::new().with_span(span), start);
        if st.utterance.final_at.is_some() && shown {
            let utterance = std::mem::take(&mut st.utterance);
            self.utterance_span(&spans.cx, &utterance, false);
            spans.has_utterance = true;
        }
        spans.shown = shown;
        st.turns.push(spans);
        st.turns.last_mut()
    }

    /// A `speech_to_text` span for a finished utterance under `parent`.
    fn utterance_span(&self, parent: &Context, u: &Utterance, backchannel: bool) {
        let Some((final_at, chars)) = u.final_at else {
            return;
        };
        let start = u.started.unwrap_or(final_at).min(final_at);
        let mut attributes = vec![
            KeyValue::new(c::OPERATION, c::SPEECH_TO_TEXT),
            KeyValue::new("colloquy.transcript.chars", chars as i64),
        ];
        if let Some(end) = u.ended {
            let ms = signed_ms(end, final_at);
            attributes.push(KeyValue::new("colloquy.speech_end_to_final_ms", ms));
        }
        if let Some(h) = u.heard {
            attributes.push(KeyValue::new("colloquy.audio.start_sample", h.start as i64));
            attributes.push(KeyValue::new("colloquy.audio.end_sample", h.end as i64));
            attributes.push(KeyValue::new(
                "colloquy.audio.sample_rate",
                i64::from(h.sample_rate),
            ));
        }
        if backchannel {
            attributes.push(KeyValue::new("colloquy.backchannel", true));
        }
        let mut span = self.child(
            parent,
            c::SPEECH_TO_TEXT,
            SpanKind::Internal,
            start,
            attributes,
        );
        span.end_with_timestamp(self.clock.at(final_at));
    }

    /// Takes one bus event (the tap).
    pub(crate) fn observe(&self, event: &BusEvent) {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        if st.session.is_none() {
            return;
        }
        match &event.kind {
            EventKind::UserSpeechStarted => {
                // An utterance no turn claimed stays under the session.
                self.flush_utterance(st);
                st.utterance.started = Some(now);
            }
            EventKind::UserSpeechEnded => st.utterance.ended = Some(now),
            EventKind::UserTranscript {
                text,
                is_final: true,
                heard,
            } => {
                st.utterance.final_at = Some((now, text.chars().count()));
                st.utterance.heard = *heard;
                // A turn already answering it (preemptive) claims it now.
                let started = st.utterance.started;
                if let Some(t) = st.turns.iter_mut().rev().find(|t| {
                    t.shown
                        && !t.has_utterance
                        && t.end.is_none()
                        && started.is_some_and(|s| s <= t.started)
                }) {
                    let utterance = std::mem::take(&mut st.utterance);
                    self.utterance_span(&t.cx, &utterance, false);
                    t.has_utterance = true;
                }
            }
            EventKind::Backchannel { text } => {
                if st.utterance.final_at.is_none() {
                    st.utterance.final_at = Some((now, text.chars().count()));
                }
                let utterance = std::mem::take(&mut st.utterance);
                if let Some(session) = st.session.clone() {
                    self.utterance_span(&session, &utterance, true);
                }
            }
            EventKind::TurnStarted => {
                if let Some(i) = st.turns.iter().position(|t| t.turn == event.turn) {
                    // A promoted speculation: shown now; the utterance it
                    // answers is its own.
                    st.turns[i].shown = true;
                    if !st.turns[i].has_utterance && st.utterance.final_at.is_some() {
                        let utterance = std::mem::take(&mut st.utterance);
                        self.utterance_span(&st.turns[i].cx, &utterance, false);
                        st.turns[i].has_utterance = true;
                    }
                } else {
                    let _ = self.open_turn(st, event.turn, now, true);
                }
            }
            EventKind::SpeculationEnded { outcome, usage } => {
                self.speculation_ended(st, event.turn, *outcome, usage.as_deref(), now);
            }
            // The session's report: nothing more of the turn can happen.
            EventKind::TurnLatency(report) => {
                let closed = report.session_closed;
                self.close_turn(st, report.turn, Some(report), closed, now);
            }
            kind => {
                if let Some(t) = st.turns.iter_mut().find(|t| t.turn == event.turn) {
                    self.turn_event(t, kind, now);
                }
            }
        }
    }

    fn flush_utterance(&self, st: &mut State) {
        let utterance = std::mem::take(&mut st.utterance);
        if let Some(session) = &st.session {
            self.utterance_span(session, &utterance, false);
        }
    }

    fn speculation_ended(
        &self,
        st: &mut State,
        turn: TurnId,
        outcome: SpeculationOutcome,
        usage: Option<&colloquy::llm::Usage>,
        now: Instant,
    ) {
        let Some(i) = st.turns.iter().position(|t| t.turn == turn) else {
            return;
        };
        let t = &mut st.turns[i];
        t.cx.span().set_attribute(KeyValue::new(
            "colloquy.speculation.outcome",
            outcome.label(),
        ));
        if outcome == SpeculationOutcome::Hit {
            return;
        }
        if let Some(u) = usage {
            t.input_tokens += u.prompt_tokens;
            t.output_tokens += u.completion_tokens;
            self.estimated_usage(t, u);
        }
        t.end = Some(TurnEnd::Cancelled);
        t.discarded = true;
        self.close_turn(st, turn, None, false, now);
    }

    /// Ends the turn's spans: `report` (its latency) when the timer gave
    /// one; `session_closed` when the session stopped under it.
    fn close_turn(
        &self,
        st: &mut State,
        turn: TurnId,
        report: Option<&TurnLatency>,
        session_closed: bool,
        now: Instant,
    ) {
        let Some(i) = st.turns.iter().position(|t| t.turn == turn) else {
            return;
        };
        let mut t = st.turns.remove(i);
        st.closed_upto = st.closed_upto.max(turn);
        self.settle(&mut t, now);
        let span = t.cx.span();
        let interrupted = t.interrupted_at.is_some()
            || report.is_some_and(|r| r.cut_at_chars.is_some())
            || t.end == Some(TurnEnd::Cancelled);
        let failed = matches!(t.end, Some(TurnEnd::Failed(_)));
        let reason = if t.discarded {
            "discarded"
        } else if interrupted {
            "interrupted"
        } else if failed {
            "failed"
        } else if session_closed {
            "session_closed"
        } else {
            "completed"
        };
        let mut attributes = vec![
            KeyValue::new(c::END_REASON, reason),
            KeyValue::new(
                "colloquy.heard_chars",
                t.interrupted_at.unwrap_or(t.heard) as i64,
            ),
            KeyValue::new("colloquy.spoken_chars", t.spoken as i64),
            KeyValue::new(c::INPUT_TOKENS, t.input_tokens as i64),
            KeyValue::new(c::OUTPUT_TOKENS, t.output_tokens as i64),
        ];
        if let Some(end) = &t.end {
            attributes.push(KeyValue::new("colloquy.turn.end", end.label()));
            if let TurnEnd::Failed(text) = end {
                attributes.push(KeyValue::new(c::ERROR_TYPE, c::error_kind(text)));
                span.set_status(Status::error(c::error_kind(text)));
            }
        }
        if let Some(r) = report {
            latency_attributes(r, &mut attributes);
        }
        span.set_attributes(attributes);
        span.end_with_timestamp(self.clock.at(now));
    }

    /// The session stopped: every open span ends.
    pub(crate) fn end(&self) {
        let now = Instant::now();
        let mut st = self.lock();
        let st = &mut *st;
        let turns: Vec<TurnId> = st.turns.iter().map(|t| t.turn).collect();
        for turn in turns {
            self.close_turn(st, turn, None, true, now);
        }
        self.flush_utterance(st);
        if let Some(session) = st.session.take() {
            session.span().end_with_timestamp(self.clock.at(now));
        }
    }
}

impl Drop for SessionTrace {
    fn drop(&mut self) {
        self.end();
    }
}

impl TurnSpans {
    fn new(turn: TurnId, cx: Context, started: Instant) -> Self {
        Self {
            turn,
            cx,
            started,
            round: 0,
            model: Arc::from(""),
            attempts: Vec::new(),
            tools: Vec::new(),
            segments: std::collections::VecDeque::new(),
            spoken: 0,
            heard: 0,
            input_tokens: 0,
            output_tokens: 0,
            end: None,
            interrupted_at: None,
            has_utterance: false,
            shown: false,
            discarded: false,
        }
    }
}

fn signed_ms(from: Instant, to: Instant) -> f64 {
    match to.checked_duration_since(from) {
        Some(d) => d.as_secs_f64() * 1000.0,
        None => -((from - to).as_secs_f64() * 1000.0),
    }
}

/// The turn's latency breakdown (`crate::latency`) as attributes.
fn latency_attributes(r: &TurnLatency, out: &mut Vec<KeyValue>) {
    let intervals = [
        (
            "colloquy.latency.speech_end_to_final_ms",
            r.speech_end_to_final_ms,
        ),
        (
            "colloquy.latency.final_to_turn_start_ms",
            r.final_to_turn_start_ms,
        ),
        (
            "colloquy.latency.turn_start_to_first_token_ms",
            r.turn_start_to_first_token_ms,
        ),
        (
            "colloquy.latency.first_token_to_speakable_ms",
            r.first_token_to_speakable_ms,
        ),
        (
            "colloquy.latency.speakable_to_heard_ms",
            r.speakable_to_heard_ms,
        ),
        (
            "colloquy.latency.speakable_to_first_audio_ms",
            r.speakable_to_first_audio_ms,
        ),
        (
            "colloquy.latency.first_audio_to_played_ms",
            r.first_audio_to_played_ms,
        ),
        ("colloquy.latency.played_to_heard_ms", r.played_to_heard_ms),
        ("colloquy.latency.end_to_end_ms", r.end_to_end_ms),
    ];
    for (key, value) in intervals {
        if let Some(v) = value {
            out.push(KeyValue::new(key, v));
        }
    }
    out.push(KeyValue::new("colloquy.pauses", i64::from(r.pauses)));
    out.push(KeyValue::new("colloquy.resumes", i64::from(r.resumes)));
    out.push(KeyValue::new("colloquy.fallbacks", i64::from(r.fallbacks)));
    out.push(KeyValue::new("colloquy.hedges", i64::from(r.hedges)));
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
