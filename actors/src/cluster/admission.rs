//! Admission of sessions against draining: one owner and one critical
//! section for "draining" and the set of sessions.
//!
//! A placement or a claim takes a [`Ticket`] before it does any work (its
//! store writes, the local session, the subscriptions) and inserts the
//! session with [`Ticket::admit`]. A drain marks the worker draining under the
//! same lock, so no ticket is given out after it, then waits until every
//! ticket given out before it is admitted or dropped, and only then takes the
//! set of sessions to hand over. So a session admitted while a drain begins
//! is handed over and counted in the drain's report, never left behind to
//! wait for its lease to expire.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio::sync::Notify;

/// The draining flag and the admissions in progress.
#[derive(Default)]
pub(crate) struct Admission {
    state: Mutex<State>,
    /// A copy of `State::draining` for lock-free reads (whether to offer
    /// capacity, whether to try a claim); decisions take the lock.
    draining: AtomicBool,
    /// Notified when the last admission in progress ends.
    idle: Notify,
}

#[derive(Default)]
struct State {
    draining: bool,
    admitting: usize,
}

/// The right to add one session, taken before the work of adding it.
/// Dropped without [`Ticket::admit`], the admission is abandoned.
pub(crate) struct Ticket {
    admission: Arc<Admission>,
}

impl Admission {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a drain began.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// A ticket, unless a drain began or `reserve` (run under the lock) says
    /// there is no room.
    pub(crate) fn begin(self: &Arc<Self>, reserve: impl FnOnce() -> bool) -> Option<Ticket> {
        let mut state = self.lock();
        if state.draining || !reserve() {
            return None;
        }
        state.admitting += 1;
        Some(Ticket {
            admission: self.clone(),
        })
    }

    /// Marks the worker draining (no ticket is given out from now on) and
    /// waits until every admission in progress ended.
    pub(crate) async fn drain(&self) {
        {
            let mut state = self.lock();
            state.draining = true;
            self.draining.store(true, Ordering::SeqCst);
        }
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.lock().admitting == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Ticket {
    /// Inserts the session into `sessions` (under the admission lock, so a
    /// drain sees it once its wait for admissions ended).
    pub(crate) fn admit<K, V>(self, sessions: &DashMap<K, V>, key: K, value: V)
    where
        K: Eq + std::hash::Hash,
    {
        let _state = self.admission.lock();
        sessions.insert(key, value);
        // The ticket's count goes when it drops, after the insert.
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.admitting -= 1;
        if state.admitting == 0 {
            self.admission.idle.notify_waiters();
        }
    }
}
