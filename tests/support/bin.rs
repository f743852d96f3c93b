//! Helpers shared by the tests that run the example binaries (included with
//! `#[path]`): where a built example is and running one to its exit.
//!
//! `cargo test` builds the examples before running tests; these helpers run
//! the built binaries and never reach the internet.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

/// The built example `name` (`target/<profile>/examples/<name>`).
pub fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile directory");
    let bin = dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --all-features` (which builds the examples), \
         not only this test target",
        bin.display()
    );
    bin
}

/// A command for example `name`, without the provider environment (no key, no
/// Azure endpoint: nothing can reach a real provider), stdin closed, output
/// piped, killed when dropped.
pub fn command<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(example_binary(name));
    cmd.args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_ENDPOINT")
        .env_remove("AZURE_OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_AD_TOKEN")
        .env_remove("COLLOQUY_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `cmd` to its exit; `guard` only turns a hang into a failure.
pub async fn output_within(mut cmd: tokio::process::Command, guard: Duration) -> Output {
    let child = cmd.spawn().expect("the example starts");
    tokio::time::timeout(guard, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not exit within {guard:?}"))
        .expect("the example's output")
}

/// Runs example `name` with `args` to its exit (guard: 120 s).
pub async fn run<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> Output {
    output_within(command(name, args), Duration::from_secs(120)).await
}

/// Stdout, stderr and the exit code of a run.
pub fn texts(out: &Output) -> (String, String, Option<i32>) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code(),
    )
}

/// OpenAI's answer to a wrong key (the body of the captured
/// `28-openai-401-invalid-api-key.http`, on one line).
pub const INVALID_KEY_BODY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-wrong. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;

/// A base URL nothing listens on (connection refused).
pub fn refused_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!(
        "http://{}/v1",
        listener.local_addr().expect("local address")
    )
}
