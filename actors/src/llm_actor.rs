//! The LLM actor: one per conversation, owner of its context.
//!
//! It commits user messages, starts turns, runs tool rounds and commits what the
//! agent said. Its handlers never await the network: each round's stream runs in
//! a task ([`round::run_round`]) that publishes straight to the bus, so the
//! mailbox holds no token traffic. Cancel does not go through the mailbox at
//! all: a caller cuts the turn on the bus's turn ledger (`bus/ledger.rs`), which
//! aborts the task, reports usage and closes the turn in one critical section.
//! The actor learns of it by *reconciling* — taking the ledger's closed record
//! and committing it — before and after every message it handles
//! ([`turn`] holds the state machine and every transition).
//!
//! After every commit the context is checkpointed in the session, so when the
//! actor panics the supervisor restarts it with the history intact; the turn
//! that was in flight is closed as failed on the ledger, and the new actor
//! commits its record when it starts.

mod commit;
mod core;
mod msg;
mod round;
mod settings;
mod turn;

#[cfg(test)]
pub(crate) use self::core::ScriptedStreams;
pub(crate) use self::core::SessionCore;
pub(crate) use msg::{Input, LlmMsg};
pub use settings::{AgentSettings, BeforeTurnHook, InterruptionPolicy, Preemptive, SpeechQueue};

use std::sync::Arc;

use colloquy::context::{ChatContext, ChatItem, ChatMessage, Role};
use colloquy::llm::Usage;
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::bus::ledger::TurnRecord;
use crate::bus::{BusEvent, EventKind, TurnEnd};
use crate::errors::SessionError;
use crate::reply::{ReplyState, ReplyTx};
use crate::task::AbortOnDrop;
use turn::{Start, TurnState};

/// The actor type.
pub(crate) struct LlmActor;

pub(crate) struct LlmState {
    core: Arc<SessionCore>,
    myself: ActorRef<LlmMsg>,
    context: ChatContext,
    settings: AgentSettings,
    turn: TurnState,
    /// The last turn committed after a normal end, with the ids of its items:
    /// trimmed if the user cuts its speech.
    last_turn: Option<(TurnRecord, Vec<String>)>,
    /// User messages waiting for the turn in flight (when new messages do not
    /// cancel it), with whether they ask for a reply, and its handle.
    queued: Vec<(ChatMessage, bool, ReplyTx)>,
    /// Replies whose turn began, until they are done.
    replies: Vec<ReplyTx>,
    /// Turn starts waiting in the speech queue for the speech playing to end.
    waiting: std::collections::VecDeque<Start>,
    /// Tells the actor when the agent stops generating and speaking.
    _idle: AbortOnDrop,
    /// `post_stop` ran: nothing is handed to a successor.
    stopped: bool,
    /// Preemptive generation: the speculative turn in flight.
    speculation: Option<turn::Speculative>,
    /// The latest interim transcript (cleared by a final) and its number.
    interim: Option<(u64, String)>,
    interims_seen: u64,
}

fn tap_filter(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::UserSpeechStarted | EventKind::UserTranscript { .. } | EventKind::ToolResult(_)
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
        // The session's one tap hands events to its inbox, not to this actor:
        // a successor takes what this one did not, and keeps the tap.
        let inbox = Arc::downgrade(&core);
        core.ensure_llm_tap(|| {
            core.bus.add_tap(tap_filter, move |ev| {
                if let Some(core) = inbox.upgrade() {
                    core.input_from_bus(ev.clone());
                }
            })
        });
        let speaking = core.bus.speaking();
        let idle_ref = myself.clone();
        let idle = AbortOnDrop(tokio::spawn(async move {
            let mut seen = speaking.changes();
            loop {
                seen = speaking.changed_since(seen).await;
                if !speaking.is_speaking() && idle_ref.cast(LlmMsg::SpeechIdle).is_err() {
                    return;
                }
            }
        }));
        let mut state = LlmState {
            core,
            myself,
            context,
            settings,
            turn: TurnState::Idle,
            last_turn: None,
            queued: Vec::new(),
            replies: Vec::new(),
            waiting: std::collections::VecDeque::new(),
            _idle: idle,
            stopped: false,
            speculation: None,
            interim: None,
            interims_seen: 0,
        };
        // What a failed predecessor had in flight (also checked before each
        // message: its state may be dropped after this actor started).
        state.take_over();
        // The inputs it accepted but did not take come first: `set_llm`
        // tells this actor once it is reachable.
        // A turn closed while no actor ran (the previous one failed) is
        // committed now.
        state.reconcile();
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LlmMsg>,
        state: &mut LlmState,
    ) -> Result<(), ActorProcessingErr> {
        state.core.bus.cut(None, TurnEnd::Cancelled);
        state.reconcile();
        // Messages that waited for the turn are kept, unanswered.
        let queued = std::mem::take(&mut state.queued);
        if !queued.is_empty() {
            state
                .context
                .items
                .extend(queued.into_iter().map(|(m, _, _)| ChatItem::Message(m)));
            state.checkpoint();
        }
        // Committed replies are over with the session; the rest never start.
        state.replies_done(true);
        if let Some(tap) = state.core.take_llm_tap() {
            state.core.bus.remove_tap(tap);
        }
        state.stopped = true;
        // For good: what waits in the inbox is dropped (its handles finish).
        state.core.close_inputs();
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<LlmMsg>,
        msg: LlmMsg,
        state: &mut LlmState,
    ) -> Result<(), ActorProcessingErr> {
        state.take_over();
        state.reconcile();
        match msg {
            LlmMsg::Inbox(upto) => {
                // One at a time, each one's effects reconciled before the next.
                while let Some(input) = state.core.next_input(upto) {
                    state.input(input);
                    state.reconcile();
                    state.after_turn();
                }
            }
            LlmMsg::SpeechIdle => state.speech_idle(),
            LlmMsg::Withdraw(handle) => state.withdraw(&handle),
            LlmMsg::Reconcile => {}
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
            LlmMsg::ReplaceContext(context, reply) => {
                let result = if state.turn.active().is_some() {
                    Err(SessionError::TurnInFlight(state.core.id.clone()))
                } else {
                    state.context = context;
                    state.last_turn = None;
                    state.checkpoint();
                    Ok(())
                };
                let _ = reply.send(result);
            }
            LlmMsg::Speculate { interim } => state.speculate(interim),
        }
        state.reconcile();
        state.after_turn();
        Ok(())
    }
}

