//! Delivery: the events a critical section of the ledger decided, handed to
//! the taps and the broadcast *after* the ledger's lock is released.
//!
//! The ledger decides (fences, records, segments, cuts) under its mutex and
//! only queues what it publishes in its outbox. [`LedgerGuard`] — the one way
//! into the ledger — delivers that outbox when it is dropped, hand over hand:
//! it takes the delivery lock *before* it releases the ledger's, then runs the
//! taps and the broadcast send with the ledger free. So
//!
//! - taps (the LLM actor's inbox, the tool executor, a `Speaker`) and tokio's
//!   send and wake-ups never run inside the ledger's critical section, and a
//!   slow tap delays only other deliveries, never a cancel's decision;
//! - every tap and subscriber still receives the events in seq order, and a
//!   cut's `TurnFinished` is delivered before `cancel()` returns, because the
//!   critical sections enter delivery in the order they left the ledger
//!   (lock order: ledger, then delivery; never the other way);
//! - a tap added, removed or a bus closed is an entry of the same outbox, so
//!   it takes effect exactly between the events around it: a tap added in a
//!   critical section sees every event after it and none before.
//!
//! No call site can forget to deliver: the guard's `Drop` does it. A tap must
//! not call back into its bus (it would wait for the delivery it runs in);
//! debug builds catch that with a clear panic instead of a deadlock.

use std::cell::Cell;
use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::broadcast;

use super::BusEvent;
use super::ledger::{Ledger, Outgoing, Tap};

thread_local! {
    /// Set while this thread runs taps: a tap that re-enters its bus would
    /// deadlock on the delivery lock it is running under.
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
}

/// Where the ledger's decisions go once its lock is released.
pub(super) struct Delivery {
    tx: Option<broadcast::Sender<BusEvent>>,
    taps: Vec<Tap>,
    /// The outbox being delivered (swapped with the ledger's, so neither
    /// allocates after the first events).
    batch: Vec<Outgoing>,
}

impl Delivery {
    pub(super) fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            tx: Some(tx),
            taps: Vec::new(),
            batch: Vec::new(),
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
        self.tx.as_ref().map_or(0, broadcast::Sender::receiver_count)
    }

    fn deliver_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        DELIVERING.set(true);
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
                Outgoing::Close => {
                    self.tx = None;
                    self.taps.clear();
                }
            }
        }
        DELIVERING.set(false);
        self.batch = batch;
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
    delivery: &'a Mutex<Delivery>,
}

impl<'a> LedgerGuard<'a> {
    pub(super) fn lock(ledger: &'a Mutex<Ledger>, delivery: &'a Mutex<Delivery>) -> Self {
        debug_assert!(
            !DELIVERING.get(),
            "a bus tap called back into its bus: taps must only hand events off"
        );
        Self {
            ledger: Some(lock(ledger)),
            delivery,
        }
    }

    /// Releases the ledger after delivering its outbox, and returns the
    /// delivery state still locked: what `f` reads there (a new receiver,
    /// the subscriber count) is exactly at this point of the event order.
    pub(super) fn into_delivery(mut self) -> MutexGuard<'a, Delivery> {
        self.hand_over(true)
            .expect("the ledger is held until the guard drops")
    }

    /// Takes the delivery lock, releases the ledger's, delivers the outbox;
    /// `None` when there was nothing to deliver and `always` is false (the
    /// ledger released without touching delivery).
    fn hand_over(&mut self, always: bool) -> Option<MutexGuard<'a, Delivery>> {
        let mut ledger = self.ledger.take()?;
        if ledger.outbox.is_empty() && !always {
            drop(ledger);
            return None;
        }
        let mut delivery = lock(self.delivery);
        std::mem::swap(&mut ledger.outbox, &mut delivery.batch);
        drop(ledger);
        delivery.deliver_batch();
        Some(delivery)
    }
}

impl Deref for LedgerGuard<'_> {
    type Target = Ledger;
    fn deref(&self) -> &Ledger {
        self.ledger.as_deref().expect("the ledger is held until the guard drops")
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
        drop(self.hand_over(false));
    }
}
