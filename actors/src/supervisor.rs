//! The session supervisor: starts, finds, restarts and stops sessions.
//!
//! Sessions live in a `DashMap` registry keyed by [`SessionId`], so looking one
//! up from any task (an HTTP handler, a media pipeline) never waits on an actor.
//! Every session actor is spawned linked to one supervisor actor, which
//! overrides ractor's default supervision (stop the supervisor when a child
//! dies): a failed LLM actor is restarted with the session's last committed
//! context, its turn in flight is closed on the bus as failed (and committed
//! by the new actor), and the other sessions never notice. A failed tool
//! executor is restarted too.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use colloquy::context::ChatContext;
use colloquy::llm::ChatClient;
use dashmap::DashMap;
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::bus::{DEFAULT_BUS_CAPACITY, SessionBus, TurnEnd};
use crate::ids::SessionId;
use crate::llm_actor::SessionCore;
use crate::llm_actor::{AgentSettings, LlmActor};
use crate::segmenter::SegmenterConfig;
use crate::session::SessionHandle;
use crate::task::AbortOnDrop;
use crate::tool_executor::{ToolExecutor, ToolExecutorMsg, ToolRegistry};

/// Errors of the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// The session cap is reached.
    #[error("session limit reached ({max} sessions)")]
    TooManySessions {
        /// The cap.
        max: usize,
    },
    /// A session with this id is running.
    #[error("session {0} already exists")]
    AlreadyExists(SessionId),
    /// No session with this id.
    #[error("no session {0}")]
    NotFound(SessionId),
    /// ractor refused to spawn an actor.
    #[error("cannot spawn actor: {0}")]
    Spawn(String),
}

/// Everything a new session needs.
#[derive(Clone)]
pub struct SessionConfig {
    /// The client for this session's model (share one across sessions).
    pub client: ChatClient,
    /// Generation settings.
    pub settings: AgentSettings,
    /// History to start from.
    pub context: ChatContext,
    /// Tools to run in a tool executor; their definitions are added to the
    /// settings' tools.
    pub tools: Option<ToolRegistry>,
    /// Where replies are cut into speakable segments (`Speakable` events,
    /// decided with the tokens in the ledger) when the session speaks.
    pub segmenter: SegmenterConfig,
    /// A TTS outside the runtime speaks the segments (a
    /// [`Speaker`](crate::speech::Speaker) declares itself): a reply then
    /// counts as playing from its first segment until playback reports its
    /// end, so a barge-in before the first report still cuts it.
    pub speech_output: bool,
    /// Events a bus subscriber may fall behind.
    pub bus_capacity: usize,
    /// Where the session's spans go (none: no spans, no cost).
    #[cfg(feature = "otel")]
    pub tracing: Option<crate::telemetry::Tracing>,
}

impl SessionConfig {
    /// A session with no tools, default segments and no declared speech output.
    pub fn new(client: ChatClient, settings: AgentSettings) -> Self {
        Self {
            client,
            settings,
            context: ChatContext::new(),
            tools: None,
            segmenter: SegmenterConfig::default(),
            speech_output: false,
            bus_capacity: DEFAULT_BUS_CAPACITY,
            #[cfg(feature = "otel")]
            tracing: None,
        }
    }

    /// Traces the session ([`telemetry`](crate::telemetry)): a span for
    /// it, one per turn, request, tool call, utterance and spoken segment.
    #[cfg(feature = "otel")]
    pub fn with_tracing(mut self, tracing: crate::telemetry::Tracing) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// Adds a tool executor with these tools.
    pub fn with_tools(mut self, tools: ToolRegistry) -> Self {
        self.tools = Some(tools);
        self
    }

    /// Replies are spoken by a TTS reading their `Speakable` segments, cut
    /// where `config` says (sets [`SessionConfig::speech_output`]).
    pub fn with_segmenter(mut self, config: SegmenterConfig) -> Self {
        self.segmenter = config;
        self.speech_output = true;
        self
    }

    /// Starts from an existing history.
    pub fn with_context(mut self, context: ChatContext) -> Self {
        self.context = context;
        self
    }
}

/// Limits of a supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// Sessions at most.
    pub max_sessions: usize,
    /// Restarts of one session's actors before the session is stopped.
    pub max_restarts: u32,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        Self {
            max_sessions: 100_000,
            max_restarts: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Llm,
    Tools,
}

struct SessionEntry {
    core: Arc<SessionCore>,
    tools: Option<(ToolRegistry, ActorRef<ToolExecutorMsg>)>,
    /// Gives the turn-taking rules their time (pauses, resumes).
    _timer: AbortOnDrop,
    restarts: u32,
}

struct Shared {
    sessions: DashMap<SessionId, SessionEntry>,
    by_actor: DashMap<ActorId, (SessionId, Role)>,
    count: AtomicUsize,
    config: SupervisorConfig,
}

struct SupervisorActor;

