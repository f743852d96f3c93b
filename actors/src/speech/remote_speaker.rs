//! The speaker of a session on a worker: the same protocol as
//! [`Speaker`](super::Speaker), driven by the session's remote events.
//!
//! Why a second speaker: a [`Speaker`](super::Speaker) hooks into the
//! session's ledger in this process to go silent within microseconds of a
//! cut. A remote session's ledger is on its worker; what reaches here is
//! its ordered event stream (`speech` and `lifecycle` classes), so this one
//! task applies each decision as it arrives: a cut (`interrupted`, a
//! cancelled or failed end — also the "worker lost" end a new owner
//! publishes for the turn in flight) stops the output at once, a pause
//! freezes it, a resume continues from the exact sample. The decision is
//! the worker's alone (one owner of turn-taking); the cost of distance is
//! one NATS hop each way. Progress goes back through the call's input queue
//! ([`SpeechInputs`](super::inputs)), in order with the caller's voice
//! activity.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::inputs::InputQueue;
use super::output::{PlayEnd, Segment, SpeechOutput};
use crate::bus::EventKind;
use crate::cluster::{RemoteEventKind, RemoteEvents};
use crate::ids::TurnId;
use crate::task::AbortOnDrop;

/// Speaks a remote session's replies; dropping it silences the output.
pub(crate) struct RemoteSpeaker {
    stop: Box<dyn Fn() + Send + Sync>,
    ended: Arc<AtomicBool>,
    task: AbortOnDrop,
}

impl std::fmt::Debug for RemoteSpeaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSpeaker").finish_non_exhaustive()
    }
}

impl RemoteSpeaker {
    /// Speaks the turns `events` announces on `output`, reporting progress
    /// to `progress`. `events` must cover the speech and lifecycle classes.
    pub(crate) fn spawn<O: SpeechOutput>(
        events: RemoteEvents,
        progress: InputQueue,
        output: O,
    ) -> Self {
        let output = Arc::new(output);
        let ended = Arc::new(AtomicBool::new(false));
        let task = Task {
            ended: ended.clone(),
            output: output.clone(),
            progress,
            turn: TurnId(0),
            cut_through: TurnId(0),
            paused: false,
            queue: VecDeque::new(),
            holding: false,
            offset: 0,
            index: 0,
        };
        Self {
            stop: Box::new(move || output.stop()),
            ended,
            task: AbortOnDrop(tokio::spawn(task.run(events))),
        }
    }

    /// The session ended (`session_ended`, or its events stopped): nothing
    /// more will be said on this call.
    pub(crate) fn session_ended(&self) -> bool {
        self.ended.load(Ordering::Acquire)
    }
}

impl Drop for RemoteSpeaker {
    fn drop(&mut self) {
        // The task first, so it prepares nothing after the output's stop.
        self.task.0.abort();
        (self.stop)();
    }
}

struct Task<O> {
    output: Arc<O>,
    ended: Arc<AtomicBool>,
    progress: InputQueue,
    /// The turn being spoken.
    turn: TurnId,
    /// The latest turn cut: nothing of it or before it is played.
    cut_through: TurnId,
    /// The owner paused playback.
    paused: bool,
    /// Segments of the turn not yet started (already prepared).
    queue: VecDeque<Segment>,
    /// The output holds something of the current turn (prepared or
    /// playing) that a stop has not ended.
    holding: bool,
    offset: usize,
    index: usize,
}

type Playing = Pin<Box<dyn Future<Output = PlayEnd> + Send>>;

enum Step {
    Event(Option<crate::cluster::RemoteEvent>),
    Played(PlayEnd),
}

