//! The tool executor: runs the model's tool calls and answers them.
//!
//! It receives each call the moment the LLM stream publishes it complete (a
//! lossless bus tap, not a lagging subscription: a missed call would be a broken
//! promise), runs the calls of a round concurrently, each under the registry's
//! timeout, and publishes every outcome as a [`ToolResult`](crate::bus::EventKind::ToolResult)
//! through the turn ledger. Nothing the model sends can make it panic or stay
//! silent: an unknown tool, arguments that are not valid JSON, a handler error, a
//! handler panic and a timeout all become error outputs the model can read. When
//! a turn is cancelled its running tools are aborted.

mod registry;

pub use registry::{Tool, ToolError, ToolFuture, ToolRegistry};

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Instant;

use colloquy::llm::ToolCall;
use futures_util::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::bus::{BusEvent, EventKind, SessionBus, ToolOutput};
use crate::ids::TurnId;
use crate::task::AbortOnDrop;

/// Messages of the tool executor.
pub(crate) enum ToolExecutorMsg {
    /// A bus event from the tap (tool calls and turn ends).
    Bus(BusEvent),
}

pub(crate) struct ToolExecutor;

pub(crate) struct ToolExecutorState {
    bus: SessionBus,
    registry: ToolRegistry,
    tap: u64,
    running: HashMap<TurnId, Vec<AbortOnDrop>>,
}

fn tap_filter(kind: &EventKind) -> bool {
    matches!(kind, EventKind::ToolCall(_) | EventKind::TurnFinished(_))
}

