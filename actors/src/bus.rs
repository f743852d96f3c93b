//! The per-session broadcast bus, and the turn ledger behind it.
//!
//! Everything a session does is an event on its bus: the user's speech and
//! transcripts (from STT actors), the agent's tokens, tool calls, usage and turn
//! ends (from the LLM actor), speakable segments (segmenter) and playback
//! progress (TTS). Any number of subscribers read it.
//!
//! The bus is also where the cancel guarantee lives. Every event of the agent's
//! side names its turn, and the turn ledger (`bus/ledger.rs`) behind one mutex checks
//! it: once a turn is finished as cancelled or failed, every later event of that
//! turn — a token the stream task had in hand, a segment the segmenter was about
//! to flush, a tool result — is refused with [`PublishError::Stale`]. Because the
//! check and the broadcast happen under the same lock, "TurnFinished(Cancelled),
//! then nothing of that turn" holds for every subscriber, without trusting the
//! publishers to be fast. The ledger also owns the turn's life (begin, rounds,
//! cut, finish) and keeps what each round published until the LLM actor commits
//! it; those controls are crate-private. Embedders publish their own events —
//! user speech and transcripts, tool results, speakable segments, playback —
//! and subscribe.
//!
//! Subscribers read through a bounded `tokio::sync::broadcast`. One that falls
//! more than the capacity behind is told how many events it missed
//! ([`BusRecvError::Lagged`], counted in `colloquy_bus_lagged_events_total`) and
//! can resynchronise the current turn's text with [`SessionBus::turn_text_since`].
//! Consumers that must not miss anything (the LLM actor for user input and tool
//! results, the tool executor for calls) are attached as lossless taps instead.
//! When the session stops, the bus closes: subscribers get
//! [`BusRecvError::Closed`] once they have drained it.

mod event;
pub(crate) mod ledger;
mod subscriber;

pub use event::{BusEvent, EventKind, SpeculationOutcome, ToolOutput, TurnEnd};
pub use subscriber::{BusReceiver, BusRecvError};

use std::sync::{Arc, Mutex, MutexGuard};

use crate::ids::{SessionId, TurnId};
use ledger::{Closed, Cut, Ledger, LedgerError, Signal, TapFilter};

use crate::task::AbortOnDrop;
use crate::turn_taking::InterruptionPolicy;

/// Default number of events a subscriber may fall behind before it lags.
pub const DEFAULT_BUS_CAPACITY: usize = 64;

/// Default cap on the answer text a turn keeps for its commit (256 KiB).
pub const DEFAULT_MAX_TURN_TEXT: usize = 256 * 1024;

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
    /// Only the runtime publishes this kind of event (tokens, tool calls,
    /// usage, turn starts and ends).
    #[error("only the runtime publishes {0} events")]
    NotAllowed(&'static str),
    /// A tool result for a call the turn never made.
    #[error("turn has no tool call {0:?}")]
    UnknownCall(String),
    /// A second tool result for the same call.
    #[error("tool call {0:?} is already answered")]
    AlreadyAnswered(String),
    /// The session stopped.
    #[error("the session's bus is closed")]
    Closed,
}

type Hook = Arc<dyn Fn(TurnId) + Send + Sync>;

/// Which transition a hook follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HookKind {
    Cut,
    Pause,
    Resume,
}

struct Inner {
    session: SessionId,
    ledger: Mutex<Ledger>,
    hooks: Mutex<Vec<(u64, HookKind, Hook)>>,
    next_hook: std::sync::atomic::AtomicU64,
    /// Wakes the turn-taking timer when a deadline may have changed.
    timer: tokio::sync::Notify,
}

/// Identifies a hook added with [`SessionBus::on_cut`], [`SessionBus::on_pause`]
/// or [`SessionBus::on_resume`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CutHookId(u64);

/// Another name for [`CutHookId`]: every playback hook has one.
pub type HookId = CutHookId;

/// A session's event bus. Cheap to clone; all clones are the same bus.
#[derive(Clone)]
pub struct SessionBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SessionBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionBus")
            .field("session", &self.inner.session)
            .field("subscribers", &self.subscriber_count())
            .finish()
    }
}

