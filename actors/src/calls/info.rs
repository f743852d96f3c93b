//! What a call is when it starts, and why it ended other than by its own
//! `stop`: shared by the transports, the call and its session's placement.

use colloquy::audio::AudioError;

use super::limits::LimitExceeded;

/// Why a call ended other than by its own `stop`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The far end broke the protocol (a malformed or out-of-order message).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Audio in a format this call does not take.
    #[error("unsupported audio: {0}")]
    Audio(#[from] AudioError),
    /// The call's session could not be started.
    #[error("the call's session could not start: {0}")]
    Session(String),
    /// The socket failed or closed before the call's end.
    #[error("the connection ended: {0}")]
    Connection(String),
    /// The call crossed one of the server's limits.
    #[error("the call was closed: {0}")]
    Limit(#[from] LimitExceeded),
    /// The call is not one this server takes (a `start` naming another
    /// Twilio account).
    #[error("the call was refused: {0}")]
    Refused(String),
}

impl CallError {
    /// The close frame the call's socket ends with: 1009 for a message too
    /// big, 1008 for another limit or a refusal, 1002 for a protocol error,
    /// 1003 for unsupported audio; `None` for a connection already gone.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        let code = match self {
            Self::Limit(l) => l.close_code(),
            Self::Refused(_) => 1008,
            Self::Protocol(_) => 1002,
            Self::Audio(_) => 1003,
            Self::Session(_) => 1011,
            Self::Connection(_) => return None,
        };
        // A close frame's reason is at most 123 bytes.
        let mut reason = self.to_string();
        while reason.len() > 123 {
            reason.pop();
        }
        Some((code, reason))
    }
}

/// What is known about a call when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// The call's name (the session's id): `twilio-<callSid>`, `web-<n>`.
    pub id: String,
    /// Which transport: `twilio` or `browser`.
    pub transport: &'static str,
}
