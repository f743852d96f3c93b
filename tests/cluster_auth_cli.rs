//! The `worker` and `loadgen --nats` examples logging in to a NATS server
//! that asks for it (feature `nats`): with a user and a password file (or the
//! password in the environment) a worker becomes ready and serves a session
//! end to end, placed by the test and then by loadgen; without
//! credentials, with a wrong password, or a user without a password, it
//! exits 1 within seconds with an error naming the problem, and the password
//! never appears in its output.
//!
//! Needs a nats-server like the other cluster tests (`tests/support/nats.rs`);
//! `cargo test` builds the example first. Waits are on the worker's output
//! and exit; timeouts only turn a hang into a failure, except the bound on
//! how long a refusal may take.

#[path = "support/bin.rs"]
mod bin;
#[path = "support/nats.rs"]
mod nats;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use colloquy::Secret;
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::cluster::{
    ClusterClient, NatsOptions, RemoteEventKind, SessionSpec, connect_with,
};
use nats::NatsServer;
use tokio::io::{AsyncBufReadExt, BufReader};

const GUARD: Duration = Duration::from_secs(60);
/// A refused login is answered at once; the bound leaves room for starting a
/// process on a loaded machine and is far below a retry loop (which never
/// ends).
const REFUSED_WITHIN: Duration = Duration::from_secs(10);
const WORKER_PASSWORD: &str = "pw-worker-5ecret";
const FRONTEND_PASSWORD: &str = "pw-frontend-5ecret";
const WRONG_PASSWORD: &str = "pw-wrong-5ecret";
/// Every variable the login reads, removed from the worker's environment.
const NATS_VARS: [&str; 12] = [
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_PASSWORD_FILE",
    "NATS_TOKEN",
    "NATS_TOKEN_FILE",
    "NATS_NKEY",
    "NATS_NKEY_SEED",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_TLS_REQUIRED",
];

async fn users_server() -> Option<NatsServer> {
    let config = format!(
        "authorization {{\n  users = [\n    {{ user: worker, password: \"{WORKER_PASSWORD}\" }}\n    \
         {{ user: frontend, password: \"{FRONTEND_PASSWORD}\" }}\n  ]\n}}\n"
    );
    NatsServer::start_with_config(Some(&config)).await
}

async fn model() -> MockServer {
    MockServer::start(|_| MockResponse::text(&["Hello ", "there."]))
        .await
        .expect("mock server")
}

/// A file holding `contents`, in a directory of the test's own.
fn file(name: &str, contents: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colloquy-auth-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("written");
    path
}

fn worker(server: &NatsServer, model: &MockServer, args: &[&str]) -> tokio::process::Command {
    worker_at(&server.url(), model, args)
}

fn worker_at(url: &str, model: &MockServer, args: &[&str]) -> tokio::process::Command {
    let base_url = model.base_url();
    let mut all = vec!["--nats", url, "--base-url", &base_url, "--model", "mock"];
    all.extend_from_slice(args);
    let mut cmd = bin::command("worker", &all);
    for var in NATS_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs a worker that must be refused: its exit code, stderr and how long it took.
async fn refused(mut cmd: tokio::process::Command) -> (Option<i32>, String, Duration) {
    let started = Instant::now();
    let out = bin::output_within(
        {
            cmd.stdout(Stdio::piped());
            cmd
        },
        GUARD,
    )
    .await;
    let (stdout, stderr, code) = bin::texts(&out);
    assert!(!stdout.contains("ready"), "{stdout}");
    (code, stderr, started.elapsed())
}

fn assert_no_secret(text: &str) {
    for secret in [WORKER_PASSWORD, FRONTEND_PASSWORD, WRONG_PASSWORD] {
        assert!(!text.contains(secret), "a secret shown: {text}");
    }
}

/// Starts the worker and waits for its `ready` line (returned with the child).
async fn ready(mut cmd: tokio::process::Command) -> (tokio::process::Child, String) {
    let mut child = cmd.stderr(Stdio::inherit()).spawn().expect("worker runs");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(GUARD, lines.next_line())
        .await
        .expect("worker says ready")
        .expect("worker output")
        .expect("a line");
    assert!(line.contains("ready"), "{line}");
    // The rest of its output is drained, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, line)
}

#[tokio::test]
async fn a_worker_with_a_password_file_serves_a_session() {
    let Some(server) = users_server().await else {
        return;
    };
    let model = model().await;
    let password = file("worker-password", &format!("{WORKER_PASSWORD}\n"));
    let (_worker, line) = ready(worker(
        &server,
        &model,
        &[
            "--name",
            "w-file",
            "--nats-user",
            "worker",
            "--nats-password-file",
            password.to_str().unwrap(),
        ],
    ))
    .await;
    assert_no_secret(&line);
    let login = NatsOptions::new().with_user_password("frontend", Secret::new(FRONTEND_PASSWORD));
    let nats = connect_with(&server.url(), "frontend", &login)
        .await
        .expect("the frontend logs in");
    let client = ClusterClient::new(nats);
    let session = client
        .place("cli-auth", SessionSpec::default())
        .await
        .expect("placed");
    let mut events = session.subscribe().await.expect("subscribed");
    session.send_text("hi").await.expect("sent");
    let end = tokio::time::timeout(GUARD, async {
        loop {
            let ev = events.recv().await.expect("subscription open");
            if let RemoteEventKind::Bus(EventKind::TurnFinished(end)) = ev.kind {
                return (end, ev.worker);
            }
        }
    })
    .await
    .expect("the turn finished");
    assert_eq!(end, (TurnEnd::Stop, "w-file".to_string()));
    // loadgen --nats logs in with the same flags, and drives a session.
    let frontend = file("frontend-password", FRONTEND_PASSWORD);
    let out = bin::output_within(
        loadgen(
            &server,
            &[
                "--nats-user",
                "frontend",
                "--nats-password-file",
                frontend.to_str().unwrap(),
            ],
        ),
        GUARD,
    )
    .await;
    let (stdout, stderr, code) = bin::texts(&out);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("\"workers_seen\":[\"w-file\"]"), "{stdout}");
    assert_no_secret(&format!("{stdout}{stderr}"));
}

