//! Inputs: the requests on a session's input subject, executed on receipt
//! by the worker that owns it (speech, transcripts, playback, text, cancel,
//! tool results), each answered with the seq of the event it published. Turn
//! and seq numbers are translated between the wire (global across owners) and
//! the local session.
//!
//! The worker's [`PlacementPolicy`] is applied here, before an input is
//! decoded: one over `max_input_bytes` or over the session's rate (its own
//! token bucket, so a flood on one session costs the others nothing) is
//! refused with a typed `policy` error and not run; and the task ends the
//! session (`session_ended`, `idle_timeout` or `max_lifetime`) when no
//! input came for the idle time or the lifetime is up.

use std::sync::Arc;

use async_nats::{Client, Subject, Subscriber};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{Control, SEQ_STRIDE};
use crate::bus::ToolOutput;
use crate::cluster::policy::TokenBucket;
use crate::cluster::wire::{Input, Reply, WireError};
use crate::cluster::{ClusterError, PlacementPolicy};
use crate::ids::TurnId;
use crate::session::SessionHandle;

/// What the input task of one session needs.
pub(super) struct InputCtx {
    pub(super) nats: Client,
    /// The local session.
    pub(super) handle: SessionHandle,
    /// Wire turn numbers of this owner start after it.
    pub(super) turn_base: u64,
    /// `generation << 32`: the first wire seq of this owner.
    pub(super) seq_base: u64,
    /// To the session's driver (for `close`).
    pub(super) control: mpsc::UnboundedSender<Control>,
    /// Input size, rate, idle time and lifetime.
    pub(super) policy: PlacementPolicy,
}

impl InputCtx {
    /// The wire seq of a local bus seq.
    fn wire_seq(&self, local: u64) -> u64 {
        self.seq_base + SEQ_STRIDE * local
    }

    /// The local turn of a wire turn; `stale` for one of a previous owner.
    fn local_turn(&self, turn: u64) -> Result<TurnId, WireError> {
        if turn > self.turn_base {
            Ok(TurnId(turn - self.turn_base))
        } else {
            Err(WireError::new(
                "stale",
                format!("turn {turn} belongs to a previous owner"),
            ))
        }
    }

    /// The wire seq of a published event; `not_running` for 0 (nothing was
    /// published: the session stopped).
    fn seq_or_stopped(&self, seq: u64) -> Result<Value, WireError> {
        if seq == 0 {
            Err(WireError::new("not_running", "the session stopped"))
        } else {
            Ok(json!(self.wire_seq(seq)))
        }
    }

    /// Runs an input that needs no waiting (all but `context` and `close`).
    fn act(&self, input: Input) -> Result<Value, WireError> {
        let h = &self.handle;
        let session = |e: crate::errors::SessionError| WireError::from_session(&e);
        match input {
            Input::UserSpeechStarted => self.seq_or_stopped(h.user_speech_started()),
            Input::UserSpeechEnded => self.seq_or_stopped(h.user_speech_ended()),
            Input::UserTranscript { text, is_final } => {
                self.seq_or_stopped(h.user_transcript(text, is_final))
            }
            Input::SpeechPlayed { turn, chars } => {
                let seq = h
                    .speech_played(self.local_turn(turn)?, chars)
                    .map_err(session)?;
                Ok(json!(self.wire_seq(seq)))
            }
            Input::SendText { text } => h.send_text(text).map(|_| Value::Null).map_err(session),
            Input::Cancel => h.cancel().map(|()| Value::Null).map_err(session),
            Input::SubmitToolResult {
                turn,
                call_id,
                name,
                output,
                is_error,
            } => {
                let output = ToolOutput {
                    call_id,
                    name,
                    output,
                    is_error,
                };
                let seq = h
                    .submit_tool_result(self.local_turn(turn)?, output)
                    .map_err(session)?;
                Ok(json!(self.wire_seq(seq)))
            }
            Input::Context | Input::Close => Err(WireError::new("invalid", "not a direct input")),
        }
    }
}

