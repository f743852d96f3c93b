//! What a placement may ask of a worker, and how much a session may send it.
//!
//! A worker spends its own key on every request a session makes, so a spec
//! from the network is not trusted: without a policy it could name any
//! model, put `messages`, `n: 16` or a tool the worker never registered into
//! `extra_body` (merged over the request body last), and ask for unbounded
//! completions, tool rounds and history. And every input is work: a final
//! transcript costs a provider request, and an input as large as NATS allows
//! fills the history. [`PlacementPolicy`] is what a worker accepts: the
//! models, the `extra_body` keys, ceilings on completion tokens, tool rounds
//! and context items, the size of a placement and of an input, a per-session
//! input rate (a token bucket: a flood is refused, other sessions never
//! notice), the idle time and lifetime of a session, and the limits of the
//! KV buckets. Refusals are typed ([`PolicyViolation`]) and travel on the
//! wire with their details, so a client gets the same value back.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::SessionSpec;

/// Body fields a spec's `extra_body` may never set, whatever the allowlist
/// says: they would replace the conversation, the model, the tools, the
/// streaming the worker relies on, or multiply the cost.
pub const FORBIDDEN_EXTRA_BODY_KEYS: &[&str] = &[
    "messages",
    "model",
    "tools",
    "functions",
    "tool_choice",
    "stream",
    "stream_options",
    "n",
    "max_tokens",
    "max_completion_tokens",
];

/// Why a worker refused a placement or an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "violation", rename_all = "snake_case")]
#[non_exhaustive]
pub enum PolicyViolation {
    /// The spec names a model the worker does not serve.
    #[error("model {model:?} is not allowed on this worker")]
    ModelNotAllowed {
        /// The model asked for.
        model: String,
    },
    /// The spec's `extra_body` sets a key that is forbidden or not listed.
    #[error("extra_body key {key:?} is not allowed")]
    ExtraBodyKey {
        /// The key.
        key: String,
    },
    /// A setting over the worker's ceiling.
    #[error("{what} {value} is over the worker's maximum of {max}")]
    OverCeiling {
        /// Which setting (`max_completion_tokens`, `max_tool_rounds`,
        /// `max_context_items`).
        what: String,
        /// What was asked.
        value: u64,
        /// The ceiling.
        max: u64,
    },
    /// A placement or an input larger than the worker takes.
    #[error("{what} is {bytes} bytes, over the worker's maximum of {max_bytes}")]
    TooLarge {
        /// `placement` or `input`.
        what: String,
        /// Its size.
        bytes: usize,
        /// The maximum.
        max_bytes: usize,
    },
    /// The session sent inputs faster than its rate; this one was not run.
    #[error("input rate exceeded ({per_second}/s, bursts of {burst})")]
    RateLimited {
        /// The sustained rate allowed.
        per_second: u32,
        /// The burst allowed.
        burst: u32,
    },
}

/// A per-session input rate: `burst` inputs at once, refilled at
/// `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputRate {
    /// Inputs per second, sustained (at least 1).
    pub per_second: u32,
    /// Inputs at once (at least 1).
    pub burst: u32,
}

/// What a worker accepts from placements and inputs (see the module docs).
/// The defaults are safe for a worker on a shared server; loosen them per
/// deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacementPolicy {
    /// Models a spec may name besides the worker's default model (which is
    /// always allowed). Default: none.
    pub allowed_models: Vec<String>,
    /// Any model is allowed (`allowed_models` is ignored). Default: false.
    pub any_model: bool,
    /// `extra_body` keys a spec may set; [`FORBIDDEN_EXTRA_BODY_KEYS`] are
    /// refused even when listed. Default: none.
    pub extra_body_keys: Vec<String>,
    /// Ceiling on `max_completion_tokens`; a spec without one gets this.
    /// Default 4096.
    pub max_completion_tokens: u32,
    /// Ceiling on tool rounds per turn. Default 8.
    pub max_tool_rounds: u32,
    /// Ceiling on context items; a spec asking to keep all (`null`) gets
    /// this. Default 1000.
    pub max_context_items: usize,
    /// Largest placement request (spec and initial context). Default 1 MiB.
    pub max_placement_bytes: usize,
    /// Largest input message (a transcript, a text, a tool result). Default 64 KiB.
    pub max_input_bytes: usize,
    /// Per-session input rate; `None`: unlimited. Default 50/s, bursts of 100
    /// (interim transcripts and playback reports are frequent).
    pub input_rate: Option<InputRate>,
    /// A session with no input for this long ends (`session_ended`, reason
    /// `idle_timeout`); `None`: never. Default 15 min.
    pub idle_timeout: Option<Duration>,
    /// A session ends this long after it started here (`session_ended`,
    /// reason `max_lifetime`; a resumed session's time starts again on its
    /// new worker); `None`: never. Default 4 h.
    pub max_lifetime: Option<Duration>,
    /// `max_age` of the lease and checkpoint buckets: an entry not written
    /// for this long is removed by the server. Keep it above the idle timeout
    /// and lifetime. `None`: no limit. Default 24 h.
    pub store_max_age: Option<Duration>,
    /// `max_bytes` of each bucket: a full bucket refuses writes. `None`: no
    /// limit. JetStream reserves the bytes when the bucket is created (a
    /// server without that much storage refuses it), so there is no default:
    /// size it to the deployment (sessions × checkpoint size). Default `None`.
    pub store_max_bytes: Option<u64>,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        Self {
            allowed_models: Vec::new(),
            any_model: false,
            extra_body_keys: Vec::new(),
            max_completion_tokens: 4096,
            max_tool_rounds: 8,
            max_context_items: 1000,
            max_placement_bytes: 1024 * 1024,
            max_input_bytes: 64 * 1024,
            input_rate: Some(InputRate {
                per_second: 50,
                burst: 100,
            }),
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            max_lifetime: Some(Duration::from_secs(4 * 3600)),
            store_max_age: Some(Duration::from_secs(24 * 3600)),
            store_max_bytes: None,
        }
    }
}

