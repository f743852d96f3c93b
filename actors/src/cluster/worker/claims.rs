//! Claims: every worker watches the lease bucket, that is every heartbeat and
//! every session's ownership record. A heartbeat unchanged for its lease time
//! (its worker died, is paused or is cut off) is fenced first (`dead`, by
//! compare-and-set: see `heartbeat`); then each of that worker's sessions,
//! like a session released by a drain, is taken over with a compare-and-set
//! on its record's revision, so of several claimers exactly one wins. The
//! winner fences the old owner's writes by rewriting the checkpoint under its
//! new generation, then resumes the session here.
//!
//! An idle session costs nothing here: its record is only read from the
//! watch, and the clocks are per worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::kv::Operation;
use futures_util::StreamExt;
use tokio::time::Instant;

use super::driver::start_local;
use super::{Inner, Ownership, heartbeat};
use crate::cluster::ClusterError;
use crate::cluster::admission::Ticket;
use crate::cluster::lease::{HEARTBEAT_PREFIX, Heartbeat, Lease, LeaseState, Liveness, StoreError};

/// The last value of a key, and when it was seen.
struct Seen<T> {
    /// Its revision (a fence's or a claim's compare-and-set is on it).
    revision: u64,
    /// When it was last seen changing (or the watch restarted).
    at: Instant,
    value: T,
}

/// What the watch showed: heartbeats by instance, records by session key.
#[derive(Default)]
struct View {
    hearts: HashMap<String, Seen<Heartbeat>>,
    records: HashMap<String, Seen<Lease>>,
    /// Fences tried, by instance and revision, with when: one at a time
    /// each, and again after a lease time if the watch shows no change (the
    /// store failed, rather than refused: a refusal is a renewal, which
    /// changes the revision).
    fencing: HashMap<(String, u64), Instant>,
    /// Revisions of our own orphaned records released, with when.
    releasing: HashMap<u64, Instant>,
    /// Whether the watch delivered every key's last value. Heartbeats are
    /// the most recent writes, so they come last in that replay: until then
    /// a record whose worker's heartbeat is not seen yet says nothing.
    caught_up: bool,
}

impl View {
    /// Whether the owner of `record` lost it: its heartbeat is fenced, or of a
    /// later epoch, or was never seen for the record's lease time.
    fn owner_gone(&self, record: &Seen<Lease>) -> bool {
        let unseen = || self.caught_up && record.at.elapsed() > ttl(record.value.ttl_ms);
        match self.hearts.get(&record.value.instance) {
            // Written under an epoch whose heartbeat is not seen yet (a
            // fenced worker registering again writes records first): as if
            // no heartbeat were seen, not as the old epoch's `dead`.
            Some(h) if h.value.epoch < record.value.epoch => unseen(),
            Some(h) => h.value.state == Liveness::Dead || h.value.epoch > record.value.epoch,
            None => unseen(),
        }
    }

    /// Whether the session of `record` is for a claimer to take.
    fn claimable(&self, record: &Seen<Lease>) -> bool {
        record.value.state == LeaseState::Released || self.owner_gone(record)
    }
}

fn ttl(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

/// Watches every heartbeat and record; fences heartbeats that stopped and
/// claims the sessions whose owner is gone or that were released.
pub(super) async fn monitor(inner: Arc<Inner>) {
    let tick_every = (inner.config.lease_ttl / 8).max(Duration::from_millis(10));
    loop {
        // The last value of every key, then every change.
        let mut watch = match inner.store.leases.watch_with_history(">").await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch leases; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        // A fresh watch starts every clock anew (after a reconnect the
        // workers get a full lease time to renew their heartbeats).
        let mut view = View::default();
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_connected = true;
        loop {
            tokio::select! {
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                    let current = entry.seen_current;
                    on_entry(&inner, &mut view, entry);
                    if current && !view.caught_up {
                        // A record's clock starts once the replay is over.
                        view.caught_up = true;
                        let now = Instant::now();
                        view.records.values_mut().for_each(|s| s.at = now);
                    }
                }
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
                        view.hearts.values_mut().for_each(|s| s.at = now);
                        view.records.values_mut().for_each(|s| s.at = now);
                    }
                    was_connected = connected;
                    if connected {
                        sweep(&inner, &mut view);
                    }
                }
            }
        }
    }
}

