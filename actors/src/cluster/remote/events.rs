//! Reading a session's events: one subscription for the whole stream
//! (`…events.*`) or for one class, or one subscription per class merged back
//! into the session's order.
//!
//! Why the merge is exact: NATS core cannot subscribe to "speech or
//! lifecycle" with one subject, so a subscriber of several classes holds
//! several subscriptions. The owner publishes in seq order on one
//! connection, the server delivers one publisher's messages to one
//! connection in that order, and the client hands them to the subscriptions'
//! queues one after the other. So when a message has been taken from one
//! queue, every message published before it is already in its queue. The
//! merge numbers each take (a tick), and records for each subscription the
//! tick at which it was last found empty; an event is given out (smallest seq
//! first) once every subscription was found empty after the event was taken:
//! nothing with a smaller seq can come after that. A filtered-out class is
//! never waited for: only the subscriptions held are drained.
//!
//! Seq numbers have gaps by design (see [`wire`](super::super::wire)), more
//! so for a subscriber of some classes: a gap is never a loss. Losses at the
//! worker are reported as `lagged` (lifecycle); the server drops messages of
//! a slow consumer, which the NATS client reports on its connection events.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::task::Poll;

use async_nats::Subscriber;
use futures_util::{FutureExt, StreamExt};

use crate::bus::EventKind;
use crate::cluster::wire::{self, RemoteEvent, RemoteEventKind};

/// A subscription to a remote session's events (all of them, or the classes
/// asked for, in the session's order).
///
/// Events of a superseded owner (a lower generation than one already seen)
/// and a second end of the same turn are dropped; messages that do not follow
/// the schema, or that name another session, are skipped (counted in
/// `colloquy_cluster_invalid_messages_total`).
///
/// A new owner's generation is followed only once its `resumed` event
/// announces it (a new owner publishes it first, after at most the failed
/// end of the turn that was in flight, which is held until then): one
/// message with a large `seq` cannot hide the genuine events that follow
/// it. Forging a `resumed` needs a worker's permission to publish on the
/// session's events (see the roles in `docs/nats-roles.conf`).
#[derive(Debug)]
pub struct RemoteEvents {
    subs: Vec<Sub>,
    /// Decoded events not yet given out (one subscription: in order).
    ready: VecDeque<RemoteEvent>,
    /// Several subscriptions: events taken, by (seq, arrival), with the tick
    /// of their take.
    pending: BTreeMap<(u64, u64), (u64, RemoteEvent)>,
    tick: u64,
    generation: u64,
    ended: BTreeSet<u64>,
    /// The session the events must name.
    session: crate::ids::SessionId,
    /// Events of a higher generation, held until its `resumed` (bounded).
    held: Vec<RemoteEvent>,
    /// Held events released by a `resumed`, given out in order.
    released: VecDeque<RemoteEvent>,
}

/// Events of an unannounced generation held at most (a new owner publishes
/// one or two before its `resumed`).
const MAX_HELD: usize = 8;

#[derive(Debug)]
struct Sub {
    sub: Subscriber,
    /// The tick at which the subscription was last found empty.
    drained_at: u64,
}

impl RemoteEvents {
    pub(crate) fn new(session: crate::ids::SessionId, subs: Vec<Subscriber>) -> Self {
        Self {
            subs: subs
                .into_iter()
                .map(|sub| Sub { sub, drained_at: 0 })
                .collect(),
            ready: VecDeque::new(),
            pending: BTreeMap::new(),
            tick: 0,
            generation: 0,
            ended: BTreeSet::new(),
            session,
            held: Vec::new(),
            released: VecDeque::new(),
        }
    }

