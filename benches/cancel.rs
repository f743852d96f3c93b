//! Cancel latency through the actor runtime: a session streams (the server
//! stalls after the first token, like a slow model), then the time from
//! `cancel()` (or a barge-in `user_speech_started()`) to a subscriber holding
//! `TurnFinished(Cancelled)` is measured, and (`cancel_to_server_close`) the
//! time from `cancel()` to the server observing the connection close. Setup (a
//! new turn and its first token) is not timed.
//!
//! A second session in confirmed mode (pause at speech onset) measures the
//! turn-taking paths: `user_speech_started()` → `PlaybackPaused` in a
//! subscriber, and a confirming interim ("wait stop") → `TurnFinished(Cancelled)`.
//!
//! `cargo bench --bench cancel`

use std::time::{Duration, Instant};

use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::bus::{BusReceiver, EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, InterruptionPolicy, SessionConfig, SessionHandle, Supervisor, SupervisorConfig,
};
use criterion::{Criterion, criterion_group, criterion_main};

async fn until(rx: &mut BusReceiver, pred: impl Fn(&EventKind) -> bool) {
    loop {
        if let Ok(ev) = rx.recv().await
            && pred(&ev.kind)
        {
            return;
        }
    }
}

/// From `cancel()` to the server reading EOF on the abandoned response.
async fn one_close(
    session: &SessionHandle,
    rx: &mut BusReceiver,
    closes: &mut tokio::sync::watch::Receiver<u64>,
) -> Duration {
    session.send_text("go").unwrap();
    until(rx, |k| matches!(k, EventKind::Token(_))).await;
    let before = *closes.borrow_and_update();
    let start = Instant::now();
    session.cancel().unwrap();
    closes.wait_for(|n| *n > before).await.unwrap();
    start.elapsed()
}

async fn one(session: &SessionHandle, rx: &mut BusReceiver, barge_in: bool) -> Duration {
    session.send_text("go").unwrap();
    until(rx, |k| matches!(k, EventKind::Token(_))).await;
    let start = Instant::now();
    if barge_in {
        session.user_speech_started();
    } else {
        session.cancel().unwrap();
    }
    until(rx, |k| *k == EventKind::TurnFinished(TurnEnd::Cancelled)).await;
    start.elapsed()
}

/// Confirmed mode: speech pauses (`pause`), or a confirming interim cuts.
async fn one_confirmed(session: &SessionHandle, rx: &mut BusReceiver, pause: bool) -> Duration {
    session.send_text("go").unwrap();
    until(rx, |k| matches!(k, EventKind::Token(_))).await;
    if pause {
        let start = Instant::now();
        session.user_speech_started();
        until(rx, |k| matches!(k, EventKind::PlaybackPaused { .. })).await;
        let took = start.elapsed();
        session.user_speech_ended();
        session.cancel().unwrap();
        until(rx, |k| *k == EventKind::TurnFinished(TurnEnd::Cancelled)).await;
        return took;
    }
    session.user_speech_started();
    until(rx, |k| matches!(k, EventKind::PlaybackPaused { .. })).await;
    let start = Instant::now();
    session.user_transcript("wait stop", false);
    until(rx, |k| *k == EventKind::TurnFinished(TurnEnd::Cancelled)).await;
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, sup, session, confirmed) = rt.block_on(async {
        let server =
            MockServer::start_with(|_| MockResponse::text_then_stall(&["Hello"]), false, 0)
                .await
                .unwrap();
        let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
        let sup = Supervisor::start(SupervisorConfig::default())
            .await
            .unwrap();
        let mut settings = AgentSettings::new(LlmOptions::new("bench"));
        settings.interruption = InterruptionPolicy::immediate();
        settings.max_context_items = Some(8);
        let session = sup
            .start_session(
                "bench",
                SessionConfig::new(client.clone(), settings.clone()),
            )
            .await
            .unwrap();
        settings.interruption = InterruptionPolicy {
            min_pause: Duration::ZERO,
            resume_timeout: Duration::from_secs(60),
            ..InterruptionPolicy::default()
        };
        let confirmed = sup
            .start_session("bench-confirmed", SessionConfig::new(client, settings))
            .await
            .unwrap();
        (server, sup, session, confirmed)
    });
    let mut group = c.benchmark_group("cancel_to_turn_finished");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(4));
    for (name, barge_in) in [("cancel", false), ("barge_in_speech_started", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut rx = session.subscribe();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one(&session, &mut rx, barge_in).await;
                    }
                    total
                })
            })
        });
    }
    group.bench_function("cancel_to_server_close", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut rx = session.subscribe();
                let mut closes = server.disconnects();
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += one_close(&session, &mut rx, &mut closes).await;
                }
                total
            })
        })
    });
    for (name, pause) in [
        ("confirmed_speech_started_to_paused", true),
        ("confirmed_interim_to_cut", false),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut rx = confirmed.subscribe();
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_confirmed(&confirmed, &mut rx, pause).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();
    rt.block_on(sup.shutdown());
}

criterion_group!(benches, bench);
criterion_main!(benches);
