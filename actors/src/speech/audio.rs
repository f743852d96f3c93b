//! Speaking with sound: an [`AudioOutput`] synthesizes a turn's segments
//! ahead of playback, paces frames into an [`AudioSink`] in real time, and
//! reports as heard exactly the characters whose audio the sink confirmed as
//! played.
//!
//! ```text
//!  Speaker ──prepare(segment)──▶ synth task ──Synthesizer──▶ PCM + marks (resampled to the sink)
//!     │                                                        │ appended to the turn's timeline
//!     └──play(segment): waits for its last sample to be played ▼
//!                       driver ──frames, paced (lead ahead)──▶ AudioSink ──▶ the listener
//!                          ▲                                      │
//!                          └───────── PlayoutClock ◀── played ────┘ (mark echo, worklet position)
//!                          played sample ──alignment──▶ characters ──▶ Segment::played
//! ```
//!
//! Pause: nothing more is sent, the sink is cleared, the played sample is
//! kept; resume sends again from that sample (none repeated, none skipped).
//! Stop (a cut): the sink is cleared at once and the turn's audio dropped. A
//! sink that stops confirming playback for `stall_timeout` while audio is
//! outstanding is treated as gone: the segment ends as stopped, heard where
//! the last confirmation put it — never "speaking" forever.

mod playout;
mod recording;
mod sink;

pub use recording::{PlayedFrame, RecordingSink};
pub use sink::{AudioSink, PlayoutClock};

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::audio::resample::Resampler;
use colloquy::audio::{AudioFrame, SynthEvent, Synthesizer, convert_position, duration_to_samples};
use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::output::{PlayEnd, Segment, SpeechOutput};
use crate::task::AbortOnDrop;
use playout::Playout;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How an [`AudioOutput`] paces and watches its sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioOutputConfig {
    /// How far ahead of real time frames are sent (the sink's jitter buffer).
    pub lead: Duration,
    /// Frame length sent to the sink (Twilio and most transports: 20 ms).
    pub frame: Duration,
    /// Audio outstanding with no playback confirmed for this long: the sink is
    /// gone, the segment ends as stopped.
    pub stall_timeout: Duration,
}

impl Default for AudioOutputConfig {
    /// 100 ms lead, 20 ms frames, 3 s stall timeout.
    fn default() -> Self {
        Self {
            lead: Duration::from_millis(100),
            frame: Duration::from_millis(20),
            stall_timeout: Duration::from_secs(3),
        }
    }
}

/// How far synthesis may run ahead of the audio sent.
const AHEAD: Duration = Duration::from_secs(10);

struct Shared {
    synth: Arc<dyn Synthesizer>,
    sink: Arc<dyn AudioSink>,
    clock: PlayoutClock,
    state: Mutex<Playout>,
    /// Wakes the driver: audio appended, a resume, a stop.
    wake: Notify,
    /// Wakes `play` futures: a span played to its end, a stop.
    progress: Notify,
    jobs: mpsc::UnboundedSender<(u64, Segment)>,
    config: AudioOutputConfig,
}

/// A [`SpeechOutput`] that speaks with a [`Synthesizer`] into an
/// [`AudioSink`]; give it to a [`Speaker`](super::Speaker). Create it inside
/// a Tokio runtime (it spawns its driver and synthesis tasks, which end when
/// it is dropped).
pub struct AudioOutput {
    shared: Arc<Shared>,
    _tasks: [AbortOnDrop; 2],
}

impl std::fmt::Debug for AudioOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("AudioOutput")
            .field("rate", &st.rate)
            .field("sent", &st.sent)
            .field("played", &st.played)
            .field("paused", &st.paused)
            .finish()
    }
}

