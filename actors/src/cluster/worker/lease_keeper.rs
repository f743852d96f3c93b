//! The lease keeper: each session's lease is renewed by a task of its own,
//! every third of the lease time, so a slow checkpoint store never delays a
//! renewal. A compare-and-set refused means another worker owns the session:
//! the keeper says so and stops.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::{Inner, Lost};
use crate::cluster::lease::{Lease, Store, StoreError};

/// A session's lease while this worker holds it: renewed by its own task,
/// so a slow checkpoint store never delays a renewal.
pub(super) struct Held {
    /// The lease as we write it at every renewal.
    pub(super) lease: Lease,
    /// Its revision after our last write (held across a renewal, so a
    /// settle waits for one in flight).
    pub(super) revision: tokio::sync::Mutex<u64>,
    /// Set when a compare-and-set shows another worker owns the session.
    pub(super) lost: watch::Sender<bool>,
}

impl Held {
    /// Renews the lease (compare-and-set on our revision); `false` once lost.
    pub(super) async fn renew(&self, store: &Store, key: &str) -> bool {
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
    pub(super) async fn settle(&self, store: &Store, key: &str) -> Result<u64, Lost> {
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
pub(super) async fn renew_lease(
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
