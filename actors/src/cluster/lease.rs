//! Leases and checkpoints in JetStream key-value buckets.
//!
//! A lease is `{worker, instance, generation, state, ttl_ms}` under the
//! session's key; every change is a compare-and-set on the key's revision, so
//! of two workers claiming the same expired lease exactly one succeeds. A
//! checkpoint holds the session's spec, its committed context, and the last
//! committed and last started turns; it is also written by compare-and-set, so
//! a worker that lost the session cannot overwrite the new owner's copy.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use colloquy::context::ChatContext;
use serde::{Deserialize, Serialize};

use super::signing::{StateKey, open, seal};
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

/// Ownership of one session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Lease {
    pub(crate) worker: String,
    pub(crate) instance: String,
    pub(crate) generation: u64,
    pub(crate) state: LeaseState,
    pub(crate) ttl_ms: u64,
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
            StoreError::Invalid(m) => ClusterError::Protocol(m),
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
    ) -> Result<Self, ClusterError> {
        let js = jetstream::new(client.clone());
        Ok(Self {
            leases: bucket(&js, names.lease_bucket(), policy).await?,
            checkpoints: bucket(&js, names.checkpoint_bucket(), policy).await?,
            client: client.clone(),
            state_key,
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
                let body = open(self.state_key.as_ref(), key, &e.value).map_err(|err| {
                    metrics::counter!("colloquy_cluster_checkpoints_refused_total").increment(1);
                    StoreError::Invalid(format!("checkpoint of {key}: {err}"))
                })?;
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
