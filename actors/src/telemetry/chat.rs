//! `chat` spans: one per request attempt of a turn.
//!
//! What a request did comes from the round task, in the order its stream
//! said it (which provider serves, which failed, usage, the finish) — never
//! from the bus, where a speculative turn's events are held back until it
//! is promoted. The bus gives only what the ledger decides: the estimates of
//! a cut turn's usage (after its requests were dropped) and the turn's end.
//! So a request's span stays open until the turn settles its usage, and
//! ends at the instant its request ended.

use std::time::Instant;

use colloquy::llm::{FailureReason, FinishReason, ProviderChoice, ProviderFailure, Usage};
use opentelemetry::global::BoxedSpan;
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt};
use opentelemetry::{Array, KeyValue, StringValue, Value};

use super::conventions as c;
use super::session_trace::{SessionTrace, TurnSpans};
use crate::bus::TurnEnd;
use crate::ids::TurnId;

/// One HTTP request of a turn.
pub(super) struct Attempt {
    round: u32,
    /// Its provider's position in the chain (0 without one).
    index: usize,
    /// The index is known: the round's first request of a chain may go to a
    /// later provider when the first one's circuit is open.
    confirmed: bool,
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

impl SessionTrace {
    /// The provider attributes of a request to chain provider `index`.
    fn provider_attributes(&self, t: &TurnSpans, index: usize) -> (String, Vec<KeyValue>) {
        let provider = self.providers.get(index).or(self.providers.first());
        let model = provider
            .and_then(|p| p.model.as_deref())
            .unwrap_or(&t.model)
            .to_string();
        let mut attributes = vec![
            KeyValue::new(c::REQUEST_MODEL, model.clone()),
            KeyValue::new("colloquy.provider.index", index as i64),
        ];
        if let Some(p) = provider {
            c::provider(p.system, self.tracing.latest, &mut attributes);
            c::server(&p.base_url, &mut attributes);
            attributes.push(KeyValue::new(
                "colloquy.provider.label",
                p.label.to_string(),
            ));
        }
        (format!("{} {model}", c::CHAT), attributes)
    }

    fn attempt(&self, t: &TurnSpans, index: usize, confirmed: bool, at: Instant) -> Attempt {
        let (name, mut attributes) = self.provider_attributes(t, index);
        attributes.extend([
            KeyValue::new(c::OPERATION, c::CHAT),
            KeyValue::new(c::CONVERSATION, self.conversation.to_string()),
            KeyValue::new("colloquy.round", i64::from(t.round)),
        ]);
        let span = self.child(&t.cx, name, SpanKind::Client, at, attributes);
        Attempt {
            round: t.round,
            index,
            confirmed,
            role: if index == 0 { "primary" } else { "fallback" },
            continuation: false,
            span,
            started: at,
            ended: None,
            has_usage: false,
            serving: false,
        }
    }

