//! OpenTelemetry traces of a scripted conversation, exported over OTLP
//! HTTP/protobuf to a local receiver that decodes them with
//! `opentelemetry-proto`: a turn with a tool call served by a fallback, then
//! a turn the caller barges into. The span tree, kinds, parents and the
//! GenAI attributes are checked; the opt-in variable's names; and no
//! exporter at all when no endpoint is configured.

#[path = "support/otlp.rs"]
mod otlp_support;
#[path = "support/session.rs"]
mod support;

use std::time::Duration;

use colloquy::llm::{ChatClient, LlmOptions, OpenAiConfig, ProviderChain, ProviderSpec};
use colloquy::mock::{MockGate, MockResponse, MockServer, RecordedRequest};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::speech::{PacedTextOutput, Speaker, SttEvent};
use colloquy_actors::telemetry::otlp::OtlpTracing;
use colloquy_actors::{
    AgentSettings, SessionConfig, Supervisor, SupervisorConfig, Tool, ToolRegistry,
};
use otlp_support::{OtlpReceiver, ReceivedSpan};
use support::{GUARD, next_matching};

const STORY: &[&str] = &[
    "Once ",
    "upon ",
    "a ",
    "time. ",
    "There ",
    "was ",
    "a ",
    "lighthouse. ",
    "Its ",
    "keeper ",
    "counted ",
    "waves. ",
    "Every ",
    "night ",
    "he ",
    "wrote ",
    "them ",
    "down. ",
    "For ",
    "forty ",
    "years ",
    "he ",
    "never ",
    "missed ",
    "one. ",
    "Then ",
    "came ",
    "the ",
    "storm.",
];

