//! The per-session broadcast bus, with the turn fence.
//!
//! Everything a session does is an event on its bus: the user's speech and
//! transcripts (from STT actors), the agent's tokens, tool calls, usage and turn
//! ends (from the LLM actor), speakable segments (segmenter) and playback
//! progress (TTS). Any number of subscribers read it.
//!
//! The bus is also where the cancel guarantee lives. Publishing an event of the
//! agent's side names its turn, and a small mutex-guarded *fence* checks it:
//! once a turn is finished as cancelled or failed, every later event of that turn
//! — a token the stream task had in hand, a segment the segmenter was about to
//! flush, a tool result — is refused with [`PublishError::Stale`]. Because the
//! check and the broadcast happen under the same lock, "TurnFinished(Cancelled),
//! then nothing of that turn" holds for every subscriber, without trusting the
//! publishers to be fast. The fence also records what the turn published (its
//! text, tool calls, usage) and how much of it was played, which is exactly what
//! the interruption commit needs.
//!
//! Subscribers read through a bounded `tokio::sync::broadcast`. One that falls
//! more than the capacity behind is told how many events it missed
//! ([`BusRecvError::Lagged`], counted in `colloquy_bus_lagged_events_total`) and
//! can resynchronise the current turn's text with [`SessionBus::turn_text_since`].
//! Consumers that must not miss anything (the LLM actor for user input and tool
//! results, the tool executor for calls) are attached as lossless taps instead.

mod event;
mod subscriber;

pub use event::{BusEvent, EventKind, ToolOutput, TurnEnd};
pub use subscriber::{BusReceiver, BusRecvError};

use std::sync::{Arc, Mutex, MutexGuard};

use colloquy::llm::{ToolCall, Usage};
use tokio::sync::broadcast;

use crate::ids::{SessionId, TurnId};

/// Default number of events a subscriber may fall behind before it lags.
pub const DEFAULT_BUS_CAPACITY: usize = 64;

/// Why an event was not published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The turn was cancelled, failed, or superseded by a newer turn.
    #[error("turn {turn} is closed (current turn {current})")]
    Stale {
        /// The turn the event was for.
        turn: TurnId,
        /// The session's current turn.
        current: TurnId,
    },
    /// Only the LLM actor starts turns, with increasing ids.
    #[error("turn {turn} cannot start after turn {current}")]
    TurnOrder {
        /// The turn that was to start.
        turn: TurnId,
        /// The session's current turn.
        current: TurnId,
    },
}

/// What a turn published, returned when it finishes.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnRecord {
    /// The turn.
    pub turn: TurnId,
    /// All answer text published in the turn (every round).
    pub text: String,
    /// Characters of `text` that playback reported as heard, if a TTS reported.
    pub heard_chars: Option<usize>,
    /// Tool calls published in the turn.
    pub tool_calls: Vec<Arc<ToolCall>>,
    /// The last usage published in the turn.
    pub usage: Option<Usage>,
    /// Whether `text` stopped growing at the text cap.
    pub text_truncated: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Published events are accepted for the current turn.
    Open,
    /// Finished normally: only playback events (tail speech) are accepted.
    Finished,
    /// Cancelled or failed: nothing more of this turn.
    Aborted,
}

pub(crate) type TapFilter = fn(&EventKind) -> bool;
type TapFn = Box<dyn Fn(&BusEvent) + Send + Sync>;

struct Tap {
    id: u64,
    filter: TapFilter,
    deliver: TapFn,
}

struct Fence {
    seq: u64,
    turn: TurnId,
    phase: Phase,
    text: String,
    text_truncated: bool,
    heard_chars: Option<usize>,
    tool_calls: Vec<Arc<ToolCall>>,
    usage: Option<Usage>,
    taps: Vec<Tap>,
    next_tap: u64,
}

type CutHook = Arc<dyn Fn(TurnId) + Send + Sync>;

struct Inner {
    session: SessionId,
    tx: broadcast::Sender<BusEvent>,
    fence: Mutex<Fence>,
    max_turn_text: usize,
    cut_hooks: Mutex<Vec<(u64, CutHook)>>,
    next_hook: std::sync::atomic::AtomicU64,
}

/// Identifies a hook added with [`SessionBus::on_cut`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CutHookId(u64);

/// A session's event bus. Cheap to clone; all clones are the same bus.
#[derive(Clone)]
pub struct SessionBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBus")
            .field("session", &self.inner.session)
            .field("subscribers", &self.inner.tx.receiver_count())
            .finish()
    }
}

