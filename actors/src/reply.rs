//! A reply's state: what the LLM actor writes and a reply's handle reads.
//!
//! The LLM actor is the one writer of a reply's state (a `watch`, through
//! `ReplyTx`): it starts the turn, commits it, and trims it when its speech
//! is cut, so the state a [`ReplyHandle`](crate::ReplyHandle) reads is always
//! the history's. These types sit below the actor and the handles alike; the
//! handle itself, which reaches the session's core, is the session's
//! (`session/reply_handle.rs`).

use std::sync::Arc;

use colloquy::context::{ChatItem, Role};
use tokio::sync::watch;

use crate::bus::TurnEnd;
use crate::ids::TurnId;

/// What a reply produced once committed: how its generation ended, and the
/// items it added to the history, as heard.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The turn the reply became.
    pub turn: TurnId,
    /// How its generation ended.
    pub end: TurnEnd,
    /// Its items in the history (assistant messages, tool calls and their
    /// outputs), trimmed to what the user heard when its speech was cut.
    pub items: Vec<ChatItem>,
    /// Its speech was cut: `items` hold only what was heard.
    pub interrupted: bool,
}

impl Reply {
    /// The assistant's text of the reply, as committed (as heard).
    pub fn text(&self) -> String {
        self.items
            .iter()
            .filter_map(|i| match i {
                ChatItem::Message(m) if m.role == Role::Assistant => Some(m.text_content()),
                _ => None,
            })
            .collect()
    }
}

/// Where a reply stands.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ReplyState {
    /// Requested; its turn has not begun (the actor is busy, or an earlier
    /// reply is still speaking and the speech queue waits).
    Queued,
    /// Its turn began.
    Started(TurnId),
    /// Generated and committed; its speech may still be playing.
    Committed(Reply),
    /// Over: committed, and its speech played to its end or was cut.
    Done(Reply),
    /// It never became a committed turn: the session stopped first (or the
    /// message asked for no reply, or the reply was withdrawn before it
    /// started).
    Dropped,
}

/// How a [`say`](crate::SessionHandle::say_with) is spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SayOptions {
    /// The user's voice may pause and cut it, like a model's reply (the
    /// default). With `false` it is neither paused nor cut by speech or a
    /// new user message (those wait for it to end); an explicit
    /// [`cancel`](crate::SessionHandle::cancel) or
    /// [`ReplyHandle::interrupt`](crate::ReplyHandle::interrupt) still cuts it.
    pub allow_interruptions: bool,
}

impl Default for SayOptions {
    fn default() -> Self {
        Self {
            allow_interruptions: true,
        }
    }
}

impl SayOptions {
    /// Sets [`SayOptions::allow_interruptions`].
    pub fn allow_interruptions(mut self, allow: bool) -> Self {
        self.allow_interruptions = allow;
        self
    }
}

/// The actor's side of a reply's state.
#[derive(Debug, Clone)]
pub(crate) struct ReplyTx(Arc<watch::Sender<ReplyState>>);

impl ReplyTx {
    pub(crate) fn new() -> (Self, watch::Receiver<ReplyState>) {
        let (tx, rx) = watch::channel(ReplyState::Queued);
        (Self(Arc::new(tx)), rx)
    }

    pub(crate) fn set(&self, state: ReplyState) {
        self.0.send_replace(state);
    }

    /// The turn it started, if any.
    pub(crate) fn turn(&self) -> Option<TurnId> {
        turn_of(&self.0.borrow())
    }

    /// Whether it is committed and waits for the end of its speech.
    pub(crate) fn awaiting_playout(&self) -> Option<Reply> {
        match &*self.0.borrow() {
            ReplyState::Committed(r) => Some(r.clone()),
            _ => None,
        }
    }

    /// Whether `handle` reads this reply.
    pub(crate) fn is(&self, handle: &watch::Receiver<ReplyState>) -> bool {
        self.0.subscribe().same_channel(handle)
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        // The last sender gone (the session stopped) before the reply was
        // over: a committed reply is over as committed; one that never
        // committed is dropped. A handle never waits on a reply nobody will
        // finish.
        if Arc::strong_count(&self.0) == 1 {
            self.0.send_if_modified(|s| match s {
                ReplyState::Queued | ReplyState::Started(_) => {
                    *s = ReplyState::Dropped;
                    true
                }
                ReplyState::Committed(reply) => {
                    *s = ReplyState::Done(reply.clone());
                    true
                }
                _ => false,
            });
        }
    }
}

/// The turn a reply in `state` became, once it began.
pub(crate) fn turn_of(state: &ReplyState) -> Option<TurnId> {
    match state {
        ReplyState::Queued | ReplyState::Dropped => None,
        ReplyState::Started(t) => Some(*t),
        ReplyState::Committed(r) | ReplyState::Done(r) => Some(r.turn),
    }
}
