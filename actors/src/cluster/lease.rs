//! Heartbeats, ownership records and checkpoints in JetStream key-value
//! buckets.
//!
//! The lease bucket holds two kinds of keys. `workers.<instance>` is a
//! worker's [`Heartbeat`], rewritten (compare-and-set) every third of its
//! lease time: the only write whose rate is per worker and per second. A
//! session's key holds its ownership record ([`Lease`]: `{worker, instance,
//! epoch, generation, state, ttl_ms}`), written only when ownership changes
//! (placement, claim, release, close; and a rare refresh against the
//! bucket's `max_age`), so an idle session costs no write at all. A session
//! is owned while its record names a worker whose heartbeat is alive under
//! the record's epoch; every change is a compare-and-set on the key's
//! revision, so of two workers claiming the same session exactly one
//! succeeds. Session keys never hold a `.` (see `session_key`), so the two
//! kinds never meet.
//!
//! A checkpoint holds the session's spec, its committed context, and the last
//! committed and last started turns; it is also written by compare-and-set, so
//! a worker that lost the session cannot overwrite the new owner's copy.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use colloquy::context::ChatContext;
use serde::{Deserialize, Serialize};

use super::signing::{SealError, StateKey, open, seal};
use super::spec::SessionSpec;
use super::{ClusterError, Names, PlacementPolicy};

/// Room kept for headers under the server's maximum message size.
const HEADER_ROOM: usize = 1024;

/// Whether a lease's worker holds it or handed it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LeaseState {
    Held,
    Released,
}

/// Ownership of one session (its record under the session's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub(crate) worker: String,
    pub(crate) instance: String,
    /// The epoch of the owner's heartbeat the record was written under: a
    /// heartbeat of a later epoch (or dead) means the owner lost it.
    #[serde(default)]
    pub(crate) epoch: u64,
    pub(crate) generation: u64,
    pub(crate) state: LeaseState,
    /// The owner's lease time: a record whose owner never had a heartbeat
    /// is claimed once it was seen for this long.
    pub(crate) ttl_ms: u64,
    /// Released by a claimer that could not resume it, after its owner was
    /// lost (not handed over): the next claim is still a failover.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) owner_lost: bool,
}

/// Whether a heartbeat's worker is alive, or was fenced by another worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Liveness {
    Alive,
    Dead,
}

/// A worker's heartbeat (under [`heartbeat_key`]): rewritten every third of
/// `ttl_ms`; one unchanged for `ttl_ms` is fenced (set `dead` by
/// compare-and-set) by another worker before any of its sessions is claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Heartbeat {
    pub(crate) worker: String,
    pub(crate) instance: String,
    /// Raised each time the worker finds itself fenced and registers again.
    pub(crate) epoch: u64,
    pub(crate) state: Liveness,
    pub(crate) ttl_ms: u64,
}