    /// The next event; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<RemoteEvent> {
        loop {
            if let Some(ev) = self.released.pop_front() {
                if self.accept(&ev) {
                    return Some(ev);
                }
                continue;
            }
            let ev = if self.subs.len() == 1 {
                self.next_single().await?
            } else {
                self.next_merged().await?
            };
            if !self.admit(ev) {
                continue;
            }
            if let Some(ev) = self.released.pop_front()
                && self.accept(&ev)
            {
                return Some(ev);
            }
        }
    }

    /// Checks who an event claims to be from: its session, and its
    /// generation (a higher one only through its `resumed`). Admitted events
    /// go to `released`, in order.
    fn admit(&mut self, ev: RemoteEvent) -> bool {
        if ev.session != self.session {
            metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
            tracing::debug!(session = %ev.session, "event naming another session skipped");
            return false;
        }
        let generation = ev.generation();
        // The first owner seen is followed (the subscription began under it).
        if self.generation == 0 || generation <= self.generation {
            self.released.push_back(ev);
            return true;
        }
        let announced = matches!(ev.kind, RemoteEventKind::Resumed { .. });
        if !announced {
            if self.held.len() < MAX_HELD {
                self.held.push(ev);
            } else {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
            }
            return false;
        }
        // The new owner: what it published before its announcement first.
        let mut held: Vec<RemoteEvent> = std::mem::take(&mut self.held)
            .into_iter()
            .filter(|h| h.generation() == generation)
            .collect();
        held.sort_by_key(|h| h.seq);
        self.released.extend(held);
        self.released.push_back(ev);
        true
    }

    /// One subscription: its events are in order.
    async fn next_single(&mut self) -> Option<RemoteEvent> {
        loop {
            if let Some(ev) = self.ready.pop_front() {
                return Some(ev);
            }
            let msg = self.subs[0].sub.next().await?;
            let ready = &mut self.ready;
            decode_into(&msg.payload, |ev| ready.push_back(ev));
        }
    }

    /// Several subscriptions, merged by seq (see the module docs).
    async fn next_merged(&mut self) -> Option<RemoteEvent> {
        loop {
            let safe_below = self.subs.iter().map(|s| s.drained_at).min().unwrap_or(0);
            if let Some(entry) = self.pending.first_entry()
                && entry.get().0 < safe_below
            {
                return Some(entry.remove().1);
            }
            if self.pending.is_empty() {
                // Nothing taken: wait for any subscription.
                let subs = &mut self.subs;
                let msg = std::future::poll_fn(|cx| {
                    for s in subs.iter_mut() {
                        if let Poll::Ready(m) = s.sub.poll_next_unpin(cx) {
                            return Poll::Ready(m);
                        }
                    }
                    Poll::Pending
                })
                .await;
                self.take(&msg?.payload);
            }
            // One pass: empty every queue (events taken during it are given
            // out once a later pass found the earlier queues empty).
            for i in 0..self.subs.len() {
                loop {
                    // Without the runtime's budget: a queue that has a
                    // message must not look empty.
                    let next = tokio::task::unconstrained(self.subs[i].sub.next()).now_or_never();
                    match next {
                        Some(Some(msg)) => self.take(&msg.payload),
                        Some(None) => return None,
                        None => break,
                    }
                }
                self.tick += 1;
                self.subs[i].drained_at = self.tick;
            }
        }
    }

    /// Decodes a message taken now into `pending`.
    fn take(&mut self, payload: &[u8]) {
        self.tick += 1;
        let tick = self.tick;
        let pending = &mut self.pending;
        let mut n = pending.len() as u64;
        decode_into(payload, |ev| {
            n += 1;
            pending.insert((ev.seq, tick << 16 | (n & 0xffff)), (tick, ev));
        });
    }

    /// Whether an event is given out: not of a superseded owner, not a
    /// second end of a turn.
    fn accept(&mut self, ev: &RemoteEvent) -> bool {
        if ev.generation() < self.generation {
            return false;
        }
        self.generation = ev.generation();
        if let RemoteEventKind::Bus(EventKind::TurnFinished(_)) = &ev.kind {
            if !self.ended.insert(ev.turn.0) {
                return false;
            }
            while self.ended.len() > 64 {
                self.ended.pop_first();
            }
        }
        true
    }
}

/// The events of one message (one object per line), invalid ones skipped.
fn decode_into(payload: &[u8], mut push: impl FnMut(RemoteEvent)) {
    for ev in wire::decode_events(payload) {
        match ev {
            Ok(ev) => push(ev),
            Err(e) => {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                tracing::debug!(error = %e, "invalid event skipped");
            }
        }
    }
}
