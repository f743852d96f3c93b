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

use std::collections::{BTreeMap, VecDeque};
use std::task::Poll;
use std::time::Duration;

use async_nats::Subscriber;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};

use super::fence::{Admitted, GenerationFence};
use crate::cluster::wire::{self, EventClass, EventClasses, RemoteEvent, RemoteEventKind};

/// Asks the session's owner for its generation.
pub(crate) type OwnerProbe =
    std::sync::Arc<dyn Fn() -> BoxFuture<'static, OwnerAnswer> + Send + Sync>;

/// What asking the owner gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OwnerAnswer {
    /// The owner's generation.
    Generation(u64),
    /// The owner does not know the question (an older worker).
    Unsupported,
    /// No worker owns the session right now (a failover or hand-over).
    NoOwner,
    /// No answer (a timeout, a refused publish, an error).
    NoAnswer,
}

/// How long events wait for their `resumed` before the owner is asked.
const FIRST_QUESTION_AFTER: Duration = Duration::from_millis(50);
/// Between two questions while events still wait: doubling from this...
const NEXT_QUESTION_AFTER: Duration = Duration::from_millis(250);
/// ...up to this.
const LAST_QUESTION_AFTER: Duration = Duration::from_secs(2);
/// Questions without any answer before the first generation seen is trusted
/// (this client may not ask: an observer left with `confirm_owner`).
const UNANSWERED_AT_MOST: u32 = 3;

/// A subscription to a remote session's events (all of them, or the classes
/// asked for, in the session's order).
///
/// Events of a superseded owner (a lower generation than one already seen)
/// and a second end of the same turn are dropped; messages that do not follow
/// the schema, or that name another session, are skipped (counted in
/// `colloquy_cluster_invalid_messages_total`).
///
/// A new owner's generation is followed only once it is confirmed: by its
/// `resumed` event (a new owner publishes it first, after at most the failed
/// end of the turn that was in flight, which is held until then), or by the
/// owner answering an `owner` request when the `resumed` does not come (lost
/// on the way, or published before this subscription). So one message with a
/// large `seq` cannot hide the genuine events that follow it. The lifecycle
/// class is always subscribed to for this, and given out only if asked for.
/// A forged `resumed` or answer is believed: sending one needs a worker's
/// permissions (see the roles in `docs/nats-roles.conf`), so this guards
/// against deployments without the roles and lost messages, not against a
/// leaked worker credential. The rules and their limits: docs/cluster.md,
/// "The wire".
pub struct RemoteEvents {
    source: Source,
    fence: GenerationFence,
    /// The classes given out.
    wanted: EventClasses,
    /// Asks the owner; `None` when the client cannot (see
    /// `RemoteConfig::confirm_owner`).
    ask_owner: Option<OwnerProbe>,
    /// The question in flight, with the arrivals count when it was asked.
    question: Option<(u64, BoxFuture<'static, OwnerAnswer>)>,
    /// Questions since events began waiting (the next one's delay).
    questions: u32,
    /// Questions in a row that got no answer at all.
    unanswered: u32,
}

impl std::fmt::Debug for RemoteEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteEvents")
            .field("wanted", &self.wanted)
            .field("fence", &self.fence)
            .field("questions", &self.questions)
            .finish_non_exhaustive()
    }
}

/// The subscriptions, merged into seq order.
#[derive(Debug)]
struct Source {
    subs: Vec<Sub>,
    /// Decoded events not yet given out (one subscription: in order).
    ready: VecDeque<RemoteEvent>,
    /// Several subscriptions: events taken, by (seq, arrival), with the tick
    /// of their take.
    pending: BTreeMap<(u64, u64), (u64, RemoteEvent)>,
    tick: u64,
}

#[derive(Debug)]
struct Sub {
    sub: Subscriber,
    /// The tick at which the subscription was last found empty.
    drained_at: u64,
}

/// What the wait gave.
enum Got {
    Event(Option<RemoteEvent>),
    Owner(u64, OwnerAnswer),
}

