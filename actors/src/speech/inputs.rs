//! Where the speech side's reports go: voice activity, transcripts and
//! playback progress, to a session in this process or, in order, to a
//! remote one.
//!
//! Why a queue for remote sessions: a [`Listener`](super::Listener) decides
//! voice activity in the audio's thread and a segment reports progress from
//! the audio clock; neither may wait for a network round trip. So for a
//! session on a worker they hand their reports to an [`InputQueue`], and one
//! task sends them in order (see `calls::remote`). Voice activity and
//! transcripts go through a bounded queue (a full one — the worker
//! unreachable for a long while — drops them, counted in
//! `colloquy_speech_inputs_dropped_total`); progress is not queued at all:
//! each turn's latest position is kept in a slot (the highest, per turn) that
//! the sender empties before every voice activity or transcript it sends and
//! whenever it is idle — so "heard 42 characters" reaches the owner before
//! the "user started speaking" that followed it in the audio, a burst of
//! reports costs one request, and a turn's last position is never dropped.

#![cfg_attr(not(feature = "nats"), allow(dead_code))]

use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};

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

/// Voice activity and transcripts queued for a remote session at most.
pub(crate) const QUEUE: usize = 256;

/// Turns whose progress is kept at most (the one playing and the one before,
/// whose last position may not have been sent yet).
const PROGRESS_TURNS: usize = 4;

/// The sending side of a remote session's speech inputs.
#[derive(Clone)]
pub(crate) struct InputQueue {
    tx: mpsc::Sender<SpeechInput>,
    progress: Arc<Progress>,
}

/// The receiving side, for the task that sends them.
pub(crate) struct InputReceiver {
    rx: mpsc::Receiver<SpeechInput>,
    progress: Arc<Progress>,
}

#[derive(Default)]
struct Progress {
    /// The latest position of each turn not yet sent, oldest turn first.
    latest: Mutex<Vec<(TurnId, usize)>>,
    changed: Notify,
}

impl InputQueue {
    /// A queue and its receiving end.
    pub(crate) fn new() -> (Self, InputReceiver) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let progress = Arc::new(Progress::default());
        (
            Self {
                tx,
                progress: progress.clone(),
            },
            InputReceiver { rx, progress },
        )
    }

    fn push(&self, input: SpeechInput) {
        match self.tx.try_send(input) {
            Ok(()) => {}
            // The session's call ended: nothing to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("colloquy_speech_inputs_dropped_total").increment(1);
                tracing::warn!(
                    "speech inputs for a remote session are behind; a report was dropped"
                );
            }
        }
    }

    /// `chars` characters of `turn` were played (kept if it is the highest).
    pub(crate) fn played(&self, turn: TurnId, chars: usize) {
        {
            let mut latest = self
                .progress
                .latest
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match latest.iter_mut().find(|(t, _)| *t == turn) {
                Some((_, c)) => *c = (*c).max(chars),
                None => {
                    latest.push((turn, chars));
                    latest.sort_by_key(|(t, _)| *t);
                    if latest.len() > PROGRESS_TURNS {
                        latest.remove(0);
                    }
                }
            }
        }
        self.progress.changed.notify_one();
    }
}

impl InputReceiver {
    /// The next input to send: pending progress first, then the queue in
    /// order; `None` once every sender is gone and nothing is left.
    pub(crate) async fn next(&mut self) -> Option<Vec<SpeechInput>> {
        loop {
            let progress = self.take_progress();
            if !progress.is_empty() {
                return Some(progress);
            }
            tokio::select! {
                input = self.rx.recv() => {
                    let input = input?;
                    // What was played before this input was queued goes first.
                    let mut out = self.take_progress();
                    out.push(input);
                    return Some(out);
                }
                () = self.progress.changed.notified() => {}
            }
        }
    }

    fn take_progress(&self) -> Vec<SpeechInput> {
        let mut latest = self
            .progress
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        latest
            .drain(..)
            .map(|(turn, chars)| SpeechInput::Played { turn, chars })
            .collect()
    }
}

/// Where reports go.
#[derive(Clone)]
pub(crate) enum SpeechInputs {
    /// A session in this process: published at once.
    Local(SessionHandle),
    /// A session elsewhere: queued for the task that sends them in order.
    Queue(InputQueue),
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
    pub(crate) fn speech_started(&self) {
        match self {
            Self::Local(s) => {
                s.user_speech_started();
            }
            Self::Queue(q) => q.push(SpeechInput::SpeechStarted),
        }
    }

    pub(crate) fn speech_ended(&self) {
        match self {
            Self::Local(s) => {
                s.user_speech_ended();
            }
            Self::Queue(q) => q.push(SpeechInput::SpeechEnded),
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
            Self::Queue(q) => q.push(SpeechInput::Transcript { text, is_final }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn progress_is_coalesced_per_turn_and_goes_before_what_follows_it() {
        let (q, mut rx) = InputQueue::new();
        let inputs = SpeechInputs::Queue(q.clone());
        for chars in 0..1000 {
            q.played(TurnId(1), chars);
        }
        q.played(TurnId(2), 3);
        inputs.speech_started();
        q.played(TurnId(2), 9);
        // Nothing dropped, nothing repeated: each turn's latest, then the
        // voice activity that came after them.
        assert_eq!(
            rx.next().await.unwrap(),
            vec![
                SpeechInput::Played {
                    turn: TurnId(1),
                    chars: 999
                },
                SpeechInput::Played {
                    turn: TurnId(2),
                    chars: 9
                },
            ]
        );
        assert_eq!(rx.next().await.unwrap(), vec![SpeechInput::SpeechStarted]);
        drop((inputs, q));
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn a_full_queue_drops_speech_but_never_a_turns_last_position() {
        let (q, mut rx) = InputQueue::new();
        let inputs = SpeechInputs::Queue(q.clone());
        for _ in 0..QUEUE + 10 {
            inputs.speech_ended();
        }
        q.played(TurnId(4), 120);
        let first = rx.next().await.unwrap();
        assert_eq!(
            first[0],
            SpeechInput::Played {
                turn: TurnId(4),
                chars: 120
            }
        );
    }
}
