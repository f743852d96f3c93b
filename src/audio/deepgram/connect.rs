//! Opening the socket, and what a refused upgrade means.
//!
//! Deepgram refuses at the upgrade with an HTTP status (401 for a bad key,
//! 429 with `Retry-After` when over the concurrency limit, 5xx when it is
//! failing), its reason in a `dg-error` header or a JSON body
//! (`err_msg`). Each becomes the [`SpeechFailure`] a fallback chain acts
//! on; whatever the server says is stripped of the key first, since a
//! server may echo the credential it refused.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Response, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Error as WsError};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DeepgramConfig;
use crate::audio::SpeechFailure;
use crate::audio::error::{redact, retry_after};

/// The largest message (and frame) read from the server: results are a few
/// kilobytes; anything near this is not a transcript.
pub(crate) const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The most of a refusal's body read into its message.
const MAX_REASON_BYTES: usize = 2048;

/// An open socket to Deepgram.
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a socket for `config`'s stream, within its connect deadline.
pub(crate) async fn connect(config: &DeepgramConfig) -> Result<Socket, SpeechFailure> {
    let key = config.key.as_ref().map(|k| k.expose());
    let mut request = config
        .url()
        .into_client_request()
        .map_err(|e| SpeechFailure::Connection(redact(&e.to_string(), key)))?;
    if let Some(k) = key {
        let mut v = HeaderValue::from_str(&format!("Token {k}"))
            .map_err(|_| SpeechFailure::Connection("the key is not a valid header value".into()))?;
        v.set_sensitive(true);
        request.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Err(_) => Err(SpeechFailure::Connection(format!(
            "no connection within {:?}",
            config.connect_timeout
        ))),
        Ok(Err(WsError::Http(response))) => Err(refusal(&response, key)),
        Ok(Err(e)) => Err(failure_of(e, key)),
        Ok(Ok((socket, response))) => {
            if let Some(id) = response.headers().get("dg-request-id") {
                tracing::debug!(request_id = ?id, "deepgram: connected");
            }
            Ok(socket)
        }
    }
}

/// The failure a refused upgrade stands for.
pub(crate) fn refusal(response: &Response<Option<Vec<u8>>>, key: Option<&str>) -> SpeechFailure {
    let status = response.status().as_u16();
    let headers = response.headers();
    let retry_after = retry_after(
        headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok()),
    );
    let body = response.body().as_deref().unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON_BYTES)]).into_owned();
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            ["err_msg", "message", "description"]
                .iter()
                .find_map(|k| v[k].as_str().map(str::to_string))
        });
    let message = headers
        .get("dg-error")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(from_json)
        .unwrap_or(text);
    let message = redact(message.trim(), key);
    SpeechFailure::refused(status, retry_after, message)
}

/// A socket error as a failure (a message over the cap is
/// [`SpeechFailure::TooLarge`]).
pub(crate) fn failure_of(e: WsError, key: Option<&str>) -> SpeechFailure {
    match e {
        WsError::Capacity(_) => SpeechFailure::TooLarge {
            limit: MAX_MESSAGE_BYTES,
        },
        WsError::Http(response) => refusal(&response, key),
        e => SpeechFailure::Connection(redact(&e.to_string(), key)),
    }
}

/// A close frame's code and reason, for the log (redacted).
pub(crate) fn describe_close(
    frame: Option<&tungstenite::protocol::CloseFrame>,
    key: Option<&str>,
) -> String {
    match frame {
        Some(f) => redact(&format!("{} {}", u16::from(f.code), f.reason), key),
        None => "no close frame".into(),
    }
}