impl Heartbeat {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Where heartbeats are kept in the lease bucket.
pub(crate) const HEARTBEAT_PREFIX: &str = "workers.";

/// The key of an instance's heartbeat (the instance escaped as a session
/// key is, so any worker name makes a valid key).
pub(crate) fn heartbeat_key(instance: &str) -> String {
    let escaped = super::session_key(&crate::ids::SessionId::from(instance.to_string()))
        .unwrap_or_else(|_| "invalid".into());
    format!("{HEARTBEAT_PREFIX}{escaped}")
}

impl Lease {
    pub(crate) fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// The durable copy of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Checkpoint {
    pub(crate) v: u32,
    pub(crate) session: String,
    pub(crate) worker: String,
    pub(crate) generation: u64,
    pub(crate) spec: SessionSpec,
    pub(crate) context: ChatContext,
    /// Every turn up to this one is in `context`.
    pub(crate) committed_turn: u64,
    /// The last turn whose start was published.
    pub(crate) started_turn: u64,
    /// Turn numbers up to this one are taken: an owner that lost the session
    /// may have announced one past what it stored (a start is stored right
    /// after it is announced). Each failover's claim raises it past
    /// everything the lost owner could have used, before anything is
    /// published, so no number is used twice even across failovers in a row.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub(crate) turn_floor: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// The key changed since the revision given (someone else wrote).
    Conflict,
    /// `create` on a key that exists.
    Exists,
    /// The value is larger than the server takes.
    TooLarge { bytes: usize, max_bytes: usize },
    /// A stored value that does not decode (not worth retrying).
    Invalid(String),
    /// A checkpoint whose tag does not verify, or that has none, with a
    /// state key (see `signing.rs`): not ours to resume, nor to delete.
    Unverified(String),
    /// Transport or server trouble; worth retrying.
    Other(String),
}

impl From<StoreError> for ClusterError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict | StoreError::Exists => {
                ClusterError::Nats("the key changed".into())
            }
            StoreError::TooLarge { bytes, max_bytes } => ClusterError::TooLarge {
                what: "checkpoint",
                bytes,
                max_bytes,
            },
            StoreError::Invalid(m) | StoreError::Unverified(m) => ClusterError::Protocol(m),
            StoreError::Other(m) => ClusterError::Nats(m),
        }
    }
}

/// The two buckets.
#[derive(Clone)]
pub(crate) struct Store {
    pub(crate) leases: kv::Store,
    checkpoints: kv::Store,
    client: async_nats::Client,
    /// Checkpoints are tagged and verified with it (`signing.rs`).
    state_key: Option<StateKey>,
    /// With a state key: an untagged checkpoint is read (and re-sealed at
    /// the next write) instead of refused.
    accept_unsigned: bool,
}

