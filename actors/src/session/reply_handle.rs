//! A reply's handle: what a caller holds for one reply it asked for.
//!
//! `send_text`, `send_message`, `generate` and `say` return a
//! [`ReplyHandle`]. It answers the questions an embedder otherwise answered by
//! filtering the bus and guessing turn numbers: which turn the reply became
//! ([`ReplyHandle::turn`]), what was committed for it and how it ended
//! ([`ReplyHandle::committed`]), when its speech is over and what the user
//! heard of it ([`ReplyHandle::played_out`]), and it can cut it
//! ([`ReplyHandle::interrupt`]).
//!
//! It reads the state the LLM actor writes (`reply.rs`) and cuts through the
//! session's core, so it stands above both, beside the session's handle that
//! returns it. A reply requested while an earlier one still speaks waits or
//! cuts it, as
//! [`AgentSettings::speech_queue`](crate::AgentSettings::speech_queue) says.

use std::sync::Arc;

use tokio::sync::watch;

use crate::errors::SessionError;
use crate::ids::TurnId;
use crate::llm_actor::SessionCore;
use crate::reply::{Reply, ReplyState, turn_of};

/// Why a reply's outcome is not available.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply never became a committed turn: the session stopped first,
    /// or it was withdrawn before it started, or its message asked for none.
    #[error("the reply was dropped before it was committed")]
    Dropped,
}

/// One reply a caller asked for: awaitable for its commit and for the end of
/// its speech, and interruptible. Cheap to clone.
///
/// ```
/// use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
/// use colloquy::mock::{MockResponse, MockServer};
/// use colloquy_actors::{AgentSettings, SessionConfig, Supervisor, SupervisorConfig};
/// use colloquy_actors::bus::TurnEnd;
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = MockServer::start(|_| MockResponse::text(&["Hello", " there!"])).await?;
/// let client = ChatClient::new(OpenAiConfig::compatible(server.base_url()))?;
/// let supervisor = Supervisor::start(SupervisorConfig::default()).await?;
/// let session = supervisor
///     .start_session("call-1", SessionConfig::new(client, AgentSettings::new(LlmOptions::new("demo"))))
///     .await?;
/// let reply = session.send_text("Hi!")?;
/// let done = reply.played_out().await?; // no speech output: as soon as committed
/// assert_eq!((done.text(), done.end), ("Hello there!".to_string(), TurnEnd::Stop));
/// let greeting = session.say("Goodbye!")?; // fixed text, same pipeline, no model request
/// assert_eq!(greeting.committed().await?.text(), "Goodbye!");
/// supervisor.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ReplyHandle {
    state: watch::Receiver<ReplyState>,
    core: Arc<SessionCore>,
}

impl std::fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyHandle")
            .field("session", &self.core.id)
            .field("state", &*self.state.borrow())
            .finish()
    }
}

impl ReplyHandle {
    pub(crate) fn new(state: watch::Receiver<ReplyState>, core: Arc<SessionCore>) -> Self {
        Self { state, core }
    }

    /// A watch on the reply's state (for the cluster's tracked replies).
    #[cfg(feature = "nats")]
    pub(crate) fn watch(&self) -> watch::Receiver<ReplyState> {
        self.state.clone()
    }

    /// Where the reply stands now.
    pub fn state(&self) -> ReplyState {
        self.state.borrow().clone()
    }

    /// The turn the reply became, once it began.
    pub fn turn(&self) -> Option<TurnId> {
        turn_of(&self.state.borrow())
    }

    /// Whether the reply is over (its speech played or cut, or it was dropped).
    pub fn is_done(&self) -> bool {
        matches!(
            *self.state.borrow(),
            ReplyState::Done(_) | ReplyState::Dropped
        )
    }

    /// Waits until the reply's turn begins, and returns it.
    pub async fn started(&self) -> Result<TurnId, ReplyError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| !matches!(s, ReplyState::Queued))
            .await
            .map(|s| s.clone())
            .unwrap_or(ReplyState::Dropped);
        turn_of(&state).ok_or(ReplyError::Dropped)
    }

    /// Waits until the reply is committed: how its generation ended and what
    /// it added to the history. Its speech may still be playing (and may
    /// still be cut: [`played_out`](Self::played_out) has the final word).
    pub async fn committed(&self) -> Result<Reply, ReplyError> {
        self.wait(|s| matches!(s, ReplyState::Committed(_))).await
    }

    /// Waits until the reply's speech is over — played to its end, or cut —
    /// and returns what the history keeps of it (as heard). Without a speech
    /// output this is the commit.
    pub async fn played_out(&self) -> Result<Reply, ReplyError> {
        self.wait(|_| false).await
    }

    async fn wait(&self, early: impl Fn(&ReplyState) -> bool) -> Result<Reply, ReplyError> {
        let mut rx = self.state.clone();
        let state = rx
            .wait_for(|s| early(s) || matches!(s, ReplyState::Done(_) | ReplyState::Dropped))
            .await
            .map(|s| s.clone())
            .unwrap_or(ReplyState::Dropped);
        match state {
            ReplyState::Committed(r) | ReplyState::Done(r) => Ok(r),
            _ => Err(ReplyError::Dropped),
        }
    }

    /// Cuts the reply now, whatever its `allow_interruptions`: its generation
    /// if it is still generating, else its speech if it is still playing (the
    /// history keeps what was heard). A reply not yet started never starts.
    /// A no-op once it is over; [`SessionError::NotRunning`] once the session
    /// stopped.
    pub fn interrupt(&self) -> Result<(), SessionError> {
        match self.turn() {
            Some(turn) => self.core.cut(Some(turn)),
            None if self.is_done() => Ok(()),
            None => self.core.withdraw(&self.state),
        }
    }
}
