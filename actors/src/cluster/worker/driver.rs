//! A session running here: [`start_local`] starts it in the local supervisor
//! with its input subscription and its [`Driver`], the one task that owns the
//! session on this worker until it is handed over, closed, stopped, or its
//! ownership is lost (a checkpoint write refused, or the worker's heartbeat
//! fenced). No task of its own renews anything: an idle session costs no
//! store write (the worker's heartbeat stands for all its sessions), but for
//! a refresh against the buckets' `max_age`. The driver's work is split by
//! concern: the bus forwarded to NATS in `forwarder`, hand-over and close in
//! `handover`.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Subject;
use colloquy::context::ChatContext;
use serde_json::json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::batch::Batch;
use super::inputs::{InputCtx, run_inputs};
use super::replies::Replies;
use super::{Control, Inner, Local, Lost, Ownership};
use crate::bus::{BusReceiver, BusRecvError};
use crate::cluster::ClusterError;
use crate::cluster::admission::Ticket;
use crate::cluster::lease::{Checkpoint, Lease, LeaseState, StoreError};
use crate::cluster::spec::SessionSpec;
use crate::cluster::wire::{EventClass, EventClasses, WorkerEventName};
use crate::ids::SessionId;
use crate::session::SessionHandle;
use crate::supervisor::{SessionConfig, SupervisorError};

