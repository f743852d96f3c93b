//! A worker: a local supervisor whose sessions are placed, owned, checkpointed
//! and handed over through NATS.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::Operation;
use async_nats::{Client, Message, Subject, Subscriber};
use bytes::Bytes;
use colloquy::context::ChatContext;
use colloquy::llm::ChatClient;
use dashmap::{DashMap, DashSet};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::admission::{Admission, Ticket};
use super::lease::{Checkpoint, Lease, LeaseState, Store, StoreError};
use super::spec::SessionSpec;
use super::wire::{self, Input, PlaceRequest, Reply, WORKER_LOST, WireError};
use super::{ClusterError, DEFAULT_PREFIX, Names, session_key};
use crate::bus::{
    BusEvent, BusReceiver, BusRecvError, EventKind, SpeculationOutcome, ToolOutput, TurnEnd,
};
use crate::ids::{SessionId, TurnId};
use crate::segmenter::SegmenterConfig;
use crate::session::SessionHandle;
use crate::supervisor::{SessionConfig, Supervisor, SupervisorConfig, SupervisorError};
use crate::tool_executor::{Tool, ToolRegistry};

/// Bus events between two worker-published seq slots: a bus event `n` is
/// published as `generation × 2³² + 4n`, leaving three numbers after each for
/// the worker's own events (`lagged`, `checkpoint_too_large`, …).
const SEQ_STRIDE: u64 = 4;

/// Everything a worker needs.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The worker's name (in events, leases and logs).
    pub name: String,
    /// The model client every session of this worker uses.
    pub client: ChatClient,
    /// The model of specs that name none.
    pub default_model: String,
    /// Tools sessions may ask for by name.
    pub tools: ToolRegistry,
    /// Sessions at most; a full worker stops offering capacity.
    pub max_sessions: usize,
    /// Prefix of subjects and buckets (default `colloquy`).
    pub prefix: String,
    /// A lease not renewed for this long is claimed by another worker (it is
    /// renewed every third of it). Default 1 s.
    pub lease_ttl: Duration,
    /// How long [`Worker::drain`] lets turns in flight finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Bus capacity of each session (the forwarder is one subscriber; it
    /// waits for the store at each turn start and end). Default 1024.
    pub bus_capacity: usize,
    /// The segmenter of sessions whose spec asks for one.
    pub segmenter: SegmenterConfig,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("name", &self.name)
            .field("client", &self.client)
            .field("default_model", &self.default_model)
            .field("tools", &self.tools.definitions().len())
            .field("max_sessions", &self.max_sessions)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("drain_timeout", &self.drain_timeout)
            .field("bus_capacity", &self.bus_capacity)
            .finish()
    }
}

impl WorkerConfig {
    /// A worker named `name` serving sessions with `client`: 100 sessions, no
    /// tools, default model `gpt-4o-mini`, lease 1 s, drain 10 s.
    pub fn new(name: impl Into<String>, client: ChatClient) -> Self {
        Self {
            name: name.into(),
            client,
            default_model: "gpt-4o-mini".into(),
            tools: ToolRegistry::new(),
            max_sessions: 100,
            prefix: DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            bus_capacity: 1024,
            segmenter: SegmenterConfig::default(),
        }
    }

    /// Registers a tool sessions may name.
    pub fn with_tool(mut self, tool: Tool) -> Self {
        self.tools = self.tools.with_tool(tool);
        self
    }

    /// Sets the session cap.
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sets the model of specs that name none.
    pub fn with_default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = model.into();
        self
    }

    /// Sets the lease time.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the drain timeout.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets the prefix of subjects and buckets.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// What [`Worker::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions whose lease was released for another worker.
    pub handed_over: usize,
    /// Of those, sessions whose turn was still in flight at the drain timeout
    /// (cancelled and committed before the hand-over).
    pub cut_at_timeout: usize,
    /// Sessions that could not be handed over (their lease was lost, or the
    /// store failed); others claim them when their lease expires.
    pub failed: usize,
}

enum Control {
    HandOver {
        deadline: Instant,
        done: oneshot::Sender<Result<bool, ClusterError>>,
    },
    Close {
        done: oneshot::Sender<Result<(), ClusterError>>,
    },
}

/// A session running here.
struct Local {
    control: mpsc::UnboundedSender<Control>,
    driver: tokio::task::AbortHandle,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

struct Inner {
    config: WorkerConfig,
    names: Names,
    instance: String,
    nats: Client,
    store: Store,
    supervisor: Supervisor,
    sessions: DashMap<String, Local>,
    claiming: DashSet<String>,
    reserved: AtomicUsize,
    /// Draining and the admissions in progress (see admission.rs).
    admission: Arc<Admission>,
    changed: Notify,
}

impl Inner {
    /// A slot and an admission ticket, unless draining or full.
    fn try_reserve(&self) -> Option<Ticket> {
        let max = self.config.max_sessions;
        let ticket = self.admission.begin(|| {
            self.reserved
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok()
        })?;
        self.changed.notify_one();
        Some(ticket)
    }

    fn release_slot(&self) {
        let _ = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.changed.notify_one();
    }

    fn offering(&self) -> bool {
        !self.admission.is_draining()
            && self.reserved.load(Ordering::SeqCst) < self.config.max_sessions
    }

    fn load(&self) -> f64 {
        self.reserved.load(Ordering::SeqCst) as f64 / self.config.max_sessions.max(1) as f64
    }

