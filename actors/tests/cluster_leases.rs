//! Ownership that costs nothing per idle session (issue 18: one heartbeat
//! per worker, a session's record written only when its ownership changes),
//! and two review findings around checkpoints: a checkpoint overwritten with
//! a value that does not decode, and the rolling upgrade that adds a state
//! key (untagged checkpoints). The fencing of a paused old owner is pinned in
//! `src/cluster/fencing_tests.rs`, where test hooks can pause a worker.
//!
//! Servers, workers and waits as in `cluster.rs` (see `cluster_common`).

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use cluster_common::*;
use colloquy::context::Role;
use colloquy_actors::bus::TurnEnd;
use colloquy_actors::cluster::async_nats::jetstream;
use colloquy_actors::cluster::async_nats::jetstream::kv::Operation;
use colloquy_actors::cluster::{RemoteEventKind, SessionSpec, Worker, connect};
use futures_util::StreamExt;
use nats::NatsServer;

/// Waits (polling, bounded by [`GUARD`]) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}"));
}

async fn bucket(server: &NatsServer, name: &str) -> jetstream::kv::Store {
    let nats = connect(&server.url(), "inspector").await.unwrap();
    jetstream::new(nats).get_key_value(name).await.unwrap()
}

/// Issue 18: every session's lease was renewed by a task of its own every
/// third of the lease time (about 3,000 writes a second at 1,000 idle
/// sessions). Now idle sessions write nothing: over six heartbeats of each
/// worker, the lease bucket sees the heartbeats and nothing else.
#[tokio::test]
async fn idle_sessions_write_nothing_but_one_heartbeat_per_worker() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let ttl = Duration::from_millis(300);
    let _a = worker(&server, &model, "a", 20, ttl).await;
    let _b = worker(&server, &model, "b", 20, ttl).await;
    let client = cluster_client(&server).await;
    let mut sessions = Vec::new();
    for i in 0..12 {
        sessions.push(
            client
                .place(format!("idle-{i}"), SessionSpec::default())
                .await
                .unwrap(),
        );
    }
    let kv = bucket(&server, "colloquy_leases").await;
    let mut watch = kv.watch(">").await.unwrap();
    let mut beats: HashMap<String, usize> = HashMap::new();
    tokio::time::timeout(GUARD, async {
        while beats.len() < 2 || beats.values().any(|n| *n < 6) {
            let entry = watch.next().await.expect("watching").unwrap();
            assert!(
                entry.key.starts_with("workers."),
                "an idle session's record was written: {} {:?}",
                entry.key,
                String::from_utf8_lossy(&entry.value)
            );
            let hb: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
            assert_eq!(hb["state"], "alive", "{hb}");
            *beats
                .entry(hb["worker"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
    })
    .await
    .expect("both workers' heartbeats");
}

/// Review: a checkpoint write refused (the value changed) whose re-read did
/// not decode was retried every 20 ms forever, the turn never ending and the
/// session never settled. Such a checkpoint is not this copy's any more: it
/// stops, and its record is released for a claimer, which deletes it (there
/// is nothing usable to resume).
#[tokio::test]
async fn a_checkpoint_overwritten_with_garbage_stops_the_copy_and_settles_the_record() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let a = worker(&server, &model, "a", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("garbled", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    let leases = bucket(&server, "colloquy_leases").await;
    let mut watch = leases.watch_with_history("garbled").await.unwrap();
    bucket(&server, "colloquy_checkpoints")
        .await
        .put("garbled", Bytes::from_static(b"not a checkpoint"))
        .await
        .unwrap();
    // The next commit finds the checkpoint changed, and unreadable.
    s.send_text("question two").await.unwrap();
    until("the copy stopped", || a.session_count() == 0).await;
    tokio::time::timeout(GUARD, async {
        while let Some(entry) = watch.next().await {
            if entry.unwrap().operation != Operation::Put {
                return;
            }
        }
    })
    .await
    .expect("the record was settled (deleted)");
}

/// Review: a keyed worker that met an untagged checkpoint (written before
/// the key was configured, in a rolling upgrade that adds it) deleted its
/// lease, and the session was lost. It now refuses the checkpoint but leaves
/// the session: a worker that may resume it (here one without the key) does,
/// with its history.
#[tokio::test]
async fn an_unsigned_checkpoint_is_left_for_a_worker_that_may_resume_it() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let snap = metrics();
    let model = model().await;
    let state_key = colloquy::Secret::new("rollout-state-key-5a1c");
    let a = worker(&server, &model, "a", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("rollout", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    let keyed = worker_config(&model, "b", 10, SHORT_LEASE).with_state_key(state_key);
    let _b = Worker::start(connect(&server.url(), "b").await.unwrap(), keyed)
        .await
        .unwrap();
    let refused = counter(snap, "colloquy_cluster_checkpoints_refused_total");
    a.abort().await;
    until("the keyed worker met the untagged checkpoint", || {
        counter(snap, "colloquy_cluster_checkpoints_refused_total") > refused
    })
    .await;
    let _c = worker(&server, &model, "c", 10, SHORT_LEASE).await;
    let resumed = next(&mut rx, |e| {
        matches!(e.kind, RemoteEventKind::Resumed { .. })
    })
    .await;
    assert_eq!(resumed.worker, "c");
    let (_, end, text, by) = turn(&s, &mut rx, "question two").await;
    assert_eq!(
        (end, text.as_str(), by.as_str()),
        (TurnEnd::Stop, "Answer to question two.", "c")
    );
    let ctx = s.context().await.unwrap();
    assert_eq!(texts(&ctx, Role::User), ["question one", "question two"]);
}

/// The explicit transition for that rollout: a keyed worker started with
/// `accept_unsigned_checkpoints(true)` resumes an untagged checkpoint, with
/// its history, and seals it with the key at once.
#[tokio::test]
async fn a_keyed_worker_accepting_unsigned_checkpoints_resumes_and_seals_them() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let state_key = colloquy::Secret::new("rollout-state-key-77e0");
    let a = worker(&server, &model, "a", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("upgraded", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    let checkpoints = bucket(&server, "colloquy_checkpoints").await;
    let untagged = checkpoints.get("upgraded").await.unwrap().unwrap();
    assert!(!untagged.contains(&b'\n'), "written without a key");
    let keyed = worker_config(&model, "b", 10, SHORT_LEASE)
        .with_state_key(state_key.clone())
        .accept_unsigned_checkpoints(true);
    let _b = Worker::start(connect(&server.url(), "b").await.unwrap(), keyed)
        .await
        .unwrap();
    a.abort().await;
    let resumed = next(&mut rx, |e| {
        matches!(e.kind, RemoteEventKind::Resumed { .. })
    })
    .await;
    assert_eq!(resumed.worker, "b");
    let sealed = checkpoints.get("upgraded").await.unwrap().unwrap();
    assert!(sealed.contains(&b'\n'), "sealed with the key by the claim");
    assert!(!String::from_utf8_lossy(&sealed).contains(state_key.expose()));
    let (_, end, text, by) = turn(&s, &mut rx, "question two").await;
    assert_eq!(
        (end, text.as_str(), by.as_str()),
        (TurnEnd::Stop, "Answer to question two.", "b")
    );
    let ctx = s.context().await.unwrap();
    assert_eq!(texts(&ctx, Role::User), ["question one", "question two"]);
}

/// An idle session's record and checkpoint are written only when ownership
/// changes, so nothing renews them against the buckets' `max_age`: its driver
/// rewrites both, unchanged, every quarter to third of it. Here `max_age` is
/// 2 s: after five refreshes (more than 2 s) both keys are there and the next
/// turn works on the history. (Before, the lease was renewed but an idle
/// session's checkpoint was not: it expired, and the next turn's write found
/// it gone.)
#[tokio::test]
async fn an_idle_session_outlives_the_buckets_max_age() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let policy = colloquy_actors::cluster::PlacementPolicy {
        store_max_age: Some(Duration::from_secs(2)),
        ..colloquy_actors::cluster::PlacementPolicy::default()
    };
    let config = worker_config(&model, "a", 10, NO_FAILOVER).with_policy(policy);
    let _a = Worker::start(connect(&server.url(), "a").await.unwrap(), config)
        .await
        .unwrap();
    let client = cluster_client(&server).await;
    let s = client
        .place("long-idle", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    let leases = bucket(&server, "colloquy_leases").await;
    let mut watch = leases.watch("long-idle").await.unwrap();
    tokio::time::timeout(GUARD, async {
        for _ in 0..5 {
            let entry = watch.next().await.expect("watching").unwrap();
            assert_eq!(entry.operation, Operation::Put, "the record went");
        }
    })
    .await
    .expect("the record is refreshed");
    assert!(leases.get("long-idle").await.unwrap().is_some());
    let checkpoints = bucket(&server, "colloquy_checkpoints").await;
    assert!(checkpoints.get("long-idle").await.unwrap().is_some());
    let (_, end, text, _) = turn(&s, &mut rx, "question two").await;
    assert_eq!(
        (end, text.as_str()),
        (TurnEnd::Stop, "Answer to question two.")
    );
    let ctx = s.context().await.unwrap();
    assert_eq!(texts(&ctx, Role::User), ["question one", "question two"]);
}
