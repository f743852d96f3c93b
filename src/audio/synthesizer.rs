//! Speaking: text in, PCM out, and the *alignment* that says which character
//! of the text ends at which sample.
//!
//! The alignment is what makes "the history holds what the caller heard"
//! exact at the audio: the sink reports how many samples were played, and
//! [`Alignment::chars_at`] turns that into characters — the last word whose
//! final sample was played, never a word caught half-way.

use futures_util::stream::BoxStream;

use super::AudioError;

/// What a synthesizer produces for one text, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SynthEvent {
    /// More PCM of the utterance (mono, at the synthesizer's rate), continuing
    /// where the previous chunk ended.
    Audio(Vec<i16>),
    /// The first `chars` characters of the text have been spoken once the
    /// first `sample` samples of the utterance are played.
    Mark {
        /// Characters of the text (Unicode scalar values) spoken so far.
        chars: usize,
        /// Samples of the utterance, counted from its first.
        sample: u64,
    },
}

/// Where a text's characters end in its audio: marks in increasing order of
/// sample and characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Alignment {
    marks: Vec<(u64, usize)>,
    estimated: bool,
}

impl Alignment {
    /// An empty alignment; `estimated` marks one guessed from the text (a
    /// synthesizer that gives no timestamps) rather than reported.
    pub fn new(estimated: bool) -> Self {
        Self {
            marks: Vec::new(),
            estimated,
        }
    }

    /// Records that `chars` characters are spoken by sample `sample`. A mark
    /// that would go backwards in either is raised to the last one, so the
    /// alignment stays monotonic whatever an engine reports.
    pub fn push(&mut self, chars: usize, sample: u64) {
        let (last_sample, last_chars) = self.marks.last().copied().unwrap_or((0, 0));
        self.marks
            .push((sample.max(last_sample), chars.max(last_chars)));
    }

    /// Characters heard once the first `played` samples were played: those of
    /// the last mark at or before `played`.
    pub fn chars_at(&self, played: u64) -> usize {
        let i = self.marks.partition_point(|(s, _)| *s <= played);
        if i == 0 { 0 } else { self.marks[i - 1].1 }
    }

    /// The sample where the first `chars` characters end: the first mark that
    /// covers them (`None` when no mark does yet).
    pub fn sample_of(&self, chars: usize) -> Option<u64> {
        self.marks
            .iter()
            .find(|(_, c)| *c >= chars)
            .map(|(s, _)| *s)
    }

    /// Whether the marks are an estimate rather than the engine's report.
    pub fn is_estimated(&self) -> bool {
        self.estimated
    }

    /// The marks, as `(sample, chars)`.
    pub fn marks(&self) -> &[(u64, usize)] {
        &self.marks
    }
}

/// A text-to-speech engine. One instance serves many calls; `synthesize` may
/// be called from any task.
pub trait Synthesizer: Send + Sync + 'static {
    /// The rate of the PCM it produces.
    fn sample_rate(&self) -> u32;

    /// The engine's name in logs, metrics and a chain's status
    /// (`espeak-ng`, `openai-speech`, …).
    fn name(&self) -> &'static str {
        "synthesizer"
    }

    /// Whether its marks are estimates (no timestamps from the engine).
    fn alignment_is_estimated(&self) -> bool {
        false
    }

    /// Synthesizes `text`: PCM chunks and marks, in order, ending with a mark
    /// for the whole text at the utterance's last sample. Dropping the stream
    /// stops the synthesis.
    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<SynthEvent, AudioError>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chars_at_is_the_last_mark_reached_and_marks_never_go_back() {
        let mut a = Alignment::new(false);
        a.push(6, 4000); // "Hello,"
        a.push(12, 9000); // " world"
        a.push(10, 8000); // an engine going backwards is held monotonic
        assert_eq!(a.chars_at(0), 0);
        assert_eq!(a.chars_at(3999), 0);
        assert_eq!(a.chars_at(4000), 6);
        assert_eq!(a.chars_at(8999), 6);
        assert_eq!(a.chars_at(9000), 12);
        assert_eq!(a.chars_at(u64::MAX), 12);
        assert_eq!(a.sample_of(7), Some(9000));
        assert_eq!(a.sample_of(13), None);
    }
}
