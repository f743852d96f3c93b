//! A drain racing an admission (a placement or a claim between its checks and
//! the insert of the session), and a close slower than the lease time, each
//! held inside its window by a test hook.

use super::test_nats as nats;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::llm::{ChatClient, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use futures_util::FutureExt;
use nats::NatsServer;
use tokio::sync::oneshot;

use super::test_hooks;
use super::{ClusterClient, RemoteEventKind, SessionSpec, Worker, WorkerConfig, connect};

const GUARD: Duration = Duration::from_secs(30);

async fn start_worker(server: &NatsServer, model: &MockServer, name: &str) -> Worker {
    let nats = connect(&server.url(), name).await.unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(model.base_url())).unwrap();
    let config = WorkerConfig::new(name, client)
        .with_default_model("mock")
        .with_lease_ttl(Duration::from_secs(60));
    Worker::start(nats, config).await.unwrap()
}

fn take<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap().take()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_during_an_admission_hands_the_session_over() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = MockServer::start(|_| MockResponse::text(&["Hi", "."]))
        .await
        .unwrap();
    let (reached_tx, reached) = oneshot::channel::<()>();
    let (go, go_rx) = oneshot::channel::<()>();
    let (drain_tx, drain_started) = oneshot::channel::<()>();
    let slots = Arc::new((
        Mutex::new(Some(reached_tx)),
        Mutex::new(Some(go_rx)),
        Mutex::new(Some(drain_tx)),
    ));
    test_hooks::install(
        "race-a",
        Arc::new(move |point| {
            let slots = slots.clone();
            async move {
                match point {
                    "admit" => {
                        if let Some(tx) = take(&slots.0) {
                            let _ = tx.send(());
                        }
                        if let Some(rx) = take(&slots.1) {
                            let _ = rx.await;
                        }
                    }
                    "drain_started" => {
                        if let Some(tx) = take(&slots.2) {
                            let _ = tx.send(());
                        }
                    }
                    _ => {}
                }
            }
            .boxed()
        }),
    );
    let a = Arc::new(start_worker(&server, &model, "race-a").await);
    let client = ClusterClient::new(connect(&server.url(), "client").await.unwrap());
    let mut rx = client.session("race").unwrap().subscribe().await.unwrap();
    // The placement stops inside the admission window...
    let placing = tokio::spawn({
        let client = client.clone();
        async move { client.place("race", SessionSpec::default()).await }
    });
    tokio::time::timeout(GUARD, reached).await.unwrap().unwrap();
    let _b = start_worker(&server, &model, "race-b").await;
    // ...a drain begins, then the admission goes on.
    let draining = tokio::spawn({
        let a = a.clone();
        async move { a.drain().await }
    });
    tokio::time::timeout(GUARD, drain_started)
        .await
        .unwrap()
        .unwrap();
    go.send(()).unwrap();
    tokio::time::timeout(GUARD, placing)
        .await
        .unwrap()
        .unwrap()
        .expect("placed");
    let report = tokio::time::timeout(GUARD, draining)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (report.handed_over, report.failed),
        (1, 0),
        "the session admitted during the drain is handed over and reported"
    );
    let resumed = tokio::time::timeout(GUARD, async {
        loop {
            let ev = rx.recv().await.expect("subscribed");
            if matches!(ev.kind, RemoteEventKind::Resumed { .. }) {
                return ev;
            }
        }
    })
    .await
    .expect("resumed at once on the other worker, not after lease expiry");
    assert_eq!(resumed.worker, "race-b");
    assert_eq!(a.session_count(), 0);
}

/// A close slower than the lease time (held by the hook inside it) keeps its
/// ownership (the worker's heartbeat goes on): nobody claims the session
/// midway, and it ends for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_slower_than_the_lease_is_not_claimed_midway() {
    use async_nats::jetstream::{self, kv::Operation};
    use futures_util::StreamExt;

    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = MockServer::start(|_| MockResponse::text(&["Hi", "."]))
        .await
        .unwrap();
    let (reached_tx, reached) = oneshot::channel::<()>();
    let (go, go_rx) = oneshot::channel::<()>();
    let slots = Arc::new((Mutex::new(Some(reached_tx)), Mutex::new(Some(go_rx))));
    test_hooks::install(
        "slow-a",
        Arc::new(move |point| {
            let slots = slots.clone();
            async move {
                if point == "closing" {
                    if let Some(tx) = take(&slots.0) {
                        let _ = tx.send(());
                    }
                    if let Some(rx) = take(&slots.1) {
                        let _ = rx.await;
                    }
                }
            }
            .boxed()
        }),
    );
    let ttl = Duration::from_millis(300);
    let start = |name: &'static str| {
        let (url, base) = (server.url(), model.base_url());
        async move {
            let client = ChatClient::new(OpenAiConfig::compatible(base)).unwrap();
            let config = WorkerConfig::new(name, client)
                .with_default_model("mock")
                .with_lease_ttl(ttl);
            Worker::start(connect(&url, name).await.unwrap(), config)
                .await
                .unwrap()
        }
    };
    let a = start("slow-a").await;
    let client = ClusterClient::new(connect(&server.url(), "client").await.unwrap());
    let s = client.place("slow", SessionSpec::default()).await.unwrap();
    assert_eq!(a.session_count(), 1);
    let b = start("slow-b").await;
    let kv = jetstream::new(connect(&server.url(), "inspector").await.unwrap())
        .get_key_value("colloquy_leases")
        .await
        .unwrap();
    let mut watch = kv.watch(">").await.unwrap();
    let closing = tokio::spawn(async move { s.close().await });
    tokio::time::timeout(GUARD, reached).await.unwrap().unwrap();
    // Four heartbeats of the closing worker: more than a lease time passes
    // inside the close, and its session's record is left alone.
    let beat = super::lease::heartbeat_key(a.instance());
    let mut renewals = 0;
    tokio::time::timeout(GUARD, async {
        while renewals < 4 {
            let entry = watch.next().await.expect("watching").unwrap();
            assert_ne!(entry.key, "slow", "claimed midway: {entry:?}");
            if entry.key == beat {
                assert_eq!(entry.operation, Operation::Put);
                renewals += 1;
            }
        }
    })
    .await
    .expect("the heartbeat is renewed while closing");
    go.send(()).unwrap();
    tokio::time::timeout(GUARD, closing)
        .await
        .unwrap()
        .unwrap()
        .expect("closed");
    assert_eq!((a.session_count(), b.session_count()), (0, 0));
    assert!(kv.get("slow").await.unwrap().is_none(), "record deleted");
}
