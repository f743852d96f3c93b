//! The runtime-driven speaker: the TTS protocol for one session.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::sync::{Notify, mpsc, watch};

use super::output::{PlayEnd, Segment, SpeechOutput};
use crate::bus::{BusEvent, EventKind, HookId, SessionBus};
use crate::ids::TurnId;
use crate::session::SessionHandle;
use crate::task::AbortOnDrop;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a [`Speaker`] is doing, as [`Speaker::status`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SpeakerStatus {
    /// The latest turn the speaker knows of.
    pub turn: TurnId,
    /// The turn's speech is over: its last segment was played to the end, or
    /// the turn was cut (or superseded, or began before the speaker).
    pub finished: bool,
}

/// Decisions shared by the hooks (any thread) and the speaker task.
struct Gate {
    /// The turn the speaker task is on.
    turn: TurnId,
    /// The latest turn cut (nothing of it or before it is played).
    cut_through: TurnId,
    /// What was last applied to the output.
    paused: bool,
}

struct Control {
    gate: Mutex<Gate>,
    /// The ledger's latest decision, stored in ledger order by the tap: 0
    /// when playback may run, else the turn whose playback is paused.
    paused_turn: AtomicU64,
    /// Wakes the task after a hook changed the gate.
    wake: Notify,
}

impl Control {
    fn wants_pause(&self, turn: TurnId) -> bool {
        let p = self.paused_turn.load(Ordering::SeqCst);
        p != 0 && p >= turn.0
    }

    /// Applies the ledger's latest pause decision to the output.
    fn sync_pause<O: SpeechOutput>(&self, output: &O) {
        let mut gate = lock(&self.gate);
        let want = self.wants_pause(gate.turn);
        if want != gate.paused {
            gate.paused = want;
            if want {
                output.pause();
            } else {
                output.resume();
            }
        }
        drop(gate);
        self.wake.notify_one();
    }

    /// A cut of `turn` (from a hook or the event stream).
    fn cut<O: SpeechOutput>(&self, output: &O, turn: TurnId) {
        let mut gate = lock(&self.gate);
        if turn >= gate.turn {
            gate.cut_through = gate.cut_through.max(turn);
            output.stop();
            gate.paused = false;
        }
        drop(gate);
        self.wake.notify_one();
    }
}

fn tap_filter(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::TurnStarted
            | EventKind::Speakable { .. }
            | EventKind::TurnFinished(_)
            | EventKind::Interrupted { .. }
            | EventKind::PlaybackPaused { .. }
            | EventKind::PlaybackResumed { .. }
    )
}

/// Plays a session's replies through a [`SpeechOutput`]: each turn's
/// segments in order, progress reported as the turn's playback position,
/// silent at once on a cut, held on a pause and continued on a resume from
/// exactly where it stopped, and nothing of a turn that is no longer current.
///
/// It speaks the turns that begin after it was spawned, playing the
/// `Speakable` segments every session cuts (where
/// [`SessionConfig::segmenter`](crate::SessionConfig::segmenter) says), and
/// declares itself to the session: while it is attached a reply counts as
/// playing from its first segment, so a barge-in before its first progress
/// report cuts it. Dropping it stops the output and detaches it from the
/// bus; it also ends when the session stops.
pub struct Speaker {
    bus: SessionBus,
    tap: u64,
    hooks: [HookId; 3],
    status: watch::Receiver<SpeakerStatus>,
    stop: Box<dyn Fn() + Send + Sync>,
    _task: AbortOnDrop,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker")
            .field("session", self.bus.session())
            .field("status", &*self.status.borrow())
            .finish()
    }
}

