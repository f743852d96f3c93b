//! What an embedder implements to speak: [`SpeechOutput`]; what it is given:
//! [`Segment`]; and a simulated output, [`PacedTextOutput`].

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::bus::{AudioStage, EventKind, SessionBus};
use crate::ids::TurnId;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a [`SpeechOutput::play`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlayEnd {
    /// The whole segment was played (the speaker reports its full length).
    Finished,
    /// Playback ended early ([`SpeechOutput::stop`], or the output gave up):
    /// only what was reported through [`Segment::played`] counts as heard.
    Stopped,
}

/// An audio output driven by a [`Speaker`](super::Speaker): text in, audio out.
///
/// The speaker calls [`play`](SpeechOutput::play) with one segment at a time,
/// in order, and never while the session's playback is paused. `pause`,
/// `resume` and `stop` are called synchronously from whatever thread decided
/// them (often not the speaker's task): make them cheap and non-blocking — flip
/// a flag that the audio callback reads — so the audio goes silent at once.
///
/// Contract:
/// - `play` synthesizes and plays `segment.text()`, reports progress with
///   [`Segment::played`] (characters of the segment heard so far; report at
///   least at word ends, and the exact position when paused or stopped), and
///   returns [`PlayEnd::Finished`] once the whole segment was heard.
/// - `pause` freezes the segment being played where it is; `resume` continues
///   it from exactly that position (no sample repeated, none skipped). A
///   paused `play` simply stays pending.
/// - `stop` ends the segment being played (its `play` returns
///   [`PlayEnd::Stopped`], or is dropped by the speaker) and clears any pause.
///   What `stop` must end is fixed when `play` is first polled: record it at
///   the start of `play` (the speaker polls `play` for the first time while
///   holding the lock under which hooks call `stop`, so a stop can never fall
///   between "started" and "registered").
/// - All three do nothing when no segment is playing.
///
/// Dropping the `play` future must silence that segment too.
pub trait SpeechOutput: Send + Sync + 'static {
    /// Synthesizes and plays one segment; see the trait docs.
    fn play(&self, segment: Segment) -> impl Future<Output = PlayEnd> + Send;

    /// A segment was queued behind the one playing: an output that
    /// synthesizes ahead starts on it now, so playback runs from one segment
    /// into the next with no gap. Called in order, from the speaker's task,
    /// before that segment's `play`, and never after a `stop` that ended its
    /// turn; it must not block. A `stop` ends what was prepared too. The
    /// default does nothing (the segment is synthesized when played).
    fn prepare(&self, segment: &Segment) {
        let _ = segment;
    }

    /// Freezes the segment being played now.
    fn pause(&self);

    /// Continues a paused segment from exactly where it stopped.
    fn resume(&self);

    /// Ends the segment being played now (and clears a pause).
    fn stop(&self);
}

/// Where a segment's progress goes.
enum ReportTo {
    /// The session's bus (a session in this process).
    Bus(SessionBus),
    /// A remote session's input queue (its audio milestones stay here).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    Remote(super::inputs::InputQueue),
}

struct Reporter {
    to: ReportTo,
    turn: TurnId,
    offset: usize,
    chars: usize,
    /// The last position reported (characters of the segment).
    last: Mutex<usize>,
    /// Its audio milestones were reported (each once).
    synthesized: std::sync::atomic::AtomicBool,
    playing: std::sync::atomic::AtomicBool,
}

/// One piece of a turn's text for a [`SpeechOutput`], with the handle to
/// report how much of it was heard. Cheap to clone (an audio thread can keep
/// a clone to report from).
#[derive(Clone)]
pub struct Segment {
    text: Arc<str>,
    last: bool,
    index: usize,
    reporter: Arc<Reporter>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("turn", &self.reporter.turn)
            .field("index", &self.index)
            .field("offset", &self.reporter.offset)
            .field("text", &self.text)
            .field("last", &self.last)
            .finish()
    }
}

impl Segment {
    pub(crate) fn new(
        bus: SessionBus,
        turn: TurnId,
        index: usize,
        offset: usize,
        text: Arc<str>,
        last: bool,
    ) -> Self {
        Self::reporting_to(ReportTo::Bus(bus), turn, index, offset, text, last)
    }

    /// A segment of a remote session's turn: progress goes to its queue.
    #[cfg_attr(not(feature = "nats"), allow(dead_code))]
    pub(crate) fn remote(
        queue: super::inputs::InputQueue,
        turn: TurnId,
        index: usize,
        offset: usize,
        text: Arc<str>,
        last: bool,
    ) -> Self {
        Self::reporting_to(ReportTo::Remote(queue), turn, index, offset, text, last)
    }

