//! `POST /v1/audio/speech` as a [`Synthesizer`]: the reply is read as a
//! stream of raw PCM (`response_format: "pcm"`, 24 kHz mono 16-bit little
//! endian for OpenAI), so playback starts on the first chunk.
//!
//! # The estimated alignment
//!
//! The API gives no timestamps. Marks are placed at word ends (whitespace)
//! at [`OpenAiSpeechConfig::chars_per_second`] characters per second of
//! audio (× `speed`), each emitted once the audio received reaches it; when
//! the reply ends, the words not yet marked are spread evenly over the audio
//! left. The default, 12 characters a second, is slower than the voices
//! speak (about 14–16), so an estimate errs towards *fewer* characters heard:
//! the history may miss the last word the caller heard, and does not claim
//! one the caller did not hear. [`Synthesizer::alignment_is_estimated`] is
//! `true`, so the heard text is reported as estimated.
//!
//! A chunk may end in the middle of a sample (an odd byte count): the odd
//! byte is carried to the next chunk, never dropped or misread.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde_json::json;

use super::{OpenAiAudioEndpoint, connection_failure, failure_of};
use crate::audio::pcm::Pcm16Le;
use crate::audio::{AudioError, SpeechFailure, SynthEvent, Synthesizer};

const PROVIDER: &str = "openai-speech";

/// The rate of `pcm` replies.
pub const SAMPLE_RATE: u32 = 24_000;

/// How [`OpenAiSpeech`] asks for speech.
#[derive(Clone, Debug)]
pub struct OpenAiSpeechConfig {
    /// Where, and with which key.
    pub endpoint: OpenAiAudioEndpoint,
    /// `model` (`gpt-4o-mini-tts`, `tts-1`, …).
    pub model: String,
    /// `voice` (`alloy`, `coral`, …).
    pub voice: String,
    /// `speed` (0.25–4.0; `None`: the server's 1.0).
    pub speed: Option<f32>,
    /// `instructions` (how to speak; `gpt-4o-mini-tts`).
    pub instructions: Option<String>,
    /// The rate of the reply's PCM (24 000 for OpenAI; a local server may
    /// differ).
    pub sample_rate: u32,
    /// Speaking rate assumed by the estimated alignment (see the module's
    /// docs), before `speed`.
    pub chars_per_second: f32,
}

impl OpenAiSpeechConfig {
    /// `model` and `voice` at `endpoint`, 24 kHz, no speed or instructions.
    pub fn new(
        endpoint: OpenAiAudioEndpoint,
        model: impl Into<String>,
        voice: impl Into<String>,
    ) -> Self {
        Self {
            endpoint,
            model: model.into(),
            voice: voice.into(),
            speed: None,
            instructions: None,
            sample_rate: SAMPLE_RATE,
            chars_per_second: 12.0,
        }
    }
}

/// OpenAI-compatible speech synthesis. Cheap to clone; one connection pool.
#[derive(Clone, Debug)]
pub struct OpenAiSpeech {
    config: std::sync::Arc<OpenAiSpeechConfig>,
    http: reqwest::Client,
}

impl OpenAiSpeech {
    /// A synthesizer for `config` (no request is made yet).
    pub fn new(config: OpenAiSpeechConfig) -> Result<Self, AudioError> {
        let http = config.endpoint.client(PROVIDER)?;
        Ok(Self {
            config: std::sync::Arc::new(config),
            http,
        })
    }
}

