//! `--metrics ADDR`: the process's metrics as a Prometheus scrape endpoint
//! (`GET /metrics`, the text format), through `metrics-exporter-prometheus`.
//! Histograms (all in seconds) get the buckets documented in
//! docs/metrics.md, fine enough for the sub-millisecond cancel and pause
//! paths and wide enough for a model's first token.
#![allow(dead_code)]

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Seconds: 100 µs … 30 s.
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// Tokens (the GenAI conventions' recommended boundaries): 1 … 4 194 304.
pub const TOKEN_BUCKETS: [f64; 12] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// Installs the Prometheus recorder as the process's and serves it on
/// `addr` (port 0: any); returns where.
pub async fn serve(addr: SocketAddr) -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS)?
        // The GenAI conventions' metrics (seconds, and tokens).
        .set_buckets_for_metric(Matcher::Suffix(".duration".into()), &BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("time_to_first_chunk".into()), &BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("token.usage".into()), &TOKEN_BUCKETS)?
        .set_buckets_for_metric(Matcher::Suffix("_tokens".into()), &TOKEN_BUCKETS)?
        .install_recorder()?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let handle = handle.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    handle.render(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(bound)
}
