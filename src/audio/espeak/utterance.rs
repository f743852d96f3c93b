//! One text being synthesized: its audio and word events turned into
//! `SynthEvent`s, with each word's end placed where its sound ends.

use super::*;

/// One text being spoken: what has been sent of it, and the word whose end
/// is not yet known.
pub(super) struct Utterance {
    pub(super) chars: Vec<char>,
    pub(super) events: mpsc::UnboundedSender<Result<SynthEvent, AudioError>>,
    /// Samples sent so far.
    pub(super) sent: u64,
    /// The last mark sent, as (chars, sample).
    pub(super) last: (usize, u64),
    /// The sample where the word being spoken began, if one is.
    pub(super) open_word: Option<u64>,
    /// The last samples sent (from the open word's start at most), to find
    /// the silence before the next word.
    pub(super) recent: Vec<i16>,
    /// Marks whose audio has not been sent yet (not expected from espeak,
    /// which reports each event with the chunk it falls in).
    pub(super) held: VecDeque<(usize, u64)>,
    pub(super) aborted: bool,
    pub(super) sample_rate: u32,
}

impl Utterance {
    pub(super) fn new(
        text: &str,
        events: mpsc::UnboundedSender<Result<SynthEvent, AudioError>>,
        sample_rate: u32,
    ) -> Self {
        Self {
            chars: text.chars().collect(),
            events,
            sent: 0,
            last: (0, 0),
            open_word: None,
            recent: Vec::new(),
            held: VecDeque::new(),
            aborted: false,
            sample_rate,
        }
    }

    /// One callback's worth. Returns whether to go on.
    pub(super) fn chunk(&mut self, samples: &[i16], events: &[ffi::espeak_EVENT]) -> bool {
        if self.aborted || self.events.is_closed() {
            self.aborted = true;
            return false;
        }
        if !samples.is_empty() {
            if self
                .events
                .send(Ok(SynthEvent::Audio(samples.to_vec())))
                .is_err()
            {
                self.aborted = true;
                return false;
            }
            self.sent += samples.len() as u64;
            self.recent.extend_from_slice(samples);
        }
        for event in events {
            let sample = u64::try_from(event.sample).unwrap_or(0);
            // 1-based, in characters (Unicode scalar values) for UTF-8 text.
            let position = usize::try_from(event.text_position)
                .unwrap_or(0)
                .saturating_sub(1);
            match event.type_ {
                ffi::espeakEVENT_WORD => {
                    self.close_word(position, sample);
                    self.forget_before(sample);
                    self.open_word = Some(sample);
                }
                ffi::espeakEVENT_END => {
                    self.close_word(position, sample);
                    self.forget_before(sample);
                }
                _ => {}
            }
        }
        self.release_held();
        true
    }

    /// The open word ends where `next_char` (the next word or the clause's
    /// end) begins, at `boundary` samples.
    pub(super) fn close_word(&mut self, next_char: usize, boundary: u64) {
        let Some(word_start) = self.open_word.take() else {
            return;
        };
        let chars = word_end_before(&self.chars, next_char);
        let boundary = boundary.max(self.last.1);
        let sample = self.last_sound(word_start.max(self.last.1), boundary);
        self.mark(chars, sample);
    }

    /// Drops the audio before `sample`: no mark will need it.
    pub(super) fn forget_before(&mut self, sample: u64) {
        let start = self.recent_start();
        let n = (sample.saturating_sub(start) as usize).min(self.recent.len());
        self.recent.drain(..n);
    }

    /// The sample `recent` begins at.
    pub(super) fn recent_start(&self) -> u64 {
        self.sent - self.recent.len() as u64
    }

    /// Where the word spoken in `[from, to)` stops sounding: `to` moved back
    /// over the silence before it.
    pub(super) fn last_sound(&self, from: u64, to: u64) -> u64 {
        let start = self.recent_start();
        if from < start || to > start + self.recent.len() as u64 || from >= to {
            return to;
        }
        let audio = &self.recent[(from - start) as usize..(to - start) as usize];
        from + sound_end(audio, self.sample_rate) as u64
    }

    pub(super) fn mark(&mut self, chars: usize, sample: u64) {
        let chars = chars.min(self.chars.len());
        let sample = sample.max(self.last.1);
        if chars <= self.last.0 {
            return;
        }
        self.last = (chars, sample);
        self.held.push_back((chars, sample));
    }

    /// Sends the held marks whose audio has been sent.
    pub(super) fn release_held(&mut self) {
        while let Some(&(chars, sample)) = self.held.front() {
            if sample > self.sent {
                break;
            }
            self.held.pop_front();
            if self
                .events
                .send(Ok(SynthEvent::Mark { chars, sample }))
                .is_err()
            {
                self.aborted = true;
                return;
            }
        }
    }

    /// The end of the text: the last word, then the whole text at the last
    /// sample.
    pub(super) fn finish(&mut self) {
        let end = self.chars.len();
        self.close_word(end, self.sent);
        for mark in &mut self.held {
            mark.1 = mark.1.min(self.sent);
        }
        self.release_held();
        let _ = self.events.send(Ok(SynthEvent::Mark {
            chars: end,
            sample: self.sent.max(self.last.1),
        }));
    }
}

/// Where the sound of a word ends in `audio` (the word's samples up to where
/// the next one begins), as an offset into it.
///
/// Usually just after its last sample above [`SILENCE_LEVEL`]. But espeak's
/// word events can come a little after the next word's first sound, so when
/// a pause (at least [`MIN_PAUSE_MS`] of silence) ends at most
/// [`MAX_EARLY_ONSET_MS`] before the end, the word ends where that pause
/// begins. A pause inside a word (a stop's closure) is far shorter, and far
/// from the end.
pub(super) fn sound_end(audio: &[i16], sample_rate: u32) -> usize {
    let quiet = |s: i16| s.unsigned_abs() <= SILENCE_LEVEL as u16;
    let n = audio.len();
    let min_pause = (sample_rate * MIN_PAUSE_MS / 1000) as usize;
    let max_onset = (sample_rate * MAX_EARLY_ONSET_MS / 1000) as usize;
    let mut j = n;
    while j > 0 && n - j <= max_onset {
        if quiet(audio[j - 1]) {
            let run_end = j;
            while j > 0 && quiet(audio[j - 1]) {
                j -= 1;
            }
            if run_end - j >= min_pause {
                return j;
            }
        } else {
            j -= 1;
        }
    }
    audio.iter().rposition(|&s| !quiet(s)).map_or(n, |i| i + 1)
}

/// Whether the character at `i` belongs to a word: a letter, a digit, a
/// combining mark, or an apostrophe between letters ("don't").
pub(super) fn is_word_char(chars: &[char], i: usize) -> bool {
    let c = chars[i];
    c.is_alphanumeric()
        || ('\u{300}'..='\u{36f}').contains(&c)
        || (matches!(c, '\'' | '\u{2019}')
            && i > 0
            && i + 1 < chars.len()
            && chars[i - 1].is_alphanumeric()
            && chars[i + 1].is_alphanumeric())
}

/// The last end of a word at or before character `limit`: a position whose
/// previous character is in a word and whose next is not (or the end).
pub(super) fn word_end_before(chars: &[char], limit: usize) -> usize {
    let mut p = limit.min(chars.len());
    while p > 0 {
        if is_word_char(chars, p - 1) && (p == chars.len() || !is_word_char(chars, p)) {
            return p;
        }
        p -= 1;
    }
    0
}

// ---------------------------------------------------------------------------
// The C API (speak_lib.h of espeak-ng 1.51), hand-written.
