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

pub(crate) mod breaker;
mod continuation;
mod driver;
mod hedge;
mod shared;
mod spec;

pub use breaker::{BreakerConfig, BreakerState};
pub use hedge::{AdaptiveHedge, Hedging};
pub use spec::{
    DEFAULT_CONTINUATION_INSTRUCTION, MidStreamFailure, ProviderChain, ProviderSpec, ProviderStatus,
};

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::attempt::EventStream;
use super::error::LlmError;
use super::event::RequestsSent;
use super::request::{ChatRequest, build_body};
use super::transport::{ClientInner, http_client};
use breaker::Breaker;
use driver::ChainDriver;
use hedge::LatencyWindow;
use shared::{ChainRequest, ChainShared, Entry};

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
                system: e.client.provider_name,
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
        sent: RequestsSent,
    ) -> Result<EventStream, LlmError> {
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
        let driver = ChainDriver::new(self.shared.clone(), self.mid_stream, request, sent)?;
        Ok(driver.events())
    }
}