/// Runs one call to completion; never panics, always produces an output.
pub(crate) async fn execute(registry: &ToolRegistry, call: &ToolCall) -> ToolOutput {
    let started = Instant::now();
    let result = run(registry, call).await;
    let (mut output, is_error, outcome) = match result {
        Ok(out) => (out, false, "ok"),
        Err((reason, msg)) => (msg, true, reason),
    };
    truncate_output(&mut output, registry.max_output_bytes);
    metrics::histogram!("colloquy_tool_duration_seconds", "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
    if is_error {
        metrics::counter!("colloquy_tool_errors_total", "reason" => outcome).increment(1);
    }
    ToolOutput {
        call_id: call.id.clone(),
        name: call.name.clone(),
        output,
        is_error,
    }
}

/// Cuts `output` to at most `max` bytes (plus a marker) at a character boundary.
fn truncate_output(output: &mut String, max: usize) {
    const MARKER: &str = "…[truncated]";
    if output.len() <= max {
        return;
    }
    let mut end = max;
    while !output.is_char_boundary(end) {
        end -= 1;
    }
    output.truncate(end);
    output.push_str(MARKER);
    metrics::counter!("colloquy_tool_outputs_truncated_total").increment(1);
}

async fn run(registry: &ToolRegistry, call: &ToolCall) -> Result<String, (&'static str, String)> {
    let tool = registry.get(&call.name).ok_or_else(|| {
        (
            "unknown_tool",
            format!("error: there is no tool named {:?}", call.name),
        )
    })?;
    if !call.valid_json {
        return Err((
            "invalid_arguments",
            format!(
                "error: the arguments are not valid JSON: {}",
                call.arguments
            ),
        ));
    }
    let args: serde_json::Value = serde_json::from_str(&call.arguments).map_err(|e| {
        (
            "invalid_arguments",
            format!("error: invalid arguments: {e}"),
        )
    })?;
    // A panic in the handler itself (before it returns its future) is caught
    // here, one inside the future below: either way the call is answered.
    let crashed = || ("panic", "error: the tool crashed".to_string());
    let future = std::panic::catch_unwind(AssertUnwindSafe(|| (tool.handler)(args)))
        .map_err(|_| crashed())?;
    match tokio::time::timeout(registry.timeout, AssertUnwindSafe(future).catch_unwind()).await {
        Err(_) => Err((
            "timeout",
            format!("error: the tool timed out after {:?}", registry.timeout),
        )),
        Ok(Err(_)) => Err(crashed()),
        Ok(Ok(Err(e))) => Err(("handler_error", format!("error: {e}"))),
        Ok(Ok(Ok(out))) => Ok(out),
    }
}

impl Actor for ToolExecutor {
    type Msg = ToolExecutorMsg;
    type State = ToolExecutorState;
    type Arguments = (SessionBus, ToolRegistry);

    async fn pre_start(
        &self,
        myself: ActorRef<ToolExecutorMsg>,
        (bus, registry): (SessionBus, ToolRegistry),
    ) -> Result<ToolExecutorState, ActorProcessingErr> {
        let tap = bus.add_tap(tap_filter, move |ev| {
            let _ = myself.cast(ToolExecutorMsg::Bus(ev.clone()));
        });
        // Restarted after a failure: the calls the previous executor had in
        // hand died with it. Answer them, so the turn does not wait forever;
        // they are not run again (their side effects may have happened).
        let orphaned = bus.unanswered_calls();
        if let Some((turn, calls)) = orphaned {
            for call in calls {
                let output = ToolOutput {
                    call_id: call.id.clone(),
                    name: call.name.clone(),
                    output: "error: the tool executor restarted before this call finished; it was not completed".into(),
                    is_error: true,
                };
                let _ = bus.publish(turn, EventKind::ToolResult(Arc::new(output)));
            }
        }
        Ok(ToolExecutorState {
            bus,
            registry,
            tap,
            running: HashMap::new(),
        })
    }

    async fn post_stop(
        &self,
        _: ActorRef<ToolExecutorMsg>,
        state: &mut ToolExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        state.bus.remove_tap(state.tap);
        state.running.clear();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<ToolExecutorMsg>,
        msg: ToolExecutorMsg,
        state: &mut ToolExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        let ToolExecutorMsg::Bus(event) = msg;
        match event.kind {
            EventKind::ToolCall(call) => {
                let (bus, registry, turn) = (state.bus.clone(), state.registry.clone(), event.turn);
                let task = tokio::spawn(async move {
                    let output = execute(&registry, &call).await;
                    // Refused if the turn was cancelled meanwhile: nothing to answer.
                    let _ = bus.publish(turn, EventKind::ToolResult(Arc::new(output)));
                });
                state
                    .running
                    .entry(turn)
                    .or_default()
                    .push(AbortOnDrop(task));
            }
            EventKind::TurnFinished(end) => {
                // Dropping the handles aborts the tools of a cancelled turn; for a
                // finished turn they are done already.
                if end.is_abort() {
                    state.running.remove(&event.turn);
                }
                state.running.retain(|turn, _| *turn > event.turn);
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use colloquy::tools::ToolDefinition;

    #[test]
    fn long_outputs_are_cut_at_a_char_boundary() {
        let mut s = "ééééé".to_string(); // 10 bytes
        truncate_output(&mut s, 5);
        assert_eq!(s, "éé…[truncated]");
        let mut short = "ok".to_string();
        truncate_output(&mut short, 5);
        assert_eq!(short, "ok");
    }

    #[tokio::test]
    async fn executor_applies_the_output_cap() {
        let registry = ToolRegistry::new()
            .with_tool(Tool::new(
                ToolDefinition::free_form("big", "Big"),
                |_| async { Ok("x".repeat(1000)) },
            ))
            .with_max_output_bytes(100);
        let call = ToolCall {
            index: 0,
            id: "c".into(),
            name: "big".into(),
            arguments: "{}".into(),
            valid_json: true,
        };
        let out = execute(&registry, &call).await;
        assert!(!out.is_error);
        assert_eq!(out.output.len(), 100 + "…[truncated]".len());
    }

    fn call(name: &str) -> ToolCall {
        ToolCall {
            index: 0,
            id: "c".into(),
            name: name.into(),
            arguments: "{}".into(),
            valid_json: true,
        }
    }

    #[tokio::test]
    async fn handler_panicking_before_returning_its_future_is_an_error_output() {
        let registry = ToolRegistry::new().with_tool(Tool::new(
            ToolDefinition::free_form("boom", "Panics synchronously"),
            |_| -> ToolFuture { panic!("sync") },
        ));
        let out = execute(&registry, &call("boom")).await;
        assert!(out.is_error);
        assert_eq!(out.output, "error: the tool crashed");
        assert_eq!((out.call_id.as_str(), out.name.as_str()), ("c", "boom"));
    }

    #[tokio::test]
    async fn handler_panicking_inside_its_future_is_the_same_error_output() {
        let registry = ToolRegistry::new().with_tool(Tool::new(
            ToolDefinition::free_form("boom", "Panics when polled"),
            |_| async {
                if true {
                    panic!("async");
                }
                Ok(String::new())
            },
        ));
        let out = execute(&registry, &call("boom")).await;
        assert!(out.is_error);
        assert_eq!(out.output, "error: the tool crashed");
    }
}