    fn reporting_to(
        to: ReportTo,
        turn: TurnId,
        index: usize,
        offset: usize,
        text: Arc<str>,
        last: bool,
    ) -> Self {
        let chars = text.chars().count();
        Self {
            text,
            last,
            index,
            reporter: Arc::new(Reporter {
                to,
                turn,
                offset,
                chars,
                last: Mutex::new(0),
                synthesized: std::sync::atomic::AtomicBool::new(false),
                playing: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The text to speak.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The turn it belongs to.
    pub fn turn(&self) -> TurnId {
        self.reporter.turn
    }

    /// Its position among the turn's spoken segments, from 0.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Characters of the turn's text before this segment.
    pub fn offset(&self) -> usize {
        self.reporter.offset
    }

    /// Its length in characters (Unicode scalar values, as progress counts).
    pub fn chars(&self) -> usize {
        self.reporter.chars
    }

    /// Whether it is the turn's last segment.
    pub fn is_last(&self) -> bool {
        self.last
    }

    /// Reports that the first `chars` characters of this segment have been
    /// heard (cumulative within the segment; clamped to its length). Published
    /// as the turn's playback position (`offset + chars`) when it advances;
    /// smaller or repeated values are ignored, and so is a turn that is no
    /// longer current (nothing more of it counts). Callable from any thread.
    pub fn played(&self, chars: usize) {
        let r = &*self.reporter;
        let chars = chars.min(r.chars);
        let mut last = lock(&r.last);
        if chars <= *last {
            return;
        }
        *last = chars;
        // Under `last`'s lock, so positions reach the bus (or the queue) in
        // increasing order.
        match &r.to {
            ReportTo::Bus(bus) => {
                let _ = bus.publish(
                    r.turn,
                    EventKind::SpeechPlayed {
                        chars: r.offset + chars,
                    },
                );
            }
            ReportTo::Remote(queue) => queue.played(r.turn, r.offset + chars),
        }
    }

    /// Reports that the segment's first audio is synthesized and ready to
    /// send ([`AudioStage::Synthesized`]); once per segment, later calls
    /// are ignored. Callable from any thread.
    pub fn audio_synthesized(&self) {
        self.audio(AudioStage::Synthesized, &self.reporter.synthesized);
    }

    /// Reports that the sink confirmed the segment's first sample played
    /// ([`AudioStage::Played`]); once per segment. Callable from any thread.
    pub fn audio_playing(&self) {
        self.audio(AudioStage::Played, &self.reporter.playing);
    }

    fn audio(&self, stage: AudioStage, once: &std::sync::atomic::AtomicBool) {
        if !once.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let r = &*self.reporter;
            // A remote session's wire takes no audio milestones.
            if let ReportTo::Bus(bus) = &r.to {
                let _ = bus.publish(r.turn, EventKind::SpeechAudio(stage));
            }
        }
    }

    /// Characters of this segment reported as heard so far.
    pub fn played_chars(&self) -> usize {
        *lock(&self.reporter.last)
    }
}

// ---------------------------------------------------------------- simulation

type Sink = Box<dyn Fn(TurnId, &str) + Send + Sync>;

/// The playback clock of the segment being played.
#[derive(Default)]
struct Clock {
    /// Increases on every `stop` and every new segment: a `play` whose
    /// generation is not current has been stopped.
    generation: u64,
    /// A segment is playing (not stopped, not finished).
    playing: bool,
    /// Audio time played before the current run (pauses excluded).
    banked: Duration,
    /// When the current run began; `None` while paused.
    running_since: Option<Instant>,
    /// Everything played so far, across segments.
    played: String,
}

impl Clock {
    fn elapsed(&self, now: Instant) -> Duration {
        self.banked
            + self
                .running_since
                .map_or(Duration::ZERO, |s| now.saturating_duration_since(s))
    }
}

struct Paced {
    chars_per_sec: f64,
    clock: Mutex<Clock>,
    changed: Notify,
    sink: Option<Sink>,
}

/// A simulated speech output: "plays" text at a fixed number of characters
/// per second, reports progress at every word end and the exact character
/// where a pause caught it, and resumes from exactly that point (its
/// clock, not the word, is frozen). A stop reports nothing more: the part
/// of a word played since the last report is not counted (its turn was cut,
/// and what was reported before the cut is what the history keeps).
/// Everything it reported as played is kept
/// ([`played_text`](Self::played_text)), and an optional sink sees each piece
/// as it is played. Clones share the same output.
#[derive(Clone)]
pub struct PacedTextOutput {
    inner: Arc<Paced>,
}

impl std::fmt::Debug for PacedTextOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacedTextOutput")
            .field("chars_per_sec", &self.inner.chars_per_sec)
            .finish()
    }
}

/// Rates are clamped into this range (characters per second).
const MIN_RATE: f64 = 0.1;
const MAX_RATE: f64 = 1e7;

impl PacedTextOutput {
    /// An output playing `chars_per_sec` characters per second (clamped to
    /// 0.1–10,000,000; a rate that is not a number counts as the minimum).
    pub fn new(chars_per_sec: f64) -> Self {
        Self::build(chars_per_sec, None)
    }

