//! Headless Chromium for tests, driven over the DevTools protocol.
//!
//! ```ignore
//! #[path = "support/chromium.rs"]
//! mod chromium;
//!
//! let browser = chromium::Chromium::launch(&url, &wav).await?;
//! browser.wait_for("window.colloquy.state === 'listening'", Duration::from_secs(30)).await?;
//! let data = browser.evaluate("window.colloquy").await?;
//! browser.screenshot(Path::new("target/page.png")).await?;
//! ```
//!
//! The browser runs with a fake microphone that plays a WAV file (once: the
//! path gets Chromium's `%noloop` suffix, without which the file loops for
//! as long as the capture runs), auto-granted media permissions and autoplay
//! without a user gesture. `$CHROMIUM` overrides `/usr/bin/chromium`.
//! Dropping a [`Chromium`] kills its whole process group and removes its
//! temporary profile.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools command may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long Chromium may take to start and open its DevTools port.
const START_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A headless Chromium showing one page.
pub struct Chromium {
    child: Child,
    profile: PathBuf,
    next_id: AtomicU64,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    console: Arc<Mutex<Vec<String>>>,
    io: JoinHandle<()>,
}

impl Chromium {
    /// Starts Chromium with `fake_mic_wav` as its microphone (played once,
    /// then silence) and navigates its page to `url`.
    pub async fn launch(url: &str, fake_mic_wav: &Path) -> Result<Chromium, String> {
        Self::launch_with(url, fake_mic_wav, false).await
    }

    /// Like [`launch`](Self::launch), with the WAV file looping forever.
    pub async fn launch_looping(url: &str, fake_mic_wav: &Path) -> Result<Chromium, String> {
        Self::launch_with(url, fake_mic_wav, true).await
    }

    async fn launch_with(url: &str, fake_mic_wav: &Path, looped: bool) -> Result<Chromium, String> {
        let binary = std::env::var_os("CHROMIUM")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
        if !binary.is_file() {
            return Err(format!(
                "chromium not found: apt-get install chromium (looked for {}; set $CHROMIUM to override)",
                binary.display()
            ));
        }
        let wav = fake_mic_wav
            .canonicalize()
            .map_err(|e| format!("fake microphone file {}: {e}", fake_mic_wav.display()))?;
        let wav = wav
            .to_str()
            .ok_or("the fake microphone path is not UTF-8")?;
        if wav.contains('%') {
            return Err(format!(
                "the fake microphone path must not contain '%': {wav}"
            ));
        }
        let profile = fresh_profile_dir()?;
        let log_path = profile.join("chromium.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("creating {}: {e}", log_path.display()))?;

        let mut command = Command::new(&binary);
        command
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                "--autoplay-policy=no-user-gesture-required",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!(
                "--use-file-for-fake-audio-capture={wav}{}",
                if looped { "" } else { "%noloop" }
            ))
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group, so Drop can end the renderers and helpers too.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&profile);
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    format!(
                        "chromium not found: apt-get install chromium ({}: {e})",
                        binary.display()
                    )
                } else {
                    format!("cannot start {}: {e}", binary.display())
                });
            }
        };
        // From here on, Drop cleans up whatever fails.
        let mut browser = Starting {
            child: Some(child),
            profile: profile.clone(),
        };

        let port = browser.devtools_port().await?;
        let ws_url = browser.page_target(port).await?;
        let (socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .map_err(|e| format!("connecting to the page's DevTools socket {ws_url}: {e}"))?;

        let (out, out_rx) = mpsc::unbounded_channel();
        let pending: Pending = Arc::default();
        let console = Arc::new(Mutex::new(Vec::new()));
        let io = tokio::spawn(run_socket(socket, out_rx, pending.clone(), console.clone()));
        let chromium = Chromium {
            child: browser.child.take().expect("the child is still owned"),
            profile,
            next_id: AtomicU64::new(1),
            out,
            pending,
            console,
            io,
        };
        chromium.call("Runtime.enable", json!({})).await?;
        chromium.call("Page.enable", json!({})).await?;
        chromium.navigate(url).await?;
        Ok(chromium)
    }

    /// Navigates the page to `url` and waits for it to load.
    pub async fn navigate(&self, url: &str) -> Result<(), String> {
        let r = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(e) = r.get("errorText").and_then(Value::as_str) {
            return Err(format!("navigating to {url}: {e}"));
        }
        self.wait_for(
            "document.readyState === 'complete' && location.href !== 'about:blank'",
            START_TIMEOUT,
        )
        .await
        .map(drop)
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value
    /// as JSON (`null` for `undefined` and values JSON cannot hold).
    pub async fn evaluate(&self, js: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": js, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(ex) = r.get("exceptionDetails") {
            return Err(format!("`{js}` threw: {}", describe_exception(ex)));
        }
        Ok(r.pointer("/result/value").cloned().unwrap_or(Value::Null))
    }

    /// Polls `js_condition` until its value is truthy and returns that value.
    /// The timeout is for failures only: make it generous.
    pub async fn wait_for(&self, js_condition: &str, timeout: Duration) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.evaluate(js_condition).await {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => format!("last value: {v}"),
                Err(e) => format!("last error: {e}"),
            };
            if Instant::now() >= deadline {
                let console = self.console_messages();
                let tail = &console[console.len().saturating_sub(10)..];
                return Err(format!(
                    "timed out after {timeout:?} waiting for `{js_condition}` ({last}); page console: {tail:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a PNG screenshot of the page to `path` (creating its folder).
    pub async fn screenshot(&self, path: &Path) -> Result<(), String> {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let data = r
            .get("data")
            .and_then(Value::as_str)
            .ok_or("the screenshot has no data")?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("the screenshot is not base64: {e}"))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        }
        std::fs::write(path, png).map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// The page's console messages and uncaught exceptions so far.
    pub fn console_messages(&self) -> Vec<String> {
        self.console
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Sends one DevTools command to the page and returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        let msg = json!({ "id": id, "method": method, "params": params }).to_string();
        if self.out.send(Message::Text(msg.into())).is_err() {
            return Err(format!("{method}: the DevTools connection is closed"));
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(r)) => r.map_err(|e| format!("{method}: {e}")),
            Ok(Err(_)) => Err(format!("{method}: the DevTools connection is closed")),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&id);
                Err(format!("{method}: no answer within {CALL_TIMEOUT:?}"))
            }
        }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        self.io.abort();
        kill_group(&mut self.child);
        remove_profile(&self.profile);
    }
}

