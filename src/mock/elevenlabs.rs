//! A scripted ElevenLabs `stream-input` server on 127.0.0.1.
//!
//! The ElevenLabs client's tests need a server that keeps the protocol's
//! rules — audio only once the text is flushed or the input ended, a final
//! `isFinal`, the timestamps' convention documented in
//! [`crate::audio::elevenlabs`] — so a client that forgets a message gets
//! nothing, as from the real service; that fails on demand (and can repeat
//! an alignment pass from the first character, as the real service was
//! seen to, with [`ElevenLabsScript::restart_alignment_at`]); and that
//! reports what it saw without a test sleeping: the messages each socket
//! received, and the moment a client closed a socket before `isFinal`
//! (which is how the cancel tests prove a dropped stream really stopped).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use colloquy::mock::elevenlabs::{ElevenLabsScript, MockElevenLabs};
//! let server = MockElevenLabs::start(ElevenLabsScript::new("test-key")).await.unwrap();
//! assert!(server.base_url().starts_with("ws://127.0.0.1:"));
//! # }
//! ```

mod script;
mod socket;
#[cfg(test)]
mod tests;

pub use script::{ElevenLabsFault, ElevenLabsScript, MockChar, MockSpeech};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::audio::elevenlabs::ElevenLabsConfig;

/// A text message a socket received after the opening one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedText {
    /// `text`.
    pub text: String,
    /// `flush`.
    pub flush: bool,
    /// `try_trigger_generation` (recorded; the mock never generates on it,
    /// as its buffer is always below the real service's threshold).
    pub try_trigger_generation: bool,
}

/// What one socket saw.
#[derive(Clone, Debug, Default)]
pub struct RecordedSession {
    /// The upgrade's path and query.
    pub target: String,
    /// Whether `xi-api-key` was the script's key.
    pub key_ok: bool,
    /// The status the upgrade was refused with, if it was.
    pub rejected: Option<u16>,
    /// The opening message, as JSON.
    pub initial: Option<serde_json::Value>,
    /// The text messages after it, in order.
    pub texts: Vec<RecordedText>,
    /// Whether the end of input (`{"text":""}`) arrived.
    pub ended: bool,
    /// Each buffer it generated speech for (the opening `" "` included in
    /// the first).
    pub generated: Vec<String>,
    /// Whether it sent `isFinal`.
    pub finished: bool,
}

pub(crate) struct Shared {
    script: ElevenLabsScript,
    sessions: Mutex<Vec<RecordedSession>>,
    connections: watch::Sender<u64>,
    messages: watch::Sender<u64>,
    chunks: watch::Sender<u64>,
    early_closes: watch::Sender<u64>,
    last_early_close: Mutex<Option<Instant>>,
}

impl Shared {
    pub(crate) fn script(&self) -> &ElevenLabsScript {
        &self.script
    }

    /// Records a new socket; its index.
    pub(crate) fn open(&self, session: RecordedSession) -> usize {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.push(session);
        self.connections.send_modify(|n| *n += 1);
        s.len() - 1
    }

    pub(crate) fn update(&self, index: usize, f: impl FnOnce(&mut RecordedSession)) {
        let mut s = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(session) = s.get_mut(index) {
            f(session);
        }
    }

    pub(crate) fn on_message(&self) {
        self.messages.send_modify(|n| *n += 1);
    }

    pub(crate) fn on_chunk(&self) {
        self.chunks.send_modify(|n| *n += 1);
    }

    pub(crate) fn on_early_close(&self) {
        *self
            .last_early_close
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.early_closes.send_modify(|n| *n += 1);
    }
}

/// A running mock ElevenLabs; stops accepting when dropped.
pub struct MockElevenLabs {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockElevenLabs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockElevenLabs")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockElevenLabs {
    /// Starts a server on an ephemeral 127.0.0.1 port playing `script` on
    /// every socket.
    pub async fn start(script: ElevenLabsScript) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script,
            sessions: Mutex::new(Vec::new()),
            connections: watch::channel(0).0,
            messages: watch::channel(0).0,
            chunks: watch::channel(0).0,
            early_closes: watch::channel(0).0,
            last_early_close: Mutex::new(None),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(socket::serve(socket, accept_shared.clone()));
            }
        });
        Ok(Self {
            addr,
            shared,
            accept_task,
        })
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ws://127.0.0.1:<port>/v1`, for [`ElevenLabsConfig::base_url`].
    pub fn base_url(&self) -> String {
        format!("ws://{}/v1", self.addr)
    }

    /// A client configuration for `voice_id` on this server with the
    /// script's key.
    pub fn config(&self, voice_id: &str) -> ElevenLabsConfig {
        ElevenLabsConfig::new(voice_id, self.shared.script.key.as_str())
            .with_base_url(self.base_url())
    }

    /// The script it plays (to [`render`](ElevenLabsScript::render) the
    /// expected speech).
    pub fn script(&self) -> &ElevenLabsScript {
        &self.shared.script
    }

    /// Every socket so far, in the order they connected.
    pub fn sessions(&self) -> Vec<RecordedSession> {
        self.shared
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A watch on the sockets opened (upgrades refused included).
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.shared.connections.subscribe()
    }

    /// A watch on the client messages received, over all sockets.
    pub fn messages(&self) -> watch::Receiver<u64> {
        self.shared.messages.subscribe()
    }

    /// A watch on the audio messages sent, over all sockets.
    pub fn chunks_sent(&self) -> watch::Receiver<u64> {
        self.shared.chunks.subscribe()
    }

    /// A watch on the sockets a client closed (or dropped) before the
    /// server sent `isFinal`.
    pub fn early_closes(&self) -> watch::Receiver<u64> {
        self.shared.early_closes.subscribe()
    }

    /// When the server last saw a client close a socket before `isFinal`.
    pub fn last_early_close(&self) -> Option<Instant> {
        *self
            .shared
            .last_early_close
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for MockElevenLabs {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