impl SessionBus {
    /// A bus whose subscribers may fall `capacity` events behind.
    pub fn new(session: SessionId, capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self {
            inner: Arc::new(Inner {
                session,
                tx,
                fence: Mutex::new(Fence {
                    seq: 0,
                    turn: TurnId(0),
                    phase: Phase::Finished,
                    text: String::new(),
                    text_truncated: false,
                    heard_chars: None,
                    tool_calls: Vec::new(),
                    usage: None,
                    taps: Vec::new(),
                    next_tap: 1,
                }),
                max_turn_text: 256 * 1024,
                cut_hooks: Mutex::new(Vec::new()),
                next_hook: std::sync::atomic::AtomicU64::new(1),
            }),
        }
    }

    /// The session this bus belongs to.
    pub fn session(&self) -> &SessionId {
        &self.inner.session
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> BusReceiver {
        BusReceiver::new(self.inner.tx.subscribe())
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// Whether `turn` is the current turn and still open.
    pub fn is_open(&self, turn: TurnId) -> bool {
        let f = self.lock();
        f.turn == turn && f.phase == Phase::Open
    }

    /// The latest turn and whether it is still streaming.
    pub fn current_turn(&self) -> (TurnId, bool) {
        let f = self.lock();
        (f.turn, f.phase == Phase::Open)
    }

    fn lock(&self) -> MutexGuard<'_, Fence> {
        // A panic while holding the lock cannot leave the fence half-updated in a
        // way that matters more than losing the bus, so poisoning is ignored.
        self.inner.fence.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send_locked(&self, f: &mut Fence, turn: TurnId, kind: EventKind) -> u64 {
        f.seq += 1;
        let event = BusEvent {
            session: self.inner.session.clone(),
            turn,
            seq: f.seq,
            kind,
        };
        for tap in &f.taps {
            if (tap.filter)(&event.kind) {
                (tap.deliver)(&event);
            }
        }
        // No subscriber is not an error: the event is simply not observed.
        let _ = self.inner.tx.send(event);
        f.seq
    }

    /// Publishes a user-side event (speech started, transcript). Never fenced.
    /// Returns the event's seq.
    pub fn publish_user(&self, kind: EventKind) -> u64 {
        let mut f = self.lock();
        let turn = f.turn;
        self.send_locked(&mut f, turn, kind)
    }

    /// Publishes an event of `turn`. Refused with [`PublishError::Stale`] when the
    /// turn is not the current one, was cancelled or failed, or (for anything but
    /// playback events) already finished.
    pub fn publish(&self, turn: TurnId, kind: EventKind) -> Result<u64, PublishError> {
        if kind.is_user_side() {
            return Ok(self.publish_user(kind));
        }
        let mut f = self.lock();
        let accepted = f.turn == turn
            && match f.phase {
                Phase::Open => !matches!(
                    kind,
                    EventKind::TurnStarted
                        | EventKind::TurnFinished(_)
                        | EventKind::Interrupted { .. }
                ),
                Phase::Finished => kind.is_playback(),
                Phase::Aborted => false,
            };
        if !accepted {
            metrics::counter!("colloquy_bus_stale_rejected_total").increment(1);
            return Err(PublishError::Stale {
                turn,
                current: f.turn,
            });
        }
        match &kind {
            EventKind::Token(t) => {
                if f.text.len() + t.len() <= self.inner.max_turn_text {
                    f.text.push_str(t);
                } else {
                    f.text_truncated = true;
                }
            }
            EventKind::ToolCall(c) => f.tool_calls.push(c.clone()),
            EventKind::Usage(u) => f.usage = Some(**u),
            EventKind::SpeechPlayed { chars } => {
                let chars = *chars;
                f.heard_chars = Some(f.heard_chars.map_or(chars, |h| h.max(chars)));
            }
            _ => {}
        }
        Ok(self.send_locked(&mut f, turn, kind))
    }

    /// Starts `turn` (must be newer than the current one) and publishes
    /// [`EventKind::TurnStarted`]. A still-open older turn is aborted silently;
    /// the LLM actor always finishes a turn before starting the next.
    pub fn begin_turn(&self, turn: TurnId) -> Result<u64, PublishError> {
        let mut f = self.lock();
        if turn <= f.turn {
            return Err(PublishError::TurnOrder {
                turn,
                current: f.turn,
            });
        }
        f.turn = turn;
        f.phase = Phase::Open;
        f.text.clear();
        f.text_truncated = false;
        f.heard_chars = None;
        f.tool_calls.clear();
        f.usage = None;
        Ok(self.send_locked(&mut f, turn, EventKind::TurnStarted))
    }

    /// Finishes `turn`: publishes `usage_if_missing(text)` when the turn published
    /// no usage and `end` is an abort, then [`EventKind::TurnFinished`], and
    /// closes the fence. Returns what the turn published.
    pub fn finish_turn(
        &self,
        turn: TurnId,
        end: TurnEnd,
        usage_if_missing: impl FnOnce(&str) -> Usage,
    ) -> Result<TurnRecord, PublishError> {
        let mut f = self.lock();
        if f.turn != turn || f.phase != Phase::Open {
            return Err(PublishError::Stale {
                turn,
                current: f.turn,
            });
        }
        if end.is_abort() && f.usage.is_none() {
            let estimate = usage_if_missing(&f.text);
            f.usage = Some(estimate);
            self.send_locked(&mut f, turn, EventKind::Usage(Arc::new(estimate)));
        }
        let abort = end.is_abort();
        f.phase = if abort {
            Phase::Aborted
        } else {
            Phase::Finished
        };
        self.send_locked(&mut f, turn, EventKind::TurnFinished(end));
        let record = TurnRecord {
            turn,
            text: f.text.clone(),
            heard_chars: f.heard_chars,
            tool_calls: f.tool_calls.clone(),
            usage: f.usage,
            text_truncated: f.text_truncated,
        };
        drop(f);
        if abort {
            self.run_cut_hooks(turn);
        }
        Ok(record)
    }

    /// Registers a hook called synchronously, in the thread that cancels, right
    /// after a turn is cut (cancelled, failed, or its speech interrupted) and its
    /// events are published. A TTS whose audio output can be stopped from any
    /// thread (an atomic flag its audio callback reads) goes silent this way
    /// without waiting for its task to be scheduled. The hook runs outside the
    /// bus lock; keep it short.
    pub fn on_cut(&self, hook: impl Fn(TurnId) + Send + Sync + 'static) -> CutHookId {
        let id = self
            .inner
            .next_hook
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .cut_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, Arc::new(hook)));
        CutHookId(id)
    }