impl Synthesizer for OpenAiSpeech {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    fn alignment_is_estimated(&self) -> bool {
        true
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        let c = &self.config;
        let mut body = json!({
            "model": c.model, "voice": c.voice, "input": text, "response_format": "pcm",
        });
        if let Some(s) = c.speed {
            body["speed"] = json!(s);
        }
        if let Some(i) = &c.instructions {
            body["instructions"] = json!(i);
        }
        let request = self
            .http
            .post(c.endpoint.url("audio/speech"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send();
        let speed = c.speed.unwrap_or(1.0).clamp(0.25, 4.0);
        let samples_per_char = c.sample_rate as f64 / (c.chars_per_second.max(1.0) * speed) as f64;
        let state = Reading {
            phase: Phase::Requesting(Box::pin(request)),
            estimate: Estimate::new(text, samples_per_char),
            pcm: Pcm16Le::default(),
            ready: VecDeque::new(),
            got_audio: false,
            key: c.endpoint.key().map(str::to_string),
            first: c.endpoint.first_output_timeout,
            gap: c.endpoint.output_gap_timeout,
        };
        stream::unfold(state, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
        .boxed()
    }
}

type Pending = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<reqwest::Response, reqwest::Error>> + Send>,
>;

enum Phase {
    Requesting(Pending),
    Body(BoxStream<'static, Result<Bytes, reqwest::Error>>),
    Done,
}

struct Reading {
    phase: Phase,
    estimate: Estimate,
    pcm: Pcm16Le,
    ready: VecDeque<SynthEvent>,
    got_audio: bool,
    key: Option<String>,
    first: Duration,
    gap: Duration,
}

impl Reading {
    fn fail(&mut self, failure: SpeechFailure) -> Option<Result<SynthEvent, AudioError>> {
        self.phase = Phase::Done;
        self.ready.clear();
        Some(Err(AudioError::provider(PROVIDER, failure)))
    }

    async fn next(&mut self) -> Option<Result<SynthEvent, AudioError>> {
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            let deadline = if self.got_audio { self.gap } else { self.first };
            match &mut self.phase {
                Phase::Done => return None,
                Phase::Requesting(request) => match tokio::time::timeout(deadline, request).await {
                    Err(_) => return self.fail(SpeechFailure::FirstOutputTimeout(deadline)),
                    Ok(Err(e)) => return self.fail(connection_failure(e)),
                    Ok(Ok(r)) if !r.status().is_success() => {
                        let failure = failure_of(r, self.key.as_deref()).await;
                        return self.fail(failure);
                    }
                    Ok(Ok(r)) => self.phase = Phase::Body(r.bytes_stream().boxed()),
                },
                Phase::Body(body) => match tokio::time::timeout(deadline, body.next()).await {
                    Err(_) if self.got_audio => {
                        return self.fail(SpeechFailure::OutputGapTimeout(deadline));
                    }
                    Err(_) => return self.fail(SpeechFailure::FirstOutputTimeout(deadline)),
                    Ok(Some(Err(e))) => return self.fail(connection_failure(e)),
                    Ok(Some(Ok(bytes))) => self.take(&bytes),
                    Ok(None) => {
                        if self.pcm.mid_sample() {
                            return self.fail(SpeechFailure::Malformed(
                                "PCM ended in the middle of a sample".into(),
                            ));
                        }
                        self.phase = Phase::Done;
                        self.ready.extend(self.estimate.finish());
                    }
                },
            }
        }
    }

    /// PCM bytes in: whole samples out, the odd byte carried.
    fn take(&mut self, bytes: &[u8]) {
        let samples = self.pcm.decode(bytes);
        if samples.is_empty() {
            return;
        }
        self.got_audio = true;
        let n = samples.len() as u64;
        self.ready.push_back(SynthEvent::Audio(samples));
        self.ready.extend(self.estimate.advance(n));
    }
}

/// Word ends placed at an assumed speaking rate (see the module's docs).
struct Estimate {
    /// Characters up to and including each word (and the spaces before it).
    word_ends: Vec<usize>,
    total_chars: usize,
    samples_per_char: f64,
    /// Words marked so far.
    marked: usize,
    /// Samples received.
    received: u64,
    /// The last mark's sample.
    last_sample: u64,
}

impl Estimate {
    fn new(text: &str, samples_per_char: f64) -> Self {
        let mut word_ends = Vec::new();
        let mut in_word = false;
        for (i, ch) in text.chars().enumerate() {
            if ch.is_whitespace() {
                if in_word {
                    word_ends.push(i);
                }
                in_word = false;
            } else {
                in_word = true;
            }
        }
        let total_chars = text.chars().count();
        if in_word {
            word_ends.push(total_chars);
        }
        Self {
            word_ends,
            total_chars,
            samples_per_char,
            marked: 0,
            received: 0,
            last_sample: 0,
        }
    }

    fn advance(&mut self, samples: u64) -> Vec<SynthEvent> {
        self.received += samples;
        let mut marks = Vec::new();
        while let Some(&chars) = self.word_ends.get(self.marked) {
            let at = (chars as f64 * self.samples_per_char).round() as u64;
            if at > self.received {
                break;
            }
            self.marked += 1;
            self.last_sample = at;
            marks.push(SynthEvent::Mark { chars, sample: at });
        }
        marks
    }

    fn finish(&mut self) -> Vec<SynthEvent> {
        let (from_chars, from_sample) = match self.marked {
            0 => (0, 0),
            n => (self.word_ends[n - 1], self.last_sample),
        };
        let span_chars = self.total_chars.saturating_sub(from_chars).max(1) as f64;
        let span_samples = self.received.saturating_sub(from_sample) as f64;
        let mut marks: Vec<_> = self.word_ends[self.marked..]
            .iter()
            .map(|&chars| SynthEvent::Mark {
                chars,
                sample: from_sample
                    + ((chars - from_chars) as f64 / span_chars * span_samples).round() as u64,
            })
            .collect();
        self.marked = self.word_ends.len();
        marks.push(SynthEvent::Mark {
            chars: self.total_chars,
            sample: self.received,
        });
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimated_marks_wait_for_the_audio_and_the_end_spreads_the_rest() {
        // 10 samples a character: "ab cd" → word ends at 2 and 5.
        let mut e = Estimate::new("ab cd", 10.0);
        assert!(e.advance(19).is_empty());
        assert_eq!(
            e.advance(1),
            vec![SynthEvent::Mark {
                chars: 2,
                sample: 20
            }]
        );
        // "cd" would end at 50; the reply ends at 30: spread over what is left.
        assert!(e.advance(10).is_empty());
        let rest = e.finish();
        assert_eq!(
            rest,
            vec![
                SynthEvent::Mark {
                    chars: 5,
                    sample: 30
                },
                SynthEvent::Mark {
                    chars: 5,
                    sample: 30
                }
            ]
        );
    }

    #[test]
    fn an_odd_byte_is_carried_into_the_next_chunk() {
        let mut r = Reading {
            phase: Phase::Done,
            estimate: Estimate::new("x", 1e9),
            pcm: Pcm16Le::default(),
            ready: VecDeque::new(),
            got_audio: false,
            key: None,
            first: Duration::from_secs(1),
            gap: Duration::from_secs(1),
        };
        let pcm: Vec<u8> = [1i16, -2, 300, -32768]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        r.take(&pcm[..3]);
        r.take(&pcm[3..]);
        let got: Vec<i16> = r
            .ready
            .iter()
            .flat_map(|e| match e {
                SynthEvent::Audio(a) => a.clone(),
                _ => vec![],
            })
            .collect();
        assert_eq!(got, vec![1, -2, 300, -32768]);
        assert!(!r.pcm.mid_sample());
    }
}
