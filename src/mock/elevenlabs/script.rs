//! What [`MockElevenLabs`](super::MockElevenLabs) does on each socket, and
//! the deterministic speech it generates, so a test can compute the exact
//! samples and timestamps a client must end up with.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::mock::MockGate;

/// How the mock fails, once.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ElevenLabsFault {
    /// Refuses the upgrade with this HTTP status (and `Retry-After` when
    /// set), the body `{"detail":{"status":"rejected","message":…}}`.
    Reject {
        /// The status (401, 429, 503, …).
        status: u16,
        /// The `Retry-After` header's value.
        retry_after: Option<String>,
        /// The body's message.
        message: String,
    },
    /// After this many audio chunks, an error message
    /// `{"message":…,"error":…,"code":…}`, then a close with 1008.
    ErrorMessage {
        /// Audio chunks sent first.
        after_chunks: usize,
        /// `error`, the kind.
        error: String,
        /// `message`.
        message: String,
        /// `code`.
        code: Option<u16>,
    },
    /// After this many audio chunks, a close frame with this code and reason.
    Close {
        /// Audio chunks sent first.
        after_chunks: usize,
        /// The close code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// After this many audio chunks, a text frame that is not JSON.
    MalformedJson {
        /// Audio chunks sent first.
        after_chunks: usize,
    },
    /// After this many audio chunks, an audio message that is not base64.
    BadBase64 {
        /// Audio chunks sent first.
        after_chunks: usize,
    },
    /// After this many audio chunks, the TCP connection is dropped without a
    /// close frame.
    Drop {
        /// Audio chunks sent first.
        after_chunks: usize,
    },
    /// After this many audio chunks, nothing but WebSocket pings, every
    /// `ping_every`, until the client goes.
    Stall {
        /// Audio chunks sent first.
        after_chunks: usize,
        /// Between pings.
        ping_every: Duration,
    },
}

impl ElevenLabsFault {
    pub(crate) fn after_chunks(&self) -> Option<usize> {
        match self {
            Self::Reject { .. } => None,
            Self::ErrorMessage { after_chunks, .. }
            | Self::Close { after_chunks, .. }
            | Self::MalformedJson { after_chunks }
            | Self::BadBase64 { after_chunks }
            | Self::Drop { after_chunks }
            | Self::Stall { after_chunks, .. } => Some(*after_chunks),
        }
    }
}

/// The mock's behaviour on every socket.
#[derive(Clone, Debug)]
pub struct ElevenLabsScript {
    /// The `xi-api-key` it accepts; any other is refused with 401.
    pub key: String,
    /// Audio per non-whitespace character, in ms.
    pub ms_per_char: u32,
    /// Silence per whitespace character, in ms.
    pub space_ms: u32,
    /// Bytes of PCM per audio message (odd sizes split samples).
    pub chunk_bytes: usize,
    /// Before the first audio message of a socket.
    pub first_audio_delay: Duration,
    /// Between audio messages.
    pub chunk_delay: Duration,
    /// Holds the audio after this many chunks until the gate opens.
    pub hold: Option<(usize, MockGate)>,
    /// A failure to act out.
    pub fault: Option<ElevenLabsFault>,
    /// The audio message (counted from 0 in each generated buffer) whose
    /// `alignment` restarts from the buffer's first character, as
    /// pipecat#4316 reports of the real service: the characters of the
    /// earlier messages again, timed from 0 (as if spoken in this message's
    /// audio), then its own characters at their true times.
    pub restart_alignment: Option<usize>,
}

