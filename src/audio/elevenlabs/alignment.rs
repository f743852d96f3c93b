//! The provider's character times → [`SynthEvent::Mark`]s at word ends.
//!
//! ElevenLabs reports, with each audio message, the characters whose audio
//! is in it and when each starts and lasts. The characters are those of the
//! text *as sent on the socket*, which is not quite the caller's text: the
//! opening message is a single space and the text is sent with a trailing
//! space, and the provider may report either (or collapse a run of
//! whitespace). So the provider's characters are walked against the
//! caller's, Unicode scalar value by scalar value:
//!
//! - equal characters match, and the text's character ends where the
//!   provider's does;
//! - whitespace the text does not have at that point is the client's own
//!   (or the provider's) and is skipped; whitespace the provider left out
//!   is skipped in the text;
//! - anything else (a provider that rewrote a character) is resynchronised
//!   on the next equal character within a few, or ignored. Nothing here can
//!   panic, and no mark counts more characters than the text has: a text
//!   the provider does not echo at all just gets its marks at the end.
//!
//! A word ends at its last character before whitespace (or at the end of
//! the text); its mark is at the sample where that character's audio ends,
//! and is released only once that much audio has been received, so a mark
//! never points past audio that exists. Marks are monotonic in both fields.

use std::collections::VecDeque;

use super::message::ChunkAlignment;
use crate::audio::SynthEvent;

/// How far ahead in the text an unmatched provider character is looked
/// for.
const RESYNC_WINDOW: usize = 8;

/// Word-end marks of one text from the provider's character times.
#[derive(Debug)]
pub(crate) struct Aligner {
    text: Vec<char>,
    rate: u32,
    /// The next character of the text to match.
    pos: usize,
    /// Characters up to each word's end, in order.
    word_ends: Vec<usize>,
    /// Word ends queued so far (an index into `word_ends`).
    queued: usize,
    /// Marks found, waiting for their audio: `(chars, sample)`.
    pending: VecDeque<(usize, u64)>,
    last_sample: u64,
}

impl Aligner {
    pub(crate) fn new(text: &str, rate: u32) -> Self {
        let text: Vec<char> = text.chars().collect();
        let word_ends = (0..text.len())
            .filter(|&i| {
                !text[i].is_whitespace() && text.get(i + 1).is_none_or(|c| c.is_whitespace())
            })
            .map(|i| i + 1)
            .collect();
        Self {
            text,
            rate,
            pos: 0,
            word_ends,
            queued: 0,
            pending: VecDeque::new(),
            last_sample: 0,
        }
    }

    /// Takes a message's alignment; its times are relative to `offset`, the
    /// samples received before the message's audio.
    pub(crate) fn take(&mut self, offset: u64, a: &ChunkAlignment) {
        let per_ms = self.rate as f64 / 1000.0;
        let times = a.starts_ms.iter().zip(&a.durations_ms);
        for (chars, (start, duration)) in a.chars.iter().zip(times) {
            let end = offset.saturating_add(((start + duration) * per_ms).round() as u64);
            for c in chars.chars() {
                self.step(c, end);
            }
        }
    }

    /// One provider character, whose audio ends at sample `end`.
    fn step(&mut self, c: char, end: u64) {
        let Some(&t) = self.text.get(self.pos) else {
            return; // past the text: the trailing space the client added
        };
        if same(t, c) {
            return self.matched(self.pos, end);
        }
        if c.is_whitespace() {
            return; // a space the text does not have here
        }
        if t.is_whitespace() {
            while self.text.get(self.pos).is_some_and(|t| t.is_whitespace()) {
                self.pos += 1;
            }
        }
        let window = &self.text[self.pos..(self.pos + RESYNC_WINDOW).min(self.text.len())];
        if let Some(k) = window.iter().position(|&t| same(t, c)) {
            self.matched(self.pos + k, end);
        }
    }

