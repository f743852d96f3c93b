//! One text's socket, as the state machine behind the stream
//! [`ElevenLabsSpeech::synthesize`](super::ElevenLabsSpeech) returns:
//! connect, send the three messages, read audio and alignment until
//! `isFinal`, close.
//!
//! The state machine owns the socket and nothing else runs for it: no task
//! is spawned, so dropping the stream drops the socket, which closes the TCP
//! connection at once and the server stops generating. Deadlines are
//! instants, moved only by audio: pings (answered by tungstenite on the next
//! read) and messages without audio pass without buying time. The gap
//! deadline counts only the provider's silence: it is the later of the last
//! audio plus the gap and the start of the consumer's read plus the gap, so
//! a consumer that polls late (with a frame half arrived) is not failed for
//! its own delay.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::alignment::Aligner;
use super::config::ElevenLabsConfig;
use super::message::{self, ServerMessage};
use super::{MAX_MESSAGE, PROVIDER};
use crate::audio::error::{redact, retry_after};
use crate::audio::pcm::Pcm16Le;
use crate::audio::{AudioError, SpeechFailure, SynthEvent};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

enum Phase {
    Start(Box<Request>),
    Open(Box<Socket>),
    Closing(Box<Socket>),
    Done,
}

/// The state of one text's synthesis.
pub(crate) struct Session {
    phase: Phase,
    config: Arc<ElevenLabsConfig>,
    text: String,
    aligner: Aligner,
    /// The odd byte of a chunk, waiting for the next one.
    pcm: Pcm16Le,
    /// PCM bytes received.
    bytes: u64,
    ready: VecDeque<SynthEvent>,
    /// When the next audio is due.
    deadline: Instant,
    got_audio: bool,
}

impl Session {
    pub(crate) fn new(config: Arc<ElevenLabsConfig>, request: Request, text: &str) -> Self {
        Self {
            phase: Phase::Start(Box::new(request)),
            aligner: Aligner::new(text, config.rate.hz()),
            config,
            text: text.to_string(),
            pcm: Pcm16Le::default(),
            bytes: 0,
            ready: VecDeque::new(),
            deadline: Instant::now(),
            got_audio: false,
        }
    }

    fn fail(&mut self, failure: SpeechFailure) -> Option<Result<SynthEvent, AudioError>> {
        self.phase = Phase::Done;
        self.ready.clear();
        tracing::debug!(
            provider = PROVIDER,
            kind = failure.kind(),
            "synthesis failed"
        );
        Some(Err(AudioError::provider(PROVIDER, failure)))
    }

    fn key(&self) -> Option<&str> {
        Some(self.config.key.expose())
    }

    /// The next event; `None` once the stream is over.
    pub(crate) async fn next(&mut self) -> Option<Result<SynthEvent, AudioError>> {
        // The gap is the provider's silence: counted from the last audio or
        // from this read, whichever is later, so a consumer that comes back
        // late does not fail on a frame still arriving.
        let gap_floor = Instant::now() + self.config.gap_timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Some(Ok(e));
            }
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Done => return None,
                Phase::Start(request) => match self.open(*request).await {
                    Ok(ws) => self.phase = Phase::Open(ws),
                    Err(f) => return self.fail(f),
                },
                Phase::Closing(mut ws) => {
                    // Best effort: the audio is complete whatever the close does.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(500), ws.as_mut().close(None))
                            .await;
                    return None;
                }
                Phase::Open(mut ws) => {
                    let deadline = if self.got_audio {
                        self.deadline.max(gap_floor)
                    } else {
                        self.deadline
                    };
                    let read = tokio::time::timeout_at(deadline, ws.next()).await;
                    self.phase = Phase::Open(ws);
                    let message = match read {
                        Err(_) if self.got_audio => {
                            return self
                                .fail(SpeechFailure::OutputGapTimeout(self.config.gap_timeout));
                        }
                        Err(_) => {
                            return self.fail(SpeechFailure::FirstOutputTimeout(
                                self.config.first_audio_timeout,
                            ));
                        }
                        Ok(None) => return self.fail(SpeechFailure::Dropped),
                        Ok(Some(Err(e))) => {
                            let f = read_failure(e, self.key());
                            return self.fail(f);
                        }
                        Ok(Some(Ok(m))) => m,
                    };
                    if let Err(f) = self.on_message(message) {
                        return self.fail(f);
                    }
                }
            }
        }
    }

    /// Connects and sends the opening, the text and the end of input; the
    /// first-audio deadline starts once the text is sent.
    async fn open(&mut self, request: Request) -> Result<Box<Socket>, SpeechFailure> {
        let ws_config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_MESSAGE))
            .max_frame_size(Some(MAX_MESSAGE));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true);
        let timeout = self.config.connect_timeout;
        let (mut ws, _) = match tokio::time::timeout(timeout, connect).await {
            Err(_) => {
                return Err(SpeechFailure::Connection(format!(
                    "no connection within {timeout:?}"
                )));
            }
            Ok(Err(e)) => return Err(connect_failure(e, self.key())),
            Ok(Ok(ok)) => ok,
        };
        let messages = [
            message::initial(&self.config),
            message::text(&self.text),
            message::end(),
        ];
        let send = async {
            for m in messages {
                ws.feed(Message::text(m)).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(timeout, send).await {
            Err(_) => {
                return Err(SpeechFailure::Connection(
                    "sending the text timed out".into(),
                ));
            }
            Ok(Err(e)) => return Err(read_failure(e, self.key())),
            Ok(Ok(())) => {}
        }
        self.deadline = Instant::now() + self.config.first_audio_timeout;
        Ok(Box::new(ws))
    }

    pub(crate) fn on_message(&mut self, message: Message) -> Result<(), SpeechFailure> {
        let text = match message {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return Err(SpeechFailure::Malformed("a binary frame".into()));
            }
            Message::Close(frame) => return Err(close_failure(frame, self.key())),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        match message::parse(text.as_str()) {
            Err(why) => Err(SpeechFailure::Malformed(redact(&why, self.key()))),
            Ok(ServerMessage::Error {
                kind,
                message,
                code,
            }) => Err(error_failure(&kind, &message, code, self.key())),
            Ok(ServerMessage::Final) => self.finish(),
            Ok(ServerMessage::Audio {
                pcm,
                alignment,
                last,
            }) => {
                // Times are relative to the audio received before this
                // message, in whole samples (see the module's docs).
                if let Some(a) = alignment {
                    self.aligner.take(self.bytes / 2, &a);
                }
                if !pcm.is_empty() {
                    self.got_audio = true;
                    self.deadline = Instant::now() + self.config.gap_timeout;
                    self.take_pcm(&pcm);
                }
                let received = self.bytes / 2;
                self.ready.extend(self.aligner.release(received));
                if last { self.finish() } else { Ok(()) }
            }
        }
    }

    /// `isFinal`: the marks left and the whole text's, then the close. A
    /// last odd byte (half a sample) is dropped with a warning: the audio
    /// before it is whole and already queued.
    fn finish(&mut self) -> Result<(), SpeechFailure> {
        if self.pcm.drop_half_sample() {
            tracing::warn!(
                provider = PROVIDER,
                "PCM ended in the middle of a sample; its last byte is dropped"
            );
        }
        let total = self.bytes / 2;
        self.ready.extend(self.aligner.finish(total));
        if let Phase::Open(ws) = std::mem::replace(&mut self.phase, Phase::Done) {
            self.phase = Phase::Closing(ws);
        }
        Ok(())
    }

    /// PCM bytes in: whole samples out, the odd byte carried.
    fn take_pcm(&mut self, bytes: &[u8]) {
        self.bytes += bytes.len() as u64;
        let samples = self.pcm.decode(bytes);
        if !samples.is_empty() {
            self.ready.push_back(SynthEvent::Audio(samples));
        }
    }
}

