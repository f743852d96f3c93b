//! A remote reply: what a client holding a session by its key can follow of
//! a reply it asked for (`send_text_tracked`, `send_message`, `generate`,
//! `say`), the remote face of a [`ReplyHandle`](crate::ReplyHandle).
//!
//! Why a poll: the input that asked for the reply is answered at once with
//! an id (`track: true`), and the reply's state is asked for by that id
//! (`reply`, a long poll answered as soon as the state changes, so a wait
//! costs one request per change). The state goes to this client alone, a
//! worker answers each request once (the roles' `allow_responses`), and the
//! id travels by session key, so whichever worker holds the session answers.
//!
//! What it can do remotely: the turn the reply became, its commit (reported
//! once the history holding it is stored, as `turn_finished` is), the end of
//! its speech with what the user heard, [`RemoteReply::interrupt`] (an
//! `interrupt` input: the owner cuts that reply's turn, its speech, or its
//! start, exactly as [`ReplyHandle::interrupt`](crate::ReplyHandle::interrupt)).
//! What it cannot: a reply's id lives on its owner, so when that worker dies
//! the new owner does not know it (`unknown_reply`, with the last turn it
//! resumed as committed): a reply not started, or whose turn was in flight,
//! is [`RemoteReplyError::Dropped`] (its turn ended `failed`, `worker lost`);
//! one committed already is over as committed (as when a local session
//! stops); one whose turn was stored but whose commit had not been reported
//! is [`RemoteReplyError::Lost`] (read it from the history). An owner keeps
//! the last 256 replies it tracks; a client that polls after that reads
//! the same outcome. Each poll is an input: it counts in the session's rate
//! and keeps it from its idle timeout.

use std::sync::Arc;

use serde_json::Value;

use super::RemoteSession;
use crate::cluster::ClusterError;
use crate::cluster::wire::{Input, decode_reply_state, state_label};
use crate::ids::TurnId;
use crate::reply::{Reply, ReplyState, turn_of};

/// Why a remote reply's outcome is not available.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteReplyError {
    /// The reply never became a committed turn: the session stopped first,
    /// it was withdrawn before it started, its message asked for none, or its
    /// turn was in flight when its worker died.
    #[error("the reply was dropped before it was committed")]
    Dropped,
    /// Its worker died after storing the reply's turn and before reporting
    /// its commit: the turn is in the history ([`RemoteSession::context`]),
    /// its outcome is not known here.
    #[error("the reply's worker was lost after turn {} was stored", turn.0)]
    Lost {
        /// The reply's turn.
        turn: TurnId,
    },
    /// Asking for its state failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

/// What the client knows of the reply.
#[derive(Debug, Clone)]
struct Known {
    state: ReplyState,
    lost: Option<TurnId>,
}

impl Known {
    fn is_final(&self) -> bool {
        self.lost.is_some() || matches!(self.state, ReplyState::Done(_) | ReplyState::Dropped)
    }
}

struct Inner {
    session: RemoteSession,
    id: String,
    known: std::sync::Mutex<Known>,
    /// One poll at a time (clones share it).
    polling: tokio::sync::Mutex<()>,
}

/// One reply a remote client asked for: awaitable for its start, its commit
/// and the end of its speech, and interruptible (see the module docs for what
/// a failover does to it). Cheap to clone.
#[derive(Clone)]
pub struct RemoteReply {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReply")
            .field("session", self.inner.session.id())
            .field("id", &self.inner.id)
            .field("known", &*self.known())
            .finish()
    }
}

