//! Tracked replies: the replies a client asked to follow (`track: true` on
//! `send_text`, `send_message`, `generate`, `say`), kept by an unguessable
//! id, and the `reply` long poll that reports a change of one's state.
//!
//! Why a poll and not events or several answers to one request: the state
//! is for the one client that holds the id, so it goes to that client alone
//! (nothing is broadcast to the session's subscribers), each answer is the
//! single response a worker's `allow_responses` permits, and the session's
//! seq order is untouched. Why "committed" waits for the store: a reply
//! reported committed is in the stored history, as a `turn_finished` is.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{Value, json};

use super::inputs::InputCtx;
use super::lock;
use crate::cluster::wire::{WireError, encode_reply_state, state_label};
use crate::reply::{ReplyState, turn_of};
use crate::session::ReplyHandle;

/// Tracked replies kept per session; beyond it the oldest (those over
/// first) are forgotten, and a poll of theirs is `unknown_reply`.
const MAX_TRACKED: usize = 256;

/// The longest a `reply` poll waits for a change.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// A session's tracked replies, by id.
#[derive(Default)]
pub(super) struct Replies {
    inner: std::sync::Mutex<Tracked>,
}

#[derive(Default)]
struct Tracked {
    by_id: HashMap<String, ReplyHandle>,
    order: VecDeque<String>,
}

impl Replies {
    /// Keeps `handle` under a new id (`unique`: an unguessable token).
    pub(super) fn track(&self, unique: String, handle: ReplyHandle) -> String {
        let mut t = lock(&self.inner);
        while t.by_id.len() >= MAX_TRACKED {
            let victim = t
                .order
                .iter()
                .position(|id| t.by_id.get(id).is_none_or(ReplyHandle::is_done))
                .unwrap_or(0);
            if let Some(id) = t.order.remove(victim) {
                t.by_id.remove(&id);
            }
        }
        t.by_id.insert(unique.clone(), handle);
        t.order.push_back(unique.clone());
        unique
    }

    /// The reply of `id`, if tracked here.
    pub(super) fn get(&self, id: &str) -> Option<ReplyHandle> {
        lock(&self.inner).by_id.get(id).cloned()
    }

    fn forget(&self, id: &str) {
        let mut t = lock(&self.inner);
        t.by_id.remove(id);
        t.order.retain(|i| i != id);
    }
}

/// `unknown_reply`, with the last turn committed when this owner started
/// (a client whose reply's worker died tells with it whether its turn is in
/// the history).
pub(super) fn unknown_reply(ctx: &InputCtx, id: &str) -> WireError {
    WireError {
        detail: Some(json!({"committed_turn": ctx.committed_at_start})),
        ..WireError::new(
            "unknown_reply",
            format!("no reply {id:?} is tracked by the session's owner"),
        )
    }
}

/// Whether `state` may be reported: a committed reply once its turn is
/// stored (or the store is gone).
async fn reportable(ctx: &InputCtx, state: &ReplyState, until: tokio::time::Instant) -> bool {
    let (ReplyState::Committed(r) | ReplyState::Done(r)) = state else {
        return true;
    };
    let turn = ctx.turn_base + r.turn.0;
    let mut durable = ctx.durable.clone();
    tokio::time::timeout_at(until, durable.wait_for(|d| *d >= turn))
        .await
        .is_ok()
}

/// Answers a `reply` poll: the state once its label differs from `known`
/// (a committed one once stored: until then it reads as its start), or the
/// state at the end of `wait_ms`. A final state forgets the reply.
pub(super) async fn poll(
    ctx: &InputCtx,
    id: &str,
    known: Option<String>,
    wait_ms: u64,
) -> Result<Value, WireError> {
    let handle = ctx.replies.get(id).ok_or_else(|| unknown_reply(ctx, id))?;
    let until = tokio::time::Instant::now() + Duration::from_millis(wait_ms).min(MAX_WAIT);
    let mut rx = handle.watch();
    let state = loop {
        let state = rx.borrow_and_update().clone();
        if known.as_deref() != Some(state_label(&state)) {
            if reportable(ctx, &state, until).await {
                break state;
            }
            break turn_of(&state).map_or(state, ReplyState::Started);
        }
        tokio::select! {
            r = rx.changed() => if r.is_err() {
                // The reply's writer is gone: its state is final.
                break rx.borrow().clone();
            },
            () = tokio::time::sleep_until(until) => break state,
        }
    };
    if matches!(state, ReplyState::Done(_) | ReplyState::Dropped) {
        ctx.replies.forget(id);
    }
    Ok(encode_reply_state(
        &state,
        ctx.turn_base,
        ctx.max_reply_bytes,
    ))
}
