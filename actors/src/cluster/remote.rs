//! The client side: placing sessions and driving them from any process.
//! Inputs go on the subject of their kind (`in.speech`, `in.control`,
//! `in.admin`), so subject permissions can tell them apart; reading the
//! events is in `events`.

mod config;
mod events;
mod fence;
mod reply;
#[cfg(all(test, feature = "calls"))]
mod speaker_tests;

pub use config::RemoteConfig;
pub use events::RemoteEvents;
pub use reply::{RemoteReply, RemoteReplyError};

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use colloquy::context::{ChatContext, ContentPart};
use serde_json::Value;
use tokio::time::Instant;

use super::spec::SessionSpec;
use super::wire::{EventClass, EventClasses, Input, InputKind, PlaceRequest, Reply, WireError};
use super::{ClusterError, Names, session_key};
use crate::bus::ToolOutput;
use crate::ids::{SessionId, TurnId};
use crate::reply::SayOptions;

struct ClientInner {
    nats: Client,
    names: Names,
    config: RemoteConfig,
}

/// Places sessions on the cluster's workers and attaches to placed ones.
#[derive(Clone)]
pub struct ClusterClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterClient")
            .field("config", &self.inner.config)
            .finish()
    }
}

/// How long a subscription waits for the owner to say its generation (a
/// dead owner's subscription lingers on the server until its ping timeout:
/// without this bound each subscribe would wait the request timeout).
const OWNER_QUESTION_TIMEOUT: Duration = Duration::from_millis(500);

/// A wait that grows from 5 ms to 200 ms.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(5))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_millis(200));
    }
}

enum Sent {
    Reply(Reply),
    NoResponders,
    TimedOut,
}

impl ClusterClient {
    /// A client with the default configuration.
    pub fn new(nats: Client) -> Self {
        Self::with_config(nats, RemoteConfig::default()).unwrap_or_else(|_| unreachable!())
    }

    /// A client with its own configuration (an invalid prefix is refused).
    pub fn with_config(nats: Client, config: RemoteConfig) -> Result<Self, ClusterError> {
        let names = Names::new(&config.prefix)?;
        Ok(Self {
            inner: Arc::new(ClientInner {
                nats,
                names,
                config,
            }),
        })
    }

    /// The NATS connection.
    pub fn nats(&self) -> &Client {
        &self.inner.nats
    }

    /// Refuses a message the server would refuse (it closes the connection
    /// on one).
    async fn check_size(&self, what: &'static str, bytes: usize) -> Result<(), ClusterError> {
        let nats = &self.inner.nats;
        if nats.server_info().max_payload == 0 {
            // Not connected yet: the first flush waits for the server's info.
            nats.flush().await.map_err(ClusterError::nats)?;
        }
        let max_bytes = super::max_payload(nats);
        if bytes > max_bytes {
            return Err(ClusterError::TooLarge {
                what,
                bytes,
                max_bytes,
            });
        }
        Ok(())
    }

    async fn send(&self, subject: String, payload: Bytes) -> Result<Sent, ClusterError> {
        self.send_within(subject, payload, self.inner.config.request_timeout)
            .await
    }

