//! The actor's side of a turn: an explicit state, and every transition of it.
//!
//! ```text
//!            start_turn                 round ended with calls
//!   Idle ───────────────▶ Streaming ───────────────────────────▶ AwaitingTools
//!    ▲                      │  ▲                                      │
//!    │  commit (reconcile)  │  └──────── every call answered ─────────┘
//!    └──────────────────────┴─── round ended without calls / failed: ledger.finish
//! ```
//!
//! The actor never decides alone that a turn is over: it asks the ledger to
//! finish the turn (which may already have been cut by a caller) and then
//! *reconciles* — takes whatever closed record the ledger holds and commits
//! it. Reconciling runs before and after every message, so a cut that lands
//! anywhere (before a queued user message, behind a round's end, between two
//! handlers) is committed exactly once, in turn order. Requests are built from
//! the ledger's rounds too: there is no second copy of what a turn published.

use std::sync::Arc;
use std::time::Instant;

use colloquy::context::{ChatContext, ChatItem, ChatMessage, Role};
use colloquy::llm::{FinishReason, LlmError};
use colloquy::tools::ToolChoice;

use super::commit::{draft_items, turn_items};
use super::msg::RoundOutput;
use super::round::run_round;
use super::settings::SpeechQueue;
use super::{LlmState, record_usage};
use crate::bus::ledger::{Closed, LedgerError, TurnRecord};
use crate::bus::{EventKind, TurnEnd};
use crate::ids::TurnId;
use crate::reply::{Reply, ReplyState, ReplyTx, SayOptions};
use crate::task::AbortOnDrop;

/// A turn to start, and the replies it answers.
pub(crate) struct Start {
    what: What,
    replies: Vec<ReplyTx>,
}

enum What {
    /// A model's reply to the context.
    Model,
    /// Fixed text, spoken as a turn.
    Say(String, SayOptions),
}

impl Start {
    pub(crate) fn model(replies: Vec<ReplyTx>) -> Self {
        Self {
            what: What::Model,
            replies,
        }
    }

    pub(crate) fn say(text: String, options: SayOptions, reply: ReplyTx) -> Self {
        Self {
            what: What::Say(text, options),
            replies: vec![reply],
        }
    }

    /// Withdraws `handle`'s reply; whether nothing is left to start.
    pub(crate) fn withdraw(&mut self, handle: &tokio::sync::watch::Receiver<ReplyState>) -> bool {
        let before = self.replies.len();
        self.replies.retain(|r| {
            let gone = r.is(handle);
            if gone {
                r.set(ReplyState::Dropped);
            }
            !gone
        });
        before != self.replies.len()
            && (self.replies.is_empty() || matches!(self.what, What::Say(..)))
    }
}

/// The speculative turn in flight and the interim it answers.
pub(crate) struct Speculative {
    pub(crate) turn: TurnId,
    pub(crate) words: Vec<String>,
    /// The context its requests are built from: the committed one, then the
    /// interim utterance, as the `before_turn` hook left it.
    pub(crate) context: ChatContext,
    /// Items of the committed context when it started (the utterance's
    /// position in `context`).
    pub(crate) base_len: usize,
}

/// A turn the actor is running.
pub(crate) struct ActiveTurn {
    pub(crate) id: TurnId,
    pub(crate) started: Instant,
    pub(crate) span: tracing::Span,
}

/// Where the actor's turn stands.
pub(crate) enum TurnState {
    /// No turn in flight (the last one is committed).
    Idle,
    /// Round `round`'s stream task is running.
    Streaming {
        turn: ActiveTurn,
        round: u32,
        /// Backstop: dropping the state aborts the task (the ledger aborts it on a cut).
        _task: AbortOnDrop,
    },
    /// The last round made tool calls; waiting for every output.
    AwaitingTools { turn: ActiveTurn },
}

impl TurnState {
    /// The turn in flight, if any.
    pub(crate) fn active(&self) -> Option<&ActiveTurn> {
        match self {
            TurnState::Idle => None,
            TurnState::Streaming { turn, .. } | TurnState::AwaitingTools { turn, .. } => Some(turn),
        }
    }

    pub(crate) fn take_active(&mut self) -> Option<ActiveTurn> {
        match std::mem::replace(self, TurnState::Idle) {
            TurnState::Idle => None,
            TurnState::Streaming { turn, .. } | TurnState::AwaitingTools { turn, .. } => Some(turn),
        }
    }
}

fn failed(e: &LlmError) -> TurnEnd {
    TurnEnd::Failed(Arc::from(format!("{}: {e}", e.kind())))
}

