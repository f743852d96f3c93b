//! [`SynthesizerChain`]: synthesis that falls back to the next engine, from
//! the first character not yet spoken.
//!
//! The one rule: the caller never hears a word twice and never misses one.
//! Audio is passed on up to the last mark (the last word end the engine
//! reported); what comes after it is held until the next mark. When an
//! engine fails, the held audio — the part of a word a restart would repeat —
//! is dropped, and the next engine speaks the text from the last mark on,
//! its samples and characters continuing the segment's. A mark is what
//! makes a fallback seamless, so holding costs at most one word's audio of
//! latency (espeak-ng and ElevenLabs send marks with their audio);
//! [`SynthesizerChain::with_max_hold`] bounds it for an engine whose marks
//! lag (held audio beyond it is passed on, and a failure then may repeat that
//! part of a word).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};

use super::{BreakerConfig, Engine, EngineStatus, Synthesizer, engines, items, status};
use crate::audio::resample::Resampler;
use crate::audio::{AudioError, SynthEvent, duration_to_samples};
use crate::llm::chain::breaker::Permit;

const NAME: &str = "synthesizer-chain";

/// Several synthesizers as one: the first whose breaker lets it, then the
/// next on a failure (see the module docs). Its rate is the first engine's;
/// the others' audio is resampled to it. Cheap to clone: clones share the
/// breakers.
///
/// ```
/// # #[cfg(feature = "espeak")] fn main() -> Result<(), colloquy::audio::AudioError> {
/// use colloquy::audio::chain::SynthesizerChain;
/// use colloquy::audio::espeak::{Espeak, EspeakConfig};
/// use colloquy::audio::openai::{OpenAiAudioEndpoint, OpenAiSpeech, OpenAiSpeechConfig};
///
/// let hosted = OpenAiAudioEndpoint::compatible("http://127.0.0.1:9/v1");
/// let tts = SynthesizerChain::new(OpenAiSpeech::new(OpenAiSpeechConfig::new(hosted, "tts-1", "alloy"))?)
///     .then(Espeak::new(EspeakConfig::default())?); // the offline last resort
/// assert_eq!(tts.providers().len(), 2);
/// # Ok(()) }
/// # #[cfg(not(feature = "espeak"))] fn main() {}
/// ```
#[derive(Clone)]
pub struct SynthesizerChain {
    inner: Arc<Inner>,
}

struct Inner {
    engines: Vec<Engine<dyn Synthesizer>>,
    breaker: BreakerConfig,
    max_hold: Duration,
}

impl std::fmt::Debug for SynthesizerChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynthesizerChain")
            .field("providers", &self.providers())
            .finish()
    }
}

impl SynthesizerChain {
    /// A chain of one engine (default breakers, one second of hold at most).
    pub fn new(first: impl Synthesizer) -> Self {
        Self::build(
            vec![Arc::new(first)],
            BreakerConfig::default(),
            Duration::from_secs(1),
        )
    }

    /// The chain with `next` tried after the engines before it.
    pub fn then(self, next: impl Synthesizer) -> Self {
        self.then_shared(Arc::new(next))
    }

    /// Like [`SynthesizerChain::then`], with an engine shared elsewhere.
    pub fn then_shared(self, next: Arc<dyn Synthesizer>) -> Self {
        let mut synths = self.synths();
        synths.push(next);
        Self::build(synths, self.inner.breaker, self.inner.max_hold)
    }

    /// The chain with these breakers (fresh, closed).
    pub fn with_breakers(self, config: BreakerConfig) -> Self {
        Self::build(self.synths(), config, self.inner.max_hold)
    }

    /// The most audio held after the last mark before it is passed on
    /// anyway (see the module docs).
    pub fn with_max_hold(self, max_hold: Duration) -> Self {
        Self::build(self.synths(), self.inner.breaker, max_hold)
    }

    /// Each engine with its breaker, in order.
    pub fn providers(&self) -> Vec<EngineStatus> {
        status(&self.inner.engines)
    }

    fn synths(&self) -> Vec<Arc<dyn Synthesizer>> {
        items(&self.inner.engines)
    }

    fn build(
        synths: Vec<Arc<dyn Synthesizer>>,
        breaker: BreakerConfig,
        max_hold: Duration,
    ) -> Self {
        let engines = engines(synths, |s| s.name(), breaker);
        Self {
            inner: Arc::new(Inner {
                engines,
                breaker,
                max_hold,
            }),
        }
    }
}

