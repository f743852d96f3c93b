//! A local OTLP/HTTP receiver for the tests (included with `#[path]`): it
//! decodes `ExportTraceServiceRequest`s with `opentelemetry-proto` and keeps
//! every span, flattened to what the tests check.
#![allow(dead_code)] // each test crate uses a different subset

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;
use tokio::sync::watch;

/// One received span.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub name: String,
    /// OTLP's kind: 1 internal, 2 server, 3 client.
    pub kind: i32,
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// 2 is error.
    pub status_code: i32,
    pub attributes: BTreeMap<String, String>,
    pub events: Vec<String>,
    /// The resource's `service.name`.
    pub service: String,
}

impl ReceivedSpan {
    /// An attribute's value as text (arrays as `a,b`).
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// An integer attribute.
    pub fn int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(|v| v.parse().ok())
    }
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(&Some(v.clone())))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[derive(Clone)]
struct Shared {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    count: Arc<watch::Sender<usize>>,
}

/// The receiver: its traces URL and what it received.
pub struct OtlpReceiver {
    pub traces_url: String,
    pub base_url: String,
    shared: Shared,
}

impl OtlpReceiver {
    /// Listens on 127.0.0.1 (a free port).
    pub async fn start() -> Self {
        let shared = Shared {
            spans: Arc::default(),
            count: Arc::new(watch::channel(0).0),
        };
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            traces_url: format!("http://{addr}/v1/traces"),
            base_url: format!("http://{addr}"),
            shared,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.spans.lock().unwrap().clone()
    }

    /// Waits until a span satisfies `done` (bounded by `guard`).
    pub async fn until(
        &self,
        guard: std::time::Duration,
        mut done: impl FnMut(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let mut rx = self.shared.count.subscribe();
        tokio::time::timeout(guard, async {
            loop {
                let spans = self.spans();
                if done(&spans) {
                    return spans;
                }
                rx.changed().await.unwrap();
            }
        })
        .await
        .unwrap_or_else(|_| panic!("spans did not arrive: {:#?}", self.spans()))
    }
}

async fn receive(State(shared): State<Shared>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
    let mut received = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                received.push(ReceivedSpan {
                    name: span.name,
                    kind: span.kind,
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    start_ns: span.start_time_unix_nano,
                    end_ns: span.end_time_unix_nano,
                    status_code: span.status.map_or(0, |s| s.code),
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| (kv.key.clone(), text(&kv.value)))
                        .collect(),
                    events: span.events.into_iter().map(|e| e.name).collect(),
                    service: service.clone(),
                });
            }
        }
    }
    let n = {
        let mut spans = shared.spans.lock().unwrap();
        spans.extend(received);
        spans.len()
    };
    shared.count.send_replace(n);
    // An empty ExportTraceServiceResponse.
    Vec::new()
}