impl Actor for SupervisorActor {
    type Msg = ();
    type State = Arc<Shared>;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        shared: Arc<Shared>,
    ) -> Result<Arc<Shared>, ActorProcessingErr> {
        Ok(shared)
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<()>,
        event: SupervisionEvent,
        shared: &mut Arc<Shared>,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some((_, (session, role))) = shared.by_actor.remove(&cell.get_id()) else {
                    return Ok(());
                };
                tracing::error!(session = %session, ?role, %error, "session actor failed; restarting");
                metrics::counter!("colloquy_actor_restarts_total").increment(1);
                restart(shared, myself.get_cell(), &session, role).await;
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                shared.by_actor.remove(&cell.get_id());
            }
            _ => {}
        }
        Ok(())
    }
}

async fn restart(shared: &Arc<Shared>, sup: ActorCell, session: &SessionId, role: Role) {
    let Some((core, restarts, tools)) = shared.sessions.get_mut(session).map(|mut e| {
        e.restarts += 1;
        (
            e.core.clone(),
            e.restarts,
            e.tools.as_ref().map(|(r, _)| r.clone()),
        )
    }) else {
        return;
    };
    if role == Role::Llm {
        // The turn in flight died with the actor: close it so subscribers and
        // speakers stop, and report an estimate of its usage. The new actor
        // commits its record when it starts.
        core.bus
            .cut(None, TurnEnd::Failed(Arc::from("llm actor failed")));
        core.set_llm(None);
    }
    if restarts > shared.config.max_restarts {
        tracing::error!(session = %session, restarts, "too many restarts; stopping the session");
        if let Some((_, entry)) = shared.sessions.remove(session) {
            shared.count.fetch_sub(1, Ordering::SeqCst);
            metrics::gauge!("colloquy_active_sessions").decrement(1.0);
            stop_entry(shared, entry).await;
        }
        return;
    }
    let result = match role {
        Role::Llm => spawn_llm(shared, &core, sup).await.map(|()| {
            // Stopped while the new actor was starting: stop it too, so no
            // actor outlives its session.
            let alive = shared
                .sessions
                .get(session)
                .is_some_and(|e| Arc::ptr_eq(&e.core, &core));
            if !alive && let Some(actor) = core.llm() {
                core.set_llm(None);
                actor.stop(None);
            }
        }),
        Role::Tools => match tools {
            Some(registry) => spawn_tools(shared, &core, registry.clone(), sup)
                .await
                .map(|a| {
                    if let Some(mut e) = shared.sessions.get_mut(session) {
                        e.tools = Some((registry, a));
                    }
                }),
            None => Ok(()),
        },
    };
    if let Err(e) = result {
        tracing::error!(session = %session, error = %e, "restart failed");
    }
}

/// Spawns one session actor linked to the supervisor and records its role, so
/// a failure can be traced back to the session and restarted.
async fn spawn_child<A: Actor>(
    shared: &Shared,
    core: &SessionCore,
    role: Role,
    actor: A,
    args: A::Arguments,
    sup: ActorCell,
) -> Result<ActorRef<A::Msg>, SupervisorError> {
    let (actor, _) = Actor::spawn_linked(None, actor, args, sup)
        .await
        .map_err(|e| SupervisorError::Spawn(e.to_string()))?;
    shared
        .by_actor
        .insert(actor.get_id(), (core.id.clone(), role));
    Ok(actor)
}

async fn spawn_llm(
    shared: &Shared,
    core: &Arc<SessionCore>,
    sup: ActorCell,
) -> Result<(), SupervisorError> {
    let actor = spawn_child(shared, core, Role::Llm, LlmActor, core.clone(), sup).await?;
    core.set_llm(Some(actor));
    Ok(())
}

async fn spawn_tools(
    shared: &Shared,
    core: &Arc<SessionCore>,
    registry: ToolRegistry,
    sup: ActorCell,
) -> Result<ActorRef<ToolExecutorMsg>, SupervisorError> {
    let args = (core.bus.clone(), registry);
    spawn_child(shared, core, Role::Tools, ToolExecutor, args, sup).await
}

async fn stop_entry(shared: &Shared, entry: SessionEntry) {
    let timeout = Some(Duration::from_secs(5));
    let mut cells: Vec<ActorCell> = Vec::new();
    if let Some(llm) = entry.core.llm() {
        cells.push(llm.get_cell());
    }
    if let Some((_, a)) = &entry.tools {
        cells.push(a.get_cell());
    }
    for cell in cells {
        shared.by_actor.remove(&cell.get_id());
        let _ = cell.stop_and_wait(None, timeout).await;
    }
    entry.core.set_llm(None);
    // Inputs nobody will take are dropped (their reply handles finish).
    entry.core.close_inputs();
    // Subscribers see `Closed` once drained, even while handles live.
    entry.core.bus.close();
    entry.core.telemetry.end();
}

