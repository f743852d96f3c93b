//! Delivery's tests: taps and subscribers are fed outside the ledger's lock,
//! in seq order, and a cut returns with its end delivered.

use crate::bus::ledger::tests::{begin, kinds, token};
use crate::bus::*;
use crate::ids::SessionId;
use std::sync::{Arc, Mutex};

/// Taps are delivered after the ledger's lock is released
/// (`bus/delivery.rs`): a thread that reads the ledger while a tap runs is
/// never held up by it. Seen failing on the old code, which called taps under
/// the ledger's mutex: every `try_lock` from inside the tap found it held.
#[test]
fn taps_run_outside_the_ledger_lock_in_seq_order() {
    let bus = SessionBus::new(SessionId::new("s"), 16);
    let inner = Arc::downgrade(&bus.inner);
    let seen: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let sink = seen.clone();
    let tap = bus.add_tap(
        |k| matches!(k, EventKind::Token(_) | EventKind::TurnFinished { .. }),
        move |ev| {
            let inner = inner.upgrade().expect("the bus is alive");
            let ledger_free = inner.ledger.try_lock().is_ok();
            sink.lock().unwrap().push((ev.seq, ledger_free));
        },
    );
    let t = begin(&bus, 0);
    for _ in 0..50 {
        bus.publish_agent(t, token("x")).unwrap();
    }
    assert!(
        seen.lock().unwrap().iter().all(|(_, free)| *free),
        "a tap ran under the ledger lock"
    );
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let bus = bus.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let _ = bus.publish_agent(t, token("x"));
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    bus.cut(Some(t), TurnEnd::Cancelled);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        251,
        "250 tokens and the turn's end reach the tap"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "delivered in seq order"
    );
    // With the publishers gone, the cut's own delivery finds the ledger free.
    assert!(
        seen.last().unwrap().1,
        "the cut's tap ran under the ledger lock"
    );
    bus.remove_tap(tap);
}

/// A slow tap holds up deliveries, never the ledger: with a tap stuck and a
/// publisher queued behind it, a cut is still decided at once (seen with the
/// first hand-over-hand design, where the queued publisher held the ledger
/// while it waited for delivery, so the cut waited for the tap).
#[test]
fn a_stuck_tap_never_holds_up_the_next_decision() {
    let bus = SessionBus::new(SessionId::new("s"), 64);
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    let seen: Arc<Mutex<Vec<EventKind>>> = Arc::default();
    let sink = seen.clone();
    bus.add_tap(
        |k| matches!(k, EventKind::Token(_) | EventKind::TurnFinished { .. }),
        move |ev| {
            if matches!(&ev.kind, EventKind::Token(t) if &**t == "slow") {
                let _ = entered_tx.send(());
                let _ = release_rx.lock().unwrap().recv();
            }
            sink.lock().unwrap().push(ev.kind.clone());
        },
    );
    let t = begin(&bus, 0);
    let stuck = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.publish_agent(t, token("slow")).unwrap())
    };
    entered_rx.recv().unwrap();
    let queued = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.publish_agent(t, token("queued")).unwrap())
    };
    // Wait until the second token's batch is queued behind the stuck one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bus.inner.pending.lock().unwrap().batches.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the publisher never queued"
        );
        std::thread::yield_now();
    }
    let cutter = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.cut(Some(t), TurnEnd::Cancelled))
    };
    while bus.is_open(t) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut waited for the stuck tap"
        );
        std::thread::yield_now();
    }
    release_tx.send(()).unwrap();
    stuck.join().unwrap();
    queued.join().unwrap();
    assert!(cutter.join().unwrap().is_some());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], token("slow"));
    assert_eq!(seen[1], token("queued"));
    assert!(matches!(seen[2], EventKind::TurnFinished(_)));
}

/// `cut` returns with the turn's end delivered even when another party cut
/// first and this call decided nothing.
#[test]
fn a_cut_that_finds_the_turn_cut_returns_after_its_end_was_delivered() {
    let bus = SessionBus::new(SessionId::new("s"), 64);
    let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
    bus.add_tap(
        |k| matches!(k, EventKind::TurnFinished { .. }),
        move |_| {
            let _ = entered_tx.send(());
            // Long enough that a call which does not wait returns first.
            std::thread::sleep(std::time::Duration::from_millis(200));
        },
    );
    let mut rx = bus.subscribe();
    let t = begin(&bus, 0);
    let first = {
        let bus = bus.clone();
        std::thread::spawn(move || bus.cut(Some(t), TurnEnd::Cancelled))
    };
    entered_rx.recv().unwrap();
    assert!(
        bus.cut(Some(t), TurnEnd::Cancelled).is_none(),
        "already cut"
    );
    let kinds = kinds(&mut rx);
    assert!(
        kinds
            .iter()
            .any(|k| matches!(k, EventKind::TurnFinished(_))),
        "returned before the first cut's end was delivered: {kinds:?}"
    );
    assert!(first.join().unwrap().is_some());
}
