//! One socket of the mock: the upgrade's checks, a reader that records the
//! client's messages and notices its close, and a writer that generates
//! speech when the text is flushed or the input ended.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::script::{ElevenLabsFault, ElevenLabsScript};
use super::{RecordedSession, RecordedText, Shared};

type Ws = WebSocketStream<TcpStream>;

enum Incoming {
    /// The opening message: its text, and whether it was the single space.
    Open(String, bool),
    Text(String, bool),
    End,
}

enum Outcome {
    /// The client went.
    Closed,
    /// The server said its last; wait for the client to go.
    Wait,
    /// Drop the TCP connection now.
    Hangup,
}

// tungstenite's upgrade callback returns its `ErrorResponse` unboxed.
#[allow(clippy::result_large_err)]
pub(crate) async fn serve(socket: TcpStream, shared: Arc<Shared>) {
    let script = shared.script().clone();
    let mut session = RecordedSession::default();
    let mut rate = 0;
    let callback = |req: &Request, resp: Response| match check(req, &script, &mut session) {
        Ok(r) => {
            rate = r;
            Ok(resp)
        }
        Err(e) => Err(e),
    };
    let accepted = tokio_tungstenite::accept_hdr_async(socket, callback).await;
    let index = shared.open(session);
    let Ok(ws) = accepted else { return };
    let (tx, rx) = ws.split();
    let done = Arc::new(AtomicBool::new(false));
    let (closed_tx, closed) = watch::channel(false);
    let (in_tx, incoming) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read(
        rx,
        shared.clone(),
        index,
        done.clone(),
        closed_tx,
        in_tx,
    ));
    let mut writer = Writer {
        tx,
        shared,
        script,
        index,
        rate,
        closed,
        done,
        buffer: String::new(),
        chunks: 0,
        samples: 0,
        fault_done: false,
    };
    match writer.run(incoming).await {
        Outcome::Hangup => {}
        Outcome::Closed => {}
        Outcome::Wait => {
            let mut closed = writer.closed.clone();
            let _ = tokio::time::timeout(Duration::from_secs(10), closed.wait_for(|c| *c)).await;
        }
    }
    reader.abort();
}

/// The upgrade's checks: the path, the query (its rate), the key, and a
/// scripted refusal.
#[allow(clippy::result_large_err)]
fn check(
    req: &Request,
    script: &ElevenLabsScript,
    session: &mut RecordedSession,
) -> Result<u32, ErrorResponse> {
    session.target = req.uri().to_string();
    session.key_ok = req
        .headers()
        .get("xi-api-key")
        .and_then(|v| v.to_str().ok())
        == Some(script.key.as_str());
    let parts: Vec<&str> = req.uri().path().split('/').collect();
    let refuse = |session: &mut RecordedSession, status, retry: Option<&str>, message: &str| {
        session.rejected = Some(status);
        refusal(status, retry, message)
    };
    if !matches!(parts.as_slice(), ["", "v1", "text-to-speech", voice, "stream-input"] if !voice.is_empty())
    {
        return Err(refuse(session, 404, None, "no such route"));
    }
    if !session.key_ok {
        return Err(refuse(session, 401, None, "Invalid API key"));
    }
    let query = req.uri().query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .filter_map(|p| p.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    };
    let rate = param("output_format")
        .and_then(|f| f.strip_prefix("pcm_"))
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|r| [16_000, 22_050, 24_000, 44_100].contains(r));
    let (Some(rate), Some(_)) = (rate, param("model_id")) else {
        return Err(refuse(
            session,
            400,
            None,
            "model_id and output_format=pcm_<rate>",
        ));
    };
    if let Some(ElevenLabsFault::Reject {
        status,
        retry_after,
        message,
    }) = &script.fault
    {
        return Err(refuse(session, *status, retry_after.as_deref(), message));
    }
    Ok(rate)
}