/// Owns every session of a process (or of a shard of one).
#[derive(Clone)]
pub struct Supervisor {
    actor: ActorRef<()>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("sessions", &self.session_count())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Supervisor {
    /// Starts a supervisor.
    pub async fn start(config: SupervisorConfig) -> Result<Self, SupervisorError> {
        let shared = Arc::new(Shared {
            sessions: DashMap::new(),
            by_actor: DashMap::new(),
            count: AtomicUsize::new(0),
            config,
        });
        let (actor, _) = Actor::spawn(None, SupervisorActor, shared.clone())
            .await
            .map_err(|e| SupervisorError::Spawn(e.to_string()))?;
        Ok(Self { actor, shared })
    }

    /// Starts a session: its bus, its LLM actor, and the optional tool executor.
    pub async fn start_session(
        &self,
        id: impl Into<SessionId>,
        config: SessionConfig,
    ) -> Result<SessionHandle, SupervisorError> {
        let id = id.into();
        let max = self.shared.config.max_sessions;
        if self.shared.count.fetch_add(1, Ordering::SeqCst) >= max {
            self.shared.count.fetch_sub(1, Ordering::SeqCst);
            return Err(SupervisorError::TooManySessions { max });
        }
        if self.shared.sessions.contains_key(&id) {
            self.shared.count.fetch_sub(1, Ordering::SeqCst);
            return Err(SupervisorError::AlreadyExists(id));
        }
        match self.spawn_session(id.clone(), config).await {
            Ok(handle) => {
                metrics::gauge!("colloquy_active_sessions").increment(1.0);
                Ok(handle)
            }
            Err(e) => {
                self.shared.count.fetch_sub(1, Ordering::SeqCst);
                Err(e)
            }
        }
    }

    async fn spawn_session(
        &self,
        id: SessionId,
        config: SessionConfig,
    ) -> Result<SessionHandle, SupervisorError> {
        let SessionConfig {
            client,
            mut settings,
            context,
            tools,
            segmenter,
            speech_output,
            bus_capacity,
            #[cfg(feature = "otel")]
            tracing,
        } = config;
        if let Some(registry) = &tools {
            for def in registry.definitions() {
                if !settings.options.tools.iter().any(|t| t.name == def.name) {
                    settings.options.tools.push(def);
                }
            }
        }
        let bus = SessionBus::new(id.clone(), bus_capacity);
        bus.set_segmenter(segmenter);
        if speech_output {
            bus.set_voice(true);
        }
        #[cfg(feature = "otel")]
        let providers = client.providers();
        let core = Arc::new(SessionCore::new(id.clone(), bus, client, settings, context));
        #[cfg(feature = "otel")]
        if let Some(tracing) = tracing {
            core.telemetry.attach(tracing, &core.bus, providers);
        }
        let sup = self.actor.get_cell();
        // Tools first: they must be listening before the first turn.
        let tools = match tools {
            Some(registry) => Some((
                registry.clone(),
                spawn_tools(&self.shared, &core, registry, sup.clone()).await?,
            )),
            None => None,
        };
        spawn_llm(&self.shared, &core, sup).await?;
        let entry = SessionEntry {
            core: core.clone(),
            tools,
            _timer: core.bus.spawn_timer(),
            restarts: 0,
        };
        // Decide under the entry (a shard write guard), act after it is dropped:
        // stopping the loser's actors awaits, and a guard held across that await
        // would block every lookup on the shard (on a current-thread runtime,
        // for good).
        let lost = match self.shared.sessions.entry(id.clone()) {
            dashmap::Entry::Occupied(_) => Some(entry),
            dashmap::Entry::Vacant(v) => {
                v.insert(entry);
                None
            }
        };
        match lost {
            Some(entry) => {
                stop_entry(&self.shared, entry).await;
                Err(SupervisorError::AlreadyExists(id))
            }
            None => Ok(SessionHandle { core }),
        }
    }

    /// Finds a running session.
    pub fn session(&self, id: &SessionId) -> Option<SessionHandle> {
        self.shared.sessions.get(id).map(|e| SessionHandle {
            core: e.core.clone(),
        })
    }

    /// Number of running sessions.
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Stops a session: its turn in flight is cancelled and committed, its actors
    /// and tasks end, its connection closes.
    pub async fn stop_session(&self, id: &SessionId) -> Result<(), SupervisorError> {
        let (_, entry) = self
            .shared
            .sessions
            .remove(id)
            .ok_or_else(|| SupervisorError::NotFound(id.clone()))?;
        self.shared.count.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("colloquy_active_sessions").decrement(1.0);
        stop_entry(&self.shared, entry).await;
        Ok(())
    }

    /// Stops every session, then the supervisor.
    pub async fn shutdown(self) {
        let ids: Vec<SessionId> = self
            .shared
            .sessions
            .iter()
            .map(|e| e.key().clone())
            .collect();
        for id in ids {
            let _ = self.stop_session(&id).await;
        }
        let _ = self
            .actor
            .stop_and_wait(None, Some(Duration::from_secs(5)))
            .await;
    }
}