    /// Like [`new`](Self::new), calling `sink` with each piece of text as it
    /// is played (a word, or the part of one a pause caught). The sink
    /// runs in the playing task; keep it short.
    pub fn with_sink(
        chars_per_sec: f64,
        sink: impl Fn(TurnId, &str) + Send + Sync + 'static,
    ) -> Self {
        Self::build(chars_per_sec, Some(Box::new(sink)))
    }

    fn build(chars_per_sec: f64, sink: Option<Sink>) -> Self {
        let rate = if chars_per_sec.is_nan() {
            MIN_RATE
        } else {
            chars_per_sec.clamp(MIN_RATE, MAX_RATE)
        };
        Self {
            inner: Arc::new(Paced {
                chars_per_sec: rate,
                clock: Mutex::new(Clock::default()),
                changed: Notify::new(),
                sink,
            }),
        }
    }

    /// The rate, in characters per second.
    pub fn chars_per_sec(&self) -> f64 {
        self.inner.chars_per_sec
    }

    /// Everything played so far, across segments and turns, in order.
    pub fn played_text(&self) -> String {
        lock(&self.inner.clock).played.clone()
    }

    /// Characters at `elapsed` audio time.
    fn position(&self, elapsed: Duration, len: usize) -> usize {
        // The epsilon keeps a wake-up exactly at a deadline from reading one
        // character short after the float round trip.
        let p = (elapsed.as_secs_f64() * self.inner.chars_per_sec + 1e-6).floor();
        (p as usize).min(len)
    }

