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
//!   on the next equal character *inside the current word* (never past
//!   whitespace: after the provider's own space, only the first character
//!   of the text's next word), or ignored;
//! - a pass that restarts from the text's first character (pipecat#4316:
//!   a message whose `alignment` agrees longer with the start of the text
//!   than with where the walk is) has its repeat of the text already passed
//!   ignored, so it moves no mark; the walk goes on with its characters past
//!   that point.
//!
//! The invariant: a mark never claims characters whose audio has not been
//! received *and* matched in order; a word whose characters the provider
//! garbled is claimed late (with the next word that matches) or at the end,
//! never early. Nothing here can panic, and no mark counts more characters
//! than the text has: a text the provider does not echo at all just gets
//! its marks at the end.
//!
//! A word ends at its last character before whitespace (or at the end of
//! the text); its mark is at the sample where that character's audio ends,
//! and is released only once that much audio has been received, so a mark
//! never points past audio that exists. Marks are monotonic in both fields.

use std::collections::VecDeque;

use super::message::ChunkAlignment;
use crate::audio::SynthEvent;

/// How far ahead in the current word an unmatched provider character is
/// looked for.
const RESYNC_WINDOW: usize = 8;

/// A provider character against the text, equal characters only.
enum Strict {
    /// Whitespace one side lacks: passed over.
    Skip,
    /// The text's character at this index.
    Match(usize),
    /// They disagree (or the text is over).
    Miss,
}

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
    /// While a restarted pass repeats text already passed: the next
    /// character of the text it should repeat.
    replay: Option<usize>,
    /// The provider's last character was whitespace where the text had
    /// none.
    gap: bool,
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
            replay: None,
            gap: false,
        }
    }

    /// Takes a message's alignment; its times are relative to `offset`, the
    /// samples received before the message's audio.
    pub(crate) fn take(&mut self, offset: u64, a: &ChunkAlignment) {
        let per_ms = self.rate as f64 / 1000.0;
        let times = a.starts_ms.iter().zip(&a.durations_ms);
        let chars: Vec<(char, u64)> = a
            .chars
            .iter()
            .zip(times)
            .flat_map(|(chars, (start, duration))| {
                let end = offset.saturating_add(((start + duration) * per_ms).round() as u64);
                chars.chars().map(move |c| (c, end))
            })
            .collect();
        // A pass that restarts from the text's first character (pipecat
        // #4316): it agrees longer with the text's start than with where
        // the walk is.
        if self.pos > 0 {
            let from = self.replay.unwrap_or(self.pos);
            let provider = chars.iter().map(|&(c, _)| c);
            if self.agreement(0, provider.clone()) > self.agreement(from, provider) {
                self.replay = Some(0);
            }
        }
        for (c, end) in chars {
            if !self.replayed(c) {
                self.step(c, end);
            }
        }
    }

    /// How many of the provider's letters (whitespace aside) follow the
    /// text in order from its character `from`, up to the first that does
    /// not.
    fn agreement(&self, mut from: usize, provider: impl Iterator<Item = char>) -> usize {
        let mut n = 0;
        for c in provider {
            match self.strict(from, c) {
                Strict::Skip => {}
                Strict::Match(i) => {
                    from = i + 1;
                    n += 1;
                }
                Strict::Miss => break,
            }
        }
        n
    }

    /// The text from `i` against provider character `c`, equal characters
    /// only: whitespace on either side that the other lacks is passed over.
    fn strict(&self, i: usize, c: char) -> Strict {
        let Some(&t) = self.text.get(i) else {
            return Strict::Miss;
        };
        if same(t, c) {
            return if c.is_whitespace() {
                Strict::Skip
            } else {
                Strict::Match(i)
            };
        }
        if c.is_whitespace() {
            return Strict::Skip;
        }
        let j = self.word_start(i);
        match self.text.get(j) {
            Some(&t) if t == c => Strict::Match(j),
            _ => Strict::Miss,
        }
    }

    /// Whether `c` belongs to a restarted pass and repeats text already
    /// passed (so it moves nothing); ends the replay when it catches up with
    /// the walk or leaves the text.
    fn replayed(&mut self, c: char) -> bool {
        let Some(r) = self.replay else {
            return false;
        };
        match self.strict(r, c) {
            Strict::Skip => true,
            Strict::Match(i) if i < self.pos => {
                let next = i + 1;
                self.replay = (next < self.pos).then_some(next);
                true
            }
            Strict::Match(_) | Strict::Miss => {
                self.replay = None;
                false
            }
        }
    }

    /// The first non-whitespace character at or after `i`.
    fn word_start(&self, mut i: usize) -> usize {
        while self.text.get(i).is_some_and(|t| t.is_whitespace()) {
            i += 1;
        }
        i
    }

    /// One provider character, whose audio ends at sample `end`.
    fn step(&mut self, c: char, end: u64) {
        let Some(&t) = self.text.get(self.pos) else {
            return; // past the text: the trailing space the client added
        };
        if same(t, c) {
            self.gap = false;
            return self.matched(self.pos, end);
        }
        if c.is_whitespace() {
            // A space the text does not have here, or the provider's word
            // ended before the text's: its next word may start the text's.
            self.gap = true;
            return;
        }
        let gap = std::mem::replace(&mut self.gap, false);
        if t.is_whitespace() {
            // A space the provider left out: only the next word's first
            // character, never further.
            let j = self.word_start(self.pos);
            if self.text.get(j) == Some(&c) {
                self.matched(j, end);
            }
            return;
        }
        // A rewritten character: resynchronised inside the current word
        // only, never past its end.
        let word = self.text[self.pos..]
            .iter()
            .take(RESYNC_WINDOW)
            .take_while(|t| !t.is_whitespace());
        if let Some(k) = word.clone().position(|&t| t == c) {
            return self.matched(self.pos + k, end);
        }
        if gap {
            // After the provider's space, the text's next word.
            let next = self.pos + word.count();
            let j = self.word_start(next);
            if j > next && self.text.get(j) == Some(&c) {
                self.matched(j, end);
            }
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
    fn a_rewritten_character_resyncs_only_inside_its_word() {
        // The provider's "hoe" for "how": its 'e' must not claim "are".
        let mut a = Aligner::new("how are you", 1000);
        a.take(0, &chunk("hoe are", 10.0));
        // "how" is claimed only once the provider's "are" starts matching
        // (late, never early); "are" where its own 'e' ends.
        assert_eq!(marks(a.release(u64::MAX)), vec![(3, 50), (7, 70)]);
    }

    #[test]
    fn a_pass_restarting_from_the_first_character_claims_nothing_new() {
        // pipecat#4316: a second `alignment` pass re-sends the text from
        // character 0 with the new characters after it.
        let text = "Hello there, how are you?";
        let mut a = Aligner::new(text, 1000);
        a.take(0, &chunk(" Hello there, h", 10.0));
        assert_eq!(marks(a.release(150)), vec![(5, 60), (12, 130)]);
        a.take(150, &chunk("Hello there, how are you? ", 10.0));
        // Its "Hello"'s 'e' (ending at 170) is not the 'e' of "are".
        assert_eq!(marks(a.release(300)), vec![]);
        assert_eq!(
            marks(a.release(u64::MAX)),
            vec![(16, 310), (20, 350), (25, 400)]
        );
        // A pass that repeats it all again moves nothing.
        a.take(410, &chunk(" Hello there, how are you? ", 10.0));
        assert_eq!(marks(a.release(u64::MAX)), vec![]);
        assert_eq!(marks(a.finish(700)), vec![(25, 700)]);
        // A partial restart, continued in the next message.
        let mut b = Aligner::new(text, 1000);
        b.take(0, &chunk("Hello there, ho", 10.0));
        assert_eq!(marks(b.release(u64::MAX)), vec![(5, 50), (12, 120)]);
        b.take(150, &chunk("Hello th", 10.0));
        b.take(230, &chunk("ere, how are", 10.0));
        assert_eq!(marks(b.release(u64::MAX)), vec![(16, 310), (20, 350)]);
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
