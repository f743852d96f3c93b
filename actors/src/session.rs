//! A session: its bus, its actors, and the handle embedders hold.
//!
//! [`SessionHandle`] is the whole public surface of a running conversation:
//! feed user input, cancel, answer tool calls, report playback, read the
//! context, change settings, subscribe to the bus. It stays valid across a
//! restart of the LLM actor because it reaches the actor through the session's
//! shared core, which the supervisor updates.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use colloquy::context::{ChatContext, ContentPart};
use colloquy::llm::{ChatClient, Usage};
use ractor::{ActorRef, RpcReplyPort};
use tokio::task::AbortHandle;

use crate::bus::{
    BusReceiver, EventKind, PublishError, SessionBus, ToolOutput, TurnEnd, TurnRecord,
};
use crate::ids::{SessionId, TurnId};
use crate::llm_actor::{AgentSettings, LlmMsg};

/// Errors of a session operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The session was stopped (or its LLM actor is restarting).
    #[error("session {0} is not running")]
    NotRunning(SessionId),
    /// The event was refused by the turn fence.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The LLM actor did not answer in time.
    #[error("session {0} did not answer in time")]
    Timeout(SessionId),
}

/// What [`SessionCore::close_turn`] closed.
#[derive(Debug)]
pub(crate) enum Closed {
    /// A turn still generating: its stream was stopped.
    Turn(TurnRecord),
    /// A finished turn whose speech was still playing: its speech was cut.
    Playback(TurnRecord),
}

/// State shared by a session's actors, its handles and the supervisor.
pub(crate) struct SessionCore {
    pub(crate) id: SessionId,
    pub(crate) bus: SessionBus,
    pub(crate) client: ChatClient,
    pub(crate) span: tracing::Span,
    checkpoint: Mutex<Arc<ChatContext>>,
    settings: Mutex<AgentSettings>,
    /// `settings.interruption.cancel_on_speech_started`, readable on the
    /// barge-in path without cloning the settings.
    cancel_on_speech: std::sync::atomic::AtomicBool,
    llm: RwLock<Option<ActorRef<LlmMsg>>>,
    llm_tap: Mutex<Option<u64>>,
    /// The stream task of the turn in flight, so a cancel can stop it without
    /// waiting for the actor.
    stream: Mutex<Option<(crate::ids::TurnId, AbortHandle)>>,
    /// Prompt size of the round in flight, for the usage estimate of a cancel.
    prompt_bytes: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionCore {
    pub(crate) fn new(
        id: SessionId,
        bus: SessionBus,
        client: ChatClient,
        settings: AgentSettings,
        context: ChatContext,
    ) -> Self {
        let span = tracing::info_span!("session", id = %id);
        Self {
            id,
            bus,
            client,
            span,
            checkpoint: Mutex::new(Arc::new(context)),
            cancel_on_speech: std::sync::atomic::AtomicBool::new(
                settings.interruption.cancel_on_speech_started,
            ),
            settings: Mutex::new(settings),
            llm: RwLock::new(None),
            llm_tap: Mutex::new(None),
            stream: Mutex::new(None),
            prompt_bytes: AtomicUsize::new(0),
        }
    }

    /// Records the stream task of a round, so [`SessionCore::close_turn`] can abort it.
    pub(crate) fn set_stream(
        &self,
        turn: crate::ids::TurnId,
        task: AbortHandle,
        prompt_bytes: usize,
    ) {
        self.prompt_bytes.store(prompt_bytes, Ordering::Relaxed);
        *lock(&self.stream) = Some((turn, task));
    }

    /// Ends a turn early, right here in the caller: aborts its stream task (the
    /// HTTP connection closes), publishes usage (an estimate when the provider's
    /// figure has not arrived) and `TurnFinished(end)`, and closes the fence.
    /// `turn` defaults to the turn in flight. Returns `None` when that turn is
    /// not in flight (already finished or closed): a no-op.
    ///
    /// This is the cancel fast path: it does not wait for the LLM actor, whose
    /// mailbox may be behind. The actor commits the record afterwards.
    pub(crate) fn close_turn(
        &self,
        turn: Option<crate::ids::TurnId>,
        end: TurnEnd,
        requested_at: Instant,
    ) -> Option<Closed> {
        let (current, open) = self.bus.current_turn();
        let turn = turn.unwrap_or(current);
        if turn != current {
            return None;
        }
        if !open {
            // Generation is over; the speech of the turn may still be playing.
            if end != TurnEnd::Cancelled {
                return None;
            }
            let record = self.bus.interrupt_playback(turn).ok()?;
            metrics::histogram!("colloquy_cancel_latency_seconds")
                .record(requested_at.elapsed().as_secs_f64());
            return Some(Closed::Playback(record));
        }
        {
            let mut stream = lock(&self.stream);
            if let Some((_, task)) = stream.take_if(|(t, _)| *t == turn) {
                task.abort();
            }
        }
        let prompt_bytes = self.prompt_bytes.load(Ordering::Relaxed);
        let is_cancel = end == TurnEnd::Cancelled;
        let record = self
            .bus
            .finish_turn(turn, end, |text| {
                Usage::estimate(prompt_bytes, text.chars().count())
            })
            .ok()?;
        if is_cancel {
            metrics::histogram!("colloquy_cancel_latency_seconds")
                .record(requested_at.elapsed().as_secs_f64());
        }
        Some(Closed::Turn(record))
    }

    /// Closes the turn in flight (or cuts its speech) and hands the record to the
    /// actor for the commit.
    fn cancel(&self, end: TurnEnd) -> Result<(), SessionError> {
        if let Some(closed) = self.close_turn(None, end.clone(), Instant::now()) {
            self.send(LlmMsg::TurnClosed { closed, end })?;
        }
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Arc<ChatContext> {
        lock(&self.checkpoint).clone()
    }

    pub(crate) fn store_checkpoint(&self, context: &ChatContext) {
        *lock(&self.checkpoint) = Arc::new(context.clone());
    }

    pub(crate) fn settings(&self) -> AgentSettings {
        lock(&self.settings).clone()
    }

    pub(crate) fn store_settings(&self, settings: &AgentSettings) {
        self.cancel_on_speech.store(
            settings.interruption.cancel_on_speech_started,
            Ordering::Relaxed,
        );
        *lock(&self.settings) = settings.clone();
    }

    pub(crate) fn take_llm_tap(&self) -> Option<u64> {
        lock(&self.llm_tap).take()
    }

    pub(crate) fn replace_llm_tap(&self, tap: u64) -> Option<u64> {
        lock(&self.llm_tap).replace(tap)
    }

    pub(crate) fn set_llm(&self, actor: Option<ActorRef<LlmMsg>>) {
        *self.llm.write().unwrap_or_else(|e| e.into_inner()) = actor;
    }

    pub(crate) fn llm(&self) -> Option<ActorRef<LlmMsg>> {
        self.llm.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn send(&self, msg: LlmMsg) -> Result<(), SessionError> {
        let actor = self
            .llm()
            .ok_or_else(|| SessionError::NotRunning(self.id.clone()))?;
        actor
            .cast(msg)
            .map_err(|_| SessionError::NotRunning(self.id.clone()))
    }
}

/// A running conversation. Cheap to clone.
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) core: Arc<SessionCore>,
}

impl std::fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionHandle")
            .field("id", &self.core.id)
            .finish()
    }
}

