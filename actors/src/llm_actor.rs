//! The LLM actor: one per conversation, owner of its context.
//!
//! It commits user messages, starts turns, runs tool rounds and commits what the
//! agent said. Its handlers never await the network: each round's stream runs in
//! a task ([`turn::run_round`]) that publishes straight to the bus, so a Cancel is
//! handled as soon as it reaches the mailbox — and the mailbox holds no token
//! traffic to wait behind. Cancel aborts the task (dropping the stream closes the
//! HTTP connection), closes the turn on the bus fence (no later event of the turn
//! can be published by anyone), reports usage (the provider's figure or an
//! estimate), and commits what the user heard.
//!
//! After every commit the context is checkpointed in the session, so when the
//! actor panics the supervisor restarts it with the history intact: a panic loses
//! at most the turn in flight.

mod commit;
mod settings;
mod turn;

pub use settings::{AgentSettings, BeforeTurnHook, InterruptionPolicy};

use std::sync::Arc;
use std::time::Instant;

use colloquy::context::{ChatContext, ChatItem, ChatMessage, ContentPart, Role};
use colloquy::llm::{ChatRequest, FinishReason, LlmError, Usage};
use colloquy::tools::ToolChoice;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::bus::{BusEvent, EventKind, ToolOutput, TurnEnd, TurnRecord};
use crate::ids::TurnId;
use crate::session::{Closed, SessionCore};
use crate::task::AbortOnDrop;
use commit::{TurnDraft, interrupted_items};
use turn::{InFlight, RoundOutput, run_round};

/// Messages of the LLM actor (sent through [`SessionHandle`](crate::SessionHandle)).
pub(crate) enum LlmMsg {
    /// Commit a user message; start a turn when `respond`.
    UserMessage {
        content: Vec<ContentPart>,
        respond: bool,
    },
    /// Start a turn on the current context.
    Generate,
    /// A turn was closed (or its speech cut) outside the actor (cancel fast
    /// path): commit what its record says was heard.
    TurnClosed { closed: Closed, end: TurnEnd },
    /// A lossless bus tap delivery: user speech, transcripts, tool results.
    Bus(BusEvent),
    /// A round's stream ended.
    RoundEnded {
        turn: TurnId,
        round: u32,
        result: Result<RoundOutput, LlmError>,
    },
    /// Read the committed context.
    Snapshot(RpcReplyPort<ChatContext>),
    /// Change settings (applies from the next request).
    Update(Box<dyn FnOnce(&mut AgentSettings) + Send>),
    /// Replace the committed context (between turns).
    ReplaceContext(ChatContext),
}

/// The actor type.
pub(crate) struct LlmActor;

pub(crate) struct LlmState {
    core: Arc<SessionCore>,
    myself: ActorRef<LlmMsg>,
    context: ChatContext,
    settings: AgentSettings,
    turn: Option<InFlight>,
    /// The last turn that finished normally and the ids of the items it
    /// committed: trimmed if the user cuts its speech.
    last_turn: Option<(TurnId, Vec<String>)>,
    queued: Vec<(ChatMessage, bool)>,
}

fn tap_filter(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::UserSpeechStarted
            | EventKind::UserTranscript { is_final: true, .. }
            | EventKind::ToolResult(_)
    )
}

impl Actor for LlmActor {
    type Msg = LlmMsg;
    type State = LlmState;
    type Arguments = Arc<SessionCore>;