    /// The text's character `i` ends at sample `end`: every word ending at
    /// or before it is queued there.
    fn matched(&mut self, i: usize, end: u64) {
        self.pos = i + 1;
        let end = end.max(self.last_sample);
        while let Some(&chars) = self.word_ends.get(self.queued) {
            if chars > self.pos {
                break;
            }
            self.queued += 1;
            self.last_sample = end;
            self.pending.push_back((chars, end));
        }
    }

    /// The marks whose audio has been received (`received` samples).
    pub(crate) fn release(&mut self, received: u64) -> Vec<SynthEvent> {
        let mut out = Vec::new();
        while let Some(&(chars, sample)) = self.pending.front() {
            if sample > received {
                break;
            }
            self.pending.pop_front();
            out.push(SynthEvent::Mark { chars, sample });
        }
        out
    }

    /// The end of the audio (`total` samples): every mark not yet given,
    /// none past the end, the words the provider never reported at the end,
    /// and the mark for the whole text.
    pub(crate) fn finish(&mut self, total: u64) -> Vec<SynthEvent> {
        let mut out: Vec<SynthEvent> = self
            .pending
            .drain(..)
            .map(|(chars, sample)| SynthEvent::Mark {
                chars,
                sample: sample.min(total),
            })
            .collect();
        out.extend(
            self.word_ends[self.queued..]
                .iter()
                .map(|&chars| SynthEvent::Mark {
                    chars,
                    sample: total,
                }),
        );
        self.queued = self.word_ends.len();
        out.push(SynthEvent::Mark {
            chars: self.text.len(),
            sample: total,
        });
        out
    }
}

fn same(a: char, b: char) -> bool {
    a == b || (a.is_whitespace() && b.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(chars: &str, ms_each: f64) -> ChunkAlignment {
        let n = chars.chars().count();
        ChunkAlignment {
            chars: chars.chars().map(String::from).collect(),
            starts_ms: (0..n).map(|i| i as f64 * ms_each).collect(),
            durations_ms: vec![ms_each; n],
        }
    }

    fn marks(events: Vec<SynthEvent>) -> Vec<(usize, u64)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                SynthEvent::Mark { chars, sample } => Some((chars, sample)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn leading_and_trailing_spaces_of_the_socket_are_skipped() {
        // 1 ms = 1 sample at 1 kHz; " ab cd " as the provider saw it.
        let mut a = Aligner::new("ab cd", 1000);
        a.take(0, &chunk(" ab", 10.0));
        assert_eq!(marks(a.release(29)), vec![]);
        assert_eq!(marks(a.release(30)), vec![(2, 30)]);
        a.take(30, &chunk(" cd ", 10.0)); // relative to its own audio
        assert_eq!(marks(a.release(1000)), vec![(5, 60)]);
        assert_eq!(marks(a.finish(70)), vec![(5, 70)]);
    }

    #[test]
    fn a_provider_that_disagrees_never_panics_nor_overclaims() {
        let mut a = Aligner::new("héllo  wörld", 1000);
        // Collapsed whitespace, a rewritten letter, junk past the end.
        a.take(0, &chunk("hello wörld!!!  zz", 10.0));
        let got = marks(a.release(u64::MAX));
        assert_eq!(got, vec![(5, 50), (12, 110)]);
        let mut b = Aligner::new("abc", 1000);
        b.take(0, &chunk("xyz", 10.0));
        assert_eq!(marks(b.finish(40)), vec![(3, 40), (3, 40)]);
        let mut e = Aligner::new("", 1000);
        e.take(0, &chunk(" a ", 10.0));
        assert_eq!(marks(e.finish(0)), vec![(0, 0)]);
    }

    #[test]
    fn marks_past_the_audio_are_held_then_clamped_at_the_end() {
        let mut a = Aligner::new("one two", 1000);
        a.take(0, &chunk("one two", 100.0));
        assert_eq!(marks(a.release(299)), vec![]);
        assert_eq!(marks(a.release(300)), vec![(3, 300)]);
        // The audio ended at 500 though "two" was said to end at 700.
        assert_eq!(marks(a.finish(500)), vec![(7, 500), (7, 500)]);
    }
}