impl ElevenLabsScript {
    /// Accepts `key`; 40 ms a character, 10 ms a space, 4800-byte chunks
    /// (100 ms at 24 kHz), no delays, no fault.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            ms_per_char: 40,
            space_ms: 10,
            chunk_bytes: 4800,
            first_audio_delay: Duration::ZERO,
            chunk_delay: Duration::ZERO,
            hold: None,
            fault: None,
            restart_alignment: None,
        }
    }

    /// The same with audio messages of `bytes` bytes (at least 1).
    pub fn chunk_bytes(mut self, bytes: usize) -> Self {
        self.chunk_bytes = bytes.max(1);
        self
    }

    /// The same with `ms` of audio per character and `space_ms` per space.
    pub fn pace(mut self, ms: u32, space_ms: u32) -> Self {
        self.ms_per_char = ms;
        self.space_ms = space_ms;
        self
    }

    /// The same with delays before the first chunk and between chunks.
    pub fn delays(mut self, first_audio: Duration, between_chunks: Duration) -> Self {
        self.first_audio_delay = first_audio;
        self.chunk_delay = between_chunks;
        self
    }

    /// The same, holding the audio after `chunks` chunks until `gate` opens.
    pub fn hold_after(mut self, chunks: usize, gate: &MockGate) -> Self {
        self.hold = Some((chunks, gate.clone()));
        self
    }

    /// The same, the `alignment` of audio message `message` restarting
    /// from the first character (see
    /// [`restart_alignment`](Self::restart_alignment)).
    pub fn restart_alignment_at(mut self, message: usize) -> Self {
        self.restart_alignment = Some(message);
        self
    }

    /// The same with this fault.
    pub fn fault(mut self, fault: ElevenLabsFault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The speech the mock generates for `text` (the socket's buffer: the
    /// opening `" "` included) at `rate`, starting at sample `start`: a
    /// tone per character (its pitch and loudness from the character),
    /// silence for whitespace. A function of the absolute sample index, so
    /// rendering two texts one after the other equals rendering both at once.
    pub fn render(&self, text: &str, rate: u32, start: u64) -> MockSpeech {
        let mut samples = Vec::new();
        let mut chars = Vec::new();
        let mut at = start;
        for ch in text.chars() {
            let ms = if ch.is_whitespace() {
                self.space_ms
            } else {
                self.ms_per_char
            };
            let n = u64::from(ms) * u64::from(rate) / 1000;
            let period = 20 + u64::from(ch) % 40;
            let amplitude = 3000 + (i64::from(u32::from(ch)) % 50) * 400;
            for i in at..at + n {
                let s = if ch.is_whitespace() {
                    0
                } else {
                    // A sawtooth through zero: both bytes of a sample vary.
                    ((i % period) as i64 * 2 * amplitude / period as i64) - amplitude
                };
                samples.push(s.clamp(i16::MIN as i64, i16::MAX as i64) as i16);
            }
            chars.push(MockChar {
                ch,
                start: at,
                end: at + n,
            });
            at += n;
        }
        MockSpeech {
            samples,
            chars,
            start,
        }
    }
}

/// One character of [`MockSpeech`], in samples from the socket's first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MockChar {
    /// The character.
    pub ch: char,
    /// Its first sample.
    pub start: u64,
    /// One past its last sample.
    pub end: u64,
}

/// Speech the mock generated for one buffer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MockSpeech {
    /// The PCM.
    pub samples: Vec<i16>,
    /// Where each character is.
    pub chars: Vec<MockChar>,
    /// The sample it starts at, from the socket's first.
    pub start: u64,
}

impl MockSpeech {
    /// The audio messages for this speech, `chunk_bytes` each, with the
    /// documented convention (`audio/elevenlabs.rs`): a message's
    /// `alignment` holds the characters whose first sample *starts* in its
    /// bytes, with times relative to the sample its first byte falls in;
    /// characters past the audio go with the last message.
    /// `normalizedAlignment` is upper-cased and shifted by 1 ms, so a client
    /// that read it would be caught. Message `restart` (if any) has its
    /// `alignment` restart from the first character (see
    /// [`ElevenLabsScript::restart_alignment`]).
    pub(crate) fn messages(
        &self,
        rate: u32,
        chunk_bytes: usize,
        restart: Option<usize>,
    ) -> Vec<String> {
        let pcm: Vec<u8> = self.samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let base = self.start * 2;
        let n = pcm.len().div_ceil(chunk_bytes.max(1));
        let ms = |samples: u64| samples as f64 * 1000.0 / f64::from(rate);
        (0..n)
            .map(|k| {
                let (b0, b1) = (k * chunk_bytes, ((k + 1) * chunk_bytes).min(pcm.len()));
                let last = k + 1 == n;
                let (abs0, abs1) = (base + b0 as u64, base + b1 as u64);
                let reference = abs0 / 2;
                let here: Vec<&MockChar> = self
                    .chars
                    .iter()
                    .filter(|c| 2 * c.start >= abs0 && (2 * c.start < abs1 || last))
                    .collect();
                // (character, start in ms from the message's first sample)
                let mut timed: Vec<(&MockChar, f64)> = Vec::new();
                if restart == Some(k) {
                    let before = self.chars.iter().filter(|c| 2 * c.start < abs0);
                    timed.extend(before.map(|c| (c, ms(c.start - self.start))));
                }
                timed.extend(here.iter().map(|&c| (c, ms(c.start - reference))));
                let alignment = |upper: bool, shift: f64| {
                    json!({
                        "chars": timed.iter().map(|(c, _)| if upper {
                            c.ch.to_uppercase().collect::<String>()
                        } else {
                            c.ch.to_string()
                        }).collect::<Vec<_>>(),
                        "charStartTimesMs": timed.iter()
                            .map(|(_, t)| t + shift).collect::<Vec<_>>(),
                        "charDurationsMs": timed.iter().map(|(c, _)| ms(c.end - c.start)).collect::<Vec<_>>(),
                    })
                };
                json!({
                    "audio": base64::engine::general_purpose::STANDARD.encode(&pcm[b0..b1]),
                    "isFinal": Value::Null,
                    "normalizedAlignment": alignment(true, 1.0),
                    "alignment": alignment(false, 0.0),
                })
                .to_string()
            })
            .collect()
    }
}
