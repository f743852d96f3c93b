//! Helpers shared by the session integration tests (included with `#[path]`):
//! waiting on bus events with a guard, and a session on a mock server.
#![allow(dead_code)] // each test crate uses a different subset

use std::time::Duration;

use colloquy::llm::{ChatClient, ClientConfig, LlmOptions, OpenAiConfig};
use colloquy::mock::{MockServer, RecordedRequest};
use colloquy_actors::bus::{BusEvent, BusReceiver, BusRecvError, EventKind, TurnEnd};
use colloquy_actors::{
    AgentSettings, SessionConfig, SessionHandle, Supervisor, SupervisorConfig, TurnId,
};

/// Turns a hang into a failure; tests wait on signals, never on this.
pub const GUARD: Duration = Duration::from_secs(20);

/// The next event matching `pred` (lags are skipped; a closed bus panics).
pub async fn next_matching(
    rx: &mut BusReceiver,
    mut pred: impl FnMut(&BusEvent) -> bool,
) -> BusEvent {
    tokio::time::timeout(GUARD, async {
        loop {
            match rx.recv().await {
                Ok(ev) if pred(&ev) => return ev,
                Ok(_) => {}
                Err(BusRecvError::Lagged { .. }) => {}
                Err(e) => panic!("bus closed: {e}"),
            }
        }
    })
    .await
    .expect("event did not arrive")
}

/// How `turn` ended.
pub async fn finished(rx: &mut BusReceiver, turn: TurnId) -> TurnEnd {
    match next_matching(rx, |e| {
        e.turn == turn && matches!(e.kind, EventKind::TurnFinished(_))
    })
    .await
    .kind
    {
        EventKind::TurnFinished(end) => end,
        _ => unreachable!(),
    }
}

/// Whether the request carries any tool output.
pub fn has_tool_output(req: &RecordedRequest) -> bool {
    tool_outputs(req) > 0
}

/// Number of tool messages in the request.
pub fn tool_outputs(req: &RecordedRequest) -> usize {
    req.json()["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "tool").count())
}

/// A supervisor with session "s1" on `server`, and a subscription to it.
pub async fn setup(
    server: &MockServer,
    tweak: impl FnOnce(&mut SessionConfig),
) -> (Supervisor, SessionHandle, BusReceiver) {
    let client = ChatClient::with_config(
        OpenAiConfig::compatible(server.base_url()),
        ClientConfig::default(),
    )
    .unwrap();
    let supervisor = Supervisor::start(SupervisorConfig::default())
        .await
        .unwrap();
    let mut config = SessionConfig::new(client, AgentSettings::new(LlmOptions::new("mock")));
    tweak(&mut config);
    let session = supervisor.start_session("s1", config).await.unwrap();
    let rx = session.subscribe();
    (supervisor, session, rx)
}
