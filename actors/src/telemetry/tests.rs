//! The trace's state machine driven directly: bus events as the tap sees
//! them and the round task's reports, in the orders races produce, with
//! the spans read from the SDK's in-memory exporter.

use std::sync::Arc;

use colloquy::llm::Usage;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};

use super::SessionTrace;
use crate::bus::{BusEvent, EventKind, SpeculationOutcome, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::latency::TurnTimer;
use crate::telemetry::Tracing;

struct Harness {
    exporter: InMemorySpanExporter,
    _provider: SdkTracerProvider,
    trace: Arc<SessionTrace>,
    seq: u64,
    /// The session's timer, as the ledger runs it: its reports follow the
    /// event that completed a turn.
    timer: TurnTimer,
}

impl Harness {
    fn new() -> Self {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracing = Tracing::new(provider.tracer("test")).with_latest_conventions(false);
        let trace = SessionTrace::start(tracing, &SessionId::new("s"), Vec::new());
        Self {
            exporter,
            _provider: provider,
            trace,
            seq: 0,
            timer: TurnTimer::new(),
        }
    }

    fn event(&mut self, turn: u64, kind: EventKind) {
        self.seq += 1;
        let event = BusEvent {
            session: SessionId::new("s"),
            turn: TurnId(turn),
            seq: self.seq,
            kind,
        };
        let report = self.timer.observe(&event, tokio::time::Instant::now());
        self.trace.observe(&event);
        if let Some(r) = report {
            self.event(r.turn.0, EventKind::TurnLatency(Arc::new(r)));
        }
    }

    fn spans(&self) -> Vec<SpanData> {
        self.trace.end();
        self.exporter.get_finished_spans().unwrap()
    }
}

fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .rev()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

fn estimate(completion: u64) -> EventKind {
    EventKind::Usage(Arc::new(Usage {
        prompt_tokens: 100,
        completion_tokens: completion,
        total_tokens: 100 + completion,
        cached_tokens: None,
        reasoning_tokens: None,
        estimated: true,
    }))
}

#[test]
fn a_round_task_reporting_after_its_turn_closed_opens_nothing() {
    let mut h = Harness::new();
    h.event(1, EventKind::TurnStarted);
    h.trace.round_started(TurnId(1), 0, "m");
    // A barge-in in another thread closes the turn…
    h.event(1, estimate(0));
    h.event(1, EventKind::TurnFinished(TurnEnd::Cancelled));
    // …while the round task was between reading its stream and its next
    // bus check.
    h.trace.first_chunk(TurnId(1), None);
    h.trace
        .metadata(TurnId(1), None, Some("r"), Some("chatcmpl-1"), Some("m"));
    h.trace.finished(TurnId(1), None, None);
    h.trace.round_started(TurnId(1), 1, "m");
    let spans = h.spans();
    let turns = named(&spans, "invoke_agent");
    assert_eq!(turns.len(), 1, "{turns:#?}");
    assert_eq!(
        attr(turns[0], "gen_ai.agent.invocation.end_reason").as_deref(),
        Some("interrupted")
    );
    assert_eq!(named(&spans, "chat m").len(), 1);
}

#[test]
fn a_missed_speculation_leaves_the_utterance_to_the_turn_that_answers_it() {
    let mut h = Harness::new();
    h.event(0, EventKind::UserSpeechStarted);
    // A speculation on an interim: its request goes out, its events are held.
    h.trace.round_started(TurnId(1), 0, "m");
    h.event(0, EventKind::UserSpeechEnded);
    h.event(
        0,
        EventKind::UserTranscript {
            text: Arc::from("what time is it"),
            is_final: true,
            heard: None,
        },
    );
    h.event(
        1,
        EventKind::SpeculationEnded {
            outcome: SpeculationOutcome::Miss,
            usage: None,
        },
    );
    h.event(2, EventKind::TurnStarted);
    h.event(2, EventKind::TurnFinished(TurnEnd::Stop));
    let spans = h.spans();
    let turns = named(&spans, "invoke_agent");
    let live = turns
        .iter()
        .find(|t| attr(t, "colloquy.turn.id").as_deref() == Some("2"))
        .expect("turn 2");
    let missed = turns
        .iter()
        .find(|t| attr(t, "colloquy.turn.id").as_deref() == Some("1"))
        .expect("turn 1");
    assert_eq!(
        attr(missed, "gen_ai.agent.invocation.end_reason").as_deref(),
        Some("discarded")
    );
    let stt = named(&spans, "speech_to_text");
    assert_eq!(stt.len(), 1);
    assert_eq!(stt[0].parent_span_id, live.span_context.span_id());
}

#[test]
fn after_a_retry_the_cut_turns_estimate_goes_on_the_serving_request() {
    let mut h = Harness::new();
    h.event(1, EventKind::TurnStarted);
    h.trace.round_started(TurnId(1), 0, "m");
    // The first request fails before output, reporting no usage.
    h.trace.retrying(TurnId(1), "http", None);
    h.trace.first_chunk(TurnId(1), None);
    // The retry serves; the caller cuts: the ledger estimates both, the
    // serving one (its produced text) first.
    h.event(1, estimate(42));
    h.event(1, estimate(0));
    h.event(1, EventKind::TurnFinished(TurnEnd::Cancelled));
    let spans = h.spans();
    let mut chats = named(&spans, "chat m");
    chats.sort_by_key(|s| s.start_time);
    assert_eq!(chats.len(), 2);
    assert_eq!(attr(chats[0], "error.type").as_deref(), Some("http"));
    assert_eq!(
        attr(chats[0], "gen_ai.usage.output_tokens").as_deref(),
        Some("0")
    );
    assert_eq!(
        attr(chats[1], "gen_ai.usage.output_tokens").as_deref(),
        Some("42")
    );
    assert_eq!(
        attr(chats[1], "colloquy.cancelled").as_deref(),
        Some("true")
    );
    for c in &chats {
        assert_eq!(attr(c, "colloquy.usage.estimated").as_deref(), Some("true"));
    }
}
