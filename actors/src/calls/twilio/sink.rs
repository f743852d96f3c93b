//! The phone's speaker, as Twilio exposes it: audio goes out as `media`
//! messages, each followed by a `mark`; a mark echoed back means the audio
//! before it was played. A `clear` drops Twilio's buffer — and Twilio then
//! echoes every pending mark at once, though none of that audio was played,
//! so marks outstanding at a clear are never counted.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::Message;
use colloquy::audio::{AudioFrame, mulaw};
use tokio::sync::mpsc;

use super::wire;
use crate::speech::audio::{AudioSink, PlayoutClock};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Marks {
    next: u64,
    /// Marks sent and not yet echoed: name number, end position. A clear
    /// empties it, so the echoes of the marks it held (numbered below every
    /// mark sent after it) find nothing to count.
    outstanding: VecDeque<(u64, u64)>,
}

/// A Twilio call's outbound audio and its mark clock.
pub(crate) struct TwilioSink {
    stream_sid: String,
    out: mpsc::UnboundedSender<Message>,
    clock: PlayoutClock,
    marks: Mutex<Marks>,
}

impl TwilioSink {
    pub(crate) fn new(
        stream_sid: String,
        out: mpsc::UnboundedSender<Message>,
        clock: PlayoutClock,
    ) -> Self {
        Self {
            stream_sid,
            out,
            clock,
            marks: Mutex::default(),
        }
    }

    /// A mark came back.
    pub(crate) fn on_mark(&self, name: &str) {
        // `m<n>_<end>`: the mark's number, and the timeline position it ends.
        let number = name
            .strip_prefix('m')
            .and_then(|rest| rest.split('_').next());
        let Some(n) = number.and_then(|n| n.parse::<u64>().ok()) else {
            return; // not ours
        };
        let mut marks = lock(&self.marks);
        // Marks come back in order; one echoed means those before it too.
        let mut played = None;
        while let Some(&(m, end)) = marks.outstanding.front() {
            if m > n {
                break;
            }
            marks.outstanding.pop_front();
            played = Some(end);
        }
        // On the clock before the marks' lock is released: a clear after this
        // finds the position reported (a pause reads the clock after its
        // clear), a clear before it voided the mark.
        if let Some(end) = played {
            self.clock.played_through(end);
        }
        drop(marks);
    }
}

impl AudioSink for TwilioSink {
    fn sample_rate(&self) -> u32 {
        8_000
    }

    fn write(&self, frame: AudioFrame) {
        let bytes = mulaw::encode(frame.samples());
        let mut marks = lock(&self.marks);
        marks.next += 1;
        let n = marks.next;
        marks.outstanding.push_back((n, frame.end()));
        let _ = self
            .out
            .send(Message::Text(wire::media(&self.stream_sid, &bytes).into()));
        let name = format!("m{n}_{}", frame.end());
        let _ = self
            .out
            .send(Message::Text(wire::mark(&self.stream_sid, &name).into()));
    }

    fn clear(&self) {
        let mut marks = lock(&self.marks);
        marks.outstanding.clear();
        let _ = self
            .out
            .send(Message::Text(wire::clear(&self.stream_sid).into()));
    }
}
