//! From the connection's clock to the input's.
//!
//! Deepgram times words in seconds of the audio *it received on this
//! connection*. Only speech is sent (the silences between utterances never
//! leave the process), and a reconnect starts the count again, so that clock
//! runs ahead of nothing in the call. The map keeps one entry per contiguous
//! run of frames sent — where the run starts on the connection and where in
//! the input — and converts through it. Entries older than the utterance in
//! progress are dropped, so it stays a handful long.

use std::collections::VecDeque;

/// The most runs kept, whatever happens (a listener that drops frames
/// breaks runs; the map must not grow with it).
const MAX_RUNS: usize = 1024;

/// Runs of sent audio: `(connection sample, input position)` of each start.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    runs: VecDeque<(u64, u64)>,
    /// Samples sent on this connection.
    sent: u64,
    /// The input position just after the last sample sent.
    input_end: Option<u64>,
}

impl Timeline {
    /// Samples sent on this connection so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// Records `len` samples sent that sit at input `position`.
    pub(crate) fn push(&mut self, position: u64, len: u64) {
        if len == 0 {
            return;
        }
        if self.input_end != Some(position) {
            self.runs.push_back((self.sent, position));
            if self.runs.len() > MAX_RUNS {
                self.runs.pop_front();
            }
        }
        self.sent += len;
        self.input_end = Some(position + len);
    }

    /// A new connection: nothing sent yet.
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// Forgets the runs that end at or before connection sample `before`
    /// (the start of the oldest utterance still in progress).
    pub(crate) fn forget_before(&mut self, before: u64) {
        while self.runs.len() > 1 && self.runs.get(1).is_some_and(|r| r.0 <= before) {
            self.runs.pop_front();
        }
    }

    /// The input position of connection sample `sample`. A sample on the
    /// boundary of two runs is the start of the later one, or with
    /// `is_end`, the end of the earlier (a word that ends there ended before
    /// the silence that was not sent).
    pub(crate) fn to_input(&self, sample: u64, is_end: bool) -> u64 {
        let sample = sample.min(self.sent);
        let idx = self
            .runs
            .iter()
            .rposition(|r| if is_end { r.0 < sample } else { r.0 <= sample })
            .unwrap_or(0);
        match self.runs.get(idx) {
            Some(&(conn, input)) => input + sample.saturating_sub(conn),
            None => sample,
        }
    }

    /// How many runs are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.runs.len()
    }
}

/// Connection seconds as connection samples at `rate` (rounded; a
/// negative or unreadable time is 0).
pub(crate) fn seconds_to_samples(seconds: f64, rate: u32) -> u64 {
    if !seconds.is_finite() || seconds <= 0.0 {
        return 0;
    }
    let samples = (seconds * f64::from(rate)).round();
    if samples >= u64::MAX as f64 {
        u64::MAX
    } else {
        samples as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_map_the_connection_to_the_input() {
        let mut t = Timeline::default();
        // 0.5 s of speech at input 1000, then 0.5 s at input 90_000.
        for i in 0..25 {
            t.push(1000 + i * 320, 320);
        }
        for i in 0..25 {
            t.push(90_000 + i * 320, 320);
        }
        assert_eq!(t.len(), 2);
        assert_eq!(t.sent(), 16_000);
        assert_eq!(t.to_input(0, false), 1000);
        assert_eq!(t.to_input(4000, false), 5000);
        assert_eq!(t.to_input(8000, false), 90_000);
        assert_eq!(t.to_input(8000, true), 9000);
        assert_eq!(t.to_input(12_000, true), 94_000);
        assert_eq!(t.to_input(99_999, true), 98_000);
        assert_eq!(seconds_to_samples(0.5, 16_000), 8000);
        assert_eq!(seconds_to_samples(-1.0, 16_000), 0);
        assert_eq!(seconds_to_samples(f64::NAN, 16_000), 0);
        t.forget_before(8000);
        assert_eq!(t.len(), 1);
        assert_eq!(t.to_input(8000, false), 90_000);
        t.reset();
        assert_eq!((t.len(), t.sent()), (0, 0));
    }
}