    /// Removes a hook added with [`SessionBus::on_cut`].
    pub fn remove_cut_hook(&self, id: CutHookId) {
        self.inner
            .cut_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(h, _)| *h != id.0);
    }

    fn run_cut_hooks(&self, turn: TurnId) {
        let hooks: Vec<CutHook> = self
            .inner
            .cut_hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(_, h)| h.clone())
            .collect();
        for hook in hooks {
            hook(turn);
        }
    }

    /// Cuts the speech of `turn` after its generation finished normally, when a
    /// TTS reported playback (`SpeechPlayed`) that has not reached the end of the
    /// turn's text: publishes [`EventKind::Interrupted`] and closes the fence.
    /// Refused when the turn is not the current one, is still streaming, was
    /// already cut, never reported playback, or was played to the end.
    pub fn interrupt_playback(&self, turn: TurnId) -> Result<TurnRecord, PublishError> {
        let mut f = self.lock();
        let total = f.text.chars().count();
        let heard = match f.heard_chars {
            Some(h) if f.turn == turn && f.phase == Phase::Finished && h < total => h,
            _ => {
                return Err(PublishError::Stale {
                    turn,
                    current: f.turn,
                });
            }
        };
        f.phase = Phase::Aborted;
        self.send_locked(&mut f, turn, EventKind::Interrupted { heard_chars: heard });
        let record = TurnRecord {
            turn,
            text: f.text.clone(),
            heard_chars: Some(heard),
            tool_calls: f.tool_calls.clone(),
            usage: f.usage,
            text_truncated: f.text_truncated,
        };
        drop(f);
        self.run_cut_hooks(turn);
        Ok(record)
    }

    /// Catch-up for a lagging subscriber: the current turn's text after the first
    /// `consumed_chars` characters, with the seq of the last event it includes
    /// (skip token events up to that seq), or `None` when `turn` is no longer
    /// current or was aborted.
    pub fn turn_text_since(&self, turn: TurnId, consumed_chars: usize) -> Option<(String, u64)> {
        let f = self.lock();
        if f.turn != turn || f.phase == Phase::Aborted {
            return None;
        }
        Some((f.text.chars().skip(consumed_chars).collect(), f.seq))
    }

    /// Attaches a lossless, synchronous consumer for the kinds `filter` accepts.
    /// `deliver` runs under the bus lock: it must only hand the event off (a
    /// ractor `cast`), never block or publish.
    pub(crate) fn add_tap(
        &self,
        filter: TapFilter,
        deliver: impl Fn(&BusEvent) + Send + Sync + 'static,
    ) -> u64 {
        let mut f = self.lock();
        let id = f.next_tap;
        f.next_tap += 1;
        f.taps.push(Tap {
            id,
            filter,
            deliver: Box::new(deliver),
        });
        id
    }

    /// Detaches a tap.
    pub(crate) fn remove_tap(&self, id: u64) {
        self.lock().taps.retain(|t| t.id != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(s: &str) -> EventKind {
        EventKind::Token(Arc::from(s))
    }

    #[test]
    fn fence_refuses_everything_of_a_cancelled_turn() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let mut rx = bus.subscribe();
        let t1 = TurnId(1);
        bus.begin_turn(t1).unwrap();
        bus.publish(t1, token("Hello ")).unwrap();
        bus.publish(t1, EventKind::SpeechPlayed { chars: 3 })
            .unwrap();
        let record = bus
            .finish_turn(t1, TurnEnd::Cancelled, |text| {
                Usage::estimate(40, text.chars().count())
            })
            .unwrap();
        assert_eq!(record.text, "Hello ");
        assert_eq!(record.heard_chars, Some(3));
        assert!(record.usage.unwrap().estimated);
        for kind in [
            token("late"),
            EventKind::Speakable {
                text: Arc::from("late"),
                last: false,
            },
            EventKind::SpeechPlayed { chars: 6 },
        ] {
            assert!(matches!(
                bus.publish(t1, kind),
                Err(PublishError::Stale { .. })
            ));
        }
        let kinds: Vec<EventKind> = std::iter::from_fn(|| rx.try_recv().ok().flatten())
            .map(|e| e.kind)
            .collect();
        assert_eq!(kinds.len(), 5, "{kinds:?}"); // started, token, played, usage, finished
        assert_eq!(
            kinds.last(),
            Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
        );
    }

    #[test]
    fn finished_turn_still_accepts_its_tail_speech_only() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let t = TurnId(1);
        bus.begin_turn(t).unwrap();
        bus.finish_turn(t, TurnEnd::Stop, |_| {
            unreachable!("no estimate for a normal end")
        })
        .unwrap();
        assert!(
            bus.publish(
                t,
                EventKind::Speakable {
                    text: Arc::from("tail."),
                    last: false
                }
            )
            .is_ok()
        );
        assert!(bus.publish(t, token("x")).is_err());
        bus.begin_turn(TurnId(2)).unwrap();
        assert!(
            bus.publish(
                t,
                EventKind::Speakable {
                    text: Arc::from("old"),
                    last: false
                }
            )
            .is_err()
        );
        assert!(bus.begin_turn(TurnId(2)).is_err(), "turn ids only increase");
    }

    #[test]
    fn playback_of_a_finished_turn_can_be_cut_once() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let cuts = Arc::new(Mutex::new(Vec::new()));
        let seen = cuts.clone();
        bus.on_cut(move |turn| seen.lock().unwrap().push(turn));
        let t = TurnId(1);
        bus.begin_turn(t).unwrap();
        bus.publish(t, token("Hello world")).unwrap();
        assert!(
            bus.interrupt_playback(t).is_err(),
            "still streaming: cancel, not cut"
        );
        bus.finish_turn(t, TurnEnd::Stop, |_| Usage::default())
            .unwrap();
        assert!(
            bus.interrupt_playback(t).is_err(),
            "no playback reported: nothing known to cut"
        );
        bus.publish(t, EventKind::SpeechPlayed { chars: 5 })
            .unwrap();
        let record = bus.interrupt_playback(t).unwrap();
        assert_eq!(record.heard_chars, Some(5));
        assert_eq!(
            *cuts.lock().unwrap(),
            vec![t],
            "hook ran before interrupt_playback returned"
        );
        assert!(
            bus.publish(
                t,
                EventKind::Speakable {
                    text: Arc::from(" world"),
                    last: false
                }
            )
            .is_err()
        );
        assert!(bus.interrupt_playback(t).is_err(), "once");
        // Played to the end: nothing to cut.
        let t2 = TurnId(2);
        bus.begin_turn(t2).unwrap();
        bus.publish(t2, token("Hi")).unwrap();
        bus.finish_turn(t2, TurnEnd::Stop, |_| Usage::default())
            .unwrap();
        bus.publish(t2, EventKind::SpeechPlayed { chars: 2 })
            .unwrap();
        assert!(bus.interrupt_playback(t2).is_err());
    }

    #[test]
    fn seq_increases_across_user_and_agent_events() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let a = bus.publish_user(EventKind::UserSpeechStarted);
        let b = bus.begin_turn(TurnId(1)).unwrap();
        let c = bus.publish(TurnId(1), token("x")).unwrap();
        assert_eq!((a, b, c), (1, 2, 3));
        assert_eq!(
            bus.turn_text_since(TurnId(1), 0),
            Some(("x".to_string(), 3))
        );
    }
}
