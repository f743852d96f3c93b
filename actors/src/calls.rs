//! Calls: the agent on the phone and in the browser. One call is one
//! session; the call's audio is heard by a [`Listener`] and the replies are
//! spoken by an [`AudioOutput`] into the call's sink, whose playout reports
//! (Twilio's mark echo, the page's AudioWorklet position) decide what the
//! caller heard.
//!
//! - `/twilio`: [Twilio Media Streams](twilio) — the WebSocket protocol every
//!   phone provider's voice-agent integration speaks in this shape.
//! - `/ws`: the browser page's protocol ([`browser`]), and `/` the page.
//!
//! [`router`] builds the axum routes from [`CallServices`]; `voice_server`
//! serves them. A call's `stop`, a dropped socket or a protocol error ends
//! its session cleanly: its history is reported ([`CallNotice::Ended`]) and
//! nothing of it is left running; no other call is disturbed.
//!
//! Who may call: `/twilio` with [`TwilioAuth`](twilio::TwilioAuth) takes only
//! upgrades Twilio signed; `/ws` only a page's short-lived call token from an
//! allowed origin ([`BrowserAccess`]); every call within [`CallLimits`]. A
//! refusal is an HTTP status before the upgrade ([`Refusal`]); a limit
//! crossed mid-call ends it with a close frame that says which.
//!
//! [`Listener`]: crate::speech::Listener
//! [`AudioOutput`]: crate::speech::audio::AudioOutput

mod access;
pub mod browser;
mod call;
mod info;
mod limits;
#[cfg(feature = "nats")]
mod remote;
pub mod twilio;

pub use access::{AllowedOrigins, BrowserAccess, Refusal};
pub use call::{CallNotice, CallServices};
pub use info::{CallError, CallInfo};
pub use limits::{CallLimits, LimitExceeded};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use call::Call;

/// Largest WebSocket message a call accepts by default
/// ([`CallLimits::max_message_bytes`]; a 20 ms Twilio frame is about 300
/// bytes, a browser frame a few KiB): larger ones end the call (close 1009).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The routes of a voice server: `GET /` (the browser page), `/ws` (browser
/// audio) and `/twilio` (Media Streams).
pub fn router(services: CallServices) -> Router {
    Router::new()
        .route("/", get(browser::page))
        .route("/ws", get(browser::upgrade))
        .route("/twilio", get(twilio::upgrade))
        .with_state(services)
}

/// A call's WebSocket, with the size limit every call has.
fn limited(ws: WebSocketUpgrade, limits: &CallLimits) -> WebSocketUpgrade {
    ws.max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
}

/// Splits a call's socket: what it reads, where the call queues what it
/// sends (its sinks, its events), and the writer task that sends it — and
/// closes the socket once every sender is gone.
fn split(
    socket: WebSocket,
    limits: CallLimits,
    slot: limits::CallSlot,
) -> (
    limits::Reader,
    mpsc::UnboundedSender<Message>,
    JoinHandle<()>,
) {
    let (mut ws_tx, ws_rx) = socket.split();
    let (out, mut queued) = mpsc::unbounded_channel::<Message>();
    let writer = tokio::spawn(async move {
        while let Some(msg) = queued.recv().await {
            if ws_tx.send(msg).await.is_err() {
                return;
            }
        }
        let _ = ws_tx.close().await;
    });
    (limits::Reader::new(ws_rx, limits, slot), out, writer)
}

/// Ends a call's socket: the call (if it started) ended with `error`, then
/// the writer drained and the socket closed. The call's sinks (which hold
/// senders) must be dropped before, or the writer never ends.
async fn finish(
    call: Option<Call>,
    error: Option<CallError>,
    out: mpsc::UnboundedSender<Message>,
    writer: JoinHandle<()>,
) {
    // The close frame first: the caller learns at once why the call ended.
    if let Some((code, reason)) = error.as_ref().and_then(CallError::close_frame) {
        let _ = out.send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code,
            reason: reason.into(),
        })));
    }
    if let Some(call) = call {
        call.end(error).await;
    }
    drop(out);
    let _ = writer.await;
}
