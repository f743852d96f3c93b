//! [`TranscriberChain`]: recognition that hands the audio of the utterances
//! not yet transcribed to the next engine when one fails.
//!
//! The chain keeps every input of each utterance from its `SpeechStarted`
//! until the engine's final transcript for it (bounded by
//! [`TranscriberChain::with_max_buffered`]). An engine that reports an
//! error, or whose stream ends while audio is still owed a transcript, is
//! dropped for the rest of the call's stream; the next engine gets the kept
//! utterances replayed, then the live input. Interims already passed on may
//! be repeated by the next engine (interims may always change); finals are
//! never lost and never doubled. The last engine's errors are passed on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{BreakerConfig, Engine, EngineStatus, Transcriber, engines, items, status};
use crate::audio::resample::Resampler;
use crate::audio::{
    AudioError, AudioFrame, Recognition, RecognizerInput, Transcript, convert_position,
    duration_to_samples,
};
use crate::llm::chain::breaker::Permit;

const NAME: &str = "transcriber-chain";

/// The most inputs queued for an engine that is not reading them yet.
const MAX_OUTBOX: usize = 4096;

/// Several transcribers as one (see the module docs). Its rate is the first
/// engine's; the others are fed resampled audio. Cheap to clone: clones
/// share the breakers.
#[derive(Clone)]
pub struct TranscriberChain {
    inner: Arc<Inner>,
}

struct Inner {
    engines: Vec<Engine<dyn Transcriber>>,
    breaker: BreakerConfig,
    max_buffered: Duration,
}

impl std::fmt::Debug for TranscriberChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriberChain")
            .field("providers", &self.providers())
            .finish()
    }
}

impl TranscriberChain {
    /// A chain of one engine (default breakers, 30 s of kept audio at most).
    pub fn new(first: impl Transcriber) -> Self {
        Self::build(
            vec![Arc::new(first)],
            BreakerConfig::default(),
            Duration::from_secs(30),
        )
    }

    /// The chain with `next` tried after the engines before it.
    pub fn then(self, next: impl Transcriber) -> Self {
        self.then_shared(Arc::new(next))
    }

    /// Like [`TranscriberChain::then`], with an engine shared elsewhere.
    pub fn then_shared(self, next: Arc<dyn Transcriber>) -> Self {
        let mut stts = self.stts();
        stts.push(next);
        Self::build(stts, self.inner.breaker, self.inner.max_buffered)
    }

    /// The chain with these breakers (fresh, closed).
    pub fn with_breakers(self, config: BreakerConfig) -> Self {
        Self::build(self.stts(), config, self.inner.max_buffered)
    }

    /// The most audio kept for the utterances not yet transcribed; beyond
    /// it, an utterance's later frames are not kept (a fallback then hears
    /// its beginning only).
    pub fn with_max_buffered(self, max: Duration) -> Self {
        Self::build(self.stts(), self.inner.breaker, max)
    }

    /// Each engine with its breaker, in order.
    pub fn providers(&self) -> Vec<EngineStatus> {
        status(&self.inner.engines)
    }

    fn stts(&self) -> Vec<Arc<dyn Transcriber>> {
        items(&self.inner.engines)
    }

    fn build(stts: Vec<Arc<dyn Transcriber>>, breaker: BreakerConfig, max: Duration) -> Self {
        let engines = engines(stts, |s| s.name(), breaker);
        Self {
            inner: Arc::new(Inner {
                engines,
                breaker,
                max_buffered: max,
            }),
        }
    }
}

impl Transcriber for TranscriberChain {
    fn sample_rate(&self) -> u32 {
        self.inner.engines[0].engine.sample_rate()
    }

    fn name(&self) -> &'static str {
        NAME
    }

    /// Opens the first engine that its breaker lets through (call it inside
    /// a Tokio runtime: the chain's forwarding runs as a task).
    fn open(&self) -> Result<Recognition, AudioError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| AudioError::engine(NAME, "open() needs a Tokio runtime"))?;
        let rate = self.sample_rate();
        let mut run = Run {
            inner: self.inner.clone(),
            rate,
            cap: duration_to_samples(self.inner.max_buffered, rate),
            kept: VecDeque::new(),
            kept_samples: 0,
            in_speech: false,
            next_engine: 0,
            current: None,
        };
        run.switch()?;
        let (input, input_rx) = mpsc::channel(256);
        let (out, transcripts) = mpsc::channel(64);
        runtime.spawn(run.serve(input_rx, out));
        Ok(Recognition { input, transcripts })
    }
}