fn end_of(finish: Option<FinishReason>) -> TurnEnd {
    match finish {
        None | Some(FinishReason::Stop) => TurnEnd::Stop,
        Some(FinishReason::Length) => TurnEnd::Length,
        Some(FinishReason::ToolCalls) => TurnEnd::ToolCalls,
        Some(FinishReason::ContentFilter) => TurnEnd::ContentFilter,
        Some(FinishReason::Other(raw)) => TurnEnd::Other(Arc::from(raw)),
        Some(_) => TurnEnd::Other(Arc::from("unknown")),
    }
}

impl LlmState {
    /// Commits every closed turn the ledger holds. Idempotent: a record is
    /// taken once, and commits happen in turn order because the ledger does
    /// not begin a turn while one waits.
    pub(crate) fn reconcile(&mut self) {
        while let Some(closed) = self.core.bus.take_closed() {
            match closed {
                Closed::Ended {
                    record,
                    end,
                    speech_cut,
                } => {
                    let active = if self.turn.active().is_some_and(|t| t.id == record.turn) {
                        self.turn.take_active()
                    } else {
                        None
                    };
                    self.commit(record, &end, speech_cut, active);
                }
                Closed::SpeechCut { turn, heard_chars } => self.trim_last_turn(turn, heard_chars),
                Closed::Discarded { turn } => {
                    if self.turn.active().is_some_and(|t| t.id == turn) {
                        self.turn.take_active();
                    }
                    if self.speculation.as_ref().is_some_and(|s| s.turn == turn) {
                        self.speculation = None;
                    }
                }
            }
        }
    }

    fn commit(
        &mut self,
        record: TurnRecord,
        end: &TurnEnd,
        speech_cut: bool,
        active: Option<ActiveTurn>,
    ) {
        let cut = end.is_abort() || speech_cut;
        let heard = cut.then(|| {
            let total = record.text_chars();
            record.heard_chars.map_or(total, |h| h.min(total))
        });
        let why = match end {
            TurnEnd::Cancelled => {
                "cancelled: the user interrupted before this tool call finished".to_string()
            }
            other => format!("not executed: the turn ended ({})", other.label()),
        };
        let items = turn_items(&record, heard, &why);
        self.reply_committed(&record, end, cut, &items);
        for round in &record.rounds {
            // Every request: the serving one's and the dropped ones'.
            round
                .usage
                .iter()
                .chain(&round.dropped)
                .for_each(record_usage);
        }
        self.last_turn = (!cut).then(|| {
            let ids = items.iter().map(|i| i.id().to_string()).collect();
            (record, ids)
        });
        self.context.items.extend(items);
        metrics::counter!("colloquy_turns_total", "end" => end.label()).increment(1);
        if speech_cut {
            metrics::counter!("colloquy_playback_interruptions_total").increment(1);
        }
        if let Some(turn) = active {
            metrics::histogram!("colloquy_turn_duration_seconds")
                .record(turn.started.elapsed().as_secs_f64());
        }
        self.checkpoint();
    }

    /// The user cut the speech of the last committed turn: trim its items to
    /// what was played.
    fn trim_last_turn(&mut self, turn: TurnId, heard: usize) {
        let Some((record, ids)) = self.last_turn.take() else {
            return;
        };
        if record.turn != turn {
            return;
        }
        let ids: std::collections::HashSet<String> = ids.into_iter().collect();
        let Some(first) = self.context.items.iter().position(|i| ids.contains(i.id())) else {
            return;
        };
        self.context.items.retain(|i| !ids.contains(i.id()));
        let trimmed = turn_items(&record, Some(heard), "cancelled");
        self.reply_trimmed(turn, &trimmed);
        self.context.items.splice(first..first, trimmed);
        metrics::counter!("colloquy_playback_interruptions_total").increment(1);
        self.checkpoint();
    }

    /// A promoted speculation: the committed context becomes the one its
    /// request was built from, the interim utterance replaced by the final
    /// `message`. If the history moved meanwhile (it should not: the actor
    /// was busy with the speculation), only the message is committed.
    pub(crate) fn adopt_speculative_context(&mut self, spec: Speculative, message: ChatMessage) {
        if self.context.len() != spec.base_len {
            tracing::warn!(parent: &self.core.span, "history changed during a speculation: keeping the history, not the hook's additions");
            self.context.push(ChatItem::Message(message));
            return;
        }
        let mut context = spec.context;
        match context.items.get_mut(spec.base_len) {
            Some(item @ ChatItem::Message(_)) => *item = ChatItem::Message(message),
            _ => context.push(ChatItem::Message(message)),
        }
        self.context = context;
    }

