//! The cluster with real worker processes (`examples/worker.rs`, feature
//! `nats`): its command line, a `kill -9` of a worker whose sessions resume
//! on another, and SIGTERM draining one that hands its sessions over and exits.
//!
//! Needs a nats-server like the other cluster tests (see
//! `tests/support/nats.rs`: without one they fail unless
//! `COLLOQUY_SKIP_NATS=1`); `cargo test` builds the example first.

#[path = "support/bin.rs"]
mod bin;
#[path = "support/nats.rs"]
mod nats;

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::TurnId;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::{
    ClusterClient, RemoteEvent, RemoteEventKind, RemoteEvents, RemoteSession, SessionSpec, connect,
};
use nats::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const GUARD: Duration = Duration::from_secs(60);

/// A worker process, once it said `ready`; its later output is collected.
struct Proc {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

async fn start_worker(server: &NatsServer, model: &MockServer, name: &str) -> Proc {
    let mut child = Command::new(bin::example_binary("worker"))
        .args([
            "--nats",
            &server.url(),
            "--name",
            name,
            "--max-sessions",
            "50",
        ])
        .args([
            "--base-url",
            &model.base_url(),
            "--model",
            "mock",
            "--lease-ms",
            "2000",
        ])
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("worker runs");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = reader.next_line().await {
            let _ = tx.send(line);
        }
    });
    let first = tokio::time::timeout(GUARD, lines.recv())
        .await
        .expect("worker says ready")
        .expect("worker output");
    assert!(first.contains("ready"), "{first}");
    Proc { child, lines }
}

async fn next(rx: &mut RemoteEvents, mut pred: impl FnMut(&RemoteEvent) -> bool) -> RemoteEvent {
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

/// One turn; returns (turn, end, worker).
async fn turn(s: &RemoteSession, rx: &mut RemoteEvents, text: &str) -> (TurnId, TurnEnd, String) {
    s.send_text(text).await.expect("send_text");
    let started = next(rx, |e| e.bus() == Some(&EventKind::TurnStarted)).await;
    let end = next(rx, |e| {
        e.turn == started.turn && matches!(e.bus(), Some(EventKind::TurnFinished(_)))
    })
    .await;
    match end.kind {
        RemoteEventKind::Bus(EventKind::TurnFinished(t)) => (started.turn, t, end.worker),
        _ => unreachable!(),
    }
}

async fn run_worker(args: &[&str]) -> (std::process::Output, Duration) {
    let started = std::time::Instant::now();
    let child = Command::new(bin::example_binary("worker"))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("worker runs");
    let out = tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("worker {args:?} did not exit"))
        .expect("output");
    (out, started.elapsed())
}

#[tokio::test]
async fn worker_help_and_unknown_flags() {
    let (out, _) = run_worker(&["--help"]).await;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Usage: worker"), "{help}");
    for flag in [
        "--nats",
        "--name",
        "--max-sessions",
        "--base-url",
        "--model",
        "--api-key",
        "--azure-endpoint",
        "--azure-deployment",
        "--api-version",
        "--prefix",
        "--lease-ms",
        "--drain-timeout-ms",
        "--help",
    ] {
        assert!(help.contains(flag), "--help describes {flag}: {help}");
    }
    for args in [
        &["--no-such-flag"][..],
        &["--max-sessions", "many"],
        &["--lease-ms", "0"],
    ] {
        let (out, _) = run_worker(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
}

/// A NATS URL that cannot work is a readable error at once (exit 1), not a
/// JetStream timeout after 20 s.
#[tokio::test]
async fn a_bad_nats_url_is_a_readable_error_at_once() {
    // Generous: the failure is immediate; the bound only has to be far below
    // the old 20 s even on a loaded machine.
    const PROMPT: Duration = Duration::from_secs(10);
    let model = "http://127.0.0.1:9/v1";
    for (url, expected) in [
        (
            "nats://127.0.0.1:1",
            "error: cannot connect to nats://127.0.0.1:1: ",
        ),
        ("notaurl", "error: invalid NATS URL \"notaurl\": "),
    ] {
        let (out, took) = run_worker(&["--nats", url, "--base-url", model]).await;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with(expected), "{url}: {err}");
        assert_eq!(err.lines().count(), 1, "{url}: one line: {err}");
        assert!(!err.contains('{'), "{url}: no Debug print: {err}");
        assert_eq!(out.status.code(), Some(1), "{url}: {err}");
        assert!(took < PROMPT, "{url}: took {took:?}");
    }
}

#[tokio::test]
async fn killed_and_drained_worker_processes_hand_their_sessions_over() {
    let Some(server) = NatsServer::start().await else {
        return;
    };
    let model = MockServer::start(|req| {
        let q = req.last_message()["content"]
            .as_str()
            .unwrap_or("")
            .to_string();
        MockResponse::text(&["Answer ", "to ", &q, "."])
    })
    .await
    .unwrap();
    let mut procs: HashMap<String, Proc> = HashMap::new();
    for name in ["p1", "p2", "p3"] {
        procs.insert(name.into(), start_worker(&server, &model, name).await);
    }
    let client = ClusterClient::new(connect(&server.url(), "test").await.unwrap());
    let mut sessions = Vec::new();
    for i in 0..9 {
        let s = client
            .place(format!("proc-{i}"), SessionSpec::default())
            .await
            .unwrap();
        let mut rx = s.subscribe().await.unwrap();
        let (_, end, worker) = turn(&s, &mut rx, &format!("question {i}")).await;
        assert_eq!(end, TurnEnd::Stop);
        sessions.push((s, rx, worker));
    }
    // kill -9 the worker of session 0: its sessions resume on the others.
    let victim = sessions[0].2.clone();
    procs.get_mut(&victim).unwrap().child.start_kill().unwrap();
    let mut owners = HashMap::new();
    for (s, rx, worker) in sessions.iter_mut() {
        if *worker == victim {
            let ev = next(rx, |e| matches!(e.kind, RemoteEventKind::Resumed { .. })).await;
            assert_ne!(ev.worker, victim);
            *worker = ev.worker;
        }
        let (_, end, by) = turn(s, rx, "again").await;
        assert_eq!((end, &by), (TurnEnd::Stop, &*worker));
        owners.insert(s.id().clone(), by);
    }
    // SIGTERM another: it drains, hands over, says so and exits 0.
    let drained = owners.values().find(|w| **w != victim).unwrap().clone();
    let pid = procs[&drained].child.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let p = procs.get_mut(&drained).unwrap();
    let line = tokio::time::timeout(GUARD, p.lines.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(line.contains("drained"), "{line}");
    let exit = tokio::time::timeout(GUARD, p.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
    let survivor = ["p1", "p2", "p3"]
        .into_iter()
        .find(|w| *w != victim && *w != drained)
        .unwrap();
    for (s, rx, worker) in sessions.iter_mut() {
        if owners[s.id()] == drained {
            let ev = next(rx, |e| matches!(e.kind, RemoteEventKind::Resumed { .. })).await;
            assert_eq!(ev.worker, survivor);
            *worker = ev.worker;
        }
        let (_, end, by) = turn(s, rx, "once more").await;
        assert_eq!((end, by.as_str()), (TurnEnd::Stop, survivor));
        let ctx = s.context().await.unwrap();
        assert_eq!(ctx.messages().count(), 6, "three questions, three answers");
    }
}
