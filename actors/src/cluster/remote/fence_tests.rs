//! The generation fence's rules, one event at a time.

use std::sync::Arc;

use super::*;
use crate::bus::TurnEnd;
use crate::ids::TurnId;

fn event(session: &str, turn: u64, generation: u64, n: u64, kind: RemoteEventKind) -> RemoteEvent {
    RemoteEvent {
        session: SessionId::from(session),
        turn: TurnId(turn),
        seq: (generation << 32) + n,
        worker: format!("w{generation}"),
        kind,
    }
}

fn token(turn: u64, generation: u64, n: u64, text: &str) -> RemoteEvent {
    let kind = RemoteEventKind::Bus(EventKind::Token(Arc::from(text)));
    event("s", turn, generation, n, kind)
}

fn lost(turn: u64, generation: u64, n: u64) -> RemoteEvent {
    let end = TurnEnd::Failed(Arc::from("worker lost"));
    event(
        "s",
        turn,
        generation,
        n,
        RemoteEventKind::Bus(EventKind::TurnFinished(end)),
    )
}

fn resumed(generation: u64, n: u64) -> RemoteEvent {
    let kind = RemoteEventKind::Resumed {
        last_committed_turn: TurnId(1),
        previous_worker: None,
    };
    event("s", 1, generation, n, kind)
}

fn drain(fence: &mut GenerationFence) -> Vec<(u64, u64)> {
    std::iter::from_fn(|| fence.next())
        .map(|ev| (ev.generation(), ev.seq & 0xffff_ffff))
        .collect()
}

fn fence(owner: Option<u64>) -> GenerationFence {
    GenerationFence::new(SessionId::from("s"), owner)
}

#[test]
fn a_lost_resumed_is_made_good_by_asking_the_owner() {
    let mut f = fence(Some(1));
    assert_eq!(f.admit(token(1, 1, 5, "a")), Admitted::Done);
    // The new owner's first events, and its `resumed` never arrives.
    assert_eq!(f.admit(lost(2, 2, 1)), Admitted::Held);
    assert_eq!(f.admit(token(3, 2, 3, "b")), Admitted::Held);
    assert_eq!(drain(&mut f), vec![(1, 5)]);
    let asked = f.arrivals();
    f.owner_is(2, asked);
    assert_eq!(drain(&mut f), vec![(2, 1), (2, 3)]);
    assert!(!f.is_holding());
    // From now on generation 2 passes at once, generation 1 is superseded.
    assert_eq!(f.admit(token(3, 2, 4, "c")), Admitted::Done);
    assert_eq!(f.admit(token(1, 1, 6, "late")), Admitted::Done);
    assert_eq!(drain(&mut f), vec![(2, 4)]);
}

#[test]
fn a_forger_filling_the_hold_evicts_its_own_events_not_the_new_owners() {
    let mut f = fence(Some(1));
    for n in 0..(MAX_HELD as u64 + 50) {
        assert_eq!(f.admit(token(9, 99, n, "FORGED")), Admitted::Held);
    }
    // The genuine new owner: the failed end of the turn in flight, then its
    // announcement.
    assert_eq!(f.admit(lost(2, 2, 1)), Admitted::Held);
    assert_eq!(f.admit(resumed(2, 2)), Admitted::Done);
    assert_eq!(drain(&mut f), vec![(2, 1), (2, 2)]);
}

#[tokio::test(start_paused = true)]
async fn a_first_event_of_a_forged_generation_hides_nothing() {
    let mut f = fence(Some(1));
    assert_eq!(f.admit(token(2, 1000, 1, "FORGED")), Admitted::Held);
    assert_eq!(f.admit(token(2, 1, 7, "genuine")), Admitted::Done);
    assert_eq!(drain(&mut f), vec![(1, 7)]);
    // The owner's answers drop the forgery once it was held long enough
    // that a genuine new owner would have been confirmed.
    f.owner_is(1, f.arrivals());
    assert!(f.is_holding());
    tokio::time::advance(HELD_AT_MOST).await;
    f.owner_is(1, f.arrivals());
    assert!(!f.is_holding());
    assert_eq!(drain(&mut f), vec![]);
}

