//! The JSON on the wire: one object per event, one object per input, so a
//! Python or Go STT/TTS service can join a session's bus.
//!
//! # Events: `{prefix}.session.{key}.events`
//!
//! `{prefix}` is `colloquy` unless configured; `{key}` is the session id made
//! subject-safe by [`session_key`](super::session_key). Each message is one
//! object:
//!
//! ```json
//! {"session":"call-42","turn":3,"seq":4294967308,"worker":"w1","kind":"token","payload":{"text":"Hel"}}
//! ```
//!
//! - `session`: the session id; `worker`: the name of the worker that published it.
//! - `turn`: the agent's turn the event belongs to (user events carry the
//!   latest turn). Turn numbers increase across failovers: a resumed session
//!   never reuses one.
//! - `seq`: strictly increasing within a session, with gaps, also across
//!   workers: `seq = generation × 2³² + n`, where `generation` counts the
//!   session's owners (it grows with every claim). An event whose generation is
//!   below one already seen comes from a superseded owner: drop it
//!   ([`RemoteEvents`](super::RemoteEvents) does).
//! - `kind` and `payload`:
//!
//! | kind | payload |
//! | --- | --- |
//! | `turn_started` | `{}` |
//! | `token`, `reasoning`, `refusal` | `{"text": str}` |
//! | `tool_call` | `{"index": int, "id": str, "name": str, "arguments": str, "valid_json": bool}` |
//! | `tool_result` | `{"call_id": str, "name": str, "output": str, "is_error": bool}` |
//! | `usage` | `{"prompt_tokens", "completion_tokens", "total_tokens": int, "cached_tokens", "reasoning_tokens": int or null, "estimated": bool}` |
//! | `structured` | `{"value": any}` |
//! | `turn_finished` | `{"end": "stop" \| "length" \| "tool_calls" \| "content_filter" \| "cancelled" \| "failed" \| "other", "message": str (failed and other only)}` |
//! | `interrupted` | `{"heard_chars": int}` (the user cut the reply's speech) |
//! | `user_speech_started` | `{}` |
//! | `user_transcript` | `{"text": str, "is_final": bool}` |
//! | `speakable` | `{"text": str, "last": bool}` |
//! | `speech_played` | `{"chars": int}` |
//! | `user_speech_ended` | `{}` |
//! | `playback_paused`, `playback_resumed` | `{"heard_chars": int}` (confirmed mode: stop playing and keep the position / play on from it) |
//! | `backchannel` | `{"text": str}` (an acknowledgement, not a turn) |
//! | `speculation_ended` | `{"outcome": "hit" \| "miss" \| "dropped", "usage": usage or null}` |
//! | `provider_selected` | `{"index": int, "label": str, "base_url": str, "reason": "primary" \| "fallback" \| "hedge", "continuation": bool}` |
//! | `provider_failed` | `{"index", "label", "base_url", "reason": str, "message": str or null, "after_output": bool, "usage": usage or null}` (decoded as `Unknown`: its reason is kept as JSON) |
//! | `resumed` | `{"last_committed_turn": int, "previous_worker": str or null}`: another worker took the session over; every turn up to `last_committed_turn` is in its history |
//! | `lagged` | `{"missed": int}`: the worker's forwarder missed events of the local bus |
//! | `checkpoint_too_large` | `{"bytes": int, "max_bytes": int}`: the committed context no longer fits in one message; the session runs on without a durable copy |
//! | `session_ended` | `{"reason": str}` (`closed`) |
//!
//! The rules of the bus hold on the wire: after `turn_finished` with
//! `cancelled` or `failed`, or after `interrupted`, nothing more of that turn
//! is published; after a normal end only its tail speech (`speakable`,
//! `speech_played`) and `interrupted` may follow. A turn that was in flight
//! when its worker died ends with `turn_finished` `failed` and the message
//! `worker lost`, published by the new owner before `resumed`. A `turn_finished`
//! with a normal end is published only once the history holding the turn is
//! stored. (If a worker dies between publishing a turn's `cancelled` end and
//! storing it, the new owner also ends that turn as `failed`: ignore a second
//! end of a turn.)
//!
//! # Inputs: `{prefix}.session.{key}.in`
//!
//! One object per message, `{"op": …}` plus the op's fields. With a reply
//! subject (a NATS request) the owner answers `{"ok": value}` or
//! `{"error": {"kind": str, "message": str}}`; without one it just acts.
//!
//! | op | fields | ok |
//! | --- | --- | --- |
//! | `user_speech_started` | | the event's `seq` |
//! | `user_speech_ended` | | the event's `seq` |
//! | `user_transcript` | `text`, `is_final` | the event's `seq` |
//! | `speech_played` | `turn`, `chars` | the event's `seq` |
//! | `send_text` | `text` | `null` |
//! | `cancel` | | `null`, once the turn is closed and its `turn_finished` published |
//! | `submit_tool_result` | `turn`, `call_id`, `name`, `output`, `is_error` | the event's `seq` |
//! | `context` | | the committed history (`{"items": [...]}`) |
//! | `close` | | `null`; the session stops and its lease and checkpoint are deleted |
//!
//! Error kinds: `invalid` (not this schema), `not_running`, `stale` (a turn
//! that is closed or not current), `not_allowed`, `unknown_call`,
//! `already_answered`, `closed`, `timeout`, `too_large`, `turn_in_flight`.
//!
//! # Placement: `{prefix}.place` (queue group `{prefix}-workers`)
//!
//! A request `{"session": str, "spec": SessionSpec, "context": {"items": [...]}}`
//! (`context` optional: a history to start from), answered with
//! `{"ok": {"worker": str}}` or an error of kind `full`, `already_exists`,
//! `unknown_tool`, `too_large`, `too_long` (the session id's key or a tool
//! name is over the bound of [`MAX_SESSION_KEY_BYTES`](super::MAX_SESSION_KEY_BYTES)
//! or [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES)), `invalid` or `internal`.

