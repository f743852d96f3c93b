//! A chain's metrics and spans: `colloquy_llm_fallbacks_total{from,to,reason}`,
//! `colloquy_llm_hedges_total{outcome}`, `colloquy_llm_hedge_cost_tokens_total`,
//! the breaker state gauge per provider, and an `llm_request` span per attempt
//! that names its provider.
//!
//! One test per binary: the metrics recorder is process-global.

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colloquy::context::ChatContext;
use colloquy::llm::{
    BreakerConfig, ChatClient, ChatRequest, Hedging, LlmOptions, OpenAiConfig, ProviderChain,
    ProviderSpec,
};
use colloquy::mock::{MockResponse, MockServer, sse_chunk};
use futures_util::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use serde_json::json;

fn name_and_labels(key: &metrics::Key) -> String {
    let mut s = key.name().to_string();
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    if !labels.is_empty() {
        s.push_str(&format!("{{{}}}", labels.join(",")));
    }
    s
}

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn drain(client: &ChatClient) {
    let mut ctx = ChatContext::new();
    ctx.add_user("Hello");
    let options = LlmOptions::new("m");
    let mut stream = client.stream(ChatRequest::new(&ctx, &options)).unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = stream.next().await {
            if ev.is_err() {
                break;
            }
        }
    })
    .await
    .expect("the stream ended");
}

#[tokio::test]
async fn chain_metrics_and_attempt_spans() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder of this binary");
    let logs = Buffer::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let down = MockServer::start(|_| MockResponse::error(500, "down"))
        .await
        .unwrap();
    let slow = MockServer::start(|_| {
        MockResponse::event_stream()
            .event(&sse_chunk(json!({"role": "assistant"}), None))
            .stall_with_keep_alives(Duration::from_millis(20))
    })
    .await
    .unwrap();
    let ok = MockServer::start(|_| MockResponse::text(&["fine"]))
        .await
        .unwrap();
    let spec = |s: &MockServer, label: &str| {
        ProviderSpec::new(OpenAiConfig::compatible(s.base_url())).with_label(label)
    };

    // A failure, then a fallback; a second failure opens the primary's breaker.
    let failing = ChatClient::with_chain(
        ProviderChain::new(spec(&down, "down"))
            .with_fallback(spec(&ok, "ok"))
            .with_breaker(BreakerConfig {
                failure_threshold: 2,
                cooldown: Duration::from_secs(600),
            }),
    )
    .unwrap();
    drain(&failing).await;
    drain(&failing).await;
    drain(&failing).await; // skipped: circuit open
    // A hedge that wins.
    let hedged = ChatClient::with_chain(
        ProviderChain::new(spec(&slow, "slow"))
            .with_fallback(spec(&ok, "ok"))
            .with_hedging(Hedging::After(Duration::from_millis(50))),
    )
    .unwrap();
    drain(&hedged).await;

    let values: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (name_and_labels(k.key()), v))
        .collect();
    let counter = |name: &str| match values.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name}: {other:?} in {:?}", values.keys()),
    };
    let gauge = |name: &str| match values.get(name) {
        Some(DebugValue::Gauge(g)) => g.into_inner(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        counter("colloquy_llm_fallbacks_total{from=down,reason=http,to=ok}"),
        2
    );
    assert_eq!(
        counter("colloquy_llm_fallbacks_total{from=down,reason=circuit_open,to=ok}"),
        1
    );
    assert_eq!(counter("colloquy_llm_hedges_total{outcome=started}"), 1);
    assert_eq!(counter("colloquy_llm_hedges_total{outcome=hedge_won}"), 1);
    assert!(counter("colloquy_llm_hedge_cost_tokens_total") > 0);
    assert_eq!(
        gauge("colloquy_llm_breaker_state{provider=down}"),
        2.0,
        "open"
    );
    assert_eq!(
        gauge("colloquy_llm_breaker_state{provider=ok}"),
        0.0,
        "closed"
    );

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for provider in ["down", "ok", "slow"] {
        assert!(
            logs.contains(&format!("llm_request{{provider={provider} ")),
            "an attempt span names {provider}: {logs}"
        );
    }
}
