//! What can go wrong with sound: bad input from a caller or an embedder, an
//! engine that fails. Typed, so a transport can end one call cleanly and
//! leave every other call alone.

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
}

impl AudioError {
    /// An engine's failure.
    pub fn engine(engine: &'static str, reason: impl Into<String>) -> Self {
        Self::Engine {
            engine,
            reason: reason.into(),
        }
    }
}
