//! Decoding: one JSON object from an events subject back into a
//! [`RemoteEvent`]. The `kind` is looked up in the bus's table of event kind
//! names, then among the worker's own kinds; a kind in neither (a newer
//! version's) is kept verbatim as [`RemoteEventKind::Unknown`], so readers
//! never break on a kind added later.

use std::sync::Arc;

use colloquy::llm::{
    FailureReason, LlmError, ProviderChoice, ProviderFailure, SelectionReason, ToolCall, Usage,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{RemoteEvent, RemoteEventKind, WorkerEventName};
use crate::bus::{AudioStage, EventKind, EventKindName, SpeculationOutcome, ToolOutput, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::latency::TurnLatency;

/// Why bytes from an events subject are not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not an event object: not JSON, or `session`, `turn`, `seq` or `kind`
    /// missing or of the wrong type.
    #[error("not an event: {0}")]
    Envelope(String),
    /// The payload does not fit the event's kind.
    #[error("invalid {kind} payload: {message}")]
    Payload {
        /// The event's kind.
        kind: &'static str,
        /// What does not fit.
        message: String,
    },
    /// A `speculation_ended` with an outcome this version does not know.
    #[error("unknown speculation outcome {0:?}")]
    UnknownOutcome(String),
}

/// The envelope of one event, as read.
#[derive(Deserialize)]
struct RawEvent {
    session: String,
    turn: u64,
    seq: u64,
    #[serde(default)]
    worker: String,
    kind: String,
    #[serde(default)]
    payload: Value,
}

/// `{"text": str}`.
#[derive(Deserialize)]
struct Text {
    text: String,
}

/// `{"heard_chars": int}`.
#[derive(Deserialize)]
struct Heard {
    heard_chars: usize,
}

/// The payload of `turn_finished`.
#[derive(Deserialize)]
struct End {
    end: String,
    #[serde(default)]
    message: String,
}

/// The payload of an event of `kind`, as `T`.
fn field<T: DeserializeOwned>(kind: &'static str, payload: Value) -> Result<T, DecodeError> {
    serde_json::from_value(payload).map_err(|e| DecodeError::Payload {
        kind,
        message: e.to_string(),
    })
}

/// The text of a `{"text": str}` payload.
fn text(kind: &'static str, payload: Value) -> Result<Arc<str>, DecodeError> {
    Ok(Arc::from(field::<Text>(kind, payload)?.text))
}

/// A turn end by its label (an unknown one is [`TurnEnd::Other`]).
fn turn_end(end: End) -> TurnEnd {
    match end.end.as_str() {
        "stop" => TurnEnd::Stop,
        "length" => TurnEnd::Length,
        "tool_calls" => TurnEnd::ToolCalls,
        "content_filter" => TurnEnd::ContentFilter,
        "cancelled" => TurnEnd::Cancelled,
        "failed" => TurnEnd::Failed(Arc::from(end.message)),
        _ => TurnEnd::Other(Arc::from(if end.message.is_empty() {
            end.end
        } else {
            end.message
        })),
    }
}

/// A turn end from a `turn_finished` payload.
pub(super) fn turn_end_of(payload: Value) -> Result<TurnEnd, DecodeError> {
    Ok(turn_end(field("turn_finished", payload)?))
}

/// Decodes the events of one message: one object per line (a worker batches
/// consecutive events of one class; a single event is one line).
pub fn decode_events(bytes: &[u8]) -> impl Iterator<Item = Result<RemoteEvent, DecodeError>> + '_ {
    bytes
        .split(|b| *b == b'\n')
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(decode_event)
}

/// Decodes one event; an unknown kind is kept as [`RemoteEventKind::Unknown`].
pub fn decode_event(bytes: &[u8]) -> Result<RemoteEvent, DecodeError> {
    let raw: RawEvent =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))?;
    let kind = if let Some(name) = EventKindName::from_name(&raw.kind) {
        bus_event(name, raw.payload)?
    } else if let Some(name) = WorkerEventName::from_name(&raw.kind) {
        worker_event(name, raw.payload)?
    } else {
        RemoteEventKind::Unknown {
            kind: raw.kind,
            payload: raw.payload,
        }
    };
    Ok(RemoteEvent {
        session: SessionId::from(raw.session),
        turn: TurnId(raw.turn),
        seq: raw.seq,
        worker: raw.worker,
        kind,
    })
}