    async fn pre_start(
        &self,
        myself: ActorRef<LlmMsg>,
        core: Arc<SessionCore>,
    ) -> Result<LlmState, ActorProcessingErr> {
        let context = (*core.checkpoint()).clone();
        let settings = core.settings();
        let tap_ref = myself.clone();
        let tap = core.bus.add_tap(tap_filter, move |ev| {
            let _ = tap_ref.cast(LlmMsg::Bus(ev.clone()));
        });
        if let Some(old) = core.replace_llm_tap(tap) {
            core.bus.remove_tap(old);
        }
        Ok(LlmState {
            core,
            myself,
            context,
            settings,
            turn: None,
            last_turn: None,
            queued: Vec::new(),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LlmMsg>,
        state: &mut LlmState,
    ) -> Result<(), ActorProcessingErr> {
        state.cancel(Instant::now(), TurnEnd::Cancelled);
        if let Some(tap) = state.core.take_llm_tap() {
            state.core.bus.remove_tap(tap);
        }
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<LlmMsg>,
        msg: LlmMsg,
        state: &mut LlmState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LlmMsg::UserMessage { content, respond } => {
                state.user_message(ChatMessage::parts(Role::User, content), respond);
            }
            LlmMsg::Generate => {
                if state.turn.is_none() {
                    state.start_turn();
                }
            }
            LlmMsg::TurnClosed { closed, end } => state.turn_closed(closed, end),
            LlmMsg::Bus(event) => state.bus_event(event),
            LlmMsg::RoundEnded {
                turn,
                round,
                result,
            } => state.round_ended(turn, round, result),
            LlmMsg::Snapshot(reply) => {
                let _ = reply.send(state.context.clone());
            }
            LlmMsg::Update(update) => {
                update(&mut state.settings);
                state.core.store_settings(&state.settings);
            }
            LlmMsg::ReplaceContext(context) => {
                state.context = context;
                state.checkpoint();
            }
        }
        Ok(())
    }
}

impl LlmState {
    fn checkpoint(&mut self) {
        if let Some(max) = self.settings.max_context_items {
            self.context.truncate(max);
        }
        self.core.store_checkpoint(&self.context);
    }

    fn user_message(&mut self, message: ChatMessage, respond: bool) {
        if self.settings.interruption.cancel_on_user_message {
            // Cancels a turn in flight, or cuts the speech of the last one.
            self.cancel(Instant::now(), TurnEnd::Cancelled);
        } else if self.turn.is_some() {
            self.queued.push((message, respond));
            return;
        }
        self.context.push(ChatItem::Message(message));
        self.checkpoint();
        if respond {
            self.start_turn();
        }
    }

    fn bus_event(&mut self, event: BusEvent) {
        match event.kind {
            EventKind::UserSpeechStarted if self.settings.interruption.cancel_on_speech_started => {
                self.cancel(Instant::now(), TurnEnd::Cancelled);
            }
            EventKind::UserTranscript {
                text,
                is_final: true,
            } => {
                self.user_message(ChatMessage::text(Role::User, text.to_string()), true);
            }
            EventKind::ToolResult(output) => self.tool_result(event.turn, &output),
            _ => {}
        }
    }

    fn start_turn(&mut self) {
        let (current, _) = self.core.bus.current_turn();
        let id = current.next();
        if let Err(e) = self.core.bus.begin_turn(id) {
            tracing::error!(error = %e, "cannot start turn");
            return;
        }
        if let Some(hook) = self.settings.before_turn.clone() {
            hook(&mut self.context);
        }
        let span = tracing::info_span!(parent: &self.core.span, "turn", turn = id.0);
        self.turn = Some(InFlight {
            id,
            round: 0,
            task: None,
            draft: TurnDraft::default(),
            pending_calls: Vec::new(),
            started: Instant::now(),
            span,
        });
        self.start_round();
    }

    fn request_context(&self, turn: &InFlight) -> ChatContext {
        let mut items = Vec::with_capacity(self.context.len() + turn.draft.items.len() + 1);
        if let Some(instructions) = &self.settings.instructions {
            items.push(ChatItem::Message(ChatMessage::text(
                Role::System,
                instructions.clone(),
            )));
        }
        items.extend(self.context.items.iter().cloned());
        items.extend(turn.draft.items.iter().cloned());
        ChatContext { items }
    }

    fn start_round(&mut self) {
        let Some(turn) = self.turn.as_ref() else {
            return;
        };
        if !self.core.bus.is_open(turn.id) {
            return; // closed by a cancel; its TurnClosed message follows
        }
        let ctx = self.request_context(turn);
        let mut options = self.settings.options.clone();
        if turn.round >= self.settings.max_tool_rounds && !options.tools.is_empty() {
            options.tool_choice = ToolChoice::None;
        }
        let prompt_bytes = ctx.approx_bytes();
        let stream = self.core.client.stream(ChatRequest::new(&ctx, &options));
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        match stream {
            Ok(stream) => {
                let task = tokio::spawn(tracing::Instrument::instrument(
                    run_round(
                        stream,
                        self.core.bus.clone(),
                        turn.id,
                        turn.round,
                        self.myself.clone(),
                        turn.started,
                    ),
                    turn.span.clone(),
                ));
                self.core
                    .set_stream(turn.id, task.abort_handle(), prompt_bytes);
                turn.task = Some(AbortOnDrop(task));
            }
            Err(e) => self.cancel(
                Instant::now(),
                TurnEnd::Failed(Arc::from(format!("{}: {e}", e.kind()))),
            ),
        }
    }