/// One change seen on the watch.
fn on_entry(inner: &Arc<Inner>, view: &mut View, entry: async_nats::jetstream::kv::Entry) {
    let now = Instant::now();
    if entry.key.starts_with(HEARTBEAT_PREFIX) {
        match entry.operation {
            Operation::Put => {
                let Some(hb) = Heartbeat::decode(&entry.value) else {
                    metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                    return;
                };
                tracing::trace!(key = %entry.key, revision = entry.revision, ?hb, "heartbeat seen");
                let gone = hb.state == Liveness::Dead;
                let instance = hb.instance.clone();
                view.hearts.insert(
                    instance.clone(),
                    Seen {
                        revision: entry.revision,
                        at: now,
                        value: hb,
                    },
                );
                if gone {
                    // Its sessions are claimable now, not at the next tick.
                    let keys: Vec<String> = view
                        .records
                        .iter()
                        .filter(|(_, r)| r.value.instance == instance)
                        .map(|(k, _)| k.clone())
                        .collect();
                    for key in keys {
                        if view.claimable(&view.records[&key]) {
                            consider_claim(inner, &key, &view.records[&key]);
                        }
                    }
                }
            }
            Operation::Delete | Operation::Purge => {
                view.hearts
                    .retain(|i, _| crate::cluster::lease::heartbeat_key(i) != entry.key);
            }
        }
        return;
    }
    match entry.operation {
        Operation::Put => {
            let Some(lease) = Lease::decode(&entry.value) else {
                metrics::counter!("colloquy_cluster_invalid_messages_total").increment(1);
                return;
            };
            tracing::trace!(key = %entry.key, revision = entry.revision, ?lease, "record seen");
            let seen = Seen {
                revision: entry.revision,
                at: now,
                value: lease,
            };
            if view.claimable(&seen) {
                consider_claim(inner, &entry.key, &seen);
            }
            view.records.insert(entry.key.clone(), seen);
        }
        Operation::Delete | Operation::Purge => {
            view.records.remove(&entry.key);
            inner.refused.remove(&entry.key);
        }
    }
}

/// Every tick: fences the heartbeats a lease time old, and claims what is
/// claimable.
fn sweep(inner: &Arc<Inner>, view: &mut View) {
    for (instance, h) in &view.hearts {
        if instance == &inner.instance
            || h.value.state == Liveness::Dead
            || h.at.elapsed() <= ttl(h.value.ttl_ms)
        {
            continue;
        }
        let id = (instance.clone(), h.revision);
        let retry_after = ttl(h.value.ttl_ms);
        if view
            .fencing
            .get(&id)
            .is_some_and(|at| at.elapsed() < retry_after)
        {
            continue;
        }
        view.fencing.insert(id, Instant::now());
        let inner = inner.clone();
        let (hb, revision) = (h.value.clone(), h.revision);
        // What the watch shows next (dead, or renewed) decides; a fence that
        // failed on the store is tried again a lease time later.
        tokio::spawn(async move {
            heartbeat::fence(&inner, &hb, revision).await;
        });
    }
    // Forget the fences of revisions no longer current.
    let hearts = &view.hearts;
    view.fencing
        .retain(|(i, rev), _| hearts.get(i).is_some_and(|h| h.revision == *rev));
    for (key, record) in &view.records {
        if view.claimable(record) {
            consider_claim(inner, key, record);
        } else if orphaned_here(inner, key, record)
            && view
                .releasing
                .get(&record.revision)
                .is_none_or(|at| at.elapsed() >= ttl(record.value.ttl_ms))
        {
            // Held by us on paper only (a claim whose write landed but
            // reported an error, a release or a delete the store failed, a
            // session that stopped): nobody else would ever take it. Tried
            // again a lease time later if the store failed the release.
            view.releasing.insert(record.revision, Instant::now());
            let (inner, key, lease, revision) = (
                inner.clone(),
                key.clone(),
                record.value.clone(),
                record.revision,
            );
            tokio::spawn(async move {
                // As a claim does: nothing else of this key starts here while
                // it is decided, and a start that finished is seen (its
                // session is registered before its mark goes).
                if !inner.claiming.insert(key.clone()) {
                    return;
                }
                if !inner.placing.contains(&key) && !inner.sessions.contains_key(&key) {
                    tracing::warn!(session = %key, "a record of ours with no session here: released");
                    metrics::counter!("colloquy_cluster_orphan_leases_total").increment(1);
                    release(&inner, &key, &lease, revision, true).await;
                }
                inner.claiming.remove(&key);
            });
        }
    }
    let records = &view.records;
    view.releasing
        .retain(|rev, _| records.values().any(|r| r.revision == *rev));
}

/// A record naming this worker (its current epoch) as holder, unchanged for
/// two lease times, with no session, claim or placement of it here.
fn orphaned_here(inner: &Inner, key: &str, record: &Seen<Lease>) -> bool {
    let r = &record.value;
    r.instance == inner.instance
        && r.epoch == inner.epoch()
        && r.state == LeaseState::Held
        && record.at.elapsed() > ttl(r.ttl_ms) * 2
        && !inner.sessions.contains_key(key)
        && !inner.claiming.contains(key)
        && !inner.placing.contains(key)
}

