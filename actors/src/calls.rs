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
use axum::routing::get;

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
