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
//! [`Listener`]: crate::speech::Listener
//! [`AudioOutput`]: crate::speech::audio::AudioOutput

pub mod browser;
mod call;
pub mod twilio;

pub use call::{CallError, CallInfo, CallNotice, CallServices};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::routing::get;
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use call::Call;

/// Largest WebSocket message a call accepts (a 20 ms Twilio frame is about
/// 300 bytes; a browser frame a few KiB): larger ones end the call.
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
fn limited(ws: WebSocketUpgrade) -> WebSocketUpgrade {
    ws.max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
}

/// Splits a call's socket: what it reads, where the call queues what it
/// sends (its sinks, its events), and the writer task that sends it — and
/// closes the socket once every sender is gone.
fn split(
    socket: WebSocket,
) -> (
    SplitStream<WebSocket>,
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
    (ws_rx, out, writer)
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
    if let Some(call) = call {
        call.end(error).await;
    }
    drop(out);
    let _ = writer.await;
}
