//! Browser calls: the page at `/` captures the microphone with an
//! AudioWorklet and streams it as PCM16 over `/ws`; the agent's audio comes
//! back as PCM16 frames that a second worklet plays, reporting every frame
//! it finished playing — the browser's playout clock.
//!
//! The protocol (all integers little-endian):
//! - page → server, text: `{"type":"hello","sample_rate":R}` first (the
//!   AudioContext's rate, 8000–48000 of the supported rates); then
//!   `{"type":"played","position":P,"epoch":E}` — every sample before `P` on
//!   the agent's timeline was played, reported after the `clear` numbered
//!   `E` (reports of an older epoch are void: that audio was cleared).
//! - page → server, binary: caller audio, PCM16 mono at `R`.
//! - server → page, binary: agent audio, 8-byte position then PCM16 mono at
//!   `R`.
//! - server → page, text: `{"type":"clear","epoch":E}` (drop everything
//!   queued, and the frame playing: frames that arrived before it are never
//!   reported), and the call's events for the page to show:
//!   `speech_started`, `speech_ended`, `user` (`text`, `final`), `turn`,
//!   `agent` (a segment's `text`), `heard` (`chars` of the turn heard),
//!   `paused`, `resumed`, `cut` (`heard_chars` after a finished reply's
//!   speech was cut, or `end: "cancelled"` for a reply cut while
//!   generating), `turn_finished` (`end`: the turn's end label),
//!   `turn_latency` (the turn's breakdown, the fields of
//!   [`TurnLatency::to_json`](crate::latency::TurnLatency::to_json)) and
//!   `error` (`message`). The page measures each turn's latency itself too:
//!   the last `speech_ended` to the first played report of the turn.
//!
//! Who may call: the page is served with a call token ([`BrowserAccess`]):
//! `/ws?token=…` takes it once, before it expires, from an allowed `Origin`;
//! else 403 before the upgrade. The call is named after the token's number
//! (`web-<n>`).
//!
//! [`BrowserAccess`]: super::BrowserAccess
//!
//! A played report the page sent just before a `clear` reached it arrives
//! with the old epoch and is dropped: after a pause, at most one frame
//! (20 ms) already heard is sent again, and the heard text never runs ahead
//! of the audio.

mod page;
mod sink;

pub use page::{PAGE, TOKEN_SLOT, page};

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use colloquy::audio::AudioFrame;
use serde::Deserialize;

use super::call::{Call, CallError, CallInfo, CallServices, CallSession};
use super::limits::{CallSlot, Read};
use crate::speech::audio::PlayoutClock;
use sink::BrowserSink;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FromPage {
    Hello {
        sample_rate: u32,
    },
    Played {
        position: u64,
        epoch: u64,
    },
    #[serde(other)]
    Unknown,
}

/// The `token` parameter of a query.
fn token(uri: &Uri) -> Option<&str> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
}

/// `GET /ws?token=…`: the page's WebSocket. Refused before the upgrade: a
/// foreign origin or a missing, forged, expired or used token (403), the
/// server at its call limit (503).
pub async fn upgrade(
    State(services): State<CallServices>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    let number = match services.browser.admit(&headers, token(&uri)) {
        Ok(n) => n,
        Err(refusal) => return refusal.into_response(),
    };
    let Some(slot) = services.take_slot() else {
        return super::Refusal::Busy.into_response();
    };
    super::limited(ws, &services.limits)
        .on_upgrade(move |socket| run(services, socket, slot, number))
}

async fn run(services: CallServices, socket: WebSocket, slot: CallSlot, number: u64) {
    let (mut ws_rx, out_tx, writer) = super::split(socket, services.limits, slot);
    let mut call: Option<(Call, Arc<BrowserSink>, u32)> = None;
    let mut position = 0u64;
    let mut events = None;
    let error = loop {
        let msg = match ws_rx.next().await {
            Read::Closed => {
                break call
                    .is_some()
                    .then(|| CallError::Connection("the socket closed".into()));
            }
            Read::Failed(e) => break Some(e),
            Read::Message(m) => m,
        };
        match msg {
            Message::Text(text) => match serde_json::from_str::<FromPage>(&text) {
                Err(e) => break Some(CallError::Protocol(format!("bad message: {e}"))),
                Ok(FromPage::Hello { sample_rate }) => {
                    if call.is_some() {
                        break Some(CallError::Protocol("a second hello".into()));
                    }
                    if !colloquy::audio::resample::SUPPORTED_RATES.contains(&sample_rate) {
                        break Some(CallError::Audio(
                            colloquy::audio::AudioError::UnsupportedRate(sample_rate),
                        ));
                    }
                    let info = CallInfo {
                        id: format!("web-{number}"),
                        transport: "browser",
                    };
                    let clock = PlayoutClock::new();
                    let sink =
                        Arc::new(BrowserSink::new(sample_rate, out_tx.clone(), clock.clone()));
                    match Call::start(&services, info, sink.clone(), clock, sample_rate).await {
                        Ok(c) => {
                            // The page's view only: the call goes on without it.
                            events = match page_events(&c, out_tx.clone()).await {
                                Ok(events) => Some(events),
                                Err(e) => {
                                    tracing::warn!(error = %e, "browser call: the page will not show the session's events");
                                    None
                                }
                            };
                            call = Some((c, sink, sample_rate));
                        }
                        Err(e) => break Some(e),
                    }
                }
                Ok(FromPage::Played { position, epoch }) => {
                    if let Some((_, sink, _)) = &call {
                        sink.on_played(position, epoch);
                    }
                }
                Ok(FromPage::Unknown) => {}
            },
            Message::Binary(bytes) => {
                let Some((call, _, rate)) = call.as_mut() else {
                    break Some(CallError::Protocol("audio before hello".into()));
                };
                if bytes.len() % 2 != 0 {
                    break Some(CallError::Protocol("odd-length PCM16 frame".into()));
                }
                ws_rx.heard_audio();
                let samples: Vec<i16> = bytes
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                let frame = AudioFrame::new(samples, *rate, position);
                position += frame.len() as u64;
                if let Err(e) = call.hear(frame) {
                    break Some(e);
                }
            }
            Message::Close(_) => {
                break call
                    .is_some()
                    .then(|| CallError::Connection("closed by the page".into()));
            }
            _ => {}
        }
    };
    if let Some(e) = &error {
        tracing::info!(error = %e, "browser: the call ended");
        let _ = out_tx.send(Message::Text(
            serde_json::json!({"type": "error", "message": e.to_string()})
                .to_string()
                .into(),
        ));
    }
    drop(events);
    // The sink's sender goes with it, before the writer is awaited.
    let call = call.map(|(call, _sink, _)| call);
    super::finish(call, error, out_tx, writer).await;
}

/// Forwards the events of the call's session the page shows.
async fn page_events(
    call: &Call,
    out: tokio::sync::mpsc::UnboundedSender<Message>,
) -> Result<crate::task::AbortOnDrop, CallError> {
    match call.session() {
        CallSession::Local { session, .. } => Ok(sink::forward_events(session, out)),
        #[cfg(feature = "nats")]
        CallSession::Remote(remote) => {
            let events = remote
                .session()
                .subscribe()
                .await
                .map_err(|e| CallError::Session(e.to_string()))?;
            Ok(sink::forward_remote_events(events, out))
        }
    }
}