use std::sync::Arc;

use colloquy::context::ChatContext;
use colloquy::llm::{FailureReason, ProviderChoice, SelectionReason, ToolCall, Usage};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::spec::SessionSpec;
use crate::bus::{EventKind, PublishError, SpeculationOutcome, ToolOutput, TurnEnd};
use crate::ids::{SessionId, TurnId};
use crate::session::SessionError;

/// The message of the turn end a failover gives the turn that was in flight.
pub const WORKER_LOST: &str = "worker lost";

/// An event of a remote session, decoded from the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteEvent {
    /// The conversation.
    pub session: SessionId,
    /// The turn the event belongs to.
    pub turn: TurnId,
    /// Strictly increasing within the session (see the module docs).
    pub seq: u64,
    /// The worker that published it.
    pub worker: String,
    /// The payload.
    pub kind: RemoteEventKind,
}

impl RemoteEvent {
    /// The owner generation that published the event (`seq >> 32`).
    pub fn generation(&self) -> u64 {
        self.seq >> 32
    }

    /// The bus event inside, if this is one.
    pub fn bus(&self) -> Option<&EventKind> {
        match &self.kind {
            RemoteEventKind::Bus(kind) => Some(kind),
            _ => None,
        }
    }
}

/// What a remote event says.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RemoteEventKind {
    /// An event of the session's bus.
    Bus(EventKind),
    /// Another worker resumed the session from its checkpoint.
    Resumed {
        /// Every turn up to this one is in the restored history.
        last_committed_turn: TurnId,
        /// The worker that owned the session before, when known.
        previous_worker: Option<String>,
    },
    /// The owner's forwarder missed `missed` events of the local bus.
    Lagged {
        /// Events not forwarded.
        missed: u64,
    },
    /// The committed context no longer fits in one message of the server: it
    /// is not stored (not chunked), and the session runs without a durable copy.
    CheckpointTooLarge {
        /// The checkpoint's size.
        bytes: usize,
        /// The server's maximum.
        max_bytes: usize,
    },
    /// The session stopped.
    SessionEnded {
        /// Why (`closed`).
        reason: String,
    },
    /// A kind this version does not know, kept verbatim.
    Unknown {
        /// The kind's name.
        kind: String,
        /// Its payload.
        payload: Value,
    },
}

#[derive(Serialize)]
struct Out<'a, P: Serialize> {
    session: &'a str,
    turn: u64,
    seq: u64,
    worker: &'a str,
    kind: &'a str,
    payload: P,
}

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
    let out = Out {
        session,
        turn,
        seq,
        worker,
        kind,
        payload,
    };
    serde_json::to_vec(&out).unwrap_or_default()
}

/// Encodes one bus event (text events without an intermediate JSON tree:
/// they are most of the traffic).
pub(crate) fn encode_bus(
    session: &str,
    turn: u64,
    seq: u64,
    worker: &str,
    kind: &EventKind,
) -> Vec<u8> {
    match kind {
        EventKind::Token(t) | EventKind::Reasoning(t) | EventKind::Refusal(t) => encode_event(
            session,
            turn,
            seq,
            worker,
            kind.name(),
            TextPayload { text: t },
        ),
        _ => {
            let (name, payload) = bus_payload(kind);
            encode_event(session, turn, seq, worker, name, payload)
        }
    }
}

