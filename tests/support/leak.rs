//! A leak watch for credentials (included with `#[path]`): distinctive fake
//! keys, a provider that echoes them in its refusals, and a trace-level log
//! capture, so a test can run a whole conversation and then ask whether any
//! key shows anywhere it looked (`Debug`, `Display`, events, log lines).
//!
//! Reusable by the cluster and span tests: [`LeakWatch::check`] takes any
//! text (a wire message, a checkpoint, an exported span) with a label.
#![allow(dead_code)] // each test crate uses a different subset

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use colloquy::mock::{MockResponse, MockServer, RecordedRequest};

/// The primary provider's key: `sk-`-shaped, as OpenAI's are.
pub const PRIMARY_KEY: &str = "sk-colloquy-leaktest-PRIMARY-7f3a9c";
/// The fallback provider's key: shaped like no known pattern, so only the
/// configured-value scrub can hide it.
pub const FALLBACK_KEY: &str = "zq81-FALLBACK-leaktest-44d0";
/// A gateway key sent as an `extra_headers` value.
pub const GATEWAY_KEY: &str = "gwk-leaktest-GATEWAY-91be";
/// A password in a base URL's user info.
pub const URL_PASSWORD: &str = "urlpass-leaktest-5c2e";

/// Every fake credential a leak test uses.
pub const ALL_KEYS: &[&str] = &[PRIMARY_KEY, FALLBACK_KEY, GATEWAY_KEY, URL_PASSWORD];

/// The text of the request's credentials as a careless provider echoes them.
pub fn echo_of(req: &RecordedRequest) -> String {
    format!(
        "Invalid API key: {} (gateway {}; you sent {})",
        req.header("authorization").unwrap_or("-"),
        req.header("x-gateway-key").unwrap_or("-"),
        req.header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("-"),
    )
}

/// A 401 whose JSON body echoes the request's key and gateway header.
pub fn echoing_401(req: &RecordedRequest) -> MockResponse {
    let body = serde_json::json!({"error": {
        "message": echo_of(req),
        "type": "invalid_request_error",
        "code": "invalid_api_key",
        "param": req.header("x-gateway-key"),
    }});
    MockResponse::raw(401, "application/json", body.to_string())
}

/// An event stream whose in-band `error` event echoes the request's key.
pub fn echoing_sse_error(req: &RecordedRequest) -> MockResponse {
    let body = serde_json::json!({"error": {"message": echo_of(req), "code": 401}});
    MockResponse::event_stream().event(&format!("event: error\ndata: {body}\n\n"))
}

/// A mock provider refusing every request with [`echoing_401`].
pub async fn refusing_provider() -> MockServer {
    MockServer::start(echoing_401).await.unwrap()
}

/// A `MakeWriter` appending every log line to one buffer.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// What a leak test watched: the log (every target, trace level, span
/// fields included) and whatever else it hands to [`LeakWatch::check`].
pub struct LeakWatch {
    log: Capture,
    keys: Vec<String>,
}

impl LeakWatch {
    /// Installs the process-wide trace-level capture (once per test binary)
    /// and watches for `keys`.
    pub fn install(keys: &[&str]) -> Self {
        static LOG: OnceLock<Capture> = OnceLock::new();
        let log = LOG
            .get_or_init(|| {
                let log = Capture::default();
                let subscriber = tracing_subscriber::fmt()
                    .with_max_level(tracing::Level::TRACE)
                    .with_ansi(false)
                    .with_writer(log.clone())
                    .finish();
                tracing::subscriber::set_global_default(subscriber)
                    .expect("no other subscriber in this test binary");
                log
            })
            .clone();
        Self {
            log,
            keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&self.log.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// Panics, naming `what`, if any watched key (or a recognisable part of
    /// one: its last 10 characters) is in `text`.
    pub fn check(&self, what: &str, text: &str) {
        for key in &self.keys {
            let tail = &key[key.len().saturating_sub(10)..];
            assert!(
                !text.contains(key.as_str()) && !text.contains(tail),
                "{what} shows the key {key:?}:\n{text}"
            );
        }
    }

    /// [`check`](Self::check) on the whole log, which must not be empty
    /// (the capture works).
    pub fn check_log(&self) {
        let log = self.log();
        assert!(
            !log.is_empty(),
            "nothing was logged: the capture is not installed"
        );
        self.check("the trace-level log", &log);
    }
}