impl SessionHandle {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.core.id
    }

    /// The session's bus.
    pub fn bus(&self) -> &SessionBus {
        &self.core.bus
    }

    /// Subscribes to the session's bus.
    pub fn subscribe(&self) -> BusReceiver {
        self.core.bus.subscribe()
    }

    /// Commits a typed user message and starts a turn to answer it (cancelling
    /// the turn in flight, by default).
    pub fn send_text(&self, text: impl Into<String>) -> Result<(), SessionError> {
        self.send_message(vec![ContentPart::Text(text.into())], true)
    }

    /// Commits a user message of any parts (text, images); starts a turn when `respond`.
    pub fn send_message(
        &self,
        content: Vec<ContentPart>,
        respond: bool,
    ) -> Result<(), SessionError> {
        self.core.send(LlmMsg::UserMessage { content, respond })
    }

    /// For STT actors: the user started speaking (barge-in). With the default
    /// policy the turn in flight is cancelled here and now, before this returns.
    pub fn user_speech_started(&self) -> u64 {
        let seq = self.core.bus.publish_user(EventKind::UserSpeechStarted);
        if self.core.cancel_on_speech.load(Ordering::Relaxed) {
            let _ = self.core.cancel(TurnEnd::Cancelled);
        }
        seq
    }

    /// For STT actors: a transcript; a final one starts a turn.
    pub fn user_transcript(&self, text: impl Into<String>, is_final: bool) -> u64 {
        self.core.bus.publish_user(EventKind::UserTranscript {
            text: Arc::from(text.into()),
            is_final,
        })
    }

    /// Starts a turn on the current context (e.g. to greet the user first).
    pub fn generate(&self) -> Result<(), SessionError> {
        self.core.send(LlmMsg::Generate)
    }

    /// Cancels the turn in flight; a no-op when the agent is idle.
    ///
    /// The cancel completes before this returns: the stream task is aborted (the
    /// HTTP connection closes), `Usage` and `TurnFinished(Cancelled)` are
    /// published, and the fence refuses every later event of the turn. The LLM
    /// actor then commits what the user heard.
    pub fn cancel(&self) -> Result<(), SessionError> {
        self.core.cancel(TurnEnd::Cancelled)
    }

    /// Answers a tool call of `turn` (for embedders that run tools themselves).
    pub fn submit_tool_result(
        &self,
        turn: TurnId,
        output: ToolOutput,
    ) -> Result<u64, SessionError> {
        Ok(self
            .core
            .bus
            .publish(turn, EventKind::ToolResult(Arc::new(output)))?)
    }

    /// For TTS actors: `chars` characters of `turn`'s text have been played.
    pub fn speech_played(&self, turn: TurnId, chars: usize) -> Result<u64, SessionError> {
        Ok(self
            .core
            .bus
            .publish(turn, EventKind::SpeechPlayed { chars })?)
    }

    /// The committed context, from the actor (waits for earlier messages).
    pub async fn context(&self) -> Result<ChatContext, SessionError> {
        let actor = self
            .core
            .llm()
            .ok_or_else(|| SessionError::NotRunning(self.core.id.clone()))?;
        match actor
            .call(
                |reply: RpcReplyPort<ChatContext>| LlmMsg::Snapshot(reply),
                Some(Duration::from_secs(10)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(ctx)) => Ok(ctx),
            Ok(_) => Err(SessionError::Timeout(self.core.id.clone())),
            Err(_) => Err(SessionError::NotRunning(self.core.id.clone())),
        }
    }

    /// The last checkpointed context, without asking the actor.
    pub fn checkpoint(&self) -> Arc<ChatContext> {
        self.core.checkpoint()
    }

    /// Changes the agent's settings from the next request on.
    pub fn update_settings(
        &self,
        update: impl FnOnce(&mut AgentSettings) + Send + 'static,
    ) -> Result<(), SessionError> {
        self.core.send(LlmMsg::Update(Box::new(update)))
    }

    /// Replaces the committed context (between turns).
    pub fn replace_context(&self, context: ChatContext) -> Result<(), SessionError> {
        self.core.send(LlmMsg::ReplaceContext(context))
    }
}
