//! The JSON on the wire: one object per event, one object per input, so a
//! Python or Go STT/TTS service can join a session's bus.
//!
//! # Events: `{prefix}.session.{key}.events.{class}`
//!
//! `{prefix}` is `colloquy` unless configured; `{key}` is the session id made
//! subject-safe by [`session_key`](super::session_key); `{class}` is the
//! event's [`EventClass`]: `lifecycle`, `speech`, `tokens`, `tools`, `usage`
//! or `user` (the table below gives each kind's). Subscribe to
//! `…events.*` for the whole stream, to one class's subject for that class
//! only: a TTS service takes `…events.speech` and `…events.lifecycle` and
//! no token is sent to it. A session placed with `event_classes` publishes
//! only those classes (and lifecycle): nothing of the others is encoded.
//!
//! Each message is one or more events, one JSON object per line (the owner
//! batches consecutive events of one class that were queued together; a
//! message never holds two classes, and messages go out in seq order):
//!
//! ```json
//! {"session":"call-42","turn":3,"seq":4294967308,"worker":"w1","kind":"token","payload":{"text":"Hel"}}
//! ```
//!
//! A subscriber of several classes merges its subscriptions by `seq`
//! ([`RemoteEvents`](super::RemoteEvents) does: see
//! [`RemoteSession::subscribe_to`](super::RemoteSession::subscribe_to)).
//! Gaps in `seq` are not losses (see `seq` below, and the classes not
//! subscribed to).
//!
//! **Compatibility.** Until this scheme, events went to
//! `{prefix}.session.{key}.events`, one object per message, and inputs to
//! `{prefix}.session.{key}.in`: a reader of that version sees nothing on the
//! new subjects, and its inputs find no responder. Workers and clients are
//! upgraded together; a reader that splits messages on line breaks reads
//! both.
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
//! | kind | class | payload |
//! | --- | --- | --- |
//! | `turn_started` | `lifecycle` | `{}` |
//! | `token`, `reasoning`, `refusal` | `tokens` | `{"text": str}` |
//! | `tool_call` | `tools` | `{"index": int, "id": str, "name": str, "arguments": str, "valid_json": bool}` |
//! | `tool_result` | `tools` | `{"call_id": str, "name": str, "output": str, "is_error": bool}` |
//! | `usage` | `usage` | `{"prompt_tokens", "completion_tokens", "total_tokens": int, "cached_tokens", "reasoning_tokens": int or null, "estimated": bool}` |
//! | `structured` | `tokens` | `{"value": any}` |
//! | `turn_finished` | `lifecycle` | `{"end": "stop" \| "length" \| "tool_calls" \| "content_filter" \| "cancelled" \| "failed" \| "other", "message": str (failed and other only)}` |
//! | `interrupted` | `lifecycle` | `{"heard_chars": int}` (the user cut the reply's speech) |
//! | `user_speech_started` | `user` | `{}` |
//! | `user_transcript` | `user` | `{"text": str, "is_final": bool, "heard": {"start", "end": int (samples), "sample_rate": int} or absent}` |
//! | `speakable` | `speech` | `{"text": str, "last": bool}` |
//! | `speech_played` | `speech` | `{"chars": int}` |
//! | `speech_audio` | `speech` | `{"stage": "synthesized" \| "played"}` (an audio output's first samples of a segment: ready, played) |
//! | `user_speech_ended` | `user` | `{}` |
//! | `playback_paused`, `playback_resumed` | `speech` | `{"heard_chars": int}` (confirmed mode: stop playing and keep the position / play on from it) |
//! | `backchannel` | `speech` | `{"text": str}` (an acknowledgement, not a turn) |
//! | `speculation_ended` | `lifecycle` | `{"outcome": "hit" \| "miss" \| "dropped", "usage": usage or null}` |
//! | `provider_selected` | `usage` | `{"index": int, "label": str, "base_url": str, "reason": "primary" \| "fallback" \| "hedge", "continuation": bool}` |
//! | `provider_failed` | `usage` | `{"index", "label", "base_url", "reason": str, "message": str or null, "after_output": bool, "usage": usage or null}` (`reason`: `circuit_open`, `hedge_lost`, or the error's kind (`http`, `connection`, `first_token_timeout`, … [`LlmError::KINDS`](colloquy::llm::LlmError::KINDS)) with its `message`; decoded into [`FailureReason`](colloquy::llm::FailureReason), a kind this version does not know as `other` with `"{kind}: {message}"`) |
//! | `turn_latency` | `lifecycle` | the turn's report ([`TurnLatency::to_json`](crate::latency::TurnLatency::to_json): `turn`, `end`, each interval in ms or null, `pauses`, `resumes`, `cut_at_chars`, `fallbacks`, `hedges`, `session_closed`; `message` for a failed or other end) |
//! | `resumed` | `lifecycle` | `{"last_committed_turn": int, "previous_worker": str or null}`: another worker took the session over; every turn up to `last_committed_turn` is in its history |
//! | `lagged` | `lifecycle` | `{"missed": int}`: the worker's forwarder missed events of the local bus |
//! | `checkpoint_too_large` | `lifecycle` | `{"bytes": int, "max_bytes": int}`: the committed context no longer fits in one message; the session runs on without a durable copy |
//! | `session_ended` | `lifecycle` | `{"reason": str}` (`closed`, `stopped`, `idle_timeout`, `max_lifetime`) |
//!
//! The rules of the bus hold on the wire: after `turn_finished` with
//! `cancelled` or `failed`, or after `interrupted`, nothing more of that turn
//! is published but its `turn_latency` report (a report on the turn, not
//! part of its stream: `EventKind::is_report`); after a normal end only its
//! tail speech (`speakable`, `speech_played`), `interrupted` and the report
//! may follow. A cancelled or interrupted
//! turn's text (`token`, `reasoning`, `refusal`, `speakable`) still queued at
//! the owner when the cut is decided is not published: the cut goes out
//! right after what was already sent, not behind its turn's tokens. A turn
//! that was in flight when its worker died ends with `turn_finished` `failed` and the message
//! `worker lost`, published by the new owner before `resumed`. A `turn_finished`
//! with a normal end is published only once the history holding the turn is
//! stored. (If a worker dies between publishing a turn's `cancelled` end and
//! storing it, the new owner also ends that turn as `failed`: ignore a second
//! end of a turn.)
//!
//! # Inputs: `{prefix}.session.{key}.in.{kind}`
//!
//! One object per message, `{"op": …}` plus the op's fields, on the subject
//! of the op's [`InputKind`] (the table's `kind`): `speech` for what a speech
//! service sends, `control` for steering the turn, `admin` for reading or
//! ending the session. An op on another kind's subject is refused
//! (`not_allowed`), so a subject permission limits what a role can do (see
//! `docs/cluster-security.md`). With a reply
//! subject (a NATS request) the owner answers `{"ok": value}` or
//! `{"error": {"kind": str, "message": str}}`; without one it just acts.
//!
//! | op | kind | fields | ok |
//! | --- | --- | --- | --- |
//! | `user_speech_started` | `user` | `speech` | | the event's `seq` |
//! | `user_speech_ended` | `user` | `speech` | | the event's `seq` |
//! | `user_transcript` | `user` | `speech` | `text`, `is_final` | the event's `seq` |
//! | `speech_played` | `speech` | `speech` | `turn`, `chars` | the event's `seq` |
//! | `owner` | `speech` | | `{"generation": int}`: the answering owner's generation |
//! | `send_text` | `control` | `text`, `track` | `null`; with `"track": true`, `{"reply": id}` |
//! | `send_message` | `control` | `content` (parts: `{"type": "text", "value": str}`, `{"type": "image", "value": {"url": str, "detail": "auto" \| "low" \| "high"}}`: an `https://` URL or a `data:` URL), `respond` (default `true`), `track` | as `send_text` |
//! | `generate` | `control` | `track` | as `send_text` (dropped while a turn is in flight) |
//! | `say` | `control` | `text`, `allow_interruptions` (default `true`), `track` | as `send_text`; no model request |
//! | `reply` | `control` | `id`, `known` (a state label), `wait_ms` (at most 30 000) | the tracked reply's state once its label differs from `known`, or at the end of `wait_ms` (below) |
//! | `interrupt` | `control` | `reply` (an id) | `null`: the owner cuts that reply as `ReplyHandle::interrupt` does (its generation, else its speech; one not started never starts) |
//! | `cancel` | `control` | | `null`, once the turn is closed and its `turn_finished` published |
//! | `submit_tool_result` | `control` | `turn`, `call_id`, `name`, `output`, `is_error` | the event's `seq` |
//! | `context` | `admin` | | the committed history (`{"items": [...]}`) |
//! | `close` | `admin` | | `null`; the session stops and its lease and checkpoint are deleted |
//! | `update_settings` | `admin` | `patch`: a JSON merge patch (RFC 7386) over the session's `SessionSpec` | the spec now, once stored with the checkpoint; checked by the placement policy (`policy`); `tools`, `segmenter`, `event_classes` cannot change (`invalid`); `{}` reads the spec |
//! | `replace_context` | `admin` | `context` (`{"items": [...]}`) | `null`; `turn_in_flight` while a turn is in flight |
//!
//! Error kinds: `invalid` (not this schema), `not_running`, `stale` (a turn
//! that is closed or not current), `not_allowed`, `unknown_call`,
//! `already_answered`, `closed`, `timeout`, `too_large`, `turn_in_flight`,
//! `unknown_reply` (a reply id the owner does not track),
//! `policy` (the worker's placement policy refused it; `detail` holds the
//! violation, e.g. `{"violation": "rate_limited", "per_second": 50, "burst": 100}`).
//!
//! **Tracked replies.** `send_text`, `send_message`, `generate` and `say` with
//! `"track": true` answer `{"reply": id}` (an unguessable id on the owner), and
//! `reply` reports that reply's state, as a long poll: `{"state": "queued"}`,
//! `{"state": "started", "turn": int}`, `{"state": "committed" | "done", "turn":
//! int, "end": {…turn_finished payload…}, "interrupted": bool, "items":
//! [ChatItem…]}` (`items` empty and `"items_omitted": true` when they do not fit
//! in one message) or `{"state": "dropped"}`. `committed` is reported once the
//! history holding the turn is stored (as a normal `turn_finished`); `done` once
//! its speech was played or cut, with what the history keeps of it (as heard).
//! Why a poll: the state is for the client holding the id only (nothing is
//! broadcast to the session's subscribers, no seq number is taken), each answer
//! is the single response a worker's `allow_responses` permits, and the id
//! travels by session key, so the client never needs to know the worker.
//! [`RemoteReply`](super::RemoteReply) does the polling
//! (`RemoteSession::send_text_tracked`, `send_message`, `generate`, `say`,
//! `say_with`). An owner keeps the last 256 replies it tracks. When the owner
//! dies, the new one does not know the id: it answers `unknown_reply` with
//! `detail: {"committed_turn": int}` (the last turn in the history it resumed),
//! and the client decides: a reply committed already is over as committed; one
//! not started, or whose turn was in flight (ended `failed`, `worker lost`), is
//! dropped; one whose turn is at or below `committed_turn` but whose commit was
//! not reported is `Lost` (read it with `context`). Each `reply` and `interrupt`
//! is an input: the size and rate of the placement policy apply, and it keeps the
//! session from its idle timeout.
//!
//! # Placement: `{prefix}.place` (queue group `{prefix}-workers`)
//!
//! A request `{"session": str, "spec": SessionSpec, "context": {"items": [...]}}`
//! (`context` optional: a history to start from), answered with
//! `{"ok": {"worker": str}}` or an error of kind `full`, `already_exists`,
//! `unknown_tool`, `too_large`, `too_long` (the session id's key or a tool
//! name is over the bound of [`MAX_SESSION_KEY_BYTES`](super::MAX_SESSION_KEY_BYTES)
//! or [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES)), `invalid` or `internal`.

