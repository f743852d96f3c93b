//! Where the speech side's reports go: voice activity, transcripts and
//! playback progress, to a session in this process or, in order, to a
//! remote one.
//!
//! Why a queue for remote sessions: a [`Listener`](super::Listener) decides
//! voice activity in the audio's thread and a segment reports progress from
//! the audio clock; neither may wait for a network round trip. So for a
//! session on a worker they push onto one bounded queue, and one task sends
//! the queue in order (see `calls::remote`): the owner applies "heard 42
//! characters" before "the user started speaking" if that is the order the
//! audio said it in. The queue is bounded: a full one (the worker
//! unreachable for a long while) drops progress reports first (a later one
//! supersedes them) and counts every drop in
//! `colloquy_speech_inputs_dropped_total`.

#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use tokio::sync::mpsc;

use crate::bus::HeardSpan;
use crate::ids::TurnId;
use crate::session::SessionHandle;

/// One report of the speech side to a remote session.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SpeechInput {
    /// Voice activity began.
    SpeechStarted,
    /// Voice activity ended.
    SpeechEnded,
    /// A transcript (a final one starts a turn).
    Transcript { text: String, is_final: bool },
    /// `chars` characters of `turn`'s text were played.
    Played { turn: TurnId, chars: usize },
}

/// Reports queued for a remote session at most (about a minute of a busy
/// call: a word played every 300 ms, a few transcripts).
pub(crate) const QUEUE: usize = 256;

/// Room kept in the queue for what must not be dropped (voice activity and
/// transcripts): progress reports are dropped before the queue is this full.
const KEEP_FOR_SPEECH: usize = 32;

/// Where reports go.
#[derive(Clone)]
pub(crate) enum SpeechInputs {
    /// A session in this process: published at once.
    Local(SessionHandle),
    /// A session elsewhere: queued for the task that sends them in order.
    Queue(mpsc::Sender<SpeechInput>),
}

impl std::fmt::Debug for SpeechInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(s) => f.debug_tuple("Local").field(s.id()).finish(),
            Self::Queue(_) => f.write_str("Queue"),
        }
    }
}

impl SpeechInputs {
    /// A queue for a remote session, and its receiving end.
    pub(crate) fn queue() -> (Self, mpsc::Receiver<SpeechInput>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self::Queue(tx), rx)
    }

    pub(crate) fn speech_started(&self) {
        match self {
            Self::Local(s) => {
                s.user_speech_started();
            }
            Self::Queue(q) => push(q, SpeechInput::SpeechStarted),
        }
    }

    pub(crate) fn speech_ended(&self) {
        match self {
            Self::Local(s) => {
                s.user_speech_ended();
            }
            Self::Queue(q) => push(q, SpeechInput::SpeechEnded),
        }
    }

    /// A transcript and where in the input audio it was heard (the
    /// position stays local for a remote session: the wire's input does not
    /// carry it).
    pub(crate) fn transcript(&self, text: String, is_final: bool, heard: HeardSpan) {
        match self {
            Self::Local(s) => {
                s.user_transcript_heard(text, is_final, heard);
            }
            Self::Queue(q) => push(q, SpeechInput::Transcript { text, is_final }),
        }
    }

    /// Playback progress of a turn, from a queue's owner (a segment).
    pub(crate) fn played(queue: &mpsc::Sender<SpeechInput>, turn: TurnId, chars: usize) {
        if queue.capacity() <= KEEP_FOR_SPEECH {
            dropped();
            return;
        }
        push(queue, SpeechInput::Played { turn, chars });
    }
}

fn push(queue: &mpsc::Sender<SpeechInput>, input: SpeechInput) {
    match queue.try_send(input) {
        Ok(()) => {}
        // The session's call ended: nothing to tell.
        Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(_)) => dropped(),
    }
}

fn dropped() {
    metrics::counter!("colloquy_speech_inputs_dropped_total").increment(1);
    tracing::warn!("speech inputs for a remote session are behind; a report was dropped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_dropped_before_speech_when_the_queue_fills() {
        let (inputs, mut rx) = SpeechInputs::queue();
        let SpeechInputs::Queue(q) = &inputs else {
            unreachable!()
        };
        for chars in 0..QUEUE {
            SpeechInputs::played(q, TurnId(1), chars);
        }
        // Progress stopped with room left for voice activity and transcripts.
        inputs.speech_started();
        inputs.transcript(
            "stop".into(),
            true,
            HeardSpan {
                start: 0,
                end: 8_000,
                sample_rate: 8_000,
            },
        );
        let mut got = Vec::new();
        while let Ok(i) = rx.try_recv() {
            got.push(i);
        }
        assert_eq!(got.len(), QUEUE - KEEP_FOR_SPEECH + 2);
        assert_eq!(got[got.len() - 2], SpeechInput::SpeechStarted);
        assert_eq!(
            got[got.len() - 1],
            SpeechInput::Transcript {
                text: "stop".into(),
                is_final: true
            }
        );
    }
}