fn end_payload(end: &TurnEnd) -> Value {
    match end {
        TurnEnd::Failed(m) | TurnEnd::Other(m) => json!({"end": end.label(), "message": &**m}),
        _ => json!({"end": end.label()}),
    }
}

/// The wire kind and payload of a bus event.
pub(crate) fn bus_payload(kind: &EventKind) -> (&'static str, Value) {
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
        EventKind::UserTranscript { text, is_final } => {
            json!({"text": &**text, "is_final": is_final})
        }
        EventKind::Speakable { text, last } => json!({"text": &**text, "last": last}),
        EventKind::SpeechPlayed { chars } => json!({"chars": chars}),
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
        // Kinds added later travel by name (decoded as `Unknown` by older readers).
        #[allow(unreachable_patterns)]
        _ => json!({}),
    };
    (kind.name(), payload)
}

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

#[derive(Deserialize)]
struct Text {
    text: String,
}

#[derive(Deserialize)]
struct End {
    end: String,
    #[serde(default)]
    message: String,
}

fn field<T: serde::de::DeserializeOwned>(payload: Value) -> Result<T, String> {
    serde_json::from_value(payload).map_err(|e| e.to_string())
}

fn text(payload: Value) -> Result<Arc<str>, String> {
    Ok(Arc::from(field::<Text>(payload)?.text))
}

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

/// Decodes one event; an unknown kind is kept as [`RemoteEventKind::Unknown`].
pub fn decode_event(bytes: &[u8]) -> Result<RemoteEvent, String> {
    let raw: RawEvent = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let p = raw.payload;
    let kind = match raw.kind.as_str() {
        "turn_started" => RemoteEventKind::Bus(EventKind::TurnStarted),
        "token" => RemoteEventKind::Bus(EventKind::Token(text(p)?)),
        "reasoning" => RemoteEventKind::Bus(EventKind::Reasoning(text(p)?)),
        "refusal" => RemoteEventKind::Bus(EventKind::Refusal(text(p)?)),
        "tool_call" => RemoteEventKind::Bus(EventKind::ToolCall(Arc::new(field::<ToolCall>(p)?))),
        "tool_result" => {
            #[derive(Deserialize)]
            struct Out {
                call_id: String,
                name: String,
                output: String,
                #[serde(default)]
                is_error: bool,
            }
            let o: Out = field(p)?;
            RemoteEventKind::Bus(EventKind::ToolResult(Arc::new(ToolOutput {
                call_id: o.call_id,
                name: o.name,
                output: o.output,
                is_error: o.is_error,
            })))
        }
        "usage" => RemoteEventKind::Bus(EventKind::Usage(Arc::new(field::<Usage>(p)?))),
        "structured" => {
            let v = p.get("value").cloned().unwrap_or(Value::Null);
            RemoteEventKind::Bus(EventKind::Structured(Arc::new(v)))
        }
        "turn_finished" => RemoteEventKind::Bus(EventKind::TurnFinished(turn_end(field(p)?))),
        "interrupted" => {
            #[derive(Deserialize)]
            struct Heard {
                heard_chars: usize,
            }
            let h: Heard = field(p)?;
            RemoteEventKind::Bus(EventKind::Interrupted {
                heard_chars: h.heard_chars,
            })
        }
        "user_speech_started" => RemoteEventKind::Bus(EventKind::UserSpeechStarted),
        "user_transcript" => {
            #[derive(Deserialize)]
            struct Tr {
                text: String,
                is_final: bool,
            }
            let t: Tr = field(p)?;
            RemoteEventKind::Bus(EventKind::UserTranscript {
                text: Arc::from(t.text),
                is_final: t.is_final,
            })
        }
        "speakable" => {
            #[derive(Deserialize)]
            struct Sp {
                text: String,
                #[serde(default)]
                last: bool,
            }
            let s: Sp = field(p)?;
            RemoteEventKind::Bus(EventKind::Speakable {
                text: Arc::from(s.text),
                last: s.last,
            })
        }
        "speech_played" => {
            #[derive(Deserialize)]
            struct Pl {
                chars: usize,
            }
            let c: Pl = field(p)?;
            RemoteEventKind::Bus(EventKind::SpeechPlayed { chars: c.chars })
        }
        "user_speech_ended" => RemoteEventKind::Bus(EventKind::UserSpeechEnded),
        "playback_paused" | "playback_resumed" => {
            #[derive(Deserialize)]
            struct Heard {
                heard_chars: usize,
            }
            let heard_chars = field::<Heard>(p)?.heard_chars;
            RemoteEventKind::Bus(if raw.kind == "playback_paused" {
                EventKind::PlaybackPaused { heard_chars }
            } else {
                EventKind::PlaybackResumed { heard_chars }
            })
        }
        "speculation_ended" => {
            #[derive(Deserialize)]
            struct Sp {
                outcome: String,
                #[serde(default)]
                usage: Option<Usage>,
            }
            let sp: Sp = field(p)?;
            let outcome = match sp.outcome.as_str() {
                "hit" => SpeculationOutcome::Hit,
                "miss" => SpeculationOutcome::Miss,
                "dropped" => SpeculationOutcome::Dropped,
                other => return Err(format!("unknown speculation outcome {other:?}")),
            };
            RemoteEventKind::Bus(EventKind::SpeculationEnded {
                outcome,
                usage: sp.usage.map(Arc::new),
            })
        }
        "backchannel" => RemoteEventKind::Bus(EventKind::Backchannel { text: text(p)? }),
        "provider_selected" => {
            #[derive(Deserialize)]
            struct Sel {
                index: usize,
                label: String,
                base_url: String,
                reason: SelectionReason,
                #[serde(default)]
                continuation: bool,
            }
            let c: Sel = field(p)?;
            RemoteEventKind::Bus(EventKind::ProviderSelected(Arc::new(ProviderChoice {
                index: c.index,
                label: Arc::from(c.label),
                base_url: Arc::from(c.base_url),
                reason: c.reason,
                continuation: c.continuation,
            })))
        }
        "resumed" => {
            #[derive(Deserialize)]
            struct Re {
                last_committed_turn: u64,
                #[serde(default)]
                previous_worker: Option<String>,
            }
            let r: Re = field(p)?;
            RemoteEventKind::Resumed {
                last_committed_turn: TurnId(r.last_committed_turn),
                previous_worker: r.previous_worker,
            }
        }
        "lagged" => {
            #[derive(Deserialize)]
            struct Lg {
                missed: u64,
            }
            RemoteEventKind::Lagged {
                missed: field::<Lg>(p)?.missed,
            }
        }
        "checkpoint_too_large" => {
            #[derive(Deserialize)]
            struct Tl {
                bytes: usize,
                max_bytes: usize,
            }
            let t: Tl = field(p)?;
            RemoteEventKind::CheckpointTooLarge {
                bytes: t.bytes,
                max_bytes: t.max_bytes,
            }
        }
        "session_ended" => {
            #[derive(Deserialize)]
            struct En {
                #[serde(default)]
                reason: String,
            }
            RemoteEventKind::SessionEnded {
                reason: field::<En>(p)?.reason,
            }
        }
        other => RemoteEventKind::Unknown {
            kind: other.to_string(),
            payload: p,
        },
    };
    Ok(RemoteEvent {
        session: SessionId::from(raw.session),
        turn: TurnId(raw.turn),
        seq: raw.seq,
        worker: raw.worker,
        kind,
    })
}