/// Starts a claim of `key` unless it is ours and held, running here, being
/// claimed, refused at this revision, or the worker takes no sessions now.
fn consider_claim(inner: &Arc<Inner>, key: &str, seen: &Seen<Lease>) {
    let ours_held = seen.value.instance == inner.instance
        && seen.value.epoch == inner.epoch()
        && seen.value.state == LeaseState::Held;
    if ours_held
        || inner.admission.is_draining()
        || !inner.offering()
        || inner.sessions.contains_key(key)
        || inner.refused.get(key).is_some_and(|r| *r == seen.revision)
        || !inner.claiming.insert(key.to_string())
    {
        return;
    }
    tracing::debug!(session = %key, from = %seen.value.worker, "claiming");
    let inner = inner.clone();
    let key = key.to_string();
    let (revision, old) = (seen.revision, seen.value.clone());
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

/// Gives a record back (`released`, compare-and-set on our revision):
/// another worker may resume it now. `owner_lost` when the owner before was
/// lost, not handed over (so the next claim still skips the turn number it
/// may have announced).
async fn release(inner: &Inner, key: &str, lease: &Lease, revision: u64, owner_lost: bool) {
    let mut released = lease.clone();
    released.state = LeaseState::Released;
    released.owner_lost = owner_lost;
    let _ = inner.store.cas_lease(key, &released, revision).await;
}

/// Takes a record whose owner is gone, or that was released, over
/// (compare-and-set on its revision: of several claimers exactly one wins),
/// fences and reads the checkpoint, and resumes the session here.
async fn claim(
    inner: &Arc<Inner>,
    key: &str,
    revision: u64,
    old: Lease,
    ticket: Ticket,
) -> Result<(), ClusterError> {
    let id = crate::cluster::session_id_from_key(key)
        .ok_or_else(|| ClusterError::InvalidName(key.to_string()))?;
    // A checkpoint this worker may not resume (unsigned or forged, with a
    // state key) is not claimed at all: the record stays for a worker that
    // may (one without the key, or accepting unsigned ones in a rollout).
    // (Only a worker with a state key refuses one: the others skip the read.)
    if inner.config.state_key.is_some()
        && let Err(StoreError::Unverified(why)) = inner.store.read_checkpoint(key).await
    {
        tracing::warn!(session = %id, %why, "checkpoint refused: session left for another worker");
        inner.refused.insert(key.to_string(), revision);
        return Err(ClusterError::Protocol(why));
    }
    let generation = old.generation.saturating_add(1);
    let epoch = inner.epoch();
    let lease = inner.lease(epoch, generation, LeaseState::Held);
    let lease_rev = match inner.store.cas_lease(key, &lease, revision).await {
        Ok(r) => r,
        Err(e) => {
            metrics::counter!("colloquy_cluster_claims_lost_total").increment(1);
            return Err(ClusterError::Nats(format!("claim refused: {e:?}")));
        }
    };
    // A session taken from a worker that did not release it may have had a
    // turn start that is not in the checkpoint (turn starts are not stored
    // before they are announced): the new owner's turns begin after it.
    let failover = old.state == LeaseState::Held || old.owner_lost;
    // Rewrite the checkpoint under the new generation: from now on the old
    // owner's compare-and-set fails, so it cannot overwrite what we resume.
    // After a failover its floor goes past every number the lost owner could
    // have announced, stored before this owner publishes anything.
    let mut attempts = 0;
    let (checkpoint, checkpoint_rev) = loop {
        attempts += 1;
        let read = inner.store.read_checkpoint(key).await;
        let step = match read {
            Ok(Some((mut cp, rev))) => {
                cp.generation = generation;
                cp.worker = inner.config.name.clone();
                if failover {
                    cp.turn_floor = cp.turn_floor.max(cp.started_turn).max(cp.committed_turn) + 1;
                }
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
            // A placement writes its checkpoint right after creating the record.
            Err(None | Some(StoreError::Other(_))) if attempts < 20 => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(Some(StoreError::Unverified(why))) => {
                // Rewritten since the first read: left for another worker,
                // as above (released: nobody else holds it now).
                tracing::warn!(session = %id, %why, "checkpoint refused: session released");
                release(inner, key, &lease, lease_rev, failover).await;
                return Err(ClusterError::Protocol(why));
            }
            Err(None | Some(StoreError::Invalid(_))) => {
                // Nothing to resume: the session was ended (a close deletes
                // its record first, but one cut short, or an owner that died
                // in between, leaves the record behind), or its checkpoint
                // does not decode (kept for an operator). Giving the record
                // back would have every worker claim it forever: it goes.
                metrics::counter!("colloquy_cluster_orphan_leases_total").increment(1);
                tracing::warn!(session = %id, "record without a usable checkpoint: deleted");
                let _ = inner.store.delete_lease(key, lease_rev).await;
                return Err(ClusterError::Unavailable(id));
            }
            Err(Some(e)) => {
                tracing::error!(session = %id, error = ?e, "cannot resume now: the store failed");
                release(inner, key, &lease, lease_rev, failover).await;
                return Err(e.into());
            }
        }
    };
    let own = Ownership {
        epoch,
        generation,
        lease_rev,
        checkpoint_rev,
        committed_turn: checkpoint.committed_turn,
        started_turn: checkpoint.started_turn,
        resumed_from: Some(Some(old.worker.clone())),
        turn_floor: checkpoint.turn_floor,
    };
    if let Err(e) = start_local(inner, id.clone(), key.to_string(), checkpoint, own, ticket).await {
        release(inner, key, &lease, lease_rev, failover).await;
        return Err(e);
    }
    metrics::counter!("colloquy_cluster_sessions_resumed_total").increment(1);
    tracing::info!(session = %id, from = %old.worker, generation, "session resumed");
    Ok(())
}
