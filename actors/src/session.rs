//! A session: its bus, its actors, and the handles embedders hold.
//!
//! [`SessionHandle`] is the whole public surface of a running conversation:
//! feed user input, cancel, answer tool calls, report playback, read the
//! context, change settings, subscribe to the bus. It stays valid across a
//! restart of the LLM actor because it reaches the actor through the session's
//! shared core (`llm_actor/core.rs`), which the supervisor updates. The
//! handles stand at the top of the session: they depend on the core, the
//! actor's messages and the reply's state, and nothing below imports them.

mod reply_handle;

pub use reply_handle::{ReplyError, ReplyHandle};

use std::sync::Arc;
use std::time::Duration;

use colloquy::context::{ChatContext, ContentPart};
use ractor::RpcReplyPort;

use crate::bus::event::SttEvent;
use crate::bus::{BusReceiver, EventKind, HeardSpan, SessionBus, ToolOutput};
use crate::errors::SessionError;
use crate::ids::{SessionId, TurnId};
use crate::llm_actor::{AgentSettings, Input, LlmMsg, SessionCore};
use crate::reply::{ReplyTx, SayOptions};

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
    /// the turn in flight, by default). The handle follows the reply.
    pub fn send_text(&self, text: impl Into<String>) -> Result<ReplyHandle, SessionError> {
        self.send_message(vec![ContentPart::Text(text.into())], true)
    }

    /// Commits a user message of any parts (text, images); starts a turn when
    /// `respond` (without, the handle is [`ReplyState::Dropped`](crate::ReplyState::Dropped) at once).
    pub fn send_message(
        &self,
        content: Vec<ContentPart>,
        respond: bool,
    ) -> Result<ReplyHandle, SessionError> {
        let (reply, rx) = ReplyTx::new();
        self.core.input(Input::UserMessage {
            content,
            respond,
            reply,
        })?;
        Ok(ReplyHandle::new(rx, self.core.clone()))
    }

    /// Speaks fixed text through the same turn machinery as a model's reply —
    /// segments, playback, pause and cut, committed as heard — with no model
    /// request. Requested while another reply speaks, it waits or cuts it as
    /// [`AgentSettings::speech_queue`] says; requested while one generates,
    /// it follows it.
    pub fn say(&self, text: impl Into<String>) -> Result<ReplyHandle, SessionError> {
        self.say_with(text, SayOptions::default())
    }

    /// [`say`](Self::say) with options: `allow_interruptions: false` speaks
    /// it to its end whatever the user says (new messages wait for it).
    pub fn say_with(
        &self,
        text: impl Into<String>,
        options: SayOptions,
    ) -> Result<ReplyHandle, SessionError> {
        let (reply, rx) = ReplyTx::new();
        self.core.input(Input::Say {
            text: text.into(),
            options,
            reply,
        })?;
        Ok(ReplyHandle::new(rx, self.core.clone()))
    }

    /// Whether the agent is generating or speaking, to read or wait on
    /// (`until_quiet().await`): "has the agent finished speaking" without
    /// turn numbers.
    pub fn speaking(&self) -> crate::bus::Speaking {
        self.core.bus.speaking()
    }

    /// Whether the agent is generating or speaking right now.
    pub fn is_speaking(&self) -> bool {
        self.core.bus.speaking().is_speaking()
    }

    /// For STT actors: the user started speaking. In immediate mode the turn
    /// in flight (or the speech of the last one) is cut here and now, before
    /// this returns; in confirmed mode (the default) the agent pauses once the
    /// speech lasts `min_pause`, see [`turn_taking`](crate::turn_taking). Returns the event's seq (0 once the
    /// session stopped).
    pub fn user_speech_started(&self) -> u64 {
        self.core
            .bus
            .publish_user(EventKind::UserSpeechStarted)
            .unwrap_or(0)
    }

    /// For STT actors: the user stopped speaking (voice activity ended). In
    /// confirmed mode a pause with no transcript pending resumes after the
    /// policy's `resume_timeout`. Returns the event's seq (0 once the session
    /// stopped).
    pub fn user_speech_ended(&self) -> u64 {
        self.core
            .bus
            .publish_user(EventKind::UserSpeechEnded)
            .unwrap_or(0)
    }

    /// For STT actors: a transcript; a final one starts a turn (unless it is
    /// a backchannel while the agent speaks, in confirmed mode). Returns the
    /// event's seq (0 once the session stopped).
    pub fn user_transcript(&self, text: impl Into<String>, is_final: bool) -> u64 {
        self.publish_transcript(text.into(), is_final, None)
    }

    /// Like [`user_transcript`](Self::user_transcript), with where in the
    /// caller's audio it was heard (what a [`Listener`](crate::speech::Listener)
    /// publishes).
    pub fn user_transcript_heard(
        &self,
        text: impl Into<String>,
        is_final: bool,
        heard: HeardSpan,
    ) -> u64 {
        self.publish_transcript(text.into(), is_final, Some(heard))
    }

    fn publish_transcript(&self, text: String, is_final: bool, heard: Option<HeardSpan>) -> u64 {
        self.core
            .bus
            .publish_user(EventKind::UserTranscript {
                text: Arc::from(text),
                is_final,
                heard,
            })
            .unwrap_or(0)
    }

    /// For STT adapters: one speech-recognition event, typed. Maps
    /// [`SttEvent::SpeechStarted`] to [`user_speech_started`](Self::user_speech_started),
    /// [`SttEvent::SpeechEnded`] to [`user_speech_ended`](Self::user_speech_ended),
    /// and [`SttEvent::Interim`] / [`SttEvent::Final`] to
    /// [`user_transcript`](Self::user_transcript) (partial / final). Returns the
    /// event's seq (0 once the session stopped).
    pub fn stt(&self, event: SttEvent) -> u64 {
        match event {
            SttEvent::SpeechStarted => self.user_speech_started(),
            SttEvent::SpeechEnded => self.user_speech_ended(),
            SttEvent::Interim(text) => self.user_transcript(text, false),
            SttEvent::Final(text) => self.user_transcript(text, true),
        }
    }

    /// Starts a turn on the current context (e.g. to greet the user first).
    /// Ignored (the handle is dropped) while a turn is in flight.
    pub fn generate(&self) -> Result<ReplyHandle, SessionError> {
        let (reply, rx) = ReplyTx::new();
        self.core.input(Input::Generate { reply })?;
        Ok(ReplyHandle::new(rx, self.core.clone()))
    }

    /// Cancels the turn in flight; a no-op when the agent is idle;
    /// [`SessionError::NotRunning`] once the session stopped.
    ///
    /// On return, in this thread: the turn is closed on the ledger (no later
    /// event of it can be published by anyone), its stream task is aborted,
    /// usage of every request of the turn is published (estimates, marked, for
    /// those the provider had not reported), `TurnFinished(Cancelled)` is
    /// published, and the cut hooks have run. Then, asynchronously: the task
    /// is dropped at its next poll, which closes the connection (HTTP/1.1) or
    /// resets the stream (HTTP/2); the LLM actor commits what the user heard.
    /// A reply whose generation had finished but whose speech is still
    /// playing is cut instead (`Interrupted`). A reply requested (by
    /// `send_text`, `generate` or a transcript) but not yet started when this
    /// runs is not in flight: it is not cancelled.
    pub fn cancel(&self) -> Result<(), SessionError> {
        self.core.cut(None)
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

    /// A watch on the committed context: it changes after every commit (a
    /// user message, a turn, a trim after a speech cut), which is when a
    /// durable copy should be taken.
    pub fn watch_checkpoint(&self) -> tokio::sync::watch::Receiver<Arc<ChatContext>> {
        self.core.watch_checkpoint()
    }

    /// Changes the agent's settings from the next request on.
    pub fn update_settings(
        &self,
        update: impl FnOnce(&mut AgentSettings) + Send + 'static,
    ) -> Result<(), SessionError> {
        self.core.send(LlmMsg::Update(Box::new(update)))
    }

    /// Replaces the committed context. Refused with
    /// [`SessionError::TurnInFlight`] while a turn is in flight (its commit
    /// would otherwise land on a history it was not generated from); the
    /// actor decides, after committing any turn that was cut.
    pub async fn replace_context(&self, context: ChatContext) -> Result<(), SessionError> {
        let actor = self
            .core
            .llm()
            .ok_or_else(|| SessionError::NotRunning(self.core.id.clone()))?;
        match actor
            .call(
                |reply| LlmMsg::ReplaceContext(context, reply),
                Some(Duration::from_secs(10)),
            )
            .await
        {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            Ok(_) => Err(SessionError::Timeout(self.core.id.clone())),
            Err(_) => Err(SessionError::NotRunning(self.core.id.clone())),
        }
    }
}