impl Speaker {
    /// Starts speaking `session`'s replies on `output`. Call it from within a
    /// Tokio runtime (it spawns the speaker's task, like `tokio::spawn`).
    pub fn spawn<O: SpeechOutput>(session: &SessionHandle, output: O) -> Self {
        let bus = session.bus().clone();
        let output = Arc::new(output);
        let control = Arc::new(Control {
            gate: Mutex::new(Gate {
                turn: TurnId(0),
                cut_through: TurnId(0),
                paused: false,
            }),
            paused_turn: AtomicU64::new(0),
            wake: Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel::<BusEvent>();
        // The tap and the current turn under one lock: every event after
        // `current` reaches the task, nothing of `current` is half-spoken.
        let (tap, current) = {
            let control = control.clone();
            bus.attach_voice(tap_filter, move |open| {
                // A stopped session: no events will come, the task ends at once.
                let tx = open.then_some(tx);
                move |ev: &BusEvent| {
                    // Runs in the bus's delivery, in ledger order: record
                    // the decision, hand off.
                    match &ev.kind {
                        EventKind::PlaybackPaused { .. } => control
                            .paused_turn
                            .store(ev.turn.0.max(1), Ordering::SeqCst),
                        EventKind::PlaybackResumed { .. }
                        | EventKind::TurnStarted
                        | EventKind::Interrupted { .. } => {
                            control.paused_turn.store(0, Ordering::SeqCst)
                        }
                        EventKind::TurnFinished(end) if end.is_abort() => {
                            control.paused_turn.store(0, Ordering::SeqCst)
                        }
                        _ => {}
                    }
                    if let Some(tx) = &tx {
                        let _ = tx.send(ev.clone());
                    }
                }
            })
        };
        {
            let mut gate = lock(&control.gate);
            gate.turn = current;
            gate.cut_through = current;
        }
        let hooks = {
            let (c, o) = (control.clone(), output.clone());
            let cut = bus.on_cut(move |turn| c.cut(&*o, turn));
            let (c, o) = (control.clone(), output.clone());
            let pause = bus.on_pause(move |_| c.sync_pause(&*o));
            let (c, o) = (control.clone(), output.clone());
            let resume = bus.on_resume(move |_| c.sync_pause(&*o));
            [cut, pause, resume]
        };
        let (status_tx, status) = watch::channel(SpeakerStatus {
            turn: current,
            finished: true,
        });
        let task = SpeakerTask {
            bus: bus.clone(),
            output: output.clone(),
            control,
            status: status_tx,
            turn: current,
            queue: VecDeque::new(),
            offset: 0,
            index: 0,
            held: false,
        };
        let stop_output = output.clone();
        Self {
            bus,
            tap,
            hooks,
            status,
            stop: Box::new(move || stop_output.stop()),
            _task: AbortOnDrop(tokio::spawn(task.run(rx))),
        }
    }

    /// A watch on the speaker's status: wait for a turn's speech to be over
    /// with `status.wait_for(|s| s.turn >= turn && s.finished)`.
    pub fn status(&self) -> watch::Receiver<SpeakerStatus> {
        self.status.clone()
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        self.bus.detach_voice(self.tap);
        for hook in self.hooks {
            self.bus.remove_cut_hook(hook);
        }
        (self.stop)();
    }
}

/// How a gated `play` ended.
enum Outcome {
    Played(PlayEnd),
    /// Not started: playback is paused.
    Held,
    /// Not started: the turn was cut.
    Cut,
}

/// A `play` future whose first poll happens under the gate lock, so a cut or
/// pause decided concurrently either prevents the start or reaches the output
/// after it registered the segment.
struct Gated<F> {
    inner: Pin<Box<F>>,
    control: Arc<Control>,
    turn: TurnId,
    started: bool,
}

impl<F: Future<Output = PlayEnd>> Future for Gated<F> {
    type Output = Outcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = &mut *self;
        if !this.started {
            let gate = lock(&this.control.gate);
            if gate.cut_through >= this.turn || gate.turn != this.turn {
                return Poll::Ready(Outcome::Cut);
            }
            if this.control.wants_pause(this.turn) {
                return Poll::Ready(Outcome::Held);
            }
            this.started = true;
            let polled = this.inner.as_mut().poll(cx);
            drop(gate);
            return polled.map(Outcome::Played);
        }
        this.inner.as_mut().poll(cx).map(Outcome::Played)
    }
}

struct SpeakerTask<O> {
    bus: SessionBus,
    output: Arc<O>,
    control: Arc<Control>,
    status: watch::Sender<SpeakerStatus>,
    /// The turn being spoken.
    turn: TurnId,
    /// Its segments not yet started, already announced to the output with
    /// [`SpeechOutput::prepare`].
    queue: VecDeque<Segment>,
    /// Characters of the turn before the next segment queued.
    offset: usize,
    /// Index of the next segment queued.
    index: usize,
    /// A start was refused because playback is paused: wait for a wake.
    held: bool,
}

enum Step {
    Event(Option<BusEvent>),
    Played(Outcome),
    Wake,
}

impl<O: SpeechOutput> SpeakerTask<O> {
    fn cut_through(&self) -> TurnId {
        lock(&self.control.gate).cut_through
    }

    fn set_status(&self, finished: bool) {
        let turn = self.turn;
        self.status.send_if_modified(|s| {
            let new = SpeakerStatus { turn, finished };
            let changed = *s != new;
            *s = new;
            changed
        });
    }

