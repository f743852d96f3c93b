//! The segmenter: turns a turn's tokens into speakable pieces for TTS.
//!
//! Text-to-speech engines want whole phrases, not tokens, but waiting for a full
//! sentence delays the first word. The first segment of a turn is therefore cut
//! early — at the first clause or sentence boundary after a few characters —
//! and later ones at sentence ends (or, for run-on text, at a clause or word
//! boundary past a maximum). Text before a tool call and the tail of a finished
//! turn are flushed; everything of a cancelled turn is dropped, and the bus
//! ledger refuses a segment that races with the cancel. Segments concatenate to
//! exactly the turn's text, so playback positions (characters) line up with the
//! text the LLM actor commits.
//!
//! The segmenter is a task that reads an ordinary (bounded) subscription
//! directly — no mailbox in between, so its input stays bounded and a lag is
//! real: it is reported (`colloquy_bus_lagged_events_total`) and the segmenter
//! resynchronises from the ledger's record of the turn's text instead of
//! skipping words. It ends when the session's bus closes.

use std::sync::Arc;

use crate::bus::{BusEvent, BusRecvError, EventKind, SessionBus};
use crate::ids::TurnId;
use crate::task::AbortOnDrop;

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

/// Pure segmentation state for one turn (unit-tested; the actor drives it).
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

struct SegmenterState {
    bus: SessionBus,
    config: SegmenterConfig,
    buffer: SegmentBuffer,
    turn: TurnId,
    consumed_chars: usize,
    skip_through_seq: u64,
    aborted: bool,
}

impl SegmenterState {
    fn publish(&self, segment: String, last: bool) {
        // Refused when the turn was cut meanwhile: nothing of it is spoken.
        let _ = self.bus.publish(
            self.turn,
            EventKind::Speakable {
                text: Arc::from(segment),
                last,
            },
        );
    }

    fn token(&mut self, turn: TurnId, text: &str) {
        if turn != self.turn {
            self.turn = turn;
            self.buffer.reset();
            self.consumed_chars = 0;
            self.aborted = false;
        }
        if self.aborted {
            return;
        }
        self.consumed_chars += text.chars().count();
        for segment in self.buffer.push(text, &self.config) {
            self.publish(segment, false);
        }
    }

    /// Resynchronises from the ledger after missed events: the current turn
    /// (which may have begun, or ended, during the gap) and its text past what
    /// was already segmented. Events up to the ledger's seq at that moment are
    /// then skipped, since the catch-up covered them.
    fn lagged(&mut self) {
        let (turn, open, catch_up) = {
            let ledger = self.bus.lock();
            let turn = ledger.turn();
            let consumed = if turn == self.turn {
                self.consumed_chars
            } else {
                0
            };
            (
                turn,
                ledger.is_open(turn),
                ledger.text_since(turn, consumed),
            )
        };
        self.token(turn, "");
        match catch_up {
            Some((missed, seq)) => {
                self.skip_through_seq = seq;
                self.token(turn, &missed);
                if !open && !self.aborted {
                    // The turn finished during the gap: speak its tail now.
                    let tail = self.buffer.flush().unwrap_or_default();
                    self.publish(tail, true);
                    self.aborted = true; // nothing more to segment for it
                }
            }
            None => {
                // Cut during the gap: nothing of it is spoken.
                self.aborted = true;
                self.buffer.reset();
            }
        }
    }

    fn event(&mut self, ev: BusEvent) {
        if ev.seq <= self.skip_through_seq && !ev.kind.is_user_side() {
            return; // covered by the catch-up
        }
        match ev.kind {
            EventKind::TurnStarted => self.token(ev.turn, ""),
            EventKind::Token(t) => self.token(ev.turn, &t),
            EventKind::ToolCall(_) if ev.turn == self.turn => {
                if let Some(seg) = self.buffer.flush() {
                    self.publish(seg, false);
                }
            }
            EventKind::TurnFinished(end) if ev.turn == self.turn => {
                if end.is_abort() {
                    self.aborted = true;
                    self.buffer.reset();
                } else {
                    let tail = self.buffer.flush().unwrap_or_default();
                    self.publish(tail, true);
                }
            }
            _ => {}
        }
    }
}

/// Starts a session's segmenter. It subscribes before returning, so it sees
/// every turn that starts afterwards; it stops when the bus closes or the
/// returned handle is dropped.
pub(crate) fn spawn(bus: SessionBus, config: SegmenterConfig) -> AbortOnDrop {
    let mut rx = bus.subscribe();
    let mut state = SegmenterState {
        bus,
        config,
        buffer: SegmentBuffer::default(),
        turn: TurnId(0),
        consumed_chars: 0,
        skip_through_seq: 0,
        aborted: false,
    };
    AbortOnDrop(tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(ev) => state.event(ev),
                Err(BusRecvError::Lagged { .. }) => state.lagged(),
                Err(_) => return,
            }
        }
    }))
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

    /// The segmenter lags (a bus of 4 events) across the start of a turn: it
    /// must resynchronise on the new turn, speak all of it, and close it.
    #[tokio::test(flavor = "current_thread")]
    async fn lag_across_a_turn_start_speaks_the_whole_new_turn() {
        use crate::bus::TurnEnd;
        use crate::ids::SessionId;
        use std::sync::Mutex;

        async fn settle() {
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
        let bus = SessionBus::new(SessionId::new("s"), 4);
        let spoken: Arc<Mutex<Vec<(TurnId, String, bool)>>> = Arc::default();
        let sink = spoken.clone();
        bus.add_tap(
            |k| matches!(k, EventKind::Speakable { .. }),
            move |ev| {
                if let EventKind::Speakable { text, last } = &ev.kind {
                    sink.lock()
                        .unwrap()
                        .push((ev.turn, text.to_string(), *last));
                }
            },
        );
        let _segmenter = spawn(bus.clone(), SegmenterConfig::default());
        let abort = || tokio::spawn(async {}).abort_handle();
        let t1 = bus.begin_turn().unwrap();
        bus.lock().open_round(t1, 0, || (abort(), ())).unwrap();
        settle().await;
        bus.publish_agent(t1, EventKind::Token(Arc::from("Hi.")))
            .unwrap();
        settle().await;
        bus.finish_turn(t1, TurnEnd::Stop);
        settle().await;
        bus.take_closed();
        // T1 was played to its end before the next reply begins.
        bus.publish(t1, EventKind::SpeechPlayed { chars: 3 })
            .unwrap();
        let t2 = bus.begin_turn().unwrap();
        bus.lock().open_round(t2, 0, || (abort(), ())).unwrap();
        let words = [
            "Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "king. ", "He ",
        ];
        for w in words {
            bus.publish_agent(t2, EventKind::Token(Arc::from(w)))
                .unwrap();
        }
        settle().await;
        bus.publish_agent(t2, EventKind::Token(Arc::from("ruled.")))
            .unwrap();
        bus.finish_turn(t2, TurnEnd::Stop);
        settle().await;
        let spoken = spoken.lock().unwrap();
        let said: String = spoken
            .iter()
            .filter(|(t, _, _)| *t == t2)
            .map(|(_, s, _)| s.as_str())
            .collect();
        assert_eq!(said, words.concat() + "ruled.");
        assert_eq!(
            spoken
                .iter()
                .filter(|(t, _, last)| *t == t2 && *last)
                .count(),
            1,
            "the turn's speech is closed once"
        );
    }
}