#[tokio::test(start_paused = true)]
async fn an_answer_drops_only_what_was_held_long_before_the_question() {
    let mut f = fence(Some(1));
    f.admit(token(2, 5, 1, "old"));
    tokio::time::advance(HELD_AT_MOST).await;
    let asked = f.arrivals();
    f.admit(token(2, 5, 2, "after"));
    f.owner_is(1, asked);
    assert!(f.is_holding(), "the event held after the question waits");
    f.owner_is(5, f.arrivals());
    assert_eq!(drain(&mut f), vec![(5, 2)]);
}

#[test]
fn without_anyone_to_ask_the_first_generation_is_trusted() {
    let mut f = fence(None);
    f.trust_first_held();
    assert_eq!(f.admit(token(4, 3, 1, "a")), Admitted::Done);
    assert_eq!(f.admit(token(4, 4, 1, "b")), Admitted::Held);
    assert_eq!(drain(&mut f), vec![(3, 1)]);
}

#[test]
fn other_sessions_second_ends_and_superseded_owners_are_dropped() {
    let mut f = fence(Some(2));
    let other = event("t", 1, 2, 1, RemoteEventKind::Bus(EventKind::TurnStarted));
    assert_eq!(f.admit(other), Admitted::Done);
    f.admit(lost(3, 2, 2));
    f.admit(lost(3, 2, 3));
    f.admit(token(3, 1, 9, "old owner, after the new one"));
    assert_eq!(drain(&mut f), vec![(2, 2)]);
}

/// Subscribed before the session was placed (nobody to ask yet): the first
/// owner's generation passes, a higher one waits for its confirmation.
#[test]
fn an_unknown_owner_lets_the_first_generation_pass_and_holds_the_rest() {
    let mut f = fence(None);
    assert_eq!(f.admit(token(1, 1000, 1, "FORGED")), Admitted::Held);
    assert_eq!(f.admit(token(1, 1, 1, "a")), Admitted::Done);
    assert_eq!(drain(&mut f), vec![(1, 1)]);
    assert_eq!(f.admit(lost(2, 2, 1)), Admitted::Held);
    f.owner_is(2, f.arrivals());
    assert_eq!(drain(&mut f), vec![(2, 1)]);
}

#[test]
fn asking_is_given_up_by_trusting_the_earliest_event_held() {
    let mut f = fence(None);
    f.admit(token(1, 3, 1, "a"));
    f.admit(token(1, 4, 1, "b"));
    f.trust_first_held();
    assert_eq!(drain(&mut f), vec![(3, 1)]);
    assert!(f.is_holding(), "generation 4 waits for its confirmation");
}

/// A superseded owner that has not noticed still answers (both answer, the
/// first reply wins): its answer must not drop the new owner's events.
#[test]
fn a_superseded_owners_answer_drops_nothing_of_the_new_one() {
    let mut f = fence(Some(1));
    f.admit(lost(2, 2, 1));
    f.admit(token(3, 2, 2, "b"));
    let asked = f.arrivals();
    f.owner_is(1, asked);
    f.owner_is(0, asked);
    assert!(f.is_holding());
    assert_eq!(drain(&mut f), vec![]);
    f.owner_is(2, f.arrivals());
    assert_eq!(drain(&mut f), vec![(2, 1), (2, 2)]);
}

#[test]
fn a_forged_copy_of_a_held_event_replaces_nothing() {
    let mut f = fence(Some(1));
    f.admit(lost(2, 2, 1));
    f.admit(token(2, 2, 1, "FORGED copy with the same seq"));
    f.admit(resumed(2, 2));
    let given: Vec<RemoteEvent> = std::iter::from_fn(|| f.next()).collect();
    assert!(matches!(
        given[0].kind,
        RemoteEventKind::Bus(EventKind::TurnFinished(_))
    ));
    assert_eq!(given.len(), 2);
}
