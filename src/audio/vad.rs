//! Voice activity detection: when the caller starts and stops speaking, as
//! positions in their audio.
//!
//! The detector is `earshot`: pure Rust, its small network's weights built
//! in, about 8 KiB of state per stream and thousands of times faster than
//! real time — so every frame of every call can be checked, with no ONNX
//! runtime and no model file to ship. (Silero is the usual alternative; it
//! needs ONNX Runtime, megabytes per process, and a native library.)
//!
//! Earshot scores 16 ms frames of 16 kHz audio from 0 (no voice) to 1. The
//! rules on top are the usual two thresholds and two durations:
//! speech *starts* after `min_speech` of frames at or above `threshold`
//! (reported at the first of them), and *ends* after `min_silence` of
//! frames below `end_threshold` (reported at the first silent one). A cough
//! shorter than `min_speech` is not speech; a breath between words shorter
//! than `min_silence` does not end it.

use std::time::Duration;

use super::resample::Resampler;
use super::{AudioError, AudioFrame, convert_position, duration_to_samples};

/// Earshot's frame: 16 ms at 16 kHz.
const FRAME: usize = 256;
const RATE: u32 = 16_000;

/// The detector's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// Score at or above which a frame is voice (earshot's 0..1).
    pub threshold: f32,
    /// Score below which a frame counts as silence while speech goes on
    /// (lower than `threshold`: hysteresis).
    pub end_threshold: f32,
    /// Voice this long, uninterrupted, is speech (shorter is a click or a
    /// cough).
    pub min_speech: Duration,
    /// Silence this long ends speech.
    pub min_silence: Duration,
    /// The start of a stream during which nothing is decided: earshot's
    /// context fills and its first scores swing (white noise scores up to 0.7
    /// in its first 150 ms, 0.3 after). Speech that begins in it is reported
    /// as starting when the warm-up ends.
    pub warmup: Duration,
}

impl Default for VadConfig {
    /// Start threshold 0.7, end 0.4, speech after 48 ms, ended by 320 ms of
    /// silence. Measured (the unit tests): espeak-ng speech scores 0.7–1.0
    /// from its second 16 ms frame; white noise at −21 dBFS RMS or quieter
    /// never holds 0.7 for three frames at 8 or 16 kHz, while earshot's
    /// suggested 0.5 lets some through. Louder white noise (−15 dBFS at
    /// 8 kHz) scores as voice: earshot's limit, not filtered here. The
    /// first 200 ms of a stream decide nothing ([`VadConfig::warmup`]).
    fn default() -> Self {
        Self {
            threshold: 0.7,
            end_threshold: 0.4,
            min_speech: Duration::from_millis(48),
            min_silence: Duration::from_millis(320),
            warmup: Duration::from_millis(200),
        }
    }
}

/// A change the detector decided, at a position of the input stream (in
/// samples at the input's rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VadEvent {
    /// Speech began at `position`; decided at `decided_at` (the end of the
    /// frame that confirmed it).
    SpeechStarted {
        /// The first sample of the speech.
        position: u64,
        /// The input position at which it was decided.
        decided_at: u64,
    },
    /// Speech ended at `position`; decided at `decided_at`.
    SpeechEnded {
        /// The first sample of the silence that ended it.
        position: u64,
        /// The input position at which it was decided.
        decided_at: u64,
    },
}

/// Voice activity detection over one stream of audio, at any supported rate.
pub struct VoiceActivity {
    detector: Box<earshot::Detector>,
    config: VadConfig,
    input_rate: u32,
    /// Input position of the first frame seen (16 kHz positions count from it).
    origin: Option<u64>,
    resampler: Option<Resampler>,
    pending: Vec<i16>,
    scratch: Vec<i16>,
    /// 16 kHz samples scored so far.
    scored: u64,
    speaking: bool,
    /// Start (16 kHz) and length of the current run of voice or silence.
    run_start: u64,
    run_len: u64,
    min_speech: u64,
    min_silence: u64,
    warmup: u64,
    last_score: f32,
}

impl std::fmt::Debug for VoiceActivity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceActivity")
            .field("config", &self.config)
            .field("input_rate", &self.input_rate)
            .field("speaking", &self.speaking)
            .finish()
    }
}

impl VoiceActivity {
    /// A detector for audio at `input_rate` Hz.
    pub fn new(input_rate: u32, config: VadConfig) -> Result<Self, AudioError> {
        let resampler = if input_rate == RATE {
            None
        } else {
            Some(Resampler::new(input_rate, RATE)?)
        };
        Ok(Self {
            detector: earshot::Detector::default_boxed(),
            config,
            input_rate,
            origin: None,
            resampler,
            pending: Vec::with_capacity(FRAME * 2),
            scratch: Vec::with_capacity(FRAME * 2),
            scored: 0,
            speaking: false,
            run_start: 0,
            run_len: 0,
            min_speech: duration_to_samples(config.min_speech, RATE).max(1),
            min_silence: duration_to_samples(config.min_silence, RATE).max(1),
            warmup: duration_to_samples(config.warmup, RATE),
            last_score: 0.0,
        })
    }