    async fn send_within(
        &self,
        subject: String,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Sent, ClusterError> {
        let request = async_nats::Request::new()
            .payload(payload)
            .timeout(Some(timeout));
        match self.inner.nats.send_request(subject, request).await {
            Ok(msg) => serde_json::from_slice::<Reply>(&msg.payload)
                .map(Sent::Reply)
                .map_err(|e| ClusterError::Protocol(e.to_string())),
            Err(e) => match e.kind() {
                RequestErrorKind::NoResponders => Ok(Sent::NoResponders),
                RequestErrorKind::TimedOut => Ok(Sent::TimedOut),
                RequestErrorKind::MaxPayloadExceeded => Err(ClusterError::TooLarge {
                    what: "request",
                    bytes: 0,
                    max_bytes: super::max_payload(&self.inner.nats),
                }),
                _ => Err(ClusterError::nats(e)),
            },
        }
    }

    /// Places a new session on a worker with room.
    ///
    /// Fails with [`ClusterError::NoCapacity`] when no worker takes it within
    /// the placement timeout, [`ClusterError::AlreadyExists`],
    /// [`ClusterError::UnknownTool`] or [`ClusterError::TooLarge`].
    pub async fn place(
        &self,
        id: impl Into<SessionId>,
        spec: SessionSpec,
    ) -> Result<RemoteSession, ClusterError> {
        self.place_with_context(id, spec, None).await
    }

    /// Places a new session that starts from `context`.
    pub async fn place_with_context(
        &self,
        id: impl Into<SessionId>,
        spec: SessionSpec,
        context: Option<ChatContext>,
    ) -> Result<RemoteSession, ClusterError> {
        let id = id.into();
        let session = self.session(id.clone())?;
        for tool in &spec.tools {
            super::check_name("tool name", tool, super::MAX_NAME_BYTES)?;
        }
        let req = PlaceRequest {
            session: id.as_str().to_string(),
            spec,
            context,
        };
        let payload = Bytes::from(
            serde_json::to_vec(&req).map_err(|e| ClusterError::Protocol(e.to_string()))?,
        );
        self.check_size("placement request", payload.len()).await?;
        let deadline = Instant::now() + self.inner.config.placement_timeout;
        let mut backoff = Backoff::new();
        loop {
            match self.send(self.inner.names.place(), payload.clone()).await? {
                Sent::Reply(Reply::Ok(v)) => {
                    let worker = v.get("worker").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(session = %id, worker, "placed");
                    return Ok(session);
                }
                Sent::Reply(Reply::Error(e)) if e.kind == "full" => {}
                Sent::Reply(Reply::Error(e)) => return Err(placement_error(&id, e)),
                Sent::NoResponders => {}
                Sent::TimedOut => return Err(ClusterError::Timeout(id)),
            }
            if Instant::now() >= deadline {
                return Err(ClusterError::NoCapacity);
            }
            backoff.wait().await;
        }
    }

    /// A handle on a placed session (no check that it exists).
    pub fn session(&self, id: impl Into<SessionId>) -> Result<RemoteSession, ClusterError> {
        let id = id.into();
        let key = session_key(&id)?;
        Ok(RemoteSession {
            client: self.clone(),
            key,
            id,
        })
    }
}

fn placement_error(id: &SessionId, e: WireError) -> ClusterError {
    match e.kind.as_str() {
        "already_exists" => ClusterError::AlreadyExists(id.clone()),
        "unknown_tool" => {
            let name = e.message.split('"').nth(1).unwrap_or(&e.message);
            ClusterError::UnknownTool(name.to_string())
        }
        "too_large" => {
            let nums: Vec<usize> = e
                .message
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            ClusterError::TooLarge {
                what: "context",
                bytes: nums.first().copied().unwrap_or(0),
                max_bytes: nums.get(1).copied().unwrap_or(0),
            }
        }
        "too_long" => name_too_long(&e.message).unwrap_or_else(|| refused(e)),
        _ => refused(e),
    }
}

/// The [`ClusterError::NameTooLong`] a worker's `too_long` message describes
/// (`"{what} is {bytes} bytes, over the maximum of {max_bytes}"`).
fn name_too_long(message: &str) -> Option<ClusterError> {
    let what = ["session key", "tool name", "prefix", "name"]
        .into_iter()
        .find(|w| message.starts_with(&format!("{w} is ")))?;
    let mut nums = message[what.len()..]
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok());
    Some(ClusterError::NameTooLong {
        what,
        bytes: nums.next()?,
        max_bytes: nums.next()?,
    })
}

