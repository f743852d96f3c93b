//! A simulated phone on Twilio's side of Media Streams, for tests and load
//! generation: it streams the caller's audio in real time (a 20 ms `media`
//! chunk every 20 ms), plays the agent's audio in real time, and echoes each
//! `mark` when the audio before it has played — and, on a `clear`, drops
//! what it had queued and echoes every pending mark at once, as Twilio does.
//!
//! What it played is recorded chunk by chunk with the mark that followed
//! (the server's marks name the timeline position they end, `m<n>_<end>`),
//! so a test can check the played audio against what the agent meant to say
//! and what the agent committed as heard.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use colloquy::audio::mulaw;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::task::AbortOnDrop;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A chunk of agent audio the phone played to its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlayedChunk {
    /// When it began to play.
    pub at: Instant,
    /// Its audio (8 kHz).
    pub samples: Vec<i16>,
    /// The timeline position it ends at, from the mark that followed it.
    pub end: Option<u64>,
}

/// What the phone saw and did, for the caller to inspect.
#[derive(Debug, Default, Clone)]
pub struct PhoneLog {
    /// Chunks played to their end, in order.
    pub played: Vec<PlayedChunk>,
    /// When each `clear` arrived.
    pub clears: Vec<Instant>,
    /// When the first agent `media` arrived.
    pub first_media: Option<Instant>,
    /// Agent `media` chunks received.
    pub media_received: usize,
    /// Samples dropped by clears (queued or playing, never played).
    pub cleared_samples: usize,
    /// When the server closed the socket, if it did.
    pub closed: Option<Instant>,
}

enum Queued {
    Audio(Vec<i16>),
    Mark(String),
}

#[derive(Default)]
struct Player {
    queue: VecDeque<Queued>,
    epoch: u64,
    log: PhoneLog,
}

#[derive(Default)]
struct Shared {
    state: Mutex<Player>,
    /// Wakes the player: audio queued, a clear.
    wake: Notify,
    /// Wakes observers (`wait_for`): the log changed.
    changed: Notify,
}

/// A phone connected to a `/twilio` endpoint.
pub struct SimulatedPhone {
    out: mpsc::UnboundedSender<Message>,
    player: Arc<Shared>,
    stream_sid: String,
    sent_samples: u64,
    /// When the next 20 ms chunk is due.
    next_chunk: Option<Instant>,
    _tasks: [AbortOnDrop; 3],
}

impl std::fmt::Debug for SimulatedPhone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatedPhone")
            .field("stream_sid", &self.stream_sid)
            .field("sent_samples", &self.sent_samples)
            .finish()
    }
}

impl SimulatedPhone {
    /// Connects to `url` (`ws://127.0.0.1:PORT/twilio`) and starts a stream
    /// for `call_sid`: `connected`, then `start` (µ-law, 8 kHz, mono).
    pub async fn call(url: &str, call_sid: &str) -> Result<Self, String> {
        Self::call_signed(url, call_sid, None).await
    }

