//! Where requests go and how they are sent.
//!
//! [`OpenAiConfig`] and [`AzureConfig`] carry the endpoint and credentials with
//! the reference plugin's environment fallbacks; [`ClientConfig`] carries the
//! transport policy (timeouts, retries, limits, pool) shared by both, and
//! [`StreamLimits`] the size caps of one stream.

use std::time::Duration;

use super::error::ConfigError;
use crate::secret::{Secret, display_url};

/// The default Azure `api-version` when neither the caller nor
/// `OPENAI_API_VERSION` names one.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

fn env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.is_empty())
}

/// OpenAI or any OpenAI-compatible server (Groq, OpenRouter, DeepSeek, vLLM,
/// llama.cpp, Ollama…). Its `Debug` shows the base URL without user info or
/// query.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Bearer key; `None` for local servers that need none.
    pub api_key: Option<Secret>,
    /// Base URL up to `/v1` (the client appends `/chat/completions`).
    pub base_url: String,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
}

/// A URL field as `Debug` shows it.
struct Shown<'a>(&'a str);

impl std::fmt::Debug for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&display_url(self.0), f)
    }
}

impl std::fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("api_key", &self.api_key)
            .field("base_url", &Shown(&self.base_url))
            .field("organization", &self.organization)
            .field("project", &self.project)
            .finish()
    }
}

impl std::fmt::Debug for AzureConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConfig")
            .field("endpoint", &Shown(&self.endpoint))
            .field("deployment", &self.deployment)
            .field("api_version", &self.api_version)
            .field("auth", &self.auth)
            .field("base_url", &self.base_url.as_deref().map(Shown))
            .field("organization", &self.organization)
            .field("project", &self.project)
            .finish()
    }
}

impl std::fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSettings")
            .field("endpoint", &self.endpoint.as_deref().map(Shown))
            .field("deployment", &self.deployment)
            .field("api_version", &self.api_version)
            .field("api_key", &self.api_key)
            .field("ad_token", &self.ad_token)
            .field("base_url", &self.base_url.as_deref().map(Shown))
            .finish()
    }
}

impl OpenAiConfig {
    /// OpenAI's public API with the given key.
    pub fn new(api_key: impl Into<Secret>) -> Self {
        Self {
            api_key: Some(api_key.into()),
            base_url: "https://api.openai.com/v1".into(),
            organization: env("OPENAI_ORG_ID"),
            project: env("OPENAI_PROJECT_ID"),
        }
    }

    /// An OpenAI-compatible server at `base_url`, with no key.
    pub fn compatible(base_url: impl Into<String>) -> Self {
        Self {
            api_key: None,
            base_url: base_url.into(),
            organization: None,
            project: None,
        }
    }

    /// Reads `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `OPENAI_ORG_ID` and
    /// `OPENAI_PROJECT_ID`. A key is required unless a base URL is set (local
    /// servers need none).
    pub fn from_env() -> Result<Self, ConfigError> {
        let api_key = Secret::from_env("OPENAI_API_KEY");
        let base_url = env("OPENAI_BASE_URL");
        if api_key.is_none() && base_url.is_none() {
            return Err(ConfigError::MissingApiKey("OPENAI_API_KEY"));
        }
        Ok(Self {
            api_key,
            base_url: base_url.unwrap_or_else(|| "https://api.openai.com/v1".into()),
            organization: env("OPENAI_ORG_ID"),
            project: env("OPENAI_PROJECT_ID"),
        })
    }

    /// Sets the base URL.
    pub fn with_base_url(mut self, base_url: impl Into<String>) -> Self {
        self.base_url = base_url.into();
        self
    }
}

/// How Azure authenticates a request.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AzureAuth {
    /// `api-key` header.
    ApiKey(Secret),
    /// `Authorization: Bearer` with an Entra ID (AD) token.
    AdToken(Secret),
}

