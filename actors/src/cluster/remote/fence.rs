//! Which owner's events a subscriber follows: the generation fence of
//! [`RemoteEvents`](super::RemoteEvents), without the subscriptions (so
//! every rule is tested without a server).
//!
//! Why it is careful: anyone who can publish on a session's events could
//! send one message with a large generation, and a subscriber that followed
//! it would drop every genuine event after it as "superseded". So a higher
//! generation is followed only once it is *confirmed*: by its `resumed`
//! (a new owner publishes it first, after at most the failed end of the turn
//! that was in flight), or by the owner itself answering an `owner` request
//! (the reply comes from whoever serves the session's inputs). The second
//! covers a `resumed` lost on the way (core NATS delivers at most once), a
//! subscriber that did not ask for lifecycle events, and a subscription
//! opened after the failover. Events of an unconfirmed generation are held,
//! a bounded number, lowest generation first: a forger filling the hold with
//! high generations evicts its own events, never the genuine new owner's.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use crate::bus::EventKind;
use crate::cluster::wire::{RemoteEvent, RemoteEventKind};
use crate::ids::SessionId;

/// Events of unconfirmed generations held at most.
pub(super) const MAX_HELD: usize = 256;

/// How long an event of an unconfirmed generation is kept while the
/// confirmed owner keeps answering.
pub(super) const HELD_AT_MOST: Duration = Duration::from_secs(10);

/// The generation fence of one subscription.
#[derive(Debug)]
pub(super) struct GenerationFence {
    session: SessionId,
    /// The highest generation confirmed (at least the first owner's, 1).
    confirmed: u64,
    /// Trust the first generation seen (nobody could be asked).
    trust_first: bool,
    /// The generation of the last event given out (older ones are dropped).
    given: u64,
    /// Held events by (generation, seq), with their arrival number and time.
    held: BTreeMap<(u64, u64), (u64, RemoteEvent, Instant)>,
    arrivals: u64,
    /// Admitted events, in order, not yet given out.
    released: VecDeque<RemoteEvent>,
    /// Turns whose end was given out (a second end is dropped).
    ended: BTreeSet<u64>,
}

/// What became of an admitted event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admitted {
    /// Released (or dropped as invalid): nothing to ask.
    Done,
    /// Held until its generation is confirmed: ask the owner.
    Held,
}

impl GenerationFence {
    /// A fence for `session`; `owner` is the generation its owner gave when
    /// asked, `None` when it is not known yet (nobody owns the session yet,
    /// or a failover is under way): then the first owner's generation, 1,
    /// passes — a forgery of it hides nothing, events of the generation
    /// followed pass anyway — and every higher one is held until a
    /// `resumed` or an answer, or [`trust_first_held`](Self::trust_first_held).
    pub(super) fn new(session: SessionId, owner: Option<u64>) -> Self {
        Self {
            session,
            confirmed: owner.unwrap_or(1),
            trust_first: false,
            given: 0,
            held: BTreeMap::new(),
            arrivals: 0,
            released: VecDeque::new(),
            ended: BTreeSet::new(),
        }
    }

    /// Checks who an event claims to be from: its session, and its
    /// generation (a higher one only once confirmed).
    pub(super) fn admit(&mut self, ev: RemoteEvent) -> Admitted {
        if ev.session != self.session {
            metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
            tracing::debug!(session = %ev.session, "event naming another session skipped");
            return Admitted::Done;
        }
        let generation = ev.generation();
        if self.trust_first {
            self.trust_first = false;
            self.confirmed = self.confirmed.max(generation);
        }
        if generation <= self.confirmed {
            self.released.push_back(ev);
            return Admitted::Done;
        }
        if matches!(ev.kind, RemoteEventKind::Resumed { .. }) {
            // Higher generations stay held (a later owner announces itself).
            self.confirm(generation, 0);
            self.released.push_back(ev);
            return Admitted::Done;
        }
        self.hold(generation, ev);
        Admitted::Held
    }