    /// Tells a committed turn's replies what the history keeps of it: done
    /// at once unless its speech is still to be played.
    fn reply_committed(
        &mut self,
        record: &TurnRecord,
        end: &TurnEnd,
        cut: bool,
        items: &[ChatItem],
    ) {
        let reply = Reply {
            turn: record.turn,
            end: end.clone(),
            items: items.to_vec(),
            interrupted: cut,
        };
        let playing = !cut && self.core.bus.speech_playing_for(record.turn);
        self.replies.retain(|r| {
            if r.turn() != Some(record.turn) {
                return true;
            }
            if playing {
                r.set(ReplyState::Committed(reply.clone()));
                true
            } else {
                r.set(ReplyState::Done(reply.clone()));
                false
            }
        });
    }

    /// The speech of a committed turn was cut: its replies are done, as heard.
    fn reply_trimmed(&mut self, turn: TurnId, items: &[ChatItem]) {
        self.replies.retain(|r| match r.awaiting_playout() {
            Some(mut reply) if reply.turn == turn => {
                reply.items = items.to_vec();
                reply.interrupted = true;
                r.set(ReplyState::Done(reply));
                false
            }
            _ => true,
        });
    }

    /// Starts `start`: begins its turn on the ledger (or leaves it in the
    /// speech queue while the last reply still speaks), tells its replies,
    /// and either speaks its fixed text or starts round 0.
    pub(crate) fn start(&mut self, start: Start) {
        // Starts wait their turn: behind those already in the speech queue.
        if !self.waiting.is_empty() {
            self.enqueue(start);
            return;
        }
        self.start_now(start, false);
    }

    /// Parks `start` at the back of the speech queue; a model reply merges
    /// into one already waiting (the context holds every message it answers,
    /// so one turn answers them all, once).
    pub(crate) fn enqueue(&mut self, start: Start) {
        if matches!(start.what, What::Model)
            && let Some(waiting) = self
                .waiting
                .iter_mut()
                .find(|w| matches!(w.what, What::Model))
        {
            waiting.replies.extend(start.replies);
            return;
        }
        self.waiting.push_back(start);
    }

    /// Starts `start` now, or parks it (at the front when it came from the
    /// queue's front, else at the back) while the last reply still speaks.
    pub(crate) fn start_now(&mut self, start: Start, from_queue: bool) {
        debug_assert!(self.turn.active().is_none());
        // Replies whose speech is over are done before a new turn begins.
        self.replies_done(false);
        let interruptible = match &start.what {
            What::Say(_, options) => options.allow_interruptions,
            What::Model => true,
        };
        let queue = self.settings.speech_queue == SpeechQueue::Wait;
        let id = loop {
            match self.core.bus.begin_turn_with(queue, interruptible) {
                Ok(id) => break id,
                // A cut landed since the last reconcile: commit it first.
                Err(LedgerError::PendingCommit) => self.reconcile(),
                // The last reply still speaks: wait for it (SpeechIdle).
                Err(LedgerError::Speaking) => {
                    if from_queue {
                        self.waiting.push_front(start);
                    } else {
                        self.enqueue(start);
                    }
                    return;
                }
                Err(e) => {
                    tracing::error!(parent: &self.core.span, error = %e, "cannot start a turn");
                    return;
                }
            }
        };
        for reply in start.replies {
            reply.set(ReplyState::Started(id));
            self.replies.push(reply);
        }
        match start.what {
            What::Say(text, _) => self.say_now(id, text),
            What::Model => self.start_model_turn(id),
        }
    }

    /// A `say`: the text goes through the ledger like a model's tokens
    /// (segments, playback, pause, cut), the turn ends at once, and the
    /// commit keeps what is heard of it. No request is sent.
    fn say_now(&mut self, id: TurnId, text: String) {
        if self.core.bus.open_spoken_round(id).is_err() {
            return;
        }
        let _ = self
            .core
            .bus
            .publish_agent(id, EventKind::Token(Arc::from(text)));
        self.core.bus.finish_turn(id, TurnEnd::Stop);
        self.reconcile();
    }

    /// Idle → Streaming for a model's reply: the `before_turn` hook runs
    /// first, on the committed context (which ends with the utterance the
    /// turn answers), then round 0 starts.
    fn start_model_turn(&mut self, id: TurnId) {
        if let Some(hook) = self.settings.before_turn.clone() {
            hook(&mut self.context);
        }
        let turn = ActiveTurn {
            id,
            started: Instant::now(),
            span: tracing::info_span!(parent: &self.core.span, "turn", turn = id.0),
        };
        self.start_round(turn);
    }

