//! What makes a token cheap on the wire: the events of a session that are
//! already queued when the forwarder wakes are taken together, a cut found
//! among them is published before the cut turn's queued text (which is then
//! never sent), and consecutive events of one class go out as one NATS
//! message (one JSON object per line), each encoded once, straight into the
//! message's buffer.
//!
//! Nothing waits for a batch: the forwarder takes only what is queued
//! ([`BusReceiver::try_recv`](crate::bus::BusReceiver::try_recv)) and
//! publishes what it took before it sleeps again, so an event that finds the
//! queue empty goes out alone, as soon as before.
//!
//! Why a batch is one class: a subscriber of several classes merges their
//! subscriptions by seq (see [`RemoteEvents`](crate::cluster::RemoteEvents)),
//! which is only right if the worker publishes in seq order; a batch that
//! spans classes would have to go out before an event of another class it
//! follows.

use bytes::Bytes;

use crate::bus::{BusEvent, EventKind, TurnEnd};
use crate::cluster::wire::EventClass;
use crate::ids::TurnId;

/// The most events taken from the bus at once (bounds how long a cut queued
/// behind them can wait, and how much one wake-up holds).
pub(super) const MAX_TAKEN: usize = 256;

/// The most bytes in one batch (the server's maximum message size, if lower,
/// bounds it too).
pub(super) const MAX_BATCH_BYTES: usize = 32 * 1024;

/// Consecutive encoded events of one class, one JSON object per line.
#[derive(Debug, Default)]
pub(super) struct Batch {
    class: Option<EventClass>,
    buf: Vec<u8>,
    events: u64,
}

impl Batch {
    /// Whether an event of `class` must wait for the batch to be published
    /// first (another class, or the batch is full).
    pub(super) fn must_flush_before(&self, class: EventClass, max_bytes: usize) -> bool {
        self.class.is_some_and(|c| c != class) || self.buf.len() >= max_bytes
    }

    /// The buffer to encode the next event of `class` into (a line break
    /// already written after the previous one).
    pub(super) fn next_line(&mut self, class: EventClass) -> &mut Vec<u8> {
        if self.class.is_some() {
            self.buf.push(b'\n');
        }
        self.class = Some(class);
        self.events += 1;
        &mut self.buf
    }

    /// The batch's class, message and number of events; the batch is empty
    /// after.
    pub(super) fn take(&mut self) -> Option<(EventClass, Bytes, u64)> {
        let class = self.class.take()?;
        let events = std::mem::take(&mut self.events);
        Some((class, Bytes::from(std::mem::take(&mut self.buf)), events))
    }
}

/// Whether an event is text of its turn that nobody needs once the turn is
/// cut: the reply and its speech.
fn is_cut_text(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Token(_)
            | EventKind::Reasoning(_)
            | EventKind::Refusal(_)
            | EventKind::Speakable { .. }
    )
}

/// Whether an event cuts its turn on someone's word: a cancel or a barge-in
/// (a failure is not a cut: the text before it was the model's and a reader
/// may show it).
fn is_cut(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TurnFinished(TurnEnd::Cancelled) | EventKind::Interrupted { .. }
    )
}

/// Removes from `taken` (bus order) the text of every turn cut later in it:
/// the cut goes out right after what was already published, not behind its
/// turn's queued tokens. Returns how many events were removed.
pub(super) fn drop_cut_text(taken: &mut Vec<BusEvent>) -> usize {
    let mut cut: Vec<TurnId> = Vec::new();
    let mut keep = vec![true; taken.len()];
    for (i, ev) in taken.iter().enumerate().rev() {
        if is_cut(&ev.kind) {
            if !cut.contains(&ev.turn) {
                cut.push(ev.turn);
            }
        } else if is_cut_text(&ev.kind) && cut.contains(&ev.turn) {
            keep[i] = false;
        }
    }
    let before = taken.len();
    let mut flags = keep.into_iter();
    taken.retain(|_| flags.next().unwrap_or(true));
    before - taken.len()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn ev(seq: u64, turn: u64, kind: EventKind) -> BusEvent {
        BusEvent {
            session: "s".into(),
            turn: TurnId(turn),
            seq,
            kind,
        }
    }

    #[test]
    fn a_cut_drops_its_turns_queued_text_only() {
        let tok = |s: &str| EventKind::Token(Arc::from(s));
        let mut taken = vec![
            ev(1, 1, tok("a")),
            ev(2, 2, EventKind::TurnStarted),
            ev(3, 2, tok("b")),
            ev(4, 2, EventKind::UserSpeechStarted),
            ev(5, 2, tok("c")),
            ev(6, 2, EventKind::TurnFinished(TurnEnd::Cancelled)),
            ev(7, 3, tok("d")),
            ev(
                8,
                3,
                EventKind::TurnFinished(TurnEnd::Failed(Arc::from("x"))),
            ),
        ];
        assert_eq!(drop_cut_text(&mut taken), 2);
        let seqs: Vec<u64> = taken.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 4, 6, 7, 8], "a failure keeps its text");
    }

    #[test]
    fn a_batch_is_one_class_of_lines() {
        let mut b = Batch::default();
        assert!(!b.must_flush_before(EventClass::Tokens, 10));
        b.next_line(EventClass::Tokens).extend_from_slice(b"{}");
        b.next_line(EventClass::Tokens).extend_from_slice(b"{}");
        assert!(b.must_flush_before(EventClass::Speech, 10));
        assert!(!b.must_flush_before(EventClass::Tokens, 10));
        assert!(b.must_flush_before(EventClass::Tokens, 5));
        let (class, bytes, n) = b.take().unwrap();
        assert_eq!(
            (class, &bytes[..], n),
            (EventClass::Tokens, &b"{}\n{}"[..], 2)
        );
        assert!(b.take().is_none());
    }
}