impl RemoteReply {
    pub(super) fn new(session: RemoteSession, id: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                session,
                id,
                known: std::sync::Mutex::new(Known {
                    state: ReplyState::Queued,
                    lost: None,
                }),
                polling: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.inner
            .known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The reply's id on its owner.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Where the reply stood at the last answer (no request).
    pub fn state(&self) -> ReplyState {
        self.known().state.clone()
    }

    /// The turn the reply became (wire numbering), once known.
    pub fn turn(&self) -> Option<TurnId> {
        turn_of(&self.known().state)
    }

    /// Whether the reply is known to be over.
    pub fn is_done(&self) -> bool {
        self.known().is_final()
    }

    /// Waits until the reply's turn begins, and returns it.
    pub async fn started(&self) -> Result<TurnId, RemoteReplyError> {
        let k = self.wait_for(|s| !matches!(s, ReplyState::Queued)).await?;
        turn_of(&k.state)
            .or(k.lost)
            .ok_or(RemoteReplyError::Dropped)
    }

    /// Waits until the reply is committed and stored: how its generation
    /// ended and what it added to the history (its speech may still play).
    pub async fn committed(&self) -> Result<Reply, RemoteReplyError> {
        let k = self
            .wait_for(|s| matches!(s, ReplyState::Committed(_)))
            .await?;
        Self::outcome(k)
    }

    /// Waits until the reply's speech is over (played or cut) and returns
    /// what the history keeps of it, as heard.
    pub async fn played_out(&self) -> Result<Reply, RemoteReplyError> {
        let k = self.wait_for(|_| false).await?;
        Self::outcome(k)
    }

    fn outcome(k: Known) -> Result<Reply, RemoteReplyError> {
        if let Some(turn) = k.lost {
            return Err(RemoteReplyError::Lost { turn });
        }
        match k.state {
            ReplyState::Committed(r) | ReplyState::Done(r) => Ok(r),
            _ => Err(RemoteReplyError::Dropped),
        }
    }

    /// Cuts the reply now (its generation, else its speech; a reply not yet
    /// started never starts), whatever its `allow_interruptions`: an
    /// `interrupt` input to the owner. A no-op once it is over, or when its
    /// owner no longer knows it (its worker died: the turn ended then).
    pub async fn interrupt(&self) -> Result<(), ClusterError> {
        let input = Input::Interrupt {
            reply: self.inner.id.clone(),
        };
        match self.inner.session.call_wire(&input).await? {
            Ok(_) => Ok(()),
            Err(e) if e.kind == "unknown_reply" => Ok(()),
            Err(e) => Err(super::refused(e)),
        }
    }

    /// Polls until `early` holds for the state or the reply is over.
    async fn wait_for(
        &self,
        early: impl Fn(&ReplyState) -> bool,
    ) -> Result<Known, RemoteReplyError> {
        loop {
            let k = self.known().clone();
            if k.is_final() || early(&k.state) {
                return Ok(k);
            }
            let _one = self.inner.polling.lock().await;
            let again = self.known().clone();
            if again.is_final() || early(&again.state) {
                return Ok(again);
            }
            self.poll(&again.state).await?;
        }
    }

    /// One `reply` request: the state once it differs from `known`.
    async fn poll(&self, known: &ReplyState) -> Result<(), RemoteReplyError> {
        let timeout = self.inner.session.client.inner.config.request_timeout;
        // Answered before the request times out.
        let wait_ms = (timeout.as_millis() as u64).saturating_mul(3) / 4;
        let input = Input::Reply {
            id: self.inner.id.clone(),
            known: Some(state_label(known).to_string()),
            wait_ms,
        };
        // A poll is idempotent: one its owner never answered (it died while
        // the poll waited) is asked again, of whichever worker owns the
        // session then, for as long as an input waits for an owner.
        let config = &self.inner.session.client.inner.config;
        let deadline = tokio::time::Instant::now() + config.unavailable_timeout;
        let answer = loop {
            match self.inner.session.call_wire(&input).await {
                Err(ClusterError::Timeout(_)) if tokio::time::Instant::now() < deadline => {}
                answer => break answer?,
            }
        };
        let mut k = self.known();
        match answer {
            Ok(v) => {
                k.state = decode_reply_state(&v).map_err(ClusterError::Protocol)?;
            }
            Err(e) if e.kind == "unknown_reply" => {
                let committed = e
                    .detail
                    .as_ref()
                    .and_then(|d| d.get("committed_turn"))
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                k.state = match std::mem::replace(&mut k.state, ReplyState::Dropped) {
                    ReplyState::Committed(r) | ReplyState::Done(r) => ReplyState::Done(r),
                    ReplyState::Started(turn) if turn.0 <= committed => {
                        k.lost = Some(turn);
                        ReplyState::Started(turn)
                    }
                    _ => ReplyState::Dropped,
                };
            }
            Err(e) => return Err(super::refused(e).into()),
        }
        Ok(())
    }
}
