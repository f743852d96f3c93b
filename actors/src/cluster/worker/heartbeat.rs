//! The heartbeat: one key per worker (`workers.<instance>` in the lease
//! bucket), rewritten by compare-and-set every third of the lease time. It is
//! the only periodic write of a worker, whatever its number of sessions: a
//! session's ownership record names the worker and the heartbeat's epoch, and
//! is owned exactly while that heartbeat is alive under that epoch.
//!
//! Another worker that sees the heartbeat unchanged for the lease time fences
//! it (sets it `dead` by compare-and-set on the revision it saw) before it
//! claims any of its sessions. So when a paused or cut-off worker comes back,
//! its next compare-and-set is refused: it stops every session it holds at
//! once (they are claimed elsewhere, or already were), and registers again
//! under a new epoch to take new sessions. Its checkpoint writes in between
//! are refused too (each claimer rewrites the checkpoint first).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use crate::cluster::lease::{Heartbeat, Liveness, StoreError, heartbeat_key};

impl Inner {
    /// Our heartbeat under `epoch`.
    pub(super) fn heartbeat(&self, epoch: u64) -> Heartbeat {
        Heartbeat {
            worker: self.config.name.clone(),
            instance: self.instance.clone(),
            epoch,
            state: Liveness::Alive,
            ttl_ms: self.config.lease_ttl.as_millis() as u64,
        }
    }

    /// The epoch our heartbeat is alive under now.
    pub(super) fn epoch(&self) -> u64 {
        *self.epoch.borrow()
    }
}

/// Renews the heartbeat every third of the lease time, from `revision` (that
/// of its creation). A refused compare-and-set that is not our own write
/// landing means another worker fenced us: every session of the epoch stops
/// (their drivers watch `Inner::epoch`), and the heartbeat is written again
/// under the next epoch.
pub(super) async fn beat(inner: Arc<Inner>, mut revision: u64) {
    let every = (inner.config.lease_ttl / 3).max(Duration::from_millis(10));
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let key = heartbeat_key(&inner.instance);
    loop {
        tick.tick().await;
        #[cfg(test)]
        crate::cluster::test_hooks::at(&inner.config.name, "heartbeat").await;
        let ours = inner.heartbeat(inner.epoch());
        match inner.store.cas_heartbeat(&ours, revision).await {
            Ok(rev) => revision = rev,
            Err(StoreError::Conflict) => match inner.store.lease_entry(&key).await {
                // Our own write landed although its ack was lost.
                Ok(Some((value, rev))) if Heartbeat::decode(&value).as_ref() == Some(&ours) => {
                    revision = rev;
                }
                Ok(found) => {
                    let epoch = ours.epoch + 1;
                    metrics::counter!("colloquy_cluster_heartbeats_fenced_total").increment(1);
                    tracing::warn!(worker = %inner.config.name, epoch,
                        "heartbeat fenced by another worker: stopping every session held");
                    inner.epoch.send_replace(epoch);
                    let again = inner.heartbeat(epoch);
                    let written = match found {
                        Some((_, rev)) => inner.store.cas_heartbeat(&again, rev).await,
                        None => inner.store.create_heartbeat(&again).await,
                    };
                    match written {
                        Ok(rev) => revision = rev,
                        // The next tick finds out again (and moves on an epoch).
                        Err(e) => {
                            tracing::warn!(error = ?e, "heartbeat not written again; retrying")
                        }
                    }
                }
                Err(_) => {}
            },
            Err(e) => tracing::warn!(error = ?e, "heartbeat not renewed; retrying"),
        }
    }
}

/// Fences the heartbeat of a worker seen unchanged for its lease time: `dead`
/// by compare-and-set on the revision seen, so a worker that renewed it
/// meanwhile is left alone. Returns whether this call fenced it.
pub(super) async fn fence(inner: &Inner, seen: &Heartbeat, revision: u64) -> bool {
    let mut dead = seen.clone();
    dead.state = Liveness::Dead;
    match inner.store.cas_heartbeat(&dead, revision).await {
        Ok(_) => {
            metrics::counter!("colloquy_cluster_workers_fenced_total").increment(1);
            tracing::warn!(worker = %seen.worker, instance = %seen.instance,
                "worker's heartbeat not renewed for its lease time: fenced");
            true
        }
        Err(_) => false,
    }
}
