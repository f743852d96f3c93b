//! Every example's command line, one error style: `--help` and `-h` print the
//! usage on stdout and exit 0 (without doing any work), `--help` describing
//! every flag; a usage error (an unknown flag, a bad or out-of-range value)
//! prints `error: …` and the usage on stderr and exits 2; a failure at run
//! time prints `error: …` (never a `Debug` dump) and exits 1.
//!
//! `cargo test` builds the examples before running tests; these tests run the
//! built binaries. A binary that ignored the flag and started its work (a server
//! that never exits, say) is killed when the guard timeout expires.

#[path = "support/bin.rs"]
mod bin;

use std::time::Duration;

use bin::{command, output_within, texts};
use colloquy::mock::{MockResponse, MockServer};
use serde_json::Value;

const EXAMPLES: [&str; 4] = ["chat", "loadgen", "mock_server", "voice_agent"];

/// Only turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(60);

async fn run(name: &str, args: &[&str]) -> (String, String, Option<i32>) {
    texts(&output_within(command(name, args), GUARD).await)
}

/// A usage error: exit 2, nothing on stdout, `error: ` first on stderr and
/// never a `Debug` dump.
#[track_caller]
fn assert_usage_error(what: &str, (stdout, stderr, code): &(String, String, Option<i32>)) {
    assert_eq!(
        *code,
        Some(2),
        "{what}: stdout {stdout:?} stderr {stderr:?}"
    );
    assert!(stdout.is_empty(), "{what}: stdout {stdout:?}");
    assert!(stderr.starts_with("error: "), "{what}: {stderr:?}");
    assert!(
        !stderr.contains("Config(") && !stderr.contains("Os {"),
        "{what}: a Debug print: {stderr:?}"
    );
}

#[tokio::test]
async fn help_prints_the_usage_on_stdout_and_exits_0() {
    for name in EXAMPLES {
        for flag in ["--help", "-h"] {
            let (stdout, stderr, code) = run(name, &[flag]).await;
            assert_eq!(
                code,
                Some(0),
                "{name} {flag}: stdout {stdout:?} stderr {stderr:?}"
            );
            assert!(
                stdout.contains(&format!("Usage: {name}")),
                "{name} {flag}: usage on stdout, got {stdout:?}"
            );
            assert!(stderr.is_empty(), "{name} {flag}: stderr {stderr:?}");
        }
    }
}

/// The flags the README and the other tests rely on, per example.
const FLAGS: [(&str, &[&str]); 4] = [
    (
        "chat",
        &[
            "--base-url",
            "--model",
            "--api-key",
            "--azure-endpoint",
            "--azure-deployment",
            "--api-version",
            "--system",
            "--tool",
            "--tool-choice",
            "--reasoning-effort",
            "--verbosity",
            "--max-completion-tokens",
            "--temperature",
            "--top-p",
            "--frequency-penalty",
            "--presence-penalty",
            "--max-retries",
            "--fallback-base-url",
            "--fallback-model",
            "--fallback-api-key",
            "--ttft-timeout-ms",
            "--gap-timeout-ms",
            "--hedge-after-ms",
            "--json",
        ],
    ),
    (
        "loadgen",
        &[
            "--base-url",
            "--sessions",
            "--turns",
            "--cancel-after-tokens",
            "--idle-sessions",
            "--barge-in",
            "--seed",
            "--interrupt",
            "--fallback-base-url",
            "--fallback-model",
            "--fallback-api-key",
            "--ttft-timeout-ms",
            "--gap-timeout-ms",
            "--hedge-after-ms",
            "--breaker-failures",
            "--json",
            "--nats",
            "--turn-gap-ms",
            "--speech-only",
            "--plot",
        ],
    ),
    (
        "mock_server",
        &[
            "--port",
            "--tokens",
            "--gap-ms",
            "--ttft-ms",
            "--stall-rate",
            "--keep-alive-ms",
            "--drop-after-tokens",
            "--drop-rate",
            "--restate-words",
            "--seed",
        ],
    ),
    (
        "voice_agent",
        &["--scenario", "--json", "--base-url", "--model"],
    ),
];

#[tokio::test]
async fn help_describes_every_flag() {
    for (name, flags) in FLAGS {
        let (stdout, _, code) = run(name, &["--help"]).await;
        assert_eq!(code, Some(0), "{name}");
        let lines: Vec<&str> = stdout.lines().collect();
        for flag in flags {
            // clap's long help: the flag on its line, its description on the next.
            let at = lines
                .iter()
                .position(|l| {
                    let l = l.trim_start();
                    l.starts_with(&format!("{flag} ")) || l == *flag
                })
                .unwrap_or_else(|| panic!("{name} --help lists {flag}: {stdout}"));
            let description = lines.get(at + 1).map_or("", |l| l.trim());
            assert!(
                description.len() > 3,
                "{name} --help describes {flag}: {stdout}"
            );
        }
    }
}

