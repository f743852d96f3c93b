//! The stream task of one round: reads the provider's stream and publishes
//! straight onto the bus through the ledger, then reports the round's end to
//! the actor. It keeps nothing the ledger does not already hold.
//!
//! With a provider chain the stream also says which provider serves the round
//! and which were dropped and why (`ProviderSelected`, `ProviderFailed`); both
//! go on the bus as they come. Every request is accounted in the ledger
//! before it is sent (the first here, the others as the stream announces
//! them), so each one's usage is reported once, even after a cut.

use std::sync::Arc;
use std::time::Instant;

use colloquy::llm::{ChatStream, LlmError, StreamEvent};
use futures_util::StreamExt;
use ractor::ActorRef;

use super::msg::{LlmMsg, RoundOutput};
use crate::bus::{EventKind, SessionBus};
use crate::ids::TurnId;
use crate::telemetry::RoundSpans;

/// Reports the round's end to the actor exactly once: normally with the
/// stream's result, and from `Drop` if the task ends any other way (a panic,
/// an abort), so the actor never waits for a round that is gone. A report for
/// a turn already committed is ignored by the actor.
struct RoundReport {
    actor: ActorRef<LlmMsg>,
    turn: TurnId,
    round: u32,
    sent: bool,
}

impl RoundReport {
    fn send(mut self, result: Result<RoundOutput, LlmError>) {
        self.sent = true;
        let _ = self.actor.cast(LlmMsg::RoundEnded {
            turn: self.turn,
            round: self.round,
            result,
        });
    }
}

impl Drop for RoundReport {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.actor.cast(LlmMsg::RoundEnded {
                turn: self.turn,
                round: self.round,
                result: Err(LlmError::Incomplete),
            });
        }
    }
}

/// Streams one round; publishes through the ledger; reports to the actor.
pub(crate) async fn run_round(
    mut stream: ChatStream,
    bus: SessionBus,
    turn: TurnId,
    round: u32,
    actor: ActorRef<LlmMsg>,
    turn_started: Instant,
    mut spans: RoundSpans,
) {
    let report = RoundReport {
        actor,
        turn,
        round,
        sent: false,
    };
    // The request is accounted before it is sent (the first poll sends it):
    // a turn cut before this point sent nothing and is charged nothing.
    if !bus.request_sent(turn) {
        drop(report);
        return;
    }
    spans.started();
    let mut out = RoundOutput::default();
    let mut first_token = round == 0;
    let result = loop {
        let Some(event) = stream.next().await else {
            break Err(LlmError::Incomplete);
        };
        let kind = match event {
            Ok(StreamEvent::Token(t)) => {
                spans.output();
                if first_token {
                    first_token = false;
                    metrics::histogram!("colloquy_time_to_first_token_seconds")
                        .record(turn_started.elapsed().as_secs_f64());
                }
                metrics::counter!("colloquy_tokens_total").increment(1);
                EventKind::Token(Arc::from(t))
            }
            Ok(StreamEvent::Reasoning(t)) => {
                spans.output();
                EventKind::Reasoning(Arc::from(t))
            }
            Ok(StreamEvent::Refusal(t)) => {
                spans.output();
                EventKind::Refusal(Arc::from(t))
            }
            Ok(StreamEvent::ToolCall(call)) => {
                spans.output();
                out.made_calls = true;
                EventKind::ToolCall(Arc::new(call))
            }
            Ok(StreamEvent::Usage(u)) => {
                spans.usage(&u);
                EventKind::Usage(Arc::new(u))
            }
            Ok(StreamEvent::Structured(v)) => EventKind::Structured(Arc::new(v)),
            Ok(StreamEvent::Metadata {
                request_id,
                response_id,
                model,
            }) => {
                tracing::debug!(?request_id, ?model, round, "provider answered");
                spans.metadata(
                    request_id.as_deref(),
                    response_id.as_deref(),
                    model.as_deref(),
                );
                continue;
            }
            Ok(StreamEvent::ProviderSelected(choice)) => {
                tracing::debug!(provider = %choice.label, reason = choice.reason.label(), round, "provider serves the round");
                spans.selected(&choice);
                EventKind::ProviderSelected(Arc::new(choice))
            }
            Ok(StreamEvent::ProviderFailed(failure)) => {
                spans.provider_failed(&failure);
                // Its usage is the round's too (counted in the usage metrics
                // at the commit, or as a discarded speculation's cost).
                EventKind::ProviderFailed(Arc::new(failure))
            }
            Ok(StreamEvent::Retrying(retry)) => {
                spans.retrying(retry.kind, retry.usage.as_ref());
                // The failed request's usage (if reported) is published as
                // its own; the retry is accounted before it is sent.
                if let Some(u) = retry.usage
                    && bus
                        .publish_agent(turn, EventKind::Usage(Arc::new(u)))
                        .is_err()
                {
                    return;
                }
                if !bus.request_retried(turn) {
                    return;
                }
                tracing::debug!(
                    attempt = retry.attempt,
                    kind = retry.kind,
                    round,
                    "request retried"
                );
                continue;
            }
            Ok(StreamEvent::RequestStarted { index }) => {
                // Accounted before it is sent; a cut turn sends nothing more.
                if !bus.request_sent(turn) {
                    return;
                }
                spans.request_started(index);
                tracing::debug!(provider = index, round, "another request for the round");
                continue;
            }
            Ok(StreamEvent::Finished(summary)) => {
                spans.finished(summary.reason.as_ref());
                out.finish = summary.reason;
                bus.complete_round(turn);
                break Ok(());
            }
            Ok(_) => continue,
            Err(e) => {
                spans.failed(&e);
                break Err(e);
            }
        };
        if bus.publish_agent(turn, kind).is_err() {
            // The turn was cut: stop reading now (dropping the stream closes
            // the connection); the actor commits from the ledger's record.
            return;
        }
    };
    drop(stream);
    report.send(result.map(|()| out));
}
