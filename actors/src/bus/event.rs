//! What travels on a session bus.
//!
//! Also what a speech recognizer reports ([`SttEvent`]): the session maps it
//! onto the bus's user-side events, so it lives with them; the speech
//! adapters re-export it.

use std::sync::Arc;

use colloquy::llm::{ProviderChoice, ProviderFailure, ToolCall, Usage};

use crate::ids::{SessionId, TurnId};

/// A tool's answer to one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolOutput {
    /// The call this answers.
    pub call_id: String,
    /// The tool's name.
    pub name: String,
    /// What goes back to the model.
    pub output: String,
    /// Whether `output` describes a failure (unknown tool, invalid arguments,
    /// handler error, timeout, cancellation).
    pub is_error: bool,
}

/// How a turn ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TurnEnd {
    /// The model finished its answer.
    Stop,
    /// `max_completion_tokens` cut the answer.
    Length,
    /// The last round asked for tools and no further round was possible.
    ToolCalls,
    /// The provider's content filter cut the answer.
    ContentFilter,
    /// The user interrupted, or the embedder cancelled.
    Cancelled,
    /// The request failed; the text is the error (kind and message).
    Failed(Arc<str>),
    /// Any other finish reason, verbatim.
    Other(Arc<str>),
}

impl TurnEnd {
    /// Whether the turn was cut (cancelled or failed): nothing more of it may be
    /// published, spoken or played.
    pub fn is_abort(&self) -> bool {
        matches!(self, TurnEnd::Cancelled | TurnEnd::Failed(_))
    }

    /// A short label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            TurnEnd::Stop => "stop",
            TurnEnd::Length => "length",
            TurnEnd::ToolCalls => "tool_calls",
            TurnEnd::ContentFilter => "content_filter",
            TurnEnd::Cancelled => "cancelled",
            TurnEnd::Failed(_) => "failed",
            TurnEnd::Other(_) => "other",
        }
    }
}

/// What became of a speculative turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpeculationOutcome {
    /// The final transcript matched: the speculation became the turn.
    Hit,
    /// The final transcript differed: discarded, a normal turn follows.
    Miss,
    /// Discarded before any final (a barge-in, a tool call, the session stopped).
    Dropped,
}

impl SpeculationOutcome {
    /// `"hit"`, `"miss"` or `"dropped"`.
    pub fn label(self) -> &'static str {
        match self {
            SpeculationOutcome::Hit => "hit",
            SpeculationOutcome::Miss => "miss",
            SpeculationOutcome::Dropped => "dropped",
        }
    }
}

