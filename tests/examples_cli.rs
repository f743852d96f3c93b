//! Every example's command line: `--help` and `-h` print the usage on stdout and
//! exit 0 (without doing any work); an unknown flag prints an error and the
//! usage on stderr and exits 2.
//!
//! `cargo test` builds the examples before running tests; these tests run the
//! built binaries. A binary that ignored the flag and started its work (a server
//! that never exits, say) is killed when the guard timeout expires.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::Duration;

const EXAMPLES: [&str; 4] = ["chat", "loadgen", "mock_server", "voice_agent"];

/// Only turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(60);

fn example_binary(name: &str) -> PathBuf {
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
        "{} is missing: run `cargo test` (which builds the examples), not only this test target",
        bin.display()
    );
    bin
}

async fn run(name: &str, args: &[&str]) -> Output {
    let child = tokio::process::Command::new(example_binary(name))
        .args(args)
        .env_remove("OPENAI_API_KEY")
        .env_remove("AZURE_OPENAI_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{name} runs: {e}"));
    tokio::time::timeout(GUARD, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not exit"))
        .expect("output")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn help_prints_the_usage_on_stdout_and_exits_0() {
    for name in EXAMPLES {
        for flag in ["--help", "-h"] {
            let out = run(name, &[flag]).await;
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{name} {flag}: stdout {stdout:?} stderr {stderr:?}"
            );
            assert!(
                stdout.starts_with(&format!("usage: {name}")),
                "{name} {flag}: usage on stdout, got {stdout:?}"
            );
            assert!(stderr.is_empty(), "{name} {flag}: stderr {stderr:?}");
        }
    }
}

#[tokio::test]
async fn unknown_flag_is_an_error_with_the_usage_on_stderr_and_exit_2() {
    for name in EXAMPLES {
        let out = run(name, &["--no-such-flag"]).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: stdout {stdout:?} stderr {stderr:?}"
        );
        assert!(
            stderr.starts_with("error: unknown") && stderr.contains("--no-such-flag"),
            "{name}: a clear error first, got {stderr:?}"
        );
        assert!(
            stderr.contains(&format!("usage: {name}")),
            "{name}: usage on stderr, got {stderr:?}"
        );
        assert!(stdout.is_empty(), "{name}: stdout {stdout:?}");
    }
}
