//! `loadgen --nats URL --sessions 0 --idle-sessions N --nats-monitor URL`:
//! what owning idle sessions costs the cluster. N sessions are placed on the
//! workers and left idle; after `--idle-settle-secs` the NATS server's
//! monitoring endpoint (`nats-server -m 8222`, `/jsz?streams=true`) is read,
//! and again `--idle-secs` later. The summary gives, per second over that
//! window, the writes of each key-value bucket (the growth of its stream's
//! last sequence: every put, update, delete or purge is one message) and the
//! JetStream API requests (reads, watches and writes alike). The sessions are
//! closed at the end.
//!
//! Why the server's figures: they count every worker's store operations,
//! whatever the version of the workers, so the same command measures the
//! cluster before and after a change of the workers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use colloquy_actors::cluster::{
    ClusterClient, NatsOptions, RemoteConfig, SessionSpec, connect_with,
};
use futures_util::StreamExt;
use serde_json::{Value, json};

/// What the idle measurement needs of the command line.
pub(crate) struct IdleArgs {
    pub(crate) nats: String,
    pub(crate) login: NatsOptions,
    pub(crate) sessions: usize,
    /// The server's monitoring endpoint (`http://127.0.0.1:8222`).
    pub(crate) monitor: String,
    /// Seconds between the placements and the first sample.
    pub(crate) settle_secs: u64,
    /// Seconds between the two samples.
    pub(crate) window_secs: u64,
    pub(crate) json: bool,
}

/// One reading of `/jsz`: the last sequence of each stream, and the API total.
struct Sample {
    at: Instant,
    last_seq: BTreeMap<String, u64>,
    api_total: u64,
}

async fn sample(http: &reqwest::Client, monitor: &str) -> Result<Sample, String> {
    let url = format!("{}/jsz?streams=true", monitor.trim_end_matches('/'));
    let bytes = http
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .bytes()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let body: Value = serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))?;
    let mut last_seq = BTreeMap::new();
    for account in body["account_details"].as_array().into_iter().flatten() {
        for stream in account["stream_detail"].as_array().into_iter().flatten() {
            if let (Some(name), Some(seq)) = (
                stream["name"].as_str(),
                stream["state"]["last_seq"].as_u64(),
            ) {
                last_seq.insert(name.to_string(), seq);
            }
        }
    }
    Ok(Sample {
        at: Instant::now(),
        last_seq,
        api_total: body["api"]["total"].as_u64().unwrap_or(0),
    })
}

/// Places the sessions, measures the window, closes them, prints the summary.
pub(crate) async fn run(args: IdleArgs) -> Result<(), Box<dyn std::error::Error>> {
    let nats = connect_with(&args.nats, "loadgen-idle", &args.login).await?;
    let client = ClusterClient::with_config(
        nats,
        RemoteConfig {
            request_timeout: Duration::from_secs(20),
            placement_timeout: Duration::from_secs(10),
            ..RemoteConfig::default()
        },
    )?;
    let http = reqwest::Client::new();
    // Fails early on a wrong --nats-monitor.
    sample(&http, &args.monitor).await?;
    let run_id = std::process::id();
    let placed: Vec<_> = futures_util::stream::iter(0..args.sessions)
        .map(|i| {
            let client = client.clone();
            async move {
                client
                    .place(format!("idle-{run_id}-{i}"), SessionSpec::default())
                    .await
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut sessions = Vec::with_capacity(placed.len());
    for p in placed {
        sessions.push(p?);
    }
    tokio::time::sleep(Duration::from_secs(args.settle_secs)).await;
    let first = sample(&http, &args.monitor).await?;
    tokio::time::sleep(Duration::from_secs(args.window_secs)).await;
    let second = sample(&http, &args.monitor).await?;
    let secs = second.at.duration_since(first.at).as_secs_f64().max(1e-9);
    let per_s = |a: u64, b: u64| ((b.saturating_sub(a)) as f64 / secs * 10.0).round() / 10.0;
    let mut writes = serde_json::Map::new();
    let mut kv_total = 0.0;
    for (name, seq) in &second.last_seq {
        if let Some(bucket) = name.strip_prefix("KV_") {
            let rate = per_s(first.last_seq.get(name).copied().unwrap_or(0), *seq);
            kv_total += rate;
            writes.insert(bucket.to_string(), json!(rate));
        }
    }
    let closed: Vec<_> = futures_util::stream::iter(sessions)
        .map(|s| async move { s.close().await })
        .buffer_unordered(32)
        .collect()
        .await;
    let close_errors = closed.iter().filter(|r| r.is_err()).count();
    let summary = json!({
        "idle_sessions": args.sessions,
        "window_s": (secs * 10.0).round() / 10.0,
        "kv_writes_per_s": writes,
        "kv_writes_per_s_total": (kv_total * 10.0).round() / 10.0,
        "js_api_requests_per_s": per_s(first.api_total, second.api_total),
        "close_errors": close_errors,
    });
    if args.json {
        println!("{summary}");
    } else {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    Ok(())
}
