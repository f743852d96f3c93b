//! Token usage, read from every shape providers send.
//!
//! OpenAI nests cached and reasoning counts in `*_tokens_details`; DeepSeek and
//! Kimi send `cached_tokens`/`prompt_cache_hit_tokens` flat; Groq puts usage in
//! `x_groq.usage`; Kimi puts it inside the choice; xAI reports reasoning tokens
//! outside `completion_tokens`. All of them land in one [`Usage`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Tokens used by one completion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Total as the provider reported it.
    pub total_tokens: u64,
    /// Prompt tokens served from the provider's cache, when reported.
    pub cached_tokens: Option<u64>,
    /// Reasoning tokens, when reported.
    pub reasoning_tokens: Option<u64>,
    /// True when colloquy estimated the figures (a cancelled turn whose usage
    /// never arrived) instead of reading them from the provider.
    #[serde(default)]
    pub estimated: bool,
}

fn uint(v: Option<&Value>) -> Option<u64> {
    v.and_then(|v| v.as_u64().or_else(|| v.as_f64().map(|f| f.max(0.0) as u64)))
}

impl Usage {
    /// Reads a usage object; `None` when it is not one.
    pub fn from_json(v: &Value) -> Option<Self> {
        let obj = v.as_object()?;
        let prompt = uint(obj.get("prompt_tokens"));
        let completion = uint(obj.get("completion_tokens"));
        if prompt.is_none() && completion.is_none() && obj.get("total_tokens").is_none() {
            return None;
        }
        let prompt_tokens = prompt.unwrap_or(0);
        let completion_tokens = completion.unwrap_or(0);
        let total_tokens =
            uint(obj.get("total_tokens")).unwrap_or(prompt_tokens + completion_tokens);
        let cached_tokens = uint(
            obj.get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        )
        .or_else(|| uint(obj.get("cached_tokens")))
        .or_else(|| uint(obj.get("prompt_cache_hit_tokens")));
        let reasoning_tokens = uint(
            obj.get("completion_tokens_details")
                .and_then(|d| d.get("reasoning_tokens")),
        )
        .or_else(|| uint(obj.get("reasoning_tokens")));
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens,
            cached_tokens,
            reasoning_tokens,
            estimated: false,
        })
    }

    /// A rough estimate (4 characters a token) for a turn cut short before the
    /// provider reported usage.
    pub fn estimate(prompt_bytes: usize, completion_chars: usize) -> Self {
        let prompt_tokens = prompt_bytes.div_ceil(4) as u64;
        let completion_tokens = completion_chars.div_ceil(4) as u64;
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            cached_tokens: None,
            reasoning_tokens: None,
            estimated: true,
        }
    }

    /// The usage of two requests together: counts add up (an optional count
    /// is known once either side knows it), and the sum is estimated when
    /// either part was.
    pub fn combined(self, other: Usage) -> Usage {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        Usage {
            prompt_tokens: self.prompt_tokens + other.prompt_tokens,
            completion_tokens: self.completion_tokens + other.completion_tokens,
            total_tokens: self.total_tokens + other.total_tokens,
            cached_tokens: sum(self.cached_tokens, other.cached_tokens),
            reasoning_tokens: sum(self.reasoning_tokens, other.reasoning_tokens),
            estimated: self.estimated || other.estimated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn combined_usage_adds_every_count() {
        let a = Usage {
            prompt_tokens: 10,
            completion_tokens: 2,
            total_tokens: 12,
            cached_tokens: Some(4),
            ..Usage::default()
        };
        let b = Usage::estimate(40, 8);
        let sum = a.combined(b);
        assert_eq!(
            (sum.prompt_tokens, sum.completion_tokens, sum.total_tokens),
            (20, 4, 24)
        );
        assert_eq!((sum.cached_tokens, sum.reasoning_tokens), (Some(4), None));
        assert!(sum.estimated);
        assert_eq!(a.combined(a).cached_tokens, Some(8));
    }

    #[test]
    fn nested_flat_and_missing_details() {
        let u = Usage::from_json(&json!({"prompt_tokens":10,"completion_tokens":5,"total_tokens":15,
            "prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":3}}))
        .unwrap();
        assert_eq!((u.cached_tokens, u.reasoning_tokens), (Some(4), Some(3)));
        let flat = Usage::from_json(
            &json!({"prompt_tokens":6,"completion_tokens":2,"total_tokens":8,
            "prompt_cache_hit_tokens":6,"prompt_tokens_details":null}),
        )
        .unwrap();
        assert_eq!(flat.cached_tokens, Some(6));
        assert_eq!(flat.reasoning_tokens, None);
        assert!(Usage::from_json(&json!({"queue_time": 0.1})).is_none());
    }
}
