//! The utterances the local detector opened, and which of Deepgram's results
//! belong to which.
//!
//! Deepgram's results carry no utterance: they carry times on the
//! connection's clock (clamped to the audio sent, so no server time can
//! overflow). Each utterance knows the span of that clock its audio took
//! (from its first frame sent to its `Finalize`), so a result belongs to the
//! newest unfinished utterance whose span contains its start. An utterance
//! closes — its one final is emitted — when:
//!
//! - a final result that answers its end arrives: `from_finalize` or
//!   `speech_final`, reaching (within [`TOLERANCE`]) the end of its audio;
//! - any result starts at or after its end: the server is past it, so a
//!   `Finalize` that went unanswered (Deepgram answers only when audio is
//!   buffered) cannot hold it, nor hand its final the next one's words;
//! - `UtteranceEnd` reports silence reaching past its `Finalize`;
//! - its final is overdue ([`Utterances::expire`]) and it already has
//!   results and no interim awaiting its final: the final is what was
//!   finalized (with an interim pending, the words would be lost: that is
//!   a failure).
//!
//! A later result for a closed span (Deepgram may send both answers) finds
//! it gone and is dropped, so no empty duplicate final goes out; a final
//! that ends no later than the last one kept is a repeat and dropped too
//! (and at most [`MAX_FINALS`] are kept), so a buggy server cannot grow an
//! utterance without end.
//!
//! Each utterance keeps its audio until it closes, for a resend after a
//! reconnect, within one cap for all of them. The finals of audio the cap
//! dropped survive a reconnect (that audio is not resent), and an ended
//! utterance always gets its final, even when all of its audio was dropped.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::message::Results;
use super::timeline::{Timeline, seconds_to_samples};
use crate::audio::{AudioFrame, Transcript, duration_to_samples};

/// How far short of an utterance's end a closing result may stop, for the
/// rounding of the server's times (100 ms).
const TOLERANCE: Duration = Duration::from_millis(100);

/// How far before an utterance's end a result may start and still count as
/// past it (the rounding of the server's times: 10 ms).
const SLACK: Duration = Duration::from_millis(10);

/// The most finals kept for one utterance.
pub(crate) const MAX_FINALS: usize = 256;

/// One final result of an utterance.
#[derive(Debug)]
struct Final {
    text: String,
    /// Input position where the audio it covers ends.
    end: u64,
}

/// One utterance of the call.
#[derive(Debug)]
pub(crate) struct Utterance {
    /// Where the detector said it began (input).
    speech_start: u64,
    /// Its audio, for a resend.
    pub(crate) frames: VecDeque<AudioFrame>,
    /// On this connection: where its audio begins, once a frame was sent.
    pub(crate) conn_start: Option<u64>,
    /// On this connection: where its audio ends, once its end was sent.
    pub(crate) conn_end: Option<u64>,
    /// Whether its end (`SpeechEnded`, the end of the input) was seen.
    pub(crate) ended: bool,
    /// The finalized transcripts so far.
    finalized: Vec<Final>,
    /// Whether any of its audio was kept (it is owed a final).
    had_audio: bool,
    /// Whether an interim's words await a final.
    pending_interim: bool,
    /// Input position of its first word.
    first_word: Option<u64>,
    /// Input position where the audio its results cover ends.
    covered: u64,
    /// Whether a result arrived for it on this connection.
    pub(crate) got_result: bool,
    /// When its final is due (from its `Finalize`).
    pub(crate) final_due: Option<Instant>,
    last_interim: Option<String>,
}

impl Utterance {
    /// Whether audio of it was sent on this connection.
    pub(crate) fn has_audio(&self) -> bool {
        self.conn_start.is_some()
    }

    /// A new connection: nothing of it sent, nothing heard. The finals of
    /// audio the cap dropped (not resent) are kept, and so is the deadline
    /// of its final.
    pub(crate) fn reset_connection(&mut self) {
        self.conn_start = None;
        self.conn_end = None;
        if let Some(resent_from) = self.frames.front().map(|f| f.position()) {
            self.finalized.retain(|f| f.end <= resent_from);
        }
        if self.finalized.is_empty() {
            self.first_word = None;
        }
        self.got_result = false;
        self.pending_interim = false;
        self.last_interim = None;
    }

    fn words(&self) -> String {
        let texts: Vec<&str> = self
            .finalized
            .iter()
            .map(|f| f.text.as_str())
            .filter(|t| !t.is_empty())
            .collect();
        texts.join(" ")
    }

    fn transcript(&self, text: String, is_final: bool) -> Transcript {
        let start = self.first_word.unwrap_or(self.speech_start);
        Transcript {
            text,
            is_final,
            start,
            end: self.covered.max(start),
        }
    }
}

