//! The messages that are not events: the inputs of a session (one object
//! per message, `{"op": …}`), the replies to requests (`{"ok": …}` or
//! `{"error": …}`), a tracked reply's state, and placement requests.

use colloquy::context::{ChatContext, ContentPart};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::InputKind;
use crate::bus::PublishError;
use crate::cluster::PolicyViolation;
use crate::cluster::spec::SessionSpec;
use crate::errors::SessionError;

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
    /// The owner's generation (`{"generation": g}`): how a subscriber tells
    /// a new owner from a forged event when it missed the `resumed`.
    Owner,
    SendText {
        text: String,
        /// Follow the reply: the ack is `{"reply": id}` (see `reply`).
        #[serde(default, skip_serializing_if = "is_false")]
        track: bool,
    },
    /// A user message of any parts (text, images).
    SendMessage {
        content: Vec<ContentPart>,
        #[serde(default = "yes")]
        respond: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        track: bool,
    },
    /// A turn on the current context.
    Generate {
        #[serde(default, skip_serializing_if = "is_false")]
        track: bool,
    },
    /// Fixed text spoken through the turn machinery, no model request.
    Say {
        text: String,
        #[serde(default = "yes")]
        allow_interruptions: bool,
        #[serde(default, skip_serializing_if = "is_false")]
        track: bool,
    },
    /// A tracked reply's state, once it differs from `known` (a long poll of
    /// at most `wait_ms`).
    Reply {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        known: Option<String>,
        #[serde(default)]
        wait_ms: u64,
    },
    /// Cuts a tracked reply (its turn, its speech, or its start).
    Interrupt {
        reply: String,
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
    /// A JSON merge patch (RFC 7386) over the session's [`SessionSpec`].
    UpdateSettings {
        patch: Value,
    },
    /// The committed history replaced.
    ReplaceContext {
        context: ChatContext,
    },
}

impl Input {
    /// The input's `op`.
    pub(crate) fn op(&self) -> &'static str {
        match self {
            Input::UserSpeechStarted => "user_speech_started",
            Input::UserSpeechEnded => "user_speech_ended",
            Input::UserTranscript { .. } => "user_transcript",
            Input::SpeechPlayed { .. } => "speech_played",
            Input::Owner => "owner",
            Input::SendText { .. } => "send_text",
            Input::SendMessage { .. } => "send_message",
            Input::Generate { .. } => "generate",
            Input::Say { .. } => "say",
            Input::Reply { .. } => "reply",
            Input::Interrupt { .. } => "interrupt",
            Input::Cancel => "cancel",
            Input::SubmitToolResult { .. } => "submit_tool_result",
            Input::Context => "context",
            Input::Close => "close",
            Input::UpdateSettings { .. } => "update_settings",
            Input::ReplaceContext { .. } => "replace_context",
        }
    }

    /// The kind of subject the input belongs on.
    pub(crate) fn kind(&self) -> InputKind {
        match self {
            Input::UserSpeechStarted
            | Input::UserSpeechEnded
            | Input::UserTranscript { .. }
            | Input::SpeechPlayed { .. }
            | Input::Owner => InputKind::Speech,
            Input::SendText { .. }
            | Input::SendMessage { .. }
            | Input::Generate { .. }
            | Input::Say { .. }
            | Input::Reply { .. }
            | Input::Interrupt { .. }
            | Input::Cancel
            | Input::SubmitToolResult { .. } => InputKind::Control,
            Input::Context
            | Input::Close
            | Input::UpdateSettings { .. }
            | Input::ReplaceContext { .. } => InputKind::Admin,
        }
    }
}

fn yes() -> bool {
    true
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An error on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct WireError {
    pub(crate) kind: String,
    pub(crate) message: String,
    /// Structured details (a policy refusal's [`PolicyViolation`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) detail: Option<Value>,
}

impl WireError {
    pub(crate) fn new(kind: &str, message: impl std::fmt::Display) -> Self {
        Self {
            kind: kind.to_string(),
            message: message.to_string(),
            detail: None,
        }
    }

    /// `policy`, with the violation as its detail.
    pub(crate) fn policy(v: &PolicyViolation) -> Self {
        Self {
            detail: serde_json::to_value(v).ok(),
            ..Self::new("policy", v)
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
