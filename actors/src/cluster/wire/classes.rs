//! Event classes and input kinds: the last token of a session's events and
//! inputs subjects.
//!
//! Why classes: a TTS service needs the speech and the turn boundaries, not
//! every token, and a NATS subscription is the cheapest filter there is (the
//! server drops what no subscription matches; nothing is decoded or sent).
//! Why input kinds: a subject permission is the only check a nats-server can
//! make, so the kind of operation is in the subject (`in.speech`,
//! `in.control`, `in.admin`) and the worker refuses an op sent on the wrong
//! kind's subject.

use serde::{Deserialize, Serialize};

use crate::bus::{EventKind, EventKindName};

/// The class of an event: the last token of its subject,
/// `{prefix}.session.{key}.events.{class}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventClass {
    /// Turn boundaries and the session's own events: `turn_started`,
    /// `turn_finished`, `interrupted`, `speculation_ended`, `resumed`,
    /// `lagged`, `checkpoint_too_large`, `session_ended`, and any kind this
    /// version does not know. Always published.
    Lifecycle,
    /// What is spoken: `speakable`, `speech_played`, `playback_paused`,
    /// `playback_resumed`, `backchannel`.
    Speech,
    /// The reply as the model streams it: `token`, `reasoning`, `refusal`,
    /// `structured`.
    Tokens,
    /// `tool_call`, `tool_result`.
    Tools,
    /// Accounting and providers: `usage`, `provider_selected`,
    /// `provider_failed`.
    Usage,
    /// The user's side: `user_speech_started`, `user_speech_ended`,
    /// `user_transcript`.
    User,
}

impl EventClass {
    /// Every class, in the order of their bits.
    pub const ALL: &'static [EventClass] = &[
        EventClass::Lifecycle,
        EventClass::Speech,
        EventClass::Tokens,
        EventClass::Tools,
        EventClass::Usage,
        EventClass::User,
    ];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            EventClass::Lifecycle => "lifecycle",
            EventClass::Speech => "speech",
            EventClass::Tokens => "tokens",
            EventClass::Tools => "tools",
            EventClass::Usage => "usage",
            EventClass::User => "user",
        }
    }

    /// The class of a subject token.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The class of a bus event.
    pub fn of(kind: &EventKind) -> Self {
        Self::of_name(kind.kind_name())
    }

    /// The class of a bus event kind (every kind is classified here: a new
    /// one does not compile until it is).
    pub(crate) fn of_name(name: EventKindName) -> Self {
        use EventKindName as K;
        match name {
            K::TurnStarted
            | K::TurnFinished
            | K::Interrupted
            | K::SpeculationEnded
            | K::TurnLatency => EventClass::Lifecycle,
            K::Token | K::Reasoning | K::Refusal | K::Structured => EventClass::Tokens,
            K::ToolCall | K::ToolResult => EventClass::Tools,
            K::Usage | K::ProviderSelected | K::ProviderFailed => EventClass::Usage,
            K::UserSpeechStarted | K::UserSpeechEnded | K::UserTranscript => EventClass::User,
            K::Speakable
            | K::SpeechPlayed
            | K::SpeechAudio
            | K::PlaybackPaused
            | K::PlaybackResumed
            | K::Backchannel => EventClass::Speech,
        }
    }

    /// The class of an event by its wire kind (worker kinds and unknown kinds
    /// are lifecycle).
    pub fn of_kind_name(kind: &str) -> Self {
        EventKindName::from_name(kind).map_or(EventClass::Lifecycle, Self::of_name)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of event classes (what a session publishes, what a subscriber reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventClasses(u8);

impl EventClasses {
    /// Every class.
    pub fn all() -> Self {
        EventClass::ALL.iter().copied().collect()
    }

    /// Lifecycle and speech: what a TTS service reads.
    pub fn speech() -> Self {
        [EventClass::Lifecycle, EventClass::Speech]
            .into_iter()
            .collect()
    }

    /// Whether `class` is in the set.
    pub fn contains(self, class: EventClass) -> bool {
        self.0 & class.bit() != 0
    }

    /// Whether every class is in the set.
    pub fn is_all(self) -> bool {
        self == Self::all()
    }

    /// The set with `class` (lifecycle is always published: see
    /// [`EventClass::Lifecycle`]).
    pub fn with(self, class: EventClass) -> Self {
        Self(self.0 | class.bit())
    }

    /// The classes in the set.
    pub fn iter(self) -> impl Iterator<Item = EventClass> {
        EventClass::ALL
            .iter()
            .copied()
            .filter(move |c| self.contains(*c))
    }
}

impl FromIterator<EventClass> for EventClasses {
    fn from_iter<I: IntoIterator<Item = EventClass>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |bits, c| bits | c.bit()))
    }
}

impl From<EventClass> for EventClasses {
    fn from(class: EventClass) -> Self {
        Self(class.bit())
    }
}

/// The kind of an input: the last token of its subject,
/// `{prefix}.session.{key}.in.{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InputKind {
    /// What a speech service sends: `user_speech_started`,
    /// `user_speech_ended`, `user_transcript`, `speech_played`.
    Speech,
    /// Steering the conversation: `send_text`, `cancel`,
    /// `submit_tool_result`.
    Control,
    /// Reading or ending the session: `context` (the whole history), `close`.
    Admin,
}

impl InputKind {
    /// Every kind.
    pub const ALL: &'static [InputKind] =
        &[InputKind::Speech, InputKind::Control, InputKind::Admin];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            InputKind::Speech => "speech",
            InputKind::Control => "control",
            InputKind::Admin => "admin",
        }
    }

    /// The kind of a subject token.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bus_kind_has_a_class_and_names_round_trip() {
        for name in EventKindName::ALL {
            let class = EventClass::of_name(*name);
            assert_eq!(EventClass::of_kind_name(name.as_str()), class);
        }
        for class in EventClass::ALL {
            assert_eq!(EventClass::from_name(class.as_str()), Some(*class));
        }
        assert_eq!(EventClass::of_kind_name("resumed"), EventClass::Lifecycle);
        assert_eq!(EventClass::of_kind_name("new_kind"), EventClass::Lifecycle);
        assert_eq!(
            EventClasses::speech().iter().collect::<Vec<_>>(),
            [EventClass::Lifecycle, EventClass::Speech]
        );
        assert!(EventClasses::all().is_all());
        for kind in InputKind::ALL {
            assert_eq!(InputKind::from_name(kind.as_str()), Some(*kind));
        }
    }
}
