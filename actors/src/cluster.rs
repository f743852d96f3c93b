//! Beyond one machine: sessions spread over worker processes through NATS
//! (behind the cargo feature `nats`).
//!
//! colloquy does not build a cluster of its own; it uses NATS:
//!
//! - **Placement.** A [`Worker`] runs a local [`Supervisor`](crate::Supervisor)
//!   and offers capacity on `{prefix}.place` in the queue group
//!   `{prefix}-workers`. A full (or draining) worker unsubscribes, so NATS
//!   only hands new sessions to workers with room. [`ClusterClient::place`]
//!   sends a [`SessionSpec`] (model, options, instructions, tool *names*,
//!   interruption and preemption settings); tools are registered on the
//!   workers by name.
//! - **Remote sessions.** A [`RemoteSession`] has the inputs of a
//!   [`SessionHandle`](crate::SessionHandle) (speech started and ended,
//!   transcripts, speech played, send text, cancel, tool results) as requests on
//!   `{prefix}.session.{key}.in`, and [`RemoteSession::subscribe`] reads the
//!   session's events from `{prefix}.session.{key}.events`. Both are JSON in
//!   the schema of [`wire`], so an STT or TTS service in any language can join.
//!   A cancel is executed by the owning worker on receipt: the turn is closed
//!   on its ledger, and the worker forwards the bus in order, so no event of
//!   the turn follows its `turn_finished` (`cancelled`) on the wire either.
//! - **Ownership and failover.** Each session has a lease in the JetStream KV
//!   bucket `{prefix}_leases`, renewed by its worker every third of the lease
//!   time, and a checkpoint (spec, committed context, last committed and last
//!   started turn) in `{prefix}_checkpoints`, written after every commit (from
//!   [`SessionHandle::watch_checkpoint`](crate::SessionHandle::watch_checkpoint)).
//!   Every worker watches the leases; one that has not changed for the lease
//!   time (its worker died or is cut off) is claimed with a compare-and-set on
//!   its revision — exactly one claimer wins — and the winner restores the
//!   checkpoint and resumes the session: it ends the turn that was in flight
//!   as `failed` ("worker lost") and publishes `resumed` naming the last
//!   committed turn. A worker that loses its lease (a compare-and-set refused)
//!   stops its copy of the session at once.
//! - **Committed means durable.** A turn's normal `turn_finished` is forwarded
//!   only once the checkpoint holding the turn is stored, and `turn_started`
//!   only once the store knows the turn began: a subscriber never sees a turn
//!   finish that a failover could lose, and a resumed session never reuses a
//!   turn number. A checkpoint larger than the server's maximum message size
//!   is not chunked: it is reported ([`RemoteEventKind::CheckpointTooLarge`],
//!   `colloquy_cluster_checkpoint_too_large_total`) and the session runs on
//!   without a durable copy.
//! - **Draining.** [`Worker::drain`] (or SIGTERM with
//!   [`Worker::drain_on_signal`]) stops taking sessions, lets turns in flight
//!   finish up to the drain timeout, then releases each lease, so another
//!   worker claims the session at once instead of after expiry.
//!
//! Session ids become subject tokens and KV keys through [`session_key`].

mod lease;
mod remote;
mod spec;
pub mod wire;
mod worker;

/// The NATS client this module is built on (its `Client` is what
/// [`connect`] returns and [`Worker::start`] takes).
pub use async_nats;
pub use remote::{ClusterClient, RemoteConfig, RemoteEvents, RemoteSession};
pub use spec::{SessionSpec, SpecInterruption, SpecMode, SpecOptions};
pub use wire::{RemoteEvent, RemoteEventKind};
pub use worker::{DrainReport, Worker, WorkerConfig};

use std::time::Duration;

use crate::ids::SessionId;

/// The default prefix of subjects and bucket names.
pub const DEFAULT_PREFIX: &str = "colloquy";

