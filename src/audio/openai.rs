//! OpenAI-compatible hosted speech: `POST /v1/audio/speech` as a
//! [`Synthesizer`](super::Synthesizer) ([`OpenAiSpeech`]) and
//! `POST /v1/audio/transcriptions` as a [`Transcriber`](super::Transcriber)
//! ([`OpenAiTranscription`]).
//!
//! One endpoint type, [`OpenAiAudioEndpoint`], serves OpenAI, Azure OpenAI
//! deployments and the local servers that speak the same routes
//! (speaches / faster-whisper, whisper.cpp's server, LocalAI, vLLM): the base
//! URL up to `/v1` (or an Azure deployment), the key as a [`Secret`], and the
//! deadlines every provider of colloquy has — on the first useful output and
//! on the gaps after it, never on bytes that carry nothing.

mod speech;
mod transcription;

pub use speech::{OpenAiSpeech, OpenAiSpeechConfig, SAMPLE_RATE as SPEECH_SAMPLE_RATE};
pub use transcription::{OpenAiTranscription, OpenAiTranscriptionConfig};

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

use super::error::retry_after;
use super::{AudioError, SpeechFailure};
use crate::secret::Secret;

/// How requests authenticate.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AudioAuth {
    /// No credential (a local server).
    None,
    /// `Authorization: Bearer KEY` (OpenAI, Groq, most compatible servers).
    Bearer(Secret),
    /// `api-key: KEY` (Azure OpenAI).
    ApiKey(Secret),
}

/// Where an OpenAI-compatible audio API is, and the deadlines it is held to.
/// Its `Debug` shows the base URL without user info or query, and the query
/// scrubbed of credential-shaped values.
#[derive(Clone)]
pub struct OpenAiAudioEndpoint {
    /// Up to `/v1` (`https://api.openai.com/v1`), or an Azure deployment's
    /// base (`https://RES.openai.azure.com/openai/deployments/DEP`).
    pub base_url: String,
    /// Appended to every request (`api-version=…` for Azure).
    pub query: Option<String>,
    /// The credential.
    pub auth: AudioAuth,
    /// Connecting, TLS included.
    pub connect_timeout: Duration,
    /// The first useful output (audio bytes, a transcript) after the request
    /// was sent.
    pub first_output_timeout: Duration,
    /// Between useful outputs once they began.
    pub output_gap_timeout: Duration,
}

impl std::fmt::Debug for OpenAiAudioEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiAudioEndpoint")
            .field("base_url", &crate::secret::display_url(&self.base_url))
            .field(
                "query",
                &self.query.as_deref().map(|q| crate::secret::scrub(q, &[])),
            )
            .field("auth", &self.auth)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_output_timeout", &self.first_output_timeout)
            .field("output_gap_timeout", &self.output_gap_timeout)
            .finish()
    }
}

impl OpenAiAudioEndpoint {
    /// OpenAI itself, with this key.
    pub fn openai(key: impl Into<Secret>) -> Self {
        Self::compatible("https://api.openai.com/v1").with_auth(AudioAuth::Bearer(key.into()))
    }

    /// OpenAI with `OPENAI_API_KEY` (`None` when unset or empty).
    pub fn openai_from_env() -> Option<Self> {
        Secret::from_env("OPENAI_API_KEY").map(Self::openai)
    }

    /// Any compatible server, up to `/v1`, without a key.
    pub fn compatible(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            query: None,
            auth: AudioAuth::None,
            connect_timeout: Duration::from_secs(5),
            first_output_timeout: Duration::from_secs(5),
            output_gap_timeout: Duration::from_secs(2),
        }
    }

    /// An Azure OpenAI deployment (`api-key` header, `api-version` query).
    pub fn azure(
        endpoint: &str,
        deployment: &str,
        api_version: &str,
        key: impl Into<Secret>,
    ) -> Self {
        let mut e = Self::compatible(format!(
            "{}/openai/deployments/{deployment}",
            endpoint.trim_end_matches('/')
        ))
        .with_auth(AudioAuth::ApiKey(key.into()));
        e.query = Some(format!("api-version={api_version}"));
        e
    }

    /// The same endpoint with another credential.
    pub fn with_auth(mut self, auth: AudioAuth) -> Self {
        self.auth = auth;
        self
    }

    /// The same endpoint with these deadlines on the first output and on
    /// the gaps after it.
    pub fn with_deadlines(mut self, first_output: Duration, gap: Duration) -> Self {
        self.first_output_timeout = first_output;
        self.output_gap_timeout = gap;
        self
    }

    fn url(&self, route: &str) -> String {
        let base = self.base_url.trim_end_matches('/');
        match &self.query {
            Some(q) => format!("{base}/{route}?{q}"),
            None => format!("{base}/{route}"),
        }
    }

    fn client(&self, provider: &'static str) -> Result<reqwest::Client, AudioError> {
        let mut headers = HeaderMap::new();
        let credential = match &self.auth {
            AudioAuth::None => None,
            AudioAuth::Bearer(k) => Some(("authorization", format!("Bearer {}", k.expose()))),
            AudioAuth::ApiKey(k) => Some(("api-key", k.expose().to_string())),
        };
        if let Some((name, value)) = credential {
            let mut v = HeaderValue::from_str(&value).map_err(|_| {
                AudioError::provider(provider, SpeechFailure::Connection("invalid key".into()))
            })?;
            v.set_sensitive(true);
            headers.insert(name, v);
        }
        reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| {
                AudioError::provider(
                    provider,
                    SpeechFailure::Connection(e.without_url().to_string()),
                )
            })
    }

    /// The key's text, for redacting it from what a provider says.
    fn key(&self) -> Option<&str> {
        match &self.auth {
            AudioAuth::None => None,
            AudioAuth::Bearer(k) | AudioAuth::ApiKey(k) => Some(k.expose()),
        }
    }
}

pub(crate) use crate::audio::error::redact;

/// The failure a non-success response stands for; its body's
/// `error.message` (OpenAI's shape) or its text, redacted and cut short.
pub(crate) async fn failure_of(response: reqwest::Response, key: Option<&str>) -> SpeechFailure {
    let status = response.status().as_u16();
    let retry_after = retry_after(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
    );
    let body = match tokio::time::timeout(Duration::from_secs(2), response.bytes()).await {
        Ok(Ok(b)) => b,
        _ => Default::default(),
    };
    let text = String::from_utf8_lossy(&body[..body.len().min(2048)]).into_owned();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let m = &v["error"]["message"];
            let m = if m.is_string() { m } else { &v["error"] };
            m.as_str().map(str::to_string)
        })
        .unwrap_or(text);
    let message = redact(message.trim(), key);
    SpeechFailure::refused(status, retry_after, message)
}

/// A transport error as a failure, without the URL (which may carry a query
/// with credentials on some servers).
pub(crate) fn connection_failure(e: reqwest::Error) -> SpeechFailure {
    SpeechFailure::Connection(e.without_url().to_string())
}