/// What a failing actor leaves its successor in the session's core.
struct Handoff {
    last_turn: Option<(TurnRecord, Vec<String>)>,
    queued: Vec<(ChatMessage, bool, ReplyTx)>,
    replies: Vec<ReplyTx>,
    waiting: std::collections::VecDeque<Start>,
}

impl Drop for LlmState {
    fn drop(&mut self) {
        // A stop finished these in `post_stop`; a failure (a panic) did not:
        // the supervisor's new actor takes them over.
        if !self.stopped {
            self.core.store_handoff(Box::new(Handoff {
                last_turn: self.last_turn.take(),
                queued: std::mem::take(&mut self.queued),
                replies: std::mem::take(&mut self.replies),
                waiting: std::mem::take(&mut self.waiting),
            }));
        }
    }
}

impl LlmState {
    /// Takes what a failed predecessor left in the core, if anything.
    fn take_over(&mut self) {
        let Some(handoff) = self.core.take_handoff() else {
            return;
        };
        let Ok(handoff) = handoff.downcast::<Handoff>() else {
            return;
        };
        let Handoff {
            last_turn,
            queued,
            replies,
            waiting,
        } = *handoff;
        if self.last_turn.is_none() {
            self.last_turn = last_turn;
        }
        self.queued.splice(0..0, queued);
        self.replies.extend(replies);
        for start in waiting.into_iter().rev() {
            self.waiting.push_front(start);
        }
    }

    /// One input from the session's inbox.
    fn input(&mut self, input: Input) {
        match input {
            Input::UserMessage {
                content,
                respond,
                reply,
            } => {
                self.user_message(ChatMessage::parts(Role::User, content), respond, reply);
            }
            Input::Generate { reply } => {
                if self.turn.active().is_none() {
                    self.start(Start::model(vec![reply]));
                }
            }
            Input::Say {
                text,
                options,
                reply,
            } => {
                if self.turn.active().is_some() {
                    // After the reply in flight, like a queued message.
                    self.enqueue(Start::say(text, options, reply));
                } else {
                    self.start(Start::say(text, options, reply));
                }
            }
            Input::Bus(event) => self.bus_event(event),
        }
    }

    fn checkpoint(&mut self) {
        if let Some(max) = self.settings.max_context_items {
            self.context.truncate(max);
        }
        self.core.store_checkpoint(&self.context);
    }

    fn user_message(&mut self, message: ChatMessage, respond: bool, reply: ReplyTx) {
        self.interim = None;
        if let Some(spec) = self.speculation.take() {
            let words = crate::turn_taking::normalize_words(&message.text_content());
            if respond && words == spec.words && self.core.bus.promote(spec.turn) {
                // A hit: the reply is already under way. The history becomes
                // the one it was generated from (what `before_turn` added
                // included), with the utterance in its final wording.
                reply.set(ReplyState::Started(spec.turn));
                self.replies.push(reply);
                self.adopt_speculative_context(spec, message);
                self.checkpoint();
                return;
            }
            self.core
                .bus
                .discard(spec.turn, crate::bus::SpeculationOutcome::Miss);
            self.reconcile();
        }
        if self.settings.interruption.cancel_on_user_message && self.core.bus.interruptible() {
            // Cuts the turn in flight, or the speech of the last one; the
            // reconcile commits it before the new message.
            self.core.bus.cut(None, TurnEnd::Cancelled);
            self.reconcile();
        } else if self.turn.active().is_some() {
            self.queued.push((message, respond, reply));
            return;
        }
        self.context.push(ChatItem::Message(message));
        self.checkpoint();
        if respond && self.turn.active().is_none() {
            self.start(Start::model(vec![reply]));
        }
    }