    /// The thresholds in use.
    pub fn config(&self) -> VadConfig {
        self.config
    }

    /// Whether the detector is inside speech.
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// The score of the last 16 ms scored.
    pub fn last_score(&self) -> f32 {
        self.last_score
    }

    /// Scores `frame` (at the input rate) and appends what it decided to
    /// `events`. Frames must follow each other in the stream.
    pub fn push_into(
        &mut self,
        frame: &AudioFrame,
        events: &mut Vec<VadEvent>,
    ) -> Result<(), AudioError> {
        if frame.sample_rate() != self.input_rate {
            return Err(AudioError::UnsupportedRate(frame.sample_rate()));
        }
        self.origin.get_or_insert(frame.position());
        match &mut self.resampler {
            Some(r) => {
                self.scratch.clear();
                r.process_into(frame.samples(), &mut self.scratch);
                self.pending.extend_from_slice(&self.scratch);
            }
            None => self.pending.extend_from_slice(frame.samples()),
        }
        let mut start = 0;
        while self.pending.len() - start >= FRAME {
            let score = self
                .detector
                .predict_i16(&self.pending[start..start + FRAME]);
            start += FRAME;
            self.score(score, events);
        }
        self.pending.drain(..start);
        Ok(())
    }

    /// Scores `frame` and returns what it decided.
    pub fn push(&mut self, frame: &AudioFrame) -> Result<Vec<VadEvent>, AudioError> {
        let mut events = Vec::new();
        self.push_into(frame, &mut events)?;
        Ok(events)
    }

    fn score(&mut self, score: f32, events: &mut Vec<VadEvent>) {
        self.last_score = score;
        let at = self.scored;
        self.scored += FRAME as u64;
        let voice = if at < self.warmup {
            false
        } else if self.speaking {
            score >= self.config.end_threshold
        } else {
            score >= self.config.threshold
        };
        // A run of frames of the kind that would change the state.
        if voice != self.speaking {
            if self.run_len == 0 {
                self.run_start = at;
            }
            self.run_len += FRAME as u64;
        } else {
            self.run_len = 0;
        }
        let needed = if self.speaking {
            self.min_silence
        } else {
            self.min_speech
        };
        if self.run_len >= needed {
            let position = self.to_input(self.run_start);
            let decided_at = self.to_input(self.scored);
            self.speaking = !self.speaking;
            self.run_len = 0;
            events.push(if self.speaking {
                VadEvent::SpeechStarted {
                    position,
                    decided_at,
                }
            } else {
                VadEvent::SpeechEnded {
                    position,
                    decided_at,
                }
            });
        }
    }

    fn to_input(&self, p16: u64) -> u64 {
        self.origin.unwrap_or(0) + convert_position(p16, RATE, self.input_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(samples: &[i16], rate: u32, size: usize) -> impl Iterator<Item = AudioFrame> + '_ {
        samples
            .chunks(size)
            .enumerate()
            .map(move |(i, c)| AudioFrame::new(c.to_vec(), rate, (i * size) as u64))
    }

    fn run(samples: &[i16], rate: u32) -> Vec<VadEvent> {
        let mut vad = VoiceActivity::new(rate, VadConfig::default()).unwrap();
        let mut events = Vec::new();
        for f in frames(samples, rate, (rate / 50) as usize) {
            vad.push_into(&f, &mut events).unwrap();
        }
        events
    }

    /// Deterministic white noise (xorshift32), 6 s, at full scale / `div`.
    pub(super) fn white_noise(seed: u32, div: i16) -> Vec<i16> {
        let mut x = seed;
        (0..96_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                ((x >> 16) as i16) / div
            })
            .collect()
    }

    #[test]
    fn silence_and_white_noise_are_not_speech() {
        assert_eq!(run(&vec![0; 16_000 * 3], 16_000), vec![]);
        assert_eq!(run(&vec![0; 8_000 * 3], 8_000), vec![]);
        // RMS −21 dBFS (div 8) and −27 dBFS (div 16), three seeds, at the
        // phone's rate and the detector's own.
        for div in [8, 16, 32] {
            for seed in [0x1234_5678, 0xdead_beef, 42] {
                let noise = white_noise(seed, div);
                assert_eq!(
                    run(&noise, 8_000),
                    vec![],
                    "noise/{div} seed {seed:#x} at 8 kHz"
                );
                assert_eq!(
                    run(&noise, 16_000),
                    vec![],
                    "noise/{div} seed {seed:#x} at 16 kHz"
                );
            }
        }
    }

    #[test]
    fn a_wrong_rate_is_a_typed_error() {
        let mut vad = VoiceActivity::new(8_000, VadConfig::default()).unwrap();
        let err = vad
            .push(&AudioFrame::new(vec![0; 320], 16_000, 0))
            .unwrap_err();
        assert_eq!(err, AudioError::UnsupportedRate(16_000));
        assert!(VoiceActivity::new(11_025, VadConfig::default()).is_err());
    }
}