fn last_user_text(req: &RecordedRequest) -> String {
    req.json()["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn has_tool_output(req: &RecordedRequest) -> bool {
    req.json()["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "tool"))
}

/// The fallback: a weather tool call and its answer; a long, paced story.
async fn fallback_server() -> MockServer {
    let gate = MockGate::new();
    MockServer::start(move |req| {
        let said = last_user_text(req);
        if said.contains("weather") && !has_tool_output(req) {
            MockResponse::tool_calls(&[("call_1", "weather", "{\"city\":\"Paris\"}")])
        } else if said.contains("weather") {
            MockResponse::text(&["Sunny ", "and ", "mild."])
        } else if said.contains("story") {
            // Its first sentences, then nothing until the caller cuts it
            // (the gate never opens): generation is in flight at the cut.
            MockResponse::event_stream()
                .tokens(&STORY[..12])
                .wait_for(&gate)
                .tokens(&STORY[12..])
                .finish("stop", 30, 29)
        } else {
            MockResponse::text(&["Okay."])
        }
    })
    .await
    .unwrap()
}

fn weather_tool() -> ToolRegistry {
    ToolRegistry::new().with_tool(Tool::new(
        ToolDefinition::free_form("weather", "The weather in a city"),
        |_| async { Ok("sunny, 21 C".to_string()) },
    ))
}

fn by_name<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn session_ended(spans: &[ReceivedSpan]) -> bool {
    spans.iter().any(|s| s.name == "session")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_with_a_tool_a_fallback_and_a_barge_in_is_traced() {
    let receiver = OtlpReceiver::start().await;
    let otlp = OtlpTracing::to_endpoint("colloquy-test", &receiver.traces_url).unwrap();
    let tracing = otlp.tracing().with_latest_conventions(false);

    let primary = MockServer::start(|_| MockResponse::error(503, "overloaded"))
        .await
        .unwrap();
    let fallback = fallback_server().await;
    let client = ChatClient::with_chain(
        ProviderChain::new(ProviderSpec::new(OpenAiConfig::compatible(
            primary.base_url(),
        )))
        .with_fallback(
            ProviderSpec::new(OpenAiConfig::compatible(fallback.base_url()))
                .with_model("fallback-model"),
        ),
    )
    .unwrap();
    let supervisor = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let config = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock-model")))
        .with_tools(weather_tool())
        .with_tracing(tracing);
    let session = supervisor.start_session("call-42", config).await.unwrap();
    let mut rx = session.subscribe();
    let speaker = Speaker::spawn(&session, PacedTextOutput::new(400.0));

    // Turn 1: the weather, through a tool, served by the fallback.
    session.stt(SttEvent::SpeechStarted);
    session.stt(SttEvent::SpeechEnded);
    session.stt(SttEvent::Final("What is the weather in Paris?".into()));
    let first = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    next_matching(&mut rx, |e| {
        e.turn == first && matches!(e.kind, EventKind::TurnFinished(TurnEnd::Stop))
    })
    .await;
    // Spoken to its end ("Sunny and mild." is 15 characters).
    next_matching(&mut rx, |e| {
        e.turn == first && matches!(e.kind, EventKind::SpeechPlayed { chars } if chars >= 15)
    })
    .await;

    // Turn 2: a story, cut by the caller once its first words were heard.
    session.stt(SttEvent::SpeechStarted);
    session.stt(SttEvent::SpeechEnded);
    session.stt(SttEvent::Final("Tell me a story.".into()));
    let second = next_matching(&mut rx, |e| {
        e.kind == EventKind::TurnStarted && e.turn != first
    })
    .await
    .turn;
    next_matching(&mut rx, |e| {
        e.turn == second && matches!(e.kind, EventKind::SpeechPlayed { chars } if chars > 0)
    })
    .await;
    session.stt(SttEvent::SpeechStarted);
    session.stt(SttEvent::Final("No wait, stop there.".into()));
    next_matching(&mut rx, |e| {
        e.turn == second
            && matches!(
                e.kind,
                EventKind::TurnFinished(TurnEnd::Cancelled) | EventKind::Interrupted { .. }
            )
    })
    .await;
    let third = next_matching(&mut rx, |e| {
        e.kind == EventKind::TurnStarted && e.turn != second
    })
    .await
    .turn;
    next_matching(&mut rx, |e| {
        e.turn == third && matches!(e.kind, EventKind::TurnFinished(_))
    })
    .await;
    drop(speaker);
    supervisor.shutdown().await;
    otlp.flush().unwrap();
    let spans = receiver.until(GUARD, session_ended).await;

    // One trace: session → invoke_agent → chat / execute_tool / speech.
    let session_span = by_name(&spans, "session");
    assert_eq!(session_span.len(), 1, "{spans:#?}");
    let session_span = session_span[0];
    assert_eq!(session_span.kind, 1);
    assert_eq!(session_span.attr("gen_ai.conversation.id"), Some("call-42"));
    assert_eq!(session_span.service, "colloquy-test");
    assert!(spans.iter().all(|s| s.trace_id == session_span.trace_id));
    let turns = by_name(&spans, "invoke_agent");
    assert_eq!(turns.len(), 3, "{turns:#?}");
    for t in &turns {
        assert_eq!(t.parent_span_id, session_span.span_id);
        assert_eq!(t.kind, 1);
        assert_eq!(t.attr("gen_ai.operation.name"), Some("invoke_agent"));
        assert!(t.end_ns >= t.start_ns);
    }
    let turn = |id: u64| {
        *turns
            .iter()
            .find(|t| t.int("colloquy.turn.id") == Some(id as i64))
            .unwrap_or_else(|| panic!("turn {id}: {turns:#?}"))
    };
    let (t1, t2) = (turn(first.0), turn(second.0));
    assert_eq!(
        t1.attr("gen_ai.agent.invocation.end_reason"),
        Some("completed")
    );
    assert_eq!(
        t2.attr("gen_ai.agent.invocation.end_reason"),
        Some("interrupted")
    );
    let heard = t2.int("colloquy.heard_chars").unwrap();
    let spoken = t2.int("colloquy.spoken_chars").unwrap();
    assert!(
        heard > 0 && heard < STORY.concat().chars().count() as i64,
        "{t2:#?}"
    );
    assert!(heard <= spoken, "{t2:#?}");
    // The latency breakdown is on the turn.
    assert!(
        t1.attr("colloquy.latency.end_to_end_ms").is_some(),
        "{t1:#?}"
    );

    // Every child hangs under a turn of this trace.
    let turn_ids: Vec<&Vec<u8>> = turns.iter().map(|t| &t.span_id).collect();
    let children: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name != "session" && s.name != "invoke_agent")
        .collect();
    for c in &children {
        assert!(turn_ids.contains(&&c.parent_span_id), "orphan {c:#?}");
    }

    // chat: one per request attempt, CLIENT, provider and model, usage on
    // every one (estimated ones marked).
    let chats: Vec<&ReceivedSpan> = children
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("chat "))
        .collect();
    assert!(chats.len() >= 5, "{chats:#?}");
    for c in &chats {
        assert_eq!(c.kind, 3, "{c:#?}");
        assert_eq!(c.attr("gen_ai.operation.name"), Some("chat"));
        assert_eq!(c.attr("gen_ai.provider.name"), Some("openai"));
        assert_eq!(
            c.attr("gen_ai.system"),
            Some("openai"),
            "v1.36 names by default"
        );
        assert_eq!(c.attr("server.address"), Some("127.0.0.1"));
        assert!(
            c.int("gen_ai.usage.input_tokens").is_some(),
            "usage on {c:#?}"
        );
        assert!(
            c.int("gen_ai.usage.output_tokens").is_some(),
            "usage on {c:#?}"
        );
    }
    let failed: Vec<_> = chats
        .iter()
        .filter(|c| c.attr("colloquy.provider.index") == Some("0"))
        .collect();
    assert!(!failed.is_empty());
    for c in &failed {
        assert_eq!(c.name, "chat mock-model");
        assert_eq!(c.status_code, 2, "{c:#?}");
        assert!(c.attr("error.type").is_some(), "{c:#?}");
        assert_eq!(c.attr("colloquy.usage.estimated"), Some("true"), "{c:#?}");
    }
    let served: Vec<_> = chats
        .iter()
        .filter(|c| c.attr("colloquy.provider.role") == Some("fallback"))
        .collect();
    assert!(served.len() >= 3, "{chats:#?}");
    for c in &served {
        assert_eq!(c.name, "chat fallback-model");
        assert_eq!(c.attr("gen_ai.request.model"), Some("fallback-model"));
    }
    let t1_chats: Vec<_> = served
        .iter()
        .filter(|c| c.parent_span_id == t1.span_id)
        .collect();
    let reasons: Vec<_> = t1_chats
        .iter()
        .filter_map(|c| c.attr("gen_ai.response.finish_reasons"))
        .collect();
    assert_eq!(reasons, vec!["tool_calls", "stop"], "{t1_chats:#?}");
    for c in &t1_chats {
        assert_eq!(c.attr("gen_ai.response.id"), Some("chatcmpl-mock"));
        assert_eq!(c.attr("gen_ai.response.model"), Some("mock-1"));
        assert!(
            c.attr("colloquy.time_to_first_chunk_ms").is_some(),
            "{c:#?}"
        );
        assert_eq!(c.attr("colloquy.usage.estimated"), None, "provider usage");
    }
    // The story's request was cut: its usage is the ledger's estimate.
    let story = served
        .iter()
        .find(|c| c.parent_span_id == t2.span_id)
        .expect("the story's request");
    assert_eq!(story.attr("colloquy.cancelled"), Some("true"), "{story:#?}");
    assert_eq!(
        story.attr("colloquy.usage.estimated"),
        Some("true"),
        "{story:#?}"
    );

    // execute_tool under turn 1.
    let tools = by_name(&spans, "execute_tool weather");
    assert_eq!(tools.len(), 1, "{spans:#?}");
    assert_eq!(tools[0].parent_span_id, t1.span_id);
    assert_eq!(tools[0].attr("gen_ai.tool.name"), Some("weather"));
    assert_eq!(tools[0].attr("gen_ai.tool.call.id"), Some("call_1"));

    // speech_to_text: the utterance each turn answers.
    let stt = by_name(&spans, "speech_to_text");
    assert!(
        stt.iter().any(|s| s.parent_span_id == t1.span_id),
        "{stt:#?}"
    );
    assert!(
        stt.iter().any(|s| s.parent_span_id == t2.span_id),
        "{stt:#?}"
    );
    // text_to_speech: the cut segment ends where the caller stopped hearing.
    let tts = by_name(&spans, "text_to_speech");
    let t2_tts: Vec<_> = tts
        .iter()
        .filter(|s| s.parent_span_id == t2.span_id)
        .collect();
    assert!(!t2_tts.is_empty(), "{tts:#?}");
    let heard_in_segments: i64 = t2_tts
        .iter()
        .map(|s| s.int("colloquy.heard_chars").unwrap())
        .sum();
    assert_eq!(heard_in_segments, heard, "{t2_tts:#?}");
    assert!(
        t2_tts
            .iter()
            .any(|s| s.attr("colloquy.cut") == Some("true"))
    );

    // Nothing a caller or the model said is in any span.
    for s in &spans {
        for v in s.attributes.values() {
            for secret in ["Paris", "story", "lighthouse", "Sunny", "sunny"] {
                assert!(!v.contains(secret), "{secret} in {s:#?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_in_variable_switches_to_the_newer_names() {
    let receiver = OtlpReceiver::start().await;
    let otlp = OtlpTracing::to_endpoint("colloquy-test", &receiver.traces_url).unwrap();
    let server = MockServer::start(|_| MockResponse::text(&["Hi."]))
        .await
        .unwrap();
    let (supervisor, session, mut rx) = support::setup(&server, |c| {
        *c = c
            .clone()
            .with_tracing(otlp.tracing().with_latest_conventions(true));
    })
    .await;
    session.send_text("hello").unwrap();
    next_matching(&mut rx, |e| matches!(e.kind, EventKind::TurnFinished(_))).await;
    supervisor.shutdown().await;
    otlp.flush().unwrap();
    let spans = receiver.until(GUARD, session_ended).await;
    let chat = spans
        .iter()
        .find(|s| s.name == "chat mock")
        .expect("a chat span");
    assert_eq!(chat.attr("gen_ai.provider.name"), Some("openai"));
    assert_eq!(chat.attr("gen_ai.system"), None, "{chat:#?}");
}

#[test]
fn no_exporter_without_an_endpoint() {
    let none = OtlpTracing::from_lookup("x", |_| None).unwrap();
    assert!(none.is_none());
    let disabled = OtlpTracing::from_lookup("x", |k| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:1".into()),
        "OTEL_SDK_DISABLED" => Some("true".into()),
        _ => None,
    })
    .unwrap();
    assert!(disabled.is_none());
    let set = OtlpTracing::from_lookup("x", |k| {
        (k == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:1".into())
    })
    .unwrap();
    assert!(set.is_some());
}

#[path = "support/bin.rs"]
mod bin;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn voice_agent_exports_its_traces_only_when_an_endpoint_is_set() {
    let receiver = OtlpReceiver::start().await;
    let mut cmd = bin::command("voice_agent", &["--json"]);
    cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.base_url)
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED");
    let out = bin::output_within(cmd, Duration::from_secs(180)).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("traces exported over OTLP"), "{stderr}");
    // Exported when the run ended (dropping the exporter flushes it).
    let spans = receiver.until(GUARD, session_ended).await;
    assert!(spans.iter().all(|s| s.service == "voice_agent"));
    assert!(by_name(&spans, "invoke_agent").len() >= 2, "{spans:#?}");
    assert!(spans.iter().any(|s| s.name.starts_with("chat ")));
    assert!(!by_name(&spans, "text_to_speech").is_empty());

    let mut cmd = bin::command("voice_agent", &["--json"]);
    cmd.env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let out = bin::output_within(cmd, Duration::from_secs(180)).await;
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("OTLP"), "{stderr}");
}
