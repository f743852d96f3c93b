//! A scripted Deepgram live endpoint (`/v1/listen` over WebSocket) on
//! 127.0.0.1.
//!
//! A mock cannot recognize speech, but it can keep the protocol honestly
//! from the audio it receives: it counts each connection's audio bytes, says
//! the scripted words of the utterance in progress at one word per
//! [`MockDeepgramScript::word_span`] of audio actually received (word times
//! computed from those bytes), sends interims as audio arrives, finals on
//! `Finalize` (`from_finalize: true`), the rest on `CloseStream` followed by
//! `Metadata` and a close. It records what the client did — each upgrade's
//! query and headers, the keep-alives, finalizes, close-streams, audio bytes
//! and connections the client closed — as a [`watch`] tests can wait on,
//! and misbehaves on demand: a refused upgrade, a malformed frame, a dropped
//! socket, a stall, an idle timeout like Deepgram's.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use colloquy::mock::deepgram::{MockDeepgram, MockDeepgramScript};
//! let server = MockDeepgram::start(MockDeepgramScript::new(&[&["hello", "there"]]))
//!     .await
//!     .unwrap();
//! assert!(server.url().starts_with("ws://127.0.0.1:"));
//! # }
//! ```

mod connection;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

/// How the mock behaves.
#[derive(Clone, Debug)]
pub struct MockDeepgramScript {
    /// The words "recognized" in each utterance, in order (one utterance
    /// ends at each `Finalize` that followed audio); utterances past the
    /// list have no words.
    pub utterances: Vec<Vec<String>>,
    /// The audio one word takes.
    pub word_span: Duration,
    /// The key the upgrade must carry (`Authorization: Token KEY`); a
    /// mismatch is a 401 whose message echoes what was sent (a leaky server,
    /// to test redaction).
    pub key: Option<String>,
    /// Refuse every upgrade with this.
    pub reject: Option<MockReject>,
    /// Answer the first audio with a frame that is not JSON.
    pub malformed: bool,
    /// Drop the socket (no close frame) once a connection has received this
    /// many audio bytes; once per server.
    pub drop_after_bytes: Option<u64>,
    /// Accept audio and control messages, never answer.
    pub stall: bool,
    /// Stop answering (as [`stall`](Self::stall)) once a connection was
    /// sent this many `Results`.
    pub stall_after_results: Option<u64>,
    /// Close a socket that receives nothing for this long (Deepgram: ~10 s).
    pub idle_timeout: Option<Duration>,
    /// On `Finalize`, a `speech_final` result with the words and then an
    /// empty `from_finalize` one (both, as Deepgram may send).
    pub both_finals: bool,
    /// Close every connection with this code once it has received this
    /// many audio bytes (as Deepgram closes with 1008 on audio it cannot
    /// decode).
    pub close_after_bytes: Option<MockClose>,
    /// Answer `Finalize` with nothing (Deepgram only "typically" answers
    /// it, when audio is buffered).
    pub finalize_unanswered: bool,
    /// Send a `speech_final` final as soon as an utterance's scripted words
    /// were all heard (Deepgram's endpointing, ahead of the client's
    /// `Finalize`); its later audio gets no words.
    pub early_speech_final: bool,
}

/// A close the server starts.
#[derive(Clone, Debug)]
pub struct MockClose {
    /// After this many audio bytes on the connection.
    pub after_bytes: u64,
    /// The close code.
    pub code: u16,
    /// The close reason.
    pub reason: String,
}

impl MockDeepgramScript {
    /// These utterances' words, one word per 250 ms of audio, no misbehaviour.
    pub fn new(utterances: &[&[&str]]) -> Self {
        Self {
            utterances: utterances
                .iter()
                .map(|u| u.iter().map(|w| w.to_string()).collect())
                .collect(),
            word_span: Duration::from_millis(250),
            key: None,
            reject: None,
            malformed: false,
            drop_after_bytes: None,
            stall: false,
            stall_after_results: None,
            idle_timeout: None,
            both_finals: false,
            close_after_bytes: None,
            finalize_unanswered: false,
            early_speech_final: false,
        }
    }
}

/// A refused upgrade.
#[derive(Clone, Debug)]
pub struct MockReject {
    /// The HTTP status.
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// The reason, in the `dg-error` header and the JSON body's `err_msg`.
    pub message: String,
}

/// What the client did, so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MockDeepgramStats {
    /// Upgrades accepted.
    pub connections: u64,
    /// Upgrades refused.
    pub rejected: u64,
    /// `KeepAlive` messages.
    pub keep_alives: u64,
    /// `Finalize` messages.
    pub finalizes: u64,
    /// `CloseStream` messages.
    pub close_streams: u64,
    /// Audio bytes, every connection.
    pub audio_bytes: u64,
    /// Connections the client ended (a close frame or the socket closed)
    /// without the server closing first.
    pub client_closes: u64,
    /// Connections the server closed for idleness.
    pub idle_closes: u64,
    /// Connections the server dropped on purpose.
    pub drops: u64,
    /// `Results` messages sent.
    pub results_sent: u64,
    /// Connections the server closed with [`MockDeepgramScript::close_after_bytes`].
    pub coded_closes: u64,
}

/// One accepted or refused upgrade.
#[derive(Clone, Debug)]
pub struct MockDeepgramConnection {
    /// The request path.
    pub path: String,
    /// The query's parameters, in order (values not decoded).
    pub query: Vec<(String, String)>,
    /// The headers, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl MockDeepgramConnection {
    /// The first query parameter with this name.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct Shared {
    script: MockDeepgramScript,
    stats: watch::Sender<MockDeepgramStats>,
    connections: Mutex<Vec<MockDeepgramConnection>>,
    /// The next utterance's index into the script.
    next_utterance: Mutex<usize>,
    /// Whether the scripted drop happened.
    dropped: Mutex<bool>,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut MockDeepgramStats)) {
        self.stats.send_modify(f);
    }
}

/// A running mock endpoint; stops when dropped.
pub struct MockDeepgram {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockDeepgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockDeepgram")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockDeepgram {
    /// Starts the endpoint on an ephemeral 127.0.0.1 port.
    pub async fn start(script: MockDeepgramScript) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            script,
            stats: watch::channel(MockDeepgramStats::default()).0,
            connections: Mutex::new(Vec::new()),
            next_utterance: Mutex::new(0),
            dropped: Mutex::new(false),
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(connection::serve(socket, accept_shared.clone()));
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

    /// `ws://127.0.0.1:<port>/v1/listen`, for
    /// [`DeepgramConfig::with_base_url`](crate::audio::deepgram::DeepgramConfig::with_base_url).
    pub fn url(&self) -> String {
        format!("ws://{}/v1/listen", self.addr)
    }

    /// A watch on what the client did.
    pub fn stats(&self) -> watch::Receiver<MockDeepgramStats> {
        self.shared.stats.subscribe()
    }

    /// Every upgrade request so far, accepted or refused.
    pub fn connections(&self) -> Vec<MockDeepgramConnection> {
        self.shared
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for MockDeepgram {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
