//! A worker: a local supervisor whose sessions are placed, owned, checkpointed
//! and handed over through NATS.
//!
//! This file holds what every part of a worker shares: the [`Worker`] itself
//! (start, accessors, abort), its state ([`Inner`]: the connection, the store,
//! the supervisor, the sessions running here and the capacity reserved), and
//! the messages a worker sends a session's driver ([`Control`]). Each concern
//! of a worker has its own file beside it, and they talk to one another only
//! through these types:
//!
//! - [`config`]: what a worker is started with.
//! - [`placement`]: offering capacity in the queue group and taking new
//!   sessions placed on it.
//! - [`heartbeat`]: the worker's one periodic write, its heartbeat, and the
//!   fencing of a worker whose heartbeat stopped.
//! - [`claims`]: watching every heartbeat and ownership record, and taking
//!   over (compare-and-set) the sessions of workers that died or drained.
//! - [`driver`]: one session running here, from its start (placed or claimed)
//!   to its end: the task that owns it.
//! - [`inputs`]: the input requests of a session (speech, transcripts, text,
//!   messages, `say`, `generate`, tool results, cancel, context, settings,
//!   close); [`replies`]: the replies a client follows (`track`).
//! - [`forwarder`]: the session's bus published to NATS in order, with the
//!   checkpoint writes the durability rules need around turn starts and ends;
//!   [`batch`]: what it publishes per message, and a cut's queued text dropped.
//! - [`handover`]: draining the worker and closing a session for good.

mod batch;
mod claims;
mod config;
mod driver;
mod forwarder;
mod handover;
mod heartbeat;
mod inputs;
mod placement;
mod replies;

pub use config::WorkerConfig;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use async_nats::Client;
use dashmap::{DashMap, DashSet};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::admission::{Admission, Ticket};
use super::lease::{Lease, LeaseState, Store};
use super::spec::SessionSpec;
use super::wire::EventClass;
use super::{ClusterError, Names, session_key};
use crate::ids::SessionId;
use crate::session::SessionHandle;
use crate::supervisor::{Supervisor, SupervisorConfig};
use crate::tool_executor::ToolRegistry;

/// Bus events between two worker-published seq slots: a bus event `n` is
/// published as `generation × 2³² + 4n`, leaving three numbers after each for
/// the worker's own events (`lagged`, `checkpoint_too_large`, …).
const SEQ_STRIDE: u64 = 4;

/// What [`Worker::drain`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Sessions whose lease was released for another worker.
    pub handed_over: usize,
    /// Of those, sessions whose turn was still in flight at the drain timeout
    /// (cancelled and committed before the hand-over).
    pub cut_at_timeout: usize,
    /// Sessions that could not be handed over (their ownership was lost, or
    /// the store failed); others claim them once this worker's heartbeat
    /// stops.
    pub failed: usize,
}

/// What a worker asks of a session's driver.
enum Control {
    /// Hand the session over (a drain): finish the live turn until
    /// `deadline`, store, release the lease; `done` says whether a turn was
    /// cut at the deadline.
    HandOver {
        deadline: Instant,
        done: oneshot::Sender<Result<bool, ClusterError>>,
    },
    /// End the session for good (its lease and checkpoint deleted), saying
    /// why in `session_ended`.
    Close {
        done: oneshot::Sender<Result<(), ClusterError>>,
        reason: &'static str,
    },
    /// Store a checkpoint now (the spec changed: `update_settings`).
    Store {
        done: oneshot::Sender<Result<(), ClusterError>>,
    },
}

/// Locks a mutex, whether or not a holder panicked (the data is plain).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A session running here.
struct Local {
    /// To its driver.
    control: mpsc::UnboundedSender<Control>,
    /// The driver's task (aborted when the entry drops).
    driver: tokio::task::AbortHandle,
}

impl Drop for Local {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// The state every part of a worker shares.
struct Inner {
    config: WorkerConfig,
    /// Subjects and buckets under the configured prefix.
    names: Names,
    /// This run's unique id, as in its leases.
    instance: String,
    nats: Client,
    /// Leases and checkpoints.
    store: Store,
    /// Runs the sessions of this worker.
    supervisor: Supervisor,
    /// The sessions running here, by session key.
    sessions: DashMap<String, Local>,
    /// Session keys with a claim in progress (one claim per key at a time).
    claiming: DashSet<String>,
    /// Sessions being placed here (their record written, the session not
    /// running yet): not orphans.
    placing: DashSet<String>,
    /// Records whose checkpoint this worker refused (unsigned or forged), by
    /// key and record revision: not claimed again until the record changes.
    refused: DashMap<String, u64>,
    /// The epoch our heartbeat is alive under; a session admitted under an
    /// earlier one stops (the heartbeat was fenced).
    epoch: watch::Sender<u64>,
    /// Slots taken: sessions running here and admissions in progress.
    reserved: AtomicUsize,
    /// Draining and the admissions in progress (see admission.rs).
    admission: Arc<Admission>,
    /// Notified when `offering` may have changed (placement re-subscribes or
    /// unsubscribes).
    changed: Notify,
    /// Events encoded for the wire, by [`EventClass`].
    encoded: [AtomicU64; EVENT_CLASSES],
}

/// How many event classes there are.
const EVENT_CLASSES: usize = EventClass::ALL.len();

impl Inner {
    /// Counts `events` encoded events of `class` (and in
    /// `colloquy_cluster_events_encoded_total{class}`).
    fn count_encoded(&self, class: EventClass, events: u64) {
        self.encoded[class as usize].fetch_add(events, Ordering::Relaxed);
        metrics::counter!("colloquy_cluster_events_encoded_total", "class" => class.as_str())
            .increment(events);
    }

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