fn over(what: &str, value: u64, max: u64) -> Result<(), PolicyViolation> {
    if value > max {
        return Err(PolicyViolation::OverCeiling {
            what: what.to_string(),
            value,
            max,
        });
    }
    Ok(())
}

impl PlacementPolicy {
    /// Checks a spec against the policy and fills in the ceilings it left
    /// open (`max_completion_tokens` unset, `max_context_items: null`).
    pub fn admit(
        &self,
        spec: &mut SessionSpec,
        default_model: &str,
    ) -> Result<(), PolicyViolation> {
        if let Some(model) = &spec.model
            && model != default_model
            && !self.any_model
            && !self.allowed_models.iter().any(|m| m == model)
        {
            return Err(PolicyViolation::ModelNotAllowed {
                model: model.clone(),
            });
        }
        for key in spec.options.extra_body.keys() {
            let forbidden = FORBIDDEN_EXTRA_BODY_KEYS.contains(&key.as_str());
            if forbidden || !self.extra_body_keys.iter().any(|k| k == key) {
                return Err(PolicyViolation::ExtraBodyKey { key: key.clone() });
            }
        }
        let tokens = spec
            .options
            .max_completion_tokens
            .get_or_insert(self.max_completion_tokens);
        over(
            "max_completion_tokens",
            u64::from(*tokens),
            u64::from(self.max_completion_tokens),
        )?;
        over(
            "max_tool_rounds",
            u64::from(spec.max_tool_rounds),
            u64::from(self.max_tool_rounds),
        )?;
        let items = spec.max_context_items.get_or_insert(self.max_context_items);
        over(
            "max_context_items",
            *items as u64,
            self.max_context_items as u64,
        )
    }

    /// Refuses a message over `max` bytes.
    pub(crate) fn size(what: &str, bytes: usize, max: usize) -> Result<(), PolicyViolation> {
        if bytes > max {
            return Err(PolicyViolation::TooLarge {
                what: what.to_string(),
                bytes,
                max_bytes: max,
            });
        }
        Ok(())
    }
}

/// One session's input bucket.
pub(crate) struct TokenBucket {
    rate: Option<InputRate>,
    tokens: f64,
    last: tokio::time::Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: Option<InputRate>) -> Self {
        Self {
            rate,
            tokens: rate.map_or(0.0, |r| f64::from(r.burst.max(1))),
            last: tokio::time::Instant::now(),
        }
    }

    /// Takes one input's token, or says why not.
    pub(crate) fn take(&mut self) -> Result<(), PolicyViolation> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let now = tokio::time::Instant::now();
        let refill =
            now.duration_since(self.last).as_secs_f64() * f64::from(rate.per_second.max(1));
        self.last = now;
        self.tokens = (self.tokens + refill).min(f64::from(rate.burst.max(1)));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(PolicyViolation::RateLimited {
                per_second: rate.per_second,
                burst: rate.burst,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn specs_are_checked_and_ceilings_filled_in() {
        let policy = PlacementPolicy {
            allowed_models: vec!["small".into()],
            extra_body_keys: vec!["user".into(), "messages".into()],
            ..PlacementPolicy::default()
        };
        let mut spec = SessionSpec {
            max_context_items: None,
            ..SessionSpec::default()
        };
        policy.admit(&mut spec, "w").unwrap();
        assert_eq!(spec.options.max_completion_tokens, Some(4096));
        assert_eq!(spec.max_context_items, Some(1000));
        policy.admit(&mut SessionSpec::new("small"), "w").unwrap();
        policy.admit(&mut SessionSpec::new("w"), "w").unwrap();
        assert_eq!(
            policy.admit(&mut SessionSpec::new("big"), "w"),
            Err(PolicyViolation::ModelNotAllowed {
                model: "big".into()
            })
        );
        for (key, ok) in [
            ("user", true),
            ("messages", false),
            ("n", false),
            ("x", false),
        ] {
            let mut spec = SessionSpec::default();
            spec.options.extra_body.insert(key.into(), json!(1));
            let r = policy.admit(&mut spec, "w");
            assert_eq!(r.is_ok(), ok, "{key}: {r:?}");
        }
        let mut spec = SessionSpec {
            max_tool_rounds: 9,
            ..SessionSpec::default()
        };
        assert!(matches!(
            policy.admit(&mut spec, "w"),
            Err(PolicyViolation::OverCeiling { what, value: 9, max: 8 }) if what == "max_tool_rounds"
        ));
        let mut spec = SessionSpec::default();
        spec.options.max_completion_tokens = Some(100_000);
        assert!(policy.admit(&mut spec, "w").is_err());
        // The wire form names the violation and keeps the details.
        let v = PolicyViolation::ExtraBodyKey { key: "n".into() };
        let wire = serde_json::to_value(&v).unwrap();
        assert_eq!(wire, json!({"violation": "extra_body_key", "key": "n"}));
        assert_eq!(serde_json::from_value::<PolicyViolation>(wire).unwrap(), v);
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_allows_bursts_then_the_rate() {
        let mut b = TokenBucket::new(Some(InputRate {
            per_second: 2,
            burst: 3,
        }));
        for _ in 0..3 {
            b.take().unwrap();
        }
        assert!(b.take().is_err());
        tokio::time::advance(Duration::from_millis(500)).await;
        b.take().unwrap();
        assert!(b.take().is_err());
        let mut free = TokenBucket::new(None);
        for _ in 0..1000 {
            free.take().unwrap();
        }
    }
}