fn refused(e: WireError) -> ClusterError {
    if e.kind == "policy"
        && let Some(v) = e
            .detail
            .clone()
            .and_then(|d| serde_json::from_value(d).ok())
    {
        return ClusterError::Policy(v);
    }
    ClusterError::Refused {
        kind: e.kind,
        message: e.message,
    }
}

/// A session running on some worker: the inputs of a
/// [`SessionHandle`](crate::SessionHandle) as NATS requests, and its events.
///
/// Every input is retried while no worker owns the session (a failover or a
/// hand-over in progress), up to [`RemoteConfig::unavailable_timeout`]; then
/// it fails with [`ClusterError::Unavailable`].
#[derive(Clone)]
pub struct RemoteSession {
    client: ClusterClient,
    id: SessionId,
    /// The session key (subject token).
    key: String,
}

impl std::fmt::Debug for RemoteSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteSession")
            .field("id", &self.id)
            .finish()
    }
}

impl RemoteSession {
    /// The session id.
    pub fn id(&self) -> &SessionId {
        &self.id
    }

    async fn call(&self, input: &Input) -> Result<Value, ClusterError> {
        self.call_wire(input).await?.map_err(refused)
    }

    /// An input, its answer as sent (an error with its detail).
    async fn call_wire(&self, input: &Input) -> Result<Result<Value, WireError>, ClusterError> {
        let payload = Bytes::from(
            serde_json::to_vec(input).map_err(|e| ClusterError::Protocol(e.to_string()))?,
        );
        self.client.check_size("input", payload.len()).await?;
        let subject = self.client.inner.names.inputs(&self.key, input.kind());
        let deadline = Instant::now() + self.client.inner.config.unavailable_timeout;
        let mut backoff = Backoff::new();
        loop {
            match self.client.send(subject.clone(), payload.clone()).await? {
                Sent::Reply(Reply::Ok(v)) => return Ok(Ok(v)),
                Sent::Reply(Reply::Error(e)) => return Ok(Err(e)),
                Sent::TimedOut => return Err(ClusterError::Timeout(self.id.clone())),
                Sent::NoResponders if Instant::now() < deadline => backoff.wait().await,
                Sent::NoResponders => return Err(ClusterError::Unavailable(self.id.clone())),
            }
        }
    }

    async fn call_seq(&self, input: &Input) -> Result<u64, ClusterError> {
        let v = self.call(input).await?;
        v.as_u64()
            .ok_or_else(|| ClusterError::Protocol(format!("expected a seq, got {v}")))
    }

    /// Subscribes to the session's events, all classes in the session's
    /// order (one wildcard subscription, `…events.*`): every event published
    /// after this returns is received (the server has registered the
    /// subscription). Subscribe before sending the input whose events you need.
    pub async fn subscribe(&self) -> Result<RemoteEvents, ClusterError> {
        self.subscribe_to(EventClasses::all()).await
    }

    /// Subscribes to some classes of the session's events (for a TTS service,
    /// [`EventClasses::speech`]): the server sends nothing of the others.
    /// Several classes are several subscriptions merged back into the
    /// session's order. Lifecycle (turn boundaries, cuts, `resumed`,
    /// `session_ended`) is only given out if asked for (it is always
    /// subscribed to: its `resumed` tells a new owner from a forger). An
    /// empty set is [`ClusterError::InvalidName`].
    ///
    /// With [`RemoteConfig::confirm_owner`] (the default) the owner is asked
    /// for its generation before this returns (one request; no owner at
    /// that moment, as during a failover, is not an error).
    pub async fn subscribe_to(&self, classes: EventClasses) -> Result<RemoteEvents, ClusterError> {
        let nats = &self.client.inner.nats;
        let names = &self.client.inner.names;
        if classes.iter().next().is_none() {
            return Err(ClusterError::InvalidName("no event class".into()));
        }
        let subscribed = classes.with(EventClass::Lifecycle);
        let subjects: Vec<String> = if subscribed.is_all() {
            vec![names.all_events(&self.key)]
        } else {
            subscribed
                .iter()
                .map(|c| names.events(&self.key, c))
                .collect()
        };
        let mut subs = Vec::with_capacity(subjects.len());
        for subject in subjects {
            subs.push(nats.subscribe(subject).await.map_err(ClusterError::nats)?);
        }
        nats.flush().await.map_err(ClusterError::nats)?;
        let (owner, ask) = if self.client.inner.config.confirm_owner {
            let session = self.clone();
            let ask: events::OwnerProbe =
                Arc::new(move || Box::pin(session.clone().owner_generation()));
            (Some(self.clone().owner_generation().await), Some(ask))
        } else {
            (None, None)
        };
        Ok(RemoteEvents::new(
            self.id.clone(),
            subs,
            classes,
            owner,
            ask,
        ))
    }