/// Errors of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// NATS refused or failed an operation (connection, subscription, store).
    #[error("nats: {0}")]
    Nats(String),
    /// No worker offers capacity (none runs, or all are full or draining).
    #[error("no worker has capacity")]
    NoCapacity,
    /// No worker owns the session now (none answered within the wait).
    #[error("session {0} has no owner")]
    Unavailable(SessionId),
    /// The owner did not answer in time.
    #[error("session {0}: no answer in time")]
    Timeout(SessionId),
    /// A session with this id is placed already.
    #[error("session {0} already exists")]
    AlreadyExists(SessionId),
    /// The spec names a tool no worker registered.
    #[error("no tool named {0:?} on the worker")]
    UnknownTool(String),
    /// A context (or request) larger than the server's maximum message size.
    #[error("{what} is {bytes} bytes, over the server's maximum of {max_bytes}")]
    TooLarge {
        /// What did not fit.
        what: &'static str,
        /// Its serialized size.
        bytes: usize,
        /// The largest value the server takes.
        max_bytes: usize,
    },
    /// The session id or the prefix cannot be used (empty, or a prefix with
    /// characters other than ASCII letters, digits, `-` and `_`).
    #[error("invalid name {0:?}")]
    InvalidName(String),
    /// The worker refused the operation (kind and message as on the wire:
    /// `not_running`, `stale`, `not_allowed`, `unknown_call`, …).
    #[error("refused ({kind}): {message}")]
    Refused {
        /// The error kind.
        kind: String,
        /// The worker's message.
        message: String,
    },
    /// A message from the network did not follow the schema.
    #[error("invalid message: {0}")]
    Protocol(String),
    /// The worker lost the session's lease to another worker.
    #[error("lease of session {0} lost")]
    LeaseLost(SessionId),
}

impl ClusterError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        ClusterError::Nats(e.to_string())
    }
}

/// The subject token and KV key of a session id: ASCII letters, digits, `-`
/// and `_` are kept; every other byte of the UTF-8 id becomes `=` and two
/// upper-case hex digits (`call 42` → `call=2042`, `a.b` → `a=2Eb`).
pub fn session_key(id: &SessionId) -> Result<String, ClusterError> {
    let s = id.as_str();
    if s.is_empty() {
        return Err(ClusterError::InvalidName(String::new()));
    }
    let mut key = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            key.push(b as char);
        } else {
            key.push_str(&format!("={b:02X}"));
        }
    }
    Ok(key)
}

/// The session id of a key made by [`session_key`].
pub fn session_id_from_key(key: &str) -> Option<SessionId> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(SessionId::from)
}

/// Names of the subjects and buckets under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    prefix: String,
}

impl Names {
    pub(crate) fn new(prefix: &str) -> Result<Self, ClusterError> {
        let ok = !prefix.is_empty()
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(ClusterError::InvalidName(prefix.to_string()));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub(crate) fn place(&self) -> String {
        format!("{}.place", self.prefix)
    }

    pub(crate) fn queue_group(&self) -> String {
        format!("{}-workers", self.prefix)
    }

    pub(crate) fn inputs(&self, key: &str) -> String {
        format!("{}.session.{key}.in", self.prefix)
    }

    pub(crate) fn events(&self, key: &str) -> String {
        format!("{}.session.{key}.events", self.prefix)
    }

    pub(crate) fn lease_bucket(&self) -> String {
        format!("{}_leases", self.prefix)
    }

    pub(crate) fn checkpoint_bucket(&self) -> String {
        format!("{}_checkpoints", self.prefix)
    }
}

/// The server's maximum message size, once known (the default 1 MiB before
/// the first connection).
pub(crate) fn max_payload(client: &async_nats::Client) -> usize {
    match client.server_info().max_payload {
        0 => 1024 * 1024,
        n => n,
    }
}

/// Connects to NATS the way the cluster expects: reconnects forever with a
/// short backoff (100 ms per attempt, at most 1 s), keeps retrying the first
/// connect, and names the connection.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, ClusterError> {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(100, 1000))
        })
        .connect(url)
        .await
        .map_err(ClusterError::nats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_keys_are_subject_tokens_and_round_trip() {
        for id in ["call-42", "a.b", "call 42", "é*>", "x=y", "A_b-9"] {
            let key = session_key(&SessionId::new(id)).unwrap();
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
                "{key}"
            );
            assert_eq!(session_id_from_key(&key).unwrap().as_str(), id);
        }
        assert_eq!(
            session_key(&SessionId::new("call 42")).unwrap(),
            "call=2042"
        );
        assert!(session_key(&SessionId::new("")).is_err());
        assert!(session_id_from_key("bad=Z").is_none());
        assert!(Names::new("colloquy-test_1").is_ok());
        assert!(Names::new("a.b").is_err());
    }
}
