//! A scripted OpenAI-compatible server on 127.0.0.1.
//!
//! Tests, the offline demo and the load generator need a server that streams at a
//! chosen pace, stalls on demand, replays captured bodies byte by byte, and
//! reports what it saw — including the moment a client closed the connection,
//! which is how the cancel tests prove the HTTP request really stopped. It speaks
//! just enough HTTP/1.1 (keep-alive, chunked responses) for reqwest and curl.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use colloquy::mock::{MockResponse, MockServer};
//! let server = MockServer::start(|_req| MockResponse::text(&["Hel", "lo"])).await.unwrap();
//! assert!(server.base_url().starts_with("http://127.0.0.1:"));
//! # }
//! ```

#[cfg(feature = "deepgram")]
#[cfg_attr(docsrs, doc(cfg(feature = "deepgram")))]
pub mod deepgram;
#[cfg(feature = "elevenlabs")]
#[cfg_attr(docsrs, doc(cfg(feature = "elevenlabs")))]
pub mod elevenlabs;
mod http;
mod response;

pub use response::{MockGate, MockResponse, sse_chunk};

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// A request the server received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Headers with lower-case names, in order.
    pub headers: Vec<(String, String)>,
    /// The body bytes.
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first header with this (case-insensitive) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The last entry of the body's `messages` (`Null` when there is none): what
    /// a scripted server usually answers to.
    pub fn last_message(&self) -> serde_json::Value {
        match self.json() {
            serde_json::Value::Object(mut body) => match body.remove("messages") {
                Some(serde_json::Value::Array(mut messages)) => messages.pop().unwrap_or_default(),
                _ => serde_json::Value::Null,
            },
            _ => serde_json::Value::Null,
        }
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

type Handler = dyn Fn(&RecordedRequest) -> MockResponse + Send + Sync;

pub(crate) struct Shared {
    handler: Box<Handler>,
    requests: Mutex<Vec<RecordedRequest>>,
    request_count: watch::Sender<u64>,
    disconnects: watch::Sender<u64>,
    record: bool,
}

impl Shared {
    pub(crate) fn on_request(&self, req: RecordedRequest) -> MockResponse {
        let response = (self.handler)(&req);
        if self.record {
            self.requests
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(req);
        }
        self.request_count.send_modify(|n| *n += 1);
        response
    }

    pub(crate) fn on_client_disconnect(&self) {
        self.disconnects.send_modify(|n| *n += 1);
    }
}

/// A running mock server; stops when dropped.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MockServer {
    /// Starts a server on an ephemeral 127.0.0.1 port; `handler` answers each request.
    pub async fn start<F>(handler: F) -> std::io::Result<Self>
    where
        F: Fn(&RecordedRequest) -> MockResponse + Send + Sync + 'static,
    {
        Self::start_with(handler, true, 0).await
    }

    /// Like [`MockServer::start`], on a given port, optionally without keeping
    /// request records (for load tests).
    pub async fn start_with<F>(
        handler: F,
        record_requests: bool,
        port: u16,
    ) -> std::io::Result<Self>
    where
        F: Fn(&RecordedRequest) -> MockResponse + Send + Sync + 'static,
    {
        // A deep accept backlog: a load test opens a thousand connections at once,
        // and a dropped SYN costs the client a one-second retransmit.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
        let listener = socket.listen(4096)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
            request_count: watch::channel(0).0,
            disconnects: watch::channel(0).0,
            record: record_requests,
        });
        let accept_shared = shared.clone();
        let accept_task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                tokio::spawn(http::serve_connection(socket, accept_shared.clone()));
            }
        });
        Ok(Self {
            addr,
            shared,
            accept_task,
        })
    }

    /// Answers the scripted responses in order, repeating the last one.
    pub async fn scripted(responses: Vec<MockResponse>) -> std::io::Result<Self> {
        let responses = Arc::new(responses);
        let next = std::sync::atomic::AtomicUsize::new(0);
        Self::start(move |_| {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            responses
                .get(i.min(responses.len().saturating_sub(1)))
                .cloned()
                .unwrap_or_else(|| MockResponse::error(500, "no scripted response"))
        })
        .await
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/v1`, for [`OpenAiConfig::compatible`](crate::llm::OpenAiConfig::compatible).
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A watch on the number of requests received.
    pub fn request_count(&self) -> watch::Receiver<u64> {
        self.shared.request_count.subscribe()
    }

    /// A watch on the number of responses the client abandoned by closing the
    /// connection before the server finished writing.
    pub fn disconnects(&self) -> watch::Receiver<u64> {
        self.shared.disconnects.subscribe()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}
