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
//!   `{prefix}.session.{key}.in.{kind}` (`speech`, `control`, `admin`: the
//!   kind of operation is in the subject so NATS permissions can tell them
//!   apart), and [`RemoteSession::subscribe`] reads the session's events from
//!   `{prefix}.session.{key}.events.{class}` (`lifecycle`, `speech`,
//!   `tokens`, `tools`, `usage`, `user`: a subscriber takes only the classes
//!   it needs, [`RemoteSession::subscribe_to`], and the wildcard gives the
//!   whole stream in order). Both are JSON in the schema of [`wire`], so an
//!   STT or TTS service in any language can join. The owner batches the
//!   events of a session already queued together into one message per class
//!   run, and never waits to fill a batch.
//!   A cancel is executed by the owning worker on receipt: the turn is closed
//!   on its ledger, and the worker forwards the bus in order, so no event of
//!   the turn follows its `turn_finished` (`cancelled`) on the wire either.
//! - **Ownership and failover.** Each worker keeps one heartbeat in the
//!   JetStream KV bucket `{prefix}_leases` (`workers.<instance>`), renewed
//!   every third of the lease time; each session has an ownership record
//!   there, written only when its owner changes (placement, claim, release,
//!   close), and a checkpoint (spec, committed context, last committed and
//!   last started turn) in `{prefix}_checkpoints`, written after every commit
//!   (from [`SessionHandle::watch_checkpoint`](crate::SessionHandle::watch_checkpoint)).
//!   An idle session costs no write. Every worker watches the bucket; a
//!   heartbeat that has not changed for the lease time (its worker died, is
//!   paused or is cut off) is fenced (set `dead` by compare-and-set), then
//!   each of its sessions is claimed with a compare-and-set on its record —
//!   exactly one claimer wins — and the winner rewrites the checkpoint under
//!   its generation and resumes the session: it ends a turn the store knew
//!   was in flight as `failed` ("worker lost") and publishes `resumed` naming
//!   the last committed turn. A worker whose heartbeat compare-and-set is
//!   refused stops every session it holds at once (and registers again); one
//!   whose checkpoint compare-and-set is refused stops that copy. A record
//!   whose checkpoint is gone (a session being closed or ended; a close
//!   deletes the record first) or does not decode is deleted by its claimer,
//!   not given back: it is never claimed in a loop
//!   (`colloquy_cluster_orphan_leases_total`).
//! - **Committed means durable.** A turn's normal `turn_finished` is forwarded
//!   only once the checkpoint holding the turn is stored: a subscriber never
//!   sees a turn finish that a failover could lose. `turn_started` goes out
//!   first and is stored right after, so no store round trip delays a turn
//!   start; a session resumed after a failover numbers its turns past one the
//!   lost worker may have started unstored, so it never reuses a turn number.
//!   A checkpoint larger than the server's maximum message size
//!   is not chunked: it is reported ([`RemoteEventKind::CheckpointTooLarge`],
//!   `colloquy_cluster_checkpoint_too_large_total`) and the session runs on
//!   without a durable copy.
//! - **Draining.** [`Worker::drain`] (or SIGTERM with
//!   [`Worker::drain_on_signal`]) stops taking sessions, lets turns in flight
//!   finish up to the drain timeout, then releases each session's record, so
//!   another worker claims the session at once instead of after the worker's
//!   heartbeat stops. A speculative
//!   turn is not waited for (nobody heard it; stopping the session drops it),
//!   and a placement or claim in progress when the drain begins is admitted
//!   first and handed over with the rest.
//!
//! - **Who may connect.** [`connect_with`] logs in with [`NatsOptions`] (user
//!   and password, token, NKey seed, creds file or JWT; a CA, a client
//!   certificate, TLS required); [`NatsSettings`] turns a command line's
//!   paths and the environment into them. A refused login is
//!   [`ClusterError::Connect`] with [`ConnectFailure::Authorization`] within
//!   seconds, not a retry loop; no secret is ever printed.
//!
//! Session ids become subject tokens and KV keys through [`session_key`].

mod admission;
#[cfg(test)]
mod admission_tests;
mod connect;
#[cfg(test)]
mod fencing_tests;
mod lease;
mod policy;
mod remote;
mod settings;
mod signing;
mod spec;
mod subject;
#[cfg(test)]
pub(crate) mod test_hooks;
/// The test server of the cluster's unit tests (one copy for all of them).
#[cfg(test)]
#[path = "../../tests/support/nats.rs"]
#[allow(unreachable_pub)]
mod test_nats;
pub mod wire;
mod worker;

/// The NATS client this module is built on (its `Client` is what
/// [`connect`] returns and [`Worker::start`] takes).
pub use async_nats;
pub use connect::{
    ConnectFailure, DEFAULT_CONNECTION_TIMEOUT, NatsCredentials, NatsOptions, NatsTls, connect,
    connect_with, redact_url,
};
pub use policy::{FORBIDDEN_EXTRA_BODY_KEYS, InputRate, PlacementPolicy, PolicyViolation};
pub use remote::{
    ClusterClient, RemoteConfig, RemoteEvents, RemoteReply, RemoteReplyError, RemoteSession,
};
pub use settings::{NatsSettings, env as nats_env};
pub use spec::{SessionSpec, SpecInterruption, SpecMode, SpecOptions};
pub use subject::{
    MAX_NAME_BYTES, MAX_PREFIX_BYTES, MAX_SESSION_KEY_BYTES, session_id_from_key, session_key,
};
pub(crate) use subject::{Names, check_name};
pub use wire::{EventClass, EventClasses, InputKind, RemoteEvent, RemoteEventKind};
pub use worker::{DrainReport, Worker, WorkerConfig};

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
    /// A name is too long to be part of a subject or a key: the server would
    /// refuse the control line carrying it (4 KiB by default) and close the
    /// connection, cutting every session on it. Refused before anything is
    /// sent.
    #[error("{what} is {bytes} bytes, over the maximum of {max_bytes}")]
    NameTooLong {
        /// Which name (`session key`, `prefix`, `name`).
        what: &'static str,
        /// Its length in bytes (a session key is the escaped id).
        bytes: usize,
        /// The longest accepted.
        max_bytes: usize,
    },
    /// The NATS URL is not one (see [`connect`]).
    #[error("invalid NATS URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, credentials redacted.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The first connection to the server failed: the login refused, TLS,
    /// no server there (see [`ConnectFailure`]).
    #[error("cannot connect to {url}: {failure} ({reason})")]
    Connect {
        /// The URL, credentials redacted.
        url: String,
        /// What kind of failure.
        failure: ConnectFailure,
        /// The client's error (never a credential).
        reason: String,
    },
    /// The NATS login or TLS settings cannot be used: a file that cannot be
    /// read, a seed that is not one, two logins at once. Never shows a
    /// secret.
    #[error("NATS credentials: {0}")]
    Credentials(String),
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
    /// The worker lost the session's ownership to another worker (or its
    /// heartbeat was fenced).
    #[error("lease of session {0} lost")]
    LeaseLost(SessionId),
    /// The worker's [`PlacementPolicy`] refused the placement or the input.
    #[error("refused by the worker's policy: {0}")]
    Policy(PolicyViolation),
}

impl ClusterError {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        ClusterError::Nats(e.to_string())
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
