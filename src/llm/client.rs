//! [`ChatClient`]: the entry point. A plain client sends each request to one
//! provider ([`transport`](super::transport), one [`attempt`](super::attempt)
//! with the config's retries); a chain client hands it to its
//! [`ProviderChain`].
//!
//! A [`ChatClient`] is cheap to clone (an `Arc`) and is meant to be shared by
//! every session of a process: one pool means one TLS handshake per host, not one
//! per conversation. Each call to [`ChatClient::stream`] builds the body once;
//! retries resend the same bytes.

use std::sync::Arc;

use bytes::Bytes;

use super::attempt;
use super::chain::{ChainHandle, MidStreamFailure, ProviderChain, ProviderStatus};
use super::config::{ClientConfig, Provider};
use super::error::LlmError;
use super::event::RequestsSent;
use super::request::{ChatBody, ChatRequest};
use super::stream::ChatStream;
use super::transport::{ClientInner, http_client};

/// Streaming chat-completions client for one provider, or for a
/// [`ProviderChain`] (fallback, hedging, circuit breakers: see
/// [`ChatClient::with_chain`]).
///
/// ```
/// use colloquy::context::ChatContext;
/// use colloquy::llm::{ChatClient, ChatRequest, LlmOptions, OpenAiConfig, StreamEvent};
/// use colloquy::mock::{MockResponse, MockServer};
/// use futures_util::StreamExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// // A local scripted server; use `OpenAiConfig::from_env()?` for the real API.
/// let server = MockServer::start(|_| MockResponse::text(&["Hel", "lo!"])).await?;
/// let client = ChatClient::new(OpenAiConfig::compatible(server.base_url()))?;
/// let mut ctx = ChatContext::new();
/// ctx.add_user("Say hello.");
/// let options = LlmOptions::new("gpt-4o-mini");
/// let mut stream = client.stream(ChatRequest::new(&ctx, &options))?;
/// let mut text = String::new();
/// while let Some(event) = stream.next().await {
///     match event? {
///         StreamEvent::Token(t) => text.push_str(&t),
///         StreamEvent::Usage(u) => assert_eq!(u.completion_tokens, 2),
///         _ => {}
///     }
/// }
/// assert_eq!(text, "Hello!");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChatClient {
    /// The provider (a chain's primary).
    inner: Arc<ClientInner>,
    /// Set when the client serves a chain.
    chain: Option<ChainHandle>,
}

impl std::fmt::Debug for ChatClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.chain {
            Some(chain) => f
                .debug_struct("ChatClient")
                .field("chain", chain)
                .finish_non_exhaustive(),
            None => f
                .debug_struct("ChatClient")
                .field("provider", &self.inner.provider_name)
                .field("url", &crate::secret::display_url(self.inner.url.as_str()))
                .field("config", &self.inner.config)
                .finish_non_exhaustive(),
        }
    }
}

impl ChatClient {
    /// A client with the default [`ClientConfig`] and its own connection pool.
    pub fn new(provider: impl Into<Provider>) -> Result<Self, LlmError> {
        Self::with_config(provider, ClientConfig::default())
    }

    /// A client with a custom transport policy.
    pub fn with_config(
        provider: impl Into<Provider>,
        config: ClientConfig,
    ) -> Result<Self, LlmError> {
        let http = http_client(&config)?;
        Self::with_http_client(provider, config, http)
    }

    /// A client over a [`ProviderChain`]: each request goes to the chain's
    /// first available provider, falls back at once on a failure or a missed
    /// deadline, optionally hedges, continues a reply cut mid-stream on the
    /// next provider without repeating it, and skips providers whose circuit
    /// breaker is open. Callers use [`ChatClient::stream`] as with one provider;
    /// the stream also reports [`StreamEvent::ProviderSelected`] and
    /// [`StreamEvent::ProviderFailed`](super::StreamEvent::ProviderFailed).
    ///
    /// Clones share the chain's breakers and latency windows (one client per
    /// process is the intended use).
    ///
    /// [`StreamEvent::ProviderSelected`]: super::StreamEvent::ProviderSelected
    pub fn with_chain(chain: ProviderChain) -> Result<Self, LlmError> {
        let handle = ChainHandle::build(chain)?;
        Ok(Self {
            inner: handle.primary(),
            chain: Some(handle),
        })
    }

    /// A client over a caller-supplied `reqwest::Client` (its own timeouts and
    /// pool apply; `config` still sets the response, read-gap, body and
    /// first-token deadlines, retries and limits).
    pub fn with_http_client(
        provider: impl Into<Provider>,
        config: ClientConfig,
        http: reqwest::Client,
    ) -> Result<Self, LlmError> {
        Ok(Self {
            inner: ClientInner::build(provider.into(), config, http, None)?,
            chain: None,
        })
    }

    /// The transport policy (a chain's: its primary's).
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The chat-completions URL requests go to (without per-request query
    /// extras; a chain's: its primary's).
    pub fn url(&self) -> &str {
        self.inner.url.as_str()
    }

    /// The provider's label (a chain's: its primary's): the one given to
    /// [`ProviderSpec::with_label`](super::ProviderSpec::with_label), else the
    /// URL's host and port.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// Each provider of the chain (one for a plain client) with its circuit
    /// breaker's state.
    pub fn providers(&self) -> Vec<ProviderStatus> {
        match &self.chain {
            Some(chain) => chain.status(),
            None => vec![ProviderStatus {
                index: 0,
                label: self.inner.label.clone(),
                base_url: self.inner.base_url.clone(),
                model: None,
                system: self.inner.provider_name,
                breaker: None,
            }],
        }
    }

    /// The same client (same pools, breakers and latency windows) with another
    /// choice for a failure after output was published: a per-session choice
    /// (give each session its own clone). No effect on a plain client.
    pub fn with_mid_stream_failure(&self, policy: MidStreamFailure) -> Self {
        let mut client = self.clone();
        if let Some(chain) = &mut client.chain {
            chain.mid_stream = policy;
        }
        client
    }

    /// Starts a streamed completion. Nothing is sent until the stream is polled;
    /// dropping the stream at any point closes the connection (every
    /// connection, while a chain hedges).
    ///
    /// Fails at once with [`LlmError::InvalidHistory`] when the context's tool
    /// calls and outputs do not pair up: a misordered history is never sent.
    pub fn stream(&self, request: ChatRequest<'_>) -> Result<ChatStream, LlmError> {
        let options = request.options;
        let body = ChatBody::new(&request).inspect_err(|_| {
            metrics::counter!("colloquy_llm_errors_total", "kind" => "invalid_history")
                .increment(1);
        })?;
        if let Some(chain) = &self.chain {
            let sent = RequestsSent::default();
            let events = chain.stream(&request, body.to_value(), sent.clone())?;
            return Ok(ChatStream::new(events, sent));
        }
        let body = Bytes::from(
            body.to_bytes()
                .map_err(|e| LlmError::UnexpectedBody(e.to_string()))?,
        );
        let prepared = self.inner.prepare(
            &options.extra_headers,
            &options.extra_query,
            body,
            &options.model,
        )?;
        metrics::counter!("colloquy_llm_requests_total").increment(1);
        let sent = RequestsSent::default();
        let events = attempt::request(
            &self.inner,
            prepared,
            self.inner.config.retry,
            options.structured_output.clone(),
            sent.clone(),
        );
        Ok(ChatStream::new(events, sent))
    }
}
