//! Phone calls over Twilio Media Streams (bidirectional): Twilio connects a
//! WebSocket, sends `connected`, `start` (the stream's format: µ-law, 8 kHz,
//! mono), 20 ms `media` chunks of the caller, `mark` echoes, `dtmf` and
//! `stop`; the server answers with `media`, `mark` and `clear`. Telnyx,
//! Plivo, Exotel and Vonage speak close variants.
//!
//! The phone's playout clock is the mark echo: every frame sent is followed
//! by a mark, and its echo is what counts as played ([`sink`]). The call ends
//! on `stop`, on a dropped socket, or on a protocol error (a malformed
//! message, `media` before `start`, a format other than µ-law 8 kHz mono, a
//! message over [`MAX_MESSAGE_BYTES`](super::MAX_MESSAGE_BYTES)) — each
//! ending only this call, with its history kept.
//!
//! With a [`TwilioAuth`], the upgrade must carry Twilio's signature (else
//! 403, no upgrade) and `start` must name the account (else the call is
//! closed, 1008).

mod phone;
pub(super) mod signature;
mod sink;
pub mod wire;

pub use phone::{PhoneLog, PlayedChunk, SimulatedPhone};
pub use signature::{SIGNATURE_HEADER, TwilioAuth, sign, verify};

use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use colloquy::audio::{AudioFrame, mulaw};

use super::Refusal;
use super::call::{Call, CallError, CallInfo, CallServices};
use super::limits::{CallSlot, Read};
use crate::speech::audio::PlayoutClock;
use sink::TwilioSink;
use wire::Inbound;

/// `GET /twilio`: the WebSocket Twilio's `<Stream>` connects to.
/// Refused before the upgrade: a missing or bad signature when an auth token
/// is configured (403), the server at its call limit (503).
pub async fn upgrade(
    State(services): State<CallServices>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(auth) = &services.twilio_auth
        && !auth.verify_request(&headers, &uri)
    {
        return Refusal::BadSignature.into_response();
    }
    let Some(slot) = services.take_slot() else {
        return Refusal::Busy.into_response();
    };
    super::limited(ws, &services.limits).on_upgrade(move |socket| run(services, socket, slot))
}

async fn run(services: CallServices, socket: WebSocket, slot: CallSlot) {
    let (mut ws_rx, out_tx, writer) = super::split(socket, services.limits, slot);
    let mut call: Option<(Call, Arc<TwilioSink>)> = None;
    let mut position = 0u64;
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
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => {
                break call
                    .is_some()
                    .then(|| CallError::Connection("closed by the peer".into()));
            }
            Message::Binary(_) => break Some(CallError::Protocol("binary message".into())),
            _ => continue,
        };
        let inbound = match Inbound::parse(&text) {
            Ok(m) => m,
            Err(e) => break Some(e),
        };
        match inbound {
            Inbound::Connected {} => {}
            Inbound::Start { start } => {
                if call.is_some() {
                    break Some(CallError::Protocol("a second start".into()));
                }
                if let Err(e) = start.media_format.check() {
                    break Some(e);
                }
                if let Some(want) = services.twilio_auth.as_ref().and_then(|a| a.account_sid())
                    && start.account_sid.as_deref() != Some(want)
                {
                    break Some(CallError::Refused(
                        "the stream's accountSid is not this server's account".into(),
                    ));
                }
                let id = match &start.call_sid {
                    Some(sid) if !sid.is_empty() => format!("twilio-{sid}"),
                    _ => format!("twilio-{}", services.next_id()),
                };
                let info = CallInfo {
                    id,
                    transport: "twilio",
                };
                let clock = PlayoutClock::new();
                let sink = Arc::new(TwilioSink::new(
                    start.stream_sid.clone(),
                    out_tx.clone(),
                    clock.clone(),
                ));
                match Call::start(&services, info, sink.clone(), clock, 8_000).await {
                    Ok(c) => call = Some((c, sink)),
                    Err(e) => break Some(e),
                }
            }
            Inbound::Media { media } => {
                let Some((call, _)) = call.as_mut() else {
                    break Some(CallError::Protocol("media before start".into()));
                };
                if media.track.as_deref().is_some_and(|t| t != "inbound") {
                    continue;
                }
                ws_rx.heard_audio();
                let bytes = match wire::decode_payload(&media.payload) {
                    Ok(b) => b,
                    Err(e) => break Some(e),
                };
                let frame = AudioFrame::new(mulaw::decode(&bytes), 8_000, position);
                position += bytes.len() as u64;
                if let Err(e) = call.hear(frame) {
                    break Some(e);
                }
            }
            Inbound::Mark { mark } => {
                if let Some((_, sink)) = &call {
                    sink.on_mark(&mark.name);
                }
            }
            Inbound::Dtmf { dtmf } => {
                tracing::debug!(digit = %dtmf.digit, "twilio: dtmf");
            }
            Inbound::Stop {} => break None,
            Inbound::Unknown => {}
        }
    };
    if let Some(e) = &error {
        tracing::info!(error = %e, "twilio: the call ended");
    }
    // The sink's sender goes with it, before the writer is awaited.
    let call = call.map(|(call, _sink)| call);
    super::finish(call, error, out_tx, writer).await;
}
