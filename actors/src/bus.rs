//! The per-session broadcast bus, and the turn ledger behind it.
//!
//! Everything a session does is an event on its bus: the user's speech and
//! transcripts (from STT actors), the agent's tokens, tool calls, usage and turn
//! ends (from the LLM actor), speakable segments (cut from the tokens in the
//! ledger, for TTS) and playback progress (TTS). Any number of subscribers
//! read it.
//!
//! The bus is also where the cancel guarantee lives. Every event of the agent's
//! side names its turn, and the turn ledger (`bus/ledger.rs`) behind one mutex checks
//! it: once a turn is finished as cancelled or failed, every later event of that
//! turn — a token the stream task had in hand, a tool result, a playback
//! report — is refused with [`PublishError::Stale`]. The check is
//! made under the ledger's lock, and what it lets through is delivered in the
//! order the critical sections decided it (`bus/delivery.rs`: hand over hand,
//! after the ledger's lock is released), so "TurnFinished(Cancelled), then
//! nothing of that turn" holds for every subscriber and tap, without trusting
//! the publishers to be fast — and no tap, broadcast send or subscriber
//! wake-up runs inside the ledger's critical section. The ledger also owns the turn's life (begin, rounds,
//! cut, finish) and keeps what each round published until the LLM actor commits
//! it; those controls are crate-private. Embedders publish their own events —
//! user speech and transcripts, tool results, playback — and subscribe.
//!
//! Subscribers read through a bounded `tokio::sync::broadcast`. One that falls
//! more than the capacity behind is told how many events it missed
//! ([`BusRecvError::Lagged`], counted in `colloquy_bus_lagged_events_total`) and
//! can resynchronise the current turn's text with [`SessionBus::turn_text_since`].
//! Consumers that must not miss anything (the LLM actor for user input and tool
//! results, the tool executor for calls) are attached as lossless taps instead.
//! When the session stops, the bus closes: subscribers get
//! [`BusRecvError::Closed`] once they have drained it.

mod controls;
mod delivery;
pub(crate) mod event;
pub(crate) mod ledger;
mod speaking;
mod subscriber;

#[cfg(feature = "nats")]
pub(crate) use event::EventKindName;
pub use event::{
    AudioStage, BusEvent, EventKind, HeardSpan, SpeculationOutcome, ToolOutput, TurnEnd,
};
pub use speaking::Speaking;
pub use subscriber::{BusReceiver, BusRecvError};

use std::sync::{Arc, Mutex};

use crate::ids::{SessionId, TurnId};
use delivery::{Delivery, LedgerGuard, Pending};
use ledger::{Cut, Ledger, Signal, TapFilter};

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
    /// The taps and the broadcast, fed from the ledger's outbox outside its
    /// lock (`bus/delivery.rs`).
    delivery: Mutex<Delivery>,
    /// Batches the ledger decided, waiting for delivery.
    pending: Mutex<Pending>,
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
        let ledger = Ledger::new(session.clone(), max_turn_text);
        Self {
            inner: Arc::new(Inner {
                delivery: Mutex::new(Delivery::new(capacity, ledger.speaking_state())),
                ledger: Mutex::new(ledger),
                pending: Mutex::new(Pending::default()),
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
        BusReceiver::new(self.lock().into_delivery().subscribe())
    }

    /// Number of live subscribers.
    pub fn subscriber_count(&self) -> usize {
        self.lock().into_delivery().subscriber_count()
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

    /// Whether the agent is generating or speaking (a reply's speech counts
    /// until playback reports its end or it is cut): "has the agent finished
    /// speaking" without turn numbers.
    pub fn speaking(&self) -> Speaking {
        self.lock().speaking()
    }

    /// Whether the current turn may be cut by the user's voice or a new
    /// message (false for a `say` that does not allow interruptions).
    pub(crate) fn interruptible(&self) -> bool {
        self.lock().playing_is_interruptible()
    }

    /// Whether a finished reply's speech is still playing.
    pub(crate) fn speech_playing(&self) -> bool {
        self.lock().speech_playing()
    }

    /// Whether `turn` is the current turn and its speech is still playing.
    pub(crate) fn speech_playing_for(&self, turn: TurnId) -> bool {
        let ledger = self.lock();
        ledger.turn() == turn && ledger.speech_playing()
    }

    /// Whether the session stopped and the bus is closed.
    pub fn is_closed(&self) -> bool {
        self.lock().is_closed()
    }

    /// The ledger, behind its one lock. Private to the bus: every operation
    /// outside it is a method that is one critical section (`controls.rs`).
    /// What the section publishes is delivered to taps and subscribers when
    /// the guard drops, after the ledger's lock is released
    /// (`bus/delivery.rs`).
    fn lock(&self) -> LedgerGuard<'_> {
        LedgerGuard::lock(
            &self.inner.ledger,
            &self.inner.pending,
            &self.inner.delivery,
        )
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

    /// Publishes an embedder's event of `turn`: a tool result or playback
    /// progress (user-side events go to
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

    /// Closes the bus: the session stopped.
    pub(crate) fn close(&self) {
        self.lock().close_bus();
        self.inner.timer.notify_one();
    }

    /// Sets where a turn's text is cut into speakable segments.
    pub(crate) fn set_segmenter(&self, config: crate::segmenter::SegmenterConfig) {
        self.lock().segmenter = config;
    }

    /// A speech output was attached (`true`) or detached: while one is, a
    /// finished reply whose segments were handed out is playing until
    /// playback reports its end (a barge-in before the first report cuts it).
    pub(crate) fn set_voice(&self, attached: bool) {
        let cut = self.lock().set_voice(attached);
        if let Some(cut) = cut {
            self.after_cut(cut);
        }
    }

    /// Whether a live (not speculative) turn is generating: what a drain
    /// waits for.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn live_turn_open(&self) -> bool {
        self.lock().live_turn_open()
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
    /// `deliver` runs outside the ledger's lock, in seq order, in the thread
    /// that published (`bus/delivery.rs`): it must only hand the event off (a
    /// ractor `cast`, a channel send), never block or call back into the bus.
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
