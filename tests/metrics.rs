//! The runtime's metrics, read through metrics-util's debugging recorder:
//! time to first token, tokens, turns by end, cancel latency, usage (with the
//! estimate of a cancelled turn), active sessions and tool latency.
//!
//! One test per binary: the recorder is process-global.

use std::collections::HashMap;
use std::time::Duration;

use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{BusReceiver, EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, SessionConfig, Supervisor, SupervisorConfig, Tool, ToolRegistry,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

fn name_and_labels(key: &metrics::Key) -> String {
    let mut s = key.name().to_string();
    for l in key.labels() {
        s.push_str(&format!("{{{}={}}}", l.key(), l.value()));
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_metrics_are_recorded() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("first recorder of this test binary");

    let server = MockServer::start(|req| {
        let last = req.last_message();
        if last["role"] == "tool" {
            MockResponse::text(&["Done", "."])
        } else if last["content"] == "use the tool" {
            MockResponse::tool_calls(&[("c1", "ping", "{}")])
        } else if last["content"] == "stall" {
            MockResponse::text_then_stall(&["Partial answer"])
        } else {
            MockResponse::text(&["Hello", " world"])
        }
    })
    .await
    .unwrap();
    let client = ChatClient::new(OpenAiConfig::compatible(server.base_url())).unwrap();
    let sup = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let tools = ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("ping", "Ping"),
        |_| async { Ok("pong".to_string()) },
    ));
    let session = sup
        .start_session(
            "m1",
            SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock")))
                .with_tools(tools),
        )
        .await
        .unwrap();
    let mut rx = session.subscribe();
    async fn wait_for(rx: &mut BusReceiver, pred: impl Fn(&EventKind) -> bool) -> EventKind {
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Ok(ev) = rx.recv().await
                    && pred(&ev.kind)
                {
                    return ev.kind;
                }
            }
        })
        .await
        .unwrap()
    }
    let is_end = |k: &EventKind| matches!(k, EventKind::TurnFinished(_));

    session.send_text("hi").unwrap();
    assert_eq!(
        wait_for(&mut rx, is_end).await,
        EventKind::TurnFinished(TurnEnd::Stop)
    );
    session.send_text("use the tool").unwrap();
    assert_eq!(
        wait_for(&mut rx, is_end).await,
        EventKind::TurnFinished(TurnEnd::Stop)
    );
    session.send_text("stall").unwrap();
    wait_for(&mut rx, |k| matches!(k, EventKind::Token(_))).await;
    session.cancel().unwrap();
    assert_eq!(
        wait_for(&mut rx, is_end).await,
        EventKind::TurnFinished(TurnEnd::Cancelled)
    );

    // The commit of the cancelled turn runs in the actor after TurnFinished is
    // published; a context read is queued behind it.
    session.context().await.unwrap();

    let snapshot: HashMap<String, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (name_and_labels(k.key()), v))
        .collect();
    let counter = |name: &str| match snapshot.get(name) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!(
            "{name}: {other:?}\nall: {:?}",
            snapshot.keys().collect::<Vec<_>>()
        ),
    };
    let samples = |name: &str| match snapshot.get(name) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!(
            "{name}: {other:?}\nall: {:?}",
            snapshot.keys().collect::<Vec<_>>()
        ),
    };
    assert_eq!(counter("colloquy_turns_total{end=stop}"), 2);
    assert_eq!(counter("colloquy_turns_total{end=cancelled}"), 1);
    assert_eq!(samples("colloquy_cancel_latency_seconds"), 1);
    assert_eq!(
        samples("colloquy_time_to_first_token_seconds"),
        2,
        "turns 1 and 3 spoke in round 0"
    );
    assert_eq!(counter("colloquy_tokens_total"), 5);
    assert_eq!(
        counter("colloquy_usage_estimated_total"),
        1,
        "the cancelled turn's usage is estimated"
    );
    assert!(counter("colloquy_usage_prompt_tokens_total") >= 40);
    assert_eq!(samples("colloquy_tool_duration_seconds{outcome=ok}"), 1);
    assert_eq!(counter("colloquy_llm_requests_total"), 4);
    assert!(samples("colloquy_turn_duration_seconds") >= 2);
    match snapshot.get("colloquy_active_sessions") {
        Some(DebugValue::Gauge(g)) => assert_eq!(g.0, 1.0),
        other => panic!("active sessions: {other:?}"),
    }
    sup.shutdown().await;
}
