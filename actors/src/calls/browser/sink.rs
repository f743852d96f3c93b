//! The browser's speaker: agent audio to the page's playback worklet, and
//! its played reports back; plus the call's events for the page to show.

use std::sync::Mutex;

use axum::extract::ws::Message;
use colloquy::audio::AudioFrame;
use tokio::sync::mpsc;

use crate::bus::{BusRecvError, EventKind, TurnEnd};
use crate::session::SessionHandle;
use crate::speech::audio::{AudioSink, PlayoutClock};
use crate::task::AbortOnDrop;

/// The page's playback, as the server sees it.
pub(crate) struct BrowserSink {
    rate: u32,
    out: mpsc::UnboundedSender<Message>,
    clock: PlayoutClock,
    /// The current clear's number: reports of an older one are void.
    epoch: Mutex<u64>,
}

impl BrowserSink {
    pub(crate) fn new(rate: u32, out: mpsc::UnboundedSender<Message>, clock: PlayoutClock) -> Self {
        Self {
            rate,
            out,
            clock,
            epoch: Mutex::new(0),
        }
    }

    /// The page played every sample before `position`, after clear `epoch`.
    pub(crate) fn on_played(&self, position: u64, epoch: u64) {
        // Under the epoch's lock: a clear after this finds the position on
        // the clock (a pause reads it after its clear).
        let current = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        if epoch == *current {
            self.clock.played_through(position);
        }
    }
}

impl AudioSink for BrowserSink {
    fn sample_rate(&self) -> u32 {
        self.rate
    }

    fn write(&self, frame: AudioFrame) {
        let mut bytes = Vec::with_capacity(8 + frame.len() * 2);
        bytes.extend_from_slice(&frame.position().to_le_bytes());
        for s in frame.samples() {
            bytes.extend_from_slice(&s.to_le_bytes());
        }
        let _ = self.out.send(Message::Binary(bytes.into()));
    }

    fn clear(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        *epoch += 1;
        let msg = serde_json::json!({"type": "clear", "epoch": *epoch}).to_string();
        let _ = self.out.send(Message::Text(msg.into()));
    }
}

/// Sends the session's events the page shows, as JSON text messages.
pub(crate) fn forward_events(
    session: &SessionHandle,
    out: mpsc::UnboundedSender<Message>,
) -> AbortOnDrop {
    let mut rx = session.subscribe();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(BusRecvError::Lagged { .. }) => continue,
                Err(_) => return,
            };
            let Some(msg) = page_message(ev.turn.0, &ev.kind) else {
                continue;
            };
            if out.send(Message::Text(msg.to_string().into())).is_err() {
                return;
            }
        }
    }))
}

/// Sends a remote session's events the page shows (its turn numbers are the
/// cluster's, which run on across failovers).
#[cfg(feature = "nats")]
pub(crate) fn forward_remote_events(
    mut events: crate::cluster::RemoteEvents,
    out: mpsc::UnboundedSender<Message>,
) -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if matches!(
                ev.kind,
                crate::cluster::RemoteEventKind::SessionEnded { .. }
            ) {
                return;
            }
            let Some(msg) = ev.bus().and_then(|kind| page_message(ev.turn.0, kind)) else {
                continue;
            };
            if out.send(Message::Text(msg.to_string().into())).is_err() {
                return;
            }
        }
    }))
}

/// The page's message for an event it shows.
fn page_message(turn: u64, kind: &EventKind) -> Option<serde_json::Value> {
    let msg = match kind {
        // Each turn's latency breakdown, for the page's waterfall.
        EventKind::TurnLatency(report) => {
            let mut msg = report.to_json();
            msg["type"] = serde_json::json!("turn_latency");
            msg
        }
        EventKind::UserSpeechStarted => serde_json::json!({"type": "speech_started"}),
        EventKind::UserSpeechEnded => serde_json::json!({"type": "speech_ended"}),
        EventKind::UserTranscript { text, is_final, .. } => {
            serde_json::json!({"type": "user", "text": &**text, "final": is_final})
        }
        EventKind::TurnStarted => serde_json::json!({"type": "turn", "turn": turn}),
        EventKind::Speakable { text, .. } => {
            serde_json::json!({"type": "agent", "turn": turn, "text": &**text})
        }
        EventKind::SpeechPlayed { chars } => {
            serde_json::json!({"type": "heard", "turn": turn, "chars": chars})
        }
        EventKind::PlaybackPaused { heard_chars } => {
            serde_json::json!({"type": "paused", "turn": turn, "heard_chars": heard_chars})
        }
        EventKind::PlaybackResumed { heard_chars } => {
            serde_json::json!({"type": "resumed", "turn": turn, "heard_chars": heard_chars})
        }
        EventKind::Interrupted { heard_chars } => {
            serde_json::json!({"type": "cut", "turn": turn, "heard_chars": heard_chars})
        }
        EventKind::TurnFinished(TurnEnd::Cancelled) => {
            serde_json::json!({"type": "cut", "turn": turn, "end": "cancelled"})
        }
        EventKind::TurnFinished(end) => {
            serde_json::json!({"type": "turn_finished", "turn": turn, "end": end.label()})
        }
        _ => return None,
    };
    Some(msg)
}