/// The reason of a `provider_failed` by its label: `circuit_open`,
/// `hedge_lost`, or an [`LlmError::kind`] (with its message). A kind this
/// version does not know is kept in the message (`"{kind}: {message}"`)
/// under the kind `other`.
fn failure_reason(label: &str, message: Option<String>) -> FailureReason {
    let message = message.unwrap_or_default();
    match label {
        "circuit_open" => FailureReason::CircuitOpen,
        "hedge_lost" => FailureReason::HedgeLost,
        _ => match LlmError::KINDS.iter().find(|k| **k == label) {
            Some(kind) => FailureReason::Error { kind, message },
            None => FailureReason::Error {
                kind: "other",
                message: format!("{label}: {message}"),
            },
        },
    }
}

/// A bus event of kind `name` from its payload.
fn bus_event(name: EventKindName, p: Value) -> Result<RemoteEventKind, DecodeError> {
    let kind = name.as_str();
    let event = match name {
        EventKindName::TurnStarted => EventKind::TurnStarted,
        EventKindName::Token => EventKind::Token(text(kind, p)?),
        EventKindName::Reasoning => EventKind::Reasoning(text(kind, p)?),
        EventKindName::Refusal => EventKind::Refusal(text(kind, p)?),
        EventKindName::ToolCall => EventKind::ToolCall(Arc::new(field::<ToolCall>(kind, p)?)),
        EventKindName::ToolResult => {
            #[derive(Deserialize)]
            struct Out {
                call_id: String,
                name: String,
                output: String,
                #[serde(default)]
                is_error: bool,
            }
            let o: Out = field(kind, p)?;
            EventKind::ToolResult(Arc::new(ToolOutput {
                call_id: o.call_id,
                name: o.name,
                output: o.output,
                is_error: o.is_error,
            }))
        }
        EventKindName::Usage => EventKind::Usage(Arc::new(field::<Usage>(kind, p)?)),
        EventKindName::Structured => {
            let v = p.get("value").cloned().unwrap_or(Value::Null);
            EventKind::Structured(Arc::new(v))
        }
        EventKindName::TurnFinished => EventKind::TurnFinished(turn_end(field(kind, p)?)),
        EventKindName::TurnLatency => {
            let end = turn_end(field(kind, p.clone())?);
            let report = TurnLatency::from_json(end, &p).ok_or(DecodeError::Payload {
                kind,
                message: "not a turn latency report".into(),
            })?;
            EventKind::TurnLatency(Arc::new(report))
        }
        EventKindName::Interrupted => EventKind::Interrupted {
            heard_chars: field::<Heard>(kind, p)?.heard_chars,
        },
        EventKindName::UserSpeechStarted => EventKind::UserSpeechStarted,
        EventKindName::UserTranscript => {
            #[derive(Deserialize)]
            struct Heard {
                start: u64,
                end: u64,
                sample_rate: u32,
            }
            #[derive(Deserialize)]
            struct Tr {
                text: String,
                is_final: bool,
                #[serde(default)]
                heard: Option<Heard>,
            }
            let t: Tr = field(kind, p)?;
            EventKind::UserTranscript {
                text: Arc::from(t.text),
                is_final: t.is_final,
                heard: t.heard.map(|h| crate::bus::HeardSpan {
                    start: h.start,
                    end: h.end,
                    sample_rate: h.sample_rate,
                }),
            }
        }
        EventKindName::Speakable => {
            #[derive(Deserialize)]
            struct Sp {
                text: String,
                #[serde(default)]
                last: bool,
            }
            let s: Sp = field(kind, p)?;
            EventKind::Speakable {
                text: Arc::from(s.text),
                last: s.last,
            }
        }
        EventKindName::SpeechAudio => {
            #[derive(Deserialize)]
            struct Stage {
                stage: String,
            }
            let stage = field::<Stage>(kind, p)?.stage;
            EventKind::SpeechAudio(AudioStage::from_label(&stage).ok_or(DecodeError::Payload {
                kind,
                message: format!("unknown audio stage {stage:?}"),
            })?)
        }
        EventKindName::SpeechPlayed => {
            #[derive(Deserialize)]
            struct Pl {
                chars: usize,
            }
            EventKind::SpeechPlayed {
                chars: field::<Pl>(kind, p)?.chars,
            }
        }
        EventKindName::UserSpeechEnded => EventKind::UserSpeechEnded,
        EventKindName::PlaybackPaused => EventKind::PlaybackPaused {
            heard_chars: field::<Heard>(kind, p)?.heard_chars,
        },
        EventKindName::PlaybackResumed => EventKind::PlaybackResumed {
            heard_chars: field::<Heard>(kind, p)?.heard_chars,
        },
        EventKindName::SpeculationEnded => {
            #[derive(Deserialize)]
            struct Sp {
                outcome: String,
                #[serde(default)]
                usage: Option<Usage>,
            }
            let sp: Sp = field(kind, p)?;
            let outcome = match sp.outcome.as_str() {
                "hit" => SpeculationOutcome::Hit,
                "miss" => SpeculationOutcome::Miss,
                "dropped" => SpeculationOutcome::Dropped,
                _ => return Err(DecodeError::UnknownOutcome(sp.outcome)),
            };
            EventKind::SpeculationEnded {
                outcome,
                usage: sp.usage.map(Arc::new),
            }
        }
        EventKindName::Backchannel => EventKind::Backchannel {
            text: text(kind, p)?,
        },
        EventKindName::ProviderSelected => {
            #[derive(Deserialize)]
            struct Sel {
                index: usize,
                label: String,
                base_url: String,
                reason: SelectionReason,
                #[serde(default)]
                continuation: bool,
            }
            let c: Sel = field(kind, p)?;
            EventKind::ProviderSelected(Arc::new(ProviderChoice {
                index: c.index,
                label: Arc::from(c.label),
                base_url: Arc::from(c.base_url),
                reason: c.reason,
                continuation: c.continuation,
            }))
        }
        EventKindName::ProviderFailed => {
            #[derive(Deserialize)]
            struct Failed {
                index: usize,
                label: String,
                base_url: String,
                reason: String,
                #[serde(default)]
                message: Option<String>,
                #[serde(default)]
                after_output: bool,
                #[serde(default)]
                usage: Option<Usage>,
            }
            let f: Failed = field(kind, p)?;
            EventKind::ProviderFailed(Arc::new(ProviderFailure {
                index: f.index,
                label: Arc::from(f.label),
                base_url: Arc::from(f.base_url),
                reason: failure_reason(&f.reason, f.message),
                after_output: f.after_output,
                usage: f.usage,
            }))
        }
    };
    Ok(RemoteEventKind::Bus(event))
}