fn refusal(status: u16, retry_after: Option<&str>, message: &str) -> ErrorResponse {
    let body = json!({"detail": {"status": "rejected", "message": message}}).to_string();
    let mut b = http::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len());
    if let Some(r) = retry_after {
        b = b.header("retry-after", r);
    }
    b.body(Some(body)).unwrap_or_else(|_| {
        let mut r = ErrorResponse::new(None);
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

/// Records the client's messages and hands them to the writer; on the
/// client's close (or a dropped connection) before the end, counts an early
/// close.
async fn read(
    mut rx: SplitStream<Ws>,
    shared: Arc<Shared>,
    index: usize,
    done: Arc<AtomicBool>,
    closed: watch::Sender<bool>,
    incoming: mpsc::UnboundedSender<Incoming>,
) {
    let mut first = true;
    while let Some(Ok(m)) = rx.next().await {
        let Message::Text(t) = m else {
            if matches!(m, Message::Close(_)) {
                break;
            }
            continue;
        };
        shared.on_message();
        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
        let text = v["text"].as_str().map(str::to_string);
        let event = if std::mem::take(&mut first) {
            shared.update(index, |s| s.initial = Some(v.clone()));
            let ok = text.as_deref() == Some(" ");
            Incoming::Open(text.unwrap_or_default(), ok)
        } else if text.as_deref() == Some("") {
            shared.update(index, |s| s.ended = true);
            Incoming::End
        } else {
            let r = RecordedText {
                text: text.unwrap_or_default(),
                flush: v["flush"].as_bool().unwrap_or(false),
                try_trigger_generation: v["try_trigger_generation"].as_bool().unwrap_or(false),
            };
            let event = Incoming::Text(r.text.clone(), r.flush);
            shared.update(index, |s| s.texts.push(r));
            event
        };
        let _ = incoming.send(event);
    }
    if !done.load(Ordering::SeqCst) {
        shared.on_early_close();
    }
    closed.send_replace(true);
}

struct Writer {
    tx: SplitSink<Ws, Message>,
    shared: Arc<Shared>,
    script: ElevenLabsScript,
    index: usize,
    rate: u32,
    closed: watch::Receiver<bool>,
    /// Set once the server sent `isFinal` or closed (a close after is not
    /// the client's early close).
    done: Arc<AtomicBool>,
    buffer: String,
    chunks: usize,
    samples: u64,
    fault_done: bool,
}

/// `f`, unless the client goes first.
async fn unless_closed<F: Future>(closed: &mut watch::Receiver<bool>, f: F) -> Option<F::Output> {
    tokio::select! {
        out = f => Some(out),
        _ = closed.wait_for(|c| *c) => None,
    }
}

impl Writer {
    async fn run(&mut self, mut incoming: mpsc::UnboundedReceiver<Incoming>) -> Outcome {
        loop {
            let Some(Some(event)) = unless_closed(&mut self.closed, incoming.recv()).await else {
                return Outcome::Closed;
            };
            match event {
                Incoming::Open(text, true) => self.buffer.push_str(&text),
                Incoming::Open(_, false) => {
                    let error = json!({"message": "the first message must be a single space",
                        "error": "invalid_request", "code": 1008});
                    return self.close_with(Some(error), 1008, "invalid_request").await;
                }
                Incoming::Text(text, flush) => {
                    self.buffer.push_str(&text);
                    if flush && let Err(o) = self.generate().await {
                        return o;
                    }
                }
                Incoming::End => {
                    if let Err(o) = self.generate().await {
                        return o;
                    }
                    if self.fault_pending() {
                        return self.act_fault().await;
                    }
                    self.done.store(true, Ordering::SeqCst);
                    self.shared.update(self.index, |s| s.finished = true);
                    let final_message = json!({"isFinal": true}).to_string();
                    if self.tx.send(Message::text(final_message)).await.is_err() {
                        return Outcome::Closed;
                    }
                    return self.close_with(None, 1000, "").await;
                }
            }
        }
    }

    fn fault_pending(&self) -> bool {
        !self.fault_done
            && self
                .script
                .fault
                .as_ref()
                .is_some_and(|f| f.after_chunks().is_some())
    }

    /// Generates the buffer's speech and sends it, chunk by chunk.
    async fn generate(&mut self) -> Result<(), Outcome> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.buffer);
        self.shared
            .update(self.index, |s| s.generated.push(text.clone()));
        let speech = self.script.render(&text, self.rate, self.samples);
        self.samples += speech.samples.len() as u64;
        for message in speech.messages(
            self.rate,
            self.script.chunk_bytes,
            self.script.restart_alignment,
        ) {
            let fault_now = self.script.fault.as_ref().and_then(|f| f.after_chunks());
            if !self.fault_done && fault_now == Some(self.chunks) {
                return Err(self.act_fault().await);
            }
            let delay = if self.chunks == 0 {
                self.script.first_audio_delay
            } else {
                self.script.chunk_delay
            };
            if !delay.is_zero()
                && unless_closed(&mut self.closed, tokio::time::sleep(delay))
                    .await
                    .is_none()
            {
                return Err(Outcome::Closed);
            }
            if let Some((after, gate)) = &self.script.hold
                && *after == self.chunks
            {
                let mut open = gate.receiver();
                if unless_closed(&mut self.closed, open.wait_for(|o| *o))
                    .await
                    .is_none()
                {
                    return Err(Outcome::Closed);
                }
            }
            if *self.closed.borrow() || self.tx.send(Message::text(message)).await.is_err() {
                return Err(Outcome::Closed);
            }
            self.chunks += 1;
            self.shared.on_chunk();
        }
        Ok(())
    }

    async fn act_fault(&mut self) -> Outcome {
        self.fault_done = true;
        let Some(fault) = self.script.fault.clone() else {
            return Outcome::Wait;
        };
        match fault {
            ElevenLabsFault::Reject { .. } => Outcome::Wait,
            ElevenLabsFault::ErrorMessage {
                error,
                message,
                code,
                ..
            } => {
                let m = json!({"message": message, "error": error, "code": code});
                self.close_with(Some(m), 1008, &error).await
            }
            ElevenLabsFault::Close { code, reason, .. } => {
                self.close_with(None, code, &reason).await
            }
            ElevenLabsFault::MalformedJson { .. } => {
                let _ = self.tx.send(Message::text("{\"audio\": oops")).await;
                Outcome::Wait
            }
            ElevenLabsFault::BadBase64 { .. } => {
                let m = json!({"audio": "@@ not base64 @@", "isFinal": null});
                let _ = self.tx.send(Message::text(m.to_string())).await;
                Outcome::Wait
            }
            ElevenLabsFault::Drop { .. } => {
                self.done.store(true, Ordering::SeqCst);
                Outcome::Hangup
            }
            ElevenLabsFault::Stall { ping_every, .. } => loop {
                let tick = tokio::time::sleep(ping_every.max(Duration::from_millis(1)));
                if unless_closed(&mut self.closed, tick).await.is_none()
                    || self
                        .tx
                        .send(Message::Ping(Vec::new().into()))
                        .await
                        .is_err()
                {
                    return Outcome::Closed;
                }
            },
        }
    }

    /// An optional message, then a close frame.
    async fn close_with(&mut self, message: Option<Value>, code: u16, reason: &str) -> Outcome {
        self.done.store(true, Ordering::SeqCst);
        if let Some(m) = message {
            let _ = self.tx.send(Message::text(m.to_string())).await;
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_string().into(),
        };
        let _ = self.tx.send(Message::Close(Some(frame))).await;
        Outcome::Wait
    }
}
