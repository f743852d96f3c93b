//! The soak's bus invariants, checked by a second subscriber per session.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use colloquy_actors::TurnId;
use colloquy_actors::bus::{BusReceiver, BusRecvError, EventKind};

/// Bus invariants, summed over the sessions' checking subscribers.
#[derive(Default)]
pub(crate) struct Invariants {
    pub(crate) stale_events: AtomicU64,
    pub(crate) double_endings: AtomicU64,
    pub(crate) seq_violations: AtomicU64,
    pub(crate) lagged_events: AtomicU64,
}

/// The checking subscriber of one session: reads its bus until it closes.
pub(crate) async fn check_invariants(mut rx: BusReceiver, inv: Arc<Invariants>) {
    let bump = |c: &AtomicU64| c.fetch_add(1, Ordering::Relaxed);
    let mut last_seq: Option<u64> = None;
    let mut endings: HashMap<TurnId, u32> = HashMap::new();
    // Turns cancelled, failed or interrupted: nothing more of them may appear.
    let mut cut: HashSet<TurnId> = HashSet::new();
    loop {
        let ev = match rx.recv().await {
            Ok(ev) => ev,
            Err(BusRecvError::Lagged { missed }) => {
                inv.lagged_events.fetch_add(missed, Ordering::Relaxed);
                continue;
            }
            Err(_) => return,
        };
        if last_seq.is_some_and(|last| ev.seq <= last) {
            bump(&inv.seq_violations);
        }
        last_seq = Some(ev.seq);
        if ev.kind.is_user_side() || ev.kind.is_report() {
            // User events are stamped with the latest turn, a turn's latency
            // report with the turn it reports on, after its end: neither is
            // part of the turn's stream.
            continue;
        }
        if let EventKind::TurnFinished(end) = &ev.kind {
            let n = endings.entry(ev.turn).or_default();
            *n += 1;
            if *n > 1 {
                bump(&inv.double_endings);
            }
            if end.is_abort() {
                cut.insert(ev.turn);
            }
            continue;
        }
        let ended = endings.contains_key(&ev.turn);
        let tail = matches!(
            ev.kind,
            EventKind::Speakable { .. }
                | EventKind::SpeechPlayed { .. }
                | EventKind::Interrupted { .. }
                | EventKind::PlaybackPaused { .. }
                | EventKind::PlaybackResumed { .. }
        );
        if cut.contains(&ev.turn) || (ended && !tail) {
            bump(&inv.stale_events);
        }
        if matches!(ev.kind, EventKind::Interrupted { .. }) {
            cut.insert(ev.turn);
        }
    }
}
