//! The error every session operation can return.
//!
//! It has a file of its own because every layer can refuse a call with it:
//! the session's core (a stopped session), the LLM actor (a turn in flight),
//! the handles, and the cluster's wire. Below all of them, it depends only on
//! the bus and the ids.

use crate::bus::PublishError;
use crate::ids::SessionId;

/// Errors of a session operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session was stopped (or its LLM actor is restarting).
    #[error("session {0} is not running")]
    NotRunning(SessionId),
    /// The event was refused by the turn ledger.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The LLM actor did not answer in time.
    #[error("session {0} did not answer in time")]
    Timeout(SessionId),
    /// The operation needs the agent to be idle and a turn is in flight.
    #[error("session {0} has a turn in flight")]
    TurnInFlight(SessionId),
}
