//! Hearing: a call's inbound audio through voice activity detection and a
//! recognizer, onto the session's user events — so the turn-taking rules
//! (immediate cuts, confirmed pauses, backchannels, preemptive generation)
//! run on real audio.
//!
//! ```text
//!  frames ──▶ VoiceActivity ──started/ended──▶ session.user_speech_started/ended   (in the caller's thread)
//!     │                │
//!     │                └──▶ RecognizerInput::SpeechStarted(pre-roll) / SpeechEnded
//!     └─resampled──▶ Recognition (its own thread or task) ──interim/final──▶ session.user_transcript
//! ```
//!
//! The voice activity decision is published in the thread that pushed the
//! frame, before `push` returns: a barge-in never waits for a recognizer.
//! The recognizer is fed through a bounded channel; if it falls that far
//! behind, frames are dropped for it (counted, logged once) rather than
//! memory growing — the turn-taking still hears the voice.

use std::collections::VecDeque;
use std::time::Duration;

use colloquy::audio::resample::Resampler;
use colloquy::audio::vad::{VadConfig, VadEvent, VoiceActivity};
use colloquy::audio::{
    AudioError, AudioFrame, RecognizerInput, Transcriber, convert_position, duration_to_samples,
};
use tokio::sync::mpsc;

use super::inputs::SpeechInputs;
use crate::bus::HeardSpan;
use crate::session::SessionHandle;
use crate::task::AbortOnDrop;

/// How a [`Listener`] hears.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerConfig {
    /// Voice activity thresholds.
    pub vad: VadConfig,
    /// Audio before the detected start that the recognizer also gets (the
    /// detector decides after `min_speech`; the word began before).
    pub pre_roll: Duration,
}

impl Default for ListenerConfig {
    /// The default detector, 300 ms of pre-roll.
    fn default() -> Self {
        Self {
            vad: VadConfig::default(),
            pre_roll: Duration::from_millis(300),
        }
    }
}

struct Recognizer {
    input: mpsc::Sender<RecognizerInput>,
    rate: u32,
    resampler: Option<Resampler>,
    pre_roll: VecDeque<AudioFrame>,
    pre_roll_samples: u64,
    dropped: u64,
    _transcripts: AbortOnDrop,
}

/// Hears one call: feed it the caller's audio with [`push`](Listener::push).
pub struct Listener {
    inputs: SpeechInputs,
    vad: VoiceActivity,
    rate: u32,
    recognizer: Option<Recognizer>,
    speaking: bool,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("inputs", &self.inputs)
            .field("rate", &self.rate)
            .field("speaking", &self.speaking)
            .finish()
    }
}

impl Listener {
    /// Hears audio at `rate` Hz for `session`, transcribing with
    /// `transcriber` (none: voice activity only, transcripts come from
    /// elsewhere). Call it inside a Tokio runtime.
    pub fn new(
        session: &SessionHandle,
        rate: u32,
        transcriber: Option<&dyn Transcriber>,
        config: ListenerConfig,
    ) -> Result<Self, AudioError> {
        Self::reporting_to(
            SpeechInputs::Local(session.clone()),
            rate,
            transcriber,
            config,
        )
    }