/// Resolves at `deadline`, or never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Refuses an input sent on another kind's subject (`…in.speech` carries
/// only speech inputs): subject permissions are what keeps a speech service
/// from cancelling or reading a session, so the kind in the subject is
/// binding.
fn on_its_subject(subject: &str, input: &Input) -> Result<(), WireError> {
    let kind = input.kind();
    match subject.rsplit('.').next() {
        Some(token) if token == kind.as_str() => Ok(()),
        token => Err(WireError::new(
            "not_allowed",
            format!(
                "{} is a {} input, sent on {:?}",
                input.op(),
                kind.as_str(),
                token.unwrap_or("")
            ),
        )),
    }
}

/// Answers a request (nothing without a reply subject).
async fn reply_to(nats: &Client, reply: Option<Subject>, body: Reply) {
    if let Some(reply) = reply {
        let _ = nats.publish(reply, body.encode().into()).await;
    }
}

/// `{"ok": …}` or `{"error": …}`.
fn as_reply(r: Result<Value, WireError>) -> Reply {
    match r {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e),
    }
}

/// Executes a session's inputs on receipt (a cancel closes the turn here,
/// before the reply); `context` and `close` run in their own tasks so a
/// cancel never waits behind them.
pub(super) async fn run_inputs(ctx: InputCtx, mut sub: Subscriber) {
    let ctx = Arc::new(ctx);
    let mut bucket = TokenBucket::new(ctx.policy.input_rate);
    let started = tokio::time::Instant::now();
    let mut last_input = started;
    let end_at = ctx.policy.max_lifetime.map(|d| started + d);
    loop {
        let idle_at = ctx.policy.idle_timeout.map(|d| last_input + d);
        let deadline = idle_at.into_iter().chain(end_at).min();
        let msg = tokio::select! {
            msg = sub.next() => match msg {
                Some(msg) => msg,
                None => break,
            },
            () = sleep_until(deadline) => {
                let reason = if end_at.is_some_and(|e| tokio::time::Instant::now() >= e) {
                    "max_lifetime"
                } else {
                    "idle_timeout"
                };
                metrics::counter!("colloquy_cluster_sessions_expired_total", "reason" => reason)
                    .increment(1);
                let (done, _) = oneshot::channel();
                let _ = ctx.control.send(Control::Close { done, reason });
                break;
            }
        };
        let admitted =
            PlacementPolicy::size("input", msg.payload.len(), ctx.policy.max_input_bytes)
                .and_then(|()| bucket.take());
        if let Err(v) = admitted {
            metrics::counter!("colloquy_cluster_policy_refusals_total", "what" => "input")
                .increment(1);
            reply_to(&ctx.nats, msg.reply, Reply::Error(WireError::policy(&v))).await;
            continue;
        }
        last_input = tokio::time::Instant::now();
        let input: Input = match serde_json::from_slice(&msg.payload) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                let err = WireError::new("invalid", e);
                reply_to(&ctx.nats, msg.reply, Reply::Error(err)).await;
                continue;
            }
        };
        if let Err(err) = on_its_subject(&msg.subject, &input) {
            reply_to(&ctx.nats, msg.reply, Reply::Error(err)).await;
            continue;
        }
        match input {
            Input::Context => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let body = match ctx.handle.context().await {
                        Ok(c) => {
                            let v = serde_json::to_value(&c).unwrap_or(Value::Null);
                            let max = crate::cluster::max_payload(&ctx.nats).saturating_sub(1024);
                            let bytes = v.to_string().len();
                            if bytes > max {
                                Reply::Error(WireError::new(
                                    "too_large",
                                    ClusterError::TooLarge {
                                        what: "context",
                                        bytes,
                                        max_bytes: max,
                                    },
                                ))
                            } else {
                                Reply::Ok(v)
                            }
                        }
                        Err(e) => Reply::Error(WireError::from_session(&e)),
                    };
                    reply_to(&ctx.nats, msg.reply, body).await;
                });
            }
            Input::Close => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let (done, rx) = oneshot::channel();
                    let _ = ctx.control.send(Control::Close {
                        done,
                        reason: "closed",
                    });
                    let body = match rx.await {
                        Ok(Ok(())) => Reply::Ok(Value::Null),
                        Ok(Err(e)) => Reply::Error(WireError::new("internal", e)),
                        Err(_) => {
                            Reply::Error(WireError::new("not_running", "the session stopped"))
                        }
                    };
                    reply_to(&ctx.nats, msg.reply, body).await;
                });
            }
            input => {
                let body = as_reply(ctx.act(input));
                reply_to(&ctx.nats, msg.reply, body).await;
            }
        }
    }
}
