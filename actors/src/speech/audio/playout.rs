//! The audio output's state: one timeline of samples for the turn being
//! spoken, what of it was sent to the sink and what the sink confirmed as
//! played, and where each segment's characters end on it.
//!
//! One owner, one critical section: the output's mutex guards all of it, and
//! every transition — audio appended, frames sent, a played report, a pause,
//! a resume, a stop — is one method here. Nothing in this file waits or
//! knows about time; the driver (`audio.rs`) decides when to send.

use std::collections::VecDeque;

use colloquy::audio::{Alignment, AudioFrame};

use crate::ids::TurnId;
use crate::speech::Segment;

/// A segment's place on the timeline.
pub(super) struct Span {
    pub(super) segment: Segment,
    /// Timeline position of its first sample (`None` until its audio starts).
    pub(super) start: Option<u64>,
    /// Position after its last sample, once synthesis ended.
    pub(super) end: Option<u64>,
    /// Where its characters end, relative to `start` (sink rate).
    pub(super) alignment: Alignment,
    /// Synthesis failed: what was made plays, but the segment never counts
    /// as heard to its end.
    failed: bool,
}

/// Where a segment is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SpanState {
    Pending,
    Played,
    Failed,
}

/// What a played report changed: the characters heard per segment (the
/// caller reports them with `Segment::played`).
pub(super) type Heard = Vec<(Segment, usize)>;

pub(super) struct Playout {
    pub(super) rate: u32,
    /// Bumped by every stop: work started before it is void.
    pub(super) generation: u64,
    pub(super) turn: Option<TurnId>,
    pub(super) spans: VecDeque<Span>,
    /// Samples from `kept_from` to `end` (those before `played` are dropped).
    samples: VecDeque<i16>,
    kept_from: u64,
    /// Position after the last sample appended.
    pub(super) end: u64,
    /// Next position to send.
    pub(super) sent: u64,
    /// Every sample before this was played (the sink's report).
    pub(super) played: u64,
    pub(super) paused: bool,
    /// Frame size for sending, in samples.
    frame: usize,
}

impl Playout {
    pub(super) fn new(rate: u32, frame_ms: u32) -> Self {
        Self {
            rate,
            generation: 0,
            turn: None,
            spans: VecDeque::new(),
            samples: VecDeque::new(),
            kept_from: 0,
            end: 0,
            sent: 0,
            played: 0,
            paused: false,
            frame: (rate * frame_ms / 1000).max(1) as usize,
        }
    }

    /// Registers a segment to be spoken after the ones registered before it;
    /// a segment of a newer turn starts a fresh timeline. Returns `false`
    /// when it is already registered.
    pub(super) fn register(&mut self, segment: &Segment) -> bool {
        if self.turn != Some(segment.turn()) {
            self.reset_timeline();
            self.turn = Some(segment.turn());
        }
        if self
            .spans
            .iter()
            .any(|s| s.segment.index() == segment.index())
        {
            return false;
        }
        self.spans.push_back(Span {
            segment: segment.clone(),
            start: None,
            end: None,
            alignment: Alignment::new(false),
            failed: false,
        });
        true
    }

    /// Appends synthesized audio of the span `index` (which must be the first
    /// span not yet ended: spans are synthesized in order).
    pub(super) fn append(&mut self, index: usize, samples: &[i16]) {
        let end = self.end;
        if let Some(span) = self.span_mut(index) {
            span.start.get_or_insert(end);
            self.samples.extend(samples);
            self.end += samples.len() as u64;
        }
    }

    /// Records that the first `chars` characters of span `index` end at
    /// `sample` samples into its audio (sink rate).
    pub(super) fn mark(&mut self, index: usize, chars: usize, sample: u64, estimated: bool) {
        let end = self.end;
        if let Some(span) = self.span_mut(index) {
            span.start.get_or_insert(end);
            if estimated && !span.alignment.is_estimated() && span.alignment.marks().is_empty() {
                span.alignment = Alignment::new(true);
            }
            span.alignment.push(chars, sample);
        }
    }

