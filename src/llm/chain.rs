//! Provider chains: deadlines on useful output, fallback, hedging, circuit
//! breakers, and continuation that never repeats a word.
//!
//! A [`ProviderChain`] is an ordered list of providers ([`ProviderSpec`]: an
//! OpenAI, Azure or compatible endpoint with its own transport policy, model
//! and deadlines). [`ChatClient::with_chain`](super::ChatClient::with_chain)
//! turns it into a client whose [`stream`](super::ChatClient::stream) does
//! everything below inside one [`ChatStream`](super::ChatStream), so the LLM
//! actor and every other caller use it unchanged:
//!
//! ```text
//!  request ──▶ first provider whose breaker is closed (all open: the one that reopens first)
//!    │  no useful output within first_output_timeout, an error, an empty completion
//!    ├──▶ next provider at once (no backoff), ProviderFailed + ProviderSelected(fallback)
//!    │  no output after the hedge delay (optional)
//!    ├──▶ same request on the next provider; first useful output wins, the other is
//!    │    dropped (connection closed) and its usage reported as hedge cost
//!    │  failure after text was published (MidStreamFailure::Continue, the default)
//!    ├──▶ next provider gets the prefix as the assistant's partial message and an
//!    │    instruction to continue; only new text is published (a restated prefix
//!    │    is dropped); after published tool calls the round ends as `tool_calls`
//!    └──▶ MidStreamFailure::Fail: the stream ends with the error
//! ```
//!
//! Deadlines on useful output (text, reasoning, refusal, tool calls) are per
//! provider ([`ClientConfig::first_token_timeout`] and
//! [`ClientConfig::output_gap_timeout`]); SSE comments and keep-alives keep the
//! transport alive ([`ClientConfig::read_gap_timeout`]) but never satisfy them.
//!
//! Tool calls are never run twice: a call is published only once complete,
//! a provider that fails after publishing calls ends the round as
//! `tool_calls` (the calls run, the next round sees their outputs) instead of
//! asking another provider to continue, and a hedge race is decided before
//! any output is published.

mod breaker;
mod continuation;
mod driver;
mod hedge;

pub use breaker::{BreakerConfig, BreakerState};
pub use hedge::{AdaptiveHedge, Hedging};

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::client::{ClientInner, http_client};
use super::config::{ClientConfig, Provider};
use super::error::LlmError;
use super::request::{ChatRequest, build_body};
use super::stream::ChatStream;
use super::structured::StructuredOutput;
use breaker::Breaker;
pub(crate) use driver::ChainDriver;
use hedge::LatencyWindow;

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
/// with [`ChatClient::with_chain`](super::ChatClient::with_chain).
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
    providers: Vec<ProviderSpec>,
    hedging: Hedging,
    breaker: Option<BreakerConfig>,
    mid_stream: MidStreamFailure,
    instruction: String,
    http: Option<reqwest::Client>,
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

/// One provider of a client, as [`ChatClient::providers`](super::ChatClient::providers) reports it.
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
    /// The circuit breaker's state (`None` without a breaker).
    pub breaker: Option<BreakerState>,
}

/// One provider of a built chain.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) client: Arc<ClientInner>,
    pub(crate) model: Option<String>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) window: Mutex<LatencyWindow>,
}

/// What the streams of a chain client share.
#[derive(Debug)]
pub(crate) struct ChainShared {
    pub(crate) providers: Vec<Entry>,
    pub(crate) hedging: Hedging,
    pub(crate) instruction: Arc<str>,
}

/// A chain client's chain, with its per-client mid-stream policy.
#[derive(Clone)]
pub(crate) struct ChainHandle {
    shared: Arc<ChainShared>,
    pub(crate) mid_stream: MidStreamFailure,
}

impl std::fmt::Debug for ChainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderChain")
            .field("providers", &self.status())
            .field("hedging", &self.shared.hedging)
            .field("mid_stream", &self.mid_stream)
            .finish_non_exhaustive()
    }
}