impl<O: SpeechOutput> Task<O> {
    async fn run(mut self, mut events: RemoteEvents) {
        let mut playing: Option<(Playing, Segment)> = None;
        loop {
            if playing.is_none() && !self.paused && self.cut_through < self.turn {
                while let Some(segment) = self.queue.pop_front() {
                    if segment.text().is_empty() {
                        continue;
                    }
                    let output = self.output.clone();
                    let s = segment.clone();
                    playing = Some((Box::pin(async move { output.play(s).await }), segment));
                    break;
                }
            }
            let step = tokio::select! {
                biased;
                ev = events.recv() => Step::Event(ev),
                end = async {
                    match playing.as_mut() {
                        Some((p, _)) => p.await,
                        None => std::future::pending().await,
                    }
                } => Step::Played(end),
            };
            match step {
                Step::Event(None) => {
                    self.output.stop();
                    self.ended.store(true, Ordering::Release);
                    return;
                }
                Step::Event(Some(ev)) => {
                    let ended = matches!(ev.kind, RemoteEventKind::SessionEnded { .. });
                    if self.event(ev.turn, ev.kind, playing.is_some()) {
                        playing = None;
                    }
                    if ended {
                        self.output.stop();
                        self.ended.store(true, Ordering::Release);
                        return;
                    }
                }
                Step::Played(end) => {
                    if let Some((_, segment)) = playing.take()
                        && end == PlayEnd::Finished
                    {
                        segment.played(segment.chars());
                    }
                }
            }
        }
    }

    /// Applies one event; returns whether the segment playing is dropped.
    fn event(&mut self, turn: TurnId, kind: RemoteEventKind, playing: bool) -> bool {
        let kind = match kind {
            RemoteEventKind::Bus(kind) => kind,
            // Events of the session were lost on the way: a cut among them
            // cannot be ruled out, so the turn goes silent here.
            RemoteEventKind::Lagged { .. } => {
                tracing::warn!(
                    turn = turn.0,
                    "speaker: events were lost; the turn is cut here"
                );
                return self.cut(self.turn, playing);
            }
            // A new owner: a paused turn of the old one is never resumed by
            // it (a turn in flight ends as failed, which cuts it anyway).
            RemoteEventKind::Resumed { .. } if self.paused => {
                return self.cut(self.turn, playing);
            }
            _ => return false,
        };
        match kind {
            EventKind::TurnStarted if turn > self.turn => self.switch(turn, playing),
            EventKind::Speakable { text, last } if turn >= self.turn => {
                let dropped = turn > self.turn && self.switch(turn, playing);
                if self.cut_through < self.turn {
                    let segment = Segment::remote(
                        self.progress.clone(),
                        self.turn,
                        self.index,
                        self.offset,
                        text,
                        last,
                    );
                    self.offset += segment.chars();
                    self.index += 1;
                    if !segment.text().is_empty() {
                        self.holding = true;
                        self.output.prepare(&segment);
                        if self.paused {
                            // A pause decided before the turn's first segment:
                            // the output learns of the turn only now.
                            self.output.pause();
                        }
                    }
                    self.queue.push_back(segment);
                }
                dropped
            }
            EventKind::TurnFinished(end) if end.is_abort() && turn >= self.turn => {
                self.cut(turn, playing)
            }
            EventKind::Interrupted { .. } if turn >= self.turn => self.cut(turn, playing),
            EventKind::PlaybackPaused { .. } if turn == self.turn => {
                if !self.paused {
                    self.paused = true;
                    self.output.pause();
                }
                false
            }
            EventKind::PlaybackResumed { .. } if turn == self.turn => {
                if self.paused {
                    self.paused = false;
                    self.output.resume();
                }
                false
            }
            _ => false,
        }
    }

    /// Moves to a newer turn: what is left of the old one is dropped.
    fn switch(&mut self, turn: TurnId, playing: bool) -> bool {
        // What the output prepared of the old turn must not run on into the
        // new one; with nothing of it there, no stop (a phone would get a
        // `clear` at every turn start).
        if playing || self.holding {
            self.stop();
        }
        self.turn = turn;
        self.queue.clear();
        self.offset = 0;
        self.index = 0;
        self.paused = false;
        playing
    }

    /// Silences the output (what it held of the turn is gone).
    fn stop(&mut self) {
        self.output.stop();
        self.holding = false;
    }

    /// `turn` was cut: silent at once, nothing more of it played.
    fn cut(&mut self, turn: TurnId, playing: bool) -> bool {
        if turn > self.turn {
            self.switch(turn, playing);
        }
        self.cut_through = self.cut_through.max(turn);
        self.stop();
        self.queue.clear();
        self.paused = false;
        playing
    }
}
