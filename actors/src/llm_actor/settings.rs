//! What the LLM actor does with a conversation, changeable between turns.

use std::sync::Arc;

use colloquy::context::ChatContext;
use colloquy::llm::LlmOptions;

pub use crate::turn_taking::InterruptionPolicy;

/// A callback that may edit the context before each turn's first request (inject
/// retrieved facts, trim history). It runs inside the LLM actor: a panic here
/// fails the actor, and the supervisor restarts it with the last committed context.
///
/// It runs once per user utterance, and always sees that utterance as the
/// context's last user message, so a retrieval hook queries what the user
/// said. For a live turn it edits the committed context. For a speculative
/// turn (preemptive generation) it runs on a copy — the committed context plus
/// the interim utterance — from which the speculation's request is built: a
/// hit makes that copy the history (the utterance in its final wording, the
/// hook's additions kept, the hook not run again); a miss or a drop throws it
/// away, and the next utterance's turn runs the hook afresh.
pub type BeforeTurnHook = Arc<dyn Fn(&mut ChatContext) + Send + Sync>;

/// Generation settings of a session's agent.
#[derive(Clone)]
pub struct AgentSettings {
    /// Model, sampling and tools of each request.
    pub options: LlmOptions,
    /// A system message sent first on every request (not stored in the context).
    pub instructions: Option<String>,
    /// Tool rounds per turn; the round after the last one is asked with
    /// `tool_choice: none`, so the turn ends with an answer.
    pub max_tool_rounds: u32,
    /// Interruption rules.
    pub interruption: InterruptionPolicy,
    /// Cap on context items (see [`ChatContext::truncate`]); `None` keeps all.
    pub max_context_items: Option<usize>,
    /// Optional pre-turn context edit (retrieval, a reminder), run once per
    /// user utterance before the request that answers it, on a context whose
    /// last user message is that utterance. See [`BeforeTurnHook`].
    pub before_turn: Option<BeforeTurnHook>,
    /// Preemptive generation: start a speculative turn on interim transcripts
    /// (`None`: off). See [`Preemptive`].
    pub preemptive: Option<Preemptive>,
    /// What a reply (or a `say`) requested while the last one's speech is
    /// still playing does. See [`SpeechQueue`].
    pub speech_queue: SpeechQueue,
}

/// The speech queue: what happens to a reply or a `say` requested while the
/// agent's last reply is still being spoken (its generation is over, its
/// audio is not).
///
/// Either way one reply speaks at a time, and the history keeps what the
/// user heard of each. A reply spoken with `allow_interruptions: false`
/// (see [`SayOptions`](crate::SayOptions)) is always waited for, whatever the
/// setting; an explicit [`cancel`](crate::SessionHandle::cancel) or
/// [`ReplyHandle::interrupt`](crate::ReplyHandle::interrupt) still cuts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SpeechQueue {
    /// The new reply cuts the speech still playing (what a user who asked
    /// something new wants). The default.
    #[default]
    Interrupt,
    /// The new reply waits until the speech playing ends, then starts (what a
    /// scripted sequence of `say`s wants).
    Wait,
}

/// Preemptive generation: while the user is still talking, an interim
/// transcript starts a *speculative* turn whose events are held back; a
/// matching final transcript (same words after normalisation) promotes it —
/// its events are released at once and it goes on live — and anything else
/// discards it (its request is closed, its cost reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preemptive {
    /// Interims must stop changing for this long before a speculation starts
    /// (or restarts for newer words): a stream of interims does not start a
    /// request per word.
    pub debounce: std::time::Duration,
}

impl Default for Preemptive {
    /// A 150 ms debounce.
    fn default() -> Self {
        Self {
            debounce: std::time::Duration::from_millis(150),
        }
    }
}

impl std::fmt::Debug for AgentSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("options", &self.options)
            .field("instructions", &self.instructions)
            .field("max_tool_rounds", &self.max_tool_rounds)
            .field("interruption", &self.interruption)
            .field("max_context_items", &self.max_context_items)
            .field("before_turn", &self.before_turn.is_some())
            .field("preemptive", &self.preemptive)
            .field("speech_queue", &self.speech_queue)
            .finish()
    }
}

impl AgentSettings {
    /// Settings for a model with the defaults: 4 tool rounds, confirmed
    /// interruptions (see [`InterruptionPolicy::default`]) and new messages
    /// interrupt, 200 context items.
    pub fn new(options: LlmOptions) -> Self {
        Self {
            options,
            instructions: None,
            max_tool_rounds: 4,
            interruption: InterruptionPolicy::default(),
            max_context_items: Some(200),
            before_turn: None,
            preemptive: None,
            speech_queue: SpeechQueue::Interrupt,
        }
    }

    /// Sets the instructions.
    pub fn with_instructions(mut self, instructions: impl Into<String>) -> Self {
        self.instructions = Some(instructions.into());
        self
    }
}
