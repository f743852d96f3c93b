//! Resampling between the rates calls and engines use: 8 kHz (phones), 16 kHz
//! (recognizers, voice activity), 22,050 Hz (espeak-ng), 24 kHz (hosted TTS),
//! 48 kHz (browsers).
//!
//! Through `rubato`'s asynchronous sinc resampler: band-limited (downsampling
//! 22,050 → 8,000 Hz without a filter would fold the upper voice band back
//! as hiss), streaming in 10 ms chunks with a short 64-tap filter, so its
//! delay is a few milliseconds — it sits on the path of a barge-in. Its
//! startup delay is trimmed, so output sample `k` is input instant
//! `k · from / to`: positions convert exactly with
//! [`convert_position`](super::convert_position).

use audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Indexing, Resampler as _, SincInterpolationParameters, WindowFunction,
};

use super::AudioError;

/// The rates this module converts between.
pub const SUPPORTED_RATES: [u32; 6] = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000];

/// A streaming converter from one sample rate to another, for one stream.
pub struct Resampler {
    from: u32,
    to: u32,
    inner: Option<Async<f32>>,
    chunk: usize,
    pending: Vec<f32>,
    out: Vec<f32>,
    /// Output samples of the filter's startup delay still to drop.
    delay_left: usize,
    consumed: u64,
    produced: u64,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl Resampler {
    /// A converter from `from` Hz to `to` Hz (each one of [`SUPPORTED_RATES`]).
    pub fn new(from: u32, to: u32) -> Result<Self, AudioError> {
        for rate in [from, to] {
            if !SUPPORTED_RATES.contains(&rate) {
                return Err(AudioError::UnsupportedRate(rate));
            }
        }
        let chunk = (from / 100) as usize;
        let inner = if from == to {
            None
        } else {
            let params = SincInterpolationParameters::new(64, WindowFunction::BlackmanHarris2)
                .oversampling_factor(64);
            let r = Async::<f32>::new_sinc(
                f64::from(to) / f64::from(from),
                1.0,
                &params,
                chunk,
                1,
                FixedAsync::Input,
            )
            .map_err(|e| AudioError::engine("rubato", e.to_string()))?;
            Some(r)
        };
        let delay_left = inner.as_ref().map_or(0, |r| r.output_delay());
        let out_max = inner.as_ref().map_or(0, |r| r.output_frames_max());
        Ok(Self {
            from,
            to,
            inner,
            chunk,
            pending: Vec::with_capacity(chunk),
            out: vec![0.0; out_max],
            delay_left,
            consumed: 0,
            produced: 0,
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> u32 {
        self.to
    }

    /// Converts the next samples of the stream, appending what is ready to
    /// `output` (up to 10 ms is held back until more input arrives).
    pub fn process_into(&mut self, input: &[i16], output: &mut Vec<i16>) {
        self.consumed += input.len() as u64;
        if self.inner.is_none() {
            output.extend_from_slice(input);
            self.produced += input.len() as u64;
            return;
        }
        for &s in input {
            self.pending.push(f32::from(s) / 32_768.0);
            if self.pending.len() == self.chunk {
                self.run_chunk(None, output);
            }
        }
    }

    /// Converts the next samples (see [`process_into`](Self::process_into)).
    pub fn process(&mut self, input: &[i16]) -> Vec<i16> {
        let mut out = Vec::with_capacity(input.len() * self.to as usize / self.from as usize + 8);
        self.process_into(input, &mut out);
        out
    }

    /// Ends the stream: the held-back tail, so the output is exactly as long
    /// as the input at the new rate.
    pub fn flush(&mut self) -> Vec<i16> {
        let mut output = Vec::new();
        let want = self.consumed * u64::from(self.to) / u64::from(self.from);
        while self.inner.is_some() && self.produced < want {
            let valid = self.pending.len();
            self.pending.resize(self.chunk, 0.0);
            self.run_chunk(Some(valid), &mut output);
        }
        let extra = (self.produced.saturating_sub(want)) as usize;
        output.truncate(output.len().saturating_sub(extra));
        self.produced -= extra as u64;
        output
    }

    fn run_chunk(&mut self, partial: Option<usize>, output: &mut Vec<i16>) {
        let Some(r) = self.inner.as_mut() else {
            return;
        };
        let frames_out = self.out.len();
        let (Ok(input), Ok(mut out)) = (
            InterleavedSlice::new(&self.pending[..], 1, self.chunk),
            InterleavedSlice::new_mut(&mut self.out[..], 1, frames_out),
        ) else {
            return;
        };
        let indexing = partial.map(|n| Indexing {
            partial_len: Some(n),
            ..Indexing::new()
        });
        let written = match r.process_into_buffer(&input, &mut out, indexing.as_ref()) {
            Ok((_, written)) => written,
            Err(_) => 0,
        };
        self.pending.clear();
        let skip = self.delay_left.min(written);
        self.delay_left -= skip;
        for &s in &self.out[skip..written] {
            output.push((s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16);
        }
        self.produced += (written - skip) as u64;
    }
}

/// Converts a whole clip from `from` Hz to `to` Hz.
pub fn resample(samples: &[i16], from: u32, to: u32) -> Result<Vec<i16>, AudioError> {
    let mut r = Resampler::new(from, to)?;
    let mut out = r.process(samples);
    out.extend(r.flush());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, rate: u32, secs: f64, amp: f64) -> Vec<i16> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| {
                (amp * (2.0 * std::f64::consts::PI * freq * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    }

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
    }

    /// Zero crossings per second, from the middle of the clip (away from the
    /// filter's edges): twice the frequency.
    fn frequency(s: &[i16], rate: u32) -> f64 {
        let mid = &s[s.len() / 4..s.len() * 3 / 4];
        let crossings = mid.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
        crossings as f64 / 2.0 / (mid.len() as f64 / f64::from(rate))
    }

    #[test]
    fn a_sine_keeps_its_frequency_and_level_between_every_pair_of_rates() {
        for &from in &[8_000, 16_000, 22_050, 24_000, 48_000] {
            for &to in &[8_000, 16_000, 24_000, 48_000] {
                let input = sine(440.0, from, 0.5, 10_000.0);
                let out = resample(&input, from, to).unwrap();
                let expected_len = input.len() as u64 * u64::from(to) / u64::from(from);
                assert_eq!(out.len() as u64, expected_len, "{from} -> {to}: length");
                let f = frequency(&out, to);
                assert!((f - 440.0).abs() < 5.0, "{from} -> {to}: {f} Hz");
                let level = rms(&out[out.len() / 4..out.len() * 3 / 4]) / rms(&input);
                assert!((level - 1.0).abs() < 0.05, "{from} -> {to}: level {level}");
            }
        }
    }

    #[test]
    fn streaming_in_odd_pieces_gives_the_same_samples_as_one_call() {
        let input = sine(300.0, 8_000, 0.3, 8_000.0);
        let whole = resample(&input, 8_000, 16_000).unwrap();
        let mut r = Resampler::new(8_000, 16_000).unwrap();
        let mut pieces = Vec::new();
        for chunk in input.chunks(37) {
            r.process_into(chunk, &mut pieces);
        }
        pieces.extend(r.flush());
        assert_eq!(pieces, whole);
    }

    #[test]
    fn the_delay_is_trimmed_so_positions_convert_exactly() {
        // An impulse at input sample 800 (100 ms at 8 kHz) peaks at output
        // sample 1600 at 16 kHz.
        let mut input = vec![0i16; 1600];
        input[800] = 20_000;
        let out = resample(&input, 8_000, 16_000).unwrap();
        let peak = out
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.unsigned_abs())
            .unwrap()
            .0;
        assert!((peak as i64 - 1600).abs() <= 1, "peak at {peak}");
    }

    #[test]
    fn an_unsupported_rate_is_a_typed_error() {
        assert_eq!(
            Resampler::new(11_025, 16_000).unwrap_err(),
            AudioError::UnsupportedRate(11_025)
        );
    }
}
