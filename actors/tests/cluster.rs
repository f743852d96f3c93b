//! The NATS cluster (feature `nats`): placement, remote sessions, failover,
//! draining, oversized checkpoints, a server restart.
//!
//! Each test starts its own `nats-server -js` on a free 127.0.0.1 port (see
//! `tests/support/nats.rs`; without a server they fail, unless
//! `COLLOQUY_SKIP_NATS=1` skips them with a line on stderr). Workers run
//! in-process; "killing" one is [`Worker::abort`]: its tasks stop without
//! releasing a lease.
//! Tests wait on events and store changes; timeouts only turn a hang into a
//! failure.

mod cluster_common;
#[path = "../../tests/support/nats.rs"]
mod nats;

use std::collections::HashSet;
use std::time::Duration;

use cluster_common::*;
use colloquy::context::{ChatContext, Role};
use colloquy_actors::TurnId;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::async_nats::jetstream;
use colloquy_actors::cluster::{
    ClusterClient, ClusterError, RemoteConfig, RemoteEventKind, SessionSpec, SpecMode, Worker,
    connect, session_key,
};
use futures_util::StreamExt;
use nats::NatsServer;

#[tokio::test]
async fn placement_spreads_sessions_over_workers() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let workers = [
        worker(&server, &model, "w1", 100, NO_FAILOVER).await,
        worker(&server, &model, "w2", 100, NO_FAILOVER).await,
        worker(&server, &model, "w3", 100, NO_FAILOVER).await,
    ];
    let client = cluster_client(&server).await;
    let mut sessions = Vec::new();
    for i in 0..30 {
        sessions.push(
            client
                .place(format!("spread-{i}"), SessionSpec::default())
                .await
                .expect("placed"),
        );
    }
    let counts: Vec<usize> = workers.iter().map(Worker::session_count).collect();
    assert_eq!(counts.iter().sum::<usize>(), 30, "{counts:?}");
    assert!(
        counts.iter().all(|&n| n > 0),
        "every worker got sessions: {counts:?}"
    );
    // Each session answers, from the worker that holds it.
    let mut answered_by = HashSet::new();
    for s in &sessions {
        let mut rx = s.subscribe().await.unwrap();
        let (_, end, text, worker) = turn(s, &mut rx, "question one").await;
        assert_eq!(
            (end, text.as_str()),
            (TurnEnd::Stop, "Answer to question one.")
        );
        let holder = workers
            .iter()
            .find(|w| w.local_session(s.id()).is_some())
            .unwrap();
        assert_eq!(worker, holder.name());
        answered_by.insert(worker);
    }
    assert_eq!(answered_by.len(), 3);
    // A duplicate id is refused; a closed session's id can be placed again.
    assert!(matches!(
        client.place("spread-0", SessionSpec::default()).await,
        Err(ClusterError::AlreadyExists(_))
    ));
    sessions[0].close().await.expect("closed");
    assert_eq!(workers.iter().map(Worker::session_count).sum::<usize>(), 29);
    client
        .place("spread-0", SessionSpec::default())
        .await
        .expect("placed again");
}

#[tokio::test]
async fn a_full_worker_gets_no_sessions() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let a = worker(&server, &model, "a", 2, NO_FAILOVER).await;
    let nats = connect(&server.url(), "client").await.unwrap();
    let client = ClusterClient::with_config(
        nats,
        RemoteConfig {
            placement_timeout: Duration::from_millis(300),
            ..RemoteConfig::default()
        },
    )
    .unwrap();
    for i in 0..2 {
        client
            .place(format!("full-{i}"), SessionSpec::default())
            .await
            .expect("placed");
    }
    assert_eq!(a.session_count(), 2);
    assert_eq!(
        client
            .place("full-2", SessionSpec::default())
            .await
            .unwrap_err(),
        ClusterError::NoCapacity,
        "a full worker takes nothing"
    );
    let b = worker(&server, &model, "b", 10, NO_FAILOVER).await;
    for i in 2..8 {
        client
            .place(format!("full-{i}"), SessionSpec::default())
            .await
            .expect("placed");
    }
    assert_eq!((a.session_count(), b.session_count()), (2, 6));
    // Unknown tools are refused at placement.
    assert_eq!(
        client
            .place("tools", SessionSpec::default().with_tool("nope"))
            .await
            .unwrap_err(),
        ClusterError::UnknownTool("nope".into())
    );
}

