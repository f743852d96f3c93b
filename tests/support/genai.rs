//! The GenAI metrics tests' shared part (included with `#[path]`): one
//! request that succeeds with usage and one that fails, then the recorded
//! histograms by name and labels.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, ChatRequest, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use futures_util::StreamExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// `name{k=v,…}` (labels sorted) → the recorded values.
pub type Recorded = HashMap<String, Vec<f64>>;

fn key(k: &metrics::Key) -> String {
    let mut labels: Vec<String> = k
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", k.name(), labels.join(","))
}

async fn drain(client: &ChatClient, model: &str) {
    let mut ctx = ChatContext::new();
    ctx.add_user("Hello");
    let options = LlmOptions::new(model);
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

/// Installs a recorder, makes one good request (`gpt-test`, usage 12 + 3)
/// and one refused (`gpt-refused`, 400), returns the histograms.
pub async fn run() -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().expect("first recorder of this binary");
    let server = MockServer::scripted(vec![
        MockResponse::event_stream()
            .tokens(&["Hi", " there"])
            .finish("stop", 12, 3),
        MockResponse::error(400, "bad request"),
    ])
    .await
    .unwrap();
    let client = ChatClient::with_config(
        OpenAiConfig::compatible(server.base_url()),
        ClientConfig::default(),
    )
    .unwrap();
    drain(&client, "gpt-test").await;
    drain(&client, "gpt-refused").await;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(k, _, _, v)| match v {
            DebugValue::Histogram(h) => Some((
                key(k.key()),
                h.into_iter().map(|x| x.into_inner()).collect(),
            )),
            _ => None,
        })
        .collect()
}

pub const OK: &str =
    "gen_ai.operation.name=chat,gen_ai.provider.name=openai,gen_ai.request.model=gpt-test";
