//! Helpers of the cluster test binaries (`cluster.rs`, `cluster_defects.rs`):
//! a scripted model, workers and clients on a test's own server, and waits on
//! remote events (timeouts only turn a hang into a failure).
#![allow(dead_code)] // each test crate uses a different subset

use std::sync::OnceLock;
use std::time::Duration;

use colloquy::context::{ChatContext, ChatItem, Role};
use colloquy::llm::{ChatClient, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::TurnId;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::async_nats;
use colloquy_actors::cluster::{
    ClusterClient, RemoteEvent, RemoteEventKind, RemoteEvents, RemoteSession, Worker, WorkerConfig,
    connect,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

use super::nats::NatsServer;

pub const GUARD: Duration = Duration::from_secs(30);
/// Leases of tests that expect no failover: long, so a loaded machine cannot
/// make one expire.
pub const NO_FAILOVER: Duration = Duration::from_secs(60);
/// Leases of tests that kill a worker.
pub const SHORT_LEASE: Duration = Duration::from_secs(2);

/// The scripted model: "Answer to <question>." in four tokens; a question
/// containing "slow" gets 40 tokens 25 ms apart (1 s), "long" 400 tokens 5 ms
/// apart.
pub async fn model() -> MockServer {
    MockServer::start(|req| {
        let q = req.last_message()["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if q.contains("slow") || q.contains("long") {
            let (n, gap) = if q.contains("slow") {
                (40, 25)
            } else {
                (400, 5)
            };
            let words: Vec<String> = (0..n).map(|i| format!("w{i} ")).collect();
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            return MockResponse::text_paced(&refs, Duration::from_millis(gap));
        }
        let answer = ["Answer ", "to ", &q, "."];
        MockResponse::text(&answer)
    })
    .await
    .expect("mock server")
}

pub fn trace() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var("RUST_LOG").is_ok() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .init();
        }
    });
}

pub async fn worker(
    server: &NatsServer,
    model: &MockServer,
    name: &str,
    max: usize,
    ttl: Duration,
) -> Worker {
    let nats = connect(&server.url(), name).await.expect("connect");
    worker_on(nats, model, name, max, ttl).await
}

/// A worker on a connection of the test's own (to inspect its statistics).
pub async fn worker_on(
    nats: async_nats::Client,
    model: &MockServer,
    name: &str,
    max: usize,
    ttl: Duration,
) -> Worker {
    let config = worker_config(model, name, max, ttl);
    Worker::start(nats, config).await.expect("worker starts")
}

/// The configuration [`worker`] uses, to change before starting one.
pub fn worker_config(model: &MockServer, name: &str, max: usize, ttl: Duration) -> WorkerConfig {
    trace();
    let client = ChatClient::new(OpenAiConfig::compatible(model.base_url())).expect("client");
    WorkerConfig::new(name, client)
        .with_max_sessions(max)
        .with_lease_ttl(ttl)
        .with_default_model("mock")
}

pub async fn cluster_client(server: &NatsServer) -> ClusterClient {
    let nats = connect(&server.url(), "test-client")
        .await
        .expect("connect");
    ClusterClient::new(nats)
}

pub async fn next(
    rx: &mut RemoteEvents,
    mut pred: impl FnMut(&RemoteEvent) -> bool,
) -> RemoteEvent {
    tokio::time::timeout(GUARD, async {
        loop {
            let ev = rx.recv().await.expect("subscription open");
            if pred(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("event did not arrive")
}

/// One turn: sends `text`, returns the turn, its end, its text and the worker
/// that answered.
pub async fn turn(
    s: &RemoteSession,
    rx: &mut RemoteEvents,
    text: &str,
) -> (TurnId, TurnEnd, String, String) {
    s.send_text(text).await.expect("send_text");
    let started = next(rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    finish(rx, started.turn).await
}

pub async fn finish(rx: &mut RemoteEvents, turn: TurnId) -> (TurnId, TurnEnd, String, String) {
    let mut text = String::new();
    loop {
        let ev = next(rx, |e| e.turn == turn).await;
        match ev.kind {
            RemoteEventKind::Bus(EventKind::Token(t)) => text.push_str(&t),
            RemoteEventKind::Bus(EventKind::TurnFinished(end)) => {
                return (turn, end, text, ev.worker);
            }
            _ => {}
        }
    }
}

pub fn texts(ctx: &ChatContext, role: Role) -> Vec<String> {
    ctx.items
        .iter()
        .filter_map(|i| match i {
            ChatItem::Message(m) if m.role == role => Some(m.text_content()),
            _ => None,
        })
        .collect()
}

/// A global debugging recorder (installed once per test binary).
pub fn metrics() -> &'static Snapshotter {
    static SNAP: OnceLock<Snapshotter> = OnceLock::new();
    SNAP.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        recorder.install().expect("recorder installed once");
        snap
    })
}

pub fn counter(snap: &Snapshotter, name: &str) -> u64 {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter(|(k, ..)| k.key().name() == name)
        .map(|(.., v)| match v {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}