    /// Idle → Streaming, speculatively: a turn for the interim `text` whose
    /// events the ledger holds back until a matching final promotes it.
    pub(crate) fn start_speculative_turn(&mut self, text: String) {
        debug_assert!(self.turn.active().is_none());
        let id = match self.core.bus.begin_speculative() {
            Ok(id) => id,
            Err(e) => {
                tracing::debug!(parent: &self.core.span, error = %e, "no speculation now");
                return;
            }
        };
        // The hook sees the utterance it answers, on a copy: only a hit
        // makes what it did part of the history.
        let base_len = self.context.len();
        let mut context = self.context.clone();
        context.push(ChatItem::Message(ChatMessage::text(
            Role::User,
            text.clone(),
        )));
        if let Some(hook) = self.settings.before_turn.clone() {
            hook(&mut context);
        }
        self.speculation = Some(Speculative {
            turn: id,
            words: crate::turn_taking::normalize_words(&text),
            context,
            base_len,
        });
        let turn = ActiveTurn {
            id,
            started: Instant::now(),
            span: tracing::info_span!(parent: &self.core.span, "turn", turn = id.0, speculative = true),
        };
        self.start_round(turn);
    }

    /// The request for the next round of `turn` (context, then the turn's
    /// rounds so far) and that round's index; `None` once the turn is closed.
    fn next_request(&self, turn: TurnId) -> Option<(ChatContext, u32)> {
        let rounds = self.core.bus.rounds(turn)?;
        let next_round = rounds.len() as u32;
        let draft = draft_items(&TurnRecord {
            turn,
            rounds,
            ..TurnRecord::default()
        });
        // A speculative turn answers an utterance not yet committed.
        let base = match self.speculation.as_ref().filter(|s| s.turn == turn) {
            Some(spec) => &spec.context,
            None => &self.context,
        };
        let mut items = Vec::with_capacity(base.len() + draft.len() + 1);
        if let Some(instructions) = &self.settings.instructions {
            items.push(ChatItem::Message(ChatMessage::text(
                Role::System,
                instructions.clone(),
            )));
        }
        items.extend(base.items.iter().cloned());
        items.extend(draft);
        Some((ChatContext { items }, next_round))
    }

    /// → Streaming: opens the next round of `turn` on the ledger with its task.
    /// If the turn was cut meanwhile nothing is sent; the state is idle and
    /// the reconcile commits the cut.
    fn start_round(&mut self, turn: ActiveTurn) {
        let Some((ctx, next_round)) = self.next_request(turn.id) else {
            return;
        };
        let mut options = self.settings.options.clone();
        if next_round >= self.settings.max_tool_rounds && !options.tools.is_empty() {
            options.tool_choice = ToolChoice::None;
        }
        let prompt_bytes = ctx.approx_bytes();
        let stream = match self.core.stream(&ctx, &options) {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(parent: &turn.span, error = %e, "request not sent");
                self.core.bus.finish_turn(turn.id, failed(&e));
                return;
            }
        };
        let (bus, myself, span) = (
            self.core.bus.clone(),
            self.myself.clone(),
            turn.span.clone(),
        );
        let spans = self
            .core
            .telemetry
            .round(turn.id, next_round, &options.model);
        let opened = self.core.bus.open_round(turn.id, prompt_bytes, || {
            let task = tokio::spawn(tracing::Instrument::instrument(
                run_round(
                    stream,
                    bus,
                    turn.id,
                    next_round,
                    myself,
                    turn.started,
                    spans,
                ),
                span,
            ));
            (task.abort_handle(), AbortOnDrop(task))
        });
        if let Ok((round, task)) = opened {
            self.turn = TurnState::Streaming {
                turn,
                round,
                _task: task,
            };
        }
    }

    /// Streaming → AwaitingTools, or the turn's end.
    pub(crate) fn round_ended(
        &mut self,
        turn: TurnId,
        round: u32,
        result: Result<RoundOutput, LlmError>,
    ) {
        let current = matches!(&self.turn,
            TurnState::Streaming { turn: t, round: r, .. } if t.id == turn && *r == round);
        if !current {
            return; // a round of a turn already committed
        }
        match result {
            Err(e) => {
                metrics::counter!("colloquy_errors_total", "kind" => e.kind()).increment(1);
                if let Some(t) = self.turn.active() {
                    tracing::warn!(parent: &t.span, error = %e, "turn failed");
                }
                self.core.bus.finish_turn(turn, failed(&e));
            }
            Ok(out) if !out.made_calls || round >= self.settings.max_tool_rounds => {
                self.core.bus.finish_turn(turn, end_of(out.finish));
            }
            Ok(_) => {
                if let Some(active) = self.turn.take_active() {
                    self.turn = TurnState::AwaitingTools { turn: active };
                }
                self.maybe_continue();
            }
        }
        // Commits the end just decided, or the cut that came first.
        self.reconcile();
    }

    /// AwaitingTools → Streaming once every call of the round has its output.
    pub(crate) fn maybe_continue(&mut self) {
        let ready = matches!(&self.turn,
            TurnState::AwaitingTools { turn, .. } if self.core.bus.last_round_answered(turn.id));
        if !ready {
            return;
        }
        if let Some(turn) = self.turn.take_active() {
            self.start_round(turn);
        }
    }
}