/// The payload of a bus event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum EventKind {
    /// The agent started a reply.
    TurnStarted,
    /// Answer text.
    Token(Arc<str>),
    /// Reasoning text (not to be spoken).
    Reasoning(Arc<str>),
    /// Refusal text.
    Refusal(Arc<str>),
    /// A complete tool call.
    ToolCall(Arc<ToolCall>),
    /// A tool's answer.
    ToolResult(Arc<ToolOutput>),
    /// Token usage of one request (several per turn with tool rounds).
    Usage(Arc<Usage>),
    /// Structured mode: the parsed response object.
    Structured(Arc<serde_json::Value>),
    /// The reply ended. The last event of a turn from the LLM actor, except for
    /// [`EventKind::Interrupted`].
    TurnFinished(TurnEnd),
    /// The user interrupted the turn's speech after its generation had finished
    /// (the model is usually faster than speech): stop speaking it. Only
    /// `heard_chars` of its text were played; nothing more of the turn is
    /// published after this.
    Interrupted {
        /// Characters of the turn's text that were played.
        heard_chars: usize,
    },
    /// The user started talking (from voice activity detection).
    UserSpeechStarted,
    /// What the user said; `is_final` transcripts start a turn.
    UserTranscript {
        /// The transcript.
        text: Arc<str>,
        /// Final (end of utterance) or partial.
        is_final: bool,
        /// Where in the caller's audio it was heard, when the recognizer
        /// said (a [`Listener`](crate::speech::Listener) always does).
        heard: Option<HeardSpan>,
    },
    /// A piece of the turn's text ready for text-to-speech. The segments of a
    /// turn concatenate to exactly its token text; the segment with `last` set
    /// (possibly empty) closes the turn's speech.
    Speakable {
        /// The text to speak.
        text: Arc<str>,
        /// No more segments follow for this turn.
        last: bool,
    },
    /// Playback progress: characters of the turn's text played so far.
    SpeechPlayed {
        /// Cumulative characters heard.
        chars: usize,
    },
    /// An audio output's milestone for one of the turn's segments: its
    /// synthesizer's first samples are ready, or the sink confirmed its
    /// first sample played (an [`AudioOutput`](crate::speech::AudioOutput)
    /// reports both). The turn's first of each splits its latency report.
    SpeechAudio(AudioStage),
    /// The user ended speaking (from voice activity detection).
    UserSpeechEnded,
    /// The agent's speech is paused (the user may be interrupting): stop
    /// playing now, keep the position. Generation goes on meanwhile.
    PlaybackPaused {
        /// Characters played when the pause was decided.
        heard_chars: usize,
    },
    /// The pause was a false alarm: play on from exactly where playback stopped.
    PlaybackResumed {
        /// Characters played so far (where playback continues).
        heard_chars: usize,
    },
    /// A speculative turn (started on an interim transcript, its events held
    /// back) ended: promoted on a matching final (`Hit`: its held events follow,
    /// re-stamped, and it continues live), or discarded (`Miss`: the final
    /// differed; `Dropped`: the user barged in, or it needed a tool). A
    /// discarded speculation's cost is in `usage` (never in any turn's usage).
    SpeculationEnded {
        /// What became of it.
        outcome: SpeculationOutcome,
        /// Usage of the discarded request (the provider's, or an estimate).
        usage: Option<Arc<Usage>>,
    },
    /// A final transcript that acknowledges without taking the turn
    /// ("uh-huh", "thank you") while the agent speaks: not a user turn.
    Backchannel {
        /// What the user said.
        text: Arc<str>,
    },
    /// With a provider chain: the provider whose output the round uses from
    /// here on (published right before its first output).
    ProviderSelected(Arc<ProviderChoice>),
    /// With a provider chain: a provider dropped for the round (failed, missed
    /// a deadline, skipped with its circuit open, or lost a hedge race), with
    /// its request's usage, which is not part of the round's `Usage`.
    ProviderFailed(Arc<ProviderFailure>),
    /// Where the turn's time went ([`latency`](crate::latency)), published
    /// by the session once nothing more of the turn can happen: right after
    /// the event that completed it (its speech played out or was cut, or it
    /// ended without speech), at the next turn's start, or when the session
    /// stops. Stamped with the turn it reports on, which is over by then.
    TurnLatency(Arc<crate::latency::TurnLatency>),
}

impl EventKind {
    /// Events about the user, never fenced by turn.
    pub fn is_user_side(&self) -> bool {
        matches!(
            self,
            EventKind::UserSpeechStarted
                | EventKind::UserSpeechEnded
                | EventKind::UserTranscript { .. }
                | EventKind::Backchannel { .. }
        )
    }

    /// A report about a turn ([`EventKind::TurnLatency`]): published once
    /// the turn is over and stamped with it, but never part of its stream —
    /// a subscriber that drops a finished turn's events keeps these.
    pub fn is_report(&self) -> bool {
        matches!(self, EventKind::TurnLatency(_))
    }

    /// Events embedders publish for a turn: tool results and playback
    /// progress. (Speakable segments are cut by the runtime, in the ledger.)
    pub fn is_embedder_side(&self) -> bool {
        matches!(
            self,
            EventKind::ToolResult(_) | EventKind::SpeechPlayed { .. } | EventKind::SpeechAudio(_)
        )
    }

    /// The kind's name, for errors and logs (and the `kind` of the event on
    /// the cluster's wire).
    pub fn name(&self) -> &'static str {
        self.kind_name().as_str()
    }

    /// Events that may still follow a normally finished turn: playback of
    /// its tail.
    pub(crate) fn is_playback(&self) -> bool {
        matches!(
            self,
            EventKind::SpeechPlayed { .. } | EventKind::SpeechAudio(_)
        )
    }
}

/// The one table of event kind names: each [`EventKind`] variant, the
/// pattern that matches it, and its name. From it come [`EventKindName`] (the
/// names as values: `as_str`, `from_name`, `ALL`) and
/// `EventKind::kind_name`, used by [`EventKind::name`] and by the cluster's
/// wire for both encoding and decoding, so a kind cannot get two spellings,
/// and a new variant without a row here does not compile.
macro_rules! event_kind_names {
    ($($variant:ident: $pattern:pat => $name:literal,)*) => {
        /// The name of an [`EventKind`], without its payload.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum EventKindName {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl EventKindName {
            /// Every name, in the order of [`EventKind`]'s variants.
            #[cfg(test)]
            pub(crate) const ALL: &'static [EventKindName] = &[$(EventKindName::$variant,)*];

            /// The name as written in logs, errors and on the wire.
            pub(crate) fn as_str(self) -> &'static str {
                match self {
                    $(EventKindName::$variant => $name,)*
                }
            }

            /// The kind of that name, if it is one.
            #[cfg_attr(not(any(test, feature = "nats")), allow(dead_code))]
            pub(crate) fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(EventKindName::$variant),)*
                    _ => None,
                }
            }
        }

        impl EventKind {
            /// The kind's name as a value.
            pub(crate) fn kind_name(&self) -> EventKindName {
                match self {
                    $($pattern => EventKindName::$variant,)*
                }
            }
        }
    };
}

