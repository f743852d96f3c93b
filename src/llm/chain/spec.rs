//! The chain as its user describes it: providers in order, hedging,
//! breakers, what a failure mid-answer does. Nothing here runs a request.

use std::sync::Arc;
use std::time::Duration;

use super::breaker::{BreakerConfig, BreakerState};
use super::hedge::Hedging;
use crate::llm::config::{ClientConfig, Provider};

/// The instruction sent after the published prefix when another provider
/// continues a reply (as a user message, the most portable role).
pub const DEFAULT_CONTINUATION_INSTRUCTION: &str = "Your previous reply was cut off. \
Continue it from exactly where it stopped, as if it had never been interrupted: \
do not repeat any of it, do not add a preamble, and do not start over.";

/// What a chain does when a provider fails after some of its output was
/// published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MidStreamFailure {
    /// Continue the reply on the next provider from what was already said:
    /// the published text goes to it as the assistant's partial message with
    /// an instruction to continue, and only new text is published (the
    /// default). When tool calls were published the round ends as
    /// `tool_calls` instead. Structured-output requests and refusals are not
    /// continued: they fail.
    #[default]
    Continue,
    /// End the stream with the error: the runtime commits what was published
    /// as an interrupted reply.
    Fail,
}

/// One provider of a chain.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    /// Where requests go, with credentials.
    pub provider: Provider,
    /// Transport policy and deadlines (`retry` is not used in a chain).
    pub config: ClientConfig,
    /// The model sent to this provider (default: the request's).
    pub model: Option<String>,
    /// A short name for metrics and logs (default: the URL's host and port).
    pub label: Option<String>,
}

impl ProviderSpec {
    /// A provider with the default [`ClientConfig`].
    pub fn new(provider: impl Into<Provider>) -> Self {
        Self {
            provider: provider.into(),
            config: ClientConfig::default(),
            model: None,
            label: None,
        }
    }

    /// Sets the transport policy.
    pub fn with_config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Sends this model to this provider instead of the request's.
    pub fn with_model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    /// Names the provider in metrics and logs.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Deadline from sending the request to the first useful output (sets
    /// [`ClientConfig::first_token_timeout`]).
    pub fn with_first_output_timeout(mut self, deadline: Duration) -> Self {
        self.config.first_token_timeout = Some(deadline);
        self
    }

    /// Deadline on the gap between useful outputs (sets
    /// [`ClientConfig::output_gap_timeout`]).
    pub fn with_output_gap_timeout(mut self, deadline: Duration) -> Self {
        self.config.output_gap_timeout = Some(deadline);
        self
    }
}

/// An ordered list of providers and how to move between them; build a client
/// with [`ChatClient::with_chain`](crate::llm::ChatClient::with_chain).
///
/// ```
/// use std::time::Duration;
/// use colloquy::llm::{ChatClient, Hedging, OpenAiConfig, ProviderChain, ProviderSpec};
///
/// let chain = ProviderChain::new(
///     ProviderSpec::new(OpenAiConfig::compatible("http://127.0.0.1:8089/v1"))
///         .with_first_output_timeout(Duration::from_secs(1))
///         .with_output_gap_timeout(Duration::from_secs(2)),
/// )
/// .with_fallback(
///     ProviderSpec::new(OpenAiConfig::compatible("http://127.0.0.1:8090/v1"))
///         .with_model("llama-3.1-8b")
///         .with_first_output_timeout(Duration::from_secs(2)),
/// )
/// .with_hedging(Hedging::After(Duration::from_millis(300)));
/// let client = ChatClient::with_chain(chain).unwrap();
/// assert_eq!(client.providers().len(), 2);
/// ```
#[derive(Debug, Clone)]
pub struct ProviderChain {
    pub(super) providers: Vec<ProviderSpec>,
    pub(super) hedging: Hedging,
    pub(super) breaker: Option<BreakerConfig>,
    pub(super) mid_stream: MidStreamFailure,
    pub(super) instruction: String,
    pub(super) http: Option<reqwest::Client>,
}

impl ProviderChain {
    /// A chain whose first provider is `primary`, with a circuit breaker per
    /// provider ([`BreakerConfig::default`]), no hedging, and continuation
    /// after a mid-stream failure.
    pub fn new(primary: ProviderSpec) -> Self {
        Self {
            providers: vec![primary],
            hedging: Hedging::Off,
            breaker: Some(BreakerConfig::default()),
            mid_stream: MidStreamFailure::Continue,
            instruction: DEFAULT_CONTINUATION_INSTRUCTION.to_string(),
            http: None,
        }
    }

    /// Appends a provider, tried after the ones before it. Name a provider
    /// twice for a second attempt on it.
    pub fn with_fallback(mut self, provider: ProviderSpec) -> Self {
        self.providers.push(provider);
        self
    }

    /// Sets hedging (default [`Hedging::Off`]).
    pub fn with_hedging(mut self, hedging: Hedging) -> Self {
        self.hedging = hedging;
        self
    }

    /// Sets every provider's circuit breaker.
    pub fn with_breaker(mut self, breaker: BreakerConfig) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// No circuit breakers: every request tries the providers in order.
    pub fn without_breaker(mut self) -> Self {
        self.breaker = None;
        self
    }

    /// Sets what a failure after published output does (default
    /// [`MidStreamFailure::Continue`]).
    pub fn with_mid_stream_failure(mut self, policy: MidStreamFailure) -> Self {
        self.mid_stream = policy;
        self
    }

    /// Replaces [`DEFAULT_CONTINUATION_INSTRUCTION`].
    pub fn with_continuation_instruction(mut self, instruction: impl Into<String>) -> Self {
        self.instruction = instruction.into();
        self
    }

    /// One connection pool for every provider (default: one per provider,
    /// built from its config).
    pub fn with_http_client(mut self, http: reqwest::Client) -> Self {
        self.http = Some(http);
        self
    }

    /// The providers, in order.
    pub fn providers(&self) -> &[ProviderSpec] {
        &self.providers
    }
}

/// One provider of a client, as [`ChatClient::providers`](crate::llm::ChatClient::providers) reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderStatus {
    /// Position in the chain (0 is the primary).
    pub index: usize,
    /// Label (metrics, logs).
    pub label: Arc<str>,
    /// Base URL (no credentials).
    pub base_url: Arc<str>,
    /// The model override, if any.
    pub model: Option<String>,
    /// The API it speaks: `openai` (OpenAI and compatible servers) or `azure`.
    pub system: &'static str,
    /// The circuit breaker's state (`None` without a breaker).
    pub breaker: Option<BreakerState>,
}