    /// Gives a slot back (a session ended, or an admission failed).
    fn release_slot(&self) {
        let _ = self
            .reserved
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.changed.notify_one();
    }

    /// Whether the worker takes sessions now: not draining and not full.
    fn offering(&self) -> bool {
        !self.admission.is_draining()
            && self.reserved.load(Ordering::SeqCst) < self.config.max_sessions
    }

    /// The share of slots taken (0 idle, 1 full).
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

    /// An ownership record of this worker for `generation`, under `epoch`.
    fn lease(&self, epoch: u64, generation: u64, state: LeaseState) -> Lease {
        Lease {
            worker: self.config.name.clone(),
            instance: self.instance.clone(),
            epoch,
            generation,
            state,
            ttl_ms: self.config.lease_ttl.as_millis() as u64,
            owner_lost: false,
        }
    }
}

/// How a session came to run here.
struct Ownership {
    /// The heartbeat epoch the record was written under.
    epoch: u64,
    /// The owner generation of our record (1 for a placement).
    generation: u64,
    /// The revision of our ownership record in the store.
    lease_rev: u64,
    /// The revision of the checkpoint we wrote.
    checkpoint_rev: u64,
    /// The last turn in the restored history.
    committed_turn: u64,
    /// The last turn that started (above `committed_turn` when one was in
    /// flight as the previous owner stopped).
    started_turn: u64,
    /// Set when resumed from another worker's checkpoint.
    resumed_from: Option<Option<String>>,
    /// Turn numbers up to this one are taken (the checkpoint's `turn_floor`).
    turn_floor: u64,
}

/// The session lost its ownership (another worker owns it now, or our
/// heartbeat was fenced).
struct Lost;

/// A worker process's part of the cluster: it runs sessions in a local
/// [`Supervisor`], takes new ones from the placement queue while it has room,
/// claims the sessions of workers whose heartbeat stopped, and hands its own
/// over when draining.
///
/// Dropping a worker (or [`Worker::abort`]) stops its tasks without releasing
/// anything, as a crash would: other workers fence its heartbeat once it is
/// a lease time old, and resume its sessions.
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
    /// (registered at the server when this returns), and starts its heartbeat
    /// and watching the others'.
    pub async fn start(nats: Client, config: WorkerConfig) -> Result<Self, ClusterError> {
        let names = Names::new(&config.prefix)?;
        if config.name.is_empty() {
            return Err(ClusterError::InvalidName(String::new()));
        }
        super::check_name("name", &config.name, super::MAX_NAME_BYTES)?;
        let store = Store::open(
            &nats,
            &names,
            &config.policy,
            config.state_key.clone().map(super::signing::StateKey::new),
            config.accept_unsigned_checkpoints,
        )
        .await?;
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
            placing: DashSet::new(),
            refused: DashMap::new(),
            epoch: watch::channel(1).0,
            reserved: AtomicUsize::new(0),
            admission: Arc::default(),
            changed: Notify::new(),
            encoded: Default::default(),
            config,
        });
        // Alive before any session names us.
        let beat_rev = inner
            .store
            .create_heartbeat(&inner.heartbeat(1))
            .await
            .map_err(ClusterError::from)?;
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
            tokio::spawn(placement::offer(inner.clone(), first)).abort_handle(),
            tokio::spawn(claims::monitor(inner.clone())).abort_handle(),
            tokio::spawn(heartbeat::beat(inner.clone(), beat_rev)).abort_handle(),
        ];
        tracing::info!(worker = %inner.config.name, instance = %inner.instance, "worker started");
        Ok(Self { inner, tasks })
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.config.name
    }

    /// This run's unique id (the name and a random suffix), as in its
    /// heartbeat and its sessions' ownership records.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    /// Sessions running here.
    pub fn session_count(&self) -> usize {
        self.inner.sessions.len()
    }

    /// Events of `class` this worker encoded for the wire so far (an event
    /// of a class its session does not publish is not encoded).
    pub fn events_encoded(&self, class: EventClass) -> u64 {
        self.inner.encoded[class as usize].load(Ordering::Relaxed)
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

    /// Stops everything now without releasing a session or publishing
    /// anything more, as a crash would (other workers resume the sessions
    /// once the heartbeat is a lease time old).
    pub async fn abort(mut self) {
        self.stop_tasks();
        self.inner.supervisor.clone().shutdown().await;
    }

    /// Aborts the placement, claim and heartbeat tasks and every session's
    /// driver.
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
