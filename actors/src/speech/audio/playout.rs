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
    /// Bumped whenever sending restarts from a new place (a pause, a stop, a
    /// new timeline): the driver's pacing starts afresh.
    pub(super) runs: u64,
    /// The sink stopped confirming playback for this turn: its segments end
    /// as stopped at once, none is sent.
    dead: Option<TurnId>,
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
            runs: 0,
            dead: None,
            frame: (u64::from(rate) * u64::from(frame_ms) / 1000).max(1) as usize,
        }
    }

    /// Registers a segment to be spoken after the ones registered before it;
    /// a segment of a newer turn starts a fresh timeline. Returns `false`
    /// when it is already registered.
    pub(super) fn register(&mut self, segment: &Segment) -> bool {
        if self.turn != Some(segment.turn()) {
            self.reset_timeline();
            self.turn = Some(segment.turn());
            self.paused = false;
        }
        if self
            .spans
            .iter()
            .any(|s| s.segment.index() == segment.index())
        {
            return false;
        }
        let dead = self.dead == Some(segment.turn());
        let end = self.end;
        self.spans.push_back(Span {
            segment: segment.clone(),
            start: dead.then_some(end),
            end: dead.then_some(end),
            alignment: Alignment::new(false),
            failed: dead,
        });
        !dead
    }

    /// The sink is gone for this turn: every segment of it ends as stopped
    /// (heard where the last confirmation put it), and so do the ones
    /// registered after, at once.
    pub(super) fn give_up(&mut self) {
        self.dead = self.turn;
        let end = self.end;
        for span in &mut self.spans {
            if span.end.is_none() || !span.failed {
                span.start.get_or_insert(end);
                span.end = Some(span.end.unwrap_or(end));
                span.failed = true;
            }
        }
        self.samples.clear();
        self.sent = self.end;
        self.played = self.end;
        self.kept_from = self.end;
        self.runs += 1;
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
    /// Returns `true` when it stopped for want of audio (a partial frame
    /// waiting for more synthesis), not for want of time.
    pub(super) fn take_frames(&mut self, limit: u64, out: &mut Vec<AudioFrame>) -> bool {
        if self.paused {
            return false;
        }
        let complete = self.spans.back().is_none_or(|s| s.end.is_some());
        let frame = self.frame as u64;
        while self.sent < self.end && self.sent < limit {
            let n = (self.end - self.sent).min(frame);
            if n < frame && !complete {
                return true;
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
        false
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
            if position > start {
                // Its first sample played (reported once per segment).
                span.segment.audio_playing();
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
        self.runs += 1;
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
        self.dead = None;
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
        self.runs += 1;
    }

    /// Samples sent and not yet confirmed played.
    pub(super) fn in_flight(&self) -> u64 {
        self.sent - self.played
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::SessionBus;
    use crate::ids::SessionId;

    fn segment(turn: u64, index: usize, text: &str) -> Segment {
        let bus = SessionBus::new(SessionId::new("t"), 16);
        Segment::new(
            bus,
            TurnId(turn),
            index,
            0,
            std::sync::Arc::from(text),
            false,
        )
    }

    fn frames(p: &mut Playout, limit: u64) -> (Vec<AudioFrame>, bool) {
        let mut out = Vec::new();
        let starved = p.take_frames(limit, &mut out);
        (out, starved)
    }

    #[test]
    fn a_partial_frame_waits_for_audio_not_for_time() {
        let mut p = Playout::new(8_000, 20);
        assert!(p.register(&segment(1, 0, "hello")));
        p.append(0, &[1; 250]);
        let (out, starved) = frames(&mut p, u64::MAX);
        assert_eq!(out.len(), 1, "one whole frame of 160");
        assert!(starved, "the 90 left wait for synthesis, not for the clock");
        p.finish_span(0);
        let (out, starved) = frames(&mut p, u64::MAX);
        assert_eq!(
            (out.len(), out[0].len(), starved),
            (1, 90, false),
            "the tail goes once complete"
        );
    }

    #[test]
    fn a_pause_resends_from_the_played_sample_and_a_stop_voids_late_reports() {
        let mut p = Playout::new(8_000, 20);
        p.register(&segment(1, 0, "hello world"));
        p.append(0, &[7; 1600]);
        p.mark(0, 5, 800, false);
        p.finish_span(0);
        let (out, _) = frames(&mut p, 960);
        assert_eq!(out.len(), 6);
        let heard = p.played_through(800);
        assert_eq!(heard.iter().map(|h| h.1).collect::<Vec<_>>(), vec![5]);
        let runs = p.runs;
        p.pause();
        assert_eq!(
            (p.sent, p.runs),
            (800, runs + 1),
            "rewound to the played sample, a new run"
        );
        assert!(
            frames(&mut p, u64::MAX).0.is_empty(),
            "nothing sent while paused"
        );
        p.resume();
        let (out, _) = frames(&mut p, u64::MAX);
        assert_eq!(
            out[0].position(),
            800,
            "resumed from exactly the played sample"
        );
        // A report beyond what was sent is clamped; after a stop, old
        // positions count for nothing.
        p.stop();
        assert!(p.played_through(1600).is_empty());
        assert!(p.register(&segment(2, 0, "next")));
        p.append(0, &[1; 160]);
        let (out, _) = frames(&mut p, u64::MAX);
        assert_eq!(
            out[0].position(),
            1600,
            "the next turn starts on a fresh stretch"
        );
    }

    #[test]
    fn a_gone_sink_ends_the_turns_segments_now_and_later() {
        let mut p = Playout::new(8_000, 20);
        p.register(&segment(1, 0, "one"));
        p.register(&segment(1, 1, "two"));
        p.append(0, &[1; 320]);
        let _ = frames(&mut p, u64::MAX);
        p.give_up();
        assert_eq!(p.span_done(0), Some(SpanState::Failed));
        assert_eq!(p.span_done(1), Some(SpanState::Failed));
        assert!(
            !p.register(&segment(1, 2, "three")),
            "no synthesis for a dead turn"
        );
        assert_eq!(p.span_done(2), Some(SpanState::Failed));
        assert!(
            p.register(&segment(2, 0, "new turn")),
            "a new turn speaks again"
        );
        assert_eq!(p.span_done(0), Some(SpanState::Pending));
    }
}