    /// The tools of a spec, or the first unknown name.
    fn tools_for(&self, spec: &SessionSpec) -> Result<Option<ToolRegistry>, ClusterError> {
        if spec.tools.is_empty() {
            return Ok(None);
        }
        let registry = &self.config.tools;
        let mut picked = HashMap::new();
        for name in &spec.tools {
            super::check_name("tool name", name, super::MAX_NAME_BYTES)?;
            let tool = registry
                .get(name)
                .ok_or_else(|| ClusterError::UnknownTool(name.clone()))?;
            picked.insert(name.clone(), tool.clone());
        }
        Ok(Some(ToolRegistry {
            tools: Arc::new(picked),
            timeout: registry.timeout,
            max_output_bytes: registry.max_output_bytes,
        }))
    }

    fn lease(&self, generation: u64, state: LeaseState) -> Lease {
        Lease {
            worker: self.config.name.clone(),
            instance: self.instance.clone(),
            generation,
            state,
            ttl_ms: self.config.lease_ttl.as_millis() as u64,
        }
    }
}

/// How a session came to run here.
struct Ownership {
    generation: u64,
    lease_rev: u64,
    checkpoint_rev: u64,
    committed_turn: u64,
    started_turn: u64,
    /// Set when resumed from another worker's checkpoint.
    resumed_from: Option<Option<String>>,
}

/// A worker process's part of the cluster: it runs sessions in a local
/// [`Supervisor`], takes new ones from the placement queue while it has room,
/// claims sessions whose lease expired, and hands its own over when draining.
///
/// Dropping a worker (or [`Worker::abort`]) stops its tasks without releasing
/// its leases, as a crash would: other workers resume its sessions once the
/// leases expire.
pub struct Worker {
    inner: Arc<Inner>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.config.name)
            .field("instance", &self.inner.instance)
            .field("sessions", &self.inner.sessions.len())
            .finish()
    }
}

impl Worker {
    /// Starts a worker on a NATS connection (see [`connect`](super::connect)):
    /// opens (or creates) the buckets, subscribes to the placement subject
    /// (registered at the server when this returns), and starts watching leases.
    pub async fn start(nats: Client, config: WorkerConfig) -> Result<Self, ClusterError> {
        let names = Names::new(&config.prefix)?;
        if config.name.is_empty() {
            return Err(ClusterError::InvalidName(String::new()));
        }
        super::check_name("name", &config.name, super::MAX_NAME_BYTES)?;
        let store = Store::open(&nats, &names).await?;
        let supervisor = Supervisor::start(SupervisorConfig {
            max_sessions: config.max_sessions.saturating_add(16),
            ..SupervisorConfig::default()
        })
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let inbox = nats.new_inbox();
        let unique = inbox.rsplit('.').next().unwrap_or(&inbox).to_string();
        let instance = format!("{}-{unique}", config.name);
        let inner = Arc::new(Inner {
            names,
            instance,
            nats: nats.clone(),
            store,
            supervisor,
            sessions: DashMap::new(),
            claiming: DashSet::new(),
            reserved: AtomicUsize::new(0),
            admission: Arc::default(),
            changed: Notify::new(),
            config,
        });
        let first = if inner.offering() {
            let sub = nats
                .queue_subscribe(inner.names.place(), inner.names.queue_group())
                .await
                .map_err(ClusterError::nats)?;
            nats.flush().await.map_err(ClusterError::nats)?;
            Some(sub)
        } else {
            None
        };
        let tasks = vec![
            tokio::spawn(placement(inner.clone(), first)).abort_handle(),
            tokio::spawn(monitor(inner.clone())).abort_handle(),
        ];
        tracing::info!(worker = %inner.config.name, instance = %inner.instance, "worker started");
        Ok(Self { inner, tasks })
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// This run's unique id (the name and a random suffix), as in its leases.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Sessions running here.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Ids of the sessions running here.
    pub fn sessions(&self) -> Vec<SessionId> {
        self.inner
            .sessions
            .iter()
            .filter_map(|e| super::session_id_from_key(e.key()))
            .collect()
    }

    /// The local handle of a session running here.
    pub fn local_session(&self, id: &SessionId) -> Option<SessionHandle> {
        let key = session_key(id).ok()?;
        if !self.inner.sessions.contains_key(&key) {
            return None;
        }
        self.inner.supervisor.session(id)
    }

    /// Stops taking sessions (placements and claims), lets turns in flight
    /// finish up to the drain timeout (then cancels and commits them), stores
    /// each session's final checkpoint and releases its lease, so another
    /// worker claims it at once.
    pub async fn drain(&self) -> DrainReport {
        // No admission from now on; those in progress end first, so every
        // session admitted is in the set handed over below.
        let admitted = self.inner.admission.drain();
        self.inner.changed.notify_one();
        #[cfg(test)]
        super::test_hooks::at(&self.inner.config.name, "drain_started").await;
        admitted.await;
        let deadline = Instant::now() + self.inner.config.drain_timeout;
        let waits: Vec<_> = self
            .inner
            .sessions
            .iter()
            .map(|e| {
                let (done, rx) = oneshot::channel();
                let _ = e.control.send(Control::HandOver { deadline, done });
                rx
            })
            .collect();
        let mut report = DrainReport::default();
        for r in futures_util::future::join_all(waits).await {
            match r {
                Ok(Ok(cut)) => {
                    report.handed_over += 1;
                    report.cut_at_timeout += usize::from(cut);
                }
                _ => report.failed += 1,
            }
        }
        metrics::counter!("colloquy_cluster_handovers_total").increment(report.handed_over as u64);
        tracing::info!(worker = %self.inner.config.name, ?report, "drained");
        report
    }

    /// Waits for SIGTERM or SIGINT (Ctrl-C), then [drains](Worker::drain).
    pub async fn drain_on_signal(&self) -> std::io::Result<DrainReport> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            tokio::select! {
                _ = term.recv() => {}
                r = tokio::signal::ctrl_c() => r?,
            }
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await?;
        Ok(self.drain().await)
    }