    fn tool_result(&mut self, turn_id: TurnId, output: &ToolOutput) {
        let Some(turn) = self.turn.as_mut().filter(|t| t.id == turn_id) else {
            return;
        };
        turn.draft
            .results
            .insert(output.call_id.clone(), output.clone());
        self.maybe_continue();
    }

    fn maybe_continue(&mut self) {
        let Some(turn) = self.turn.as_mut() else {
            return;
        };
        if !turn.awaiting_tools() || !turn.all_results_in() || !self.core.bus.is_open(turn.id) {
            // A closed turn's record is on its way in a TurnClosed message.
            return;
        }
        for call_id in std::mem::take(&mut turn.pending_calls) {
            if let Some(r) = turn.draft.results.get(&call_id) {
                let item = ChatItem::function_output(call_id, r.output.clone(), r.is_error);
                turn.draft.items.push(item);
            }
        }
        turn.round += 1;
        self.start_round();
    }

    fn round_ended(&mut self, turn_id: TurnId, round: u32, result: Result<RoundOutput, LlmError>) {
        let Some(turn) = self
            .turn
            .as_mut()
            .filter(|t| t.id == turn_id && t.round == round)
        else {
            return;
        };
        turn.task = None;
        let out = match result {
            Ok(out) => out,
            Err(e) => {
                metrics::counter!("colloquy_errors_total", "kind" => e.kind()).increment(1);
                tracing::warn!(parent: &turn.span, error = %e, "turn failed");
                self.cancel(
                    Instant::now(),
                    TurnEnd::Failed(Arc::from(format!("{}: {e}", e.kind()))),
                );
                return;
            }
        };
        if let Some(u) = &out.usage {
            record_usage(u);
        }
        // The round's text is what the fence recorded for the turn after the
        // earlier rounds' text (the stream task does not keep a second copy).
        let text = self
            .core
            .bus
            .turn_text_since(turn.id, turn.draft.round_text_start)
            .map(|(text, _)| text)
            .unwrap_or_default();
        if !text.is_empty() {
            turn.draft.round_text_start += text.chars().count();
            turn.draft
                .items
                .push(ChatItem::Message(ChatMessage::text(Role::Assistant, text)));
        }
        if out.tool_calls.is_empty() || turn.round >= self.settings.max_tool_rounds {
            let end = match out.finish {
                None | Some(FinishReason::Stop) => TurnEnd::Stop,
                Some(FinishReason::Length) => TurnEnd::Length,
                Some(FinishReason::ToolCalls) => TurnEnd::ToolCalls,
                Some(FinishReason::ContentFilter) => TurnEnd::ContentFilter,
                Some(FinishReason::Other(raw)) => TurnEnd::Other(Arc::from(raw)),
                Some(_) => TurnEnd::Other(Arc::from("unknown")),
            };
            self.finish(end);
            return;
        }
        for call in &out.tool_calls {
            turn.draft.items.push(ChatItem::function_call(
                call.id.clone(),
                call.name.clone(),
                call.arguments.clone(),
            ));
            turn.pending_calls.push(call.id.clone());
        }
        self.maybe_continue();
    }

    /// Normal end: commit every item of the turn.
    fn finish(&mut self, end: TurnEnd) {
        let Some(id) = self.turn.as_ref().map(|t| t.id) else {
            return;
        };
        if self
            .core
            .bus
            .finish_turn(id, end.clone(), |_| Usage::default())
            .is_err()
        {
            // Closed meanwhile by a cancel: its TurnClosed message commits the turn.
            return;
        }
        let Some(turn) = self.turn.take() else {
            return;
        };
        let ids = turn
            .draft
            .items
            .iter()
            .map(|i| i.id().to_string())
            .collect();
        self.last_turn = Some((turn.id, ids));
        self.context.items.extend(turn.draft.items);
        metrics::counter!("colloquy_turns_total", "end" => end.label()).increment(1);
        metrics::histogram!("colloquy_turn_duration_seconds")
            .record(turn.started.elapsed().as_secs_f64());
        self.checkpoint();
        self.after_turn();
    }