    /// The span's synthesis ended: its audio ends here, and all its
    /// characters are spoken by its last sample.
    pub(super) fn finish_span(&mut self, index: usize) {
        let end = self.end;
        if let Some(span) = self.span_mut(index) {
            let start = *span.start.get_or_insert(end);
            span.end = Some(end);
            let chars = span.segment.chars();
            span.alignment.push(chars, end - start);
        }
    }

    /// The span's synthesis failed: its audio ends here, its characters end
    /// at the last mark the engine gave.
    pub(super) fn fail_span(&mut self, index: usize) {
        let end = self.end;
        if let Some(span) = self.span_mut(index) {
            span.start.get_or_insert(end);
            span.end = Some(end);
            span.failed = true;
        }
    }

    fn span_mut(&mut self, index: usize) -> Option<&mut Span> {
        self.spans.iter_mut().find(|s| s.segment.index() == index)
    }

    /// The frames to send now: from `sent` up to `limit` (a position), whole
    /// frames only unless the audio is complete (the last frame may be short).
    pub(super) fn take_frames(&mut self, limit: u64, out: &mut Vec<AudioFrame>) {
        if self.paused {
            return;
        }
        let complete = self.spans.back().is_none_or(|s| s.end.is_some());
        let frame = self.frame as u64;
        while self.sent < self.end && self.sent < limit {
            let n = (self.end - self.sent).min(frame);
            if n < frame && !complete {
                break;
            }
            let from = (self.sent - self.kept_from) as usize;
            let chunk: Vec<i16> = self
                .samples
                .range(from..from + n as usize)
                .copied()
                .collect();
            out.push(AudioFrame::new(chunk, self.rate, self.sent));
            self.sent += n;
        }
    }

    /// The sink reports every sample before `position` played: returns the
    /// characters now heard per segment, and drops the samples that can no
    /// longer be re-sent.
    pub(super) fn played_through(&mut self, position: u64) -> Heard {
        let mut heard = Vec::new();
        // Never beyond what was sent: a report for dropped frames is void.
        let position = position.min(self.sent);
        if position <= self.played {
            return heard;
        }
        self.played = position;
        for span in &self.spans {
            let Some(start) = span.start else { break };
            if position < start {
                break;
            }
            let chars = span.alignment.chars_at(position - start);
            if chars > span.segment.played_chars() {
                heard.push((span.segment.clone(), chars));
            }
        }
        let drop = (self.played.saturating_sub(self.kept_from) as usize).min(self.samples.len());
        self.samples.drain(..drop);
        self.kept_from += drop as u64;
        heard
    }

    /// Where span `index` is (`None`: not registered, or dropped by a stop).
    pub(super) fn span_done(&self, index: usize) -> Option<SpanState> {
        self.spans
            .iter()
            .find(|s| s.segment.index() == index)
            .map(|s| match s.end {
                Some(end) if self.played >= end => {
                    if s.failed {
                        SpanState::Failed
                    } else {
                        SpanState::Played
                    }
                }
                _ => SpanState::Pending,
            })
    }

    /// Pause: nothing more is sent, and what was sent and not played will be
    /// sent again from the played position on resume (the caller clears the
    /// sink in the same critical section).
    pub(super) fn pause(&mut self) {
        self.paused = true;
        self.sent = self.played;
    }

    pub(super) fn resume(&mut self) {
        self.paused = false;
    }

    /// Stop: everything of the turn is dropped; the next audio starts on a
    /// fresh stretch of the timeline, so no late report for a dropped frame
    /// can count as played.
    pub(super) fn stop(&mut self) {
        self.generation += 1;
        self.reset_timeline();
        self.turn = None;
        self.paused = false;
    }

    fn reset_timeline(&mut self) {
        self.spans.clear();
        self.samples.clear();
        let fresh = self.end.max(self.sent);
        self.end = fresh;
        self.sent = fresh;
        self.played = fresh;
        self.kept_from = fresh;
    }

    /// Samples sent and not yet confirmed played.
    pub(super) fn in_flight(&self) -> u64 {
        self.sent - self.played
    }
}