/// Azure OpenAI: deployment URL, `api-version` query and Azure credentials.
/// Its `Debug` shows the URLs without user info or query.
#[derive(Clone)]
pub struct AzureConfig {
    /// `https://<resource>.openai.azure.com`.
    pub endpoint: String,
    /// Deployment name (falls back to the model name).
    pub deployment: String,
    /// `api-version` query value.
    pub api_version: String,
    /// Credentials.
    pub auth: AzureAuth,
    /// Replaces `{endpoint}/openai/deployments/{deployment}` when set.
    pub base_url: Option<String>,
    /// `OpenAI-Organization` header.
    pub organization: Option<String>,
    /// `OpenAI-Project` header.
    pub project: Option<String>,
}

/// Optional Azure settings; unset fields fall back to the environment.
/// Its `Debug` shows the URLs without user info or query.
#[derive(Clone, Default)]
pub struct AzureSettings {
    /// Endpoint (`AZURE_OPENAI_ENDPOINT`).
    pub endpoint: Option<String>,
    /// Deployment (`AZURE_OPENAI_DEPLOYMENT`, then the model).
    pub deployment: Option<String>,
    /// API version (`OPENAI_API_VERSION`, then [`DEFAULT_AZURE_API_VERSION`]).
    pub api_version: Option<String>,
    /// Key (`AZURE_OPENAI_API_KEY`).
    pub api_key: Option<Secret>,
    /// AD token (`AZURE_OPENAI_AD_TOKEN`).
    pub ad_token: Option<Secret>,
    /// Base URL override.
    pub base_url: Option<String>,
}

impl AzureConfig {
    /// Builds the config with the reference plugin's fallbacks: endpoint from
    /// `AZURE_OPENAI_ENDPOINT`, deployment from `AZURE_OPENAI_DEPLOYMENT` then
    /// `model`, api-version from `OPENAI_API_VERSION`, key from
    /// `AZURE_OPENAI_API_KEY`, AD token from `AZURE_OPENAI_AD_TOKEN`, organization
    /// and project from `OPENAI_ORG_ID` / `OPENAI_PROJECT_ID`. A key wins over a
    /// token when both are present.
    pub fn resolve(model: &str, settings: AzureSettings) -> Result<Self, ConfigError> {
        let endpoint = settings
            .endpoint
            .or_else(|| env("AZURE_OPENAI_ENDPOINT"))
            .ok_or(ConfigError::MissingAzureEndpoint)?;
        let deployment = settings
            .deployment
            .or_else(|| env("AZURE_OPENAI_DEPLOYMENT"))
            .unwrap_or_else(|| model.to_string());
        let api_version = settings
            .api_version
            .or_else(|| env("OPENAI_API_VERSION"))
            .unwrap_or_else(|| DEFAULT_AZURE_API_VERSION.to_string());
        let auth = match (
            settings
                .api_key
                .or_else(|| Secret::from_env("AZURE_OPENAI_API_KEY")),
            settings
                .ad_token
                .or_else(|| Secret::from_env("AZURE_OPENAI_AD_TOKEN")),
        ) {
            (Some(key), _) => AzureAuth::ApiKey(key),
            (None, Some(token)) => AzureAuth::AdToken(token),
            (None, None) => return Err(ConfigError::MissingAzureCredentials),
        };
        Ok(Self {
            endpoint,
            deployment,
            api_version,
            auth,
            base_url: settings.base_url,
            organization: env("OPENAI_ORG_ID"),
            project: env("OPENAI_PROJECT_ID"),
        })
    }

    /// `{endpoint}/openai/deployments/{deployment}/chat/completions` (or the base URL's).
    pub fn chat_url(&self) -> String {
        match &self.base_url {
            Some(base) => format!("{}/chat/completions", base.trim_end_matches('/')),
            None => format!(
                "{}/openai/deployments/{}/chat/completions",
                self.endpoint.trim_end_matches('/'),
                self.deployment
            ),
        }
    }
}

/// Which API the client talks to.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Provider {
    /// OpenAI or an OpenAI-compatible server.
    OpenAi(OpenAiConfig),
    /// Azure OpenAI.
    Azure(AzureConfig),
}