// The events' encoding is in `encode`, their decoding in `decode` (both take
// the names of bus event kinds from the one table in the bus, and the
// worker's own kinds from `WorkerEventName` here); the inputs, replies and
// placement requests are in `requests`.
mod classes;
mod decode;
mod encode;
mod replies;
mod requests;
#[cfg(test)]
mod tests;

pub use classes::{EventClass, EventClasses, InputKind};
pub use decode::{DecodeError, decode_event, decode_events};
#[cfg(test)]
pub(crate) use encode::encode_bus;
pub(crate) use encode::{encode_bus_into, encode_event};
pub(crate) use replies::{decode_reply_state, encode_reply_state, state_label};
pub(crate) use requests::{Input, PlaceRequest, Reply, WireError};

use serde_json::Value;

use crate::bus::EventKind;
use crate::ids::{SessionId, TurnId};

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
        /// Why: `closed`, `stopped`, or the worker's policy: `idle_timeout`,
        /// `max_lifetime`.
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

/// The kinds of the events a worker publishes of its own (not from the
/// session's bus), as they are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum WorkerEventName {
    /// `resumed`: [`RemoteEventKind::Resumed`].
    Resumed,
    /// `lagged`: [`RemoteEventKind::Lagged`].
    Lagged,
    /// `checkpoint_too_large`: [`RemoteEventKind::CheckpointTooLarge`].
    CheckpointTooLarge,
    /// `session_ended`: [`RemoteEventKind::SessionEnded`].
    SessionEnded,
}

impl WorkerEventName {
    /// Every worker event kind.
    #[cfg(test)]
    pub(crate) const ALL: &'static [WorkerEventName] = &[
        WorkerEventName::Resumed,
        WorkerEventName::Lagged,
        WorkerEventName::CheckpointTooLarge,
        WorkerEventName::SessionEnded,
    ];

    /// The kind as written on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            WorkerEventName::Resumed => "resumed",
            WorkerEventName::Lagged => "lagged",
            WorkerEventName::CheckpointTooLarge => "checkpoint_too_large",
            WorkerEventName::SessionEnded => "session_ended",
        }
    }

    /// The worker event kind of that name, if it is one.
    pub(crate) fn from_name(name: &str) -> Option<Self> {
        match name {
            "resumed" => Some(WorkerEventName::Resumed),
            "lagged" => Some(WorkerEventName::Lagged),
            "checkpoint_too_large" => Some(WorkerEventName::CheckpointTooLarge),
            "session_ended" => Some(WorkerEventName::SessionEnded),
            _ => None,
        }
    }
}
