//! One turn in flight, and the task that streams each of its rounds.
//!
//! The task runs outside the actor's message handler — ractor runs one handler
//! at a time, so a handler awaiting the HTTP stream would leave a Cancel waiting
//! behind it. The task publishes straight onto the bus through the turn fence
//! (no hop through the actor's mailbox per token) and reports the round's result
//! to the actor at the end. When the fence refuses an event the turn is over, so
//! the task returns, dropping the stream and closing the connection; when the
//! actor cancels, it aborts the task outright.

use std::sync::Arc;
use std::time::Instant;

use colloquy::llm::{ChatStream, FinishReason, LlmError, StreamEvent, ToolCall, Usage};
use futures_util::StreamExt;
use ractor::ActorRef;

use super::LlmMsg;
use super::commit::TurnDraft;
use crate::bus::{EventKind, SessionBus};
use crate::ids::TurnId;
use crate::task::AbortOnDrop;

/// What one streamed request produced.
#[derive(Debug, Default)]
pub(crate) struct RoundOutput {
    pub(crate) tool_calls: Vec<ToolCall>,
    pub(crate) finish: Option<FinishReason>,
    pub(crate) usage: Option<Usage>,
}

/// The turn the actor is running.
pub(crate) struct InFlight {
    pub(crate) id: TurnId,
    pub(crate) round: u32,
    pub(crate) task: Option<AbortOnDrop>,
    pub(crate) draft: TurnDraft,
    /// Call ids of the last round still waiting for an output.
    pub(crate) pending_calls: Vec<String>,
    pub(crate) started: Instant,
    pub(crate) span: tracing::Span,
}

impl InFlight {
    pub(crate) fn awaiting_tools(&self) -> bool {
        !self.pending_calls.is_empty()
    }

    pub(crate) fn all_results_in(&self) -> bool {
        self.pending_calls
            .iter()
            .all(|id| self.draft.results.contains_key(id))
    }
}

/// Streams one round; publishes through the fence; reports to the actor.
pub(crate) async fn run_round(
    mut stream: ChatStream,
    bus: SessionBus,
    turn: TurnId,
    round: u32,
    actor: ActorRef<LlmMsg>,
    turn_started: Instant,
) {
    let mut out = RoundOutput::default();
    let mut first_token = round == 0;
    let result = loop {
        let Some(event) = stream.next().await else {
            break Err(LlmError::Incomplete);
        };
        let kind = match event {
            Ok(StreamEvent::Token(t)) => {
                if first_token {
                    first_token = false;
                    metrics::histogram!("colloquy_time_to_first_token_seconds")
                        .record(turn_started.elapsed().as_secs_f64());
                }
                metrics::counter!("colloquy_tokens_total").increment(1);
                EventKind::Token(Arc::from(t))
            }
            Ok(StreamEvent::Reasoning(t)) => EventKind::Reasoning(Arc::from(t)),
            Ok(StreamEvent::Refusal(t)) => EventKind::Refusal(Arc::from(t)),
            Ok(StreamEvent::ToolCall(call)) => {
                out.tool_calls.push(call.clone());
                EventKind::ToolCall(Arc::new(call))
            }
            Ok(StreamEvent::Usage(u)) => {
                out.usage = Some(u);
                EventKind::Usage(Arc::new(u))
            }
            Ok(StreamEvent::Structured(v)) => EventKind::Structured(Arc::new(v)),
            Ok(StreamEvent::Metadata { request_id, model }) => {
                tracing::debug!(?request_id, ?model, round, "provider answered");
                continue;
            }
            Ok(StreamEvent::Finished(summary)) => {
                out.finish = summary.reason;
                break Ok(());
            }
            Ok(_) => continue,
            Err(e) => break Err(e),
        };
        if bus.publish(turn, kind).is_err() {
            // The turn was closed (cancelled or superseded): stop reading now.
            return;
        }
    };
    drop(stream);
    let _ = actor.cast(LlmMsg::RoundEnded {
        turn,
        round,
        result: result.map(|()| out),
    });
}
