//! Tool faults through a whole session: whatever a tool handler does, its call
//! is answered and the turn goes on. Driven through the public API against a
//! scripted 127.0.0.1 server; tests wait on bus events, and timeouts only turn a
//! hang into a failure.

use colloquy::context::ChatItem;
use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockResponse, MockServer};
use colloquy::tools::ToolDefinition;
use colloquy_actors::bus::{EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, SessionConfig, Supervisor, SupervisorConfig, Tool, ToolFuture, ToolRegistry,
};

#[path = "support/session.rs"]
mod support;
use support::*;

/// F3: a handler that panics before returning its future (a bug in argument
/// handling, say) used to kill the tool's task silently: no result, and the turn
/// waited for it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panicking_synchronously_is_answered_and_the_turn_completes() {
    let server = MockServer::start(|req| {
        if has_tool_output(req) {
            MockResponse::text(&["One of them failed."])
        } else {
            MockResponse::tool_calls(&[("c_sync", "sync_panic", "{}"), ("c_ok", "echo", "{}")])
        }
    })
    .await
    .unwrap();
    let tools = ToolRegistry::new()
        .with_tool(Tool::new(
            ToolDefinition::free_form("sync_panic", "Panics before returning its future"),
            |_| -> ToolFuture { panic!("bug in the handler itself") },
        ))
        .with_tool(Tool::new(
            ToolDefinition::free_form("echo", "Echo"),
            |a| async move { Ok(a.to_string()) },
        ));
    let client = ChatClient::with_config(
        OpenAiConfig::compatible(server.base_url()),
        ClientConfig::default(),
    )
    .unwrap();
    let supervisor = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let config =
        SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock"))).with_tools(tools);
    let session = supervisor.start_session("s1", config).await.unwrap();
    let mut rx = session.subscribe();

    session.send_text("do two things").unwrap();
    let turn = next_matching(&mut rx, |e| e.kind == EventKind::TurnStarted)
        .await
        .turn;
    let result = next_matching(
        &mut rx,
        |e| matches!(&e.kind, EventKind::ToolResult(o) if o.call_id == "c_sync"),
    )
    .await;
    let EventKind::ToolResult(output) = result.kind else {
        unreachable!()
    };
    assert!(output.is_error);
    assert_eq!(output.output, "error: the tool crashed");
    let end = next_matching(&mut rx, |e| {
        e.turn == turn && matches!(e.kind, EventKind::TurnFinished(_))
    })
    .await;
    assert_eq!(end.kind, EventKind::TurnFinished(TurnEnd::Stop));

    let msgs = server.requests()[1].json()["messages"]
        .as_array()
        .unwrap()
        .clone();
    let output_of = |id: &str| {
        msgs.iter()
            .find(|m| m["role"] == "tool" && m["tool_call_id"] == id)
            .and_then(|m| m["content"].as_str())
            .unwrap_or_else(|| panic!("no output for {id}"))
            .to_string()
    };
    assert_eq!(output_of("c_sync"), "error: the tool crashed");
    assert_eq!(output_of("c_ok"), "{}");

    let ctx = session.context().await.unwrap();
    assert!(ctx.calls_without_output().is_empty(), "no orphaned call");
    let errors: Vec<&str> = ctx
        .items
        .iter()
        .filter_map(|i| match i {
            ChatItem::FunctionCallOutput(o) if o.is_error => Some(o.call_id.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(errors, ["c_sync"]);
    supervisor.shutdown().await;
}