#[tokio::test]
async fn remote_cancel_leaves_no_stale_event() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("cancel", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    for i in 0..5 {
        s.send_text(format!("long question {i}")).await.unwrap();
        let started = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
        let t = started.turn;
        for _ in 0..3 {
            next(&mut rx, |e| {
                e.turn == t && matches!(e.bus(), Some(EventKind::Token(_)))
            })
            .await;
        }
        s.cancel().await.expect("cancel");
        let (_, end, _, _) = finish(&mut rx, t).await;
        assert_eq!(end, TurnEnd::Cancelled);
        // Everything published after the cancel's end reaches us before the
        // marker: nothing of the cancelled turn may be among it.
        let marker = s.user_transcript("", false).await.unwrap();
        let mut stale = Vec::new();
        loop {
            let ev = next(&mut rx, |_| true).await;
            if ev.seq >= marker {
                break;
            }
            if ev.turn == t && !ev.bus().is_some_and(|k| k.is_user_side() || k.is_report()) {
                stale.push(ev);
            }
        }
        assert!(stale.is_empty(), "stale events after cancel: {stale:?}");
    }
    let (_, end, text, _) = turn(&s, &mut rx, "question after").await;
    assert_eq!(
        (end, text.as_str()),
        (TurnEnd::Stop, "Answer to question after.")
    );
    // Cancel with nothing in flight is a no-op.
    s.cancel().await.expect("idle cancel");

    // A barge-in over the wire follows the session's policy: in immediate
    // mode the owner cuts on receipt, with the same guarantee.
    let mut spec = SessionSpec::default();
    spec.interruption.mode = SpecMode::Immediate;
    let s = client.place("barge-in", spec).await.unwrap();
    let mut rx = s.subscribe().await.unwrap();
    s.send_text("long question").await.unwrap();
    let t = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted))
        .await
        .turn;
    next(&mut rx, |e| {
        e.turn == t && matches!(e.bus(), Some(EventKind::Token(_)))
    })
    .await;
    s.user_speech_started().await.unwrap();
    let (_, end, _, _) = finish(&mut rx, t).await;
    assert_eq!(end, TurnEnd::Cancelled);
    let marker = s.user_speech_ended().await.unwrap();
    loop {
        let ev = next(&mut rx, |_| true).await;
        if ev.seq >= marker {
            assert_eq!(ev.bus(), Some(&EventKind::UserSpeechEnded));
            break;
        }
        let user_or_report = ev.bus().is_some_and(|k| k.is_user_side() || k.is_report());
        assert!(ev.turn != t || user_or_report, "stale: {ev:?}");
    }
}