    /// The owner's generation, asked once, waiting at most
    /// [`OWNER_QUESTION_TIMEOUT`] (or the request timeout, if shorter).
    async fn owner_generation(self) -> events::OwnerAnswer {
        use events::OwnerAnswer;
        let Ok(payload) = serde_json::to_vec(&Input::Owner) else {
            return OwnerAnswer::NoAnswer;
        };
        let subject = self.client.inner.names.inputs(&self.key, InputKind::Speech);
        let timeout = OWNER_QUESTION_TIMEOUT.min(self.client.inner.config.request_timeout);
        match self
            .client
            .send_within(subject, Bytes::from(payload), timeout)
            .await
        {
            Ok(Sent::Reply(Reply::Ok(v))) => v
                .get("generation")
                .and_then(Value::as_u64)
                .map_or(OwnerAnswer::NoAnswer, OwnerAnswer::Generation),
            // An older worker refuses an op it does not know.
            Ok(Sent::Reply(Reply::Error(e))) if e.kind == "invalid" => OwnerAnswer::Unsupported,
            Ok(Sent::NoResponders) => OwnerAnswer::NoOwner,
            _ => OwnerAnswer::NoAnswer,
        }
    }

    /// The subject of one class of the session's events (for a subscriber of
    /// its own).
    pub fn events_subject(&self, class: EventClass) -> String {
        self.client.inner.names.events(&self.key, class)
    }

    /// The user started speaking: the owner applies the session's
    /// interruption policy on receipt (immediate mode cuts the turn in
    /// flight; confirmed mode pauses it). Returns the event's seq.
    pub async fn user_speech_started(&self) -> Result<u64, ClusterError> {
        self.call_seq(&Input::UserSpeechStarted).await
    }

    /// The user stopped speaking (voice activity ended). Returns the event's seq.
    pub async fn user_speech_ended(&self) -> Result<u64, ClusterError> {
        self.call_seq(&Input::UserSpeechEnded).await
    }

    /// A transcript; a final one starts a turn. Returns the event's seq.
    pub async fn user_transcript(
        &self,
        text: impl Into<String>,
        is_final: bool,
    ) -> Result<u64, ClusterError> {
        self.call_seq(&Input::UserTranscript {
            text: text.into(),
            is_final,
        })
        .await
    }

    /// `chars` characters of `turn`'s text were played. Returns the event's seq.
    pub async fn speech_played(&self, turn: TurnId, chars: usize) -> Result<u64, ClusterError> {
        self.call_seq(&Input::SpeechPlayed {
            turn: turn.0,
            chars,
        })
        .await
    }

