//! Deepgram's live streaming recognizer (`wss://api.deepgram.com/v1/listen`)
//! as a [`Transcriber`]: one WebSocket per call, interims while the caller
//! speaks, one final per utterance.
//!
//! Why a socket per call needs more than "send frames, print results":
//!
//! - **Only speech is sent.** The listener feeds a recognizer the frames of
//!   an utterance (pre-roll included) and nothing between utterances, so the
//!   socket idles for as long as the caller listens. Deepgram closes a socket
//!   that hears nothing for about 10 s; a `KeepAlive` goes out whenever no
//!   audio was sent for [`DeepgramConfig::keep_alive`].
//! - **Deepgram's clock is not the call's.** Its word times count the audio
//!   *this connection* received, which skips every silence and restarts on a
//!   reconnect. A small map from connection samples to input positions (one
//!   entry per contiguous run of frames) turns them back into positions in
//!   the input, the only timeline the runtime reports.
//! - **The end of an utterance is the local detector's.** `SpeechEnded`
//!   sends `Finalize`; the utterance's final is emitted when Deepgram's
//!   finals for it arrive (`from_finalize`, or a `speech_final` reaching its
//!   end), when a result starts past its end (an unanswered `Finalize`),
//!   or when its deadline passes with its results all final. A result
//!   belongs to the newest utterance whose span holds its start, so one
//!   utterance's words never close another. Exactly one final per
//!   utterance that had audio, even one whose audio the cap dropped.
//! - **A socket can drop mid-sentence.** Each unfinished utterance keeps its
//!   audio (up to [`DeepgramConfig::max_buffered`]); a lost socket is
//!   reopened and the audio sent again, with the position map rebuilt.
//!   [`DeepgramConfig::reconnect_attempts`] is one budget for every
//!   reconnect until the next final, with backoff after the first, and a
//!   resend keeps the deadlines already running, so a server that keeps
//!   closing ends the stream. A close with 1008 (audio it cannot decode) or
//!   4000–4999 is not retried: [`Closed`]. Interims already emitted may
//!   come again; finals of audio the cap dropped are kept.
//! - **A slow consumer does not stall the socket**: transcripts wait in a
//!   small queue (newer interims replace older, finals are never dropped)
//!   while the socket is still read and kept alive.
//! - **Deadlines on useful output**, never on keep-alives or metadata: a
//!   result within [`DeepgramConfig::first_result_timeout`] of an
//!   utterance's first audio, then within
//!   [`DeepgramConfig::result_gap_timeout`] while audio flows, and the final
//!   within the first deadline of `Finalize` (which replaces the gap
//!   deadline). A missed one ends the stream with a typed [`SpeechFailure`]
//!   so a fallback above can take over; after the input ends, the close
//!   deadline wins a tie and the finals collected are delivered.
//!
//! # Turn-taking: the local detector wins
//!
//! Deepgram's own `SpeechStarted` (`vad_events`) and `UtteranceEnd` are
//! logged (`tracing` debug) and never start or end a turn. The local voice
//! activity detector decides on the frame (about 20 ms) with no network in
//! the path, and a barge-in must not wait on a round trip. `UtteranceEnd`
//! serves one purpose: it closes an utterance whose `Finalize` answer went
//! missing, when the silence it reports reaches past that `Finalize`.
//!
//! # Errors
//!
//! A refused upgrade is [`Unauthorized`] (401/403), [`RateLimited`] (429,
//! with `Retry-After`) or [`Status`]; a frame that is not the protocol's
//! JSON is [`Malformed`]; a socket lost mid-utterance that no reconnect
//! could replace is the reconnect's failure (or [`Dropped`]). The key never
//! appears in an error, a log line or a `Debug`: it is a
//! [`Secret`](crate::Secret), and whatever the server says is redacted
//! before it is kept.
//!
//! [`SpeechFailure`]: super::SpeechFailure
//! [`Unauthorized`]: super::SpeechFailure::Unauthorized
//! [`RateLimited`]: super::SpeechFailure::RateLimited
//! [`Status`]: super::SpeechFailure::Status
//! [`Malformed`]: super::SpeechFailure::Malformed
//! [`Dropped`]: super::SpeechFailure::Dropped
//! [`Closed`]: super::SpeechFailure::Closed
//!
//! ```no_run
//! use colloquy::audio::deepgram::{DeepgramConfig, DeepgramTranscriber};
//! use colloquy::audio::{AudioFrame, RecognizerInput, Transcriber};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let recognizer = DeepgramTranscriber::new(DeepgramConfig::from_env().with_language("en"))?;
//! let mut stream = recognizer.open()?;
//! let rate = recognizer.sample_rate();
//! stream.input.send(RecognizerInput::SpeechStarted { position: 0 }).await?;
//! stream.input.send(RecognizerInput::Frame(AudioFrame::new(vec![0; 320], rate, 0))).await?;
//! stream.input.send(RecognizerInput::SpeechEnded { position: 320 }).await?;
//! drop(stream.input);
//! while let Some(t) = stream.transcripts.recv().await {
//!     let t = t?;
//!     println!("{} {}", if t.is_final { "final" } else { "interim" }, t.text);
//! }
//! # Ok(()) }
//! ```

mod config;
mod connect;
mod message;
mod session;
mod timeline;
mod utterance;

#[cfg(all(test, feature = "mock"))]
mod tests;

pub use config::{DeepgramConfig, DeepgramEncoding};

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{AudioError, Recognition, Transcriber};

/// The provider's name in errors and metrics.
const PROVIDER: &str = "deepgram";

/// Deepgram's live recognizer, one socket per [`open`](Transcriber::open).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct DeepgramTranscriber {
    config: Arc<DeepgramConfig>,
}

impl DeepgramTranscriber {
    /// A recognizer for `config` (nothing is connected yet). Fails on a
    /// rate of 0 or a URL that is not `ws://` or `wss://`.
    pub fn new(config: DeepgramConfig) -> Result<Self, AudioError> {
        if config.sample_rate == 0 {
            return Err(AudioError::UnsupportedRate(0));
        }
        if !(config.base_url.starts_with("wss://") || config.base_url.starts_with("ws://")) {
            return Err(AudioError::engine(
                PROVIDER,
                "the base URL must start with wss:// or ws://",
            ));
        }
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// Its configuration.
    pub fn config(&self) -> &DeepgramConfig {
        &self.config
    }
}

impl Transcriber for DeepgramTranscriber {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn sample_rate(&self) -> u32 {
        self.config.sample_rate
    }

    /// Starts the stream's socket task (call it inside a Tokio runtime).
    /// Dropping the [`Recognition`]'s receiver ends the task and closes the
    /// socket; closing its sender sends `CloseStream` and delivers the last
    /// results before the transcripts close.
    fn open(&self) -> Result<Recognition, AudioError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            AudioError::engine(PROVIDER, "open() needs a Tokio runtime to run its socket")
        })?;
        let (input, input_rx) = mpsc::channel(256);
        let (out, transcripts) = mpsc::channel(64);
        let session = session::Session::new(self.config.clone(), input_rx, out);
        runtime.spawn(session.run());
        Ok(Recognition { input, transcripts })
    }
}