/// Starts the session in the local supervisor with its input subscription and
/// its driver.
pub(super) async fn start_local(
    inner: &Arc<Inner>,
    id: SessionId,
    key: String,
    checkpoint: Checkpoint,
    own: Ownership,
    ticket: Ticket,
) -> Result<(), ClusterError> {
    let spec = checkpoint.spec;
    let shared_spec = Arc::new(std::sync::Mutex::new(spec.clone()));
    let (durable_tx, durable) = watch::channel(own.committed_turn);
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
    #[cfg(feature = "otel")]
    if let Some(tracing) = &inner.config.tracing {
        config = config.with_tracing(tracing.clone());
    }
    let handle = match inner.supervisor.start_session(id.clone(), config).await {
        Ok(h) => h,
        Err(SupervisorError::AlreadyExists(id)) => return Err(ClusterError::AlreadyExists(id)),
        Err(e) => return Err(ClusterError::Nats(e.to_string())),
    };
    let bus = handle.subscribe();
    let mut checkpoints = handle.watch_checkpoint();
    checkpoints.mark_unchanged();
    let inputs = match inner.nats.subscribe(inner.names.all_inputs(&key)).await {
        Ok(s) => s,
        Err(e) => {
            let _ = inner.supervisor.stop_session(&id).await;
            return Err(ClusterError::nats(e));
        }
    };
    // After a failover a turn may have started on the lost worker that the
    // checkpoint does not name (a start is stored after it is announced): the
    // numbers of this owner begin past it, so none is ever used twice.
    // (The claim raised the checkpoint's floor past it, durably, before
    // this owner published anything: a failover right after this one skips
    // past this owner's numbers too.)
    let turn_base = own.started_turn.max(own.committed_turn).max(own.turn_floor);
    let seq_base = own.generation << 32;
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let input_ctx = InputCtx {
        nats: inner.nats.clone(),
        handle: handle.clone(),
        turn_base,
        seq_base,
        control: control_tx.clone(),
        policy: inner.config.policy.clone(),
        replies: Replies::default(),
        durable,
        committed_at_start: own.committed_turn,
        spec: shared_spec.clone(),
        default_model: inner.config.default_model.clone(),
        max_reply_bytes: crate::cluster::max_payload(&inner.nats).saturating_sub(1024),
    };
    let inputs_task = tokio::spawn(run_inputs(input_ctx, inputs));
    let mut driver = Driver {
        inner: inner.clone(),
        subjects: EventClass::ALL
            .iter()
            .map(|c| Subject::from(inner.names.events(&key, *c)))
            .collect(),
        published: published(&spec),
        batch: Batch::default(),
        max_batch_bytes: crate::cluster::max_payload(&inner.nats) / 2,
        generation: own.generation,
        record: inner.lease(own.epoch, own.generation, LeaseState::Held),
        record_rev: own.lease_rev,
        epoch: own.epoch,
        epochs: inner.epoch.subscribe(),
        refresh_at: refresh_at(inner),
        checkpoint_gone: false,
        id,
        key: key.clone(),
        handle,
        bus,
        checkpoints,
        control: control_rx,
        inputs: Some(inputs_task.abort_handle()),
        spec: shared_spec,
        durable: durable_tx,
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
    crate::cluster::test_hooks::at(&inner.config.name, "admit").await;
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

/// The classes a spec publishes (lifecycle always).
fn published(spec: &SessionSpec) -> EventClasses {
    match &spec.event_classes {
        None => EventClasses::all(),
        Some(classes) => classes
            .iter()
            .copied()
            .collect::<EventClasses>()
            .with(EventClass::Lifecycle),
    }
}

/// Why a driver's loop ended.
enum End {
    /// Drained: the lease was released for another worker.
    HandedOver,
    /// Closed for good.
    Closed,
    /// Another worker owns the session.
    Lost,
    /// The local session stopped by itself, or the worker dropped it.
    Stopped,
}

/// Per session: forwards the bus to NATS in order, stores checkpoints,
/// watches the lease its keeper renews, and carries out hand-over and close.
pub(super) struct Driver {
    pub(super) inner: Arc<Inner>,
    pub(super) id: SessionId,
    /// The session key (subjects and store keys).
    pub(super) key: String,
    /// The session's events subjects, by [`EventClass`].
    pub(super) subjects: Vec<Subject>,
    /// The classes the session publishes (its spec's `event_classes`).
    pub(super) published: EventClasses,
    /// Events encoded and not yet published.
    pub(super) batch: Batch,
    /// Half the server's maximum message size.
    pub(super) max_batch_bytes: usize,
    /// The local session.
    pub(super) handle: SessionHandle,
    /// The forwarder's subscription to the session's bus.
    pub(super) bus: BusReceiver,
    /// The committed context, as the session commits it.
    pub(super) checkpoints: watch::Receiver<Arc<ChatContext>>,
    pub(super) control: mpsc::UnboundedReceiver<Control>,
    /// The input task (aborted once no more inputs are taken).
    pub(super) inputs: Option<tokio::task::AbortHandle>,
    /// Stored in every checkpoint (shared with the input task, which
    /// changes it on `update_settings`).
    pub(super) spec: Arc<std::sync::Mutex<SessionSpec>>,
    /// The last wire turn whose history is stored (or will never be: the
    /// checkpoint is too large), for the input task's tracked replies.
    pub(super) durable: watch::Sender<u64>,
    /// Our generation (the record's).
    pub(super) generation: u64,
    /// Our ownership record as we wrote it.
    pub(super) record: Lease,
    /// Its revision after our last write.
    pub(super) record_rev: u64,
    /// The heartbeat epoch the record names.
    pub(super) epoch: u64,
    /// The worker's epoch: once it moves on, our heartbeat was fenced.
    pub(super) epochs: watch::Receiver<u64>,
    /// When the record and checkpoint are rewritten, so the buckets'
    /// `max_age` never removes them under an idle session.
    pub(super) refresh_at: Instant,
    /// Set when a checkpoint write found no usable checkpoint (deleted, or
    /// overwritten with one that does not decode or verify): the record is
    /// released on the way out, for a claimer to settle.
    pub(super) checkpoint_gone: bool,
    /// The revision of our last checkpoint write.
    pub(super) checkpoint_rev: u64,
    /// Wire turn numbers of this owner start after it.
    pub(super) turn_base: u64,
    /// `generation << 32`: the first wire seq of this owner.
    pub(super) seq_base: u64,
    /// The last wire seq published.
    pub(super) last_wire: u64,
    /// The last wire turn whose history is committed.
    pub(super) committed_turn: u64,
    /// The last wire turn that started.
    pub(super) started_turn: u64,
    /// The size last reported as too large (reported once per size).
    pub(super) too_large: Option<usize>,
}

/// When a session's record and checkpoint are rewritten next: every third
/// of the buckets' `max_age` (spread by the clock's low bits), or never.
fn refresh_at(inner: &Inner) -> Instant {
    let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    match inner.config.policy.store_max_age {
        Some(age) if !age.is_zero() => {
            let spread = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let third = age / 3;
            Instant::now() + third.mul_f64(0.75 + f64::from(spread % 1000) / 4000.0)
        }
        _ => far,
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Aborted with the worker: the input subscription goes too.
        self.stop_inputs();
    }
}

impl Driver {
    /// Resolves once the worker's heartbeat moved on from `epoch` (fenced).
    pub(super) async fn fenced(epochs: &mut watch::Receiver<u64>, epoch: u64) {
        if epochs.wait_for(|e| *e != epoch).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Rewrites the checkpoint and the record unchanged (compare-and-set on
    /// ours), so the buckets' `max_age` does not remove them.
    async fn refresh(&mut self) -> Result<(), Lost> {
        self.refresh_at = refresh_at(&self.inner);
        self.flush().await?;
        match self
            .inner
            .store
            .cas_lease(&self.key, &self.record, self.record_rev)
            .await
        {
            Ok(rev) => {
                self.record_rev = rev;
                Ok(())
            }
            Err(StoreError::Conflict) => Err(Lost),
            Err(e) => {
                tracing::warn!(session = %self.id, error = ?e, "record not refreshed");
                Ok(())
            }
        }
    }

    /// The session's loop: control messages first, then bus events,
    /// checkpoints, the heartbeat's epoch and the refresh; then what the way
    /// it ended asks for.
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
                    Some(Control::Close { done, reason }) => {
                        let r = self.close(reason).await;
                        let _ = done.send(r);
                        break End::Closed;
                    }
                    Some(Control::Store { done }) => {
                        let lost = self.flush().await.is_err();
                        let _ = done.send(if lost { Err(ClusterError::LeaseLost(self.id.clone())) } else { Ok(()) });
                        if lost { break End::Lost }
                    }
                    None => break End::Stopped,
                },
                event = self.bus.recv() => match event {
                    Ok(ev) => if self.forward(ev).await.is_err() { break End::Lost },
                    Err(BusRecvError::Lagged { missed }) => self.worker_event(WorkerEventName::Lagged, json!({"missed": missed})).await,
                    Err(_) => break End::Stopped,
                },
                changed = self.checkpoints.changed() => {
                    if changed.is_err() || self.flush().await.is_err() {
                        break End::Lost;
                    }
                },
                _ = Self::fenced(&mut self.epochs, self.epoch) => break End::Lost,
                _ = tokio::time::sleep_until(self.refresh_at) => {
                    if self.refresh().await.is_err() {
                        break End::Lost;
                    }
                }
            }
        };
        match end {
            End::Lost => {
                metrics::counter!("colloquy_cluster_leases_lost_total").increment(1);
                tracing::warn!(session = %self.id, "ownership lost: stopping this copy of the session");
                self.stop_inputs();
                let _ = self.inner.supervisor.stop_session(&self.id).await;
                if self.checkpoint_gone {
                    // Nobody else holds it (our record is still at our
                    // revision): a claimer settles it (resumes it, or deletes
                    // a record without a usable checkpoint).
                    let mut released = self.record.clone();
                    released.state = LeaseState::Released;
                    let _ = self
                        .inner
                        .store
                        .cas_lease(&self.key, &released, self.record_rev)
                        .await;
                }
            }
            End::Stopped => {
                // The local session stopped by itself (too many restarts).
                self.stop_inputs();
                let _ = self.inner.supervisor.stop_session(&self.id).await;
                self.worker_event(WorkerEventName::SessionEnded, json!({"reason": "stopped"}))
                    .await;
                // The record first (as in `close`): no record without a checkpoint.
                if self
                    .inner
                    .store
                    .delete_lease(&self.key, self.record_rev)
                    .await
                    .is_ok()
                {
                    let _ = self.inner.store.delete_checkpoint(&self.key).await;
                }
            }
            End::HandedOver | End::Closed => {}
        }
    }

    /// Stops the input task (no more inputs are taken).
    pub(super) fn stop_inputs(&mut self) {
        if let Some(t) = self.inputs.take() {
            t.abort();
        }
    }
}
