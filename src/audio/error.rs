//! What can go wrong with sound: bad input from a caller or an embedder, an
//! engine that fails. Typed, so a transport can end one call cleanly and
//! leave every other call alone.

use std::time::Duration;

/// An error of the audio layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// A sample rate this stage does not handle.
    #[error("unsupported sample rate {0} Hz (8000, 16000, 22050, 24000 and 48000 are)")]
    UnsupportedRate(u32),
    /// A frame of the wrong size for this stage.
    #[error("frame of {got} samples where {want} were expected")]
    FrameSize {
        /// Samples received.
        got: usize,
        /// Samples expected.
        want: usize,
    },
    /// A WAV file this layer cannot read (only mono or stereo PCM16).
    #[error("unreadable WAV: {0}")]
    Wav(String),
    /// A speech engine failed (it says why).
    #[error("{engine}: {reason}")]
    Engine {
        /// Which engine.
        engine: &'static str,
        /// What it reported.
        reason: String,
    },
    /// The stream this stage fed or read from has ended.
    #[error("the audio stream is closed")]
    Closed,
    /// A hosted speech provider failed, in a way a fallback chain or a
    /// caller can act on (see [`SpeechFailure::is_retryable`]).
    #[error("{provider}: {failure}")]
    Provider {
        /// Which provider (`openai-speech`, `deepgram`, …).
        provider: &'static str,
        /// What went wrong.
        failure: SpeechFailure,
    },
}

/// How a hosted speech provider failed. Messages never hold credentials:
/// a provider that echoes the key, or any bearer token or `key=` value, has
/// it replaced by `***`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpeechFailure {
    /// The key was refused (HTTP 401 or 403, or the socket's equivalent).
    #[error("unauthorized (HTTP {status}): {message}")]
    Unauthorized {
        /// 401 or 403.
        status: u16,
        /// What the provider said.
        message: String,
    },
    /// Too many requests (HTTP 429).
    #[error("rate limited (retry after {retry_after:?}): {message}")]
    RateLimited {
        /// The `Retry-After` the provider asked for.
        retry_after: Option<Duration>,
        /// What the provider said.
        message: String,
    },
    /// Any other non-success status.
    #[error("HTTP {status}: {message}")]
    Status {
        /// The status code.
        status: u16,
        /// What the provider said.
        message: String,
    },
    /// The connection could not be made, or broke.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The provider sent something its protocol does not allow.
    #[error("malformed reply: {0}")]
    Malformed(String),
    /// No useful output (audio, a transcript) within the first-output
    /// deadline; keep-alives do not count.
    #[error("no output within {0:?}")]
    FirstOutputTimeout(Duration),
    /// Useful output stopped for longer than the gap deadline.
    #[error("no output for {0:?} after the last")]
    OutputGapTimeout(Duration),
    /// The provider closed the stream before the utterance was complete.
    #[error("the stream ended before the utterance was complete")]
    Dropped,
    /// The provider closed the stream with a code that says the same
    /// stream would fail again (Deepgram: 1008, bad audio; 4000–4999): not
    /// reconnected.
    #[error("closed by the provider ({code}): {message}")]
    Closed {
        /// The WebSocket close code.
        code: u16,
        /// The close reason.
        message: String,
    },
    /// A reply exceeded a size cap.
    #[error("reply exceeds {limit} bytes")]
    TooLarge {
        /// The cap.
        limit: usize,
    },
}

impl SpeechFailure {
    /// Whether trying again (or the next provider) may help: everything but
    /// a refused key, a malformed reply and a close that refuses the stream.
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            Self::Unauthorized { .. } | Self::Malformed(_) | Self::Closed { .. }
        )
    }

    /// A short stable name for metrics labels and JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate_limited",
            Self::Status { .. } => "status",
            Self::Connection(_) => "connection",
            Self::Malformed(_) => "malformed",
            Self::FirstOutputTimeout(_) => "first_output_timeout",
            Self::OutputGapTimeout(_) => "output_gap_timeout",
            Self::Dropped => "dropped",
            Self::Closed { .. } => "closed",
            Self::TooLarge { .. } => "too_large",
        }
    }
}

impl SpeechFailure {
    /// What an HTTP refusal (a response, a refused WebSocket upgrade) stands
    /// for: 401/403 `Unauthorized`, 429 `RateLimited`, any other `Status`.
    pub(crate) fn refused(status: u16, retry_after: Option<Duration>, message: String) -> Self {
        match status {
            401 | 403 => Self::Unauthorized { status, message },
            429 => Self::RateLimited {
                retry_after,
                message,
            },
            _ => Self::Status { status, message },
        }
    }
}

/// A `Retry-After` header in seconds (fractions allowed, capped at an hour;
/// the HTTP-date form is not read).
pub(crate) fn retry_after(header: Option<&str>) -> Option<Duration> {
    header
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(3600.0)))
}

/// What a provider said, with its key (if echoed) and anything shaped like a
/// credential replaced by `***` ([`crate::secret::scrub`]).
pub(crate) fn redact(message: &str, key: Option<&str>) -> String {
    crate::secret::scrub(message, key.as_slice())
}

impl AudioError {
    /// An engine's failure.
    pub fn engine(engine: &'static str, reason: impl Into<String>) -> Self {
        Self::Engine {
            engine,
            reason: reason.into(),
        }
    }

    /// A hosted provider's failure.
    pub fn provider(provider: &'static str, failure: SpeechFailure) -> Self {
        Self::Provider { provider, failure }
    }
}