    /// Drains, then stops the worker.
    pub async fn shutdown(self) -> DrainReport {
        let report = self.drain().await;
        self.abort().await;
        report
    }

    /// Stops everything now without releasing a lease or publishing anything
    /// more, as a crash would (other workers resume the sessions once their
    /// leases expire).
    pub async fn abort(mut self) {
        self.stop_tasks();
        self.inner.supervisor.clone().shutdown().await;
    }

    fn stop_tasks(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        // Dropping the entries aborts their drivers, which own the input tasks.
        self.inner.sessions.clear();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop_tasks();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(self.inner.supervisor.clone().shutdown());
        }
    }
}

// ---------------------------------------------------------------- placement

async fn next_message(sub: &mut Option<Subscriber>) -> Option<Message> {
    match sub.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Offers capacity while there is some: subscribed to the placement subject
/// in the queue group exactly while not full and not draining.
async fn placement(inner: Arc<Inner>, mut sub: Option<Subscriber>) {
    loop {
        let notified = inner.changed.notified();
        let offering = inner.offering();
        if offering && sub.is_none() {
            match inner
                .nats
                .queue_subscribe(inner.names.place(), inner.names.queue_group())
                .await
            {
                Ok(s) => sub = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe to placements; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        } else if !offering && let Some(mut s) = sub.take() {
            let _ = s.unsubscribe().await;
        }
        tokio::select! {
            msg = next_message(&mut sub) => match msg {
                Some(msg) => on_place(&inner, msg),
                None => sub = None,
            },
            _ = notified => {}
        }
    }
}

fn on_place(inner: &Arc<Inner>, msg: Message) {
    let Some(reply) = msg.reply.clone() else {
        return;
    };
    let Some(ticket) = inner.try_reserve() else {
        let err = WireError::new("full", "the worker has no capacity");
        let nats = inner.nats.clone();
        tokio::spawn(async move {
            let _ = nats.publish(reply, Reply::Error(err).encode().into()).await;
        });
        return;
    };
    let inner = inner.clone();
    tokio::spawn(async move {
        let reply_body = match place(&inner, &msg.payload, ticket).await {
            Ok(()) => {
                metrics::counter!("colloquy_cluster_placements_total", "outcome" => "ok")
                    .increment(1);
                Reply::Ok(json!({"worker": inner.config.name}))
            }
            Err(e) => {
                inner.release_slot();
                metrics::counter!("colloquy_cluster_placements_total", "outcome" => "refused")
                    .increment(1);
                Reply::Error(e)
            }
        };
        let _ = inner.nats.publish(reply, reply_body.encode().into()).await;
    });
}

fn too_large(bytes: usize, max_bytes: usize) -> WireError {
    metrics::counter!("colloquy_cluster_checkpoint_too_large_total").increment(1);
    WireError::new(
        "too_large",
        ClusterError::TooLarge {
            what: "context",
            bytes,
            max_bytes,
        },
    )
}

async fn place(inner: &Arc<Inner>, payload: &[u8], ticket: Ticket) -> Result<(), WireError> {
    let req: PlaceRequest =
        serde_json::from_slice(payload).map_err(|e| WireError::new("invalid", e))?;
    let id = SessionId::from(req.session);
    // Bounded before anything is sent: an over-long key in a subject would
    // make the server close this worker's connection.
    let refusal = |e: ClusterError| match e {
        ClusterError::UnknownTool(_) => WireError::new("unknown_tool", e),
        ClusterError::NameTooLong { .. } => WireError::new("too_long", e),
        e => WireError::new("invalid", e),
    };
    let key = session_key(&id).map_err(refusal)?;
    inner.tools_for(&req.spec).map_err(refusal)?;
    let lease = inner.lease(1, LeaseState::Held);
    let checkpoint = Checkpoint {
        v: 1,
        session: id.as_str().to_string(),
        worker: inner.config.name.clone(),
        generation: 1,
        spec: req.spec,
        context: req.context.unwrap_or_default(),
        committed_turn: 0,
        started_turn: 0,
    };
    let bytes = match inner.store.encode_checkpoint(&checkpoint) {
        Ok(b) => b,
        Err(StoreError::TooLarge { bytes, max_bytes }) => return Err(too_large(bytes, max_bytes)),
        Err(e) => return Err(WireError::new("internal", format!("{e:?}"))),
    };
    let lease_rev = match inner.store.create_lease(&key, &lease).await {
        Ok(r) => r,
        Err(StoreError::Exists) => {
            return Err(WireError::new(
                "already_exists",
                ClusterError::AlreadyExists(id),
            ));
        }
        Err(e) => return Err(WireError::new("internal", format!("{e:?}"))),
    };
    let started = async {
        let checkpoint_rev = inner
            .store
            .put_checkpoint(&key, bytes)
            .await
            .map_err(|e| WireError::new("internal", format!("{e:?}")))?;
        let own = Ownership {
            generation: 1,
            lease_rev,
            checkpoint_rev,
            committed_turn: 0,
            started_turn: 0,
            resumed_from: None,
        };
        start_local(inner, id.clone(), key.clone(), checkpoint, own, ticket)
            .await
            .map_err(|e| WireError::new("internal", e))
    }
    .await;
    if started.is_err() {
        let _ = inner.store.delete_checkpoint(&key).await;
        let _ = inner.store.delete_lease(&key, lease_rev).await;
    }
    started
}

// ----------------------------------------------------------------- claiming

struct Seen {
    revision: u64,
    at: Instant,
    lease: Lease,
}

/// Watches every lease; claims those that expired or were released.
async fn monitor(inner: Arc<Inner>) {
    let tick_every = (inner.config.lease_ttl / 8).max(Duration::from_millis(10));
    loop {
        // The last value of every lease, then every change.
        let mut watch = match inner.store.leases.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch leases; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // A fresh watch starts every lease's clock anew (after a reconnect the
        // owners get a full lease time to renew).
        let mut seen: HashMap<String, Seen> = HashMap::new();
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => match entry.operation {
                        Operation::Put => {
                            let Some(lease) = Lease::decode(&entry.value) else {
                                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                                continue;
                            };
                            tracing::trace!(key = %entry.key, revision = entry.revision, ?lease, "lease seen");
                            let released = lease.state == LeaseState::Released;
                            seen.insert(entry.key.clone(), Seen { revision: entry.revision, at: Instant::now(), lease });
                            if released {
                                consider_claim(&inner, &entry.key, &seen[&entry.key]);
                            }
                        }
                        Operation::Delete | Operation::Purge => {
                            seen.remove(&entry.key);
                        }
                    },
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "lease watch failed; restarting it");
                        break;
                    }
                    None => break,
                },
                _ = tick.tick() => {
                    let connected = inner.nats.connection_state() == State::Connected;
                    if connected && !was_connected {
                        let now = Instant::now();
                        for s in seen.values_mut() {
                            s.at = now;
                        }
                    }
                    was_connected = connected;
                    if !connected {
                        continue;
                    }
                    for (key, s) in &seen {
                        let ttl = Duration::from_millis(s.lease.ttl_ms.max(1));
                        if s.lease.state == LeaseState::Released || s.at.elapsed() > ttl {
                            consider_claim(&inner, key, s);
                        }
                    }
                }
            }
        }
    }
}

