//! The worker's placement-policy flags: what a placement may ask of this
//! worker (models, `extra_body` keys, ceilings) and how much a session may
//! send it (input size and rate, idle time, lifetime), and the KV buckets'
//! limits. Every default is `PlacementPolicy::default()`'s.

use std::time::Duration;

use colloquy_actors::cluster::{InputRate, PlacementPolicy};

/// Placement policy (see docs/cluster.md, "Placement policy").
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PolicyFlags {
    /// A model specs may name besides --model (repeatable; default: only --model).
    #[arg(long, value_name = "M")]
    pub allowed_model: Vec<String>,
    /// Any model may be named (the worker's key pays for whatever is asked).
    #[arg(long)]
    pub any_model: bool,
    /// An extra_body key specs may set (repeatable; default: none; messages,
    /// model, tools, stream, n and the token limits are refused always).
    #[arg(long, value_name = "KEY")]
    pub extra_body_key: Vec<String>,
    /// Ceiling on max_completion_tokens (specs without one get it) [default: 4096].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_completion_tokens: Option<u32>,
    /// Ceiling on tool rounds per turn [default: 8].
    #[arg(long, value_name = "N")]
    pub max_tool_rounds: Option<u32>,
    /// Ceiling on context items (specs keeping all get it) [default: 1000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_context_items: Option<u64>,
    /// Largest placement request in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_placement_bytes: Option<u64>,
    /// Largest input message in bytes [default: 65536].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_input_bytes: Option<u64>,
    /// Inputs per second per session, sustained (0: unlimited) [default: 50].
    #[arg(long, value_name = "N")]
    pub input_rate: Option<u32>,
    /// Inputs at once per session [default: 100].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub input_burst: Option<u32>,
    /// End a session after this many seconds without input (0: never) [default: 900].
    #[arg(long, value_name = "S")]
    pub idle_timeout_s: Option<u64>,
    /// End a session this many seconds after it started here (0: never) [default: 14400].
    #[arg(long, value_name = "S")]
    pub max_lifetime_s: Option<u64>,
    /// max_age of the lease and checkpoint buckets when this worker creates
    /// them, in seconds (0: none) [default: 86400].
    #[arg(long, value_name = "S")]
    pub store_max_age_s: Option<u64>,
    /// max_bytes of each bucket when this worker creates it (JetStream
    /// reserves it; 0: none) [default: none].
    #[arg(long, value_name = "BYTES")]
    pub store_max_bytes: Option<u64>,
}

fn seconds(s: u64) -> Option<Duration> {
    (s > 0).then(|| Duration::from_secs(s))
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl PolicyFlags {
    /// The policy: the defaults with each flag given applied.
    pub fn policy(&self) -> PlacementPolicy {
        let mut p = PlacementPolicy {
            allowed_models: self.allowed_model.clone(),
            any_model: self.any_model,
            extra_body_keys: self.extra_body_key.clone(),
            ..PlacementPolicy::default()
        };
        if let Some(n) = self.max_completion_tokens {
            p.max_completion_tokens = n;
        }
        if let Some(n) = self.max_tool_rounds {
            p.max_tool_rounds = n;
        }
        if let Some(n) = self.max_context_items {
            p.max_context_items = size(n);
        }
        if let Some(n) = self.max_placement_bytes {
            p.max_placement_bytes = size(n);
        }
        if let Some(n) = self.max_input_bytes {
            p.max_input_bytes = size(n);
        }
        let default_rate = p.input_rate.unwrap_or(InputRate {
            per_second: 50,
            burst: 100,
        });
        p.input_rate = match self.input_rate.unwrap_or(default_rate.per_second) {
            0 => None,
            per_second => Some(InputRate {
                per_second,
                burst: self.input_burst.unwrap_or(default_rate.burst),
            }),
        };
        if let Some(s) = self.idle_timeout_s {
            p.idle_timeout = seconds(s);
        }
        if let Some(s) = self.max_lifetime_s {
            p.max_lifetime = seconds(s);
        }
        if let Some(s) = self.store_max_age_s {
            p.store_max_age = seconds(s);
        }
        if let Some(n) = self.store_max_bytes {
            p.store_max_bytes = (n > 0).then_some(n);
        }
        p
    }
}
