//! Whether the agent is generating or speaking, for those who wait for it to
//! finish (reply handles, the speech queue, embedders).
//!
//! The ledger sets it in its transitions, under its lock; readers never take
//! that lock. It is a flag, a change counter and a `Notify` — never a lock a
//! reader could hold — so no reader can stall the ledger (a `watch` would:
//! a caller holding a `borrow()` across `cancel()` blocked the send under the
//! ledger's lock, and with it the session).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct SpeakingState {
    flag: AtomicBool,
    changes: AtomicU64,
    notify: Notify,
}

impl SpeakingState {
    /// Sets the flag; wakes the waiters when it changed.
    pub(crate) fn set(&self, now: bool) {
        if self.flag.swap(now, Ordering::SeqCst) != now {
            self.changes.fetch_add(1, Ordering::SeqCst);
            self.notify.notify_waiters();
        }
    }
}

/// Whether the agent is generating a reply or still speaking one (a reply's
/// speech counts until playback reports its end or it is cut). Cheap to
/// clone; from [`SessionHandle::speaking`](crate::SessionHandle::speaking).
#[derive(Debug, Clone)]
pub struct Speaking(pub(crate) Arc<SpeakingState>);

impl Speaking {
    /// Right now.
    pub fn is_speaking(&self) -> bool {
        self.0.flag.load(Ordering::SeqCst)
    }

    /// Waits until the agent is generating or speaking (`true`) or quiet
    /// (`false`); returns at once when it already is.
    pub async fn until(&self, speaking: bool) {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_speaking() == speaking {
                return;
            }
            notified.await;
        }
    }

    /// Waits until the agent has finished generating and speaking.
    pub async fn until_quiet(&self) {
        self.until(false).await
    }

    /// Waits for the next change after `seen` (a value of
    /// [`Speaking::changes`]) and returns the new count.
    pub(crate) async fn changed_since(&self, seen: u64) -> u64 {
        loop {
            let notified = self.0.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.changes();
            if now != seen {
                return now;
            }
            notified.await;
        }
    }

    /// How many times the flag changed.
    pub(crate) fn changes(&self) -> u64 {
        self.0.changes.load(Ordering::SeqCst)
    }
}
