//! Placement: a worker offers capacity on the placement subject, in the
//! queue group of all workers, exactly while it has room and is not draining,
//! so NATS hands a new session only to a worker that can take it. A placement
//! creates the session's ownership record and first checkpoint, then starts
//! it here.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Message, Subscriber};
use futures_util::StreamExt;
use serde_json::json;

use super::driver::start_local;
use super::{Inner, Ownership};
use crate::cluster::admission::Ticket;
use crate::cluster::lease::{Checkpoint, LeaseState, StoreError};
use crate::cluster::wire::{PlaceRequest, Reply, WireError};
use crate::cluster::{ClusterError, PlacementPolicy, session_key};
use crate::ids::SessionId;

/// The next placement request, or never while not subscribed.
async fn next_message(sub: &mut Option<Subscriber>) -> Option<Message> {
    match sub.as_mut() {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

/// Offers capacity while there is some: subscribed to the placement subject
/// in the queue group exactly while not full and not draining.
pub(super) async fn offer(inner: Arc<Inner>, mut sub: Option<Subscriber>) {
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

/// Answers one placement request: `full` at once without a slot, else
/// places the session in a task of its own.
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

/// The refusal of a context over the store's maximum (counted).
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

/// Places a session here: its ownership record (created, so an id placed
/// already is refused), its first checkpoint, then the local session; on
/// failure the record and checkpoint are deleted again.
async fn place(inner: &Arc<Inner>, payload: &[u8], ticket: Ticket) -> Result<(), WireError> {
    let policy = &inner.config.policy;
    PlacementPolicy::size("placement", payload.len(), policy.max_placement_bytes)
        .map_err(|v| WireError::policy(&v))?;
    let mut req: PlaceRequest =
        serde_json::from_slice(payload).map_err(|e| WireError::new("invalid", e))?;
    policy
        .admit(&mut req.spec, &inner.config.default_model)
        .map_err(|v| {
            metrics::counter!("colloquy_cluster_policy_refusals_total", "what" => "placement")
                .increment(1);
            WireError::policy(&v)
        })?;
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
    let epoch = inner.epoch();
    let lease = inner.lease(epoch, 1, LeaseState::Held);
    let checkpoint = Checkpoint {
        v: 1,
        session: id.as_str().to_string(),
        worker: inner.config.name.clone(),
        generation: 1,
        spec: req.spec,
        context: req.context.unwrap_or_default(),
        committed_turn: 0,
        started_turn: 0,
        turn_floor: 0,
    };
    let bytes = match inner.store.encode_checkpoint(&key, &checkpoint) {
        Ok(b) => b,
        Err(StoreError::TooLarge { bytes, max_bytes }) => return Err(too_large(bytes, max_bytes)),
        Err(e) => return Err(WireError::new("internal", format!("{e:?}"))),
    };
    // One placement of an id at a time here (a client's retry of one still
    // starting must not clear its mark when it is refused).
    if !inner.placing.insert(key.clone()) {
        return Err(WireError::new(
            "already_exists",
            ClusterError::AlreadyExists(id),
        ));
    }
    let _placing = Placing(inner, key.clone());
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
            epoch,
            generation: 1,
            lease_rev,
            checkpoint_rev,
            committed_turn: 0,
            started_turn: 0,
            resumed_from: None,
            turn_floor: 0,
        };
        start_local(inner, id.clone(), key.clone(), checkpoint, own, ticket)
            .await
            .map_err(|e| WireError::new("internal", e))
    }
    .await;
    // The record first, by its revision: a checkpoint is deleted only if the
    // session is still ours (a claimer may have taken it meanwhile, and its
    // checkpoint is not ours to delete).
    if started.is_err() && inner.store.delete_lease(&key, lease_rev).await.is_ok() {
        let _ = inner.store.delete_checkpoint(&key).await;
    }
    started
}

/// Marks a session as being placed while it lives.
struct Placing<'a>(&'a Inner, String);

impl Drop for Placing<'_> {
    fn drop(&mut self) {
        self.0.placing.remove(&self.1);
    }
}