    /// Moves to a newer turn: whatever of the old one is left is dropped.
    fn switch(&mut self, turn: TurnId, playing: bool) {
        {
            let mut gate = lock(&self.control.gate);
            if playing {
                self.output.stop();
            }
            gate.turn = turn;
            gate.paused = false;
        }
        self.turn = turn;
        self.queue.clear();
        self.offset = 0;
        self.index = 0;
        self.held = false;
        let cut = self.cut_through() >= turn;
        self.set_status(cut);
        // A pause decided for the new turn before the task saw it.
        self.control.sync_pause(&*self.output);
    }

    /// Handles one event; returns whether the segment playing must be dropped.
    fn event(&mut self, ev: BusEvent, playing: bool) -> bool {
        match ev.kind {
            EventKind::TurnStarted if ev.turn > self.turn => {
                self.switch(ev.turn, playing);
                return playing;
            }
            EventKind::Speakable { text, last } if ev.turn >= self.turn => {
                let mut drop_playing = false;
                if ev.turn > self.turn {
                    self.switch(ev.turn, playing);
                    drop_playing = playing;
                }
                self.enqueue(text, last);
                return drop_playing;
            }
            EventKind::TurnFinished(end) if end.is_abort() && ev.turn >= self.turn => {
                return self.cut(ev.turn, playing);
            }
            EventKind::Interrupted { .. } if ev.turn >= self.turn => {
                return self.cut(ev.turn, playing);
            }
            EventKind::PlaybackPaused { .. } | EventKind::PlaybackResumed { .. } => {
                self.control.sync_pause(&*self.output);
            }
            _ => {}
        }
        false
    }

    /// Queues a segment of the current turn and announces it to the output,
    /// under the gate lock: a cut decided concurrently either comes first
    /// (nothing is queued) or reaches the output after it (its `stop` clears
    /// what `prepare` started). Offsets count every segment, so a stopped
    /// segment's rest is lost and the offsets stay aligned with the turn's
    /// text.
    fn enqueue(&mut self, text: std::sync::Arc<str>, last: bool) {
        let gate = lock(&self.control.gate);
        if gate.cut_through >= self.turn || gate.turn != self.turn {
            return;
        }
        let segment = Segment::new(
            self.bus.clone(),
            self.turn,
            self.index,
            self.offset,
            text,
            last,
        );
        self.offset += segment.chars();
        self.index += 1;
        if !segment.text().is_empty() {
            self.output.prepare(&segment);
        }
        drop(gate);
        self.queue.push_back(segment);
    }

    fn cut(&mut self, turn: TurnId, playing: bool) -> bool {
        if turn > self.turn {
            self.switch(turn, playing);
        }
        self.control.cut(&*self.output, turn);
        self.queue.clear();
        self.held = false;
        self.set_status(true);
        playing
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<BusEvent>) {
        let output = self.output.clone();
        // The segment playing: its future, and what to requeue if it is held.
        let mut playing = None;
        let mut current: Option<Segment> = None;
        loop {
            if playing.is_none() && !self.held {
                while let Some(segment) = self.queue.pop_front() {
                    if segment.text().is_empty() {
                        if segment.is_last() {
                            self.set_status(true);
                        }
                        continue;
                    }
                    playing = Some(Gated {
                        inner: Box::pin(output.play(segment.clone())),
                        control: self.control.clone(),
                        turn: self.turn,
                        started: false,
                    });
                    current = Some(segment);
                    break;
                }
            }
            let step = tokio::select! {
                biased;
                ev = rx.recv() => Step::Event(ev),
                outcome = async {
                    match playing.as_mut() {
                        Some(p) => p.await,
                        None => std::future::pending().await,
                    }
                } => Step::Played(outcome),
                () = self.control.wake.notified() => Step::Wake,
            };
            match step {
                Step::Event(None) => {
                    // The session stopped.
                    if playing.is_some() {
                        output.stop();
                    }
                    self.set_status(true);
                    return;
                }
                Step::Event(Some(ev)) => {
                    let resumed = matches!(ev.kind, EventKind::PlaybackResumed { .. });
                    if self.event(ev, playing.is_some()) {
                        playing = None;
                        current = None;
                    }
                    if resumed {
                        self.held = false;
                    }
                }
                Step::Wake => self.held = false,
                Step::Played(outcome) => {
                    playing = None;
                    let Some(segment) = current.take() else {
                        continue;
                    };
                    match outcome {
                        Outcome::Held => {
                            self.queue.push_front(segment);
                            self.held = true;
                        }
                        Outcome::Cut => self.queue.clear(),
                        Outcome::Played(end) => {
                            if end == PlayEnd::Finished {
                                segment.played(segment.chars());
                            }
                            if self.cut_through() >= self.turn {
                                continue;
                            }
                            if segment.is_last() {
                                self.set_status(true);
                            }
                        }
                    }
                }
            }
        }
    }
}