/// A failed upgrade or connection.
fn connect_failure(e: WsError, key: Option<&str>) -> SpeechFailure {
    let WsError::Http(response) = e else {
        return SpeechFailure::Connection(redact(&e.to_string(), key));
    };
    let status = response.status().as_u16();
    let retry_after = retry_after(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let body = response.body().as_deref().unwrap_or_default();
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
    // ElevenLabs' HTTP errors: {"detail":{"status":…,"message":…}} or
    // {"detail":"…"}.
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let d = &v["detail"];
            [&d["message"], d, &v["message"]]
                .into_iter()
                .find_map(|m| m.as_str().map(str::to_string))
        })
        .unwrap_or(text);
    let message = redact(message.trim(), key);
    SpeechFailure::refused(status, retry_after, message)
}

/// An error JSON message: a 401/403/429 `code`, or an `error` kind that
/// names a refused key (`invalid_api_key`, `unauthorized`, `auth…`) or a
/// spent quota or rate (`quota_exceeded`, `rate_limit…`), is
/// `Unauthorized` / `RateLimited` whatever the code (the socket sends them
/// with its 1008 policy violation); any other HTTP-like `code` keeps its
/// meaning; the rest is a broken connection with the provider's words.
fn error_failure(kind: &str, message: &str, code: Option<u16>, key: Option<&str>) -> SpeechFailure {
    let text = match (kind.is_empty(), message.is_empty()) {
        (false, false) => format!("{kind}: {message}"),
        (true, _) => message.to_string(),
        (false, true) => kind.to_string(),
    };
    let message = redact(&text, key);
    let kind = kind.to_ascii_lowercase();
    let auth = ["api_key", "unauthori", "auth", "forbidden", "permission"];
    let rate = ["quota", "rate_limit", "rate-limit", "too_many", "concurren"];
    let named = |words: &[&str]| words.iter().any(|w| kind.contains(w));
    match code {
        Some(status @ (401 | 403)) => SpeechFailure::Unauthorized { status, message },
        Some(429) => SpeechFailure::RateLimited {
            retry_after: None,
            message,
        },
        _ if named(&auth) => SpeechFailure::Unauthorized {
            status: 401,
            message,
        },
        _ if named(&rate) => SpeechFailure::RateLimited {
            retry_after: None,
            message,
        },
        Some(status @ 400..=599) => SpeechFailure::Status { status, message },
        Some(code) => SpeechFailure::Connection(format!("provider error (code {code}): {message}")),
        None => SpeechFailure::Connection(format!("provider error: {message}")),
    }
}

/// A close frame before `isFinal`: a normal close is a dropped stream, any
/// other says why.
fn close_failure(frame: Option<CloseFrame>, key: Option<&str>) -> SpeechFailure {
    match frame {
        None => SpeechFailure::Dropped,
        Some(f) if f.code == CloseCode::Normal => SpeechFailure::Dropped,
        Some(f) => SpeechFailure::Connection(redact(
            &format!(
                "closed by the provider ({}): {}",
                u16::from(f.code),
                f.reason
            ),
            key,
        )),
    }
}

/// An error reading or writing the open socket.
fn read_failure(e: WsError, key: Option<&str>) -> SpeechFailure {
    match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Io(_)
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => SpeechFailure::Dropped,
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            SpeechFailure::TooLarge { limit: MAX_MESSAGE }
        }
        WsError::Utf8(_) => SpeechFailure::Malformed("a text frame that is not UTF-8".into()),
        e => SpeechFailure::Connection(redact(&e.to_string(), key)),
    }
}
