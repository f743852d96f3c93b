//! A typed way to feed a speech recognizer's events into a session.

/// What a speech recognizer (VAD + STT) reports, as
/// [`SessionHandle::stt`](crate::SessionHandle::stt) takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SttEvent {
    /// Voice activity began ([`SessionHandle::user_speech_started`](crate::SessionHandle::user_speech_started)).
    SpeechStarted,
    /// Voice activity ended ([`SessionHandle::user_speech_ended`](crate::SessionHandle::user_speech_ended)).
    SpeechEnded,
    /// A partial transcript of the utterance so far (may change).
    Interim(String),
    /// The utterance's final transcript: starts a turn, unless it is a
    /// backchannel while the agent speaks (confirmed mode).
    Final(String),
}

impl SttEvent {
    /// A short label for logs: `speech_started`, `speech_ended`, `interim`, `final`.
    pub fn label(&self) -> &'static str {
        match self {
            SttEvent::SpeechStarted => "speech_started",
            SttEvent::SpeechEnded => "speech_ended",
            SttEvent::Interim(_) => "interim",
            SttEvent::Final(_) => "final",
        }
    }
}