fn consider_claim(inner: &Arc<Inner>, key: &str, seen: &Seen) {
    if seen.lease.instance == inner.instance
        || inner.admission.is_draining()
        || !inner.offering()
        || inner.sessions.contains_key(key)
        || !inner.claiming.insert(key.to_string())
    {
        return;
    }
    tracing::debug!(session = %key, from = %seen.lease.worker, "claiming");
    let inner = inner.clone();
    let key = key.to_string();
    let (revision, old) = (seen.revision, seen.lease.clone());
    tokio::spawn(async move {
        // The less loaded a worker, the sooner it tries: placement of resumed
        // sessions balances too. At most a tenth of the lease time.
        let delay = inner.config.lease_ttl.mul_f64(inner.load().min(1.0) / 10.0);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if let Some(ticket) = inner.try_reserve()
            && let Err(e) = claim(&inner, &key, revision, old, ticket).await
        {
            tracing::debug!(session = %key, error = %e, "claim not taken");
            inner.release_slot();
        }
        inner.claiming.remove(&key);
    });
}

/// Takes an expired or released lease over (compare-and-set on its revision:
/// of several claimers exactly one wins), fences and reads the checkpoint,
/// and resumes the session here.
async fn claim(
    inner: &Arc<Inner>,
    key: &str,
    revision: u64,
    old: Lease,
    ticket: Ticket,
) -> Result<(), ClusterError> {
    let id = super::session_id_from_key(key)
        .ok_or_else(|| ClusterError::InvalidName(key.to_string()))?;
    let generation = old.generation.saturating_add(1);
    let lease = inner.lease(generation, LeaseState::Held);
    let lease_rev = match inner.store.cas_lease(key, &lease, revision).await {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("colloquy_cluster_claims_lost_total").increment(1);
            return Err(ClusterError::Nats(format!("claim refused: {e:?}")));
        }
    };
    // Rewrite the checkpoint under the new generation: from now on the old
    // owner's compare-and-set fails, so it cannot overwrite what we resume.
    let mut attempts = 0;
    let (checkpoint, checkpoint_rev) = loop {
        attempts += 1;
        let read = inner.store.read_checkpoint(key).await;
        let step = match read {
            Ok(Some((mut cp, rev))) => {
                cp.generation = generation;
                cp.worker = inner.config.name.clone();
                match inner.store.encode_checkpoint(&cp) {
                    Ok(bytes) => inner
                        .store
                        .cas_checkpoint(key, bytes, rev)
                        .await
                        .map(|r| (cp, r))
                        .map_err(Some),
                    Err(e) => Err(Some(e)),
                }
            }
            // No checkpoint (`None`).
            Ok(None) => Err(None),
            Err(e) => Err(Some(e)),
        };
        match step {
            Ok(done) => break done,
            Err(Some(StoreError::Conflict)) if attempts < 20 => continue,
            // A placement writes its checkpoint right after creating the lease.
            Err(None | Some(StoreError::Other(_))) if attempts < 20 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(None | Some(StoreError::Invalid(_))) => {
                // Nothing to resume: the session was ended (a close deletes
                // its lease first, but one cut short, or an owner that died
                // in between, leaves the lease behind), or its checkpoint
                // does not decode (kept for an operator). Giving the lease
                // back would have every worker claim it forever: it goes.
                metrics::counter!("colloquy_cluster_orphan_leases_total").increment(1);
                tracing::warn!(session = %id, "lease without a usable checkpoint: deleted");
                let _ = inner.store.delete_lease(key, lease_rev).await;
                return Err(ClusterError::Unavailable(id));
            }
            Err(Some(e)) => {
                tracing::error!(session = %id, error = ?e, "cannot resume now: the store failed");
                let mut released = lease.clone();
                released.state = LeaseState::Released;
                let _ = inner.store.cas_lease(key, &released, lease_rev).await;
                return Err(e.into());
            }
        }
    };
    let own = Ownership {
        generation,
        lease_rev,
        checkpoint_rev,
        committed_turn: checkpoint.committed_turn,
        started_turn: checkpoint.started_turn,
        resumed_from: Some(Some(old.worker.clone())),
    };
    if let Err(e) = start_local(inner, id.clone(), key.to_string(), checkpoint, own, ticket).await {
        let mut released = lease.clone();
        released.state = LeaseState::Released;
        let _ = inner.store.cas_lease(key, &released, lease_rev).await;
        return Err(e);
    }
    metrics::counter!("colloquy_cluster_sessions_resumed_total").increment(1);
    tracing::info!(session = %id, from = %old.worker, generation, "session resumed");
    Ok(())
}

