//! A frame of sound: mono PCM16 samples that know their sample rate and where
//! they sit in their stream.
//!
//! Every timing colloquy reports about sound — where speech started, which
//! sample the caller last heard, how long a reply took to reach the phone — is
//! a *position in a stream, in samples*. Frames carry it, so no stage has to
//! keep a separate clock that can drift from the audio it describes.

use std::time::Duration;

/// Mono, signed 16-bit PCM at `sample_rate`, starting at sample `position`
/// of its stream (counted at the same rate).
#[derive(Clone, PartialEq, Eq)]
pub struct AudioFrame {
    samples: Vec<i16>,
    sample_rate: u32,
    position: u64,
}

impl std::fmt::Debug for AudioFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the samples themselves: a caller's voice is not a log line.
        f.debug_struct("AudioFrame")
            .field("samples", &self.samples.len())
            .field("sample_rate", &self.sample_rate)
            .field("position", &self.position)
            .finish()
    }
}

impl AudioFrame {
    /// A frame of `samples` at `sample_rate` Hz whose first sample is sample
    /// `position` of its stream.
    pub fn new(samples: Vec<i16>, sample_rate: u32, position: u64) -> Self {
        Self {
            samples,
            sample_rate,
            position,
        }
    }

    /// The samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// The samples, owned.
    pub fn into_samples(self) -> Vec<i16> {
        self.samples
    }

    /// Samples per second.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The stream position of the first sample.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The stream position just after the last sample.
    pub fn end(&self) -> u64 {
        self.position + self.samples.len() as u64
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether the frame holds no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// How long the frame plays.
    pub fn duration(&self) -> Duration {
        samples_to_duration(self.samples.len() as u64, self.sample_rate)
    }
}

/// How long `samples` play at `sample_rate` Hz.
pub fn samples_to_duration(samples: u64, sample_rate: u32) -> Duration {
    if sample_rate == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(
        (u128::from(samples) * 1_000_000_000 / u128::from(sample_rate))
            .try_into()
            .unwrap_or(u64::MAX),
    )
}

/// How many samples at `sample_rate` Hz play for `duration` (rounded down).
pub fn duration_to_samples(duration: Duration, sample_rate: u32) -> u64 {
    (duration.as_nanos() * u128::from(sample_rate) / 1_000_000_000)
        .try_into()
        .unwrap_or(u64::MAX)
}

/// Converts a position counted at `from` Hz into the same instant counted at
/// `to` Hz (rounded down).
pub fn convert_position(position: u64, from: u32, to: u32) -> u64 {
    if from == to || from == 0 {
        return position;
    }
    (u128::from(position) * u128::from(to) / u128::from(from))
        .try_into()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_durations_agree() {
        let f = AudioFrame::new(vec![0; 160], 8000, 800);
        assert_eq!(f.end(), 960);
        assert_eq!(f.duration(), Duration::from_millis(20));
        assert_eq!(duration_to_samples(Duration::from_millis(20), 16000), 320);
        assert_eq!(convert_position(8000, 8000, 16000), 16000);
        assert_eq!(convert_position(22050, 22050, 8000), 8000);
        assert_eq!(
            format!("{f:?}"),
            "AudioFrame { samples: 160, sample_rate: 8000, position: 800 }"
        );
    }
}