/// The engine serving a stream now.
struct Current {
    /// Its input; dropped once the call's input closed and all is sent.
    input: Option<mpsc::Sender<RecognizerInput>>,
    transcripts: mpsc::Receiver<Result<Transcript, AudioError>>,
    permit: Permit,
    label: Arc<str>,
    rate: u32,
    resampler: Option<Resampler>,
    /// Inputs converted for it, waiting for room in its queue.
    outbox: VecDeque<RecognizerInput>,
}

struct Run {
    inner: Arc<Inner>,
    rate: u32,
    cap: u64,
    /// The utterances not yet final, oldest first, as received.
    kept: VecDeque<Vec<RecognizerInput>>,
    kept_samples: u64,
    in_speech: bool,
    next_engine: usize,
    current: Option<Current>,
}

impl Run {
    async fn serve(
        mut self,
        mut input: mpsc::Receiver<RecognizerInput>,
        out: mpsc::Sender<Result<Transcript, AudioError>>,
    ) {
        let mut input_open = true;
        loop {
            let Some(cur) = &mut self.current else { return };
            if !input_open && cur.outbox.is_empty() {
                // Everything queued is sent: the engine sees its input close
                // and finishes.
                cur.input = None;
            }
            let engine_input = if cur.outbox.is_empty() {
                None
            } else {
                cur.input.clone()
            };
            tokio::select! {
                next = input.recv(), if input_open => match next {
                    Some(i) => self.take(i),
                    None => {
                        // The engines end an open utterance with the input:
                        // its final is the last one owed.
                        input_open = false;
                        self.in_speech = false;
                    }
                },
                () = out.closed() => return,
                slot = async { engine_input.as_ref()?.reserve().await.ok() }, if engine_input.is_some() => match slot {
                    Some(slot) => {
                        if let Some(i) = self.current.as_mut().and_then(|c| c.outbox.pop_front()) {
                            slot.send(i);
                        }
                    }
                    None => {
                        let e = AudioError::engine(NAME, "the engine stopped reading its audio");
                        if !self.failed(e, &out).await {
                            return;
                        }
                    }
                },
                t = cur.transcripts.recv() => match t {
                    Some(Ok(t)) => {
                        let t = self.answered(t);
                        if out.send(Ok(t)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        if !self.failed(e, &out).await {
                            return;
                        }
                    }
                    None if !input_open && self.kept.is_empty() => return,
                    None => {
                        let e = AudioError::engine(NAME, "the engine ended its stream early");
                        if !self.failed(e, &out).await {
                            return;
                        }
                    }
                },
            }
        }
    }

    /// An input from the call: kept (when part of an utterance) and queued
    /// for the engine.
    fn take(&mut self, i: RecognizerInput) {
        match &i {
            RecognizerInput::SpeechStarted { .. } => {
                self.in_speech = true;
                self.kept.push_back(vec![i.clone()]);
            }
            RecognizerInput::Frame(f) if self.in_speech => {
                let room = self.kept_samples + f.len() as u64 <= self.cap;
                if let (true, Some(u)) = (room, self.kept.back_mut()) {
                    self.kept_samples += f.len() as u64;
                    u.push(i.clone());
                }
            }
            RecognizerInput::SpeechEnded { .. } => {
                self.in_speech = false;
                if let Some(u) = self.kept.back_mut() {
                    u.push(i.clone());
                }
            }
            _ => {}
        }
        if let Some(c) = &mut self.current {
            queue(c, self.rate, i);
        }
    }

    /// A transcript of the engine: the oldest kept utterance released by a
    /// final; positions back at the chain's rate.
    fn answered(&mut self, mut t: Transcript) -> Transcript {
        if let Some(c) = &mut self.current {
            c.permit.success();
            if c.rate != self.rate {
                t.start = convert_position(t.start, c.rate, self.rate);
                t.end = convert_position(t.end, c.rate, self.rate);
            }
        }
        if t.is_final {
            self.release(Some(t.start));
        }
        t
    }

    /// An utterance is transcribed (or failed on the last engine): it is no
    /// longer kept. The one that started at `start` when there is one, else
    /// the oldest — never the one still being spoken.
    fn release(&mut self, start: Option<u64>) {
        let open = usize::from(self.in_speech);
        let done = self.kept.len().saturating_sub(open);
        let at = start
            .and_then(|s| {
                self.kept
                    .iter()
                    .take(done)
                    .position(|u| matches!(u.first(), Some(RecognizerInput::SpeechStarted { position }) if *position == s))
            })
            .or((done > 0).then_some(0));
        if let Some(u) = at.and_then(|i| self.kept.remove(i)) {
            self.kept_samples -= frames_len(&u);
        }
    }

    /// The engine failed: the next one takes the kept audio, or (none left)
    /// the error is passed on. Whether to go on.
    async fn failed(
        &mut self,
        error: AudioError,
        out: &mpsc::Sender<Result<Transcript, AudioError>>,
    ) -> bool {
        let label = self.current.as_ref().map(|c| c.label.to_string());
        let label = label.unwrap_or_default();
        if let Some(c) = &mut self.current {
            c.permit.failure();
        }
        let kind = match &error {
            AudioError::Provider { failure, .. } => failure.kind(),
            _ => "engine",
        };
        metrics::counter!("colloquy_speech_fallbacks_total", "side" => "recognition", "from" => label.clone(), "reason" => kind).increment(1);
        if self.next_engine < self.inner.engines.len() {
            tracing::warn!(engine = %label, %error, kept = self.kept.len(), "recognition failed; the next engine takes the utterances not yet transcribed");
            if self.switch().is_ok() {
                return true;
            }
        }
        tracing::warn!(engine = %label, %error, "recognition failed; no engine left");
        // Passed on: that utterance has its answer.
        self.release(None);
        let still_open = match &mut self.current {
            Some(c) => {
                if c.input.as_ref().is_some_and(|i| i.is_closed()) {
                    c.input = None;
                    c.outbox.clear();
                }
                !c.transcripts.is_closed()
            }
            None => false,
        };
        if out.send(Err(error)).await.is_err() {
            return false;
        }
        // The last engine's per-utterance errors pass through; a dead one
        // ends the stream.
        still_open
    }

    /// Opens the next engine its breaker allows and replays the kept
    /// utterances to it.
    fn switch(&mut self) -> Result<(), AudioError> {
        let mut last_error = AudioError::engine(NAME, "no engine left to listen");
        let inner = self.inner.clone();
        while self.next_engine < inner.engines.len() {
            let mut chosen = None;
            for (i, e) in inner.engines.iter().enumerate().skip(self.next_engine) {
                if let Some(p) = e.breaker.acquire() {
                    chosen = Some((i, p));
                    break;
                }
            }
            // Every engine left is open: the first of them is tried anyway.
            let (i, permit) = chosen.unwrap_or_else(|| {
                let i = self.next_engine;
                (i, inner.engines[i].breaker.force())
            });
            self.next_engine = i + 1;
            let e = &inner.engines[i];
            let rate = e.engine.sample_rate();
            let opened = e.engine.open().and_then(|r| {
                let resampler = if rate == self.rate {
                    None
                } else {
                    Some(Resampler::new(self.rate, rate)?)
                };
                Ok((r, resampler))
            });
            let (recognition, resampler) = match opened {
                Ok(o) => o,
                Err(err) => {
                    let mut permit = permit;
                    permit.failure();
                    last_error = err;
                    continue;
                }
            };
            let mut c = Current {
                input: Some(recognition.input),
                transcripts: recognition.transcripts,
                permit,
                label: e.label.clone(),
                rate,
                resampler,
                outbox: VecDeque::new(),
            };
            for u in &self.kept {
                for input in u {
                    queue(&mut c, self.rate, input.clone());
                }
            }
            self.current = Some(c);
            return Ok(());
        }
        self.current = None;
        Err(last_error)
    }
}

/// Queues an input for the engine, at its rate; a frame beyond the outbox's
/// bound is dropped (utterance boundaries never are).
fn queue(c: &mut Current, rate: u32, input: RecognizerInput) {
    let converted = match input {
        RecognizerInput::Frame(f) => {
            if c.outbox.len() >= MAX_OUTBOX {
                metrics::counter!("colloquy_listener_dropped_frames_total").increment(1);
                return;
            }
            match &mut c.resampler {
                Some(r) => RecognizerInput::Frame(AudioFrame::new(
                    r.process(f.samples()),
                    c.rate,
                    convert_position(f.position(), rate, c.rate),
                )),
                None => RecognizerInput::Frame(f),
            }
        }
        RecognizerInput::SpeechStarted { position } => RecognizerInput::SpeechStarted {
            position: convert_position(position, rate, c.rate),
        },
        RecognizerInput::SpeechEnded { position } => RecognizerInput::SpeechEnded {
            position: convert_position(position, rate, c.rate),
        },
    };
    c.outbox.push_back(converted);
}

fn frames_len(u: &[RecognizerInput]) -> u64 {
    u.iter()
        .map(|i| match i {
            RecognizerInput::Frame(f) => f.len() as u64,
            _ => 0,
        })
        .sum()
}
