//! Sound: the frames, codecs and engines that let the runtime hear and speak.
//!
//! Everything here is plain data and synchronous or channel-fed engines, with
//! no actor framework: the session's speaker and the call transports in
//! `colloquy-actors` build on it. What each part is for:
//!
//! - [`AudioFrame`]: mono PCM16 that knows its rate and its position in the
//!   stream, so every report about sound is a sample position.
//! - [`mulaw`]: G.711 µ-law, the phone network's 8 kHz codec.
//! - [`resample`]: between the rates calls, engines and browsers use.
//! - [`wav`]: reading and writing WAV files (tests, demos, recordings).
//! - [`vad`]: voice activity detection on inbound audio: speech started and
//!   ended, with their positions.
//! - [`Transcriber`] and [`Synthesizer`]: the speech engines' traits; the
//!   offline engines (espeak-ng, PocketSphinx) are behind cargo features.
//! - [`openai`]: OpenAI-compatible hosted speech and transcription.
//! - `deepgram` (feature `deepgram`): Deepgram's live streaming recognizer
//!   as a [`Transcriber`], one WebSocket per call.
//! - `elevenlabs` (feature `elevenlabs`): ElevenLabs' streaming socket as a
//!   [`Synthesizer`] whose alignment is the provider's own timestamps.
//! - [`chain`]: fallback across engines, with a breaker per engine.

pub mod chain;
#[cfg(feature = "deepgram")]
#[cfg_attr(docsrs, doc(cfg(feature = "deepgram")))]
pub mod deepgram;
#[cfg(feature = "elevenlabs")]
#[cfg_attr(docsrs, doc(cfg(feature = "elevenlabs")))]
pub mod elevenlabs;
mod error;
#[cfg(feature = "espeak")]
#[cfg_attr(docsrs, doc(cfg(feature = "espeak")))]
pub mod espeak;
mod frame;
pub mod mulaw;
pub mod openai;
mod pcm;
#[cfg(feature = "pocketsphinx")]
#[cfg_attr(docsrs, doc(cfg(feature = "pocketsphinx")))]
pub mod pocketsphinx;
pub mod resample;
mod synthesizer;
mod transcriber;
pub mod vad;
pub mod wav;

pub use error::{AudioError, SpeechFailure};
pub use frame::{AudioFrame, convert_position, duration_to_samples, samples_to_duration};
pub use synthesizer::{Alignment, SynthEvent, Synthesizer};
pub use transcriber::{Recognition, RecognizerInput, Transcriber, Transcript};