/// A browser being started: cleans up if launching fails part-way.
struct Starting {
    child: Option<Child>,
    profile: PathBuf,
}

impl Starting {
    /// Waits for `DevToolsActivePort` (first line: the port).
    async fn devtools_port(&mut self) -> Result<u16, String> {
        let file = self.profile.join("DevToolsActivePort");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(Ok(port)) = text.lines().next().map(|l| l.trim().parse::<u16>())
            {
                return Ok(port);
            }
            let child = self.child.as_mut().expect("the child is still owned");
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "chromium exited at start ({status}): {}",
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "chromium opened no DevTools port within {START_TIMEOUT:?}: {}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The page target's `webSocketDebuggerUrl`, from `/json/list`.
    async fn page_target(&self, port: u16) -> Result<String, String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let last = match http_get(port, "/json/list").await {
                Ok(body) => match serde_json::from_str::<Value>(&body) {
                    Ok(Value::Array(targets)) => {
                        let page = targets.iter().find(|t| t["type"] == "page");
                        if let Some(url) = page.and_then(|t| t["webSocketDebuggerUrl"].as_str()) {
                            return Ok(url.to_string());
                        }
                        format!("no page target in {body}")
                    }
                    _ => format!("unexpected /json/list answer: {body}"),
                },
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!("finding the page target on port {port}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Starting {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_group(&mut child);
            remove_profile(&self.profile);
        }
    }
}

/// Ends the browser and everything it started (its process group).
fn kill_group(child: &mut Child) {
    let group = format!("-{}", child.id());
    let killed = Command::new("kill")
        .args(["-KILL", "--", &group])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !killed {
        let _ = child.kill();
    }
    let _ = child.wait();
}

fn remove_profile(profile: &Path) {
    // A helper that outlived the group kill for a moment may still write.
    for _ in 0..20 {
        if std::fs::remove_dir_all(profile).is_ok() || !profile.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn fresh_profile_dir() -> Result<PathBuf, String> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = std::env::temp_dir().join(format!(
        "colloquy-chromium-{}-{}-{nanos}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    Ok(dir)
}

/// A plain HTTP/1.1 GET on 127.0.0.1: the body.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting to 127.0.0.1:{port}: {e}"))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            raw.extend_from_slice(&buf[..n]);
            if complete_body(&raw).is_some() {
                return Ok(());
            }
        }
    });
    read.await
        .map_err(|_| format!("GET {path}: no answer"))?
        .map_err(|e| format!("GET {path}: {e}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or(format!("GET {path}: malformed answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("GET {path}: {}", head.lines().next().unwrap_or("")));
    }
    Ok(body.to_string())
}

/// The body once `raw` holds all of it per its Content-Length.
fn complete_body(raw: &[u8]) -> Option<&[u8]> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    (raw.len() >= end + len).then(|| &raw[end..end + len])
}

/// The DevTools socket: commands out, their answers to their callers,
/// console messages collected; events otherwise ignored.
async fn run_socket(
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    mut out: mpsc::UnboundedReceiver<Message>,
    pending: Pending,
    console: Arc<Mutex<Vec<String>>>,
) {
    let (mut tx, mut rx) = socket.split();
    loop {
        tokio::select! {
            msg = out.recv() => match msg {
                Some(m) => if tx.send(m).await.is_err() { break },
                None => break,
            },
            msg = rx.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                    if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        let waiter = pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                        if let Some(waiter) = waiter {
                            let r = match v.get("error") {
                                Some(e) => Err(format!("DevTools error: {e}")),
                                None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
                            };
                            let _ = waiter.send(r);
                        }
                    } else if let Some(line) = console_line(&v) {
                        console.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    // Dropping the waiters tells every caller the connection is gone.
    pending.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

fn console_line(event: &Value) -> Option<String> {
    let params = event.get("params")?;
    match event.get("method")?.as_str()? {
        "Runtime.consoleAPICalled" => {
            let args: Vec<String> = params["args"]
                .as_array()?
                .iter()
                .map(|a| match a.get("value") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => a["description"].as_str().unwrap_or("?").to_string(),
                })
                .collect();
            Some(format!(
                "console.{}: {}",
                params["type"].as_str().unwrap_or("log"),
                args.join(" ")
            ))
        }
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            describe_exception(&params["exceptionDetails"])
        )),
        _ => None,
    }
}

fn describe_exception(ex: &Value) -> String {
    ex.pointer("/exception/description")
        .and_then(Value::as_str)
        .or_else(|| ex.get("text").and_then(Value::as_str))
        .unwrap_or("an exception")
        .to_string()
}

/// JavaScript truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
