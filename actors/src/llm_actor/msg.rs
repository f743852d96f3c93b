//! The LLM actor's messages: what its handles, its bus tap, its timers and
//! its rounds' stream tasks send it.
//!
//! They have a file of their own so that everything that sends to the actor
//! (the session's core, the handles, a round's task) depends on the messages
//! and not on the actor that handles them.

use colloquy::context::{ChatContext, ContentPart};
use colloquy::llm::{FinishReason, LlmError};
use ractor::RpcReplyPort;

use super::settings::AgentSettings;
use crate::bus::BusEvent;
use crate::errors::SessionError;
use crate::ids::TurnId;
use crate::reply::{ReplyState, ReplyTx, SayOptions};

/// What callers and the bus hand the actor: kept in the session's inbox
/// until the actor takes them, so an actor that fails loses none of those
/// still waiting (its successor takes them).
pub(crate) enum Input {
    /// Commit a user message; start a turn when `respond`.
    UserMessage {
        content: Vec<ContentPart>,
        respond: bool,
        reply: ReplyTx,
    },
    /// Start a turn on the current context.
    Generate { reply: ReplyTx },
    /// Speak fixed text as a turn (no model request).
    Say {
        text: String,
        options: SayOptions,
        reply: ReplyTx,
    },
    /// A lossless bus tap delivery: user speech, final transcripts, tool results.
    Bus(BusEvent),
}

/// Messages of the LLM actor (sent through [`SessionHandle`](crate::SessionHandle)).
pub(crate) enum LlmMsg {
    /// Take the inputs of the session's inbox numbered up to this one, in
    /// order.
    Inbox(u64),
    /// The agent stopped generating and speaking: replies waiting for their
    /// playout are over, and a reply waiting in the speech queue may start.
    SpeechIdle,
    /// A reply not yet started is withdrawn (its handle interrupted it).
    Withdraw(tokio::sync::watch::Receiver<ReplyState>),
    /// A turn was cut outside the actor: commit it now (every handler
    /// reconciles anyway; this only makes it prompt).
    Reconcile,
    /// A round's stream ended.
    RoundEnded {
        turn: TurnId,
        round: u32,
        result: Result<RoundOutput, LlmError>,
    },
    /// Read the committed context.
    Snapshot(RpcReplyPort<ChatContext>),
    /// Change settings (applies from the next request).
    Update(Box<dyn FnOnce(&mut AgentSettings) + Send>),
    /// Replace the committed context; refused while a turn is in flight.
    ReplaceContext(ChatContext, RpcReplyPort<Result<(), SessionError>>),
    /// The debounce of interim number `interim` ran out: speculate on it if
    /// it is still the latest.
    Speculate { interim: u64 },
}

/// How a round's stream ended.
#[derive(Debug, Default)]
pub(crate) struct RoundOutput {
    /// The round asked for tools.
    pub(crate) made_calls: bool,
    /// The finish reason the provider gave, if any.
    pub(crate) finish: Option<FinishReason>,
}
