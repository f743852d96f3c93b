//! One connection of the mock: the upgrade (checked and recorded), then
//! audio in and results out, computed from the bytes received.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::{MockDeepgramConnection, Shared};

type Ws = WebSocketStream<TcpStream>;

/// What the upgrade asked for.
struct Stream {
    rate: u32,
    bytes_per_sample: u64,
    interim: bool,
}

/// The utterance being heard.
struct Heard {
    /// Connection sample where its audio began.
    start: u64,
    /// Words already sent in an interim.
    interim_words: usize,
    /// Its words went out in an early `speech_final`: the rest of its
    /// audio gets none.
    done: bool,
}

pub(super) async fn serve(socket: TcpStream, shared: Arc<Shared>) {
    let mut asked = None;
    // The callback's type is tungstenite's: its error is the refusal.
    #[allow(clippy::result_large_err)]
    let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let record = record(req);
        let refusal = refusal(&shared, &record);
        asked = Some(Stream {
            rate: record
                .query("sample_rate")
                .and_then(|r| r.parse().ok())
                .unwrap_or(16_000),
            bytes_per_sample: if record.query("encoding") == Some("mulaw") {
                1
            } else {
                2
            },
            interim: record.query("interim_results") == Some("true"),
        });
        shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
        match refusal {
            Some(r) => {
                shared.count(|s| s.rejected += 1);
                Err(r)
            }
            None => Ok(resp),
        }
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(socket, check).await else {
        return;
    };
    let Some(stream) = asked else {
        return;
    };
    shared.count(|s| s.connections += 1);
    run(&mut ws, &shared, &stream).await;
}

fn record(req: &Request) -> MockDeepgramConnection {
    let query = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (p.to_string(), String::new()),
        })
        .collect();
    let headers = req
        .headers()
        .iter()
        .map(|(n, v)| {
            let v = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (n.as_str().to_ascii_lowercase(), v)
        })
        .collect();
    MockDeepgramConnection {
        path: req.uri().path().to_string(),
        query,
        headers,
    }
}

/// The refusal the script (or a wrong path or key) calls for.
fn refusal(shared: &Shared, record: &MockDeepgramConnection) -> Option<ErrorResponse> {
    let refuse = |status: u16, retry_after: Option<u64>, message: &str| {
        let mut b = http::Response::builder()
            .status(status)
            .header("dg-error", message)
            .header("content-type", "application/json");
        if let Some(s) = retry_after {
            b = b.header("retry-after", s.to_string());
        }
        let body = json!({"err_code": "MOCK", "err_msg": message}).to_string();
        b.body(Some(body)).ok()
    };
    if let Some(r) = &shared.script.reject {
        return refuse(r.status, r.retry_after, &r.message);
    }
    if record.path != "/v1/listen" {
        return refuse(404, None, "no such route");
    }
    if let Some(key) = &shared.script.key {
        let got = record.header("authorization").unwrap_or("");
        if got != format!("Token {key}") {
            // Echoes what it got, as careless servers do.
            return refuse(401, None, &format!("Invalid credentials: {got}"));
        }
    }
    None
}

async fn run(ws: &mut Ws, shared: &Shared, stream: &Stream) {
    let script = &shared.script;
    let span = ((script.word_span.as_secs_f64() * f64::from(stream.rate)) as u64).max(1);
    let mut received: u64 = 0;
    let mut heard: Option<Heard> = None;
    let mut answered_any = false;
    // `Results` sent on this connection.
    let mut answered: u64 = 0;
    loop {
        let next = match script.idle_timeout {
            Some(idle) => match tokio::time::timeout(idle, ws.next()).await {
                Ok(n) => n,
                Err(_) => {
                    shared.count(|s| s.idle_closes += 1);
                    let reason = "NET-0001: no audio or text message within the timeout window";
                    let _ = ws.send(close(CloseCode::Error, reason)).await;
                    return drain(ws).await;
                }
            },
            None => ws.next().await,
        };
        let msg = match next {
            Some(Ok(m)) => m,
            None | Some(Err(_)) => return shared.count(|s| s.client_closes += 1),
        };
        match msg {
            Message::Binary(b) => {
                shared.count(|s| s.audio_bytes += b.len() as u64);
                let at = received / stream.bytes_per_sample;
                received += b.len() as u64;
                let h = heard.get_or_insert(Heard {
                    start: at,
                    interim_words: 0,
                    done: false,
                });
                if let Some(c) = &script.close_after_bytes
                    && received >= c.after_bytes
                {
                    shared.count(|s| s.coded_closes += 1);
                    let _ = ws.send(close(CloseCode::from(c.code), &c.reason)).await;
                    return drain(ws).await;
                }
                if let Some(limit) = script.drop_after_bytes
                    && received >= limit
                {
                    let mut dropped = shared.dropped.lock().unwrap_or_else(|e| e.into_inner());
                    if !*dropped {
                        *dropped = true;
                        shared.count(|s| s.drops += 1);
                        // Dropping the socket without a close frame.
                        return;
                    }
                }
                if stalled(script, answered) {
                    continue;
                }
                if script.malformed && !answered_any {
                    answered_any = true;
                    let _ = ws
                        .send(Message::Text("{\"type\":\"Results\",".into()))
                        .await;
                    continue;
                }
                if h.done {
                    continue;
                }
                let samples = received / stream.bytes_per_sample;
                let complete = ((samples - h.start) / span) as usize;
                let words = words_of(shared);
                let complete = complete.min(words.len());
                if script.early_speech_final && !words.is_empty() && complete == words.len() {
                    h.done = true;
                    *shared
                        .next_utterance
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) += 1;
                    let r = results(&words, h.start, samples, span, stream, Kind::SpeechFinal);
                    answered += 1;
                    if !send(ws, shared, r).await {
                        return;
                    }
                    continue;
                }
                if stream.interim && complete > h.interim_words {
                    h.interim_words = complete;
                    let r = results(
                        &words[..complete],
                        h.start,
                        samples,
                        span,
                        stream,
                        Kind::Interim,
                    );
                    answered += 1;
                    if !send(ws, shared, r).await {
                        return;
                    }
                }
            }
            Message::Text(t) => {
                let kind = serde_json::from_str::<serde_json::Value>(&t)
                    .ok()
                    .and_then(|v| v["type"].as_str().map(str::to_string));
                match kind.as_deref() {
                    Some("KeepAlive") => shared.count(|s| s.keep_alives += 1),
                    Some("Finalize") => {
                        shared.count(|s| s.finalizes += 1);
                        if stalled(script, answered) {
                            continue;
                        }
                        let early = heard.as_ref().is_some_and(|h| h.done);
                        if early || script.finalize_unanswered {
                            if heard.take().is_some_and(|h| !h.done) {
                                *shared
                                    .next_utterance
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner()) += 1;
                            }
                            if script.finalize_unanswered {
                                continue;
                            }
                        }
                        let samples = received / stream.bytes_per_sample;
                        answered += 1;
                        if !finish(ws, shared, stream, heard.take(), samples, span, false).await {
                            return;
                        }
                    }
                    Some("CloseStream") => {
                        shared.count(|s| s.close_streams += 1);
                        if stalled(script, answered) {
                            continue;
                        }
                        let samples = received / stream.bytes_per_sample;
                        let h = heard.take().filter(|h| !h.done);
                        if !finish(ws, shared, stream, h, samples, span, true).await {
                            return;
                        }
                        let meta = json!({"type": "Metadata", "request_id": "mock-request",
                            "duration": samples as f64 / f64::from(stream.rate), "channels": 1});
                        let _ = ws.send(Message::Text(meta.to_string().into())).await;
                        let _ = ws.send(close(CloseCode::Normal, "")).await;
                        return drain(ws).await;
                    }
                    _ => {}
                }
            }
            Message::Close(_) => return shared.count(|s| s.client_closes += 1),
            _ => {}
        }
    }
}