impl RemoteEvents {
    /// Events of `subs` (which cover `wanted` and lifecycle), fenced from
    /// what asking the owner gave at subscribe time (`None`: it was not
    /// asked, and cannot be: the first generation seen is trusted).
    pub(crate) fn new(
        session: crate::ids::SessionId,
        subs: Vec<Subscriber>,
        wanted: EventClasses,
        owner: Option<OwnerAnswer>,
        ask_owner: Option<OwnerProbe>,
    ) -> Self {
        let known = match owner {
            Some(OwnerAnswer::Generation(g)) => Some(g),
            _ => None,
        };
        let mut fence = GenerationFence::new(session, known);
        let mut ask_owner = ask_owner;
        let mut unanswered = 0;
        match owner {
            None | Some(OwnerAnswer::Unsupported) => {
                fence.trust_first_held();
                ask_owner = None;
            }
            Some(OwnerAnswer::NoAnswer) => unanswered = 1,
            Some(OwnerAnswer::Generation(_) | OwnerAnswer::NoOwner) => {}
        }
        Self {
            source: Source {
                subs: subs
                    .into_iter()
                    .map(|sub| Sub { sub, drained_at: 0 })
                    .collect(),
                ready: VecDeque::new(),
                pending: BTreeMap::new(),
                tick: 0,
            },
            fence,
            wanted,
            ask_owner,
            question: None,
            questions: 0,
            unanswered,
        }
    }

    /// The next event; `None` once the subscription ended.
    pub async fn recv(&mut self) -> Option<RemoteEvent> {
        loop {
            if let Some(ev) = self.fence.next() {
                if class_of(&ev).is_none_or(|c| self.wanted.contains(c)) {
                    return Some(ev);
                }
                continue;
            }
            if !self.fence.is_holding() {
                self.questions = 0;
            }
            if self.fence.is_holding()
                && self.question.is_none()
                && let Some(ask) = &self.ask_owner
            {
                let wait = match self.questions {
                    0 => FIRST_QUESTION_AFTER,
                    n => (NEXT_QUESTION_AFTER * 2u32.saturating_pow(n - 1).min(64))
                        .min(LAST_QUESTION_AFTER),
                };
                let ask = ask.clone();
                let question = async move {
                    tokio::time::sleep(wait).await;
                    ask().await
                };
                self.question = Some((self.fence.arrivals(), Box::pin(question)));
            }
            let got = match &mut self.question {
                Some((asked_at, question)) => {
                    let asked_at = *asked_at;
                    // Unbiased: a busy stream must not starve the question.
                    tokio::select! {
                        ev = self.source.next() => Got::Event(ev),
                        owner = question => Got::Owner(asked_at, owner),
                    }
                }
                None => Got::Event(self.source.next().await),
            };
            match got {
                Got::Event(None) => return None,
                Got::Event(Some(ev)) => {
                    if self.fence.admit(ev) == Admitted::Held {
                        tracing::debug!("event of an unconfirmed owner held");
                    }
                }
                Got::Owner(asked_at, answer) => {
                    self.question = None;
                    self.questions = self.questions.saturating_add(1);
                    match answer {
                        OwnerAnswer::Generation(generation) => {
                            self.unanswered = 0;
                            self.fence.owner_is(generation, asked_at);
                        }
                        OwnerAnswer::NoOwner => self.unanswered = 0,
                        OwnerAnswer::Unsupported => self.stop_asking(),
                        OwnerAnswer::NoAnswer => {
                            self.unanswered += 1;
                            if self.unanswered >= UNANSWERED_AT_MOST {
                                self.stop_asking();
                            }
                        }
                    }
                }
            }
        }
    }
}

impl RemoteEvents {
    /// Nobody answers questions here: the first generation held is trusted.
    fn stop_asking(&mut self) {
        tracing::debug!("the owner cannot be asked; trusting the first generation seen");
        self.ask_owner = None;
        self.fence.trust_first_held();
    }
}

/// The class an event is published under; `None` for a kind this version
/// does not know (given to every reader: its class is not known here).
fn class_of(ev: &RemoteEvent) -> Option<EventClass> {
    match &ev.kind {
        RemoteEventKind::Bus(kind) => Some(EventClass::of(kind)),
        RemoteEventKind::Unknown { .. } => None,
        _ => Some(EventClass::Lifecycle),
    }
}

impl Source {
    /// The next event taken, in seq order.
    async fn next(&mut self) -> Option<RemoteEvent> {
        if self.subs.len() == 1 {
            self.next_single().await
        } else {
            self.next_merged().await
        }
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