    /// The same, signing the upgrade as Twilio does when `signing` gives the
    /// auth token and the public URL Twilio would connect to (the signed URL
    /// is that URL itself: `wss://voice.example.com/twilio`).
    pub async fn call_signed(
        url: &str,
        call_sid: &str,
        signing: Option<(&colloquy::Secret, &str)>,
    ) -> Result<Self, String> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("connect {url}: {e}"))?;
        if let Some((token, public_url)) = signing {
            let signature = super::sign(token, public_url, &[]);
            request.headers_mut().insert(
                super::SIGNATURE_HEADER,
                signature
                    .parse()
                    .map_err(|e| format!("a signature header: {e}"))?,
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        let (mut ws_tx, mut ws_rx) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = AbortOnDrop(tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if ws_tx.send(m).await.is_err() {
                    return;
                }
            }
            let _ = ws_tx.close().await;
        }));
        let player: Arc<Shared> = Arc::default();
        let stream_sid = format!("MZ{call_sid}");
        let reader = {
            let player = player.clone();
            let out = out.clone();
            let sid = stream_sid.clone();
            AbortOnDrop(tokio::spawn(async move {
                while let Some(Ok(msg)) = ws_rx.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    receive(&player, &out, &sid, &v);
                }
                lock(&player.state).log.closed = Some(Instant::now());
                player.changed.notify_waiters();
            }))
        };
        let playing = AbortOnDrop(tokio::spawn(play(
            player.clone(),
            out.clone(),
            stream_sid.clone(),
        )));
        let phone = Self {
            out,
            player,
            stream_sid,
            sent_samples: 0,
            next_chunk: None,
            _tasks: [writer, reader, playing],
        };
        phone.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
        phone.send(
            json!({"event": "start", "sequenceNumber": "1", "streamSid": phone.stream_sid,
            "start": {"accountSid": "ACtest", "streamSid": phone.stream_sid, "callSid": call_sid,
                "tracks": ["inbound"], "customParameters": {},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}}}),
        );
        Ok(phone)
    }

    fn send(&self, v: Value) {
        let _ = self.out.send(Message::Text(v.to_string().into()));
    }

    /// Sends a raw text message (for protocol tests).
    pub fn send_raw(&self, text: impl Into<String>) {
        let _ = self.out.send(Message::Text(text.into().into()));
    }

    /// Streams `samples` (8 kHz) as the caller's voice in real time, 20 ms a
    /// chunk; returns when the last chunk was sent.
    ///
    /// The cadence holds across calls, as a phone line's does: back-to-back
    /// `speak` and `silence` calls send one chunk every 20 ms, not a chunk
    /// at once at the start of each (a phone fallen more than 60 ms behind
    /// starts again from now rather than bursting).
    pub async fn speak(&mut self, samples: &[i16]) {
        for chunk in samples.chunks(160) {
            let now = Instant::now();
            let at = self
                .next_chunk
                .filter(|&t| t + Duration::from_millis(60) > now)
                .unwrap_or(now);
            tokio::time::sleep_until(at).await;
            self.next_chunk = Some(at + Duration::from_millis(20));
            let payload = base64::engine::general_purpose::STANDARD.encode(mulaw::encode(chunk));
            self.send(json!({"event": "media", "streamSid": self.stream_sid,
                "media": {"track": "inbound", "chunk": "0", "timestamp": (self.sent_samples / 8).to_string(), "payload": payload}}));
            self.sent_samples += chunk.len() as u64;
        }
    }

    /// Streams `duration` of silence.
    pub async fn silence(&mut self, duration: Duration) {
        let n = (duration.as_millis() as usize) * 8;
        self.speak(&vec![0; n]).await;
    }

    /// Samples of caller audio sent so far.
    pub fn sent_samples(&self) -> u64 {
        self.sent_samples
    }

    /// Ends the stream (`stop`), as Twilio does when the call hangs up.
    pub fn hang_up(&self) {
        self.send(
            json!({"event": "stop", "sequenceNumber": "9", "streamSid": self.stream_sid,
            "stop": {"accountSid": "ACtest", "callSid": "CA"}}),
        );
        let _ = self.out.send(Message::Close(None));
    }

    /// What the phone saw so far.
    pub fn log(&self) -> PhoneLog {
        lock(&self.player.state).log.clone()
    }

    /// Waits until `check` holds for the log (or `timeout` passes: `Err`).
    pub async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&PhoneLog) -> bool,
    ) -> Result<PhoneLog, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.player.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let p = lock(&self.player.state);
                if check(&p.log) {
                    return Ok(p.log.clone());
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(format!(
                    "timed out after {timeout:?}; log: {:?}",
                    summary(&self.log())
                ));
            }
        }
    }
}

fn summary(log: &PhoneLog) -> String {
    format!(
        "{} chunks played, {} clears, {} media received, closed {}",
        log.played.len(),
        log.clears.len(),
        log.media_received,
        log.closed.is_some()
    )
}