async fn bucket(
    js: &jetstream::Context,
    name: String,
    policy: &PlacementPolicy,
) -> Result<kv::Store, ClusterError> {
    let config = kv::Config {
        bucket: name.clone(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        max_age: policy.store_max_age.unwrap_or_default(),
        max_bytes: policy
            .store_max_bytes
            .map_or(-1, |b| i64::try_from(b).unwrap_or(i64::MAX)),
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Created concurrently with another config, or exists: use it.
        Err(create) => js
            .get_key_value(name)
            .await
            .map_err(|e| ClusterError::Nats(format!("{create}; {e}"))),
    }
}

impl Store {
    /// Opens (creating them if needed, with the policy's `max_age` and
    /// `max_bytes`) the lease and checkpoint buckets. Buckets that exist keep
    /// their configuration.
    pub(crate) async fn open(
        client: &async_nats::Client,
        names: &Names,
        policy: &PlacementPolicy,
        state_key: Option<StateKey>,
        accept_unsigned: bool,
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        Ok(Self {
            leases: bucket(&js, names.lease_bucket(), policy).await?,
            checkpoints: bucket(&js, names.checkpoint_bucket(), policy).await?,
            client: client.clone(),
            state_key,
            accept_unsigned,
        })
    }

    /// The largest value the server takes now.
    pub(crate) fn max_value_bytes(&self) -> usize {
        super::max_payload(&self.client).saturating_sub(HEADER_ROOM)
    }

    fn check_size(&self, bytes: &[u8]) -> Result<(), StoreError> {
        let max_bytes = self.max_value_bytes();
        if bytes.len() > max_bytes {
            return Err(StoreError::TooLarge {
                bytes: bytes.len(),
                max_bytes,
            });
        }
        Ok(())
    }

    pub(crate) async fn create_lease(&self, key: &str, lease: &Lease) -> Result<u64, StoreError> {
        self.leases
            .create(key, lease.encode())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => StoreError::Other(e.to_string()),
            })
    }

    /// Writes `lease` if the key is still at `revision`.
    pub(crate) async fn cas_lease(
        &self,
        key: &str,
        lease: &Lease,
        revision: u64,
    ) -> Result<u64, StoreError> {
        cas(&self.leases, key, lease.encode(), revision).await
    }

    /// Creates a heartbeat (its key must not exist).
    pub(crate) async fn create_heartbeat(&self, hb: &Heartbeat) -> Result<u64, StoreError> {
        self.leases
            .create(heartbeat_key(&hb.instance), hb.encode())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => StoreError::Exists,
                _ => StoreError::Other(e.to_string()),
            })
    }

    /// Writes a heartbeat if its key is still at `revision`.
    pub(crate) async fn cas_heartbeat(
        &self,
        hb: &Heartbeat,
        revision: u64,
    ) -> Result<u64, StoreError> {
        cas(
            &self.leases,
            &heartbeat_key(&hb.instance),
            hb.encode(),
            revision,
        )
        .await
    }

    /// The value and revision under a key of the lease bucket (`None`:
    /// absent or deleted).
    pub(crate) async fn lease_entry(&self, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
        match self.leases.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some((e.value, e.revision))),
            Ok(_) => Ok(None),
            Err(e) => Err(StoreError::Other(e.to_string())),
        }
    }

    pub(crate) async fn delete_lease(&self, key: &str, revision: u64) -> Result<(), StoreError> {
        self.leases
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| StoreError::Other(e.to_string()))
    }

    /// Encodes a checkpoint for `key` (tagged with the state key, if any),
    /// refusing one the server would not take.
    pub(crate) fn encode_checkpoint(
        &self,
        key: &str,
        cp: &Checkpoint,
    ) -> Result<Bytes, StoreError> {
        let bytes = serde_json::to_vec(cp).map_err(|e| StoreError::Other(e.to_string()))?;
        let bytes = seal(self.state_key.as_ref(), key, bytes);
        self.check_size(&bytes)?;
        Ok(Bytes::from(bytes))
    }

    /// Writes a first checkpoint (whatever was there).
    pub(crate) async fn put_checkpoint(&self, key: &str, bytes: Bytes) -> Result<u64, StoreError> {
        self.checkpoints
            .put(key, bytes)
            .await
            .map_err(|e| StoreError::Other(e.to_string()))
    }

    /// Writes a checkpoint if the key is still at `revision`.
    pub(crate) async fn cas_checkpoint(
        &self,
        key: &str,
        bytes: Bytes,
        revision: u64,
    ) -> Result<u64, StoreError> {
        cas(&self.checkpoints, key, bytes, revision).await
    }

    /// The checkpoint and its revision.
    pub(crate) async fn read_checkpoint(
        &self,
        key: &str,
    ) -> Result<Option<(Checkpoint, u64)>, StoreError> {
        let entry = self
            .checkpoints
            .entry(key)
            .await
            .map_err(|e| StoreError::Other(e.to_string()))?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let body = match open(self.state_key.as_ref(), key, &e.value) {
                    Ok(body) => body,
                    // A rolling upgrade that adds the key: what was written
                    // before it is taken (and sealed at its next write).
                    Err(SealError::Unsigned) if self.accept_unsigned => {
                        metrics::counter!("colloquy_cluster_checkpoints_unsigned_accepted_total")
                            .increment(1);
                        &e.value[..]
                    }
                    Err(err) => {
                        metrics::counter!("colloquy_cluster_checkpoints_refused_total")
                            .increment(1);
                        return Err(StoreError::Unverified(format!(
                            "checkpoint of {key}: {err}"
                        )));
                    }
                };
                let cp = serde_json::from_slice(body)
                    .map_err(|err| StoreError::Invalid(format!("checkpoint of {key}: {err}")))?;
                Ok(Some((cp, e.revision)))
            }
            _ => Ok(None),
        }
    }

    pub(crate) async fn delete_checkpoint(&self, key: &str) -> Result<(), StoreError> {
        self.checkpoints
            .purge(key)
            .await
            .map_err(|e| StoreError::Other(e.to_string()))
    }
}

async fn cas(store: &kv::Store, key: &str, value: Bytes, revision: u64) -> Result<u64, StoreError> {
    store
        .update(key, value, revision)
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict,
            _ => StoreError::Other(e.to_string()),
        })
}