impl ChainHandle {
    pub(crate) fn build(chain: ProviderChain) -> Result<Self, LlmError> {
        let mut providers = Vec::with_capacity(chain.providers.len());
        for spec in chain.providers {
            let http = match &chain.http {
                Some(http) => http.clone(),
                None => http_client(&spec.config)?,
            };
            let client = ClientInner::build(spec.provider, spec.config, http, spec.label)?;
            let breaker = chain
                .breaker
                .map(|config| Breaker::new(config, client.label.clone()));
            providers.push(Entry {
                client,
                model: spec.model,
                breaker,
                window: Mutex::new(LatencyWindow::default()),
            });
        }
        Ok(Self {
            shared: Arc::new(ChainShared {
                providers,
                hedging: chain.hedging,
                instruction: Arc::from(chain.instruction),
            }),
            mid_stream: chain.mid_stream,
        })
    }

    pub(crate) fn primary(&self) -> Arc<ClientInner> {
        self.shared.providers[0].client.clone()
    }

    pub(crate) fn status(&self) -> Vec<ProviderStatus> {
        self.shared
            .providers
            .iter()
            .enumerate()
            .map(|(index, e)| ProviderStatus {
                index,
                label: e.client.label.clone(),
                base_url: e.client.base_url.clone(),
                model: e.model.clone(),
                breaker: e.breaker.as_ref().map(|b| b.state()),
            })
            .collect()
    }

    /// The chain's stream for one request whose body (for the request's own
    /// model) is `body`.
    pub(crate) fn stream(
        &self,
        request: &ChatRequest<'_>,
        body: Value,
    ) -> Result<ChatStream, LlmError> {
        let options = request.options;
        let reasoning = options.is_reasoning_model();
        // A model override that changes the reasoning-model rules needs its
        // own body (roles, sampling); any other override only patches `model`.
        let mut own_bodies = Vec::with_capacity(self.shared.providers.len());
        for entry in &self.shared.providers {
            let own = match &entry.model {
                Some(model) => {
                    let mut o = options.clone();
                    o.model = model.clone();
                    if o.is_reasoning_model() != reasoning {
                        let req = ChatRequest {
                            options: &o,
                            ..*request
                        };
                        Some(Arc::new(build_body(&req)?))
                    } else {
                        None
                    }
                }
                None => None,
            };
            own_bodies.push(own);
        }
        let request = ChainRequest {
            base: Arc::new(body),
            own_bodies,
            extra_headers: options.extra_headers.clone(),
            extra_query: options.extra_query.clone(),
            structured: options.structured_output.clone(),
        };
        let driver = ChainDriver::new(self.shared.clone(), self.mid_stream, request)?;
        Ok(ChatStream::from_chain(driver))
    }
}

/// A request as a chain keeps it: bodies to derive each attempt's from.
#[derive(Debug)]
pub(crate) struct ChainRequest {
    base: Arc<Value>,
    own_bodies: Vec<Option<Arc<Value>>>,
    pub(crate) extra_headers: Vec<(String, String)>,
    pub(crate) extra_query: Vec<(String, String)>,
    pub(crate) structured: Option<StructuredOutput>,
}

impl ChainRequest {
    /// The body for provider `index` (its model), continuing `prefix` if set.
    pub(crate) fn body(
        &self,
        index: usize,
        model: Option<&str>,
        prefix: Option<&str>,
        instruction: &str,
    ) -> Result<bytes::Bytes, LlmError> {
        let source = self
            .own_bodies
            .get(index)
            .and_then(Option::as_ref)
            .unwrap_or(&self.base);
        let bytes = if model.is_none() && prefix.is_none() {
            serde_json::to_vec(&**source)
        } else {
            let mut body = match prefix {
                Some(prefix) => continuation::continuation_body(source, prefix, instruction),
                None => (**source).clone(),
            };
            if let (Some(model), Some(obj)) = (model, body.as_object_mut()) {
                obj.insert("model".into(), Value::String(model.to_string()));
            }
            serde_json::to_vec(&body)
        };
        bytes
            .map(bytes::Bytes::from)
            .map_err(|e| LlmError::UnexpectedBody(e.to_string()))
    }
}
