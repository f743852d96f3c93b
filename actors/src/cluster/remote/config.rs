//! How a remote client talks to the workers: its timeouts, and whether its
//! subscriptions ask a session's owner who it is.

use std::time::Duration;

use crate::cluster::DEFAULT_PREFIX;

/// How a [`ClusterClient`](super::ClusterClient) talks to the workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteConfig {
    /// Prefix of subjects and buckets (default `colloquy`).
    pub prefix: String,
    /// How long one request waits for its answer (default 5 s).
    pub request_timeout: Duration,
    /// How long an input is retried while no worker owns the session (during
    /// a failover or a hand-over; default 10 s).
    pub unavailable_timeout: Duration,
    /// How long a placement is retried while no worker has room (default 2 s).
    pub placement_timeout: Duration,
    /// Whether event subscriptions ask the session's owner for its
    /// generation (an `owner` request on the speech inputs; default `true`),
    /// so a forged event cannot be taken for a new owner's and a lost
    /// `resumed` does not stall the subscription. A client without
    /// permission to publish speech inputs (the observer role) sets it to
    /// `false`: its subscriptions trust the first generation they see.
    pub confirm_owner: bool,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.into(),
            request_timeout: Duration::from_secs(5),
            unavailable_timeout: Duration::from_secs(10),
            placement_timeout: Duration::from_secs(2),
            confirm_owner: true,
        }
    }
}