impl Synthesizer for SynthesizerChain {
    fn sample_rate(&self) -> u32 {
        self.inner.engines[0].engine.sample_rate()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    /// Estimated when any engine's alignment is.
    fn alignment_is_estimated(&self) -> bool {
        self.inner
            .engines
            .iter()
            .any(|e| e.engine.alignment_is_estimated())
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        let rate = self.sample_rate();
        let run = Run {
            max_hold: duration_to_samples(self.inner.max_hold, rate) as usize,
            inner: self.inner.clone(),
            rate,
            chars: text.chars().collect(),
            next_engine: 0,
            current: None,
            chars_done: 0,
            samples_done: 0,
            held: Vec::new(),
            last_mark: None,
            marks: VecDeque::new(),
            ready: VecDeque::new(),
            done: false,
            error: None,
        };
        stream::unfold(run, |mut run| async move {
            let item = run.next().await?;
            Some((item, run))
        })
        .boxed()
    }
}

/// One engine's part of a segment.
struct Attempt {
    events: BoxStream<'static, Result<SynthEvent, AudioError>>,
    permit: Permit,
    label: Arc<str>,
    engine_rate: u32,
    resampler: Option<Resampler>,
    got_audio: bool,
    /// Characters of the segment before this engine's text.
    base_chars: usize,
    /// Samples of the segment (chain rate) before this engine's audio.
    base_samples: u64,
}

/// One segment's synthesis across engines.
struct Run {
    inner: Arc<Inner>,
    rate: u32,
    max_hold: usize,
    chars: Vec<char>,
    next_engine: usize,
    current: Option<Attempt>,
    /// Characters covered by marks passed on.
    chars_done: usize,
    /// Samples passed on (chain rate).
    samples_done: u64,
    /// Audio after the last mark, not yet passed on.
    held: Vec<i16>,
    /// The last mark passed on.
    last_mark: Option<(usize, u64)>,
    /// Marks whose audio is not all here yet.
    marks: VecDeque<(usize, u64)>,
    ready: VecDeque<SynthEvent>,
    done: bool,
    /// The error that ends the segment, after what is ready.
    error: Option<AudioError>,
}

impl Run {
    async fn next(&mut self) -> Option<Result<SynthEvent, AudioError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            if self.done {
                return self.error.take().map(Err);
            }
            let Some(attempt) = &mut self.current else {
                if let Err(e) = self.start_next() {
                    self.done = true;
                    self.error = Some(e);
                }
                continue;
            };
            match attempt.events.next().await {
                Some(Ok(SynthEvent::Audio(pcm))) => self.audio(pcm),
                Some(Ok(SynthEvent::Mark { chars, sample })) => self.mark(chars, sample),
                Some(Err(e)) => {
                    if let Err(e) = self.fail(e) {
                        self.done = true;
                        self.error = Some(e);
                    }
                }
                None => {
                    if let Err(e) = self.finish_attempt() {
                        self.done = true;
                        self.error = Some(e);
                    }
                }
            }
        }
    }

    /// Starts the next engine on the text not yet marked, or finishes when
    /// nothing is left to say.
    fn start_next(&mut self) -> Result<(), AudioError> {
        let skipped = self.chars[self.chars_done..]
            .iter()
            .take_while(|c| c.is_whitespace())
            .count();
        let base_chars = self.chars_done + skipped;
        if base_chars >= self.chars.len() {
            self.end_segment();
            return Ok(());
        }
        let inner = self.inner.clone();
        let engines = &inner.engines;
        let (i, permit, resampler) = loop {
            let mut chosen = None;
            for (i, e) in engines.iter().enumerate().skip(self.next_engine) {
                if let Some(p) = e.breaker.acquire() {
                    chosen = Some((i, p));
                    break;
                }
            }
            let (i, mut permit) = match chosen {
                Some(c) => c,
                // Every engine left is open: try the first of them anyway.
                None if self.next_engine < engines.len() => {
                    let i = self.next_engine;
                    (i, engines[i].breaker.force())
                }
                None => {
                    return Err(AudioError::engine(NAME, "no engine left to speak"));
                }
            };
            self.next_engine = i + 1;
            let engine_rate = engines[i].engine.sample_rate();
            if engine_rate == self.rate {
                break (i, permit, None);
            }
            match Resampler::new(engine_rate, self.rate) {
                Ok(r) => break (i, permit, Some(r)),
                // A rate no resampler serves: that engine cannot take part.
                Err(error) => {
                    permit.failure();
                    tracing::warn!(engine = %engines[i].label, %error, "synthesis engine skipped");
                }
            }
        };
        let e = &engines[i];
        let text: String = self.chars[base_chars..].iter().collect();
        let engine_rate = e.engine.sample_rate();
        self.current = Some(Attempt {
            events: e.engine.synthesize(&text),
            permit,
            label: e.label.clone(),
            engine_rate,
            resampler,
            got_audio: false,
            base_chars,
            base_samples: self.samples_done + self.held.len() as u64,
        });
        Ok(())
    }

    fn audio(&mut self, pcm: Vec<i16>) {
        let Some(a) = &mut self.current else { return };
        if pcm.is_empty() {
            return;
        }
        if !a.got_audio {
            a.got_audio = true;
            a.permit.success();
        }
        match &mut a.resampler {
            Some(r) => r.process_into(&pcm, &mut self.held),
            None => self.held.extend_from_slice(&pcm),
        }
        self.pass_marks();
        if self.held.len() > self.max_hold {
            self.release(self.held.len());
        }
    }

    /// A mark of the engine, in the segment's characters and samples; passed
    /// on once the audio it covers is here (a resampler holds a little back).
    fn mark(&mut self, chars: usize, sample: u64) {
        let Some(a) = &self.current else { return };
        let chars = a.base_chars.saturating_add(chars).min(self.chars.len());
        // Rounded up: a mark never lands before the audio it covers.
        let scaled =
            (u128::from(sample) * u128::from(self.rate)).div_ceil(u128::from(a.engine_rate.max(1)));
        let at = a
            .base_samples
            .saturating_add(u64::try_from(scaled).unwrap_or(u64::MAX));
        self.marks.push_back((chars, at.max(self.samples_done)));
        self.pass_marks();
    }

    /// Passes on the audio up to each mark whose audio is here, then the mark.
    fn pass_marks(&mut self) {
        // No mark of an engine that has not spoken yet: a mark is a claim
        // about audio, and there is none.
        if self.current.as_ref().is_some_and(|a| !a.got_audio) {
            return;
        }
        while let Some(&(chars, at)) = self.marks.front() {
            let available = self.samples_done + self.held.len() as u64;
            if at > available {
                return;
            }
            self.marks.pop_front();
            self.release((at.saturating_sub(self.samples_done)) as usize);
            if chars > self.chars_done {
                self.chars_done = chars;
                self.last_mark = Some((chars, self.samples_done));
                self.ready.push_back(SynthEvent::Mark {
                    chars,
                    sample: self.samples_done,
                });
            }
        }
    }

    /// Passes on the first `n` held samples.
    fn release(&mut self, n: usize) {
        let n = n.min(self.held.len());
        if n == 0 {
            return;
        }
        let rest = self.held.split_off(n);
        let out = std::mem::replace(&mut self.held, rest);
        self.samples_done += out.len() as u64;
        self.ready.push_back(SynthEvent::Audio(out));
    }

    /// The engine ended its stream: its tail passed on and the segment
    /// closed — or, when it ended short of the text (no audio, or its marks
    /// stop before the end), a failure like any other.
    fn finish_attempt(&mut self) -> Result<(), AudioError> {
        let Some(mut a) = self.current.take() else {
            self.end_segment();
            return Ok(());
        };
        if let Some(r) = &mut a.resampler {
            let tail = r.flush();
            self.held.extend(tail);
        }
        if a.got_audio {
            // Marks at the very end may round past the audio: they are due.
            let end = self.samples_done + self.held.len() as u64;
            for m in &mut self.marks {
                m.1 = m.1.min(end);
            }
            self.pass_marks();
        } else {
            self.marks.clear();
        }
        let said = self.chars[self.chars_done..]
            .iter()
            .all(|c| c.is_whitespace());
        if said {
            self.end_segment();
            return Ok(());
        }
        self.current = Some(a);
        self.fail(AudioError::engine(
            NAME,
            "the engine ended before the end of its text",
        ))
    }

    fn end_segment(&mut self) {
        self.release(self.held.len());
        let last = (self.chars.len(), self.samples_done);
        if self.last_mark != Some(last) {
            self.ready.push_back(SynthEvent::Mark {
                chars: last.0,
                sample: last.1,
            });
        }
        self.chars_done = self.chars.len();
        self.current = None;
        self.done = true;
    }

    /// The engine failed: the held audio dropped, the next engine started
    /// from the last mark — or the error passed on when none is left.
    fn fail(&mut self, error: AudioError) -> Result<(), AudioError> {
        let Some(mut a) = self.current.take() else {
            return Err(error);
        };
        a.permit.failure();
        let kind = match &error {
            AudioError::Provider { failure, .. } => failure.kind(),
            _ => "engine",
        };
        metrics::counter!("colloquy_speech_fallbacks_total", "side" => "synthesis", "from" => a.label.to_string(), "reason" => kind).increment(1);
        if self.next_engine >= self.inner.engines.len() {
            // Nothing else will say it: what was heard stays heard.
            self.release(self.held.len());
            tracing::warn!(engine = %a.label, %error, "synthesis failed; no engine left");
            return Err(error);
        }
        let dropped = self.held.len();
        self.held.clear();
        self.marks.clear();
        tracing::warn!(
            engine = %a.label,
            %error,
            from_char = self.chars_done,
            dropped_samples = dropped,
            "synthesis failed; the next engine continues from the last word spoken"
        );
        Ok(())
    }
}
