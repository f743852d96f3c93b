//! Where the agent's audio goes, and how it says what was played.
//!
//! An [`AudioSink`] is the far end's speaker as the runtime sees it: a phone
//! behind Twilio, a browser's AudioWorklet, a sound card, a recording. It
//! queues frames and drops them on [`clear`](AudioSink::clear); it reports
//! what the listener actually heard on a [`PlayoutClock`] — the Twilio mark
//! echo, the worklet's position, the device's callback — never what was
//! merely sent. That report is the only thing "heard" is computed from.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use colloquy::audio::AudioFrame;
use tokio::sync::Notify;

/// A far end that plays the agent's audio.
///
/// `write` and `clear` are called under the audio output's lock, from its
/// task and from whatever thread decided a pause or a cut: both must be
/// cheap and must not block (push onto a channel, flip a flag).
pub trait AudioSink: Send + Sync + 'static {
    /// The rate it plays at; the output resamples to it.
    fn sample_rate(&self) -> u32;

    /// Queues `frame` after the frames queued before it. Its position is its
    /// place on the output's timeline: report it back, once played, through
    /// [`PlayoutClock::played_through`] with the frame's `end()`.
    fn write(&self, frame: AudioFrame);

    /// Drops every frame queued and not yet played, now. Frames dropped this
    /// way must never be reported as played (a Twilio `clear` echoes every
    /// pending mark at once: those were not played), and every report that
    /// came before the clear must be on the clock when `clear` returns (a
    /// pause reads the clock right after it, and resumes from there).
    fn clear(&self);
}

/// The played position a sink reports: the end of the last frame the
/// listener heard, on the output's timeline. Cheap to clone; callable from
/// any thread.
#[derive(Debug, Clone, Default)]
pub struct PlayoutClock {
    inner: Arc<ClockInner>,
}

type OnReport = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct ClockInner {
    played: AtomicU64,
    changed: Notify,
    /// The output's hook: turns a report into characters at once when it can
    /// (it never waits for a lock: a sink may report under its own).
    on_report: std::sync::OnceLock<OnReport>,
}

impl std::fmt::Debug for ClockInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayoutClock")
            .field("played", &self.played.load(Ordering::SeqCst))
            .finish()
    }
}

impl PlayoutClock {
    /// A clock at position 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports that every sample before `position` was played. Positions
    /// that do not advance are ignored.
    pub fn played_through(&self, position: u64) {
        if self.inner.played.fetch_max(position, Ordering::SeqCst) < position {
            self.inner.changed.notify_one();
            if let Some(f) = self.inner.on_report.get() {
                f();
            }
        }
    }

    /// Sets the hook a report runs (the audio output's; once).
    pub(crate) fn on_report(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.inner.on_report.set(Box::new(f));
    }

    /// The latest played position reported.
    pub fn played(&self) -> u64 {
        self.inner.played.load(Ordering::SeqCst)
    }

    /// Waits for the next report.
    pub(crate) async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}