    /// A typed user message; starts a turn (cancelling the one in flight, by default).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClusterError> {
        self.call(&Input::SendText {
            text: text.into(),
            track: false,
        })
        .await
        .map(|_| ())
    }

    /// [`send_text`](Self::send_text), and the reply to follow.
    pub async fn send_text_tracked(
        &self,
        text: impl Into<String>,
    ) -> Result<RemoteReply, ClusterError> {
        self.tracked(Input::SendText {
            text: text.into(),
            track: true,
        })
        .await
    }

    /// A user message of any parts (text, images by URL or inline as data
    /// URLs; the worker's `max_input_bytes` bounds the message); starts a
    /// turn when `respond` (without, the reply is dropped at once).
    pub async fn send_message(
        &self,
        content: Vec<ContentPart>,
        respond: bool,
    ) -> Result<RemoteReply, ClusterError> {
        self.tracked(Input::SendMessage {
            content,
            respond,
            track: true,
        })
        .await
    }

    /// Starts a turn on the current context (e.g. to greet the user first);
    /// dropped while a turn is in flight.
    pub async fn generate(&self) -> Result<RemoteReply, ClusterError> {
        self.tracked(Input::Generate { track: true }).await
    }

    /// Speaks fixed text through the turn machinery, with no model request.
    pub async fn say(&self, text: impl Into<String>) -> Result<RemoteReply, ClusterError> {
        self.say_with(text, SayOptions::default()).await
    }

    /// [`say`](Self::say) with options (`allow_interruptions: false`: speaks
    /// to its end whatever the user says).
    pub async fn say_with(
        &self,
        text: impl Into<String>,
        options: SayOptions,
    ) -> Result<RemoteReply, ClusterError> {
        self.tracked(Input::Say {
            text: text.into(),
            allow_interruptions: options.allow_interruptions,
            track: true,
        })
        .await
    }

    async fn tracked(&self, input: Input) -> Result<RemoteReply, ClusterError> {
        let v = self.call(&input).await?;
        let id = v
            .get("reply")
            .and_then(Value::as_str)
            .ok_or_else(|| ClusterError::Protocol(format!("expected a reply id, got {v}")))?;
        Ok(RemoteReply::new(self.clone(), id.to_string()))
    }

    /// Changes the session's settings: `patch` is a JSON merge patch (RFC
    /// 7386, see [`SessionSpec::patched`]) over its spec, checked by the
    /// owner's placement policy like a placement; its tools, segmenter and
    /// event classes cannot change (`invalid`). Applies from the next
    /// request on, and is stored with the checkpoint before this returns (a
    /// failover keeps it). Returns the session's spec now (`{}` reads it).
    pub async fn update_settings(&self, patch: Value) -> Result<SessionSpec, ClusterError> {
        let v = self.call(&Input::UpdateSettings { patch }).await?;
        serde_json::from_value(v).map_err(|e| ClusterError::Protocol(e.to_string()))
    }

    /// Replaces the committed history. Refused (`turn_in_flight`) while a
    /// turn is in flight; the worker's `max_input_bytes` bounds it.
    pub async fn replace_context(&self, context: ChatContext) -> Result<(), ClusterError> {
        self.call(&Input::ReplaceContext { context })
            .await
            .map(|_| ())
    }

    /// Cancels the turn in flight. When this returns, the owner has closed
    /// the turn on its ledger and published `TurnFinished(Cancelled)`; no
    /// event of the turn follows it.
    pub async fn cancel(&self) -> Result<(), ClusterError> {
        self.call(&Input::Cancel).await.map(|_| ())
    }

    /// Answers a tool call of `turn`. Returns the event's seq.
    pub async fn submit_tool_result(
        &self,
        turn: TurnId,
        output: ToolOutput,
    ) -> Result<u64, ClusterError> {
        self.call_seq(&Input::SubmitToolResult {
            turn: turn.0,
            call_id: output.call_id,
            name: output.name,
            output: output.output,
            is_error: output.is_error,
        })
        .await
    }

    /// The committed context, from the owner.
    pub async fn context(&self) -> Result<ChatContext, ClusterError> {
        let v = self.call(&Input::Context).await?;
        serde_json::from_value(v).map_err(|e| ClusterError::Protocol(e.to_string()))
    }

    /// Ends the session: it stops on its worker and its ownership record and checkpoint
    /// are deleted.
    pub async fn close(&self) -> Result<(), ClusterError> {
        self.call(&Input::Close).await.map(|_| ())
    }
}