#[tokio::test]
async fn a_killed_workers_sessions_resume_elsewhere_with_their_history() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let a = worker(&server, &model, "a", 10, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let s = client
            .place(format!("kill-{i}"), SessionSpec::default())
            .await
            .unwrap();
        let mut rx = s.subscribe().await.unwrap();
        let (t, end, _, w) = turn(&s, &mut rx, &format!("question {i}")).await;
        assert_eq!((t, end, w.as_str()), (TurnId(1), TurnEnd::Stop, "a"));
        sessions.push((s, rx));
    }
    let b = worker(&server, &model, "b", 10, SHORT_LEASE).await;
    assert_eq!(a.session_count(), 3);
    // Session 0 has a turn in flight when its worker dies.
    let (s0, rx0) = &mut sessions[0];
    s0.send_text("slow question").await.unwrap();
    let started = next(rx0, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    assert_eq!(started.turn, TurnId(2));
    next(rx0, |e| matches!(e.bus(), Some(EventKind::Token(_)))).await;
    a.abort().await;

    let lost = next(rx0, |e| matches!(e.bus(), Some(EventKind::TurnFinished(_)))).await;
    assert_eq!(lost.turn, TurnId(2));
    assert_eq!(
        lost.kind,
        RemoteEventKind::Bus(EventKind::TurnFinished(TurnEnd::Failed(
            "worker lost".into()
        )))
    );
    assert_eq!(lost.worker, "b");
    for (i, (_, rx)) in sessions.iter_mut().enumerate() {
        let ev = next(rx, |e| matches!(e.kind, RemoteEventKind::Resumed { .. })).await;
        assert_eq!(
            ev.kind,
            RemoteEventKind::Resumed {
                last_committed_turn: TurnId(1),
                previous_worker: Some("a".into())
            },
            "session {i}"
        );
        assert_eq!(ev.worker, "b");
    }
    assert_eq!(b.session_count(), 3);
    // The next input works, and the history survived.
    for (i, (s, rx)) in sessions.iter_mut().enumerate() {
        let (t, end, text, w) = turn(s, rx, &format!("question {i} again")).await;
        assert_eq!((end, w.as_str()), (TurnEnd::Stop, "b"));
        assert_eq!(text, format!("Answer to question {i} again."));
        // Turn numbers are never reused: after a failover the new owner's
        // begin past one the lost worker may have started unstored, one
        // after the last start it stored (session 0's turn 2, in flight and
        // ended as failed, could have been cancelled by a turn 3 announced
        // and never stored; the others' last start was turn 1).
        let expected = if i == 0 { TurnId(4) } else { TurnId(3) };
        assert_eq!(t, expected, "turn numbers are never reused");
        let ctx = s.context().await.unwrap();
        let mut users = vec![format!("question {i}")];
        if i == 0 {
            users.push("slow question".into());
        }
        users.push(format!("question {i} again"));
        assert_eq!(texts(&ctx, Role::User), users);
        assert_eq!(
            texts(&ctx, Role::Assistant),
            vec![
                format!("Answer to question {i}."),
                format!("Answer to question {i} again.")
            ]
        );
    }
}

#[tokio::test]
async fn two_workers_racing_to_claim_a_session_exactly_one_wins() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let ghost = worker(&server, &model, "ghost", 50, SHORT_LEASE).await;
    let client = cluster_client(&server).await;
    let n = 12;
    let mut sessions = Vec::new();
    for i in 0..n {
        let s = client
            .place(format!("race-{i}"), SessionSpec::default())
            .await
            .unwrap();
        let mut rx = s.subscribe().await.unwrap();
        turn(&s, &mut rx, &format!("question {i}")).await;
        sessions.push((s, rx));
    }
    // Both start together and see the same leases expire at the same time.
    let (a, b) = tokio::join!(
        worker(&server, &model, "a", 50, SHORT_LEASE),
        worker(&server, &model, "b", 50, SHORT_LEASE)
    );
    ghost.abort().await;
    for (_, rx) in sessions.iter_mut() {
        next(rx, |e| matches!(e.kind, RemoteEventKind::Resumed { .. })).await;
    }
    let on_a: HashSet<_> = a.sessions().into_iter().collect();
    let on_b: HashSet<_> = b.sessions().into_iter().collect();
    assert_eq!(on_a.len() + on_b.len(), n, "a {on_a:?} b {on_b:?}");
    assert!(on_a.is_disjoint(&on_b));
    for (i, (s, rx)) in sessions.iter_mut().enumerate() {
        // One owner answers: one turn start, one end, from the holder.
        s.send_text(format!("question {i} again")).await.unwrap();
        let mut starts = 0;
        let mut resumed = 0;
        let answered_by = loop {
            let ev = next(rx, |_| true).await;
            match ev.kind {
                RemoteEventKind::Resumed { .. } => resumed += 1,
                RemoteEventKind::Bus(EventKind::TurnStarted) => starts += 1,
                RemoteEventKind::Bus(EventKind::TurnFinished(end)) => {
                    assert_eq!(end, TurnEnd::Stop);
                    break ev.worker;
                }
                _ => {}
            }
        };
        let holder = if on_a.contains(s.id()) { "a" } else { "b" };
        assert_eq!((starts, resumed, answered_by.as_str()), (1, 0, holder));
        let ctx = s.context().await.unwrap();
        assert_eq!(texts(&ctx, Role::Assistant).len(), 2);
    }
}

