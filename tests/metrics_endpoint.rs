//! `voice_server --metrics ADDR`: a phone call through the server, then a
//! scrape of `/metrics` that parses as the Prometheus text format and holds
//! the documented names.
#![cfg(all(feature = "calls", feature = "espeak", feature = "pocketsphinx"))]

#[path = "support/bin.rs"]
mod bin;

use std::process::Stdio;
use std::time::Duration;

use futures_util::SinkExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const START: &str = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZm","start":{"accountSid":"AC","streamSid":"MZm","callSid":"CALLM","tracks":["inbound"],"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1},"customParameters":{}}}"#;

/// `GET /metrics` over a plain socket: the status line and the body.
async fn scrape(addr: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Checks every line is a comment (`# HELP`, `# TYPE name kind`) or a
/// sample `name{labels} value`; returns the sample names.
fn parse_exposition(body: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in body.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(_), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                panic!("bad TYPE line {line:?}");
            };
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "{line:?}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line:?}"
            );
        }
        names.push(name.to_string());
    }
    names
}

#[tokio::test]
async fn metrics_scrape_after_a_call_as_the_prometheus_text_format() {
    let mut child = tokio::process::Command::new(bin::example_binary("voice_server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--json",
            "--stt",
            "pocketsphinx",
            "--tts",
            "espeak",
        ])
        .env_remove("OPENAI_API_KEY")
        .env_remove("DEEPGRAM_API_KEY")
        .env_remove("ELEVENLABS_API_KEY")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let listening = loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("voice_server printed nothing");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "listening" {
            break v;
        }
    };
    let addr = listening["addr"].as_str().unwrap().to_string();
    let metrics_url = listening["metrics"].as_str().unwrap();
    let metrics = metrics_url
        .strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap()
        .to_string();

    // One phone call: start, a second of silence, stop.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/twilio"))
        .await
        .unwrap();
    ws.send(Message::text(
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
    ))
    .await
    .unwrap();
    ws.send(Message::text(START)).await.unwrap();
    use base64::Engine as _;
    let silence = base64::engine::general_purpose::STANDARD.encode([0xffu8; 160]);
    for i in 0..50 {
        let media = format!(
            r#"{{"event":"media","sequenceNumber":"{}","streamSid":"MZm","media":{{"track":"inbound","chunk":"{}","timestamp":"{}","payload":"{silence}"}}}}"#,
            i + 2,
            i + 1,
            i * 20
        );
        ws.send(Message::text(media)).await.unwrap();
    }
    ws.send(Message::text(r#"{"event":"stop","sequenceNumber":"60","streamSid":"MZm","stop":{"accountSid":"AC","callSid":"CALLM"}}"#))
        .await
        .unwrap();
    // The call's end is printed once its session stopped.
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"call_ended\"") {
                return line;
            }
        }
        panic!("voice_server ended");
    })
    .await
    .expect("the call ends");
    assert!(ended.contains("CALLM"), "{ended}");

    let (status, body) = scrape(&metrics).await;
    assert!(status.contains(" 200 "), "{status}");
    let names = parse_exposition(&body);
    assert!(
        names.iter().any(|n| n == "colloquy_active_sessions"),
        "the session gauge after a call: {body}"
    );
    assert!(
        body.contains("# TYPE colloquy_active_sessions gauge"),
        "{body}"
    );
    child.kill().await.unwrap();
}