    /// The owner said it is `generation` (asked after `asked_at` arrivals):
    /// its held events are released; events held before the question of
    /// any other unconfirmed generation are dropped (the owner at that time
    /// did not publish them).
    ///
    /// An answer below the confirmed generation is a superseded owner that
    /// has not noticed yet (both answer; the first reply wins): ignored. An
    /// answer equal to it drops only events held longer than
    /// [`HELD_AT_MOST`] — a genuine new owner's answer or `resumed` comes
    /// well within that, even when the old one keeps answering first.
    pub(super) fn owner_is(&mut self, generation: u64, asked_at: u64) {
        if generation > self.confirmed {
            self.confirm(generation, asked_at);
        } else if generation == self.confirmed {
            let now = Instant::now();
            self.drop_held(|g, arrival, since| {
                g > generation && arrival <= asked_at && now.duration_since(since) >= HELD_AT_MOST
            });
        }
    }

    /// Nobody can be asked (an old worker does not know `owner`, or this
    /// client may not ask): the generation of the earliest event held is
    /// trusted, as before owners could be asked.
    pub(super) fn trust_first_held(&mut self) {
        self.trust_first = true;
        let first = self
            .held
            .iter()
            .min_by_key(|(_, (arrival, _, _))| *arrival)
            .map(|((g, _), _)| *g);
        if let Some(g) = first {
            self.trust_first = false;
            self.confirm(g, 0);
        }
    }

    /// The number of events seen so far (for [`owner_is`](Self::owner_is)).
    pub(super) fn arrivals(&self) -> u64 {
        self.arrivals
    }

    /// Whether events wait for a confirmation.
    pub(super) fn is_holding(&self) -> bool {
        !self.held.is_empty()
    }

    /// The next event to give out: not of a superseded owner, not a second
    /// end of a turn.
    pub(super) fn next(&mut self) -> Option<RemoteEvent> {
        while let Some(ev) = self.released.pop_front() {
            if ev.generation() < self.given {
                continue;
            }
            self.given = ev.generation();
            if let RemoteEventKind::Bus(EventKind::TurnFinished(_)) = &ev.kind {
                if !self.ended.insert(ev.turn.0) {
                    continue;
                }
                while self.ended.len() > 64 {
                    self.ended.pop_first();
                }
            }
            return Some(ev);
        }
        None
    }

    /// `generation` is the owner's: what it published before the
    /// confirmation goes first (in seq order); lower unconfirmed ones, and
    /// higher ones held up to arrival `asked_at`, are dropped.
    fn confirm(&mut self, generation: u64, asked_at: u64) {
        self.confirmed = generation;
        let mut keep = BTreeMap::new();
        for ((g, seq), (arrival, ev, since)) in std::mem::take(&mut self.held) {
            if g == generation {
                self.released.push_back(ev);
            } else if g > generation && arrival > asked_at {
                keep.insert((g, seq), (arrival, ev, since));
            } else {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
            }
        }
        self.held = keep;
    }

    /// Holds an event; when full, the highest generation's latest event goes.
    fn hold(&mut self, generation: u64, ev: RemoteEvent) {
        self.arrivals += 1;
        let key = (generation, ev.seq);
        if self.held.len() >= MAX_HELD {
            let highest = self.held.last_key_value().map(|(k, _)| *k);
            match highest {
                Some(h) if key < h => {
                    self.held.pop_last();
                }
                _ => {
                    metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                    return;
                }
            }
            metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
        }
        // The first copy of a key stays (a forged duplicate replaces nothing).
        self.held
            .entry(key)
            .or_insert((self.arrivals, ev, Instant::now()));
    }

    fn drop_held(&mut self, mut dropped: impl FnMut(u64, u64, Instant) -> bool) {
        self.held.retain(|&(g, _), (arrival, _, since)| {
            let drop = dropped(g, *arrival, *since);
            if drop {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
            }
            !drop
        });
    }
}

#[cfg(test)]
#[path = "fence_tests.rs"]
mod tests;
