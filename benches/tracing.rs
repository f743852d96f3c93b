//! What tracing costs per token: one turn of 2,000 tokens (one unpaced
//! response from an in-process mock server) through a session, from
//! `send_text` to a subscriber holding `TurnFinished`, without and with a
//! [`Tracing`] exporting over OTLP to a local receiver. The difference of
//! the two per-turn times divided by 2,000 is the per-token overhead (the
//! spans themselves are per turn and per request, never per token).
//!
//! The per-event cost of the trace's tap alone, without the noise of a
//! whole turn: 1,000 events published on a bare bus, without and with a
//! [`BusTrace`] (the tap a traced session has). A bench cannot publish
//! tokens (only the runtime does), so the events are interim transcripts:
//! the same tap, lock and turn-timer path a token takes.
//!
//! `cargo bench --features otlp --bench tracing`

#[path = "../tests/support/otlp.rs"]
mod otlp_support;

use std::time::{Duration, Instant};

use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy_actors::SessionId;
use colloquy_actors::bus::SessionBus;
use colloquy_actors::bus::{BusReceiver, EventKind};
use colloquy_actors::telemetry::BusTrace;
use colloquy_actors::telemetry::otlp::OtlpTracing;
use colloquy_actors::{AgentSettings, SessionConfig, SessionHandle, Supervisor, SupervisorConfig};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const TOKENS: usize = 2000;

async fn until_finished(rx: &mut BusReceiver) {
    loop {
        if let Ok(ev) = rx.recv().await
            && matches!(ev.kind, EventKind::TurnFinished(_))
        {
            return;
        }
    }
}

/// One turn from an empty history (reset untimed), so every turn sends
/// the same request.
async fn one_turn(session: &SessionHandle, rx: &mut BusReceiver) -> Duration {
    session.replace_context(ChatContext::new()).await.unwrap();
    let started = Instant::now();
    session.send_text("go").unwrap();
    until_finished(rx).await;
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let words: Vec<String> = (0..TOKENS).map(|i| format!(" w{i}")).collect();
    let (_server, _receiver, otlp, supervisor, sessions) = rt.block_on(async {
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let body = MockResponse::event_stream()
            .tokens(&words)
            .finish("stop", 10, TOKENS as u64);
        let server = MockServer::start(move |_| body.clone()).await.unwrap();
        let receiver = otlp_support::OtlpReceiver::start().await;
        let otlp = OtlpTracing::to_endpoint("bench", &receiver.traces_url).unwrap();
        let supervisor = Supervisor::start(SupervisorConfig::default())
            .await
            .unwrap();
        let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
        let config = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("m")));
        let mut sessions = Vec::new();
        for (name, config) in [
            ("untraced", config.clone()),
            ("traced", config.with_tracing(otlp.tracing())),
        ] {
            let session = supervisor.start_session(name, config).await.unwrap();
            let rx = session.subscribe();
            sessions.push((name, session, rx));
        }
        (server, receiver, otlp, supervisor, sessions)
    });
    let mut group = c.benchmark_group("turn_of_2000_tokens");
    group.throughput(Throughput::Elements(TOKENS as u64));
    group.sample_size(30);
    for (name, session, rx) in sessions {
        let mut rx = rx;
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += one_turn(&session, &mut rx).await;
                    }
                    total
                })
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("bus_event_tap");
    group.throughput(Throughput::Elements(EVENTS as u64));
    let text: std::sync::Arc<str> = std::sync::Arc::from(" token");
    for traced in [false, true] {
        let name = if traced { "traced" } else { "untraced" };
        group.bench_function(name, |b| {
            let bus = SessionBus::new(SessionId::new("bench"), EVENTS + 8);
            let _trace = traced.then(|| BusTrace::attach(&bus, otlp.tracing()));
            b.iter(|| {
                for _ in 0..EVENTS {
                    bus.publish_user(EventKind::UserTranscript {
                        text: text.clone(),
                        is_final: false,
                        heard: None,
                    })
                    .unwrap();
                }
            })
        });
    }
    group.finish();
    otlp.flush().unwrap();
    rt.block_on(supervisor.shutdown());
}

const EVENTS: usize = 1000;

criterion_group!(benches, bench);
criterion_main!(benches);