#[tokio::test]
async fn draining_hands_sessions_over_without_losing_a_committed_turn() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    // Leases far longer than the test: only a release can move the sessions.
    let a = worker(&server, &model, "a", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let mut sessions = Vec::new();
    for i in 0..3 {
        let s = client
            .place(format!("drain-{i}"), SessionSpec::default())
            .await
            .unwrap();
        let mut rx = s.subscribe().await.unwrap();
        turn(&s, &mut rx, &format!("question {i}")).await;
        sessions.push((s, rx));
    }
    let b = worker(&server, &model, "b", 10, NO_FAILOVER).await;
    // Session 0 is answering when the drain starts: the turn finishes on a.
    let (s0, rx0) = &mut sessions[0];
    s0.send_text("slow question").await.unwrap();
    let started = next(rx0, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    let (report, (t, end, text, w)) = tokio::join!(a.drain(), finish(rx0, started.turn));
    assert_eq!((t, end, w.as_str()), (TurnId(2), TurnEnd::Stop, "a"));
    assert_eq!(text.split_whitespace().count(), 40);
    assert_eq!(
        (report.handed_over, report.cut_at_timeout, report.failed),
        (3, 0, 0)
    );
    assert_eq!(a.session_count(), 0);
    // New sessions go elsewhere now.
    client
        .place("drain-new", SessionSpec::default())
        .await
        .unwrap();
    for (i, (s, rx)) in sessions.iter_mut().enumerate() {
        let ev = next(rx, |e| matches!(e.kind, RemoteEventKind::Resumed { .. })).await;
        let committed = if i == 0 { 2 } else { 1 };
        assert_eq!(
            ev.kind,
            RemoteEventKind::Resumed {
                last_committed_turn: TurnId(committed),
                previous_worker: Some("a".into())
            }
        );
        let (t, end, _, w) = turn(s, rx, "question after").await;
        assert_eq!(
            (t, end, w.as_str()),
            (TurnId(committed + 1), TurnEnd::Stop, "b")
        );
        let ctx = s.context().await.unwrap();
        let answers = texts(&ctx, Role::Assistant);
        assert_eq!(answers.len(), committed as usize + 1, "{answers:?}");
        if i == 0 {
            assert_eq!(
                answers[1], text,
                "the turn finished while draining is committed"
            );
        }
    }
    assert_eq!(b.session_count(), 4);
}

#[tokio::test]
async fn an_oversized_context_is_reported() {
    let snap = metrics();
    let Some(server) = NatsServer::start_with_config(Some("max_payload: 65536\n")).await else {
        return;
    };
    let model = model().await;
    let _w = worker(&server, &model, "w", 10, NO_FAILOVER).await;
    let client = cluster_client(&server).await;
    let history = |chars: usize| {
        let mut c = ChatContext::new();
        c.add_user("x".repeat(chars));
        c
    };
    // Larger than any message: refused by the client.
    let err = client
        .place_with_context("big", SessionSpec::default(), Some(history(70_000)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClusterError::TooLarge {
                what: "placement request",
                ..
            }
        ),
        "{err:?}"
    );
    // The request fits, the checkpoint (with the room kept for headers) does not.
    let before = counter(snap, "colloquy_cluster_checkpoint_too_large_total");
    let err = client
        .place_with_context("big", SessionSpec::default(), Some(history(64_600)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, ClusterError::TooLarge { what: "context", bytes, max_bytes } if bytes > max_bytes),
        "{err:?}"
    );
    // A running session whose context outgrows the limit: reported, and it runs on.
    let s = client
        .place_with_context("grows", SessionSpec::default(), Some(history(40_000)))
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    s.send_text(format!("question {}", "y".repeat(30_000)))
        .await
        .unwrap();
    // The turn start goes out before its store (which reports the size),
    // unless the commit of the question was stored first: either order.
    let (mut started, mut too_large) = (None, None);
    while started.is_none() || too_large.is_none() {
        let ev = next(&mut rx, |_| true).await;
        match ev.kind {
            RemoteEventKind::CheckpointTooLarge { bytes, max_bytes } => {
                too_large = Some((bytes, max_bytes))
            }
            RemoteEventKind::Bus(EventKind::TurnStarted) => started = Some(ev.turn),
            _ => {}
        }
    }
    let (bytes, max_bytes) = too_large.unwrap();
    assert!(
        bytes > max_bytes && max_bytes < 65_536,
        "{bytes} {max_bytes}"
    );
    let (_, end, _, _) = finish(&mut rx, started.unwrap()).await;
    assert_eq!(end, TurnEnd::Stop);
    assert!(counter(snap, "colloquy_cluster_checkpoint_too_large_total") >= before + 2);
}

#[tokio::test]
async fn a_nats_restart_loses_no_committed_turn() {
    let Some(mut server) = NatsServer::start().await else {
        return;
    };
    let model = model().await;
    let w = worker(&server, &model, "w", 10, Duration::from_secs(1)).await;
    let client = cluster_client(&server).await;
    let s = client
        .place("restart", SessionSpec::default())
        .await
        .unwrap();
    let mut rx = s.subscribe().await.unwrap();
    let (_, end, _, _) = turn(&s, &mut rx, "question one").await;
    assert_eq!(end, TurnEnd::Stop);
    // Turn 2 is being answered when the server goes away, and finishes
    // while it is away.
    let local = w.local_session(s.id()).expect("runs on w");
    let mut local_rx = local.subscribe();
    s.send_text("slow question").await.unwrap();
    let started = next(&mut rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    assert_eq!(started.turn, TurnId(2));
    server.stop().await;
    let finished = tokio::time::timeout(GUARD, async {
        loop {
            if let Ok(ev) = local_rx.recv().await
                && let EventKind::TurnFinished(end) = ev.kind
            {
                return end;
            }
        }
    })
    .await
    .expect("turn 2 finishes on the worker");
    assert_eq!(finished, TurnEnd::Stop);
    server.restart().await;

    // The checkpoint of turn 2 reaches the store once the server is back.
    let nats = connect(&server.url(), "inspector").await.unwrap();
    let kv = jetstream::new(nats)
        .get_key_value("colloquy_checkpoints")
        .await
        .unwrap();
    let key = session_key(s.id()).unwrap();
    let mut watch = kv.watch_with_history(&key).await.unwrap();
    tokio::time::timeout(GUARD, async {
        while let Some(Ok(entry)) = watch.next().await {
            let v: serde_json::Value = serde_json::from_slice(&entry.value).unwrap_or_default();
            if v["committed_turn"].as_u64() >= Some(2) {
                return;
            }
        }
        panic!("watch ended");
    })
    .await
    .expect("turn 2 stored");

    let (t, end, text, worker) = turn(&s, &mut rx, "question three").await;
    assert_eq!(
        (t, end, text.as_str(), worker.as_str()),
        (TurnId(3), TurnEnd::Stop, "Answer to question three.", "w")
    );
    let ctx = s.context().await.unwrap();
    let answers = texts(&ctx, Role::Assistant);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0], "Answer to question one.");
    assert_eq!(answers[1].split_whitespace().count(), 40);
    assert_eq!(w.session_count(), 1, "no failover happened");
}
