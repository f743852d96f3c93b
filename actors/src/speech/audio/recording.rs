//! A sink that plays in real time into a recording: what a listener would
//! have heard, sample for sample, with the moment each frame was played.
//! Tests, demos and `voice_agent --audio` use it where a phone or a browser
//! would be.
//!
//! It behaves like a phone's playout: frames queue; one frame at a time is
//! played for its duration and reported on the [`PlayoutClock`] when it has
//! played to its end; [`clear`](AudioSink::clear) drops the queue and the
//! frame playing (a frame cut part-way is neither recorded nor reported, as
//! a Twilio mark of a cleared chunk is never counted).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use colloquy::audio::AudioFrame;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::sink::{AudioSink, PlayoutClock};
use crate::task::AbortOnDrop;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frame as it was heard: when it began to play, and its audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayedFrame {
    /// When it began to play.
    pub at: Instant,
    /// The frame (its position is on the output's timeline).
    pub frame: AudioFrame,
}

#[derive(Default)]
struct State {
    queue: VecDeque<AudioFrame>,
    /// Bumped by `clear`: the frame playing is void.
    epoch: u64,
    played: Vec<PlayedFrame>,
    clears: u64,
}

struct Inner {
    rate: u32,
    clock: PlayoutClock,
    state: Mutex<State>,
    wake: Notify,
}

/// A simulated listener: plays frames in real time and records them. Create
/// it inside a Tokio runtime (its player task ends when it is dropped).
#[derive(Clone)]
pub struct RecordingSink {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

impl std::fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.inner.state);
        f.debug_struct("RecordingSink")
            .field("rate", &self.inner.rate)
            .field("queued", &st.queue.len())
            .field("played", &st.played.len())
            .finish()
    }
}

impl RecordingSink {
    /// A listener at `rate` Hz reporting on `clock`.
    pub fn new(rate: u32, clock: PlayoutClock) -> Self {
        let inner = Arc::new(Inner {
            rate,
            clock,
            state: Mutex::new(State::default()),
            wake: Notify::new(),
        });
        let task = AbortOnDrop(tokio::spawn(play(inner.clone())));
        Self {
            inner,
            _task: Arc::new(task),
        }
    }

    /// Every frame played to its end, in order.
    pub fn played(&self) -> Vec<PlayedFrame> {
        lock(&self.inner.state).played.clone()
    }

    /// The played audio, concatenated.
    pub fn played_samples(&self) -> Vec<i16> {
        lock(&self.inner.state)
            .played
            .iter()
            .flat_map(|p| p.frame.samples().iter().copied())
            .collect()
    }

    /// How many times the sink was cleared.
    pub fn clears(&self) -> u64 {
        lock(&self.inner.state).clears
    }
}

impl AudioSink for RecordingSink {
    fn sample_rate(&self) -> u32 {
        self.inner.rate
    }

    fn write(&self, frame: AudioFrame) {
        lock(&self.inner.state).queue.push_back(frame);
        self.inner.wake.notify_one();
    }

    fn clear(&self) {
        let mut st = lock(&self.inner.state);
        st.queue.clear();
        st.epoch += 1;
        st.clears += 1;
        drop(st);
        self.inner.wake.notify_one();
    }
}

async fn play(inner: Arc<Inner>) {
    loop {
        let next = {
            let mut st = lock(&inner.state);
            st.queue.pop_front().map(|f| (f, st.epoch))
        };
        let Some((frame, epoch)) = next else {
            inner.wake.notified().await;
            continue;
        };
        let at = Instant::now();
        let done = at + frame.duration();
        // Played to its end unless a clear comes first.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(done) => break,
                () = inner.wake.notified() => {
                    if lock(&inner.state).epoch != epoch {
                        break;
                    }
                }
            }
        }
        let mut st = lock(&inner.state);
        if st.epoch != epoch {
            continue;
        }
        let end = frame.end();
        st.played.push(PlayedFrame { at, frame });
        // On the clock before the lock is released: a clear after this finds
        // it reported (the `AudioSink::clear` contract).
        inner.clock.played_through(end);
        drop(st);
    }
}