/// Whether the script says to stop answering now.
fn stalled(script: &super::MockDeepgramScript, answered: u64) -> bool {
    script.stall || script.stall_after_results.is_some_and(|n| answered >= n)
}

/// The words of the utterance in progress.
fn words_of(shared: &Shared) -> Vec<String> {
    let next = *shared
        .next_utterance
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    shared
        .script
        .utterances
        .get(next)
        .cloned()
        .unwrap_or_default()
}

/// The finals of the utterance in progress (on `Finalize`, or on
/// `CloseStream` with `closing`): every word whose audio began.
async fn finish(
    ws: &mut Ws,
    shared: &Shared,
    stream: &Stream,
    heard: Option<Heard>,
    samples: u64,
    span: u64,
    closing: bool,
) -> bool {
    let Some(h) = heard else {
        if closing {
            return true;
        }
        // Nothing to flush: an empty answer at the current point.
        let r = results(&[], samples, samples, span, stream, Kind::FromFinalize);
        return send(ws, shared, r).await;
    };
    let words = words_of(shared);
    *shared
        .next_utterance
        .lock()
        .unwrap_or_else(|e| e.into_inner()) += 1;
    let began = (samples - h.start).div_ceil(span) as usize;
    let words = &words[..began.min(words.len())];
    if closing {
        let r = results(words, h.start, samples, span, stream, Kind::SpeechFinal);
        return send(ws, shared, r).await;
    }
    if shared.script.both_finals {
        let r = results(words, h.start, samples, span, stream, Kind::SpeechFinal);
        if !send(ws, shared, r).await {
            return false;
        }
        let r = results(&[], samples, samples, span, stream, Kind::FromFinalize);
        return send(ws, shared, r).await;
    }
    let r = results(words, h.start, samples, span, stream, Kind::FromFinalize);
    send(ws, shared, r).await
}

#[derive(Clone, Copy)]
enum Kind {
    Interim,
    SpeechFinal,
    FromFinalize,
}

/// A `Results` message for `words` heard from connection sample `start`
/// to `end`, one word per `span`.
fn results(
    words: &[String],
    start: u64,
    end: u64,
    span: u64,
    stream: &Stream,
    kind: Kind,
) -> serde_json::Value {
    let secs = |s: u64| s as f64 / f64::from(stream.rate);
    let timed: Vec<_> = words
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let from = start + i as u64 * span;
            let to = (from + span).min(end);
            json!({"word": w.to_lowercase(), "start": secs(from), "end": secs(to),
                "confidence": 0.9, "punctuated_word": w})
        })
        .collect();
    json!({
        "type": "Results",
        "channel_index": [0, 1],
        "start": secs(start),
        "duration": secs(end.saturating_sub(start)),
        "is_final": !matches!(kind, Kind::Interim),
        "speech_final": matches!(kind, Kind::SpeechFinal),
        "from_finalize": matches!(kind, Kind::FromFinalize),
        "channel": {"alternatives": [{"transcript": words.join(" "), "confidence": 0.9, "words": timed}]},
    })
}

async fn send(ws: &mut Ws, shared: &Shared, v: serde_json::Value) -> bool {
    shared.count(|s| s.results_sent += 1);
    ws.send(Message::Text(v.to_string().into())).await.is_ok()
}

fn close(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
}

/// After the server's close: reads the client's reply, briefly.
async fn drain(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
