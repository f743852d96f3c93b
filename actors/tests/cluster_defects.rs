//! Defects of the NATS cluster found in review (issue 13), each pinned by a
//! test: over-long subjects, speculations around failovers and drains, and a
//! lease whose checkpoint is gone.
//!
//! Servers, workers and waits as in `cluster.rs` (see `cluster_common`).

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::time::Duration;

use bytes::Bytes;
use cluster_common::*;
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::cluster::{ClusterError, SessionSpec, connect};
use nats::NatsServer;
use tokio::time::Instant;

/// A refusal made before anything is sent takes no network time; this bound
/// only has to be far below the 5 s request timeout of the old failure.
const IMMEDIATE: Duration = Duration::from_secs(2);

#[tokio::test]
async fn an_over_long_session_id_is_refused_and_other_sessions_keep_working() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let worker_nats = connect(&server.url(), "w").await.unwrap();
    let w = worker_on(worker_nats.clone(), &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client.place("short", SessionSpec::default()).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);

    // A key of ~4.6 KB: over the server's 4 KiB control line as a subject.
    let long = "é".repeat(770);
    let started = Instant::now();
    let err = client
        .place(long.as_str(), SessionSpec::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::NameTooLong {
                what: "session key",
                ..
            }
        ),
        "{err:?}"
    );
    let err = client.session(long.as_str()).unwrap_err();
    assert!(matches!(err, ClusterError::NameTooLong { .. }), "{err:?}");
    assert!(started.elapsed() < IMMEDIATE, "{:?}", started.elapsed());

    // The worker refuses such a placement itself (a client of another
    // language may send one), without touching its connection.
    let raw = connect(&server.url(), "raw").await.unwrap();
    let body = serde_json::json!({"session": long, "spec": {}});
    let started = Instant::now();
    let reply = tokio::time::timeout(
        GUARD,
        raw.request("colloquy.place", Bytes::from(body.to_string())),
    )
    .await
    .expect("the worker answers")
    .expect("a reply");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["error"]["kind"], "too_long", "{reply}");
    assert!(started.elapsed() < IMMEDIATE, "{:?}", started.elapsed());

    // The other session's inputs and events still flow, on the same
    // connections (neither was closed and reconnected).
    let (_, end, text, by) = turn(&s, &mut rx, "question two").await;
    assert_eq!(
        (end, text.as_str(), by.as_str()),
        (TurnEnd::Stop, "Answer to question two.", "w")
    );
    let connects = |c: &colloquy_actors::cluster::async_nats::Client| {
        c.statistics()
            .connects
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(connects(client.nats()), 1, "the client reconnected");
    assert_eq!(connects(&worker_nats), 1, "the worker reconnected");
    assert_eq!(w.session_count(), 1);
}
