//! Hearing words: audio in, interim and final transcripts out, each with
//! where in the input audio it was heard.
//!
//! A recognizer runs as its own task or thread, fed through a channel, so a
//! slow engine never holds up the frame loop that detects voice activity and
//! cuts the agent: that decision must not wait for words.

use tokio::sync::mpsc;

use super::{AudioError, AudioFrame};

/// What a recognizer is fed, in stream order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecognizerInput {
    /// Voice activity began at `position` (input samples at the recognizer's
    /// rate); the frames that follow, from a little before it, are speech.
    SpeechStarted {
        /// Where the speech began.
        position: u64,
    },
    /// Audio at the recognizer's rate.
    Frame(AudioFrame),
    /// Voice activity ended at `position`: the utterance is complete and its
    /// final transcript is due.
    SpeechEnded {
        /// Where the speech ended.
        position: u64,
    },
}

/// Words the recognizer heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The words (may be empty: speech with no recognizable word).
    pub text: String,
    /// A final transcript closes its utterance; an interim may still change.
    pub is_final: bool,
    /// Where the utterance began in the input (samples at the recognizer's
    /// rate).
    pub start: u64,
    /// Where the audio this transcript covers ends.
    pub end: u64,
}

/// The two ends of one recognition stream.
#[derive(Debug)]
pub struct Recognition {
    /// Where the audio goes. Closing it ends the stream.
    pub input: mpsc::Sender<RecognizerInput>,
    /// Where transcripts come out; closes when the recognizer stops.
    pub transcripts: mpsc::Receiver<Result<Transcript, AudioError>>,
}

/// A speech-to-text engine. One instance serves many calls.
pub trait Transcriber: Send + Sync + 'static {
    /// The sample rate of the audio it wants.
    fn sample_rate(&self) -> u32;

    /// The engine's name in logs, metrics and a chain's status
    /// (`pocketsphinx`, `openai-transcription`, …).
    fn name(&self) -> &'static str {
        "transcriber"
    }

    /// Starts recognizing one stream of audio (a call's caller side).
    fn open(&self) -> Result<Recognition, AudioError>;
}
