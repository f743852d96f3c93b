//! What a worker is started with: its name, the model client and tools its
//! sessions use, its capacity, the times of leases and drains, and the
//! policy placements and inputs are held to.

use std::time::Duration;

use colloquy::llm::ChatClient;

use crate::cluster::{DEFAULT_PREFIX, PlacementPolicy};
use crate::segmenter::SegmenterConfig;
use crate::tool_executor::{Tool, ToolRegistry};

/// Everything a worker needs.
#[derive(Clone)]
pub struct WorkerConfig {
    /// The worker's name (in events, leases and logs).
    pub name: String,
    /// The model client every session of this worker uses.
    pub client: ChatClient,
    /// The model of specs that name none.
    pub default_model: String,
    /// Tools sessions may ask for by name.
    pub tools: ToolRegistry,
    /// Sessions at most; a full worker stops offering capacity.
    pub max_sessions: usize,
    /// Prefix of subjects and buckets (default `colloquy`).
    pub prefix: String,
    /// A worker whose heartbeat is not renewed for this long is fenced and
    /// its sessions are claimed by the others (the heartbeat is renewed every
    /// third of it). Default 1 s.
    pub lease_ttl: Duration,
    /// How long [`Worker::drain`](super::Worker::drain) lets turns in flight finish. Default 10 s.
    pub drain_timeout: Duration,
    /// Bus capacity of each session (the forwarder is one subscriber; it
    /// waits for the store at each turn start and end). Default 1024.
    pub bus_capacity: usize,
    /// The segmenter of sessions whose spec asks for one.
    pub segmenter: SegmenterConfig,
    /// Where the sessions' spans go (none: no spans).
    #[cfg(feature = "otel")]
    pub tracing: Option<crate::telemetry::Tracing>,
    /// What placements may ask and how much a session may send
    /// ([`PlacementPolicy`]; its defaults allow only the default model).
    pub policy: PlacementPolicy,
    /// The cluster's state key: checkpoints are stored with an HMAC-SHA256
    /// tag and a checkpoint that does not verify is never resumed. Give
    /// every worker of a cluster the same key (none: untagged, unverified).
    pub state_key: Option<colloquy::Secret>,
    /// With a state key: resume a checkpoint that carries no tag (one written
    /// before the key was configured: a rolling upgrade that adds it) and
    /// seal it with the key at its next write, instead of refusing it. A
    /// forged tag is refused all the same. Default `false`; turn it off once
    /// every worker has the key (docs/cluster-security.md).
    pub accept_unsigned_checkpoints: bool,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("name", &self.name)
            .field("client", &self.client)
            .field("default_model", &self.default_model)
            .field("tools", &self.tools.definitions().len())
            .field("max_sessions", &self.max_sessions)
            .field("prefix", &self.prefix)
            .field("lease_ttl", &self.lease_ttl)
            .field("drain_timeout", &self.drain_timeout)
            .field("bus_capacity", &self.bus_capacity)
            .field("policy", &self.policy)
            .field("state_key", &self.state_key.as_ref().map(|_| "***"))
            .field(
                "accept_unsigned_checkpoints",
                &self.accept_unsigned_checkpoints,
            )
            .finish()
    }
}

impl WorkerConfig {
    /// A worker named `name` serving sessions with `client`: 100 sessions, no
    /// tools, default model `gpt-4o-mini`, lease 1 s, drain 10 s.
    pub fn new(name: impl Into<String>, client: ChatClient) -> Self {
        Self {
            name: name.into(),
            client,
            default_model: "gpt-4o-mini".into(),
            tools: ToolRegistry::new(),
            max_sessions: 100,
            prefix: DEFAULT_PREFIX.into(),
            lease_ttl: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(10),
            bus_capacity: 1024,
            segmenter: SegmenterConfig::default(),
            #[cfg(feature = "otel")]
            tracing: None,
            policy: PlacementPolicy::default(),
            state_key: None,
            accept_unsigned_checkpoints: false,
        }
    }

    /// Tags checkpoints with `key` and resumes only those that verify.
    pub fn with_state_key(mut self, key: colloquy::Secret) -> Self {
        self.state_key = Some(key);
        self
    }

    /// Resumes untagged checkpoints (and seals them) despite the state key,
    /// for a rolling upgrade that adds the key (see the field of the same
    /// name).
    pub fn accept_unsigned_checkpoints(mut self, accept: bool) -> Self {
        self.accept_unsigned_checkpoints = accept;
        self
    }

    /// Traces every session of the worker ([`telemetry`](crate::telemetry)).
    #[cfg(feature = "otel")]
    pub fn with_tracing(mut self, tracing: crate::telemetry::Tracing) -> Self {
        self.tracing = Some(tracing);
        self
    }

    /// Sets the placement policy.
    pub fn with_policy(mut self, policy: PlacementPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Registers a tool sessions may name.
    pub fn with_tool(mut self, tool: Tool) -> Self {
        self.tools = self.tools.with_tool(tool);
        self
    }

    /// Sets the session cap.
    pub fn with_max_sessions(mut self, max: usize) -> Self {
        self.max_sessions = max;
        self
    }

    /// Sets the model of specs that name none.
    pub fn with_default_model(mut self, model: impl Into<String>) -> Self {
        self.default_model = model.into();
        self
    }

    /// Sets the lease time.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets the drain timeout.
    pub fn with_drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Sets the prefix of subjects and buckets.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}