// ------------------------------------------------------------ local sessions

/// Starts the session in the local supervisor with its input subscription and
/// its driver.
async fn start_local(
    inner: &Arc<Inner>,
    id: SessionId,
    key: String,
    checkpoint: Checkpoint,
    own: Ownership,
    ticket: Ticket,
) -> Result<(), ClusterError> {
    let spec = checkpoint.spec;
    let tools = inner.tools_for(&spec)?;
    let mut config = SessionConfig::new(
        inner.config.client.clone(),
        spec.agent_settings(&inner.config.default_model),
    )
    .with_context(checkpoint.context);
    config.bus_capacity = inner.config.bus_capacity;
    if let Some(tools) = tools {
        config = config.with_tools(tools);
    }
    if spec.segmenter {
        config = config.with_segmenter(inner.config.segmenter);
    }
    let handle = match inner.supervisor.start_session(id.clone(), config).await {
        Ok(h) => h,
        Err(SupervisorError::AlreadyExists(id)) => return Err(ClusterError::AlreadyExists(id)),
        Err(e) => return Err(ClusterError::Nats(e.to_string())),
    };
    let bus = handle.subscribe();
    let mut checkpoints = handle.watch_checkpoint();
    checkpoints.mark_unchanged();
    let inputs = match inner.nats.subscribe(inner.names.inputs(&key)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = inner.supervisor.stop_session(&id).await;
            return Err(ClusterError::nats(e));
        }
    };
    let turn_base = own.started_turn.max(own.committed_turn);
    let seq_base = own.generation << 32;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let input_ctx = InputCtx {
        nats: inner.nats.clone(),
        handle: handle.clone(),
        turn_base,
        seq_base,
        control: control_tx.clone(),
    };
    let inputs_task = tokio::spawn(run_inputs(input_ctx, inputs));
    let (lost_tx, lost) = watch::channel(false);
    let held = Arc::new(Held {
        lease: inner.lease(own.generation, LeaseState::Held),
        revision: tokio::sync::Mutex::new(own.lease_rev),
        lost: lost_tx,
    });
    let (stop_renewing, stop) = oneshot::channel();
    let renewer = tokio::spawn(renew_lease(inner.clone(), key.clone(), held.clone(), stop));
    let mut driver = Driver {
        inner: inner.clone(),
        events: Subject::from(inner.names.events(&key)),
        generation: own.generation,
        held,
        lost,
        renewer: Some((stop_renewing, renewer)),
        id,
        key: key.clone(),
        handle,
        bus,
        checkpoints,
        control: control_rx,
        inputs: Some(inputs_task.abort_handle()),
        spec,
        checkpoint_rev: own.checkpoint_rev,
        turn_base,
        seq_base,
        last_wire: seq_base,
        committed_turn: own.committed_turn,
        started_turn: own.started_turn,
        too_large: None,
    };
    if let Some(previous) = own.resumed_from {
        driver.announce_resume(previous).await;
    }
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let task_inner = inner.clone();
    let task = tokio::spawn(async move {
        if go_rx.await.is_err() {
            return;
        }
        let key = driver.key.clone();
        driver.run().await;
        // No await after this: removing the entry aborts this task at its
        // next yield point.
        task_inner.sessions.remove(&key);
        task_inner.release_slot();
    });
    #[cfg(test)]
    super::test_hooks::at(&inner.config.name, "admit").await;
    // A drain that began meanwhile waits for this admission, then hands the
    // session over with the others.
    ticket.admit(
        &inner.sessions,
        key,
        Local {
            control: control_tx,
            driver: task.abort_handle(),
        },
    );
    let _ = go_tx.send(());
    Ok(())
}

// -------------------------------------------------------------------- inputs

struct InputCtx {
    nats: Client,
    handle: SessionHandle,
    turn_base: u64,
    seq_base: u64,
    control: mpsc::UnboundedSender<Control>,
}