impl SessionBus {
    /// A bus whose subscribers may fall `capacity` events behind.
    pub fn new(session: SessionId, capacity: usize) -> Self {
        Self::with_text_cap(session, capacity, DEFAULT_MAX_TURN_TEXT)
    }

    /// Like [`SessionBus::new`], keeping at most `max_turn_text` bytes of a
    /// turn's answer for its commit (a longer answer is committed cut and
    /// marked `truncated`).
    pub fn with_text_cap(session: SessionId, capacity: usize, max_turn_text: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                ledger: Mutex::new(Ledger::new(session.clone(), capacity, max_turn_text)),
                session,
                hooks: Mutex::new(Vec::new()),
                next_hook: std::sync::atomic::AtomicU64::new(1),
                timer: tokio::sync::Notify::new(),
            }),
        }
    }

    /// The session this bus belongs to.
    pub fn session(&self) -> &SessionId {
        &self.inner.session
    }

    /// A new subscriber, receiving events published from now on.
    pub fn subscribe(&self) -> BusReceiver {
        BusReceiver::new(self.lock().subscribe())
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().subscriber_count()
    }

    /// Whether `turn` is the current turn and still generating.
    pub fn is_open(&self, turn: TurnId) -> bool {
        self.lock().is_open(turn)
    }

    /// The latest turn and whether it is still generating.
    pub fn current_turn(&self) -> (TurnId, bool) {
        let l = self.lock();
        (l.turn(), l.is_open(l.turn()))
    }

    /// Whether the session stopped and the bus is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().is_closed()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding the lock cannot leave the ledger half-updated in
        // a way that matters more than losing the bus, so poisoning is ignored.
        self.inner.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes a user-side event (speech started or ended, a transcript);
    /// never fenced. The session's interruption policy acts on it here, before
    /// this returns: in immediate mode `UserSpeechStarted` cuts the agent's
    /// turn (or its speech); in confirmed mode speech pauses it after
    /// `min_pause`, a confirming transcript cuts it, a backchannel or silence
    /// resumes it (see [`turn_taking`](crate::turn_taking)). Returns the
    /// event's seq.
    pub fn publish_user(&self, kind: EventKind) -> Result<u64, PublishError> {
        if !kind.is_user_side() {
            return Err(PublishError::NotAllowed(kind.name()));
        }
        let (seq, signal) = {
            let mut ledger = self.lock();
            let before = ledger.next_deadline();
            let out = ledger.publish_user(kind, std::time::Instant::now())?;
            if ledger.next_deadline() != before {
                self.inner.timer.notify_one();
            }
            out
        };
        if let Some(signal) = signal {
            self.after(signal);
        }
        Ok(seq)
    }

    /// Publishes an embedder's event of `turn`: a tool result, a speakable
    /// segment or playback progress (user-side events go to
    /// [`SessionBus::publish_user`]). Refused with [`PublishError::Stale`] when
    /// the turn is not the current one, was cut, or (for tool results) already
    /// finished; the runtime's own kinds are [`PublishError::NotAllowed`].
    pub fn publish(&self, turn: TurnId, kind: EventKind) -> Result<u64, PublishError> {
        if kind.is_user_side() {
            return self.publish_user(kind);
        }
        if !kind.is_embedder_side() {
            return Err(PublishError::NotAllowed(kind.name()));
        }
        self.lock().publish(turn, kind)
    }

    /// Publishes an event of the agent's side (stream task, tool executor).
    pub(crate) fn publish_agent(&self, turn: TurnId, kind: EventKind) -> Result<u64, PublishError> {
        self.lock().publish(turn, kind)
    }

    /// Starts the next turn (publishes `TurnStarted`). A new reply over the
    /// last one's speech still playing cuts that speech first (`Interrupted`,
    /// hooks): it is refused with `PendingCommit` until the actor has trimmed
    /// the last turn to what was heard.
    pub(crate) fn begin_turn(&self) -> Result<TurnId, LedgerError> {
        let cut = {
            let mut ledger = self.lock();
            if !ledger.speech_playing() {
                return ledger.begin();
            }
            ledger.cut(None, TurnEnd::Cancelled)
        };
        if let Some(cut) = cut {
            self.after_cut(cut);
        }
        Err(LedgerError::PendingCommit)
    }

    /// Closes `turn` with the end its stream reached; `false` when it was cut
    /// first (its record is then waiting in the ledger).
    pub(crate) fn finish_turn(&self, turn: TurnId, end: TurnEnd) -> bool {
        let abort = end.is_abort();
        let closed = self.lock().finish(turn, end);
        if closed && abort {
            self.run_cut_hooks(turn);
        }
        closed
    }

    /// Cuts `target` (default: the current turn) in one critical section: a
    /// turn still generating is closed with `end` (stream aborted, usage
    /// reported, `TurnFinished` published); the speech of a finished turn is
    /// interrupted (`Interrupted` published). Cut hooks run before this returns.
    pub(crate) fn cut(&self, target: Option<TurnId>, end: TurnEnd) -> Option<Cut> {
        let cut = self.lock().cut(target, end)?;
        self.after_cut(cut);
        Some(cut)
    }

    fn after_cut(&self, cut: Cut) {
        self.after(Signal::Cut(cut));
    }

    /// Counts a transition and runs its hooks (outside the ledger lock).
    fn after(&self, signal: Signal) {
        let (kind, turn) = match signal {
            Signal::Cut(Cut::Generation(t)) => {
                metrics::counter!("colloquy_turn_cuts_total", "what" => "generation").increment(1);
                (HookKind::Cut, t)
            }
            Signal::Cut(Cut::Speech(t)) => {
                metrics::counter!("colloquy_turn_cuts_total", "what" => "speech").increment(1);
                (HookKind::Cut, t)
            }
            Signal::Paused(t) => {
                metrics::counter!("colloquy_playback_pauses_total").increment(1);
                (HookKind::Pause, t)
            }
            Signal::Resumed(t) => {
                metrics::counter!("colloquy_playback_resumes_total").increment(1);
                (HookKind::Resume, t)
            }
        };
        self.run_hooks(kind, turn);
    }

    /// Starts the task that gives the turn-taking rules their time: it sleeps
    /// until the ledger's next deadline (a pause after `min_pause` of speech,
    /// a resume after `resume_timeout`) and applies it. Ends with the bus.
    pub(crate) fn spawn_timer(&self) -> AbortOnDrop {
        let bus = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let next = {
                    let ledger = bus.lock();
                    if ledger.is_closed() {
                        return;
                    }
                    ledger.next_deadline()
                };
                match next {
                    Some(at) => {
                        tokio::select! {
                            () = tokio::time::sleep_until(at.into()) => {
                                let signal = bus.lock().on_timer(std::time::Instant::now());
                                if let Some(signal) = signal {
                                    bus.after(signal);
                                }
                            }
                            () = bus.inner.timer.notified() => {}
                        }
                    }
                    None => bus.inner.timer.notified().await,
                }
            }
        }))
    }

    /// Takes the record of a closed turn waiting for its commit.
    pub(crate) fn take_closed(&self) -> Option<Closed> {
        self.lock().take_closed()
    }

    /// Closes the bus: the session stopped.
    pub(crate) fn close(&self) {
        self.lock().close_bus();
        self.inner.timer.notify_one();
    }

    /// Sets the interruption policy applied to user events.
    pub(crate) fn set_policy(&self, policy: InterruptionPolicy) {
        self.lock().policy = policy;
        self.inner.timer.notify_one();
    }

    /// Registers a hook called synchronously, in the thread that cuts, right
    /// after a turn is cut (cancelled, failed, or its speech interrupted) and its
    /// events are published. A TTS whose audio output can be stopped from any
    /// thread (an atomic flag its audio callback reads) goes silent this way
    /// without waiting for its task to be scheduled. The hook runs outside the
    /// bus lock; keep it short.
    pub fn on_cut(&self, hook: impl Fn(TurnId) + Send + Sync + 'static) -> CutHookId {
        self.add_hook(HookKind::Cut, Arc::new(hook))
    }

    /// Registers a hook called synchronously right after the agent's speech is
    /// paused (`PlaybackPaused` published), in the thread that decided it.
    pub fn on_pause(&self, hook: impl Fn(TurnId) + Send + Sync + 'static) -> HookId {
        self.add_hook(HookKind::Pause, Arc::new(hook))
    }

    /// Registers a hook called synchronously right after paused speech is
    /// resumed (`PlaybackResumed` published).
    pub fn on_resume(&self, hook: impl Fn(TurnId) + Send + Sync + 'static) -> HookId {
        self.add_hook(HookKind::Resume, Arc::new(hook))
    }

    fn add_hook(&self, kind: HookKind, hook: Hook) -> HookId {
        let id = self
            .inner
            .next_hook
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((id, kind, hook));
        CutHookId(id)
    }

    /// Removes a hook added with [`SessionBus::on_cut`], [`SessionBus::on_pause`]
    /// or [`SessionBus::on_resume`].
    pub fn remove_cut_hook(&self, id: CutHookId) {
        self.inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(h, _, _)| *h != id.0);
    }

    fn run_hooks(&self, kind: HookKind, turn: TurnId) {
        let hooks: Vec<Hook> = self
            .inner
            .hooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, k, _)| *k == kind)
            .map(|(_, _, h)| h.clone())
            .collect();
        for hook in hooks {
            hook(turn);
        }
    }

    fn run_cut_hooks(&self, turn: TurnId) {
        self.run_hooks(HookKind::Cut, turn);
    }

    /// Catch-up for a lagging subscriber: the current turn's text after the first
    /// `consumed_chars` characters, with the seq of the last event it includes
    /// (skip token events up to that seq), or `None` when `turn` is no longer
    /// current or was cut.
    pub fn turn_text_since(&self, turn: TurnId, consumed_chars: usize) -> Option<(String, u64)> {
        self.lock().text_since(turn, consumed_chars)
    }

    /// Attaches a lossless, synchronous consumer for the kinds `filter` accepts.
    /// `deliver` runs under the bus lock: it must only hand the event off (a
    /// ractor `cast`), never block or publish.
    pub(crate) fn add_tap(
        &self,
        filter: TapFilter,
        deliver: impl Fn(&BusEvent) + Send + Sync + 'static,
    ) -> u64 {
        self.lock().add_tap(filter, Box::new(deliver))
    }

    /// Detaches a tap.
    pub(crate) fn remove_tap(&self, id: u64) {
        self.lock().remove_tap(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy::llm::{ToolCall, Usage};

    fn token(s: &str) -> EventKind {
        EventKind::Token(Arc::from(s))
    }

    fn speakable(s: &str) -> EventKind {
        EventKind::Speakable {
            text: Arc::from(s),
            last: false,
        }
    }

    /// Begins a turn and opens one round with no task.
    fn begin(bus: &SessionBus, prompt_bytes: usize) -> TurnId {
        let t = bus.begin_turn().unwrap();
        bus.lock()
            .open_round(t, prompt_bytes, || (dummy_abort(), ()))
            .unwrap();
        t
    }

    fn dummy_abort() -> tokio::task::AbortHandle {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async { tokio::spawn(async {}).abort_handle() })
    }

    fn kinds(rx: &mut BusReceiver) -> Vec<EventKind> {
        std::iter::from_fn(|| rx.try_recv().ok().flatten())
            .map(|e| e.kind)
            .collect()
    }

    #[test]
    fn fence_refuses_everything_of_a_cancelled_turn() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let mut rx = bus.subscribe();
        let t1 = begin(&bus, 40);
        bus.publish_agent(t1, token("Hello ")).unwrap();
        bus.publish(t1, EventKind::SpeechPlayed { chars: 3 })
            .unwrap();
        assert_eq!(bus.cut(None, TurnEnd::Cancelled), Some(Cut::Generation(t1)));
        let Some(Closed::Ended { record, end, .. }) = bus.take_closed() else {
            panic!("a closed record waits for the actor")
        };
        assert_eq!(
            (record.rounds[0].text.as_str(), record.heard_chars),
            ("Hello ", Some(3))
        );
        assert_eq!(end, TurnEnd::Cancelled);
        assert!(record.rounds[0].usage.unwrap().estimated);
        for kind in [
            token("late"),
            speakable("late"),
            EventKind::SpeechPlayed { chars: 6 },
        ] {
            assert!(matches!(
                bus.publish_agent(t1, kind),
                Err(PublishError::Stale { .. })
            ));
        }
        let kinds = kinds(&mut rx);
        assert_eq!(kinds.len(), 5, "{kinds:?}"); // started, token, played, usage, finished
        assert_eq!(
            kinds.last(),
            Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
        );
        assert_eq!(bus.cut(None, TurnEnd::Cancelled), None, "once");
    }

    #[test]
    fn embedders_cannot_publish_the_runtimes_events() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let t = begin(&bus, 0);
        for kind in [
            token("x"),
            EventKind::TurnStarted,
            EventKind::TurnFinished(TurnEnd::Stop),
        ] {
            assert!(matches!(
                bus.publish(t, kind),
                Err(PublishError::NotAllowed(_))
            ));
        }
        assert!(matches!(
            bus.publish_user(token("x")),
            Err(PublishError::NotAllowed("token"))
        ));
    }

    #[test]
    fn usage_is_per_request_and_estimated_for_every_round_without_one() {
        let bus = SessionBus::new(SessionId::new("s"), 32);
        let mut rx = bus.subscribe();
        let t = begin(&bus, 400);
        let reported = Usage {
            prompt_tokens: 100,
            completion_tokens: 3,
            total_tokens: 103,
            ..Usage::default()
        };
        bus.publish_agent(t, EventKind::Usage(Arc::new(reported)))
            .unwrap();
        bus.lock()
            .open_round(t, 800, || (dummy_abort(), ()))
            .unwrap();
        bus.publish_agent(t, token("It is")).unwrap();
        bus.cut(None, TurnEnd::Cancelled).unwrap();
        let usages: Vec<Usage> = kinds(&mut rx)
            .into_iter()
            .filter_map(|k| match k {
                EventKind::Usage(u) => Some(*u),
                _ => None,
            })
            .collect();
        assert_eq!(usages.len(), 2, "{usages:?}");
        assert_eq!(usages[0], reported);
        assert_eq!(usages[1], Usage::estimate(800, 5));
    }

    #[test]
    fn tool_results_are_recorded_once_per_known_call() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let t = begin(&bus, 0);
        let call = ToolCall {
            index: 0,
            id: "c1".into(),
            name: "f".into(),
            arguments: "{}".into(),
            valid_json: true,
        };
        bus.publish_agent(t, EventKind::ToolCall(Arc::new(call)))
            .unwrap();
        assert!(!bus.lock().last_round_answered(t));
        let (turn, calls) = bus.lock().unanswered_calls().unwrap();
        assert_eq!((turn, calls[0].id.as_str()), (t, "c1"));
        let out = |id: &str| {
            EventKind::ToolResult(Arc::new(ToolOutput {
                call_id: id.into(),
                name: "f".into(),
                output: "ok".into(),
                is_error: false,
            }))
        };
        assert!(matches!(
            bus.publish(t, out("zz")),
            Err(PublishError::UnknownCall(_))
        ));
        bus.publish(t, out("c1")).unwrap();
        assert!(matches!(
            bus.publish(t, out("c1")),
            Err(PublishError::AlreadyAnswered(_))
        ));
        assert!(bus.lock().last_round_answered(t));
        assert_eq!(bus.lock().unanswered_calls(), None);
    }

    #[test]
    fn finished_turn_still_accepts_its_tail_speech_only() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let t = begin(&bus, 0);
        assert!(bus.finish_turn(t, TurnEnd::Stop));
        assert!(bus.publish(t, speakable("tail.")).is_ok());
        assert!(bus.publish_agent(t, token("x")).is_err());
        assert_eq!(
            bus.begin_turn(),
            Err(LedgerError::PendingCommit),
            "no new turn while a closed one waits for its commit"
        );
        assert!(bus.take_closed().is_some());
        let t2 = bus.begin_turn().unwrap();
        assert_eq!(t2, t.next());
        assert!(bus.publish(t, speakable("old")).is_err());
    }

    #[test]
    fn a_cut_cannot_be_lost_to_a_racing_finish() {
        // The actor's normal finish lands first: the caller's cut then cuts the
        // speech instead (when playback is behind), never nothing.
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let t = begin(&bus, 0);
        bus.publish_agent(t, token("Hello world")).unwrap();
        bus.publish(t, EventKind::SpeechPlayed { chars: 5 })
            .unwrap();
        assert!(bus.finish_turn(t, TurnEnd::Stop));
        assert_eq!(bus.cut(None, TurnEnd::Cancelled), Some(Cut::Speech(t)));
        // The actor had not committed yet: its record carries the cut.
        let Some(Closed::Ended {
            record, speech_cut, ..
        }) = bus.take_closed()
        else {
            panic!()
        };
        assert!(speech_cut);
        assert_eq!(record.heard_chars, Some(5));
    }

    #[test]
    fn playback_of_a_finished_turn_can_be_cut_once() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let cuts = Arc::new(Mutex::new(Vec::new()));
        let seen = cuts.clone();
        bus.on_cut(move |turn| seen.lock().unwrap().push(turn));
        let t = begin(&bus, 0);
        bus.publish_agent(t, token("Hello world")).unwrap();
        bus.finish_turn(t, TurnEnd::Stop);
        bus.take_closed();
        assert_eq!(
            bus.cut(Some(t), TurnEnd::Cancelled),
            None,
            "no playback reported: nothing known to cut"
        );
        bus.publish(t, EventKind::SpeechPlayed { chars: 5 })
            .unwrap();
        assert_eq!(bus.cut(Some(t), TurnEnd::Cancelled), Some(Cut::Speech(t)));
        assert_eq!(
            *cuts.lock().unwrap(),
            vec![t],
            "hook ran before cut returned"
        );
        assert_eq!(
            bus.take_closed(),
            Some(Closed::SpeechCut {
                turn: t,
                heard_chars: 5
            })
        );
        assert!(bus.publish(t, speakable(" world")).is_err());
        assert_eq!(bus.cut(Some(t), TurnEnd::Cancelled), None, "once");
        // Played to the end: nothing to cut.
        let t2 = begin(&bus, 0);
        bus.publish_agent(t2, token("Hi")).unwrap();
        bus.finish_turn(t2, TurnEnd::Stop);
        bus.publish(t2, EventKind::SpeechPlayed { chars: 2 })
            .unwrap();
        assert_eq!(bus.cut(Some(t2), TurnEnd::Cancelled), None);
    }

    #[test]
    fn speech_started_cuts_in_the_same_critical_section() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        bus.set_policy(InterruptionPolicy::immediate());
        let mut rx = bus.subscribe();
        let t = begin(&bus, 0);
        bus.publish_user(EventKind::UserSpeechStarted).unwrap();
        let kinds = kinds(&mut rx);
        assert_eq!(kinds[1], EventKind::UserSpeechStarted);
        assert_eq!(
            kinds.last(),
            Some(&EventKind::TurnFinished(TurnEnd::Cancelled))
        );
        assert!(!bus.is_open(t));
        bus.take_closed();
        bus.set_policy(InterruptionPolicy::default());
        let t2 = begin(&bus, 0);
        bus.publish_user(EventKind::UserSpeechStarted).unwrap();
        assert!(bus.is_open(t2), "confirmed mode: speech alone does not cut");
        assert!(bus.lock().next_deadline().is_some(), "a pause is scheduled");
    }

    #[test]
    fn closed_bus_ends_subscriptions_and_refuses_events() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let mut rx = bus.subscribe();
        bus.publish_user(EventKind::UserSpeechStarted).unwrap();
        bus.close();
        assert!(
            rx.try_recv().unwrap().is_some(),
            "buffered events are still read"
        );
        assert_eq!(rx.try_recv(), Err(BusRecvError::Closed));
        assert_eq!(bus.subscribe().try_recv(), Err(BusRecvError::Closed));
        assert_eq!(
            bus.publish_user(EventKind::UserSpeechStarted),
            Err(PublishError::Closed)
        );
        assert_eq!(bus.begin_turn(), Err(LedgerError::BusClosed));
    }

    #[test]
    fn seq_increases_across_user_and_agent_events() {
        let bus = SessionBus::new(SessionId::new("s"), 16);
        let a = bus.publish_user(EventKind::UserSpeechStarted).unwrap();
        let t = begin(&bus, 0);
        let c = bus.publish_agent(t, token("x")).unwrap();
        assert_eq!((a, c), (1, 3));
        assert_eq!(bus.turn_text_since(t, 0), Some(("x".to_string(), 3)));
    }
}