impl From<OpenAiConfig> for Provider {
    fn from(value: OpenAiConfig) -> Self {
        Provider::OpenAi(value)
    }
}

impl From<AzureConfig> for Provider {
    fn from(value: AzureConfig) -> Self {
        Provider::Azure(value)
    }
}

/// Retries with exponential backoff, only before the first token.
///
/// A retry after text was delivered would repeat words the user already heard,
/// so the client never retries once any output event has been yielded. A
/// failed request's usage (a usage chunk, then a broken body) does not stop a
/// retry: it is reported once, in that request's
/// [`StreamEvent::Retrying`](super::StreamEvent::Retrying).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (the reference's default is 0).
    pub max_retries: u32,
    /// Delay before the first retry; doubled each time.
    pub initial_backoff: Duration,
    /// Upper bound of one delay (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 0,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0-based), honouring `Retry-After`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(retry).unwrap_or(u32::MAX));
        retry_after.unwrap_or(exp).min(self.max_backoff)
    }
}

/// Size caps that keep one misbehaving stream from taking unbounded memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bytes of one server-sent event (default 1 MiB).
    pub max_event_bytes: usize,
    /// Bytes of all tool-call arguments of one response (default 1 MiB).
    pub max_tool_argument_bytes: usize,
    /// Bytes of an error body or a non-streamed completion (default 4 MiB).
    pub max_body_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_event_bytes: 1 << 20,
            max_tool_argument_bytes: 1 << 20,
            max_body_bytes: 4 << 20,
        }
    }
}

/// The shipped deadline on the first useful output (see
/// [`ClientConfig::first_token_timeout`]).
pub const DEFAULT_FIRST_OUTPUT_TIMEOUT: Duration = Duration::from_secs(10);

/// The shipped deadline on the gap between useful outputs (see
/// [`ClientConfig::output_gap_timeout`]).
pub const DEFAULT_OUTPUT_GAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Transport policy of a [`ChatClient`](super::ChatClient).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TCP + TLS connect timeout (reference: 15 s).
    pub connect_timeout: Duration,
    /// Deadline from sending the request to the response headers, connecting
    /// and writing the body included (default 30 s). A server that accepts the
    /// request and never answers, or never reads the body, fails with
    /// [`LlmError::ResponseTimeout`](super::LlmError::ResponseTimeout).
    pub response_timeout: Duration,
    /// Longest silence allowed between two pieces of any body (default 30 s).
    /// Any bytes reset it, SSE comments (keep-alives) included; a silent body
    /// fails with [`LlmError::Stalled`](super::LlmError::Stalled).
    pub read_gap_timeout: Duration,
    /// Deadline for reading a whole non-streamed body, an error body or a JSON
    /// completion, counted from the response headers (default 60 s). A body that
    /// trickles forever fails with
    /// [`LlmError::BodyTimeout`](super::LlmError::BodyTimeout). Event streams have
    /// no total deadline: the first-output and output-gap deadlines bound
    /// them, since keep-alives reset the read gap.
    pub body_timeout: Duration,
    /// Deadline from sending the request to the model's first useful output:
    /// text, reasoning, refusal or a tool-call delta (a name or argument
    /// fragment, before the call is complete). Keep-alive comments, role-only
    /// or empty chunks, metadata and usage do not count. Fails with
    /// [`LlmError::FirstTokenTimeout`](super::LlmError::FirstTokenTimeout)
    /// (retryable; in a chain, the next provider takes over).
    ///
    /// Default **10 s**. A voice caller hears dead air for as long as this
    /// waits, and a fallback provider only gets its chance once it fires, so
    /// it must be short; but not so short that it cuts healthy requests: a
    /// fast model's first token takes under 1 s, a long prompt's prefill or a
    /// loaded provider a few seconds, and reasoning models that stream their
    /// reasoning count it as output. 10 s is several times a slow healthy
    /// first token and still leaves a fallback time to answer while the
    /// caller is on the line. Models that think silently for longer (hidden
    /// reasoning at high effort) need a larger value; `None` waits as long as
    /// the read gap allows, which keep-alives make forever.
    pub first_token_timeout: Option<Duration>,
    /// Deadline on the gap between two pieces of useful output once the first
    /// one arrived (text, reasoning, refusal or a tool-call delta; keep-alive
    /// comments, empty chunks and usage do not reset it). A stream that
    /// already received its finish reason ends normally instead. Fails with
    /// [`LlmError::OutputGapTimeout`](super::LlmError::OutputGapTimeout).
    ///
    /// Default **5 s**. Healthy streams send pieces tens of milliseconds
    /// apart and pause a second or two at most; a pause mid-answer is heard
    /// as dead air once text-to-speech has spoken what it had, so it is
    /// bounded tighter than the first output (prefill is over; nothing
    /// legitimate takes seconds between pieces), leaving a chain time to
    /// continue the reply elsewhere. `None` leaves gaps to the read gap,
    /// which keep-alives reset.
    pub output_gap_timeout: Option<Duration>,
    /// Retry policy. In a [`ProviderChain`](super::ProviderChain) it is not
    /// used: the next provider is the retry, at once.
    pub retry: RetryPolicy,
    /// Size caps of the stream.
    pub limits: StreamLimits,
    /// Idle connections kept per host in the shared pool.
    pub pool_max_idle_per_host: usize,
}