impl AudioOutput {
    /// Speaks with `synth` into `sink`, which reports playback on `clock`.
    pub fn new(
        synth: Arc<dyn Synthesizer>,
        sink: Arc<dyn AudioSink>,
        clock: PlayoutClock,
        config: AudioOutputConfig,
    ) -> Self {
        let frame_ms = config.frame.as_millis().clamp(1, 1000) as u32;
        let (jobs, jobs_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            state: Mutex::new(Playout::new(sink.sample_rate(), frame_ms)),
            synth,
            sink,
            clock,
            wake: Notify::new(),
            progress: Notify::new(),
            jobs,
            config,
        });
        // Reports become characters in the reporting thread when the state
        // is free (the driver catches up otherwise): a barge-in decided just
        // after a report finds it already counted.
        let weak = Arc::downgrade(&shared);
        shared.clock.on_report(move || {
            if let Some(s) = weak.upgrade()
                && let Ok(mut st) = s.state.try_lock()
            {
                apply_reports(&s, &mut st);
            }
        });
        let driver = AbortOnDrop(tokio::spawn(drive(shared.clone())));
        let synth = AbortOnDrop(tokio::spawn(synthesize(Arc::downgrade(&shared), jobs_rx)));
        Self {
            shared,
            _tasks: [driver, synth],
        }
    }

    /// The played position on the output's timeline (sink rate).
    pub fn played(&self) -> u64 {
        lock(&self.shared.state).played
    }
}

/// Registers `segment` and queues its synthesis (once); the generation it
/// belongs to.
fn register(shared: &Shared, segment: &Segment) -> u64 {
    let mut st = lock(&shared.state);
    if st.register(segment) {
        let _ = shared.jobs.send((st.generation, segment.clone()));
    }
    st.generation
}

impl SpeechOutput for AudioOutput {
    fn prepare(&self, segment: &Segment) {
        register(&self.shared, segment);
    }

    fn play(&self, segment: Segment) -> impl Future<Output = PlayEnd> + Send {
        // Registered at the first poll, which the speaker makes under its
        // gate: a stop after it ends this play.
        let shared = self.shared.clone();
        async move {
            let generation = register(&shared, &segment);
            loop {
                let notified = shared.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = lock(&shared.state);
                    if st.generation != generation {
                        return PlayEnd::Stopped;
                    }
                    match st.span_done(segment.index()) {
                        Some(playout::SpanState::Played) => return PlayEnd::Finished,
                        Some(playout::SpanState::Failed) | None => return PlayEnd::Stopped,
                        Some(playout::SpanState::Pending) => {}
                    }
                }
                notified.await;
            }
        }
    }

    fn pause(&self) {
        let mut st = lock(&self.shared.state);
        if !st.paused {
            // Clear first, then take the clock: every frame the sink
            // confirmed before its clear counts, none after — so the resume
            // sends again exactly from the last played sample.
            self.shared.sink.clear();
            for (segment, chars) in st.played_through(self.shared.clock.played()) {
                segment.played(chars);
            }
            st.pause();
        }
        drop(st);
        self.shared.wake.notify_one();
    }

    fn resume(&self) {
        lock(&self.shared.state).resume();
        self.shared.wake.notify_one();
    }

    fn stop(&self) {
        let mut st = lock(&self.shared.state);
        st.stop();
        self.shared.sink.clear();
        drop(st);
        self.shared.wake.notify_one();
        self.shared.progress.notify_waiters();
    }
}