    fn bus_event(&mut self, event: BusEvent) {
        match event.kind {
            // The cut itself happened on the bus, in the publisher's thread;
            // the reconcile around this handler committed it.
            EventKind::UserSpeechStarted => {}
            EventKind::UserTranscript {
                text,
                is_final: true,
                ..
            } => {
                let (reply, _) = ReplyTx::new();
                self.user_message(ChatMessage::text(Role::User, text.to_string()), true, reply);
            }
            EventKind::UserTranscript {
                text,
                is_final: false,
                ..
            } => self.interim(text.to_string()),
            EventKind::ToolResult(_) => self.maybe_continue(),
            _ => {}
        }
    }

    /// Preemptive generation: an interim transcript (re)arms the debounce.
    fn interim(&mut self, text: String) {
        let Some(preemptive) = self.settings.preemptive else {
            return;
        };
        self.interims_seen += 1;
        let interim = self.interims_seen;
        self.interim = Some((interim, text));
        self.myself
            .send_after(preemptive.debounce, move || LlmMsg::Speculate { interim });
    }

    /// The debounce ran out for interim number `interim`: speculate on it when
    /// it is still the latest, the agent is idle (or only speculating on
    /// other words), and no final came meanwhile. At most one speculative
    /// request is in flight.
    fn speculate(&mut self, interim: u64) {
        let Some(text) = self
            .interim
            .as_ref()
            .filter(|(n, _)| *n == interim)
            .map(|(_, t)| t.clone())
        else {
            return;
        };
        if let Some(spec) = &self.speculation {
            if spec.words == crate::turn_taking::normalize_words(&text) {
                return;
            }
            let turn = spec.turn;
            self.core
                .bus
                .discard(turn, crate::bus::SpeculationOutcome::Miss);
            self.reconcile();
        }
        if self.turn.active().is_none() && !text.trim().is_empty() {
            self.start_speculative_turn(text);
        }
    }

    /// Once idle, messages that waited for the turn get their own turn, and
    /// then starts that waited behind it.
    fn after_turn(&mut self) {
        if self.turn.active().is_some() {
            return;
        }
        if !self.queued.is_empty() {
            let queued = std::mem::take(&mut self.queued);
            let respond = queued.iter().any(|(_, r, _)| *r);
            let mut replies = Vec::new();
            for (message, asks, reply) in queued {
                self.context.push(ChatItem::Message(message));
                if asks {
                    replies.push(reply);
                }
            }
            self.checkpoint();
            if respond {
                self.start(Start::model(replies));
            }
        }
        self.replies_done(false);
        if self.turn.active().is_none()
            && !self.core.bus.speech_playing()
            && let Some(start) = self.waiting.pop_front()
        {
            self.start_now(start, true);
        }
    }

    /// The agent went quiet: replies whose speech played to its end are
    /// done, and the speech queue moves on.
    fn speech_idle(&mut self) {
        self.replies_done(false);
        self.after_turn();
    }

    /// Marks done every committed reply whose speech is over (`all`: the
    /// session stops, every committed reply is over), and forgets them.
    pub(crate) fn replies_done(&mut self, all: bool) {
        let bus = self.core.bus.clone();
        self.replies.retain(|reply| match reply.awaiting_playout() {
            Some(r) if all || !bus.speech_playing_for(r.turn) => {
                reply.set(ReplyState::Done(r));
                false
            }
            _ => true,
        });
    }

    /// A reply withdrawn before it started: it never starts (its message, if
    /// any, stays in the history, unanswered).
    fn withdraw(&mut self, handle: &tokio::sync::watch::Receiver<ReplyState>) {
        // It started meanwhile (its start was already in the mailbox): cut it.
        let started: Vec<crate::ids::TurnId> = self
            .replies
            .iter()
            .filter(|r| r.is(handle))
            .filter_map(|r| r.turn())
            .collect();
        for turn in started {
            self.core.bus.cut(Some(turn), TurnEnd::Cancelled);
        }
        for (_, respond, reply) in &mut self.queued {
            if reply.is(handle) {
                *respond = false;
                reply.set(ReplyState::Dropped);
            }
        }
        self.waiting.retain_mut(|start| !start.withdraw(handle));
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