    fn emit(&self, segment: &Segment, chars: &[char], from: usize, to: usize) {
        if to <= from {
            return;
        }
        let piece: String = chars[from..to].iter().collect();
        lock(&self.inner.clock).played.push_str(&piece);
        if let Some(sink) = &self.inner.sink {
            sink(segment.turn(), &piece);
        }
        segment.played(to);
    }
}

impl SpeechOutput for PacedTextOutput {
    async fn play(&self, segment: Segment) -> PlayEnd {
        let chars: Vec<char> = segment.text().chars().collect();
        let len = chars.len();
        // Word ends: after a non-space followed by a space, and the end.
        let mut word_ends: Vec<usize> = (1..len)
            .filter(|&i| !chars[i - 1].is_whitespace() && chars[i].is_whitespace())
            .collect();
        word_ends.push(len);
        let generation = {
            let mut c = lock(&self.inner.clock);
            c.generation += 1;
            c.playing = true;
            c.banked = Duration::ZERO;
            c.running_since = Some(Instant::now());
            c.generation
        };
        // Stops the clock if this future is dropped mid-segment.
        struct Release<'a>(&'a Paced, u64);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                let mut c = lock(&self.0.clock);
                if c.generation == self.1 {
                    c.playing = false;
                    c.running_since = None;
                }
            }
        }
        let _release = Release(&self.inner, generation);
        let mut reported = 0usize;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let (current, elapsed, running) = {
                let c = lock(&self.inner.clock);
                (
                    c.generation == generation && c.playing,
                    c.elapsed(now),
                    c.running_since.is_some(),
                )
            };
            if !current {
                return PlayEnd::Stopped;
            }
            let pos = self.position(elapsed, len);
            if !running {
                // Paused: report exactly where the clock stopped, then wait.
                self.emit(&segment, &chars, reported, pos);
                reported = reported.max(pos);
                changed.await;
                continue;
            }
            if pos >= len {
                self.emit(&segment, &chars, reported, len);
                return PlayEnd::Finished;
            }
            // Report up to the last word end reached; sleep until the next one.
            if let Some(&end) = word_ends.iter().rev().find(|&&e| e <= pos && e > reported) {
                self.emit(&segment, &chars, reported, end);
                reported = end;
            }
            let next = word_ends.iter().copied().find(|&e| e > pos).unwrap_or(len);
            let due = Duration::from_secs_f64(next as f64 / self.inner.chars_per_sec);
            let wait = due.saturating_sub(elapsed);
            tokio::select! {
                () = tokio::time::sleep_until(now + wait) => {}
                () = changed => {}
            }
        }
    }

    fn pause(&self) {
        let mut c = lock(&self.inner.clock);
        if let Some(since) = c.running_since.take().filter(|_| c.playing) {
            c.banked += Instant::now().saturating_duration_since(since);
            drop(c);
            self.inner.changed.notify_waiters();
        }
    }

    fn resume(&self) {
        let mut c = lock(&self.inner.clock);
        if c.playing && c.running_since.is_none() {
            c.running_since = Some(Instant::now());
            drop(c);
            self.inner.changed.notify_waiters();
        }
    }

    fn stop(&self) {
        let mut c = lock(&self.inner.clock);
        if c.playing {
            // A stopped segment reports nothing more: its turn was cut, and
            // what counts as heard is what was reported before the cut.
            c.running_since = None;
            c.playing = false;
            drop(c);
            self.inner.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::SessionId;

    fn segment(text: &str) -> Segment {
        let bus = SessionBus::new(SessionId::new("s"), 8);
        Segment::new(bus, TurnId(1), 0, 0, Arc::from(text), true)
    }

    #[tokio::test(start_paused = true)]
    async fn plays_at_its_rate_reporting_word_ends() {
        let out = PacedTextOutput::new(10.0);
        let seg = segment("Hello big world");
        let started = Instant::now();
        assert_eq!(out.play(seg.clone()).await, PlayEnd::Finished);
        assert_eq!(started.elapsed(), Duration::from_millis(1500));
        assert_eq!(out.played_text(), "Hello big world");
        assert_eq!(seg.played_chars(), 15);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_freezes_the_clock_mid_word_and_resume_continues_exactly() {
        let pieces = Arc::new(Mutex::new(Vec::new()));
        let seen = pieces.clone();
        let out =
            PacedTextOutput::with_sink(10.0, move |_, p| seen.lock().unwrap().push(p.to_string()));
        let seg = segment("Hello big world");
        let play = tokio::spawn({
            let (out, seg) = (out.clone(), seg.clone());
            async move { out.play(seg).await }
        });
        // 0.83 s in: "Hello" reported, "big" caught after two characters.
        tokio::time::sleep(Duration::from_millis(830)).await;
        out.pause();
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            out.played_text(),
            "Hello bi",
            "exactly where the pause caught it"
        );
        assert_eq!(seg.played_chars(), 8);
        let resumed = Instant::now();
        out.resume();
        assert_eq!(play.await.unwrap(), PlayEnd::Finished);
        // 15 characters take 1.5 s of audio: 0.83 s before, the rest after.
        assert_eq!(resumed.elapsed(), Duration::from_millis(670));
        assert_eq!(
            out.played_text(),
            "Hello big world",
            "nothing repeated or skipped"
        );
        assert_eq!(*pieces.lock().unwrap(), ["Hello", " bi", "g", " world"]);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_ends_the_segment_and_clears_a_pause() {
        let out = PacedTextOutput::new(10.0);
        let play = tokio::spawn({
            let out = out.clone();
            async move { out.play(segment("one two three")).await }
        });
        tokio::time::sleep(Duration::from_millis(450)).await;
        out.pause();
        out.stop();
        assert_eq!(play.await.unwrap(), PlayEnd::Stopped);
        assert_eq!(out.played_text(), "one", "a stop reports nothing more");
        // The next segment plays from its start, unpaused.
        assert_eq!(out.play(segment("four")).await, PlayEnd::Finished);
        assert_eq!(out.played_text(), "onefour");
        // With nothing playing, all three do nothing.
        out.pause();
        out.resume();
        out.stop();
        assert_eq!(out.play(segment("x")).await, PlayEnd::Finished);
    }

    #[test]
    fn rates_are_clamped() {
        assert_eq!(PacedTextOutput::new(f64::NAN).chars_per_sec(), MIN_RATE);
        assert_eq!(PacedTextOutput::new(-3.0).chars_per_sec(), MIN_RATE);
        assert_eq!(
            PacedTextOutput::new(f64::INFINITY).chars_per_sec(),
            MAX_RATE
        );
    }
}