    /// Cancel (or failure) from inside the actor: close the turn through the
    /// same fast path as a handle's cancel (or cut the speech of the last turn
    /// when none is in flight), then commit what was heard.
    pub(crate) fn cancel(&mut self, requested_at: Instant, end: TurnEnd) {
        let turn = self.turn.as_ref().map(|t| t.id);
        if let Some(closed) = self.core.close_turn(turn, end.clone(), requested_at) {
            self.turn_closed(closed, end);
        }
        // Otherwise it was closed already and its TurnClosed message is queued.
    }

    fn turn_closed(&mut self, closed: Closed, end: TurnEnd) {
        match closed {
            Closed::Turn(record) => self.commit_closed_turn(record, end),
            Closed::Playback(record) => self.trim_last_turn(record),
        }
    }

    /// Commits a turn closed early, from its record.
    fn commit_closed_turn(&mut self, record: TurnRecord, end: TurnEnd) {
        if self.turn.as_ref().is_none_or(|t| t.id != record.turn) {
            return;
        }
        let Some(mut turn) = self.turn.take() else {
            return;
        };
        drop(turn.task.take()); // close_turn aborted it already; this is the backstop
        self.last_turn = None;
        let why = match &end {
            TurnEnd::Cancelled => {
                "cancelled: the user interrupted before this tool call finished".to_string()
            }
            other => format!("not executed: the turn ended ({})", other.label()),
        };
        if let Some(u) = record.usage.filter(|u| u.estimated) {
            record_usage(&u);
        }
        self.context.items.extend(interrupted_items(
            std::mem::take(&mut turn.draft),
            &record,
            &why,
        ));
        metrics::counter!("colloquy_turns_total", "end" => end.label()).increment(1);
        self.checkpoint();
        self.after_turn();
    }

    /// The user cut the speech of the last finished turn: trim its committed
    /// text to what was played.
    fn trim_last_turn(&mut self, record: TurnRecord) {
        let Some((turn, ids)) = self.last_turn.take() else {
            return;
        };
        if turn != record.turn {
            return;
        }
        let ids: std::collections::HashSet<String> = ids.into_iter().collect();
        let Some(first) = self.context.items.iter().position(|i| ids.contains(i.id())) else {
            return;
        };
        let mut items = Vec::new();
        let mut kept = Vec::with_capacity(self.context.items.len());
        for item in std::mem::take(&mut self.context.items) {
            if ids.contains(item.id()) {
                items.push(item);
            } else {
                kept.push(item);
            }
        }
        let draft = TurnDraft {
            items,
            round_text_start: record.text.chars().count(),
            results: Default::default(),
        };
        let trimmed = interrupted_items(draft, &record, "cancelled");
        kept.splice(first..first, trimmed);
        self.context.items = kept;
        metrics::counter!("colloquy_playback_interruptions_total").increment(1);
        self.checkpoint();
    }

    fn after_turn(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        let respond = queued.iter().any(|(_, r)| *r);
        for (message, _) in queued {
            self.context.push(ChatItem::Message(message));
        }
        if respond {
            self.checkpoint();
            self.start_turn();
        }
    }
}

fn record_usage(u: &Usage) {
    metrics::counter!("colloquy_usage_prompt_tokens_total").increment(u.prompt_tokens);
    metrics::counter!("colloquy_usage_completion_tokens_total").increment(u.completion_tokens);
    if let Some(c) = u.cached_tokens {
        metrics::counter!("colloquy_usage_cached_tokens_total").increment(c);
    }
    if let Some(r) = u.reasoning_tokens {
        metrics::counter!("colloquy_usage_reasoning_tokens_total").increment(r);
    }
    if u.estimated {
        metrics::counter!("colloquy_usage_estimated_total").increment(1);
    }
}