/// An event of the worker's own of kind `name` from its payload.
fn worker_event(name: WorkerEventName, p: Value) -> Result<RemoteEventKind, DecodeError> {
    let kind = name.as_str();
    Ok(match name {
        WorkerEventName::Resumed => {
            #[derive(Deserialize)]
            struct Re {
                last_committed_turn: u64,
                #[serde(default)]
                previous_worker: Option<String>,
            }
            let r: Re = field(kind, p)?;
            RemoteEventKind::Resumed {
                last_committed_turn: TurnId(r.last_committed_turn),
                previous_worker: r.previous_worker,
            }
        }
        WorkerEventName::Lagged => {
            #[derive(Deserialize)]
            struct Lg {
                missed: u64,
            }
            RemoteEventKind::Lagged {
                missed: field::<Lg>(kind, p)?.missed,
            }
        }
        WorkerEventName::CheckpointTooLarge => {
            #[derive(Deserialize)]
            struct Tl {
                bytes: usize,
                max_bytes: usize,
            }
            let t: Tl = field(kind, p)?;
            RemoteEventKind::CheckpointTooLarge {
                bytes: t.bytes,
                max_bytes: t.max_bytes,
            }
        }
        WorkerEventName::SessionEnded => {
            #[derive(Deserialize)]
            struct En {
                #[serde(default)]
                reason: String,
            }
            RemoteEventKind::SessionEnded {
                reason: field::<En>(kind, p)?.reason,
            }
        }
    })
}
