//! Encoding: one event of a session as one JSON object, `{"session", "turn",
//! "seq", "worker", "kind", "payload"}` (see the module docs of
//! [`wire`](super) for every kind's payload). The `kind` of a bus event is
//! its [`EventKind::name`].

use colloquy::llm::FailureReason;
use serde::Serialize;
use serde_json::{Value, json};

use crate::bus::{EventKind, TurnEnd};

/// The envelope of one event, as written.
#[derive(Serialize)]
struct Out<'a, P: Serialize> {
    session: &'a str,
    turn: u64,
    seq: u64,
    worker: &'a str,
    kind: &'a str,
    payload: P,
}

/// The payload of the text events, written without a JSON tree.
#[derive(Serialize)]
struct TextPayload<'a> {
    text: &'a str,
}

/// Encodes one event.
pub(crate) fn encode_event<P: Serialize>(
    session: &str,
    turn: u64,
    seq: u64,
    worker: &str,
    kind: &str,
    payload: P,
) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_event_into(&mut buf, session, turn, seq, worker, kind, payload);
    buf
}

/// Encodes one event at the end of `buf` (a batch's buffer).
pub(crate) fn encode_event_into<P: Serialize>(
    buf: &mut Vec<u8>,
    session: &str,
    turn: u64,
    seq: u64,
    worker: &str,
    kind: &str,
    payload: P,
) {
    let out = Out {
        session,
        turn,
        seq,
        worker,
        kind,
        payload,
    };
    let start = buf.len();
    if serde_json::to_writer(&mut *buf, &out).is_err() {
        // Cannot happen for these types; never leave half an object.
        buf.truncate(start);
    }
}

/// Encodes one bus event.
#[cfg(test)]
pub(crate) fn encode_bus(
    session: &str,
    turn: u64,
    seq: u64,
    worker: &str,
    kind: &EventKind,
) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_bus_into(&mut buf, session, turn, seq, worker, kind);
    buf
}

/// Encodes one bus event at the end of `buf` (text events without an
/// intermediate JSON tree: they are most of the traffic).
pub(crate) fn encode_bus_into(
    buf: &mut Vec<u8>,
    session: &str,
    turn: u64,
    seq: u64,
    worker: &str,
    kind: &EventKind,
) {
    match kind {
        EventKind::Token(t) | EventKind::Reasoning(t) | EventKind::Refusal(t) => encode_event_into(
            buf,
            session,
            turn,
            seq,
            worker,
            kind.name(),
            TextPayload { text: t },
        ),
        _ => {
            let (name, mut payload) = bus_payload(kind);
            if kind.is_report() {
                // The report names the owner's local turn; the wire's is global.
                payload["turn"] = json!(turn);
            }
            encode_event_into(buf, session, turn, seq, worker, name, payload)
        }
    }
}

/// The payload of `turn_finished`.
pub(super) fn end_payload(end: &TurnEnd) -> Value {
    match end {
        TurnEnd::Failed(m) | TurnEnd::Other(m) => json!({"end": end.label(), "message": &**m}),
        _ => json!({"end": end.label()}),
    }
}

/// The wire kind and payload of a bus event.
fn bus_payload(kind: &EventKind) -> (&'static str, Value) {
    let payload = match kind {
        EventKind::Token(t) | EventKind::Reasoning(t) | EventKind::Refusal(t) => {
            json!({"text": &**t})
        }
        EventKind::ToolCall(c) => serde_json::to_value(&**c).unwrap_or(Value::Null),
        EventKind::ToolResult(o) => json!({
            "call_id": o.call_id, "name": o.name, "output": o.output, "is_error": o.is_error,
        }),
        EventKind::Usage(u) => serde_json::to_value(**u).unwrap_or(Value::Null),
        EventKind::Structured(v) => json!({"value": &**v}),
        EventKind::TurnFinished(end) => end_payload(end),
        EventKind::Interrupted { heard_chars } => json!({"heard_chars": heard_chars}),
        EventKind::UserTranscript {
            text,
            is_final,
            heard,
        } => {
            let mut v = json!({"text": &**text, "is_final": is_final});
            if let Some(h) = heard {
                v["heard"] = json!({"start": h.start, "end": h.end, "sample_rate": h.sample_rate});
            }
            v
        }
        EventKind::Speakable { text, last } => json!({"text": &**text, "last": last}),
        EventKind::SpeechPlayed { chars } => json!({"chars": chars}),
        EventKind::SpeechAudio(stage) => json!({"stage": stage.label()}),
        EventKind::PlaybackPaused { heard_chars } | EventKind::PlaybackResumed { heard_chars } => {
            json!({"heard_chars": heard_chars})
        }
        EventKind::SpeculationEnded { outcome, usage } => {
            json!({"outcome": outcome.label(), "usage": usage.as_deref()})
        }
        EventKind::Backchannel { text } => json!({"text": &**text}),
        EventKind::ProviderSelected(c) => json!({
            "index": c.index, "label": &*c.label, "base_url": &*c.base_url,
            "reason": c.reason, "continuation": c.continuation,
        }),
        EventKind::ProviderFailed(f) => {
            let message = match &f.reason {
                FailureReason::Error { message, .. } => Some(message.as_str()),
                _ => None,
            };
            json!({
                "index": f.index, "label": &*f.label, "base_url": &*f.base_url,
                "reason": f.reason.label(), "message": message,
                "after_output": f.after_output, "usage": f.usage,
            })
        }
        EventKind::TurnLatency(r) => {
            let mut v = r.to_json();
            if let TurnEnd::Failed(m) | TurnEnd::Other(m) = &r.end {
                v["message"] = json!(&**m);
            }
            v
        }
        // Kinds added later travel by name (decoded as `Unknown` by older readers).
        #[allow(unreachable_patterns)]
        _ => json!({}),
    };
    (kind.name(), payload)
}