#[tokio::test]
async fn unknown_flag_is_an_error_with_the_usage_on_stderr_and_exit_2() {
    for name in EXAMPLES {
        let out = run(name, &["--no-such-flag"]).await;
        assert_usage_error(name, &out);
        let stderr = &out.1;
        assert!(stderr.contains("--no-such-flag"), "{name}: {stderr:?}");
        assert!(
            stderr.contains(&format!("Usage: {name}")),
            "{name}: usage on stderr, got {stderr:?}"
        );
    }
}

#[tokio::test]
async fn a_bad_base_url_is_a_usage_error_naming_the_value() {
    for (name, args) in [
        ("loadgen", &["--base-url", "notaurl"][..]),
        ("chat", &["--base-url", "notaurl", "hi"]),
        ("voice_agent", &["--base-url", "notaurl"]),
        ("chat", &["--fallback-base-url", "notaurl", "hi"]),
    ] {
        let out = run(name, args).await;
        assert_usage_error(name, &out);
        assert!(
            out.1.starts_with(r#"error: invalid base URL "notaurl": "#),
            "{name}: {:?}",
            out.1
        );
    }
    let out = run("loadgen", &["--base-url", "ftp://127.0.0.1/v1"]).await;
    assert_usage_error("loadgen ftp", &out);
    assert!(out.1.contains("http or https"), "{:?}", out.1);
}

#[tokio::test]
async fn values_outside_the_api_range_are_usage_errors() {
    for (flag, value) in [
        ("--temperature", "2.5"),
        ("--temperature", "-0.1"),
        ("--top-p", "1.5"),
        ("--frequency-penalty", "-2.5"),
        ("--presence-penalty", "3"),
        ("--max-completion-tokens", "0"),
        ("--temperature", "warm"),
        ("--reasoning-effort", "extreme"),
    ] {
        let out = run("chat", &[flag, value, "hi"]).await;
        assert_usage_error(&format!("chat {flag} {value}"), &out);
        assert!(out.1.contains(flag), "{flag} {value}: {:?}", out.1);
    }
    for (name, flag, value) in [
        ("mock_server", "--stall-rate", "1.5"),
        ("mock_server", "--drop-rate", "-1"),
        ("mock_server", "--port", "70000"),
        ("loadgen", "--sessions", "-1"),
        ("loadgen", "--barge-in", "sometimes"),
        ("loadgen", "--interrupt", "later"),
    ] {
        let out = run(name, &[flag, value]).await;
        assert_usage_error(&format!("{name} {flag} {value}"), &out);
        assert!(out.1.contains(flag), "{name} {flag} {value}: {:?}", out.1);
    }
}

#[tokio::test]
async fn negative_values_parse_where_the_api_allows_them() {
    let server = MockServer::start(|_| MockResponse::text(&["Hi"]))
        .await
        .unwrap();
    let url = server.base_url();
    let (stdout, stderr, code) = run(
        "chat",
        &[
            "--base-url",
            &url,
            "--frequency-penalty",
            "-1.5",
            "--presence-penalty",
            "-0.5",
            "--temperature",
            "0",
            "--top-p",
            "1",
            "--json",
            "hi",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "stdout {stdout} stderr {stderr}");
    let body: Value = server.requests()[0].json();
    assert_eq!(body["frequency_penalty"], -1.5, "{body}");
    assert_eq!(body["presence_penalty"], -0.5, "{body}");
    assert_eq!(body["top_p"], 1.0, "{body}");
}

#[tokio::test]
async fn mock_server_names_the_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (stdout, stderr, code) = run("mock_server", &["--port", &port]).await;
    assert_eq!(code, Some(1), "stdout {stdout:?} stderr {stderr:?}");
    assert!(
        stderr.starts_with(&format!("error: 127.0.0.1:{port} is already in use")),
        "{stderr:?}"
    );
    assert!(!stderr.contains("Os {"), "a Debug print: {stderr:?}");
}

#[tokio::test]
async fn a_missing_key_is_a_runtime_error_without_a_debug_print() {
    let (stdout, stderr, code) = run("chat", &["hi"]).await;
    assert_eq!(code, Some(1), "stdout {stdout:?} stderr {stderr:?}");
    assert_eq!(
        stderr.trim_end(),
        "error: missing API key: pass one or set OPENAI_API_KEY"
    );
}

/// `voice_server` (built with the call transports and the engines): its
/// usage, every flag described, a bad flag value a usage error.
#[cfg(all(feature = "calls", feature = "espeak", feature = "pocketsphinx"))]
#[tokio::test]
async fn voice_server_describes_its_flags_and_refuses_bad_ones() {
    let (stdout, stderr, code) = run("voice_server", &["--help"]).await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    assert!(stdout.contains("Usage: voice_server"), "{stdout}");
    for flag in [
        "--listen",
        "--json",
        "--base-url",
        "--model",
        "--interruptions",
        "--voice",
        "--stt",
        "--tts",
        "--speech-base-url",
        "--metrics",
        "--twilio-auth-token-file",
        "--twilio-account-sid",
        "--public-url",
        "--browser-key-file",
        "--browser-token-ttl",
        "--allowed-origin",
        "--max-calls",
        "--max-message-bytes",
        "--max-messages-per-second",
        "--idle-timeout",
        "--max-call-duration",
    ] {
        assert!(
            stdout.contains(flag),
            "voice_server --help lists {flag}: {stdout}"
        );
    }
    // A token file that cannot be read: a failure at start naming the file.
    let (stdout, stderr, code) = run(
        "voice_server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--twilio-auth-token-file",
            "/nonexistent/twilio-token",
        ],
    )
    .await;
    assert_eq!(code, Some(1), "{stdout} {stderr}");
    assert!(stderr.contains("/nonexistent/twilio-token"), "{stderr}");
    assert_usage_error(
        "voice_server --interruptions sometimes",
        &run("voice_server", &["--interruptions", "sometimes"]).await,
    );
    assert_usage_error(
        "voice_server --listen nowhere",
        &run("voice_server", &["--listen", "nowhere"]).await,
    );
    let (stdout, _, _) = run("voice_agent", &["--help"]).await;
    assert!(
        stdout.contains("--audio"),
        "voice_agent --help lists --audio: {stdout}"
    );
    let (stdout, _, _) = run("loadgen", &["--help"]).await;
    assert!(
        stdout.contains("--twilio") && stdout.contains("--calls"),
        "{stdout}"
    );
}