/// The unfinished utterances, oldest first; the newest may still be open.
#[derive(Debug)]
pub(crate) struct Utterances {
    queue: VecDeque<Utterance>,
    rate: u32,
    tolerance: u64,
    slack: u64,
    cap: u64,
    buffered: u64,
    warned: bool,
}

impl Utterances {
    /// Utterances at `rate`, keeping at most `max_buffered` of audio.
    pub(crate) fn new(rate: u32, max_buffered: Duration) -> Self {
        Self {
            queue: VecDeque::new(),
            rate,
            tolerance: duration_to_samples(TOLERANCE, rate),
            slack: duration_to_samples(SLACK, rate),
            cap: duration_to_samples(max_buffered, rate).max(1),
            buffered: 0,
            warned: false,
        }
    }

    /// Opens an utterance at input `position`.
    pub(crate) fn start(&mut self, position: u64) {
        self.queue.push_back(Utterance {
            speech_start: position,
            frames: VecDeque::new(),
            conn_start: None,
            conn_end: None,
            ended: false,
            finalized: Vec::new(),
            had_audio: false,
            pending_interim: false,
            first_word: None,
            covered: position,
            got_result: false,
            final_due: None,
            last_interim: None,
        });
    }

    /// The utterance still receiving audio.
    pub(crate) fn open(&mut self) -> Option<&mut Utterance> {
        self.queue.back_mut().filter(|u| !u.ended)
    }

