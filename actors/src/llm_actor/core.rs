//! The session's core: the state its actors, handles and supervisor share.
//!
//! It holds the bus, the provider's client, the last checkpoint, the settings
//! and the reference to the LLM actor the supervisor keeps current, so a
//! handle stays valid across a restart of the actor. It lives beside the
//! actor because it holds the actor's reference and sends it messages; the
//! actor and the handles depend on it, and it imports neither of them back.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use colloquy::context::ChatContext;
use colloquy::llm::{ChatClient, ChatRequest, ChatStream, LlmError, LlmOptions};
use ractor::ActorRef;

use super::msg::{Input, LlmMsg};
use super::settings::AgentSettings;
use crate::bus::{SessionBus, TurnEnd};
use crate::errors::SessionError;
use crate::ids::{SessionId, TurnId};
use crate::reply::ReplyState;

/// State shared by a session's actors, its handles and the supervisor.
pub(crate) struct SessionCore {
    pub(crate) id: SessionId,
    pub(crate) bus: SessionBus,
    pub(crate) client: ChatClient,
    pub(crate) span: tracing::Span,
    /// The last committed context; watchers learn of every commit.
    checkpoint: tokio::sync::watch::Sender<Arc<ChatContext>>,
    settings: Mutex<AgentSettings>,
    llm: RwLock<Option<ActorRef<LlmMsg>>>,
    llm_tap: Mutex<Option<u64>>,
    /// Inputs the actor has not taken yet, numbered; one owner takes them
    /// (the actor), so an actor that fails leaves them to its successor.
    inbox: Mutex<(u64, std::collections::VecDeque<(u64, Input)>)>,
    /// What a failed actor leaves its successor (replies in flight, the
    /// speech queue, the last turn): the actor's own types, opaque here.
    handoff: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    /// The session stopped for good: no more inputs.
    inputs_closed: std::sync::atomic::AtomicBool,
    /// Its spans, when it is traced.
    pub(crate) telemetry: crate::telemetry::SessionTelemetry,
    /// Tests script the provider's streams directly.
    #[cfg(test)]
    pub(crate) script: Mutex<Option<ScriptedStreams>>,
}

/// A scripted provider for the crate's own tests: one stream per request.
#[cfg(test)]
pub(crate) type ScriptedStreams = Arc<dyn Fn(&ChatContext) -> ChatStream + Send + Sync>;

