//! ElevenLabs' `stream-input` WebSocket as a [`Synthesizer`]
//! ([`ElevenLabsSpeech`]), with the provider's own character timestamps as
//! its alignment.
//!
//! Why a socket rather than ElevenLabs' HTTP stream: the socket reports,
//! with each audio message, when each character is spoken, so the
//! "what the caller heard" of a barge-in is exact at the word, not estimated
//! from a speaking rate ([`Synthesizer::alignment_is_estimated`] is `false`).
//!
//! # The protocol, as used here
//!
//! One socket per text (`wss://…/v1/text-to-speech/{voice_id}/stream-input
//! ?model_id=…&output_format=pcm_<rate>&sync_alignment=true`, the key in the
//! `xi-api-key` header): the opening `{"text":" "}` with the voice settings,
//! the text (ending in a space) with `"flush": true`, then the end of input
//! `{"text":""}`. The server answers with messages
//! `{"audio":"<base64 PCM16 LE>","alignment":{"chars":[…],"charStartTimesMs":[…],
//! "charDurationsMs":[…]},…}` and finally `{"isFinal":true}`.
//! `normalizedAlignment` (of the text after ElevenLabs' normalisation,
//! "$5" → "five dollars") is ignored: it cannot be mapped onto the caller's
//! characters.
//!
//! # Whose time the timestamps are in
//!
//! A message's times are taken as relative to *its own audio*: time 0 is
//! the sample at which the message's first audio byte falls, i.e. the
//! samples received before it (`bytes / 2`, rounded down when an odd byte is
//! carried). ElevenLabs' reference does not say whether times reset per
//! message; pipecat's client (`services/elevenlabs/tts.py`) treats them as
//! per-message too, adding up each message's last character end — the same
//! instant when a message's audio ends where its last character does. If the
//! provider ever sent times from the start of the session instead, marks
//! would come out *late*, so the heard text would miss words rather than
//! claim ones not played; and marks are never released before their audio
//! is received. [`crate::mock::elevenlabs`] follows the same convention.
//!
//! # The marks
//!
//! See `alignment.rs`: a mark at each word end (the last character before
//! whitespace, or the end of the text) at the sample where that character's
//! audio ends, released once that much audio was received; at `isFinal` the
//! words never reported get their mark at the end, then the mark for the
//! whole text at the last sample. A message whose `alignment` restarts from
//! the first character (pipecat#4316) moves no mark with its repeat.
//!
//! # Failures
//!
//! Typed [`SpeechFailure`]s under the provider name `elevenlabs`: an upgrade
//! refused with 401/403 is `Unauthorized`, 429 `RateLimited` (with
//! `Retry-After`), any other status `Status`; an error message from the
//! socket is `Unauthorized` (code 401/403, or an `error` kind such as
//! `invalid_api_key` / `unauthorized`, whatever the code — the socket sends
//! them with 1008), `RateLimited` (code 429, or a kind such as
//! `quota_exceeded` / `rate_limit_exceeded`), `Status` (any other HTTP-like
//! `code`) or `Connection` with the provider's words; an abnormal close
//! frame `Connection`; malformed JSON or bad base64 `Malformed`; the socket
//! closing before `isFinal` `Dropped`; no audio within the deadlines
//! `FirstOutputTimeout` / `OutputGapTimeout` (the gap counts the provider's
//! silence, not a consumer that reads late); a message over 4 MiB
//! `TooLarge`. PCM ending mid-sample at `isFinal` is not a failure: the odd
//! last byte is dropped with a warning and the audio and marks before it
//! are delivered. The key is sent only in the header and replaced by `***`
//! in anything the provider echoes.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use colloquy::audio::elevenlabs::{ElevenLabsConfig, ElevenLabsSpeech};
//! use colloquy::audio::{SynthEvent, Synthesizer};
//! use futures_util::StreamExt;
//!
//! let config = ElevenLabsConfig::from_env("21m00Tcm4TlvDq8ikWAM").expect("ELEVENLABS_API_KEY");
//! let speech = ElevenLabsSpeech::new(config).unwrap();
//! let mut events = speech.synthesize("Hello world.");
//! while let Some(event) = events.next().await {
//!     match event.unwrap() {
//!         SynthEvent::Audio(pcm) => println!("{} samples", pcm.len()),
//!         SynthEvent::Mark { chars, sample } => println!("{chars} chars by sample {sample}"),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

mod alignment;
mod config;
mod message;
mod stream;
#[cfg(all(test, feature = "mock"))]
mod tests;

pub use config::{ElevenLabsConfig, PcmRate, VoiceSettings};

use std::sync::Arc;

use futures_util::stream::{self as futures_stream, BoxStream, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::{AudioError, SpeechFailure, SynthEvent, Synthesizer};

const PROVIDER: &str = "elevenlabs";

/// The largest server message accepted (a message holds well under a
/// second of audio).
pub(crate) const MAX_MESSAGE: usize = 4 << 20;

/// ElevenLabs speech synthesis over the `stream-input` socket. Cheap to
/// clone; each [`synthesize`](Synthesizer::synthesize) opens its own socket.
#[derive(Clone, Debug)]
pub struct ElevenLabsSpeech {
    config: Arc<ElevenLabsConfig>,
}

impl ElevenLabsSpeech {
    /// A synthesizer for `config` (no connection is made yet). Fails when the
    /// voice or model id would not stay a plain path or query part.
    pub fn new(config: ElevenLabsConfig) -> Result<Self, AudioError> {
        for (what, id) in [
            ("voice id", &config.voice_id),
            ("model id", &config.model_id),
        ] {
            if !config::is_plain_id(id) {
                return Err(AudioError::engine(
                    PROVIDER,
                    format!("invalid {what} {id:?} (letters, digits, '_', '-', '.')"),
                ));
            }
        }
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// The configuration it speaks with.
    pub fn config(&self) -> &ElevenLabsConfig {
        &self.config
    }
}

impl Synthesizer for ElevenLabsSpeech {
    fn name(&self) -> &'static str {
        PROVIDER
    }

    fn sample_rate(&self) -> u32 {
        self.config.rate.hz()
    }

    fn alignment_is_estimated(&self) -> bool {
        false
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>> {
        if text.trim().is_empty() {
            // Nothing to say: the protocol would take the empty text as the
            // end of input. The whole (blank) text is "heard" at once.
            let mark = SynthEvent::Mark {
                chars: text.chars().count(),
                sample: 0,
            };
            return futures_stream::iter([Ok(mark)]).boxed();
        }
        let request = match self.request() {
            Ok(r) => r,
            Err(failure) => {
                return futures_stream::iter([Err(AudioError::provider(PROVIDER, failure))])
                    .boxed();
            }
        };
        let session = stream::Session::new(self.config.clone(), request, text);
        futures_stream::unfold(session, |mut s| async move {
            let next = s.next().await?;
            Some((next, s))
        })
        .boxed()
    }
}

impl ElevenLabsSpeech {
    fn request(
        &self,
    ) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, SpeechFailure> {
        let mut request = self
            .config
            .url()
            .into_client_request()
            .map_err(|e| SpeechFailure::Connection(format!("invalid URL: {e}")))?;
        let mut key = HeaderValue::from_str(self.config.key.expose())
            .map_err(|_| SpeechFailure::Connection("invalid key (not a header value)".into()))?;
        key.set_sensitive(true);
        request.headers_mut().insert("xi-api-key", key);
        Ok(request)
    }
}
