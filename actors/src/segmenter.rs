//! The segmenter: turns a turn's tokens into speakable pieces for TTS.
//!
//! Text-to-speech engines want whole phrases, not tokens, but waiting for a full
//! sentence delays the first word. The first segment of a turn is therefore cut
//! early — at the first clause or sentence boundary after a few characters —
//! and later ones at sentence ends (or, for run-on text, at a clause or word
//! boundary past a maximum). Text before a tool call and the tail of a finished
//! turn are flushed; everything of a cancelled turn is dropped. Segments concatenate to
//! exactly the turn's text, so playback positions (characters) line up with the
//! text the LLM actor commits.
//!
//! The cutting rules live here, pure and unit-tested; the session's turn
//! ledger applies them in the same critical section as the token that
//! completes a segment (`bus/ledger.rs`), so segments never lag, race or
//! repeat the text. Every session that speaks segments; [`SegmenterConfig`]
//! sets where.

/// Where segments are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmenterConfig {
    /// The first segment is cut at the first boundary after this many characters.
    pub first_min_chars: usize,
    /// …or at a word boundary once it is this long.
    pub first_max_chars: usize,
    /// Later segments end at a sentence end after this many characters.
    pub min_chars: usize,
    /// …or at a clause or word boundary once this long.
    pub max_chars: usize,
}

impl Default for SegmenterConfig {
    fn default() -> Self {
        Self {
            first_min_chars: 8,
            first_max_chars: 48,
            min_chars: 24,
            max_chars: 220,
        }
    }
}

/// Pure segmentation state for one turn (unit-tested; the ledger drives it).
#[derive(Debug, Default, Clone)]
pub struct SegmentBuffer {
    buf: String,
    emitted_any: bool,
}

fn is_sentence_end(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '。' | '！' | '？' | '…')
}

fn is_clause_end(c: char) -> bool {
    matches!(c, ',' | ';' | ':' | '—' | '，' | '；' | '：')
}

impl SegmentBuffer {
    /// Adds text; returns the segments that are ready.
    pub fn push(&mut self, text: &str, config: &SegmenterConfig) -> Vec<String> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        while let Some(end) = self.boundary(config) {
            let rest = self.buf.split_off(end);
            out.push(std::mem::replace(&mut self.buf, rest));
            self.emitted_any = true;
        }
        out
    }

    /// Takes whatever is buffered (end of turn, or before a tool call).
    pub fn flush(&mut self) -> Option<String> {
        if self.buf.is_empty() {
            None
        } else {
            self.emitted_any = true;
            Some(std::mem::take(&mut self.buf))
        }
    }

    /// Drops the buffer and starts a new turn.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.emitted_any = false;
    }

    /// Byte index where the next segment ends, if one is ready.
    fn boundary(&self, config: &SegmenterConfig) -> Option<usize> {
        let first = !self.emitted_any;
        let (min, max) = if first {
            (config.first_min_chars, config.first_max_chars)
        } else {
            (config.min_chars, config.max_chars)
        };
        let mut chars = 0;
        let mut last_clause = None;
        let mut last_space = None;
        let mut iter = self.buf.char_indices().peekable();
        while let Some((i, c)) = iter.next() {
            chars += 1;
            let next_is_space = iter.peek().is_some_and(|(_, n)| n.is_whitespace());
            let end = i + c.len_utf8();
            if next_is_space && chars >= min && (is_sentence_end(c) || (first && is_clause_end(c)))
            {
                return Some(end);
            }
            if next_is_space && is_clause_end(c) {
                last_clause = Some(end);
            }
            if c.is_whitespace() && chars > 1 {
                last_space = Some(i);
            }
            if chars >= max {
                return last_clause.or(last_space).filter(|&b| b > 0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tokens: &[&str]) -> Vec<String> {
        let config = SegmenterConfig::default();
        let mut b = SegmentBuffer::default();
        let mut out: Vec<String> = tokens.iter().flat_map(|t| b.push(t, &config)).collect();
        out.extend(b.flush());
        out
    }

    #[test]
    fn short_first_segment_then_sentences_and_exact_text() {
        let tokens = [
            "Sure",
            ", I can",
            " help with that. The",
            " weather in Paris is",
            " sunny today.",
            " Anything",
            " else?",
        ];
        let segs = run(&tokens);
        // "Sure," is shorter than first_min_chars, so the first cut is the sentence end.
        assert_eq!(segs[0], "Sure, I can help with that.");
        assert_eq!(
            segs.concat(),
            tokens.concat(),
            "segments concatenate to the text"
        );
        assert!(segs.len() >= 3, "{segs:?}");
    }

    #[test]
    fn first_segment_is_cut_at_the_first_clause() {
        let segs = run(&[
            "Well then",
            ", let me",
            " see what I can find for you today.",
        ]);
        assert_eq!(segs[0], "Well then,");
        assert_eq!(
            segs.concat(),
            "Well then, let me see what I can find for you today."
        );
    }

    #[test]
    fn run_on_text_is_cut_at_the_maximum() {
        let long = "word ".repeat(100);
        let segs = run(&[&long]);
        assert!(
            segs.iter().all(|s| s.chars().count() <= 220),
            "{:?}",
            segs.iter().map(|s| s.len()).collect::<Vec<_>>()
        );
        assert_eq!(segs.concat(), long);
    }

    #[test]
    fn decimal_points_do_not_split() {
        let segs = run(&["It costs 3.50 euros in total, thanks."]);
        assert_eq!(segs.concat(), "It costs 3.50 euros in total, thanks.");
        assert!(!segs.iter().any(|s| s.ends_with("3.")));
    }
}