impl InputCtx {
    fn wire_seq(&self, local: u64) -> u64 {
        self.seq_base + SEQ_STRIDE * local
    }

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
        let session = |e: crate::session::SessionError| WireError::from_session(&e);
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

async fn reply_to(nats: &Client, reply: Option<Subject>, body: Reply) {
    if let Some(reply) = reply {
        let _ = nats.publish(reply, body.encode().into()).await;
    }
}

fn as_reply(r: Result<Value, WireError>) -> Reply {
    match r {
        Ok(v) => Reply::Ok(v),
        Err(e) => Reply::Error(e),
    }
}

/// Executes a session's inputs on receipt (a cancel closes the turn here,
/// before the reply); `context` and `close` run in their own tasks so a
/// cancel never waits behind them.
async fn run_inputs(ctx: InputCtx, mut sub: Subscriber) {
    let ctx = Arc::new(ctx);
    while let Some(msg) = sub.next().await {
        let input: Input = match serde_json::from_slice(&msg.payload) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                let err = WireError::new("invalid", e);
                reply_to(&ctx.nats, msg.reply, Reply::Error(err)).await;
                continue;
            }
        };
        match input {
            Input::Context => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let body = match ctx.handle.context().await {
                        Ok(c) => {
                            let v = serde_json::to_value(&c).unwrap_or(Value::Null);
                            let max = super::max_payload(&ctx.nats).saturating_sub(1024);
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
                    let _ = ctx.control.send(Control::Close { done });
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

// --------------------------------------------------------------------- lease

/// A session's lease while this worker holds it: renewed by its own task,
/// so a slow checkpoint store never delays a renewal.
struct Held {
    lease: Lease,
    revision: tokio::sync::Mutex<u64>,
    /// Set when a compare-and-set shows another worker owns the session.
    lost: watch::Sender<bool>,
}

impl Held {
    /// Renews the lease (compare-and-set on our revision); `false` once lost.
    async fn renew(&self, store: &Store, key: &str) -> bool {
        let mut revision = self.revision.lock().await;
        match store.cas_lease(key, &self.lease, *revision).await {
            Ok(rev) => *revision = rev,
            // Our own write may have landed although its ack was lost.
            Err(StoreError::Conflict) => match store.leases.entry(key).await {
                Ok(Some(e))
                    if e.operation == Operation::Put
                        && Lease::decode(&e.value).as_ref() == Some(&self.lease) =>
                {
                    *revision = e.revision;
                }
                Ok(_) => {
                    self.lost.send_replace(true);
                    return false;
                }
                Err(_) => {}
            },
            Err(e) => tracing::warn!(session = %key, error = ?e, "lease not renewed; retrying"),
        }
        true
    }
}

impl Held {
    /// The revision of our lease once the renewals stopped (one may have
    /// landed without its ack); `Err(Lost)` when another worker owns it.
    async fn settle(&self, store: &Store, key: &str) -> Result<u64, Lost> {
        let revision = *self.revision.lock().await;
        match store.leases.entry(key).await {
            Ok(Some(e)) if e.operation == Operation::Put => {
                if Lease::decode(&e.value).as_ref() == Some(&self.lease) {
                    Ok(e.revision)
                } else {
                    Err(Lost)
                }
            }
            Ok(_) => Err(Lost),
            Err(_) => Ok(revision),
        }
    }
}

/// Renews a lease every third of its time until it is lost or `stop` fires
/// (between two renewals, so none is in flight once the task ended).
async fn renew_lease(
    inner: Arc<Inner>,
    key: String,
    held: Arc<Held>,
    mut stop: oneshot::Receiver<()>,
) {
    let every = (inner.config.lease_ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        if !held.renew(&inner.store, &key).await {
            return;
        }
    }
}

// -------------------------------------------------------------------- driver

/// The session lost its lease (another worker owns it now).
struct Lost;

enum End {
    HandedOver,
    Closed,
    Lost,
    Stopped,
}

/// Per session: forwards the bus to NATS in order, stores checkpoints,
/// renews the lease, and carries out hand-over and close.
struct Driver {
    inner: Arc<Inner>,
    id: SessionId,
    key: String,
    events: Subject,
    handle: SessionHandle,
    bus: BusReceiver,
    checkpoints: watch::Receiver<Arc<ChatContext>>,
    control: mpsc::UnboundedReceiver<Control>,
    inputs: Option<tokio::task::AbortHandle>,
    spec: SessionSpec,
    /// Our generation (the lease's).
    generation: u64,
    held: Arc<Held>,
    lost: watch::Receiver<bool>,
    renewer: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    checkpoint_rev: u64,
    turn_base: u64,
    seq_base: u64,
    last_wire: u64,
    committed_turn: u64,
    started_turn: u64,
    /// The size last reported as too large (reported once per size).
    too_large: Option<usize>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Aborted with the worker: the input subscription and the renewals go too.
        self.stop_inputs();
        if let Some((_, task)) = self.renewer.take() {
            task.abort();
        }
    }
}

impl Driver {
    /// Stops the renewals and waits for one in flight.
    async fn stop_renewing(&mut self) {
        if let Some((stop, task)) = self.renewer.take() {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Resolves once the lease is lost.
    async fn lease_lost(lost: &mut watch::Receiver<bool>) {
        if lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    async fn run(mut self) {
        let end = loop {
            tokio::select! {
                biased;
                control = self.control.recv() => match control {
                    Some(Control::HandOver { deadline, done }) => {
                        let r = self.hand_over(deadline).await;
                        let lost = r.is_err();
                        let _ = done.send(r.map_err(|Lost| ClusterError::LeaseLost(self.id.clone())));
                        break if lost { End::Lost } else { End::HandedOver };
                    }
                    Some(Control::Close { done }) => {
                        let r = self.close().await;
                        let _ = done.send(r);
                        break End::Closed;
                    }
                    None => break End::Stopped,
                },
                event = self.bus.recv() => match event {
                    Ok(ev) => if self.forward(ev).await.is_err() { break End::Lost },
                    Err(BusRecvError::Lagged { missed }) => self.worker_event("lagged", json!({"missed": missed})).await,
                    Err(_) => break End::Stopped,
                },
                changed = self.checkpoints.changed() => {
                    if changed.is_err() || self.flush().await.is_err() {
                        break End::Lost;
                    }
                },
                _ = Self::lease_lost(&mut self.lost) => break End::Lost,
            }
        };
        self.stop_renewing().await;
        match end {
            End::Lost => {
                metrics::counter!("colloquy_cluster_leases_lost_total").increment(1);
                tracing::warn!(session = %self.id, "lease lost: stopping this copy of the session");
                self.stop_inputs();
                let _ = self.inner.supervisor.stop_session(&self.id).await;
            }
            End::Stopped => {
                // The local session stopped by itself (too many restarts).
                self.stop_inputs();
                let _ = self.inner.supervisor.stop_session(&self.id).await;
                self.worker_event("session_ended", json!({"reason": "stopped"}))
                    .await;
                // The lease first (as in `close`): no lease without a checkpoint.
                if let Ok(revision) = self.held.settle(&self.inner.store, &self.key).await
                    && self
                        .inner
                        .store
                        .delete_lease(&self.key, revision)
                        .await
                        .is_ok()
                {
                    let _ = self.inner.store.delete_checkpoint(&self.key).await;
                }
            }
            End::HandedOver | End::Closed => {}
        }
    }

    fn stop_inputs(&mut self) {
        if let Some(t) = self.inputs.take() {
            t.abort();
        }
    }

    fn global_turn(&self, local: TurnId) -> u64 {
        self.turn_base + local.0
    }

    /// Publishes a bus event of the session, in bus order, with the stores the
    /// durability rules need around it.
    async fn forward(&mut self, ev: BusEvent) -> Result<(), Lost> {
        let turn = self.global_turn(ev.turn);
        match &ev.kind {
            // A turn starts when its TurnStarted goes out (a promoted
            // speculation's comes right after its `hit`): every earlier turn
            // is committed (the ledger begins no turn while one waits for its
            // commit), and the store learns the turn began before anyone else.
            EventKind::TurnStarted if turn > self.started_turn => {
                self.committed_turn = self.committed_turn.max(turn - 1);
                self.started_turn = turn;
                self.flush().await?;
            }
            // A speculation nobody heard is over: it did not start (a
            // failover must not end it as failed), nothing of it is in the
            // history, and its number is used (a resumed session starts
            // after it).
            EventKind::SpeculationEnded { outcome, .. }
                if *outcome != SpeculationOutcome::Hit
                    && turn > self.started_turn.max(self.committed_turn) =>
            {
                self.committed_turn = turn;
                self.flush().await?;
            }
            _ => {}
        }
        let (normal_end, cut) = match &ev.kind {
            EventKind::TurnFinished(end) => (!end.is_abort(), end.is_abort()),
            EventKind::Interrupted { .. } => (false, true),
            _ => (false, false),
        };
        if normal_end {
            // Committed means durable: the turn's end is published once the
            // history holding it is stored.
            self.commit_barrier(turn).await?;
        }
        self.publish_bus(&ev, turn).await;
        if cut {
            // Cuts are published first (no stale word reaches a speaker), then stored.
            self.commit_barrier(turn).await?;
        }
        Ok(())
    }

    /// Waits until the actor committed `turn` (a context read is answered
    /// after the actor reconciled), then stores the checkpoint.
    async fn commit_barrier(&mut self, turn: u64) -> Result<(), Lost> {
        let _ = self.handle.context().await;
        self.committed_turn = self.committed_turn.max(turn);
        self.flush().await
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        if let Err(e) = self
            .inner
            .nats
            .publish(self.events.clone(), Bytes::from(bytes))
            .await
        {
            tracing::warn!(session = %self.id, error = %e, "event not published");
        }
    }

    async fn publish(&mut self, turn: u64, seq: u64, kind: &str, payload: Value) {
        let bytes = wire::encode_event(
            self.id.as_str(),
            turn,
            seq,
            &self.inner.config.name,
            kind,
            payload,
        );
        self.send(bytes).await;
    }

    async fn publish_bus(&mut self, ev: &BusEvent, turn: u64) {
        let seq = self.seq_base + SEQ_STRIDE * ev.seq;
        self.last_wire = seq;
        let bytes = wire::encode_bus(
            self.id.as_str(),
            turn,
            seq,
            &self.inner.config.name,
            &ev.kind,
        );
        self.send(bytes).await;
    }

    /// An event of the worker's own (between two bus events' seq numbers;
    /// dropped when no number is left before the next bus event).
    async fn worker_event(&mut self, kind: &str, payload: Value) {
        let seq = self.last_wire + 1;
        if (seq - self.seq_base).is_multiple_of(SEQ_STRIDE) {
            tracing::debug!(session = %self.id, kind, "worker event dropped: no seq left");
            return;
        }
        self.last_wire = seq;
        let turn = self.turn_base + self.handle.bus().current_turn().0.0;
        self.publish(turn, seq, kind, payload).await;
    }

    /// The first events of a resumed session: the turn that was in flight
    /// ends as failed, then `resumed` names the last committed turn.
    async fn announce_resume(&mut self, previous: Option<String>) {
        if self.started_turn > self.committed_turn {
            let seq = self.seq_base + 1;
            self.last_wire = seq;
            let end = EventKind::TurnFinished(TurnEnd::Failed(Arc::from(WORKER_LOST)));
            let bytes = wire::encode_bus(
                self.id.as_str(),
                self.started_turn,
                seq,
                &self.inner.config.name,
                &end,
            );
            self.send(bytes).await;
        }
        let payload = json!({
            "last_committed_turn": self.committed_turn,
            "previous_worker": previous,
        });
        self.last_wire = self.seq_base + 2;
        self.publish(self.turn_base, self.seq_base + 2, "resumed", payload)
            .await;
        // The turn that was in flight is over: it counts as committed (failed,
        // nothing of it in the history).
        self.committed_turn = self.turn_base;
    }

    fn record(&mut self) -> Checkpoint {
        Checkpoint {
            v: 1,
            session: self.id.as_str().to_string(),
            worker: self.inner.config.name.clone(),
            generation: self.generation,
            spec: self.spec.clone(),
            context: (**self.checkpoints.borrow_and_update()).clone(),
            committed_turn: self.committed_turn,
            started_turn: self.started_turn,
        }
    }

    /// Stores the latest committed context (compare-and-set on our last
    /// revision). Transient failures are retried until they pass (the
    /// forwarder waits: nothing is announced that is not stored); a refused
    /// compare-and-set means another worker owns the session.
    async fn flush(&mut self) -> Result<(), Lost> {
        let record = self.record();
        let bytes = match self.inner.store.encode_checkpoint(&record) {
            Ok(b) => b,
            Err(StoreError::TooLarge { bytes, max_bytes }) => {
                if self.too_large != Some(bytes) {
                    self.too_large = Some(bytes);
                    metrics::counter!("colloquy_cluster_checkpoint_too_large_total").increment(1);
                    tracing::error!(session = %self.id, bytes, max_bytes,
                        "checkpoint larger than the server's maximum message size: not stored");
                    self.worker_event(
                        "checkpoint_too_large",
                        json!({"bytes": bytes, "max_bytes": max_bytes}),
                    )
                    .await;
                }
                return Ok(());
            }
            Err(e) => {
                tracing::error!(session = %self.id, error = ?e, "checkpoint not encoded");
                return Ok(());
            }
        };
        let mut backoff = Duration::from_millis(20);
        loop {
            match self
                .inner
                .store
                .cas_checkpoint(&self.key, bytes.clone(), self.checkpoint_rev)
                .await
            {
                Ok(rev) => {
                    self.checkpoint_rev = rev;
                    metrics::counter!("colloquy_cluster_checkpoint_writes_total").increment(1);
                    return Ok(());
                }
                Err(StoreError::Conflict) => {
                    // Our own write may have landed although its ack was lost.
                    match self.inner.store.read_checkpoint(&self.key).await {
                        Ok(Some((cp, rev))) if cp.generation == self.generation => {
                            self.checkpoint_rev = rev;
                        }
                        Ok(_) => return Err(Lost),
                        Err(_) => tokio::time::sleep(backoff).await,
                    }
                }
                Err(e) => {
                    metrics::counter!("colloquy_cluster_checkpoint_write_errors_total")
                        .increment(1);
                    tracing::warn!(session = %self.id, error = ?e, "checkpoint not stored; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// Drains this session: lets the turn in flight finish (until
    /// `deadline`; a speculation is not waited for), stops taking inputs, stops the session (a turn still in
    /// flight is cancelled and committed), stores the final checkpoint and
    /// releases the lease. Returns whether a turn was cut at the deadline.
    async fn hand_over(&mut self, deadline: Instant) -> Result<bool, Lost> {
        let mut cut = false;
        loop {
            if !self.live_turn_open() {
                // Idle (or only speculating): no more inputs; inputs already
                // received are handled before the context read answers.
                self.stop_inputs();
                let _ = self.handle.context().await;
                if !self.live_turn_open() {
                    break;
                }
            }
            tokio::select! {
                event = self.bus.recv() => match event {
                    Ok(ev) => self.forward(ev).await?,
                    Err(BusRecvError::Lagged { missed }) => self.worker_event("lagged", json!({"missed": missed})).await,
                    Err(_) => break,
                },
                _ = Self::lease_lost(&mut self.lost) => return Err(Lost),
                _ = tokio::time::sleep_until(deadline) => {
                    cut = self.live_turn_open();
                    break;
                }
            }
        }
        self.stop_inputs();
        let _ = self.inner.supervisor.stop_session(&self.id).await;
        self.forward_rest().await?;
        self.committed_turn = self.committed_turn.max(self.started_turn);
        self.flush().await?;
        self.stop_renewing().await;
        let mut released = self.held.lease.clone();
        released.state = LeaseState::Released;
        let revision = self.held.settle(&self.inner.store, &self.key).await?;
        match self
            .inner
            .store
            .cas_lease(&self.key, &released, revision)
            .await
        {
            Ok(_) => Ok(cut),
            Err(StoreError::Conflict) => Err(Lost),
            // The lease expires by itself: another worker claims it then.
            Err(_) => Ok(cut),
        }
    }

    /// Whether a live turn is generating. A speculation is not a reply anyone
    /// heard: a drain does not wait for it (stopping the session drops it).
    fn live_turn_open(&self) -> bool {
        self.handle.bus().live_turn_open()
    }

    /// Forwards what is left on the bus of a stopped session.
    async fn forward_rest(&mut self) -> Result<(), Lost> {
        loop {
            match self.bus.recv().await {
                Ok(ev) => self.forward(ev).await?,
                Err(BusRecvError::Lagged { missed }) => {
                    self.worker_event("lagged", json!({"missed": missed})).await
                }
                Err(_) => return Ok(()),
            }
        }
    }

    /// Ends the session for good: stops it, publishes `session_ended`, and
    /// deletes its checkpoint and lease.
    ///
    /// The lease is renewed until just before it is deleted, so a close
    /// slower than the lease time is never claimed midway; and it is deleted
    /// before the checkpoint, so no worker finds a lease without a
    /// checkpoint (one that does deletes the lease: see `claim`). A crash
    /// between the two leaves a checkpoint without a lease: never resumed,
    /// overwritten by the next placement of the id.
    async fn close(&mut self) -> Result<(), ClusterError> {
        self.stop_inputs();
        let _ = self.inner.supervisor.stop_session(&self.id).await;
        let _ = self.forward_rest().await;
        #[cfg(test)]
        super::test_hooks::at(&self.inner.config.name, "closing").await;
        self.worker_event("session_ended", json!({"reason": "closed"}))
            .await;
        self.stop_renewing().await;
        let revision = self
            .held
            .settle(&self.inner.store, &self.key)
            .await
            .map_err(|Lost| ClusterError::LeaseLost(self.id.clone()))?;
        self.inner
            .store
            .delete_lease(&self.key, revision)
            .await
            .map_err(ClusterError::from)?;
        self.inner
            .store
            .delete_checkpoint(&self.key)
            .await
            .map_err(ClusterError::from)
    }
}