event_kind_names! {
    TurnStarted: EventKind::TurnStarted => "turn_started",
    Token: EventKind::Token(_) => "token",
    Reasoning: EventKind::Reasoning(_) => "reasoning",
    Refusal: EventKind::Refusal(_) => "refusal",
    ToolCall: EventKind::ToolCall(_) => "tool_call",
    ToolResult: EventKind::ToolResult(_) => "tool_result",
    Usage: EventKind::Usage(_) => "usage",
    Structured: EventKind::Structured(_) => "structured",
    TurnFinished: EventKind::TurnFinished(_) => "turn_finished",
    Interrupted: EventKind::Interrupted { .. } => "interrupted",
    UserSpeechStarted: EventKind::UserSpeechStarted => "user_speech_started",
    UserTranscript: EventKind::UserTranscript { .. } => "user_transcript",
    Speakable: EventKind::Speakable { .. } => "speakable",
    SpeechPlayed: EventKind::SpeechPlayed { .. } => "speech_played",
    SpeechAudio: EventKind::SpeechAudio(_) => "speech_audio",
    UserSpeechEnded: EventKind::UserSpeechEnded => "user_speech_ended",
    PlaybackPaused: EventKind::PlaybackPaused { .. } => "playback_paused",
    PlaybackResumed: EventKind::PlaybackResumed { .. } => "playback_resumed",
    Backchannel: EventKind::Backchannel { .. } => "backchannel",
    SpeculationEnded: EventKind::SpeculationEnded { .. } => "speculation_ended",
    ProviderSelected: EventKind::ProviderSelected(_) => "provider_selected",
    ProviderFailed: EventKind::ProviderFailed(_) => "provider_failed",
    TurnLatency: EventKind::TurnLatency(_) => "turn_latency",
}

/// Where a segment's audio is ([`EventKind::SpeechAudio`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AudioStage {
    /// The synthesizer's first samples of the segment are ready to send.
    Synthesized,
    /// The sink confirmed the segment's first sample played.
    Played,
}

impl AudioStage {
    /// `synthesized` or `played`.
    pub fn label(self) -> &'static str {
        match self {
            AudioStage::Synthesized => "synthesized",
            AudioStage::Played => "played",
        }
    }

    /// The stage named `label`.
    pub fn from_label(label: &str) -> Option<Self> {
        match label {
            "synthesized" => Some(AudioStage::Synthesized),
            "played" => Some(AudioStage::Played),
            _ => None,
        }
    }
}

/// One event on a session bus, stamped `(session, turn, seq)`.
///
/// `seq` increases by one for every event of the session, so a subscriber can
/// detect gaps and order events; `turn` lets it drop a stale turn in O(1).
#[derive(Debug, Clone, PartialEq)]
pub struct BusEvent {
    /// The conversation.
    pub session: SessionId,
    /// The turn the event belongs to (user events: the latest turn).
    pub turn: TurnId,
    /// Position in the session's event sequence, from 1.
    pub seq: u64,
    /// The payload.
    pub kind: EventKind,
}

/// Where in the caller's input audio a transcript was heard: samples at
/// `sample_rate`, counted from the call's first input sample (the same
/// timeline as voice activity's positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeardSpan {
    /// Where the utterance began.
    pub start: u64,
    /// Where the audio the transcript covers ends.
    pub end: u64,
    /// The rate of `start` and `end`.
    pub sample_rate: u32,
}

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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn every_name_is_unique_and_parses_back() {
        let mut seen = HashSet::new();
        for &name in EventKindName::ALL {
            assert!(seen.insert(name.as_str()), "{} twice", name.as_str());
            assert_eq!(EventKindName::from_name(name.as_str()), Some(name));
        }
        assert_eq!(EventKindName::from_name("resumed"), None);
        assert_eq!(EventKind::TurnStarted.name(), "turn_started");
        assert_eq!(
            EventKind::Interrupted { heard_chars: 1 }.kind_name(),
            EventKindName::Interrupted
        );
    }
}