    /// The round's open request to provider `index` (`None`: the round's
    /// last open request). A request whose provider was only presumed is
    /// that provider's once the stream names it.
    fn attempt_of<'t>(
        &self,
        t: &'t mut TurnSpans,
        index: Option<usize>,
    ) -> Option<&'t mut Attempt> {
        let round = t.round;
        let open = |a: &Attempt| a.round == round && a.ended.is_none();
        let Some(index) = index else {
            return t.attempts.iter_mut().rev().find(|a| open(a));
        };
        if let Some(i) = t.attempts.iter().rposition(|a| open(a) && a.index == index) {
            return t.attempts.get_mut(i);
        }
        let i = t.attempts.iter().rposition(|a| open(a) && !a.confirmed)?;
        let (name, attributes) = self.provider_attributes(t, index);
        let a = &mut t.attempts[i];
        a.index = index;
        a.confirmed = true;
        a.role = if index == 0 { "primary" } else { "fallback" };
        a.span.update_name(name);
        a.span.set_attributes(attributes);
        Some(a)
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
        let confirmed = self.providers.len() <= 1;
        let a = self.attempt(t, 0, confirmed, now);
        t.attempts.push(a);
    }

    /// Another request of the round (chain provider `index`).
    pub(super) fn request_started(&self, turn: TurnId, index: usize) {
        self.with_turn(turn, |t, now| {
            let a = self.attempt(t, index, true, now);
            t.attempts.push(a);
        });
    }

    /// A chain's provider serves the round from here on.
    pub(super) fn selected(&self, turn: TurnId, choice: &ProviderChoice) {
        self.with_turn(turn, |t, _| {
            if let Some(a) = self.attempt_of(t, Some(choice.index)) {
                a.serving = true;
                a.role = choice.reason.label();
                a.continuation = choice.continuation;
            }
        });
    }

    /// A chain's provider was dropped for the round.
    pub(super) fn provider_failed(&self, turn: TurnId, failure: &ProviderFailure) {
        self.with_turn(turn, |t, now| {
            if failure.reason == FailureReason::CircuitOpen {
                // Skipped: no request was sent; the turn notes it.
                t.cx.span().add_event_with_timestamp(
                    "colloquy.provider.skipped",
                    self.time(now),
                    vec![KeyValue::new(
                        "colloquy.provider.index",
                        failure.index as i64,
                    )],
                );
                return;
            }
            let Some(a) = self.attempt_of(t, Some(failure.index)) else {
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
        });
    }

    /// The round's first output (from provider `serving`, with a chain).
    pub(super) fn first_chunk(&self, turn: TurnId, serving: Option<usize>) {
        self.with_turn(turn, |t, now| {
            if let Some(a) = self.attempt_of(t, serving) {
                let ms = (now - a.started).as_secs_f64() * 1000.0;
                a.span
                    .set_attribute(KeyValue::new("colloquy.time_to_first_chunk_ms", ms));
            }
        });
    }

    /// The provider's request id (its `x-request-id`), response id and model.
    pub(super) fn metadata(
        &self,
        turn: TurnId,
        serving: Option<usize>,
        request_id: Option<&str>,
        response_id: Option<&str>,
        model: Option<&str>,
    ) {
        self.with_turn(turn, |t, _| {
            let Some(a) = self.attempt_of(t, serving) else {
                return;
            };
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
        });
    }

    /// The serving request's usage, as the provider reported it.
    pub(super) fn request_usage(&self, turn: TurnId, serving: Option<usize>, u: &Usage) {
        self.with_turn(turn, |t, _| {
            if let Some(a) = self.attempt_of(t, serving).filter(|a| !a.has_usage) {
                set_usage(a, u);
            }
        });
    }

    /// The request failed before output and is sent again (no chain).
    pub(super) fn retrying(&self, turn: TurnId, kind: &'static str, usage: Option<&Usage>) {
        self.with_turn(turn, |t, now| {
            let Some(a) = self.attempt_of(t, None) else {
                return;
            };
            if let Some(u) = usage {
                set_usage(a, u);
            }
            let index = a.index;
            fail(a, kind, now);
            let mut next = self.attempt(t, index, true, now);
            next.span
                .set_attribute(KeyValue::new("colloquy.retry", true));
            t.attempts.push(next);
        });
    }

    /// The round's stream ended with `reason`.
    pub(super) fn finished(
        &self,
        turn: TurnId,
        serving: Option<usize>,
        reason: Option<&FinishReason>,
    ) {
        self.with_turn(turn, |t, now| {
            if let Some(a) = self.attempt_of(t, serving) {
                let reason = reason.map_or_else(|| "stop".to_string(), FinishReason::label);
                a.span.set_attribute(KeyValue::new(
                    c::FINISH_REASONS,
                    Value::Array(Array::String(vec![StringValue::from(reason)])),
                ));
                a.ended = Some(now);
            }
        });
    }

    /// The round's stream failed: its open requests failed with it.
    pub(super) fn failed(&self, turn: TurnId, kind: &'static str) {
        self.with_turn(turn, |t, now| {
            let round = t.round;
            for a in t
                .attempts
                .iter_mut()
                .filter(|a| a.round == round && a.ended.is_none())
            {
                fail(a, kind, now);
            }
        });
    }

    /// A usage the ledger estimated (a cut turn) or a discarded
    /// speculation's: on the first request without one, round by round,
    /// the round's serving request first — the order the ledger settles
    /// them in.
    pub(super) fn estimated_usage(&self, t: &mut TurnSpans, u: &Usage) {
        let Some(round) = t
            .attempts
            .iter()
            .filter(|a| !a.has_usage)
            .map(|a| a.round)
            .min()
        else {
            return;
        };
        let serving = t
            .attempts
            .iter()
            .rposition(|a| a.round == round && a.serving)
            .or_else(|| t.attempts.iter().rposition(|a| a.round == round));
        let target = match serving {
            Some(i) if !t.attempts[i].has_usage => Some(i),
            _ => t
                .attempts
                .iter()
                .position(|a| a.round == round && !a.has_usage),
        };
        if let Some(i) = target {
            set_usage(&mut t.attempts[i], u);
        }
    }

    /// The turn ended: every request's span ends, each at its own end.
    pub(super) fn end_attempts(&self, t: &mut TurnSpans, end: &TurnEnd, now: Instant) {
        for mut a in t.attempts.drain(..) {
            if a.ended.is_none() && *end == TurnEnd::Cancelled {
                a.span
                    .set_attribute(KeyValue::new("colloquy.cancelled", true));
            }
            let mut attributes = vec![KeyValue::new("colloquy.provider.role", a.role)];
            if a.continuation {
                attributes.push(KeyValue::new("colloquy.provider.continuation", true));
            }
            a.span.set_attributes(attributes);
            a.span.end_with_timestamp(self.time(a.ended.unwrap_or(now)));
        }
    }
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