/// The synthesis task: segments in the order they were registered, each
/// streamed into the timeline as the engine produces it.
async fn synthesize(
    shared: std::sync::Weak<Shared>,
    mut jobs: mpsc::UnboundedReceiver<(u64, Segment)>,
) {
    while let Some((generation, segment)) = jobs.recv().await {
        let Some(s) = shared.upgrade() else { return };
        let current = |s: &Shared| lock(&s.state).generation == generation;
        if !current(&s) {
            continue;
        }
        let from = s.synth.sample_rate();
        let to = s.sink.sample_rate();
        let estimated = s.synth.alignment_is_estimated();
        let mut resampler = match Resampler::new(from, to) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "audio output: cannot resample the synthesizer's audio");
                fail(&s, generation, segment.index());
                continue;
            }
        };
        let mut stream = s.synth.synthesize(segment.text());
        let mut buf = Vec::new();
        let mut failed = false;
        while let Some(event) = stream.next().await {
            if let Ok(SynthEvent::Audio(pcm)) = &event {
                // Resampled before the lock: a pause or a cut never waits
                // for it.
                buf.clear();
                resampler.process_into(pcm, &mut buf);
            }
            // Synthesis runs at most `AHEAD` ahead of what was sent: a long
            // reply is not held whole in memory, nor synthesized for nothing
            // before a barge-in.
            loop {
                let notified = s.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let st = lock(&s.state);
                    if st.generation != generation
                        || st.end.saturating_sub(st.sent) < duration_to_samples(AHEAD, st.rate)
                    {
                        break;
                    }
                }
                notified.await;
            }
            let mut st = lock(&s.state);
            if st.generation != generation {
                break;
            }
            let first_audio = !buf.is_empty() && matches!(event, Ok(SynthEvent::Audio(_)));
            match event {
                Ok(SynthEvent::Audio(_)) => st.append(segment.index(), &buf),
                Ok(SynthEvent::Mark { chars, sample }) => {
                    st.mark(
                        segment.index(),
                        chars,
                        convert_position(sample, from, to),
                        estimated,
                    );
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "audio output: synthesis failed");
                    failed = true;
                    break;
                }
            }
            drop(st);
            if first_audio {
                segment.audio_synthesized();
            }
            s.wake.notify_one();
        }
        let mut st = lock(&s.state);
        if st.generation == generation {
            let tail = resampler.flush();
            st.append(segment.index(), &tail);
            if failed {
                st.fail_span(segment.index());
            } else {
                st.finish_span(segment.index());
            }
        }
        drop(st);
        s.wake.notify_one();
        s.progress.notify_waiters();
    }
}

fn fail(s: &Shared, generation: u64, index: usize) {
    let mut st = lock(&s.state);
    if st.generation == generation {
        st.fail_span(index);
    }
    drop(st);
    s.progress.notify_waiters();
}

/// The driver: reports what the sink played, and sends frames paced in real
/// time, `lead` ahead.
async fn drive(s: Arc<Shared>) {
    let rate = lock(&s.state).rate;
    let lead = duration_to_samples(s.config.lead, rate);
    // The current run of sending: when it began, from which position, and
    // the playout's run number it belongs to.
    let mut run: Option<(Instant, u64, u64)> = None;
    let mut frames: Vec<AudioFrame> = Vec::new();
    let mut last_progress = (Instant::now(), 0u64);
    loop {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        {
            let mut st = lock(&s.state);
            apply_reports(&s, &mut st);
            if st.played != last_progress.1 || st.in_flight() == 0 || st.paused {
                last_progress = (now, st.played);
            } else if now.saturating_duration_since(last_progress.0) >= s.config.stall_timeout {
                tracing::warn!(
                    in_flight = st.in_flight(),
                    "audio output: the sink confirmed no playback for {:?}; the turn's speech ends as stopped",
                    s.config.stall_timeout
                );
                st.give_up();
                s.sink.clear();
                s.progress.notify_waiters();
                last_progress = (now, st.played);
            }
            if run.is_some_and(|r| r.2 != st.runs) {
                run = None;
            }
            if st.paused || st.sent >= st.end {
                run = None;
            } else {
                let (t0, p0, _) = *run.get_or_insert((now, st.sent, st.runs));
                let elapsed = duration_to_samples(now.saturating_duration_since(t0), rate);
                frames.clear();
                let starved =
                    st.take_frames(p0.saturating_add(elapsed).saturating_add(lead), &mut frames);
                for f in frames.drain(..) {
                    s.sink.write(f);
                }
                // More to send on time: wake when the next sample is due. A
                // partial frame waiting for synthesis: wait for its wake.
                if st.sent < st.end && !starved {
                    let ahead = (st.sent - p0).saturating_sub(lead) + 1;
                    next = t0.checked_add(colloquy::audio::samples_to_duration(ahead, rate));
                }
            }
            if st.in_flight() > 0
                && !st.paused
                && let Some(stall) = last_progress.0.checked_add(s.config.stall_timeout)
            {
                next = Some(next.map_or(stall, |n| n.min(stall)));
            }
        }
        s.progress.notify_waiters();
        tokio::select! {
            () = s.clock.changed() => {}
            () = s.wake.notified() => {}
            () = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
    }
}

/// Turns the sink's latest played report into characters heard.
fn apply_reports(s: &Shared, st: &mut Playout) {
    for (segment, chars) in st.played_through(s.clock.played()) {
        segment.played(chars);
    }
}