    /// Every unfinished utterance, oldest first.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Utterance> {
        self.queue.iter_mut()
    }

    /// Whether any utterance with audio awaits its final.
    pub(crate) fn in_progress(&self) -> bool {
        self.queue.iter().any(|u| u.had_audio)
    }

    /// The earliest deadline of a final.
    pub(crate) fn final_due(&self) -> Option<Instant> {
        self.queue.iter().filter_map(|u| u.final_due).min()
    }

    /// Where the oldest unfinished utterance begins on the connection.
    pub(crate) fn oldest_conn_start(&self) -> Option<u64> {
        self.queue.iter().find_map(|u| u.conn_start)
    }

    /// Keeps `frame` for a resend (the open utterance's), dropping the
    /// oldest audio beyond the cap.
    pub(crate) fn keep(&mut self, frame: AudioFrame) {
        let Some(u) = self.queue.back_mut().filter(|u| !u.ended) else {
            return;
        };
        self.buffered += frame.len() as u64;
        u.had_audio = true;
        u.frames.push_back(frame);
        while self.buffered > self.cap {
            let Some(old) = self.queue.iter_mut().find_map(|u| u.frames.pop_front()) else {
                break;
            };
            self.buffered -= old.len() as u64;
            if !self.warned {
                self.warned = true;
                tracing::warn!(
                    "deepgram: more than the buffer cap of unfinished speech; the oldest audio is \
                     dropped and a reconnect will not resend it"
                );
            }
        }
    }

    /// Drops the open utterance if none of its audio came (nothing to
    /// finalize); otherwise marks it ended and says so.
    pub(crate) fn end_open(&mut self) -> bool {
        match self.queue.back_mut() {
            Some(u) if !u.ended && !u.had_audio => {
                self.queue.pop_back();
                false
            }
            Some(u) if !u.ended => {
                u.ended = true;
                true
            }
            _ => false,
        }
    }

    /// What a `Results` message means for the utterances: the transcripts
    /// to emit (interims, or the finals of the utterances it closes).
    pub(crate) fn on_results(&mut self, r: &Results, timeline: &Timeline) -> Vec<Transcript> {
        let sent = timeline.sent();
        let rs = seconds_to_samples(r.start, self.rate).min(sent);
        let re = seconds_to_samples(r.end(), self.rate).clamp(rs, sent);
        let answers_end = r.is_final && (r.from_finalize || r.speech_final);
        let tol = self.tolerance;
        // The server is past every ended utterance this result starts after.
        let mut out = match self.queue.iter().rposition(|u| {
            u.conn_end
                .is_some_and(|end| end <= rs.saturating_add(self.slack))
        }) {
            Some(past) => self.close(past),
            None => Vec::new(),
        };
        let slack = self.slack;
        let idx = self
            .queue
            .iter()
            .rposition(|u| u.conn_start.is_some_and(|s| s <= rs.saturating_add(slack)));
        let Some(idx) = idx else {
            tracing::debug!("deepgram: a result for no unfinished utterance is dropped");
            return out;
        };
        let u = &mut self.queue[idx];
        u.got_result = true;
        let best = r.best();
        let text = best.map_or("", |a| a.transcript.trim());
        if u.first_word.is_none() && !text.is_empty() {
            u.first_word = best.and_then(|a| a.words.first()).map(|w| {
                timeline.to_input(seconds_to_samples(w.start, self.rate).min(sent), false)
            });
        }
        let covered = timeline.to_input(re, true);
        if r.is_final {
            let repeat = u.finalized.last().is_some_and(|f| covered <= f.end);
            if repeat {
                tracing::debug!("deepgram: a final repeating one already kept is dropped");
            } else if u.finalized.len() >= MAX_FINALS {
                tracing::warn!("deepgram: more finals than the cap for one utterance; dropped");
            } else {
                u.finalized.push(Final {
                    text: text.to_string(),
                    end: covered,
                });
            }
            u.pending_interim = false;
        } else if !text.is_empty() {
            u.pending_interim = true;
        }
        if r.is_final || !text.is_empty() {
            u.covered = u.covered.max(covered);
        }
        let closes = answers_end && u.conn_end.is_some_and(|end| re.saturating_add(tol) >= end);
        if closes {
            out.extend(self.close(idx));
            return out;
        }
        let mut words = u.words();
        if !r.is_final && !text.is_empty() {
            if !words.is_empty() {
                words.push(' ');
            }
            words.push_str(text);
        }
        if words.is_empty() || u.last_interim.as_deref() == Some(words.as_str()) {
            return out;
        }
        u.last_interim = Some(words.clone());
        out.push(u.transcript(words, false));
        out
    }

    /// The final deadline passed at `now`: the finals of the overdue
    /// utterances that have results and no interim awaiting a final, or
    /// `None` when one of them would lose words (a failure).
    pub(crate) fn expire(&mut self, now: Instant) -> Option<Vec<Transcript>> {
        let Some(idx) = self
            .queue
            .iter()
            .rposition(|u| u.final_due.is_some_and(|d| d <= now))
        else {
            return Some(Vec::new());
        };
        let lossy = self.queue.iter().take(idx + 1).any(|u| {
            u.had_audio && (u.pending_interim || (!u.got_result && u.finalized.is_empty()))
        });
        if lossy {
            return None;
        }
        tracing::debug!("deepgram: a final overdue; emitting what was finalized");
        Some(self.close(idx))
    }

    /// Before a resend: the finals of the ended utterances whose audio the
    /// cap dropped entirely (nothing of them can be heard again).
    pub(crate) fn close_emptied(&mut self) -> Vec<Transcript> {
        let emptied = self
            .queue
            .iter()
            .take_while(|u| u.ended && u.frames.is_empty())
            .count();
        match emptied {
            0 => Vec::new(),
            n => self.close(n - 1),
        }
    }

    /// `UtteranceEnd`: closes the oldest utterance awaiting its final when
    /// the silence reported reaches past its end.
    pub(crate) fn on_utterance_end(
        &mut self,
        last_word_end: f64,
        silence: Duration,
    ) -> Vec<Transcript> {
        let heard_to = seconds_to_samples(last_word_end, self.rate)
            .saturating_add(duration_to_samples(silence, self.rate))
            .saturating_add(self.tolerance);
        let Some((idx, end)) = self
            .queue
            .iter()
            .enumerate()
            .find_map(|(i, u)| u.conn_end.map(|end| (i, end)))
        else {
            return Vec::new();
        };
        if heard_to < end {
            return Vec::new();
        }
        tracing::debug!(
            "deepgram: UtteranceEnd closes an utterance whose Finalize went unanswered"
        );
        self.close(idx)
    }

    /// The finals of every utterance with audio: the server closed after
    /// `CloseStream`, so what it sent is all there is.
    pub(crate) fn finish_all(&mut self) -> Vec<Transcript> {
        match self.queue.len() {
            0 => Vec::new(),
            n => self.close(n - 1),
        }
    }

    /// Removes utterance `idx` and any older one (which can no longer get
    /// results), with the final of each that had audio.
    fn close(&mut self, idx: usize) -> Vec<Transcript> {
        let mut out = Vec::new();
        for _ in 0..=idx {
            let Some(u) = self.queue.pop_front() else {
                break;
            };
            let held: u64 = u.frames.iter().map(|f| f.len() as u64).sum();
            self.buffered = self.buffered.saturating_sub(held);
            if u.had_audio {
                // Words only an interim has heard (the server stopped before
                // finalizing them) are the final's too: never silently lost.
                let words = match (&u.last_interim, u.pending_interim) {
                    (Some(heard), true) => heard.clone(),
                    _ => u.words(),
                };
                out.push(u.transcript(words, true));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