    /// The same, reporting to `inputs` (a remote session's queue).
    pub(crate) fn reporting_to(
        inputs: SpeechInputs,
        rate: u32,
        transcriber: Option<&dyn Transcriber>,
        config: ListenerConfig,
    ) -> Result<Self, AudioError> {
        let vad = VoiceActivity::new(rate, config.vad)?;
        let recognizer = match transcriber {
            None => None,
            Some(t) => {
                let recognition = t.open()?;
                let rec_rate = t.sample_rate();
                let resampler = (rec_rate != rate)
                    .then(|| Resampler::new(rate, rec_rate))
                    .transpose()?;
                let forward = inputs.clone();
                let mut transcripts = recognition.transcripts;
                let input_rate = rate;
                let task = tokio::spawn(async move {
                    while let Some(t) = transcripts.recv().await {
                        match t {
                            Ok(t) if t.text.trim().is_empty() => {}
                            Ok(t) => {
                                // Back on the call's input timeline.
                                let heard = HeardSpan {
                                    start: convert_position(t.start, rec_rate, input_rate),
                                    end: convert_position(t.end, rec_rate, input_rate),
                                    sample_rate: input_rate,
                                };
                                forward.transcript(t.text, t.is_final, heard);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "listener: the recognizer failed");
                            }
                        }
                    }
                });
                Some(Recognizer {
                    input: recognition.input,
                    rate: rec_rate,
                    resampler,
                    pre_roll: VecDeque::new(),
                    pre_roll_samples: duration_to_samples(config.pre_roll, rec_rate),
                    dropped: 0,
                    _transcripts: AbortOnDrop(task),
                })
            }
        };
        Ok(Self {
            inputs,
            vad,
            rate,
            recognizer,
            speaking: false,
        })
    }

    /// The rate it expects.
    pub fn sample_rate(&self) -> u32 {
        self.rate
    }

    /// Whether the caller is speaking, as the detector decided.
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Hears the next frame of the call: voice activity decided and published
    /// before this returns (the decisions are returned too, for timing); the
    /// frame handed to the recognizer.
    pub fn push(&mut self, frame: &AudioFrame) -> Result<Vec<VadEvent>, AudioError> {
        let mut events = Vec::new();
        self.vad.push_into(frame, &mut events)?;
        let rec_frame = match &mut self.recognizer {
            Some(r) => Some(match &mut r.resampler {
                Some(res) => AudioFrame::new(
                    res.process(frame.samples()),
                    r.rate,
                    convert_position(frame.position(), self.rate, r.rate),
                ),
                None => frame.clone(),
            }),
            None => None,
        };
        for event in &events {
            match *event {
                VadEvent::SpeechStarted { position, .. } => {
                    self.speaking = true;
                    self.inputs.speech_started();
                    if let Some(r) = &mut self.recognizer {
                        let at = convert_position(position, self.rate, r.rate);
                        r.send(RecognizerInput::SpeechStarted { position: at });
                        let pre_roll: Vec<_> = r.pre_roll.drain(..).collect();
                        for f in pre_roll {
                            if r.input.capacity() > CONTROL_ROOM {
                                r.send(RecognizerInput::Frame(f));
                            } else {
                                r.dropped_frame();
                            }
                        }
                    }
                }
                VadEvent::SpeechEnded { position, .. } => {
                    self.speaking = false;
                    self.inputs.speech_ended();
                    if let Some(r) = &mut self.recognizer {
                        let at = convert_position(position, self.rate, r.rate);
                        r.send(RecognizerInput::SpeechEnded { position: at });
                    }
                }
                _ => {}
            }
        }
        if let (Some(r), Some(f)) = (&mut self.recognizer, rec_frame) {
            if self.speaking {
                // Frames leave room for the utterance's start and end: those
                // are never the ones dropped.
                if r.input.capacity() > CONTROL_ROOM {
                    r.send(RecognizerInput::Frame(f));
                } else {
                    r.dropped_frame();
                }
            } else {
                r.pre_roll.push_back(f);
                let mut held: u64 = r.pre_roll.iter().map(|f| f.len() as u64).sum();
                while held > r.pre_roll_samples {
                    let Some(old) = r.pre_roll.pop_front() else {
                        break;
                    };
                    held -= old.len() as u64;
                }
            }
        }
        Ok(events)
    }
}

/// Slots of the recognizer's queue kept for `SpeechStarted`/`SpeechEnded`.
const CONTROL_ROOM: usize = 4;

impl Recognizer {
    fn send(&mut self, input: RecognizerInput) {
        if self.input.try_send(input).is_err() {
            self.dropped_frame();
        }
    }

    fn dropped_frame(&mut self) {
        if self.dropped == 0 {
            tracing::warn!("listener: the recognizer is behind; frames are dropped for it");
        }
        self.dropped += 1;
        metrics::counter!("colloquy_listener_dropped_frames_total").increment(1);
    }
}