fn loadgen(server: &NatsServer, args: &[&str]) -> tokio::process::Command {
    let url = server.url();
    let mut all = vec!["--nats", &url, "--sessions", "1", "--turns", "1", "--json"];
    all.extend_from_slice(args);
    let mut cmd = bin::command("loadgen", &all);
    for var in NATS_VARS {
        cmd.env_remove(var);
    }
    cmd
}

#[tokio::test]
async fn a_worker_with_the_password_in_the_environment_gets_ready() {
    let Some(server) = users_server().await else {
        return;
    };
    let model = model().await;
    let mut cmd = worker(&server, &model, &["--name", "w-env"]);
    cmd.env("NATS_USER", "worker")
        .env("NATS_PASSWORD", WORKER_PASSWORD);
    let (_worker, line) = ready(cmd).await;
    assert_no_secret(&line);
}

#[tokio::test]
async fn missing_or_wrong_credentials_fail_within_seconds_naming_authorization() {
    let Some(server) = users_server().await else {
        return;
    };
    let model = model().await;
    let wrong_file = file("wrong-password", WRONG_PASSWORD);
    let mut wrong_env = worker(&server, &model, &["--nats-user", "worker"]);
    wrong_env.env("NATS_PASSWORD", WRONG_PASSWORD);
    let with_url = format!("nats://worker:{WRONG_PASSWORD}@127.0.0.1:{}", server.port);
    let cases = [
        ("no credentials", worker(&server, &model, &[])),
        (
            "a wrong password file",
            worker(
                &server,
                &model,
                &[
                    "--nats-user",
                    "worker",
                    "--nats-password-file",
                    wrong_file.to_str().unwrap(),
                ],
            ),
        ),
        ("a wrong password in NATS_PASSWORD", wrong_env),
        (
            "a wrong password in the URL",
            worker_at(&with_url, &model, &[]),
        ),
    ];
    for (what, cmd) in cases {
        let (code, stderr, took) = refused(cmd).await;
        assert_eq!(code, Some(1), "{what}: {stderr}");
        assert!(took < REFUSED_WITHIN, "{what}: refused after {took:?}");
        // The client's own log line may come first.
        let error = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{what}: no error line: {stderr}"));
        assert!(
            error.starts_with("error: cannot connect to"),
            "{what}: {stderr}"
        );
        assert!(error.contains("authorization"), "{what}: {stderr}");
        assert_no_secret(&stderr);
    }
    // loadgen --nats likewise.
    let mut cmd = loadgen(&server, &["--nats-user", "frontend"]);
    cmd.env("NATS_PASSWORD", WRONG_PASSWORD);
    let (code, stderr, took) = refused(cmd).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < REFUSED_WITHIN, "loadgen refused after {took:?}");
    assert!(stderr.contains("authorization"), "{stderr}");
    assert_no_secret(&stderr);
    // A user without a password is refused before connecting.
    let (code, stderr, _) = refused(worker(&server, &model, &["--nats-user", "worker"])).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no password"), "{stderr}");
}

#[tokio::test]
async fn help_lists_the_login_flags() {
    let out = bin::output_within(bin::command("worker", &["--help"]), GUARD).await;
    let (help, _, code) = bin::texts(&out);
    assert_eq!(code, Some(0));
    for flag in [
        "--nats-user",
        "--nats-password-file",
        "--nats-token-file",
        "--nats-nkey-file",
        "--nats-creds",
        "--nats-ca",
        "--nats-cert",
        "--nats-key",
        "--nats-tls-required",
        "NATS_PASSWORD",
    ] {
        assert!(help.contains(flag), "--help describes {flag}: {help}");
    }
}