/// Locks `m`, taking a poisoned lock as it is (a plain value behind it).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionCore {
    /// A core for session `id`; the bus takes the settings' interruption
    /// policy.
    pub(crate) fn new(
        id: SessionId,
        bus: SessionBus,
        client: ChatClient,
        settings: AgentSettings,
        context: ChatContext,
    ) -> Self {
        let span = tracing::info_span!("session", id = %id);
        bus.set_policy(settings.interruption.clone());
        Self {
            id,
            bus,
            client,
            span,
            checkpoint: tokio::sync::watch::Sender::new(Arc::new(context)),
            settings: Mutex::new(settings),
            llm: RwLock::new(None),
            llm_tap: Mutex::new(None),
            inbox: Mutex::new((0, std::collections::VecDeque::new())),
            handoff: Mutex::new(None),
            inputs_closed: std::sync::atomic::AtomicBool::new(false),
            telemetry: crate::telemetry::SessionTelemetry::default(),
            #[cfg(test)]
            script: Mutex::new(None),
        }
    }

    /// Starts one request's stream (nothing is sent until it is polled).
    pub(crate) fn stream(
        &self,
        context: &ChatContext,
        options: &LlmOptions,
    ) -> Result<ChatStream, LlmError> {
        #[cfg(test)]
        if let Some(script) = lock(&self.script).clone() {
            return Ok(script(context));
        }
        self.client.stream(ChatRequest::new(context, options))
    }

    /// Cuts `target` (default: the turn in flight, or its speech) here, in
    /// the caller, and asks the actor to commit it.
    pub(crate) fn cut(&self, target: Option<TurnId>) -> Result<(), SessionError> {
        if self.bus.is_closed() {
            return Err(SessionError::NotRunning(self.id.clone()));
        }
        let started = Instant::now();
        if self.bus.cut(target, TurnEnd::Cancelled).is_some() {
            metrics::histogram!("colloquy_cancel_latency_seconds")
                .record(started.elapsed().as_secs_f64());
            // The actor reconciles before any message; this one only makes the
            // commit prompt. A restarting actor commits when it starts.
            let _ = self.send(LlmMsg::Reconcile);
        }
        Ok(())
    }

    /// A reply not yet started is withdrawn: the actor drops it.
    pub(crate) fn withdraw(
        &self,
        handle: &tokio::sync::watch::Receiver<ReplyState>,
    ) -> Result<(), SessionError> {
        self.send(LlmMsg::Withdraw(handle.clone()))
    }

    /// The last committed context.
    pub(crate) fn checkpoint(&self) -> Arc<ChatContext> {
        self.checkpoint.borrow().clone()
    }

    /// A watch on the committed context: it changes after every commit.
    pub(crate) fn watch_checkpoint(&self) -> tokio::sync::watch::Receiver<Arc<ChatContext>> {
        self.checkpoint.subscribe()
    }

    /// Stores a new committed context (the actor, after every commit).
    pub(crate) fn store_checkpoint(&self, context: &ChatContext) {
        self.checkpoint.send_replace(Arc::new(context.clone()));
    }

    /// The agent's settings as the actor last stored them.
    pub(crate) fn settings(&self) -> AgentSettings {
        lock(&self.settings).clone()
    }

    /// Stores the actor's settings, and hands their interruption policy to
    /// the bus.
    pub(crate) fn store_settings(&self, settings: &AgentSettings) {
        self.bus.set_policy(settings.interruption.clone());
        *lock(&self.settings) = settings.clone();
    }

    /// Takes the id of the LLM actor's bus tap (the actor stops).
    pub(crate) fn take_llm_tap(&self) -> Option<u64> {
        lock(&self.llm_tap).take()
    }

    /// Adds the session's one tap for the LLM actor's inputs unless it is
    /// there (a restarted actor keeps its predecessor's: two taps would
    /// deliver an event twice). `add` runs only when none is there.
    pub(crate) fn ensure_llm_tap(&self, add: impl FnOnce() -> u64) {
        let mut tap = lock(&self.llm_tap);
        if tap.is_none() {
            *tap = Some(add());
        }
    }

    /// Sets the LLM actor the handles reach (the supervisor, at a start or
    /// a restart; `None` while there is none).
    ///
    /// A new actor is first told to take the inputs already waiting (those
    /// its failed predecessor did not take, and bus events that came while
    /// there was none), under the same write lock: every later input is
    /// numbered after them and reaches it after that message.
    pub(crate) fn set_llm(&self, actor: Option<ActorRef<LlmMsg>>) {
        let mut llm = self.llm.write().unwrap_or_else(|e| e.into_inner());
        if let Some(actor) = &actor {
            let inbox = lock(&self.inbox);
            if !inbox.1.is_empty() {
                let _ = actor.cast(LlmMsg::Inbox(inbox.0));
            }
        }
        *llm = actor;
    }

    /// The session stopped for good: inputs still waiting and whatever a
    /// failed actor left are dropped (their reply handles finish), and later
    /// inputs are refused.
    pub(crate) fn close_inputs(&self) {
        let (waiting, handoff) = {
            let mut inbox = lock(&self.inbox);
            self.inputs_closed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            (std::mem::take(&mut inbox.1), lock(&self.handoff).take())
        };
        drop(waiting);
        drop(handoff);
    }

    /// The LLM actor, if one runs.
    pub(crate) fn llm(&self) -> Option<ActorRef<LlmMsg>> {
        self.llm.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Hands `input` to the LLM actor through the inbox;
    /// [`SessionError::NotRunning`] while there is no actor (stopped, or
    /// restarting). Once accepted it is handled, by this actor or, if it
    /// fails first, by its successor.
    pub(crate) fn input(&self, input: Input) -> Result<(), SessionError> {
        // The actor is read, the input pushed and the actor told under one
        // read guard: a restart (`set_llm`) waits for it, so the input is
        // either told to the old actor before it is replaced or numbered
        // before the successor's first message. A failed cast (the actor just
        // failed) leaves the input to the successor.
        let llm = self.llm.read().unwrap_or_else(|e| e.into_inner());
        let not_running = || SessionError::NotRunning(self.id.clone());
        let actor = llm.as_ref().ok_or_else(not_running)?;
        let seq = self.push_input(input).ok_or_else(not_running)?;
        let _ = actor.cast(LlmMsg::Inbox(seq));
        Ok(())
    }

    /// The bus tap's delivery: never refused while the session runs (a
    /// restarting actor's successor takes it).
    pub(crate) fn input_from_bus(&self, event: crate::bus::BusEvent) {
        let llm = self.llm.read().unwrap_or_else(|e| e.into_inner());
        if let Some(seq) = self.push_input(Input::Bus(event))
            && let Some(actor) = llm.as_ref()
        {
            let _ = actor.cast(LlmMsg::Inbox(seq));
        }
    }

    fn push_input(&self, input: Input) -> Option<u64> {
        let mut inbox = lock(&self.inbox);
        if self.inputs_closed.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        inbox.0 += 1;
        let seq = inbox.0;
        inbox.1.push_back((seq, input));
        Some(seq)
    }

    /// The next input numbered `upto` or lower, if any.
    pub(crate) fn next_input(&self, upto: u64) -> Option<Input> {
        let mut inbox = lock(&self.inbox);
        if inbox.1.front().is_some_and(|(seq, _)| *seq <= upto) {
            inbox.1.pop_front().map(|(_, input)| input)
        } else {
            None
        }
    }

    /// Leaves what a failing actor must not lose to its successor.
    pub(crate) fn store_handoff(&self, handoff: Box<dyn std::any::Any + Send>) {
        *lock(&self.handoff) = Some(handoff);
    }

    /// Takes what a failed predecessor left.
    pub(crate) fn take_handoff(&self) -> Option<Box<dyn std::any::Any + Send>> {
        lock(&self.handoff).take()
    }

    /// Sends `msg` to the LLM actor; [`SessionError::NotRunning`] while
    /// there is none (stopped, or restarting) or it is gone.
    pub(crate) fn send(&self, msg: LlmMsg) -> Result<(), SessionError> {
        let actor = self
            .llm()
            .ok_or_else(|| SessionError::NotRunning(self.id.clone()))?;
        actor
            .cast(msg)
            .map_err(|_| SessionError::NotRunning(self.id.clone()))
    }
}
