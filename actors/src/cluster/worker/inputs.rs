//! Inputs: the requests on a session's input subject, executed on receipt
//! by the worker that owns it (speech, transcripts, playback, text, messages
//! with images, `say`, `generate`, cancel, tool results, settings, the
//! history), each answered with the seq of the event it published, a tracked
//! reply's id (see `replies`), or what it read. Turn and seq numbers are
//! translated between the wire (global across owners) and the local session.
//! Everything but the answer's wait runs here in arrival order, so a
//! `send_text` sent after an `update_settings` is answered with the new
//! settings.
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
use tokio::sync::{mpsc, oneshot, watch};

use super::replies::{self, Replies};
use super::{Control, SEQ_STRIDE, lock};
use crate::bus::ToolOutput;
use crate::cluster::policy::TokenBucket;
use crate::cluster::spec::SessionSpec;
use crate::cluster::wire::{Input, Reply, WireError};
use crate::cluster::{ClusterError, PlacementPolicy};
use crate::ids::TurnId;
use crate::reply::SayOptions;
use crate::session::{ReplyHandle, SessionHandle};

/// The `owner` input as clients encode it.
const OWNER_QUESTION: &[u8] = br#"{"op":"owner"}"#;

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
    /// The replies clients follow.
    pub(super) replies: Replies,
    /// The last wire turn whose history is stored (from the driver).
    pub(super) durable: watch::Receiver<u64>,
    /// The last wire turn committed when this owner started.
    pub(super) committed_at_start: u64,
    /// The session's spec, shared with the driver (stored with checkpoints).
    pub(super) spec: Arc<std::sync::Mutex<SessionSpec>>,
    /// The worker's model (a spec without one runs on it).
    pub(super) default_model: String,
    /// The largest answer (below the server's maximum message).
    pub(super) max_reply_bytes: usize,
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
            Input::Owner => Ok(json!({"generation": self.seq_base >> 32})),
            Input::SendText { text, track } => self.reply(h.send_text(text), track),
            Input::SendMessage {
                content,
                respond,
                track,
            } => self.reply(h.send_message(content, respond), track),
            Input::Generate { track } => self.reply(h.generate(), track),
            Input::Say {
                text,
                allow_interruptions,
                track,
            } => {
                let options = SayOptions::default().allow_interruptions(allow_interruptions);
                self.reply(h.say_with(text, options), track)
            }
            Input::Interrupt { reply } => match self.replies.get(&reply) {
                Some(r) => r.interrupt().map(|()| Value::Null).map_err(session),
                None => Err(replies::unknown_reply(self, &reply)),
            },
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
            Input::Context
            | Input::Close
            | Input::Reply { .. }
            | Input::UpdateSettings { .. }
            | Input::ReplaceContext { .. } => Err(WireError::new("invalid", "not a direct input")),
        }
    }

    /// The answer to an input that asked for a reply: its id when tracked.
    fn reply(
        &self,
        r: Result<ReplyHandle, crate::errors::SessionError>,
        track: bool,
    ) -> Result<Value, WireError> {
        let handle = r.map_err(|e| WireError::from_session(&e))?;
        if !track {
            return Ok(Value::Null);
        }
        let inbox = self.nats.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        Ok(json!({"reply": self.replies.track(unique, handle)}))
    }

    /// Applies a merge patch to the session's spec, checked like a
    /// placement's (the policy, and nothing that a running session cannot
    /// change: its tools, segmenter and event classes), and hands the
    /// settings it describes to the session (its tools and hooks kept).
    fn update_settings(&self, patch: &Value) -> Result<SessionSpec, WireError> {
        let current = lock(&self.spec).clone();
        let mut next = current
            .patched(patch)
            .map_err(|e| WireError::new("invalid", e))?;
        let fixed = [
            ("tools", next.tools == current.tools),
            ("segmenter", next.segmenter == current.segmenter),
            ("event_classes", next.event_classes == current.event_classes),
        ];
        if let Some((what, _)) = fixed.iter().find(|(_, same)| !same) {
            return Err(WireError::new(
                "invalid",
                format!("{what} cannot change on a running session"),
            ));
        }
        self.policy
            .admit(&mut next, &self.default_model)
            .map_err(|v| {
                metrics::counter!("colloquy_cluster_policy_refusals_total", "what" => "settings")
                    .increment(1);
                WireError::policy(&v)
            })?;
        let settings = next.agent_settings(&self.default_model);
        self.handle
            .update_settings(move |s| {
                let mut n = settings;
                n.options.tools = std::mem::take(&mut s.options.tools);
                n.options.extra_headers = std::mem::take(&mut s.options.extra_headers);
                n.options.extra_query = std::mem::take(&mut s.options.extra_query);
                n.options.structured_output = s.options.structured_output.take();
                n.before_turn = s.before_turn.take();
                n.speech_queue = s.speech_queue;
                *s = n;
            })
            .map_err(|e| WireError::from_session(&e))?;
        *lock(&self.spec) = next.clone();
        Ok(next)
    }
}

/// Asks the driver to store a checkpoint (the spec changed), then answers.
async fn store_then(ctx: &InputCtx, ok: Value) -> Reply {
    let (done, rx) = oneshot::channel();
    let _ = ctx.control.send(Control::Store { done });
    match rx.await {
        Ok(Ok(())) => Reply::Ok(ok),
        Ok(Err(e)) => Reply::Error(WireError::new("internal", e)),
        Err(_) => Reply::Error(WireError::new("not_running", "the session stopped")),
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
        // A reader asking who owns the session is not the session's
        // activity: answered before the rate and idle accounting (the
        // client's exact encoding; any other goes the normal way).
        if msg.payload.as_ref() == OWNER_QUESTION {
            let generation = ctx.seq_base >> 32;
            let answer = Reply::Ok(json!({ "generation": generation }));
            reply_to(&ctx.nats, msg.reply, answer).await;
            continue;
        }
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
            Input::Reply { id, known, wait_ms } => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let body = as_reply(replies::poll(&ctx, &id, known, wait_ms).await);
                    reply_to(&ctx.nats, msg.reply, body).await;
                });
            }
            Input::UpdateSettings { patch } => match ctx.update_settings(&patch) {
                Ok(spec) => {
                    let ctx = ctx.clone();
                    tokio::spawn(async move {
                        let spec = serde_json::to_value(&spec).unwrap_or(Value::Null);
                        let body = store_then(&ctx, spec).await;
                        reply_to(&ctx.nats, msg.reply, body).await;
                    });
                }
                Err(e) => reply_to(&ctx.nats, msg.reply, Reply::Error(e)).await,
            },
            Input::ReplaceContext { context } => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let r = ctx.handle.replace_context(context).await;
                    let body = match r {
                        Ok(()) => Reply::Ok(Value::Null),
                        Err(e) => Reply::Error(WireError::from_session(&e)),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker answers `owner` before its rate and idle accounting by
    /// matching the client's encoding: they must not drift apart.
    #[test]
    fn the_owner_question_is_what_clients_send() {
        assert_eq!(serde_json::to_vec(&Input::Owner).unwrap(), OWNER_QUESTION);
    }
}