/// One input to a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Input {
    UserSpeechStarted,
    UserSpeechEnded,
    UserTranscript {
        text: String,
        #[serde(default = "yes")]
        is_final: bool,
    },
    SpeechPlayed {
        turn: u64,
        chars: usize,
    },
    SendText {
        text: String,
    },
    Cancel,
    SubmitToolResult {
        turn: u64,
        call_id: String,
        name: String,
        output: String,
        #[serde(default)]
        is_error: bool,
    },
    Context,
    Close,
}

fn yes() -> bool {
    true
}

/// An error on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: String,
    pub(crate) message: String,
}

impl WireError {
    pub(crate) fn new(kind: &str, message: impl std::fmt::Display) -> Self {
        Self {
            kind: kind.to_string(),
            message: message.to_string(),
        }
    }

    pub(crate) fn from_session(e: &SessionError) -> Self {
        // Wildcards stay for variants added later.
        #[allow(unreachable_patterns)]
        let kind = match e {
            SessionError::NotRunning(_) => "not_running",
            SessionError::Timeout(_) => "timeout",
            SessionError::TurnInFlight(_) => "turn_in_flight",
            SessionError::Publish(p) => return Self::from_publish(p),
            _ => "internal",
        };
        Self::new(kind, e)
    }

    pub(crate) fn from_publish(e: &PublishError) -> Self {
        #[allow(unreachable_patterns)]
        let kind = match e {
            PublishError::Stale { .. } => "stale",
            PublishError::NotAllowed(_) => "not_allowed",
            PublishError::UnknownCall(_) => "unknown_call",
            PublishError::AlreadyAnswered(_) => "already_answered",
            PublishError::Closed => "closed",
            _ => "internal",
        };
        Self::new(kind, e)
    }
}

