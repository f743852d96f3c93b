//! Claims: every worker watches every lease; one not renewed for its lease
//! time (its worker died or is cut off) or released by a drain is taken over
//! with a compare-and-set on its revision, so of several claimers exactly one
//! wins. The winner fences the old owner by rewriting the checkpoint under
//! its new generation, then resumes the session here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::driver::start_local;
use super::{Inner, Ownership};
use crate::cluster::ClusterError;
use crate::cluster::admission::Ticket;
use crate::cluster::lease::{Lease, LeaseState, StoreError};

/// The last value of one lease, and when it was seen.
struct Seen {
    /// Its revision (a claim's compare-and-set is on it).
    revision: u64,
    /// When it was last seen changing (or the watch restarted).
    at: Instant,
    lease: Lease,
}

/// Watches every lease; claims those that expired or were released.
pub(super) async fn monitor(inner: Arc<Inner>) {
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

/// Starts a claim of `key` unless it is ours, running here, being claimed,
/// or the worker takes no sessions now.
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
    let id = crate::cluster::session_id_from_key(key)
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
                match inner.store.encode_checkpoint(key, &cp) {
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
