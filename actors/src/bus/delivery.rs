//! Delivery: the events a critical section of the ledger decided, handed to
//! the taps and the broadcast *after* the ledger's lock is released.
//!
//! The ledger decides (fences, records, segments, cuts) under its mutex and
//! only queues what it publishes in its outbox. [`LedgerGuard`] — the one way
//! into the ledger — moves that outbox, while it still holds the ledger, to
//! the end of a FIFO of batches waiting for delivery (a short lock of its
//! own), releases the ledger, and then takes the delivery lock and delivers
//! every batch waiting, oldest first. So
//!
//! - taps (the LLM actor's inbox, the tool executor, a `Speaker`), tokio's
//!   send and its wake-ups never run inside the ledger's critical section,
//!   and no thread ever waits for delivery while holding the ledger: a slow
//!   tap delays deliveries (and the return of the calls that deliver), never
//!   the ledger's next decision — a cancel is decided at once;
//! - every tap and subscriber still receives the events in seq order (the
//!   batches are queued in ledger order and delivered under one lock), and a
//!   call that published something returns only after it was delivered — in
//!   particular `cancel()` returns with `TurnFinished` delivered. The cut
//!   controls wait for delivery even when they decided nothing new (another
//!   party cut first), so "after `cancel()` returns, `TurnFinished` was
//!   delivered" holds whoever cut;
//! - a tap added or removed, a bus closed and the `Speaking` flag are entries
//!   of the same outbox, so they take effect exactly between the events
//!   around them: a tap added in a critical section sees every event after
//!   it and none before, and `until_quiet()` wakes after the turn's end was
//!   delivered.
//!
//! No call site can forget to deliver: the guard's `Drop` does it. A tap must
//! not call back into its bus (it would wait for the delivery it runs in);
//! debug builds catch that with a clear panic instead of a deadlock.

#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::BusEvent;
use super::ledger::{Ledger, Outgoing, Tap};
use super::speaking::SpeakingState;

thread_local! {
    /// Set while this thread runs taps: a tap that re-enters its bus would
    /// deadlock on the delivery lock it is running under.
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as delivering for as long as it lives: restored on
/// unwinding too, so a panicking tap cannot leave the thread marked.
struct Delivering(bool);

impl Delivering {
    fn enter() -> Self {
        Self(DELIVERING.replace(true))
    }
}

impl Drop for Delivering {
    fn drop(&mut self) {
        DELIVERING.set(self.0);
    }
}

/// Batches decided by the ledger and not yet delivered, oldest first.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) batches: std::collections::VecDeque<Vec<Outgoing>>,
    /// Emptied batches, kept for their capacity.
    spare: Vec<Vec<Outgoing>>,
}

/// Where the ledger's decisions go once its lock is released.
pub(super) struct Delivery {
    tx: Option<broadcast::Sender<BusEvent>>,
    taps: Vec<Tap>,
    speaking: std::sync::Arc<SpeakingState>,
}

impl Delivery {
    pub(super) fn new(capacity: usize, speaking: std::sync::Arc<SpeakingState>) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx: Some(tx),
            taps: Vec::new(),
            speaking,
        }
    }

    /// A receiver of every event delivered from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<BusEvent> {
        match &self.tx {
            Some(tx) => tx.subscribe(),
            // A stopped session: a receiver that reports `Closed` at once.
            None => broadcast::channel(1).1,
        }
    }

    pub(super) fn subscriber_count(&self) -> usize {
        self.tx
            .as_ref()
            .map_or(0, broadcast::Sender::receiver_count)
    }

    fn deliver(&mut self, batch: &mut Vec<Outgoing>) {
        let _delivering = Delivering::enter();
        for out in batch.drain(..) {
            match out {
                Outgoing::Event(event) => {
                    for tap in &self.taps {
                        if (tap.filter)(&event.kind) {
                            (tap.deliver)(&event);
                        }
                    }
                    if let Some(tx) = &self.tx {
                        // No subscriber is not an error: nobody observes it.
                        let _ = tx.send(event);
                    }
                }
                Outgoing::AddTap(tap) => self.taps.push(tap),
                Outgoing::RemoveTap(id) => self.taps.retain(|t| t.id != id),
                Outgoing::Speaking(now) => self.speaking.set(now),
                Outgoing::Close => {
                    self.tx = None;
                    self.taps.clear();
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a tap or a transition loses at most that delivery; the
    // state is still consistent, so poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ledger, locked; its outbox is delivered when the guard drops.
pub(super) struct LedgerGuard<'a> {
    ledger: Option<MutexGuard<'a, Ledger>>,
    pending: &'a Mutex<Pending>,
    delivery: &'a Mutex<Delivery>,
    /// Wait for delivery even with an empty outbox (the cut controls).
    sync: bool,
}

impl<'a> LedgerGuard<'a> {
    pub(super) fn lock(
        ledger: &'a Mutex<Ledger>,
        pending: &'a Mutex<Pending>,
        delivery: &'a Mutex<Delivery>,
    ) -> Self {
        debug_assert!(
            !DELIVERING.get(),
            "a bus tap called back into a bus: taps must only hand events off"
        );
        Self {
            ledger: Some(lock(ledger)),
            pending,
            delivery,
            sync: false,
        }
    }

    /// When dropped, waits until everything decided before it was delivered,
    /// even if this section published nothing.
    pub(super) fn synced(mut self) -> Self {
        self.sync = true;
        self
    }

    /// Releases the ledger, delivers everything decided up to now, and
    /// returns the delivery state still locked: a receiver made there sees
    /// every event decided after this call returns.
    pub(super) fn into_delivery(mut self) -> MutexGuard<'a, Delivery> {
        self.sync = true;
        self.hand_over()
            .expect("the ledger is held until the guard drops")
    }

    /// Queues the outbox behind the batches waiting, releases the ledger,
    /// then delivers every batch waiting; `None` when there was nothing to
    /// deliver and no sync was asked (the ledger released, delivery not
    /// touched).
    fn hand_over(&mut self) -> Option<MutexGuard<'a, Delivery>> {
        let mut ledger = self.ledger.take()?;
        if ledger.outbox.is_empty() && !self.sync {
            return None;
        }
        if !ledger.outbox.is_empty() {
            let mut pending = lock(self.pending);
            let empty = pending.spare.pop().unwrap_or_default();
            let batch = std::mem::replace(&mut ledger.outbox, empty);
            pending.batches.push_back(batch);
        }
        drop(ledger);
        let mut delivery = lock(self.delivery);
        loop {
            let batch = lock(self.pending).batches.pop_front();
            let Some(mut batch) = batch else { break };
            delivery.deliver(&mut batch);
            let mut pending = lock(self.pending);
            if pending.spare.len() < 4 {
                pending.spare.push(batch);
            }
        }
        Some(delivery)
    }
}

impl Deref for LedgerGuard<'_> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        self.ledger
            .as_deref()
            .expect("the ledger is held until the guard drops")
    }
}

impl DerefMut for LedgerGuard<'_> {
    fn deref_mut(&mut self) -> &mut Ledger {
        self.ledger
            .as_deref_mut()
            .expect("the ledger is held until the guard drops")
    }
}

impl Drop for LedgerGuard<'_> {
    fn drop(&mut self) {
        drop(self.hand_over());
    }
}