/// A reply: `{"ok": value}` or `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Reply {
    Ok(Value),
    Error(WireError),
}

impl Reply {
    pub(crate) fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A placement request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PlaceRequest {
    pub(crate) session: String,
    #[serde(default)]
    pub(crate) spec: SessionSpec,
    #[serde(default)]
    pub(crate) context: Option<ChatContext>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(kind: EventKind) {
        let bytes = encode_bus("s 1", 3, (2 << 32) + 7, "w1", &kind);
        let ev = decode_event(&bytes).unwrap();
        assert_eq!(ev.session.as_str(), "s 1");
        assert_eq!(
            (ev.turn, ev.seq, ev.generation()),
            (TurnId(3), (2 << 32) + 7, 2)
        );
        assert_eq!(ev.worker, "w1");
        assert_eq!(ev.kind, RemoteEventKind::Bus(kind));
    }

    #[test]
    fn every_bus_event_round_trips() {
        for kind in [
            EventKind::TurnStarted,
            EventKind::Token(Arc::from("Hel")),
            EventKind::Reasoning(Arc::from("hmm")),
            EventKind::Refusal(Arc::from("no")),
            EventKind::ToolCall(Arc::new(ToolCall {
                index: 0,
                id: "c1".into(),
                name: "f".into(),
                arguments: "{}".into(),
                valid_json: true,
            })),
            EventKind::ToolResult(Arc::new(ToolOutput {
                call_id: "c1".into(),
                name: "f".into(),
                output: "ok".into(),
                is_error: false,
            })),
            EventKind::Usage(Arc::new(Usage::estimate(100, 5))),
            EventKind::Structured(Arc::new(json!({"a": 1}))),
            EventKind::TurnFinished(TurnEnd::Stop),
            EventKind::TurnFinished(TurnEnd::Cancelled),
            EventKind::TurnFinished(TurnEnd::Failed(Arc::from(WORKER_LOST))),
            EventKind::TurnFinished(TurnEnd::Other(Arc::from("weird"))),
            EventKind::Interrupted { heard_chars: 4 },
            EventKind::UserSpeechStarted,
            EventKind::UserTranscript {
                text: Arc::from("hi"),
                is_final: true,
            },
            EventKind::Speakable {
                text: Arc::from("Hi."),
                last: true,
            },
            EventKind::SpeechPlayed { chars: 3 },
            EventKind::UserSpeechEnded,
            EventKind::PlaybackPaused { heard_chars: 7 },
            EventKind::PlaybackResumed { heard_chars: 7 },
            EventKind::Backchannel {
                text: Arc::from("uh-huh"),
            },
            EventKind::SpeculationEnded {
                outcome: SpeculationOutcome::Miss,
                usage: Some(Arc::new(Usage::estimate(10, 2))),
            },
            EventKind::ProviderSelected(Arc::new(ProviderChoice {
                index: 1,
                label: Arc::from("backup"),
                base_url: Arc::from("http://127.0.0.1:1/v1"),
                reason: SelectionReason::Fallback,
                continuation: true,
            })),
        ] {
            round_trip(kind);
        }
    }

    #[test]
    fn the_documented_shape() {
        let token = EventKind::Token(Arc::from("Hel"));
        let v: Value = serde_json::from_slice(&encode_bus("call-42", 3, 12, "w1", &token)).unwrap();
        assert_eq!(
            v,
            json!({"session": "call-42", "turn": 3, "seq": 12, "worker": "w1",
                   "kind": "token", "payload": {"text": "Hel"}})
        );
        let input: Input =
            serde_json::from_str(r#"{"op":"speech_played","turn":3,"chars":42}"#).unwrap();
        assert_eq!(input, Input::SpeechPlayed { turn: 3, chars: 42 });
        assert_eq!(
            serde_json::from_str::<Input>(r#"{"op":"cancel"}"#).unwrap(),
            Input::Cancel
        );
        assert_eq!(
            String::from_utf8(Reply::Ok(json!(5)).encode()).unwrap(),
            r#"{"ok":5}"#
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"session\":1}",
            b"{\"session\":\"s\",\"turn\":1,\"seq\":1,\"kind\":\"token\",\"payload\":{}}",
            b"{\"session\":\"s\",\"turn\":-1,\"seq\":1,\"kind\":\"token\"}",
        ] {
            assert!(decode_event(bytes).is_err(), "{bytes:?}");
        }
        let unknown =
            decode_event(br#"{"session":"s","turn":1,"seq":1,"kind":"later","payload":{"x":1}}"#)
                .unwrap();
        assert!(matches!(unknown.kind, RemoteEventKind::Unknown { .. }));
    }
}