fn receive(player: &Arc<Shared>, out: &mpsc::UnboundedSender<Message>, sid: &str, v: &Value) {
    let mut p = lock(&player.state);
    match v["event"].as_str() {
        Some("media") => {
            let bytes = v["media"]["payload"]
                .as_str()
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .unwrap_or_default();
            p.log.media_received += 1;
            p.log.first_media.get_or_insert_with(Instant::now);
            p.queue.push_back(Queued::Audio(mulaw::decode(&bytes)));
        }
        Some("mark") => {
            if let Some(name) = v["mark"]["name"].as_str() {
                p.queue.push_back(Queued::Mark(name.to_string()));
            }
        }
        Some("clear") => {
            p.log.clears.push(Instant::now());
            p.epoch += 1;
            // Twilio drops its buffer and returns every pending mark at once.
            let queued: Vec<Queued> = p.queue.drain(..).collect();
            for q in queued {
                match q {
                    Queued::Audio(s) => p.log.cleared_samples += s.len(),
                    Queued::Mark(name) => echo(out, sid, &name),
                }
            }
        }
        _ => {}
    }
    drop(p);
    player.wake.notify_one();
    player.changed.notify_waiters();
}

fn echo(out: &mpsc::UnboundedSender<Message>, sid: &str, name: &str) {
    let msg =
        json!({"event": "mark", "sequenceNumber": "0", "streamSid": sid, "mark": {"name": name}});
    let _ = out.send(Message::Text(msg.to_string().into()));
}

/// The phone's speaker: one chunk at a time, in real time.
async fn play(player: Arc<Shared>, out: mpsc::UnboundedSender<Message>, sid: String) {
    // When the chunk playing ends: the next one starts there.
    let mut clock: Option<Instant> = None;
    loop {
        let next = {
            let mut p = lock(&player.state);
            // Marks at the head: the audio before them has played.
            while let Some(Queued::Mark(_)) = p.queue.front() {
                if let Some(Queued::Mark(name)) = p.queue.pop_front() {
                    echo(&out, &sid, &name);
                    if let Some(last) = p.log.played.last_mut()
                        && last.end.is_none()
                    {
                        last.end = name.rsplit('_').next().and_then(|e| e.parse().ok());
                    }
                }
            }
            match p.queue.pop_front() {
                Some(Queued::Audio(s)) => Some((s, p.epoch)),
                _ => None,
            }
        };
        let Some((samples, epoch)) = next else {
            clock = None;
            player.wake.notified().await;
            continue;
        };
        // Back to back from the previous chunk's end (not from when the
        // timer fired): the phone keeps real time over a long reply.
        let at = clock
            .filter(|&c| c > Instant::now() - Duration::from_millis(40))
            .unwrap_or_else(Instant::now);
        let done = at + Duration::from_micros(samples.len() as u64 * 125);
        clock = Some(done);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(done) => break,
                () = player.wake.notified() => {
                    if lock(&player.state).epoch != epoch {
                        break;
                    }
                }
            }
        }
        let mut p = lock(&player.state);
        if p.epoch != epoch {
            p.log.cleared_samples += samples.len();
            clock = None;
            continue;
        }
        // The mark right after this chunk names where it ends, and is echoed
        // now, in the same critical section as the chunk's end: as Twilio
        // sends it once playback passes it (a clear arriving now finds it
        // already answered, not pending).
        let end = match p.queue.front() {
            Some(Queued::Mark(name)) => name.rsplit('_').next().and_then(|e| e.parse().ok()),
            _ => None,
        };
        if end.is_some()
            && let Some(Queued::Mark(name)) = p.queue.pop_front()
        {
            echo(&out, &sid, &name);
        }
        p.log.played.push(PlayedChunk { at, samples, end });
        drop(p);
        player.changed.notify_waiters();
    }
}