/// Checks that `svg` is well formed: every element closed, in order, no
/// stray `<`; returns the texts of its `<text>` elements.
fn svg_texts(svg: &str) -> Vec<String> {
    let mut stack: Vec<String> = Vec::new();
    let mut texts = Vec::new();
    let mut rest = svg;
    while let Some(open) = rest.find('<') {
        let (before, after) = rest.split_at(open);
        if stack.last().is_some_and(|t| t == "text") && !before.trim().is_empty() {
            texts.push(before.trim().to_string());
        }
        let close = after.find('>').expect("an unclosed tag");
        let tag = &after[1..close];
        assert!(!tag.contains('<'), "a stray < in {tag:?}");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(
                stack.pop().as_deref(),
                Some(name.trim()),
                "mismatched </{name}>"
            );
        } else if !tag.ends_with('/') {
            stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
        }
        rest = &after[close + 1..];
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    texts
}

/// `loadgen --plot`: an SVG of the run's latency distributions, well formed,
/// each measured latency named with its p50, p90 and p99.
#[tokio::test]
async fn loadgen_plots_its_latency_distributions() {
    let dir = std::env::temp_dir().join(format!("colloquy-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.svg");
    let path_arg = path.to_str().unwrap().to_string();
    let (stdout, stderr, code) = run(
        "loadgen",
        &[
            "--sessions",
            "8",
            "--turns",
            "2",
            "--cancel-after-tokens",
            "3",
            "--json",
            "--plot",
            &path_arg,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stdout} {stderr}");
    // A cancelled turn's latency report comes after its end by design: it
    // is not a stale event (it was counted as one, 3 per session).
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON report");
    assert_eq!(report["stale_events_after_cancel"], 0, "{report}");
    assert_eq!(report["invariants"]["stale_events"], 0, "{report}");
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(
        svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
        "{svg}"
    );
    let texts = svg_texts(&svg);
    for series in ["time to first token", "cancel → TurnFinished"] {
        let at = texts
            .iter()
            .position(|t| t == series)
            .unwrap_or_else(|| panic!("{series} not drawn: {texts:?}"));
        // Its row: the sample count, then p50, p90, p99 with their values.
        let row = &texts[at + 1..at + 5];
        assert!(row[0].ends_with("samples"), "{row:?}");
        for (label, text) in ["p50 ", "p90 ", "p99 "].iter().zip(&row[1..]) {
            assert!(
                text.starts_with(label) && text.len() > 4,
                "{series}: {row:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