impl Default for ClientConfig {
    /// Connect 15 s, response headers 30 s, read gap 30 s, whole body 60 s,
    /// first useful output 10 s, gap between useful outputs 5 s (see each
    /// field for why), no retries, default limits, 256 idle connections per
    /// host. Every wait is finite: a provider that sends keep-alives and
    /// nothing else ends in a typed timeout, not a held turn.
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(15),
            response_timeout: Duration::from_secs(30),
            read_gap_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            first_token_timeout: Some(DEFAULT_FIRST_OUTPUT_TIMEOUT),
            output_gap_timeout: Some(DEFAULT_OUTPUT_GAP_TIMEOUT),
            retry: RetryPolicy::default(),
            limits: StreamLimits::default(),
            pool_max_idle_per_host: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_honours_retry_after_within_cap() {
        let p = RetryPolicy {
            max_retries: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.delay(0, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, None), Duration::from_millis(400));
        assert_eq!(p.delay(10, None), Duration::from_secs(1));
        assert_eq!(
            p.delay(0, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.delay(0, Some(Duration::from_secs(60))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn shipped_config_has_a_finite_deadline_for_every_wait() {
        let c = ClientConfig::default();
        let hour = Duration::from_secs(3600);
        for (name, d) in [
            ("connect_timeout", c.connect_timeout),
            ("response_timeout", c.response_timeout),
            ("read_gap_timeout", c.read_gap_timeout),
            ("body_timeout", c.body_timeout),
        ] {
            assert!(!d.is_zero() && d <= hour, "{name} = {d:?}");
        }
        assert_eq!(c.response_timeout, Duration::from_secs(30));
        assert_eq!(c.body_timeout, Duration::from_secs(60));
        // Keep-alives reset the read gap, so only these bound a stream that
        // never says anything: finite, and short enough for a phone call.
        let first = c.first_token_timeout.expect("first output is bounded");
        let gap = c.output_gap_timeout.expect("output gap is bounded");
        assert!(first >= Duration::from_secs(3) && first <= Duration::from_secs(20));
        assert!(gap >= Duration::from_secs(2) && gap <= first);
        assert!(first < c.read_gap_timeout && first < c.response_timeout);
    }

    #[test]
    fn azure_url_and_debug_hide_keys() {
        let cfg = AzureConfig::resolve(
            "gpt-4o",
            AzureSettings {
                endpoint: Some("https://res.openai.azure.com/".into()),
                api_version: Some("2024-06-01".into()),
                api_key: Some(Secret::new("azure-secret-key")),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            cfg.chat_url(),
            "https://res.openai.azure.com/openai/deployments/gpt-4o/chat/completions"
        );
        assert!(!format!("{cfg:?}").contains("azure-secret-key"));
    }
}
